//! Bundles end to end through the library: pack, open, validate, extract, and every kind of
//! bad input the issue lists.

mod common;

use std::path::Path;

use common::{listing, Tiny};
use switchyard::build_bundle::{pack, PackOptions};
use switchyard::bundle::in_graph::GraphDeltaShape;
use switchyard::bundle::{Bundle, TensorDelta};
use switchyard::codec::relative_error;
use switchyard::extract::{extract, ExtractType};
use switchyard::gguf::GgufFile;
use switchyard::hf::{HfConfig, HfModel};
use switchyard::synth::DeltaSpec;
use switchyard::{quants, GgmlType};

fn no_progress(_: &str, _: u64, _: u64) {}

fn pack_tiny(t: &Tiny, out: &Path) -> switchyard::Result<switchyard::build_bundle::PackReport> {
    pack(&t.base_gguf, Some(&t.base_hf), &t.experts, &PackOptions::default(), out, &no_progress)
}

fn tensor_f32(f: &GgufFile, name: &str) -> Vec<f32> {
    let t = f.tensor(name).unwrap();
    quants::dequantize(t.ty, f.tensor_data(t), t.n_elements() as usize).unwrap()
}

#[test]
fn pack_then_extract_reproduces_each_expert_for_every_base_type() {
    for base_ty in [GgmlType::F32, GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
        let t = Tiny::new(base_ty, None);
        let out = t.path("bundle.gguf");
        let report = pack_tiny(&t, &out).unwrap();
        assert_eq!(report.experts.len(), 2);
        let bundle = Bundle::open(&out).unwrap();
        bundle.verify_base().unwrap();
        bundle.validate_all().unwrap();
        assert_eq!(bundle.experts.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["math", "code"]);

        // The base inside the bundle is the base GGUF, byte for byte, metadata in order.
        let base = GgufFile::open(&t.base_gguf).unwrap();
        assert_eq!(bundle.base_tensors().count(), base.tensors.len());
        for bt in &base.tensors {
            assert_eq!(bundle.file.tensor_data(bundle.file.tensor(&bt.name).unwrap()), base.tensor_data(bt));
        }
        let keys: Vec<&str> = bundle.file.metadata.keys().take(base.metadata.len()).collect();
        assert_eq!(keys, base.metadata.keys().collect::<Vec<_>>());

        for (name, dir) in &t.experts {
            let x = t.path(&format!("{name}.gguf"));
            extract(&bundle, name, ExtractType::Type(GgmlType::F32), &x, &|_, _| {}).unwrap();
            let got = GgufFile::open(&x).unwrap();
            let expert = HfModel::open(dir).unwrap();
            for bt in &base.tensors {
                let (want, _) = expert.gguf_tensor(&bt.name).unwrap();
                let have = tensor_f32(&got, &bt.name);
                let base_w = tensor_f32(&base, &bt.name);
                let exact: Vec<f32> = want.iter().zip(&base_w).map(|(a, b)| a - b).collect();
                let approx: Vec<f32> = have.iter().zip(&base_w).map(|(a, b)| a - b).collect();
                let e = relative_error(&approx, &exact);
                match bundle.delta(bundle.expert_index(name).unwrap(), &bt.name).unwrap() {
                    Some(TensorDelta::Codec(_)) => {
                        assert!(e < 0.35, "{base_ty} {name} {}: delta error {e}", bt.name)
                    }
                    Some(_) => common::assert_same(&have, &want, &format!("{base_ty} {name} {}", bt.name)),
                    None => common::assert_same(&have, &base_w, &format!("{base_ty} {name} {}", bt.name)),
                }
            }
        }
        // "base" extracts the base weights: unchanged tensors byte for byte, managed ones as
        // their dequantized values in the materialized type (exact where that is F32).
        let b = t.path("base-out.gguf");
        extract(&bundle, "base", ExtractType::Auto, &b, &|_, _| {}).unwrap();
        let b = GgufFile::open(&b).unwrap();
        for bt in &base.tensors {
            let got = b.tensor(&bt.name).unwrap();
            match bundle.materialized_type(&bt.name) {
                None => assert_eq!(b.tensor_data(got), base.tensor_data(bt)),
                Some(ty) => {
                    assert_eq!(got.ty, ty);
                    let want: Vec<f32> = tensor_f32(&base, &bt.name);
                    let want: Vec<f32> = if ty == GgmlType::F16 {
                        want.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
                    } else {
                        want
                    };
                    common::assert_same(&tensor_f32(&b, &bt.name), &want, &format!("{base_ty} base {}", bt.name));
                }
            }
        }
        assert!(b.metadata.keys().all(|k| !k.starts_with("switchyard.")));
    }
}

