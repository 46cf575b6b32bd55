//! Mixtral-style models, the MoE test models: Hugging Face <-> GGUF with llama.cpp's stacked
//! expert tensors, the pinned stock llama.cpp running them, and `switchyard moefy` refactoring a
//! dense model into experts that compute what the dense model computes when all run.

mod common;

use common::llama_perplexity;
use safetensors::Dtype;
use switchyard::convert::{gguf_to_hf, hf_to_gguf};
use switchyard::gguf::GgufFile;
use switchyard::hf::HfModel;
use switchyard::moe::capture::Capture;
use switchyard::moefy::{moefy, MoefyOptions};
use switchyard::synth::{self, MoeShape};
use switchyard::GgmlType;

const MOE: MoeShape = MoeShape { n_expert: 4, n_used: 2 };

#[test]
fn mixtral_round_trips_through_gguf_with_stacked_experts() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    synth::tiny_model(&p("moe-hf"), 256, Some(MOE), 7).unwrap();
    let hf = HfModel::open(&p("moe-hf")).unwrap();
    hf_to_gguf(&hf, None, "tiny moe", GgmlType::F32, &p("moe.gguf")).unwrap();

    let f = GgufFile::open(p("moe.gguf")).unwrap();
    assert_eq!(f.metadata.get_u32("llama.expert_count").unwrap(), 4);
    assert_eq!(f.metadata.get_u32("llama.expert_used_count").unwrap(), 2);
    let shape = |n: &str| f.tensor(n).unwrap_or_else(|| panic!("no {n}")).ne.clone();
    assert_eq!(shape("blk.1.ffn_gate_exps.weight"), [64, 128, 4]);
    assert_eq!(shape("blk.1.ffn_up_exps.weight"), [64, 128, 4]);
    assert_eq!(shape("blk.1.ffn_down_exps.weight"), [128, 64, 4]);
    assert_eq!(shape("blk.1.ffn_gate_inp.weight"), [64, 4]);
    assert!(f.tensor("blk.0.ffn_up.weight").is_none());
    // expert 2's slice of the stacked tensor is expert 2's matrix
    let up = f.tensor("blk.1.ffn_up_exps.weight").unwrap();
    let stacked: Vec<f32> = bytemuck::cast_slice::<u8, f32>(f.tensor_data(up)).to_vec();
    let e2 = hf.tensor_f32("model.layers.1.block_sparse_moe.experts.2.w3.weight").unwrap();
    assert_eq!(&stacked[2 * e2.len()..3 * e2.len()], e2.as_slice());

    gguf_to_hf(&f, &p("back-hf"), Dtype::F32).unwrap();
    let back = HfModel::open(&p("back-hf")).unwrap();
    assert_eq!(back.config.num_local_experts, Some(4));
    assert_eq!(back.config.num_experts_per_tok, Some(2));
    assert_eq!(back.config.model_type, "mixtral");
    assert_eq!(back.tensor_names().collect::<Vec<_>>(), hf.tensor_names().collect::<Vec<_>>());
    for n in hf.tensor_names() {
        assert_eq!(back.tensor_f32(n).unwrap(), hf.tensor_f32(n).unwrap(), "{n}");
    }
}

#[test]
fn llama_cpp_runs_a_mixtral_of_copies_of_one_mlp_as_that_dense_model() {
    let (Some(smol), Some(bin)) = (common::smollm2(), common::llama_bin()) else {
        return;
    };
    let tok = GgufFile::open(&smol).unwrap();
    let vocab = tok.metadata.get_str_array("tokenizer.ggml.tokens").unwrap().len();
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    synth::tiny_llama(&p("dense-hf"), vocab, 7).unwrap();
    let dense = HfModel::open(&p("dense-hf")).unwrap();
    mixtral_of_copies(&dense, MOE, &p("moe-hf"));
    hf_to_gguf(&dense, Some(&tok), "dense", GgmlType::F32, &p("dense.gguf")).unwrap();
    hf_to_gguf(&HfModel::open(&p("moe-hf")).unwrap(), Some(&tok), "moe", GgmlType::F32, &p("moe.gguf")).unwrap();
    let want = llama_perplexity(&bin, &p("dense.gguf"));
    let got = llama_perplexity(&bin, &p("moe.gguf"));
    // whichever two experts the router picks, their weights sum to one and each computes the
    // MLP: the mixture is the dense model, up to the rounding of the weighted sum
    assert!((got - want).abs() <= 1e-4 * want, "mixture of copies {got} against the dense model {want}");
}

