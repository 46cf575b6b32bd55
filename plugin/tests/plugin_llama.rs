//! The llama.cpp plugin against llama.cpp itself: the patched build running a bundle switched
//! to an expert must compute exactly what the same build computes on `switchyard extract`'s
//! standalone GGUF of that expert, and the patch must not change anything for plain models.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{sy_ok, Tiny};
use switchyard::GgmlType;

fn run(bin: &Path, tool: &str, args: &[&str]) -> Output {
    Command::new(bin.join(tool)).args(args).output().unwrap()
}

fn ok(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Greedy completion text of `model` (optionally switched to `expert`).
fn complete(bin: &Path, model: &Path, expert: Option<&str>) -> String {
    let mut args = vec!["-m", model.to_str().unwrap(), "-p", "The three primary colors are", "-n", "24", "--temp", "0"];
    args.extend(["-no-cnv", "--no-warmup", "--simple-io", "-t", "2", "-c", "256", "--seed", "1"]);
    if let Some(e) = expert {
        args.extend(["--expert", e]);
    }
    ok(run(bin, "llama-completion", &args), &format!("llama-completion {expert:?}"))
}

/// Every per-chunk perplexity llama-perplexity prints and the final one. They expose the
/// logits, but are not bit-reproducible: llama-perplexity hands tokens to threads dynamically
/// and sums per thread, so compare them with [`assert_close`].
fn perplexity(bin: &Path, model: &Path, expert: Option<&str>) -> Vec<f64> {
    let mut args = vec!["-m", model.to_str().unwrap(), "-f", "/usr/share/common-licenses/Apache-2.0", "-c", "128"];
    args.extend(["--chunks", "3", "-t", "2", "-b", "128"]);
    if let Some(e) = expert {
        args.extend(["--expert", e]);
    }
    let out = run(bin, "llama-perplexity", &args);
    assert!(out.status.success(), "llama-perplexity failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let log = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let mut ppl: Vec<f64> = Vec::new();
    for l in log.lines() {
        if l.starts_with('[') {
            ppl.extend(l.split(',').filter_map(|c| c.split(']').nth(1)).filter_map(|v| v.parse::<f64>().ok()));
        } else if let Some(v) = l.split("Final estimate: PPL = ").nth(1) {
            ppl.push(v.split_whitespace().next().unwrap().parse().unwrap());
        }
    }
    assert_eq!(ppl.len(), 4, "expected 3 chunks and a final estimate in:\n{log}");
    ppl
}

fn assert_close(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-9 * x.abs().max(y.abs()), "{what}: {a:?} vs {b:?}");
    }
}

struct Fixture {
    tiny: Tiny,
    bundle: PathBuf,
}

fn fixture(smol: &Path) -> Fixture {
    let tiny = Tiny::new(GgmlType::Q8_0, Some(smol));
    let bundle = tiny.path("bundle.gguf");
    sy_ok(&tiny.pack_args(&tiny.experts, &[], &bundle));
    for e in ["math", "code", "base"] {
        sy_ok(&[
            "extract",
            bundle.to_str().unwrap(),
            "--expert",
            e,
            "-o",
            tiny.path(&format!("{e}.gguf")).to_str().unwrap(),
        ]);
    }
    Fixture { tiny, bundle }
}

#[test]
fn bundle_switched_to_an_expert_computes_exactly_its_extracted_gguf() {
    let (Some(smol), Some(bin)) = (common::smollm2(), common::llama_patched_bin()) else { return };
    let f = fixture(&smol);
    let mut texts = Vec::new();
    for e in ["math", "code", "base"] {
        let extracted = f.tiny.path(&format!("{e}.gguf"));
        let via_bundle = complete(&bin, &f.bundle, Some(e));
        assert_eq!(via_bundle, complete(&bin, &extracted, None), "completion of expert {e}");
        assert_close(
            &perplexity(&bin, &f.bundle, Some(e)),
            &perplexity(&bin, &extracted, None),
            &format!("perplexity of expert {e}"),
        );
        texts.push(via_bundle);
    }
    assert!(texts[0] != texts[1] || texts[1] != texts[2], "experts should not all generate the same text");
    // Without --expert the bundle runs as its base.
    assert_eq!(complete(&bin, &f.bundle, None), texts[2]);
}

/// llama-cli's single-turn answer (it runs an in-process llama-server).
fn chat(bin: &Path, model: &Path, expert: Option<&str>) -> String {
    let mut args =
        vec!["-m", model.to_str().unwrap(), "-p", "What are the three primary colors?", "-n", "24", "--temp", "0"];
    args.extend(["-st", "--simple-io", "--no-warmup", "-c", "512", "-t", "2"]);
    if let Some(e) = expert {
        args.extend(["--expert", e]);
    }
    let out = Command::new(bin.join("llama-cli")).args(&args).stdin(std::process::Stdio::null()).output().unwrap();
    let text = ok(out, "llama-cli");
    let start = text.find("> What are the three primary colors?").expect("prompt echo");
    let end = text[start..].find("[ Prompt:").map_or(text.len(), |e| start + e);
    text[start..end].trim().to_string()
}

#[test]
fn llama_cli_expert_option_runs_the_expert() {
    let (Some(smol), Some(bin)) = (common::smollm2(), common::llama_patched_bin()) else { return };
    let f = fixture(&smol);
    for e in ["math", "code"] {
        assert_eq!(
            chat(&bin, &f.bundle, Some(e)),
            chat(&bin, &f.tiny.path(&format!("{e}.gguf")), None),
            "llama-cli --expert {e}"
        );
    }
}

#[test]
fn switching_in_process_matches_fresh_processes_and_unknown_experts_are_refused() {
    let (Some(smol), Some(bin)) = (common::smollm2(), common::llama_patched_bin()) else { return };
    let f = fixture(&smol);
    let exe = common::build_example(&bin, "switchyard_generate", f.tiny.dir.path());
    let generate = |model: &Path, experts: &[&str]| -> Vec<(String, String)> {
        let mut cmd = Command::new(&exe);
        cmd.arg(model).args(["The three primary colors are", "16"]).args(experts);
        ok(cmd.output().unwrap(), "switchyard_generate")
            .lines()
            .map(|l| {
                let mut f = l.split('\t');
                (f.next().unwrap().to_string(), f.next().unwrap().to_string())
            })
            .collect()
    };
    let order = ["math", "code", "math", "base", "code"];
    let switched = generate(&f.bundle, &order);
    assert_eq!(switched.len(), order.len());
    for (e, tokens) in &switched {
        let fresh = generate(&f.tiny.path(&format!("{e}.gguf")), &[]);
        assert_eq!(&fresh[0].1, tokens, "expert {e}: tokens after switching differ from its extracted GGUF");
    }
    let out = Command::new(&exe).arg(&f.bundle).args(["hello", "4", "poetry"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("poetry") && err.contains("math, code"), "{err}");
}

#[test]
fn the_patch_changes_nothing_for_plain_models() {
    let (Some(smol), Some(patched), Some(stock)) =
        (common::smollm2(), common::llama_patched_bin(), common::llama_bin())
    else {
        return;
    };
    assert_close(
        &perplexity(&patched, &smol, None),
        &perplexity(&stock, &smol, None),
        "SmolLM2 perplexity, patched vs stock",
    );
    assert_eq!(complete(&patched, &smol, None), complete(&stock, &smol, None));
    // --expert on a plain model is an error, not silently ignored.
    let out = run(
        &patched,
        "llama-completion",
        &["-m", smol.to_str().unwrap(), "-p", "hi", "-n", "1", "-no-cnv", "--expert", "math"],
    );
    assert!(!out.status.success());
}