#[test]
fn extract_auto_writes_f16_for_quantized_bases_and_f32_for_norms() {
    let t = Tiny::new(GgmlType::Q8_0, None);
    let out = t.path("bundle.gguf");
    pack_tiny(&t, &out).unwrap();
    let bundle = Bundle::open(&out).unwrap();
    let x = t.path("math.gguf");
    let report = extract(&bundle, "math", ExtractType::Auto, &x, &|_, _| {}).unwrap();
    assert!(report.changed.iter().all(|(n, _, to)| if n.contains("norm") {
        *to == GgmlType::F32
    } else {
        *to == GgmlType::F16
    }));
    let f = GgufFile::open(&x).unwrap();
    assert_eq!(f.tensor("blk.0.attn_q.weight").unwrap().ty, GgmlType::F16);
    assert_eq!(f.tensor("token_embd.weight").unwrap().ty, GgmlType::Q8_0, "unchanged tensors keep the base type");
}

/// `--type base`: the expert in the base file's own quantization, each changed tensor
/// re-quantized from its materialized F32 values by ggml's reference quantizer; a type whose
/// blocks do not fit a tensor's rows is refused by tensor name before anything is written.
#[test]
fn extract_base_type_quantizes_changed_tensors_like_the_base() {
    let t = Tiny::new(GgmlType::Q8_0, None);
    let out = t.path("bundle.gguf");
    pack_tiny(&t, &out).unwrap();
    let bundle = Bundle::open(&out).unwrap();
    let (q, f) = (t.path("math-q8.gguf"), t.path("math-f32.gguf"));
    let report = extract(&bundle, "math", ExtractType::Base, &q, &|_, _| {}).unwrap();
    extract(&bundle, "math", ExtractType::Type(GgmlType::F32), &f, &|_, _| {}).unwrap();
    assert!(!report.changed.is_empty());
    let (q, f, base) =
        (GgufFile::open(&q).unwrap(), GgufFile::open(&f).unwrap(), GgufFile::open(&t.base_gguf).unwrap());
    for bt in &base.tensors {
        let qt = q.tensor(&bt.name).unwrap();
        assert_eq!(qt.ty, bt.ty, "{}: the base's type", bt.name);
        let ft = f.tensor(&bt.name).unwrap();
        if ft.ty == GgmlType::F32 && bt.ty != GgmlType::F32 {
            let values: &[f32] = bytemuck::cast_slice(f.tensor_data(ft));
            let want = quants::quantize_par(bt.ty, values, bt.ne[0] as usize).unwrap();
            assert!(q.tensor_data(qt) == want.as_slice(), "{}: not the F32 expert quantized", bt.name);
        }
    }
    // The tiny model's rows (64 values) are not whole Q4_K blocks (256).
    let bad = t.path("math-q4k.gguf");
    let before = listing(t.dir.path());
    let err = extract(&bundle, "math", ExtractType::Type(GgmlType::Q4_K), &bad, &|_, _| {}).unwrap_err().to_string();
    assert!(err.contains("tensor '") && err.contains("q4_K"), "{err}");
    assert_eq!(listing(t.dir.path()), before, "a failed extract left files behind");
    assert!(ExtractType::parse("q9_9").unwrap_err().to_string().contains("q4_K"));
    // "base" in the base's type is the base file's tensors, byte for byte
    let b = t.path("base-again.gguf");
    extract(&bundle, "base", ExtractType::Base, &b, &|_, _| {}).unwrap();
    let again = GgufFile::open(&b).unwrap();
    for bt in &base.tensors {
        assert!(again.tensor_data(again.tensor(&bt.name).unwrap()) == base.tensor_data(bt), "{}", bt.name);
    }
}