/// `dense` (a llama folder) as a Mixtral folder at `out`: every layer's MLP copied into each of
/// `moe.n_expert` experts, behind a router with arbitrary fixed weights.
fn mixtral_of_copies(dense: &HfModel, moe: MoeShape, out: &std::path::Path) {
    let mut config = dense.config.clone();
    config.model_type = "mixtral".into();
    config.architectures = vec!["MixtralForCausalLM".into()];
    config.num_local_experts = Some(moe.n_expert);
    config.num_experts_per_tok = Some(moe.n_used);
    let mut tensors = Vec::new();
    for name in dense.tensor_names() {
        let (shape, data) = (dense.shape(name).unwrap().to_vec(), dense.tensor_f32(name).unwrap());
        let Some((layer, projection)) = name.split_once(".mlp.") else {
            tensors.push((name.to_string(), shape, data));
            continue;
        };
        let expert_weight = match projection {
            "gate_proj.weight" => "w1",
            "up_proj.weight" => "w3",
            "down_proj.weight" => "w2",
            other => panic!("{name}: unexpected MLP tensor {other}"),
        };
        for e in 0..moe.n_expert {
            let expert = format!("{layer}.block_sparse_moe.experts.{e}.{expert_weight}.weight");
            tensors.push((expert, shape.clone(), data.clone()));
        }
        if expert_weight == "w1" {
            let n = moe.n_expert * dense.config.hidden_size;
            let router = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            tensors.push((
                format!("{layer}.block_sparse_moe.gate.weight"),
                vec![moe.n_expert, n / moe.n_expert],
                router,
            ));
        }
    }
    switchyard::hf::write_hf_folder(out, &config, &tensors, Dtype::F32).unwrap();
}

#[test]
fn moefy_makes_a_mixture_that_stock_llama_cpp_runs_equal_to_the_dense_model_at_k_equal_e() {
    let (Some(smol), Some(stock), Some(patched), Some(text)) =
        (common::smollm2(), common::llama_bin(), common::llama_patched_bin(), common::text_data())
    else {
        return;
    };
    let tok = GgufFile::open(&smol).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n).to_str().unwrap().to_string();
    common::tiny_dense_gguf(tmp.path(), &tok, "dense", 5);
    let (calib, held_out) = (text.join("text-chat-train.txt"), text.join("text-chat-eval.txt"));
    let (calib, held_out, patched_s) = (calib.to_str().unwrap(), held_out.to_str().unwrap(), patched.to_str().unwrap());
    // four chunks of 512 tokens: llama-perplexity runs them as one batch of four sequences
    let moefy = |k: &str, out: &str| {
        [
            "moefy",
            &p("dense.gguf"),
            "--experts",
            "4",
            "--top-k",
            k,
            "--text",
            calib,
            "--ctx",
            "512",
            "--chunks",
            "4",
            "--capture",
            &p("capture"),
            "--llama-bin",
            patched_s,
            "-o",
            &p(out),
        ]
        .map(String::from)
    };

    let report = common::sy_ok(&moefy("4", "moe4.gguf"));
    assert!(report.contains("2 layers of 4 experts, top-4, 80 channels each (64 shared)"), "{report}");
    // every token in the first layer; in the last, only the scored second half of each chunk
    let capture = Capture::load(std::path::Path::new(&p("capture"))).unwrap();
    assert_eq!((capture.n_embd, capture.rows(0), capture.rows(1)), (64, 2048, 1024));
    let dense = llama_perplexity(&stock, p("dense.gguf").as_ref());
    let all = llama_perplexity(&stock, p("moe4.gguf").as_ref());
    // the same function; only the order of float additions differs
    assert!((dense - all).abs() <= 1e-4 * dense, "dense {dense} vs all 4 experts {all}");

    // top-2 of 4, from the same capture: routed, and no longer the dense model
    let report = common::sy_ok(&moefy("2", "moe2.gguf"));
    assert!(report.contains("top-1 accuracy") && report.contains("recall of the top-2"), "{report}");
    let routed = llama_perplexity(&stock, p("moe2.gguf").as_ref());
    // half of each layer's FFN per token: no longer the dense function, but close to it (over
    // dense models of seeds 1-11, top-2 stayed within 0.89-1.44 times the dense perplexity;
    // 1.11 for this one)
    assert!(routed != all && (routed / dense - 1.0).abs() < 0.5, "top-2 perplexity {routed}, dense {dense}");

    // its routing, traced over batches of several sequences, covers every token
    let report = common::sy_ok(
        &["trace", &p("moe2.gguf"), "--text", held_out, "--chunks", "4", "-o", &p("t.jsonl"), "--llama-bin", patched_s]
            .map(String::from),
    );
    assert!(report.contains("2048 tokens, 2 MoE layers, 4 experts"), "{report}");

    // an impossible request fails before writing anything
    let before = common::listing(tmp.path());
    let err = common::sy_err(&moefy("5", "bad.gguf"));
    assert!(err.contains("dense.gguf") && err.contains("top-5"), "{err}");
    assert_eq!(common::listing(tmp.path()), before);
}

