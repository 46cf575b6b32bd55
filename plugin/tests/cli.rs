//! The `switchyard` command line end to end, with the real SmolLM2 tokenizer and the pinned
//! stock llama.cpp: extracted experts must load and run there.

mod common;

use std::process::Command;

use common::{listing, llama_perplexity, sy_err, sy_ok, Tiny};
use switchyard::imatrix::Imatrix;
use switchyard::GgmlType;

#[test]
fn pack_inspect_eval_extract_and_run_in_stock_llama_cpp() {
    let Some(smol) = common::smollm2() else {
        return;
    };
    let t = Tiny::new(GgmlType::Q8_0, Some(&smol));
    let bundle = t.path("bundle.gguf");
    let b = bundle.to_str().unwrap();
    let out = sy_ok(&t.pack_args(&t.experts, &[], &bundle));
    assert!(out.contains("expert math") && out.contains("expert code"), "{out}");

    let out = sy_ok(&["inspect", b]);
    for needle in [
        "format version 1",
        "(verified)",
        "math : codec salient, 2 bits",
        "code : codec salient",
        "blk.1.ffn_down.weight",
        "bits/param",
    ] {
        assert!(out.contains(needle), "inspect lacks {needle:?}:\n{out}");
    }

    let out = sy_ok(&["eval", b, "--expert", "math", "--reference", t.experts[0].1.to_str().unwrap()]);
    let ratio_line = out.lines().find(|l| l.starts_with("stored error / rtn error")).expect(&out);
    let ratio: f64 = ratio_line.split('=').nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert!(ratio <= 0.5, "{ratio_line}");

    let math_gguf = t.path("math.gguf");
    let out = sy_ok(&["extract", b, "--expert", "math", "-o", math_gguf.to_str().unwrap()]);
    assert!(out.contains("q8_0 -> f16") && out.contains("f32 -> f32"), "{out}");
    let base_gguf = t.path("base-extracted.gguf");
    sy_ok(&["extract", b, "--expert", "base", "-o", base_gguf.to_str().unwrap()]);

    let Some(bin) = common::llama_bin() else {
        return;
    };
    let p_base = llama_perplexity(&bin, &t.base_gguf);
    let p_base2 = llama_perplexity(&bin, &base_gguf);
    let p_math = llama_perplexity(&bin, &math_gguf);
    // The extracted base computes with F16 copies of the Q8_0 weights the experts change.
    assert!((p_base2 / p_base - 1.0).abs() < 0.01, "extracted base ppl {p_base2} vs base {p_base}");
    assert!(p_math.is_finite() && p_math != p_base, "expert ppl {p_math} vs base {p_base}");
    // Stock llama.cpp refuses a bundle (documented in docs/FORMAT.md).
    let out = Command::new(bin.join("llama-perplexity"))
        .args(["-m", b, "-f", "/usr/share/common-licenses/Apache-2.0", "-c", "128", "--chunks", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong number of tensors"));
}

#[test]
fn real_imatrix_files_in_both_formats_agree_and_drive_pack() {
    let (Some(smol), Some(bin)) = (common::smollm2(), common::llama_bin()) else {
        return;
    };
    let t = Tiny::new(GgmlType::F32, Some(&smol));
    let mut means = Vec::new();
    for format in ["gguf", "dat"] {
        let out = t.path(&format!("imatrix.{format}"));
        let run = Command::new(bin.join("llama-imatrix"))
            .args([
                "-m",
                t.base_gguf.to_str().unwrap(),
                "-f",
                "/usr/share/common-licenses/Apache-2.0",
                "-c",
                "128",
                "--chunks",
                "3",
                "-t",
                "2",
            ])
            .args(["--output-format", format, "-o", out.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(run.status.success(), "llama-imatrix: {}", String::from_utf8_lossy(&run.stderr));
        means.push(Imatrix::load(&out).unwrap());
    }
    let (g, d) = (&means[0], &means[1]);
    assert_eq!(g.len(), d.len());
    for name in ["blk.0.attn_q.weight", "blk.1.ffn_down.weight"] {
        let (a, b) = (g.get(name).unwrap(), d.get(name).unwrap());
        assert_eq!(a.len(), if name.contains("ffn_down") { 128 } else { 64 });
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-4 * x.abs().max(1e-6), "{name}: {x} vs {y}");
        }
    }
    let bundle = t.path("bundle.gguf");
    sy_ok(&t.pack_args(&t.experts[..1], &["--imatrix", t.path("imatrix.dat").to_str().unwrap()], &bundle));
    let out = sy_ok(&["inspect", bundle.to_str().unwrap(), "--summary"]);
    assert!(out.contains("imatrix imatrix.dat"), "{out}");
}

#[test]
fn command_line_errors_are_clear_and_leave_no_output() {
    let t = Tiny::new(GgmlType::F32, None);
    let dir = t.dir.path();
    let before = listing(dir);
    let out = t.path("out.gguf");
    let o = out.to_str().unwrap();
    let err = sy_err(&["inspect", t.path("nope.gguf").to_str().unwrap()]);
    assert!(err.contains("nope.gguf") && err.contains("No such file"), "{err}");
    let mut args = t.pack_args(&[], &[], &out);
    args.splice(5..5, ["--expert".to_string(), "no-equals-sign".to_string()]);
    let err = sy_err(&args);
    assert!(err.contains("NAME=DIR"), "{err}");
    let math = &t.experts[..1];
    let err = sy_err(&t.pack_args(math, &["--bits", "7"], &out));
    assert!(err.contains("bits must be 1, 2, 3 or 4"), "{err}");
    let err = sy_err(&t.pack_args(math, &["--imatrix", t.base_gguf.to_str().unwrap()], &out));
    assert!(err.contains("in_sum2"), "{err}");
    let err = sy_err(&t.pack_args(math, &["--error-feedback"], &out));
    assert!(err.contains("error feedback needs an imatrix"), "{err}");
    let err = sy_err(&t.pack_args(math, &["--error-feedback", "--codec", "rtn"], &out));
    assert!(err.contains("salient codec, not rtn"), "{err}");
    // A truncated bundle given to extract.
    let b = t.path("b.gguf");
    sy_ok(&t.pack_args(math, &[], &b));
    let bytes = std::fs::read(&b).unwrap();
    std::fs::write(&b, &bytes[..bytes.len() - 100]).unwrap();
    let err = sy_err(&["extract", b.to_str().unwrap(), "--expert", "math", "-o", o]);
    assert!(err.contains("b.gguf"), "{err}");
    std::fs::write(&b, &bytes).unwrap();
    let err = sy_err(&["extract", b.to_str().unwrap(), "--expert", "physics", "-o", o]);
    assert!(err.contains("no expert 'physics'") && err.contains("math"), "{err}");
    std::fs::remove_file(&b).unwrap();
    assert_eq!(listing(dir), before, "failed commands left files behind");
}

#[test]
fn bench_decompress_reports_a_ratio_against_memcpy() {
    let out = sy_ok(&["bench", "decompress", "--rows", "256", "--cols", "512", "--iters", "3"]);
    assert!(out.contains("ratio reconstruct/memcpy = "), "{out}");
}

/// `switchyard sim` replays a trace against every policy; Belady's row is the optimum (A B A C B
/// with room for two: LRU 1 hit, Belady 2).
#[test]
fn sim_replays_a_trace_against_every_policy() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.jsonl");
    let mut text = String::from("{\"switchyard_trace\": 1, \"n_layers\": 1, \"n_experts\": 4}\n");
    for e in [0, 1, 0, 2, 1] {
        text += &format!("{{\"seq\": 0, \"layers\": [[[{e}, 1.0]]]}}\n");
    }
    std::fs::write(&trace, text).unwrap();
    let sim = |extra: &[&str]| sy_ok(&[&["sim", trace.to_str().unwrap(), "--cache", "2"], extra].concat());
    let rate_in = |out: &str, policy: &str| -> f64 {
        let row = out.lines().find(|l| l.split_whitespace().next() == Some(policy));
        row.unwrap_or_else(|| panic!("no {policy} in {out}")).split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let out = sim(&[]);
    let rate = |policy: &str| rate_in(&out, policy);
    assert_eq!((rate("lru"), rate("belady")), (0.2, 0.4), "{out}");
    assert!(rate("hobbit") <= rate("belady") && rate("lfu") <= rate("belady"));
    // one layer: the current token's routes say nothing of the next use (recency decides);
    // knowing all five tokens' is Belady's
    assert_eq!(rate("belady/1"), 0.2, "{out}");
    assert_eq!(rate_in(&sim(&["--known-tokens", "5"]), "belady/5"), 0.4);
    assert!(sy_err(&["sim", trace.to_str().unwrap(), "--cache", "2", "--known-tokens", "0"]).contains("known-tokens"));
    let err = sy_err(&["sim", trace.to_str().unwrap(), "--cache", "2", "--hobbit-weights", "0.5,0.5,0.5,0"]);
    assert!(err.contains("summing to 1"), "{err}");
    // weights tuned on a trace (here the same one) can only match or beat the default ones there
    let tuned = sy_ok(&["sim", trace.to_str().unwrap(), "--cache", "2", "--tune-on", trace.to_str().unwrap()]);
    let tuned_rate = |row: &str| -> f64 {
        let cell = |l: &str| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok());
        tuned.lines().filter(|l| l.split_whitespace().next() == Some(row)).find_map(cell).expect(row)
    };
    assert!(tuned.contains("hobbit weights tuned on") && tuned_rate("hobbit*") >= tuned_rate("hobbit"), "{tuned}");
    std::fs::write(
        &trace,
        "{\"switchyard_trace\": 1, \"n_layers\": 1, \"n_experts\": 4}\n{\"layers\": [[[7, 1.0]]]}\n",
    )
    .unwrap();
    let err = sy_err(&["sim", trace.to_str().unwrap(), "--cache", "2"]);
    assert!(err.contains("trace.jsonl:2"), "{err}");
}