/// `extract --lora`: one F16 lora_a/lora_b pair per changed weight matrix, shaped as llama.cpp
/// expects (a: [n_in, r], b: [r, n_out]); at full rank B A is the expert's delta (W_expert -
/// W_base, both as llama.cpp computes with them) up to F16 rounding, at a lower rank it is
/// further; the norms are named as left out; a rank of 0 is refused with nothing written.
#[test]
fn extract_lora_factors_each_changed_matrix() {
    let t = Tiny::new(GgmlType::Q8_0, None);
    let out = t.path("bundle.gguf");
    pack_tiny(&t, &out).unwrap();
    let bundle = Bundle::open(&out).unwrap();
    let extracted = t.path("math-f32.gguf");
    extract(&bundle, "math", ExtractType::Type(GgmlType::F32), &extracted, &|_, _| {}).unwrap();
    let expert = GgufFile::open(&extracted).unwrap();
    let mut errors = Vec::new();
    for rank in [64, 4] {
        let x = t.path(&format!("math-lora-{rank}.gguf"));
        let report = switchyard::lora_adapter::extract_lora(&bundle, "math", rank, &x, &|_, _| {}).unwrap();
        assert!(report.left_out.iter().any(|n| n.contains("norm")), "{:?}", report.left_out);
        let f = GgufFile::open(&x).unwrap();
        assert_eq!(f.metadata.get_str("general.type").unwrap(), "adapter");
        assert_eq!(f.metadata.get_str("adapter.type").unwrap(), "lora");
        assert_eq!(f.tensors.len(), 2 * report.factored.len());
        let (mut err, mut norm) = (0.0f64, 0.0f64);
        for (name, r, _) in &report.factored {
            let base_t = bundle.file.tensor(name).unwrap();
            let (n_in, n_out) = (base_t.ne[0] as usize, base_t.ne[1] as usize);
            let a_t = f.tensor(&format!("{name}.lora_a")).unwrap();
            let b_t = f.tensor(&format!("{name}.lora_b")).unwrap();
            assert_eq!(
                (a_t.ty, a_t.ne.clone(), b_t.ne.clone()),
                (GgmlType::F16, vec![n_in as u64, *r as u64], vec![*r as u64, n_out as u64])
            );
            let a = quants::dequantize(GgmlType::F16, f.tensor_data(a_t), r * n_in).unwrap();
            let b = quants::dequantize(GgmlType::F16, f.tensor_data(b_t), n_out * r).unwrap();
            let base = quants::dequantize(base_t.ty, bundle.file.tensor_data(base_t), n_in * n_out).unwrap();
            let want: &[f32] = bytemuck::cast_slice(expert.tensor_data(expert.tensor(name).unwrap()));
            for row in 0..n_out {
                for c in 0..n_in {
                    let ba: f32 = (0..*r).map(|k| b[row * r + k] * a[k * n_in + c]).sum();
                    let d = want[row * n_in + c] - base[row * n_in + c];
                    err += ((ba - d) as f64).powi(2);
                    norm += (d as f64).powi(2);
                }
            }
        }
        errors.push((err / norm).sqrt());
    }
    assert!(errors[0] < 2e-3, "full rank: relative error {} of B A against the delta", errors[0]);
    assert!(errors[1] > 10.0 * errors[0], "rank 4 should lose much more: {errors:?}");
    let before = listing(t.dir.path());
    let err = switchyard::lora_adapter::extract_lora(&bundle, "math", 0, &t.path("bad.gguf"), &|_, _| {}).unwrap_err();
    assert!(err.to_string().contains("rank"), "{err}");
    assert_eq!(listing(t.dir.path()), before);
}