#[test]
fn malformed_mixtral_folders_are_refused_with_the_tensor_named() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    synth::tiny_model(&p("moe-hf"), 256, Some(MOE), 7).unwrap();
    // a config that claims more experts than the folder holds
    let cfg = p("moe-hf/config.json");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("\"num_local_experts\": 4", "\"num_local_experts\": 5");
    std::fs::write(&cfg, text).unwrap();
    let err = hf_to_gguf(&HfModel::open(&p("moe-hf")).unwrap(), None, "x", GgmlType::F32, &p("x.gguf")).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("missing tensor") && msg.contains("experts.4."), "{msg}");
    assert!(!p("x.gguf").exists(), "a failed conversion left a file");

    // moefy takes dense models only
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg).unwrap().replace("\"num_local_experts\": 5", "\"num_local_experts\": 4"),
    )
    .unwrap();
    hf_to_gguf(&HfModel::open(&p("moe-hf")).unwrap(), None, "x", GgmlType::F32, &p("moe.gguf")).unwrap();
    let capture = Capture { n_embd: 64, layers: vec![vec![0.0; 64 * 100]; 2] };
    let opts = MoefyOptions { n_expert: 2, n_used: 1, shared: 0.0, seed: 1 };
    let err = moefy(&GgufFile::open(p("moe.gguf")).unwrap(), &capture, &opts, &p("y.gguf")).unwrap_err();
    assert!(err.to_string().contains("moe.gguf: moefy needs a dense"), "{err}");
    assert!(!p("y.gguf").exists());
}

