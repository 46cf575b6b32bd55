//! The C ABI from C: tests/c/abi_test.c, compiled with -Wall -Wextra -Werror and
//! AddressSanitizer against the committed header and the static library, switches experts in
//! host buffers; its checksums must match switchyard's own reconstruction.

use std::path::{Path, PathBuf};
use std::process::Command;

use switchyard::build_bundle::{pack, EmbeddingStorage, PackOptions};
use switchyard::bundle::{materialize, Bundle};
use switchyard::codec::Output;
use switchyard::convert::{gguf_to_hf, hf_to_gguf};
use switchyard::gguf::GgufFile;
use switchyard::hf::HfModel;
use switchyard::synth::{self, DeltaSpec};
use switchyard::GgmlType;

/// target/<profile> of this test binary (target/<profile>/deps/c_abi-*).
fn profile_dir() -> PathBuf {
    std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_path_buf()
}

fn build_staticlib() -> PathBuf {
    let dir = profile_dir();
    let target = dir.parent().unwrap();
    let release = dir.file_name().unwrap() == "release";
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "-p", "switchyard-ffi", "--lib", "--target-dir"]).arg(target);
    if release {
        cmd.arg("--release");
    }
    assert!(cmd.status().unwrap().success(), "building the static library failed");
    dir.join("libswitchyard_ffi.a")
}

fn make_bundle(dir: &Path) -> PathBuf {
    let random = dir.join("random-hf");
    synth::tiny_llama(&random, 256, 3).unwrap();
    let base_gguf = dir.join("base.gguf");
    hf_to_gguf(&HfModel::open(&random).unwrap(), None, "tiny", GgmlType::Q8_0, &base_gguf).unwrap();
    let base_hf = dir.join("base-hf");
    gguf_to_hf(&GgufFile::open(&base_gguf).unwrap(), &base_hf, safetensors::Dtype::F32).unwrap();
    let base_model = HfModel::open(&base_hf).unwrap();
    let mut experts = Vec::new();
    for (name, seed) in [("math", 1), ("code", 2)] {
        let p = dir.join(name);
        let spec = DeltaSpec { embeddings: 0.01, ..DeltaSpec::default() };
        synth::make_expert(&base_model, &p, &spec, seed).unwrap();
        experts.push((name.to_string(), p));
    }
    let out = dir.join("bundle.gguf");
    // Embeddings stored whole: a 2-D tensor switched in place, beside the deltas a host
    // applies in its graph (the rest).
    let options = PackOptions { embeddings: EmbeddingStorage::Lossless, ..PackOptions::default() };
    pack(&base_gguf, Some(&base_hf), &experts, &options, &out, &|_, _, _| {}).unwrap();
    out
}

/// Compiles tests/c/NAME.c against the committed header and the static library, with warnings
/// as errors and AddressSanitizer; returns the executable.
fn compile_c(lib: &Path, name: &str, dir: &Path) -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = dir.join(name);
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"])
        .arg("-I")
        .arg(crate_dir.join("include"))
        .arg(crate_dir.join(format!("tests/c/{name}.c")))
        .arg(lib)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe)
        .status()
        .unwrap();
    assert!(status.success(), "compiling {name}.c failed");
    exe
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(1469598103934665603u64, |h, &b| (h ^ b as u64).wrapping_mul(1099511628211))
}

#[test]
fn c_program_switches_experts_through_the_abi() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle_path = make_bundle(tmp.path());
    let lib = build_staticlib();
    let exe = compile_c(&lib, "abi_test", tmp.path());

    let bundle = Bundle::open(&bundle_path).unwrap();
    // The tensors switched in place (the library writes them); the others it lends in the
    // graph's form (checked against the library below).
    let managed: Vec<String> = bundle
        .base_tensors()
        .filter(|t| bundle.materialized_type(&t.name).is_some() && !bundle.in_graph(&t.name))
        .map(|t| t.name.clone())
        .collect();
    assert!(managed.contains(&"token_embd.weight".to_string()), "{managed:?}");
    // ASan's leak checker needs ptrace, which some sandboxes forbid; leaks are not the point.
    let out =
        Command::new(&exe).arg(&bundle_path).args(&managed).env("ASAN_OPTIONS", "detect_leaks=0").output().unwrap();
    assert!(out.status.success(), "abi_test failed:\n{}", String::from_utf8_lossy(&out.stderr));

    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut checked = 0;
    for line in stdout.lines() {
        let mut f = line.split(' ');
        let (tensor, expert, sum) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        let info = bundle.file.tensor(tensor).unwrap();
        let delta =
            if expert == "base" { None } else { bundle.delta(bundle.expert_index(expert).unwrap(), tensor).unwrap() };
        let n = info.n_elements() as usize;
        let bytes: Vec<u8> = match bundle.materialized_type(tensor).unwrap() {
            GgmlType::F32 => {
                let mut v = vec![0.0f32; n];
                materialize(info, bundle.file.tensor_data(info), delta.as_ref(), Output::F32(&mut v)).unwrap();
                v.iter().flat_map(|x| x.to_le_bytes()).collect()
            }
            _ => {
                let mut v = vec![half::f16::ZERO; n];
                materialize(info, bundle.file.tensor_data(info), delta.as_ref(), Output::F16(&mut v)).unwrap();
                v.iter().flat_map(|x| x.to_le_bytes()).collect()
            }
        };
        assert_eq!(sum.parse::<u64>().unwrap(), fnv1a(&bytes), "{tensor} as {expert}");
        checked += 1;
    }
    assert_eq!(checked, managed.len() * 4);
}