/// A bundle's own factors (`pack --rank 32`) become the adapter as they are at rank 32 or more,
/// and are factored again below it.
#[test]
fn extract_lora_writes_stored_factors_as_they_are() {
    let t = Tiny::low_rank(GgmlType::Q8_0, None);
    let out = t.path("bundle.gguf");
    let opts = PackOptions { rank: 32, ..PackOptions::default() };
    pack(&t.base_gguf, Some(&t.base_hf), &t.experts, &opts, &out, &no_progress).unwrap();
    let bundle = Bundle::open(&out).unwrap();
    let name = "blk.0.ffn_up.weight";
    let Some(TensorDelta::LowRank(stored)) = bundle.delta(0, name).unwrap() else { panic!("{name} not factored") };
    for (rank, want) in [(64, 32), (16, 16)] {
        let x = t.path(&format!("lora-{rank}.gguf"));
        let report = switchyard::lora_adapter::extract_lora(&bundle, "math", rank, &x, &|_, _| {}).unwrap();
        let (_, r, share) = report.factored.iter().find(|(n, _, _)| n == name).unwrap().clone();
        assert_eq!(r, want, "rank asked {rank}");
        let f = GgufFile::open(&x).unwrap();
        let a = quants::dequantize(
            GgmlType::F16,
            f.tensor_data(f.tensor(&format!("{name}.lora_a")).unwrap()),
            r * stored.n_in,
        )
        .unwrap();
        let stored_a = quants::dequantize(GgmlType::Q8_0, &stored.a, 32 * stored.n_in).unwrap();
        if rank >= 32 {
            assert_eq!(share, 1.0);
            let f16_of = |v: &[f32]| v.iter().map(|x| half::f16::from_f32(*x).to_f32()).collect::<Vec<_>>();
            assert_eq!(a, f16_of(&stored_a), "the stored A, rounded to F16 once");
        } else {
            assert!(share < 1.0 && share > 0.5, "{share}");
        }
    }
}

