//! The C ABI from C: tests/c/abi_test.c, compiled with -Wall -Wextra -Werror and
//! AddressSanitizer against the committed header and the static library, switches experts in
//! host buffers; its checksums must match switchyard's own reconstruction.

use std::path::{Path, PathBuf};
use std::process::Command;

use switchyard::bundle::{materialize, Bundle};
use switchyard::codec::Output;
use switchyard::convert::{gguf_to_hf, hf_to_gguf};
use switchyard::gguf::GgufFile;
use switchyard::hf::HfModel;
use switchyard::pack::{pack, PackOptions};
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
        synth::make_expert(&base_model, &p, &DeltaSpec::default(), seed).unwrap();
        experts.push((name.to_string(), p));
    }
    let out = dir.join("bundle.gguf");
    pack(&base_gguf, Some(&base_hf), &experts, &PackOptions::default(), &out, &|_, _, _| {}).unwrap();
    out
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(1469598103934665603u64, |h, &b| (h ^ b as u64).wrapping_mul(1099511628211))
}

#[test]
fn c_program_switches_experts_through_the_abi() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle_path = make_bundle(tmp.path());
    let lib = build_staticlib();
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = tmp.path().join("abi_test");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"])
        .arg("-I")
        .arg(crate_dir.join("include"))
        .arg(crate_dir.join("tests/c/abi_test.c"))
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe)
        .status()
        .unwrap();
    assert!(status.success(), "compiling abi_test.c failed");

    let bundle = Bundle::open(&bundle_path).unwrap();
    let managed: Vec<String> =
        bundle.base_tensors().filter(|t| bundle.materialized_type(&t.name).is_some()).map(|t| t.name.clone()).collect();
    assert!(!managed.is_empty());
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
