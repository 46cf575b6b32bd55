//! Mixtral-style models, the MoE test models: Hugging Face <-> GGUF with llama.cpp's stacked
//! expert tensors, and the pinned stock llama.cpp running them, a dense FFN split into experts
//! computing what the dense model computes.

mod common;

use common::llama_perplexity;
use safetensors::Dtype;
use switchyard::convert::{gguf_to_hf, hf_to_gguf};
use switchyard::gguf::GgufFile;
use switchyard::hf::HfModel;
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
fn llama_cpp_runs_mixtral_models_and_a_split_ffn_equals_the_dense_one() {
    let (Some(smol), Some(bin)) = (common::smollm2(), common::llama_bin()) else {
        return;
    };
    let tok = GgufFile::open(&smol).unwrap();
    let vocab = tok.metadata.get_str_array("tokenizer.ggml.tokens").unwrap().len();
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    let gguf = |hf: &str, out: &str| {
        hf_to_gguf(&HfModel::open(&p(hf)).unwrap(), Some(&tok), out, GgmlType::F32, &p(out)).unwrap();
        p(out)
    };

    synth::tiny_llama(&p("dense-hf"), vocab, 5).unwrap();
    synth::split_ffn_experts(&HfModel::open(&p("dense-hf")).unwrap(), 4, &p("split-hf")).unwrap();
    let dense = llama_perplexity(&bin, &gguf("dense-hf", "dense.gguf"));
    let split = llama_perplexity(&bin, &gguf("split-hf", "split.gguf"));
    // the same function; only the order of float additions differs
    assert!((dense - split).abs() <= 1e-4 * dense, "dense {dense} vs split into experts {split}");

    synth::tiny_model(&p("moe-hf"), vocab, Some(MOE), 7).unwrap();
    let moe = llama_perplexity(&bin, &gguf("moe-hf", "moe.gguf"));
    assert!(moe.is_finite() && moe > 1.0, "random MoE perplexity {moe}");
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

    let err = synth::split_ffn_experts(&HfModel::open(&p("moe-hf")).unwrap(), 2, &p("y-hf")).unwrap_err();
    assert!(err.to_string().contains("cannot split"), "{err}");
}

#[test]
fn the_patched_llama_cpp_records_routing_traces_that_sim_replays() {
    let (Some(smol), Some(bin)) = (common::smollm2(), common::llama_patched_bin()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    synth::tiny_model(&p("moe-hf"), 49152, Some(MOE), 7).unwrap();
    let tok = GgufFile::open(&smol).unwrap();
    hf_to_gguf(&HfModel::open(&p("moe-hf")).unwrap(), Some(&tok), "moe", GgmlType::F32, &p("moe.gguf")).unwrap();

    // two chunks of 128 tokens in one batch of 256
    let trace = p("trace.jsonl");
    let (model, text, bin_s) = (p("moe.gguf"), "/usr/share/common-licenses/Apache-2.0", bin.to_str().unwrap());
    let trace_args = |model: &std::path::Path, out: &std::path::Path| {
        let (m, o) = (model.to_str().unwrap().to_string(), out.to_str().unwrap().to_string());
        ["trace", &m, "--text", text, "--ctx", "128", "--chunks", "2", "-o", &o, "--llama-bin", bin_s].map(String::from)
    };
    let report = common::sy_ok(&trace_args(&model, &trace));
    assert!(report.contains("256 tokens, 2 MoE layers, 4 experts"), "{report}");
    let t = switchyard::moe::trace::Trace::load(&trace).unwrap();
    assert_eq!((t.n_layers, t.n_experts, t.tokens.len()), (2, 4, 256));
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
    assert!(report.contains("256 tokens") && report.contains("belady"), "{report}");

    // a dense model cannot be traced: refused, and no trace file is left behind
    synth::tiny_llama(&p("dense-hf"), 49152, 5).unwrap();
    hf_to_gguf(&HfModel::open(&p("dense-hf")).unwrap(), Some(&tok), "dense", GgmlType::F32, &p("dense.gguf")).unwrap();
    let before = common::listing(tmp.path());
    let err = common::sy_err(&trace_args(&p("dense.gguf"), &p("dense.jsonl")));
    assert!(err.contains("not a mixture of experts"), "{err}");
    assert_eq!(common::listing(tmp.path()), before);
}