/// Expect `pack` to fail with a message containing every needle, leaving no output file.
fn pack_fails(t: &Tiny, experts: &[(String, std::path::PathBuf)], base_hf: &Path, needles: &[&str]) {
    let out = t.path("bad.gguf");
    let before = listing(t.dir.path());
    let err = pack(&t.base_gguf, Some(base_hf), experts, &PackOptions::default(), &out, &no_progress)
        .unwrap_err()
        .to_string();
    for n in needles {
        assert!(err.contains(n), "error {err:?} lacks {n:?}");
    }
    assert_eq!(listing(t.dir.path()), before, "a failed pack left files behind");
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut HfConfig)) {
    let p = dir.join("config.json");
    let mut c: HfConfig = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut c);
    std::fs::write(&p, serde_json::to_string(&c).unwrap()).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn bad_inputs_are_named_and_leave_nothing_behind() {
    let t = Tiny::new(GgmlType::F32, None);
    let expert = |name: &str, dir: &Path| vec![(name.to_string(), dir.to_path_buf())];

    // Unsupported architecture.
    let gpt2 = t.path("gpt2-hf");
    copy_dir(&t.experts[0].1, &gpt2);
    edit_config(&gpt2, |c| c.model_type = "gpt2".into());
    pack_fails(&t, &expert("math", &gpt2), &t.base_hf, &["gpt2-hf", "model_type 'gpt2' is not supported"]);

    // Wrong base: the base HF folder describes another network.
    let other = t.path("other-base-hf");
    copy_dir(&t.base_hf, &other);
    edit_config(&other, |c| c.num_hidden_layers = 3);
    pack_fails(&t, &t.experts, &other, &["wrong base", "num_hidden_layers"]);

    // Vocab mismatch.
    let vocab = t.path("vocab-hf");
    copy_dir(&t.experts[0].1, &vocab);
    edit_config(&vocab, |c| c.vocab_size = 300);
    pack_fails(&t, &expert("math", &vocab), &t.base_hf, &["vocab mismatch", "vocab_size is 300"]);

    // Missing tensor and wrong shape: rewrite the expert without / with a reshaped tensor.
    let m = HfModel::open(&t.experts[0].1).unwrap();
    let all: Vec<(String, Vec<usize>, Vec<f32>)> =
        m.tensor_names().map(|n| (n.to_string(), m.shape(n).unwrap().to_vec(), m.tensor_f32(n).unwrap())).collect();
    let missing = t.path("missing-hf");
    let kept: Vec<_> = all.iter().filter(|(n, _, _)| n != "model.layers.1.mlp.up_proj.weight").cloned().collect();
    switchyard::hf::write_hf_folder(&missing, &m.config, &kept, safetensors::Dtype::F32).unwrap();
    pack_fails(
        &t,
        &expert("math", &missing),
        &t.base_hf,
        &["missing-hf", "model.layers.1.mlp.up_proj.weight", "blk.1.ffn_up.weight"],
    );

    let reshaped = t.path("reshaped-hf");
    let changed: Vec<_> = all
        .iter()
        .map(|(n, s, d)| {
            if n == "model.layers.0.self_attn.v_proj.weight" {
                (n.clone(), vec![s[1], s[0]], d.clone())
            } else {
                (n.clone(), s.clone(), d.clone())
            }
        })
        .collect();
    switchyard::hf::write_hf_folder(&reshaped, &m.config, &changed, safetensors::Dtype::F32).unwrap();
    pack_fails(
        &t,
        &expert("math", &reshaped),
        &t.base_hf,
        &["model.layers.0.self_attn.v_proj.weight", "blk.0.attn_v.weight", "shape"],
    );

    // A tensor the base does not have.
    let extra = t.path("extra-hf");
    let mut more = all.clone();
    more.push(("model.layers.7.mlp.up_proj.weight".into(), vec![128, 64], vec![0.0; 128 * 64]));
    switchyard::hf::write_hf_folder(&extra, &m.config, &more, safetensors::Dtype::F32).unwrap();
    pack_fails(&t, &expert("math", &extra), &t.base_hf, &["model.layers.7.mlp.up_proj.weight", "not in the base"]);

    // Truncated safetensors file.
    let trunc = t.path("trunc-hf");
    copy_dir(&t.experts[0].1, &trunc);
    let st = trunc.join("model.safetensors");
    let len = std::fs::metadata(&st).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&st).unwrap().set_len(len / 2).unwrap();
    pack_fails(&t, &expert("math", &trunc), &t.base_hf, &["model.safetensors"]);

    // Bad expert names, reserved and duplicated.
    pack_fails(&t, &expert("base", &t.experts[0].1), &t.base_hf, &["reserved"]);
    let dup = vec![t.experts[0].clone(), t.experts[0].clone()];
    pack_fails(&t, &dup, &t.base_hf, &["given twice"]);
}