#[test]
fn the_patched_llama_cpp_records_routing_traces_that_sim_replays() {
    let (Some(smol), Some(bin)) = (common::smollm2(), common::llama_patched_bin()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    let tok = GgufFile::open(&smol).unwrap();
    tiny_moe_gguf(tmp.path(), &tok);

    // four chunks of 128 tokens in two batches of 256. A second batch is where a trace that
    // read the output rows late found their memory reused by the graph allocator and stopped
    // (fixed in llama-switchyard-record.cpp: out_ids read when the get_rows runs): with 2
    // layers, 4 of 256 last-layer routes came out
    let trace = p("trace.jsonl");
    let (model, text, bin_s) = (p("moe.gguf"), "/usr/share/common-licenses/Apache-2.0", bin.to_str().unwrap());
    let trace_args = |model: &std::path::Path, out: &std::path::Path| {
        let (m, o) = (model.to_str().unwrap().to_string(), out.to_str().unwrap().to_string());
        ["trace", &m, "--text", text, "--ctx", "128", "--chunks", "4", "-o", &o, "--llama-bin", bin_s].map(String::from)
    };
    let report = common::sy_ok(&trace_args(&model, &trace));
    assert!(report.contains("512 tokens, 2 MoE layers, 4 experts"), "{report}");
    let t = switchyard::moe::trace::Trace::load(&trace).unwrap();
    assert_eq!((t.n_layers, t.n_experts, t.tokens.len()), (2, 4, 512));
    for (i, tok) in t.tokens.iter().enumerate() {
        let first = &tok.layers[0];
        assert_eq!(first.len(), 2, "top-2 in layer 0: {first:?}");
        assert_ne!(first[0].0, first[1].0, "two different experts");
        assert!(first[0].1 >= first[1].1 && first[0].1 > 0.0 && first[0].1 + first[1].1 <= 1.0 + 1e-6);
        // llama.cpp computes the last layer only for the tokens perplexity scores, the second
        // half of each chunk; the trace puts their routes on the right tokens
        let scored = i % 128 >= 64;
        assert_eq!(tok.layers[1].len(), if scored { 2 } else { 0 }, "token {i}: {:?}", tok.layers[1]);
    }
    let report = common::sy_ok(&["sim", trace.to_str().unwrap(), "--cache", "2"]);
    assert!(report.contains("512 tokens") && report.contains("belady"), "{report}");

    // a dense model cannot be traced: refused, and no trace file is left behind
    synth::tiny_llama(&p("dense-hf"), 49152, 5).unwrap();
    hf_to_gguf(&HfModel::open(&p("dense-hf")).unwrap(), Some(&tok), "dense", GgmlType::F32, &p("dense.gguf")).unwrap();
    let before = common::listing(tmp.path());
    let err = common::sy_err(&trace_args(&p("dense.gguf"), &p("dense.jsonl")));
    assert!(err.contains("not a mixture of experts"), "{err}");
    assert_eq!(common::listing(tmp.path()), before);
}

/// The tiny synthetic MoE (SmolLM2's vocabulary) as `dir`/moe.gguf, F32.
fn tiny_moe_gguf(dir: &std::path::Path, tok: &GgufFile) {
    synth::tiny_model(&dir.join("moe-hf"), 49152, Some(MOE), 7).unwrap();
    hf_to_gguf(&HfModel::open(&dir.join("moe-hf")).unwrap(), Some(tok), "moe", GgmlType::F32, &dir.join("moe.gguf"))
        .unwrap();
}

/// A counter of the report the moe cache logs when the model is freed (library info: -lv 4):
/// the number before `what` ("loads", "low precision", "MiB read", ...).
fn counter(log: &str, what: &str) -> f64 {
    let line =
        log.lines().find(|l| l.contains("moe cache: budget")).unwrap_or_else(|| panic!("no cache report:\n{log}"));
    let at = line.find(what).unwrap_or_else(|| panic!("no '{what}' in {line}"));
    line[..at].split_whitespace().last().unwrap().trim_start_matches('(').trim_end_matches(',').parse().unwrap()
}

/// MiB of one expert of `model` (its gate, up and down matrices) stored as `ty`.
fn expert_mib(model: &std::path::Path, ty: GgmlType) -> f64 {
    let f = GgufFile::open(model).unwrap();
    let n_expert = f.metadata.get_u32("llama.expert_count").unwrap() as u64;
    let bytes: u64 = ["ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"]
        .iter()
        .map(|m| ty.row_bytes(f.tensor(&format!("blk.0.{m}.weight")).unwrap().n_elements() / n_expert).unwrap())
        .sum();
    bytes as f64 / 1048576.0
}

/// The cache report's MiB read is `want`, to the report's one decimal.
fn assert_read(log: &str, want: f64) {
    let read = counter(log, "MiB read");
    assert!((read - want).abs() <= 0.051, "{read} MiB read, {want:.3} MiB loaded");
}

#[test]
fn the_moe_cache_computes_what_stock_llama_cpp_computes_at_any_budget_and_prefetching() {
    let (Some(smol), Some(stock), Some(patched)) =
        (common::smollm2(), common::llama_bin(), common::llama_patched_bin())
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    let tok = GgufFile::open(&smol).unwrap();
    tiny_moe_gguf(tmp.path(), &tok);
    let model = p("moe.gguf");
    let want = llama_perplexity(&stock, &model);

    // every budget and policy computes the same: each layer's picks are read in before it runs
    let policies = [
        ("100%", "lru"),
        ("25%", "lru"),
        ("25%", "lfu"),
        ("25%", "hobbit"),
        ("25%", "hobbit:0.75,0,0,0.25"),
        ("0", "lru"),
    ];
    for (budget, policy) in policies {
        let (got, log) = common::llama_perplexity_with(
            &patched,
            &model,
            &["--moe-cache", budget, "--moe-policy", policy, "-lv", "4"],
        );
        assert_eq!(got, want, "--moe-cache {budget} --moe-policy {policy}");
        assert!(counter(&log, "loads") > 0.0 && counter(&log, "skipped") == 0.0, "{budget} {policy}");
        if budget == "100%" {
            // 2 layers x 4 experts, each read once
            assert_eq!(counter(&log, "loads"), 8.0, "{log}");
        }
    }
    // HOBBIT's skipping: picks below the top-1 that are not in memory are not read (one token
    // per micro-batch, as in decoding: a big batch has most experts in memory for some token)
    let (want_ub1, _) = common::llama_perplexity_with(&stock, &model, &["-ub", "1"]);
    let decode = ["--moe-cache", "0", "-ub", "1", "-lv", "4"];
    let (no_skipping, all_log) = common::llama_perplexity_with(&patched, &model, &decode);
    assert_eq!(no_skipping, want_ub1, "--moe-cache 0 -ub 1");
    let (skipping, log) = common::llama_perplexity_with(&patched, &model, &[&decode[..], &["--moe-t2", "0"]].concat());
    let (skipped, loads, all_loads) = (counter(&log, "skipped"), counter(&log, "loads"), counter(&all_log, "loads"));
    // each load reads one whole F32 expert, so skipping reads less by exactly what it skips
    // (measured: 671 loads against 1174, about half the tokens' second pick skipped)
    let expert = expert_mib(&model, GgmlType::F32);
    assert_read(&all_log, all_loads * expert);
    assert_read(&log, loads * expert);
    assert!(skipped > 0.3 * all_loads && loads < 0.75 * all_loads, "{skipped} skipped, {loads} loads of {all_loads}");
    // a random model's perplexity (about 1e8) measures nothing here but that the outputs changed
    assert!(skipping.is_finite() && skipping != want_ub1, "{skipping} vs {want_ub1}");

    // prefetching reads the next layer's guessed experts in the background (one token per
    // micro-batch, as in decoding: prompts are not prefetched for; 75% leaves room for guesses
    // beside the layer running); results do not change
    let (got, log) = common::llama_perplexity_with(
        &patched,
        &model,
        &["--moe-cache", "75%", "--moe-prefetch", "1", "-ub", "1", "-lv", "4"],
    );
    assert_eq!(got, want_ub1, "--moe-prefetch 1");
    assert!(counter(&log, "prefetched") > 0.0 && counter(&log, "used)") > 0.0, "{log}");

    // settings that cannot work are refused by name
    let (ok, log) = common::llama_perplexity_run(&patched, &model, &["--moe-cache", "50%", "--moe-prefetch", "-1"]);
    assert!(!ok && log.contains("--moe-prefetch"), "{log}");
    let (ok, log) = common::llama_perplexity_run(&patched, &model, &["--moe-cache", "lots"]);
    assert!(!ok && log.contains("'lots'"), "{log}");
    let (ok, log) = common::llama_perplexity_run(&patched, &model, &["--moe-cache", "50%", "--moe-policy", "fifo"]);
    assert!(!ok && log.contains("'fifo'"), "{log}");
    synth::tiny_llama(&p("dense-hf"), 49152, 5).unwrap();
    hf_to_gguf(&HfModel::open(&p("dense-hf")).unwrap(), Some(&tok), "dense", GgmlType::F32, &p("dense.gguf")).unwrap();
    let (ok, log) = common::llama_perplexity_run(&patched, &p("dense.gguf"), &["--moe-cache", "50%"]);
    assert!(!ok && log.contains("not a mixture of experts"), "{log}");
}

#[test]
fn moe_pack_copies_load_unimportant_misses_cheaply_and_beta_skips() {
    let (Some(smol), Some(stock), Some(patched)) =
        (common::smollm2(), common::llama_bin(), common::llama_patched_bin())
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    let s = |n: &str| p(n).to_str().unwrap().to_string();
    let tok = GgufFile::open(&smol).unwrap();
    tiny_moe_gguf(tmp.path(), &tok);
    let bin = patched.to_str().unwrap();
    let text = "/usr/share/common-licenses/Apache-2.0";
    common::sy_ok(&[
        "trace",
        &s("moe.gguf"),
        "--text",
        text,
        "--ctx",
        "128",
        "--chunks",
        "2",
        "-o",
        &s("trace.jsonl"),
        "--llama-bin",
        bin,
    ]);
    let report = common::sy_ok(&["moe-pack", &s("moe.gguf"), "--trace", &s("trace.jsonl"), "-o", &s("packed.gguf")]);
    assert!(report.contains("6 expert tensors with q4_0 copies") && report.contains("beta per layer"), "{report}");
    let packed = p("packed.gguf");

    // the copies change nothing until a threshold asks for them
    let want = llama_perplexity(&stock, &p("moe.gguf"));
    let (got, _) = common::llama_perplexity_with(&patched, &packed, &["--moe-cache", "100%", "-lv", "4"]);
    assert_eq!(got, want);

    // one token per micro-batch and an empty cache: nearly every pick misses. With t1 = 0 a
    // missing second pick reads its Q4_0 copy, a seventh of the F32 bytes
    let decode = ["--moe-cache", "0", "-ub", "1", "-lv", "4"];
    let (full, full_log) = common::llama_perplexity_with(&patched, &packed, &decode);
    let (low, log) = common::llama_perplexity_with(&patched, &packed, &[&decode[..], &["--moe-t1", "0"]].concat());
    assert_eq!(counter(&full_log, "low precision"), 0.0);
    // top-2: at most the second pick of each token (an expert the previous token streamed in
    // serves the next one when its copy is good enough)
    let (loads, low_loads) = (counter(&log, "loads"), counter(&log, "low precision"));
    assert!(low_loads > 0.3 * loads && low_loads <= loads / 2.0, "{low_loads} of {loads}");
    // bytes read: the F32 experts and the Q4_0 copies loaded, exactly (measured 69.8 MiB
    // against 110.1 MiB without copies)
    let (f32_expert, q4_0_expert) = (expert_mib(&packed, GgmlType::F32), expert_mib(&packed, GgmlType::Q4_0));
    assert_read(&full_log, counter(&full_log, "loads") * f32_expert);
    assert_read(&log, (loads - low_loads) * f32_expert + low_loads * q4_0_expert);
    assert!(counter(&log, "MiB read") < 0.75 * counter(&full_log, "MiB read"));
    // the copies cost little (0.99 times the perplexity of F32 experts; 0.98-1.03 over the tiny
    // MoEs of seeds 1, 3, 7 and 11)
    assert!(low.is_finite() && low != full && (low / full - 1.0).abs() < 0.05, "{low} against {full}");

    // dynamic skipping ("Not All Experts are Equal", arXiv 2402.14800) drops the weaker pick
    // below beta (the median ratio: about half the tokens)
    let (skipping, log) =
        common::llama_perplexity_with(&patched, &packed, &[&decode[..], &["--moe-skip-beta"]].concat());
    let (skipped, loads) = (counter(&log, "skipped"), counter(&log, "loads"));
    assert!(skipping.is_finite() && skipping != full, "{skipping}");
    // skipped of the picks: 0.205 here, 0.19-0.21 over seeds 1, 3, 7 and 11; at most the
    // second of two
    assert!(
        skipped > 0.15 * (skipped + loads) && skipped < 0.5 * (skipped + loads),
        "{skipped} skipped, {loads} loads"
    );
    assert_read(&log, loads * f32_expert);

    // what needs moe-pack is refused on a model without it, by name
    let (ok, log) = common::llama_perplexity_run(&patched, &p("moe.gguf"), &["--moe-cache", "50%", "--moe-t1", "0.5"]);
    assert!(!ok && log.contains("moe-pack") && log.contains("ffn_gate_exps"), "{log}");
    let (ok, log) = common::llama_perplexity_run(&patched, &p("moe.gguf"), &["--moe-cache", "50%", "--moe-skip-beta"]);
    assert!(!ok && log.contains("switchyard.moe.skip_beta"), "{log}");
    let err = common::sy_err(&["moe-pack", &s("packed.gguf"), "-o", &s("again.gguf")]);
    assert!(err.contains("already packed"), "{err}");
    assert!(!p("again.gguf").exists());
}

#[test]
fn moe_prune_writes_models_stock_llama_cpp_runs_and_keeping_every_expert_changes_nothing() {
    let (Some(smol), Some(stock), Some(patched)) =
        (common::smollm2(), common::llama_bin(), common::llama_patched_bin())
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    let s = |n: &str| p(n).to_str().unwrap().to_string();
    let tok = GgufFile::open(&smol).unwrap();
    tiny_moe_gguf(tmp.path(), &tok);
    let (text, bin) = ("/usr/share/common-licenses/Apache-2.0", patched.to_str().unwrap());
    let prune = |keep: &str, method: &str, out: &str| {
        [
            "moe-prune",
            &s("moe.gguf"),
            "--keep",
            keep,
            "--method",
            method,
            "--text",
            text,
            "--ctx",
            "128",
            "--chunks",
            "4",
            "--capture",
            &s("capture"),
            "--llama-bin",
            bin,
            "-o",
            &s(out),
        ]
        .map(String::from)
    };
    let mean_loss = |report: &str| -> f64 {
        let line = report.lines().find(|l| l.starts_with("mean relative loss")).expect("a mean loss line");
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };

    // every expert kept: the same model
    let report = common::sy_ok(&prune("4", "enum", "p4.gguf"));
    assert!(report.contains("2 layers, 4 -> 4 experts, top-2 -> top-2, method enum"), "{report}");
    assert_eq!(mean_loss(&report), 0.0, "{report}");
    // the patched llama.cpp captures a MoE's FFN inputs as a dense model's: every token in the
    // first layer, the scored half of each chunk in the last
    let capture = Capture::load(&p("capture")).unwrap();
    assert_eq!((capture.n_embd, capture.rows(0), capture.rows(1)), (64, 512, 256));
    let want = llama_perplexity(&stock, &p("moe.gguf"));
    assert_eq!(llama_perplexity(&stock, &p("p4.gguf")), want, "keeping all 4 experts");

    // half of the experts, by each method (the capture reused): stock llama.cpp runs them
    let mut losses = Vec::new();
    for method in ["enum", "reap", "freq", "random"] {
        let out = format!("p2-{method}.gguf");
        let report = common::sy_ok(&prune("2", method, &out));
        assert!(report.contains("4 -> 2 experts") && report.contains("layer 1: 256 tokens, kept ["), "{report}");
        losses.push((method, mean_loss(&report)));
        let f = GgufFile::open(p(&out)).unwrap();
        assert_eq!(f.metadata.get_u32("llama.expert_count").unwrap(), 2);
        assert_eq!(f.metadata.get_str("switchyard.prune.method").unwrap(), method);
        assert_eq!(f.tensor("blk.1.ffn_down_exps.weight").unwrap().ne, [128, 64, 2]);
        let ppl = llama_perplexity(&stock, &p(&out));
        assert!(ppl.is_finite() && ppl != want, "{method}: {ppl} against {want} unpruned");
    }
    // enum tried every subset on these tokens: none of the others' is closer to the unpruned
    // output
    assert!(losses.iter().all(|&(_, l)| l >= losses[0].1 && l > 0.0), "{losses:?}");

    // an impossible request fails before any run and leaves nothing
    let before = common::listing(tmp.path());
    let err = common::sy_err(&prune("5", "enum", "bad.gguf"));
    assert!(err.contains("moe.gguf") && err.contains("keep 5"), "{err}");
    assert_eq!(common::listing(tmp.path()), before);
}
