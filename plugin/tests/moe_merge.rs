//! `switchyard moe-merge` (Branch-Train-MiX): fine-tunes' FFNs as each layer's experts, routers
//! fitted on each one's domain text, a GGUF the pinned stock llama.cpp runs.

mod common;

use common::llama_perplexity;
use switchyard::gguf::GgufFile;
use switchyard::weights::gguf_tensor_f32;

#[test]
fn merging_copies_of_the_base_computes_the_base_whatever_the_routers_pick() {
    let (Some(smol), Some(stock), Some(patched), Some(text)) =
        (common::smollm2(), common::llama_bin(), common::llama_patched_bin(), common::text_data())
    else {
        return;
    };
    let tok = GgufFile::open(&smol).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n).to_str().unwrap().to_string();
    for (seed, name) in [(5, "dense"), (6, "other")] {
        common::tiny_dense_gguf(tmp.path(), &tok, name, seed);
    }
    let (math, code) = (text.join("text-math-train.txt"), text.join("text-code-train.txt"));
    let merge = |experts: [&str; 2], extra: &[&str], out: &str| -> Vec<String> {
        let mut args = vec![
            "moe-merge".to_string(),
            p("dense.gguf"),
            "--expert".into(),
            format!("math={}", p(experts[0])),
            "--expert".into(),
            format!("code={}", p(experts[1])),
            "--text".into(),
            format!("math={}", math.display()),
            "--text".into(),
            format!("code={}", code.display()),
            "--chunks".into(),
            "2".into(),
            "--capture-dir".into(),
            p("captures"),
            "--llama-bin".into(),
            patched.to_str().unwrap().into(),
            "-o".into(),
            p(out),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };

    // three equal FFNs per layer, weights summing to 1, and the mean of three equal attentions
    // (BTX's default): the dense function, up to float summation order, wherever the routers
    // send each token
    let report = common::sy_ok(&merge(["dense.gguf", "dense.gguf"], &[], "copies.gguf"));
    assert!(report.contains("2 layers of 3 experts (base, math, code), top-2"), "{report}");
    let merged = GgufFile::open(p("copies.gguf")).unwrap();
    assert_eq!(merged.metadata.get_u32("llama.expert_count").unwrap(), 3);
    assert_eq!(merged.tensor("blk.1.ffn_down_exps.weight").unwrap().ne, vec![128, 64, 3]);
    let dense = llama_perplexity(&stock, p("dense.gguf").as_ref());
    let copies = llama_perplexity(&stock, p("copies.gguf").as_ref());
    assert!((dense - copies).abs() <= 1e-4 * dense, "dense {dense} vs merged copies {copies}");
    // the routers tell the domains apart on held-out tokens (each layer's row: accuracy first)
    let accuracy = |line: &str| line.split('|').nth(2).unwrap().trim().trim_end_matches('%').parse::<f64>().unwrap();
    let rows: Vec<&str> = report.lines().filter(|l| l.starts_with("| 0 |") || l.starts_with("| 1 |")).collect();
    assert_eq!(rows.len(), 2, "{report}");
    assert!(rows.iter().all(|r| accuracy(r) > 70.0), "{report}");

    // the base's attention, copied rather than averaged with equal copies: the same function
    common::sy_ok(&merge(["dense.gguf", "dense.gguf"], &["--attention", "base"], "base-attn.gguf"));
    let base_attn = llama_perplexity(&stock, p("base-attn.gguf").as_ref());
    assert!((dense - base_attn).abs() <= 1e-4 * dense, "dense {dense} vs the base's attention {base_attn}");

    // a different model as an expert: each stack holds every model's matrix in order (base,
    // math, code), the routers are written, and stock llama.cpp runs it
    common::sy_ok(&merge(["dense.gguf", "other.gguf"], &[], "mixed.gguf"));
    let (mixed_f, dense_f, other_f) = (
        GgufFile::open(p("mixed.gguf")).unwrap(),
        GgufFile::open(p("dense.gguf")).unwrap(),
        GgufFile::open(p("other.gguf")).unwrap(),
    );
    for kind in ["gate", "up", "down"] {
        let stack = gguf_tensor_f32(&mixed_f, &format!("blk.1.ffn_{kind}_exps.weight")).unwrap().0;
        let want = |f: &GgufFile| gguf_tensor_f32(f, &format!("blk.1.ffn_{kind}.weight")).unwrap().0;
        let n = stack.len() / 3;
        for (e, model) in [&dense_f, &dense_f, &other_f].into_iter().enumerate() {
            assert_eq!(stack[e * n..(e + 1) * n], want(model)[..], "ffn_{kind} expert {e}");
        }
    }
    let (router, ne) = gguf_tensor_f32(&mixed_f, "blk.0.ffn_gate_inp.weight").unwrap();
    assert_eq!(ne, vec![64, 3]);
    let row = |e: usize| &router[e * 64..(e + 1) * 64];
    assert!((0..3).all(|e| row(e).iter().any(|&v| v != 0.0)) && row(1) != row(2), "router rows {router:?}");
    let mixed = llama_perplexity(&stock, p("mixed.gguf").as_ref());
    assert!(mixed.is_finite() && mixed != dense, "mixed {mixed}, dense {dense}");

    // a text without its expert, and a fine-tune of another network, fail before writing
    let before = common::listing(tmp.path());
    let mut args = merge(["dense.gguf", "dense.gguf"], &["--text", "chat=/dev/null"], "bad.gguf");
    let err = common::sy_err(&args);
    assert!(err.contains("--text chat") && err.contains("no --expert chat"), "{err}");
    args = merge(["dense.gguf", "dense.gguf"], &[], "bad.gguf");
    args[5] = args[3].clone();
    let err = common::sy_err(&args);
    assert!(err.contains("--expert math") && err.contains("name of its own"), "{err}");
    args[5] = format!("code={}", smol.display());
    let err = common::sy_err(&args);
    assert!(err.contains("expert 'code'") && err.contains("SmolLM2"), "{err}");
    assert_eq!(common::listing(tmp.path()), before);
}
