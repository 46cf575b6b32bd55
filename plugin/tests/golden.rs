//! Golden bundle: a small bundle made from fixed inputs is committed with the values every
//! expert decodes to. Writing the same inputs must give the same bytes, and reading the
//! committed file must give the same values, so a format change cannot slip in unnoticed.
//! Regenerate (after a deliberate format change, with a FORMAT_VERSION bump) with
//! `SWITCHYARD_BLESS=1 cargo test --test golden`.

use std::path::{Path, PathBuf};

use switchyard::bundle::fingerprint::base_fingerprint;
use switchyard::bundle::{materialize, write_bundle, Bundle, ExpertDeltas, ExpertInfo, TensorDelta};
use switchyard::codec::{self, CodecParams, Method, Output};
use switchyard::gguf::{write_gguf, GgufFile, Metadata, TensorInfoOut, Value};
use switchyard::synth::{self, DeltaSpec};
use switchyard::{quants, GgmlType};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/bundle")
}

/// (name, type, ne) of the micro base model: one tensor of each storage kind.
fn base_tensors() -> Vec<(&'static str, GgmlType, Vec<u64>)> {
    vec![
        ("token_embd.weight", GgmlType::Q8_0, vec![64, 32]),
        ("blk.0.attn_norm.weight", GgmlType::F32, vec![64]),
        ("blk.0.attn_q.weight", GgmlType::F16, vec![64, 16]),
        ("blk.0.ffn_down.weight", GgmlType::Q4_1, vec![128, 8]),
    ]
}

fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let spec = DeltaSpec { noise: 1.0, rank: 0, low_rank: 0.0, outlier_fraction: 0.0, outlier: 0.0, embeddings: 0.0 };
    synth::structured_delta(n, 1, &spec, scale, &mut synth::rng(seed))
}

fn make_bundle(dir: &Path) -> PathBuf {
    let mut md = Metadata::new();
    md.insert("general.architecture", Value::String("llama".into()));
    md.insert("general.name", Value::String("switchyard golden".into()));
    let mut tensors = Vec::new();
    for (i, (name, ty, ne)) in base_tensors().into_iter().enumerate() {
        let n = ne.iter().product::<u64>() as usize;
        let bytes = quants::quantize_par(ty, &values(n, i as u64, 0.5), ne[0] as usize).unwrap();
        tensors.push((TensorInfoOut::new(name, ty, ne), bytes));
    }
    let base_path = dir.join("base.gguf");
    let refs: Vec<_> = tensors.iter().map(|(i, b)| (i.clone(), b.as_slice())).collect();
    write_gguf(&base_path, &md, &refs).unwrap();
    let base = GgufFile::open(&base_path).unwrap();

    let experts = [
        ("alpha", CodecParams::default()),
        (
            "beta",
            CodecParams { method: Method::Salient, bits: 3, salient_fraction: 0.05, salient_bits: 8, group_size: 32 },
        ),
        ("gamma", CodecParams::bitdelta()),
    ]
    .iter()
    .enumerate()
    .map(|(e, (name, params))| {
        let mut deltas = Vec::new();
        for (name_t, _, ne) in base_tensors() {
            let (n_in, n) = (ne[0] as usize, ne.iter().product::<u64>() as usize);
            let d =
                synth::structured_delta(n_in, n / n_in, &DeltaSpec::default(), 0.05, &mut synth::rng(100 + e as u64));
            let delta = match name_t {
                "token_embd.weight" => {
                    TensorDelta::Dense { ty: GgmlType::Q8_0, data: quants::quantize(GgmlType::Q8_0, &d).unwrap() }
                }
                "blk.0.attn_norm.weight" => TensorDelta::Replace { data: values(n, 50 + e as u64, 1.0) },
                _ => TensorDelta::Codec(codec::compress(&d, n_in, n / n_in, None, params).unwrap()),
            };
            deltas.push((name_t.to_string(), delta));
        }
        ExpertDeltas {
            info: ExpertInfo { name: name.to_string(), params: *params, imatrix: None, rank: 0 },
            tensors: deltas,
        }
    })
    .collect::<Vec<_>>();
    let out = dir.join("bundle-v1.gguf");
    write_bundle(&out, &base, &base_fingerprint(&base), &experts).unwrap();
    out
}

/// One line per (expert, tensor): BLAKE3 of the reconstructed f32 values.
fn decoded_digest(bundle: &Bundle) -> String {
    let mut lines = String::new();
    for (e, info) in bundle.experts.iter().enumerate() {
        for t in bundle.base_tensors() {
            let mut out = vec![0.0f32; t.n_elements() as usize];
            let d = bundle.delta(e, &t.name).unwrap();
            materialize(t, bundle.file.tensor_data(t), d.as_ref(), Output::F32(&mut out)).unwrap();
            let bytes: Vec<u8> = out.iter().flat_map(|x| x.to_le_bytes()).collect();
            lines += &format!("{} {} {}\n", info.name, t.name, blake3::hash(&bytes).to_hex());
        }
    }
    lines
}

#[test]
fn golden_bundle_is_stable() {
    let tmp = tempfile::tempdir().unwrap();
    let made = make_bundle(tmp.path());
    let golden = golden_dir().join("bundle-v1.gguf");
    let digest_path = golden_dir().join("bundle-v1.decoded");
    if std::env::var_os("SWITCHYARD_BLESS").is_some() {
        std::fs::create_dir_all(golden_dir()).unwrap();
        std::fs::copy(&made, &golden).unwrap();
        std::fs::write(&digest_path, decoded_digest(&Bundle::open(&golden).unwrap())).unwrap();
    }
    let committed = Bundle::open(&golden).unwrap();
    committed.verify_base().unwrap();
    committed.validate_all().unwrap();
    assert_eq!(
        decoded_digest(&committed),
        std::fs::read_to_string(&digest_path).unwrap(),
        "the committed bundle decodes differently: the reader changed"
    );
    assert!(
        std::fs::read(&made).unwrap() == std::fs::read(&golden).unwrap(),
        "the same inputs no longer give the committed bytes: the writer or codec changed"
    );
}