/// The C call routes exactly like the library: same expert (or -1 for base) and the same
/// confidence, with the stored threshold and with one above 1, which always sends to base.
#[test]
fn c_program_routes_prompts_through_the_abi() {
    use rand::{Rng, SeedableRng};
    use switchyard::router::{PromptRouter, RouterHead, TokenEmbedding};

    let tmp = tempfile::tempdir().unwrap();
    let bundle_path = make_bundle(tmp.path());
    let embedding = TokenEmbedding::new(GgufFile::open(&bundle_path).unwrap()).unwrap();
    let (dim, n_vocab) = (embedding.feature_dim(), embedding.n_vocab());
    // a random head: its decisions vary with the prompt, which is all the ABI test needs
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let classes = vec!["code".to_string(), "base".to_string(), "math".to_string()];
    let weight = (0..classes.len() * dim).map(|_| rng.gen_range(-40.0..40.0)).collect();
    let head = RouterHead { classes, dim, weight, bias: vec![0.1, -0.2, 0.0], threshold: 0.6 };
    switchyard::router::store(&bundle_path, &head).unwrap();
    let router = PromptRouter::open(&bundle_path).unwrap().unwrap();

    let prompts: Vec<Vec<i32>> =
        (0..40).map(|i| (0..i % 9).map(|_| rng.gen_range(0..n_vocab as i32)).collect()).collect();
    let lib = build_staticlib();
    let exe = compile_c(&lib, "route_test", tmp.path());
    let args = prompts.iter().map(|p| p.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(","));
    let out = Command::new(&exe).arg(&bundle_path).args(args).env("ASAN_OPTIONS", "detect_leaks=0").output().unwrap();
    assert!(out.status.success(), "route_test failed:\n{}", String::from_utf8_lossy(&out.stderr));

    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2 * prompts.len());
    let experts = ["math", "code"]; // bundle order
    let mut seen = std::collections::BTreeSet::new();
    for (k, line) in lines.iter().enumerate() {
        let threshold = if k < prompts.len() { None } else { Some(2.0) };
        let want = router.route(&prompts[k % prompts.len()], threshold).unwrap();
        let (expert, confidence) = line.split_once(' ').unwrap();
        let want_index = experts.iter().position(|e| *e == want.expert).map_or(-1, |i| i as i32);
        assert_eq!(expert.parse::<i32>().unwrap(), want_index, "prompt {k}: {line}");
        assert_eq!(confidence.parse::<f32>().unwrap(), want.confidence, "prompt {k}");
        seen.insert(want.expert);
    }
    assert!(seen.len() == 3, "the prompts should reach math, code and base: {seen:?}");
}

/// llama.cpp's --moe-cache calls from C: the picked experts' bytes in the bound memory are the
/// file's, every pick is read (a cache of nothing streams them), experts read ahead in the
/// background are whole, and bad arguments are refused.
#[test]
fn c_program_offloads_moe_experts_through_the_abi() {
    let tmp = tempfile::tempdir().unwrap();
    let moe_hf = tmp.path().join("moe-hf");
    synth::tiny_model(&moe_hf, 256, Some(synth::MoeShape { n_expert: 4, n_used: 2 }), 3).unwrap();
    let moe = tmp.path().join("moe.gguf");
    hf_to_gguf(&HfModel::open(&moe_hf).unwrap(), None, "moe", GgmlType::Q8_0, &moe).unwrap();
    let file = GgufFile::open(&moe).unwrap();
    let kinds = ["ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"];
    let sizes: Vec<String> = (0..2)
        .flat_map(|l| kinds.map(|k| file.tensor(&format!("blk.{l}.{k}.weight")).unwrap().n_bytes().to_string()))
        .collect();
    let lib = build_staticlib();
    let exe = compile_c(&lib, "moe_cache_test", tmp.path());
    let n_embd = file.metadata.get_u32("llama.embedding_length").unwrap().to_string();
    let out = Command::new(&exe)
        .arg(&moe)
        .args(["2", "4", &n_embd])
        .args(&sizes)
        .env("ASAN_OPTIONS", "detect_leaks=0")
        .output()
        .unwrap();
    assert!(out.status.success(), "moe_cache_test failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut checked = 0;
    for line in stdout.lines().filter(|l| !l.starts_with("loads")) {
        let f: Vec<&str> = line.split(' ').collect();
        let t = file.tensor(&format!("blk.{}.{}.weight", f[0], f[1])).unwrap();
        let per = t.n_bytes() as usize / 4;
        let e: usize = f[2].parse().unwrap();
        let want = fnv1a(&file.tensor_data(t)[e * per..(e + 1) * per]);
        assert_eq!(f[3].parse::<u64>().unwrap(), want, "{line}");
        checked += 1;
    }
    assert_eq!(checked, 2 * (2 * 3 * 2), "two passes of two layers, three kinds, two picks");
    assert!(stdout.contains("loads 4 budget 0 prefetched 0 prefetch_hits 0"), "{stdout}");
    // second pass: layer 0 reads its two picks; layer 1's router guesses 0 and 1 for a zero
    // input, and its picks are 1 and 2
    assert!(stdout.contains("loads 3 budget") && stdout.ends_with("prefetched 2 prefetch_hits 1\n"), "{stdout}");
}