#[test]
fn corrupt_bundles_are_refused_with_the_file_named() {
    let t = Tiny::new(GgmlType::F32, None);
    let out = t.path("bundle.gguf");
    pack_tiny(&t, &out).unwrap();
    let bytes = std::fs::read(&out).unwrap();

    // Truncated anywhere in the header or data: an error naming the file, never a panic.
    for cut in [10, 100, 5000, bytes.len() / 2, bytes.len() - 1] {
        let p = t.path("cut.gguf");
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let err = Bundle::open(&p).err().unwrap().to_string();
        assert!(err.contains("cut.gguf"), "{cut}: {err}");
    }

    // A changed base weight: the fingerprint no longer matches.
    let f = GgufFile::open(&out).unwrap();
    let q = f.tensor("blk.0.attn_q.weight").unwrap();
    let at = (f.data_offset + q.offset) as usize;
    let mut changed = bytes.clone();
    changed[at] ^= 0x40;
    let p = t.path("changed.gguf");
    std::fs::write(&p, &changed).unwrap();
    let err = Bundle::open(&p).unwrap().verify_base().unwrap_err().to_string();
    assert!(err.contains("changed.gguf") && err.contains("fingerprint"), "{err}");

    // Unknown expert.
    let b = Bundle::open(&out).unwrap();
    let err = b.expert_index("poetry").unwrap_err().to_string();
    assert!(err.contains("poetry") && err.contains("math, code"), "{err}");

    // A plain model is not a bundle.
    let err = Bundle::open(&t.base_gguf).err().unwrap().to_string();
    assert!(err.contains("not a switchyard bundle"), "{err}");
    // And a bundle is not a base.
    let err = pack(&out, Some(&t.base_hf), &t.experts, &PackOptions::default(), &t.path("x.gguf"), &no_progress)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("already a switchyard bundle"), "{err}");
}

#[test]
fn gguf_experts_pack_exactly_like_their_hugging_face_folders() {
    let t = Tiny::new(GgmlType::Q8_0, None);
    let as_gguf = t.path("math-f32.gguf");
    let math_hf = HfModel::open(&t.experts[0].1).unwrap();
    switchyard::convert::hf_to_gguf(&math_hf, None, "math", GgmlType::F32, &as_gguf).unwrap();
    let (from_hf, from_gguf) = (t.path("a.gguf"), t.path("b.gguf"));
    pack(&t.base_gguf, Some(&t.base_hf), &t.experts[..1], &PackOptions::default(), &from_hf, &no_progress).unwrap();
    // No Hugging Face folder at all: base and expert both as GGUF.
    pack(&t.base_gguf, None, &[("math".into(), as_gguf.clone())], &PackOptions::default(), &from_gguf, &no_progress)
        .unwrap();
    let (a, b) = (Bundle::open(&from_hf).unwrap(), Bundle::open(&from_gguf).unwrap());
    let mut compared = 0;
    for t in a.base_tensors() {
        assert_eq!(a.delta(0, &t.name).unwrap(), b.delta(0, &t.name).unwrap(), "{}", t.name);
        compared += a.changes(0, &t.name) as usize;
    }
    assert!(compared > 10);
    // A quantized expert GGUF packs too (its weights are what it holds, dequantized), and
    // eval takes a GGUF reference.
    let q8 = t.path("math-q8.gguf");
    switchyard::convert::hf_to_gguf(&math_hf, None, "math", GgmlType::Q8_0, &q8).unwrap();
    let c = t.path("c.gguf");
    pack(&t.base_gguf, None, &[("math".into(), q8.clone())], &PackOptions::default(), &c, &no_progress).unwrap();
    let report = switchyard::eval::eval(&Bundle::open(&c).unwrap(), "math", &q8, &|_, _| {}).unwrap();
    let (codec, rtn, _) = report.totals();
    assert!(codec.relative() < 0.5 * rtn.relative(), "{} vs {}", codec.relative(), rtn.relative());
    // A bundle is not an expert.
    let err = pack(
        &t.base_gguf,
        None,
        &[("x".into(), from_hf.clone())],
        &PackOptions::default(),
        &t.path("d.gguf"),
        &no_progress,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("is a switchyard bundle"), "{err}");
}

/// What the host applies in its graph and what it switches in place partition the changed
/// weights; the cheap shape query agrees with the conversion; each converted delta plus the
/// base gives the expert as `extract` writes it in F32 (up to the F16 corrections' rounding).
#[test]
fn graph_deltas_partition_the_changed_weights_and_rebuild_each_expert() {
    let t = Tiny::new(GgmlType::Q8_0, None);
    assert_eq!(check_graph_deltas(&t, &PackOptions::default()), 0);
    assert_eq!(format_version(&t.path("bundle.gguf")), 1, "no low-rank deltas: readable by older switchyards");
}

fn format_version(bundle: &Path) -> u32 {
    GgufFile::open(bundle).unwrap().metadata.get_u32(switchyard::bundle::naming::KEY_FORMAT_VERSION).unwrap()
}

/// The same with low-rank deltas (`pack --rank`): every linear weight of a model wide enough,
/// its delta mostly of low rank, is factored, and B (A x) rebuilds the expert `extract` writes;
/// deltas of pure noise keep the codec.
#[test]
fn low_rank_graph_deltas_rebuild_each_expert() {
    let t = Tiny::low_rank(GgmlType::Q8_0, None);
    let base = GgufFile::open(&t.base_gguf).unwrap();
    let n_linear = base.tensors.iter().filter(|t| switchyard::build_bundle::is_linear_weight(&t.name, &t.ne)).count();
    let opts = PackOptions { rank: 32, ..PackOptions::default() };
    assert_eq!(check_graph_deltas(&t, &opts), 2 * n_linear, "every linear weight of both experts factored");
    let bundle = t.path("bundle.gguf");
    assert_eq!(format_version(&bundle), 2);
    // a file that says version 1 cannot hold factors
    let file = GgufFile::open(&bundle).unwrap();
    let mut md = file.metadata.clone();
    md.insert(switchyard::bundle::naming::KEY_FORMAT_VERSION, switchyard::gguf::Value::U32(1));
    let relabelled = t.path("v1.gguf");
    switchyard::gguf::rewrite_with_metadata(&file, &md, &relabelled).unwrap();
    let err = Bundle::open(&relabelled).err().expect("a version-1 file with factors").to_string();
    assert!(err.contains("v1.gguf") && err.contains("low-rank part") && err.contains("version 1"), "{err}");
    assert!(Bundle::open(&bundle).unwrap().experts.iter().all(|e| e.rank == 32));
    // packing is deterministic (the SVD is seeded; tensors are factored in parallel)
    let again = t.path("again.gguf");
    pack(&t.base_gguf, Some(&t.base_hf), &t.experts, &opts, &again, &no_progress).unwrap();
    assert!(std::fs::read(&bundle).unwrap() == std::fs::read(&again).unwrap(), "two packs differ");
    let noise = DeltaSpec { rank: 0, outlier_fraction: 0.0, ..DeltaSpec::default() };
    let base_model = HfModel::open(&t.base_hf).unwrap();
    let noisy = t.path("noise-hf");
    switchyard::synth::make_expert(&base_model, &noisy, &noise, 7).unwrap();
    let report = pack(&t.base_gguf, Some(&t.base_hf), &[("noise".into(), noisy)], &opts, &again, &no_progress).unwrap();
    let (factored, declined, _) = report.experts[0].factoring.summary();
    assert_eq!((factored, declined), (0, n_linear), "a delta of pure noise: rank 32 keeps too little");
    assert_eq!(format_version(&again), 1);
}

/// Pack `t`'s experts with `opts` and check the graph deltas as above; the number of low-rank
/// deltas.
fn check_graph_deltas(t: &Tiny, opts: &PackOptions) -> usize {
    use switchyard::switch::Switcher;
    let out = t.path("bundle.gguf");
    pack(&t.base_gguf, Some(&t.base_hf), &t.experts, opts, &out, &no_progress).unwrap();
    let s = Switcher::open(&out).unwrap();
    let mut n_low_rank = 0;
    let bundle = s.bundle();
    let base_file = GgufFile::open(&t.base_gguf).unwrap();
    let mut n_in_graph = 0;
    for (e, expert) in ["math", "code"].iter().enumerate() {
        let extracted = t.path(&format!("{expert}.gguf"));
        extract(bundle, expert, ExtractType::Type(GgmlType::F32), &extracted, &|_, _| {}).unwrap();
        let extracted = GgufFile::open(&extracted).unwrap();
        for info in bundle.base_tensors() {
            let name = info.name.as_str();
            let changed = bundle.changes(e, name);
            assert!(!(s.in_graph(name) && s.managed_type(name).is_some()), "{name}: both in the graph and switched");
            if changed {
                assert!(s.in_graph(name) || s.managed_type(name).is_some(), "{name}: changed but neither");
            }
            let shape = s.graph_delta_shape(e, name, None).unwrap();
            let Some(d) = s.graph_delta(e, name, None).unwrap() else {
                assert_eq!(shape, None, "{name}");
                continue;
            };
            n_in_graph += 1;
            assert_eq!(
                shape,
                Some(GraphDeltaShape { ty: d.ty, rank: d.rank, n_salient: d.salient_idx.len() }),
                "{name}"
            );
            let n_in = info.ne[0] as usize;
            let mut rebuilt = tensor_f32(&base_file, name);
            let delta = if d.rank > 0 {
                n_low_rank += 1;
                low_rank_product(&d, n_in, rebuilt.len() / n_in)
            } else {
                quants::dequantize(d.ty, &d.data, rebuilt.len()).unwrap()
            };
            if bundle.replaces_whole(e, name) {
                // a norm: the expert's own vector
                assert_eq!(delta, tensor_f32(&extracted, name), "{expert} {name}");
                continue;
            }
            for (r, row) in rebuilt.chunks_exact_mut(n_in).enumerate() {
                for (w, x) in row.iter_mut().zip(&delta[r * n_in..(r + 1) * n_in]) {
                    *w += x;
                }
                for (k, &ch) in d.salient_idx.iter().enumerate() {
                    row[ch as usize] += d.salient[r * d.salient_idx.len() + k].to_f32();
                }
            }
            let want = tensor_f32(&extracted, name);
            let err = relative_error(&rebuilt, &want);
            assert!(err < 2e-3, "{expert} {name}: relative error {err}");
        }
    }
    assert!(n_in_graph > 0, "no weight is applied in the graph");
    // An expert that does not exist is an error naming the bundle.
    let err = s.graph_delta(9, "blk.0.attn_q.weight", None).unwrap_err().to_string();
    assert!(err.contains("no expert 9"), "{err}");
    n_low_rank
}

/// B A of a low-rank graph delta, row-major n_out x n_in: written out here rather than through
/// `LowRankDelta::to_f32`, so that the check does not rest on the code it checks.
fn low_rank_product(d: &switchyard::bundle::in_graph::GraphDelta, n_in: usize, n_out: usize) -> Vec<f32> {
    let a = quants::dequantize(d.ty, &d.data, d.rank * n_in).unwrap();
    let b = quants::dequantize(d.ty, &d.b, n_out * d.rank).unwrap();
    let mut out = vec![0.0f32; n_out * n_in];
    for (r, row) in out.chunks_exact_mut(n_in).enumerate() {
        for k in 0..d.rank {
            let c = b[r * d.rank + k];
            row.iter_mut().zip(&a[k * n_in..(k + 1) * n_in]).for_each(|(w, x)| *w += c * x);
        }
    }
    out
}

/// A bundle opened to serve keeps no tokenizer of its own (the host has one): the library never
/// decodes it, the file keeps it.
#[test]
fn a_served_bundle_never_decodes_the_tokenizer() {
    let Some(smol) = common::smollm2() else { return };
    let t = Tiny::new(GgmlType::Q8_0, Some(&smol));
    let out = t.path("bundle.gguf");
    pack_tiny(&t, &out).unwrap();
    let tokenizer_keys = |b: &Bundle| b.file.metadata.keys().filter(|k| k.starts_with("tokenizer.")).count();
    assert!(tokenizer_keys(&Bundle::open(&out).unwrap()) > 0, "the fixture has a tokenizer");
    let s = switchyard::switch::Switcher::open(&out).unwrap();
    assert_eq!(tokenizer_keys(s.bundle()), 0);
    assert!(s.bundle().file.metadata.contains_key("general.architecture"), "the rest stays");
}
