//! GPU benchmarks of the kernels, each printed as a ratio against a baseline measured in the
//! same run (docs/BENCHMARKS.md records results with the device and driver):
//!
//! 1. decompress-and-add (2-bit codes, 1% salient channels, Q4_1 base, f16 out): bytes written
//!    per second against a device-to-device copy of the same bytes;
//! 2. mixed-expert matmul: a batch whose tokens use 0-4 experts against the base-only matmul;
//! 3. switching a Mistral-7B-shaped model (synthetic weights of the real shapes, `--layers` of
//!    its 32) against reading the same f16 bytes from a file with a cold page cache.
//!
//!   switchyard-gpu-bench [--layers 32] [--rounds 5] [--dir /tmp]

use std::io::Read;
use std::time::Instant;

use half::f16;
use rand::{Rng, SeedableRng};
use switchyard::codec::{CompressedDelta, SalientValues, StepLayout};
use switchyard::GgmlType;
use switchyard_kernels::device::{DeviceDelta, Gpu, MatmulShape};

/// (name, n_out, n_in) of one Mistral-7B layer's linear weights.
const MISTRAL_LAYER: [(&str, usize, usize); 7] = [
    ("attn_q", 4096, 4096),
    ("attn_k", 1024, 4096),
    ("attn_v", 1024, 4096),
    ("attn_output", 4096, 4096),
    ("ffn_gate", 14336, 4096),
    ("ffn_up", 14336, 4096),
    ("ffn_down", 4096, 14336),
];

/// A structurally valid 2-bit delta with 1% salient channels and random content: the kernels'
/// speed depends on the sizes, not on the values.
fn synthetic_delta(n_out: usize, n_in: usize, rng: &mut impl Rng) -> CompressedDelta {
    let n_sal = n_in / 100;
    let mut idx: Vec<u32> = (0..n_in as u32).step_by(n_in / n_sal.max(1)).take(n_sal).collect();
    idx.dedup();
    CompressedDelta {
        n_in,
        n_out,
        bits: 2,
        layout: StepLayout::Groups { group: 128 },
        codes: (0..n_out * n_in / 4).map(|_| rng.gen()).collect(),
        steps: (0..n_out * n_in.div_ceil(128)).map(|_| f16::from_f32(rng.gen_range(1e-3..1e-2))).collect(),
        salient: SalientValues::F16((0..n_out * idx.len()).map(|_| f16::from_f32(rng.gen_range(-0.1..0.1))).collect()),
        salient_idx: idx,
    }
}

/// Q4_1 rows with small scales and random nibbles.
fn synthetic_q4_1(n: usize, rng: &mut impl Rng) -> Vec<u8> {
    let mut out = Vec::with_capacity(n / 32 * 20);
    for _ in 0..n / 32 {
        out.extend(f16::from_f32(0.01).to_le_bytes());
        out.extend(f16::from_f32(-0.08).to_le_bytes());
        out.extend((0..16).map(|_| rng.gen::<u8>()));
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median wall time of `f` (which must synchronise) over `rounds`, after one warm-up.
fn time(rounds: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..rounds)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut layers = 32;
    let mut rounds = 5;
    let mut dir = std::env::temp_dir();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--layers" => layers = args.next().ok_or("--layers N")?.parse()?,
            "--rounds" => rounds = args.next().ok_or("--rounds N")?.parse()?,
            "--dir" => dir = args.next().ok_or("--dir DIR")?.into(),
            _ => return Err(format!("unknown argument '{a}'").into()),
        }
    }
    let gpu = Gpu::open(0)?;
    println!("device: {}", gpu.name);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);

    // 1. decompress-and-add vs device-to-device copy of the same output bytes
    let (n_out, n_in) = (14336, 4096);
    let delta = DeviceDelta::upload(&gpu, &synthetic_delta(n_out, n_in, &mut rng))?;
    let base = gpu.upload(&synthetic_q4_1(n_out * n_in, &mut rng))?;
    let out_bytes = n_out * n_in * 2;
    let src = gpu.stream.alloc_zeros::<u8>(out_bytes)?;
    let mut dst = gpu.stream.alloc_zeros::<u8>(out_bytes)?;
    let t_copy = time(rounds, || {
        gpu.stream.memcpy_dtod(&src, &mut dst).unwrap();
        gpu.synchronize().unwrap();
    });
    let t_dec = time(rounds, || {
        let out = gpu.decompress_add(GgmlType::Q4_1, &base, &delta, GgmlType::F16).unwrap();
        gpu.synchronize().unwrap();
        drop(out);
    });
    let gbs = |t: f64| out_bytes as f64 / t / 1e9;
    println!(
        "decompress {n_out}x{n_in} 2-bit -> f16: {:.1} GB/s, d2d copy {:.1} GB/s, ratio {:.2}",
        gbs(t_dec),
        gbs(t_copy),
        t_copy / t_dec
    );

    // 2. mixed-expert matmul by experts in the batch
    let (n_out, n_in, n_tok) = (4096, 4096, 16);
    let w = gpu.upload(&vec![f16::from_f32(0.01); n_out * n_in])?;
    let x = gpu.upload(&(0..n_tok * n_in).map(|_| rng.gen_range(-1.0f32..1.0)).collect::<Vec<_>>())?;
    let deltas: Vec<DeviceDelta> =
        (0..4).map(|_| DeviceDelta::upload(&gpu, &synthetic_delta(n_out, n_in, &mut rng))).collect::<Result<_, _>>()?;
    let refs: Vec<&DeviceDelta> = deltas.iter().collect();
    let shape = MatmulShape { n_in, n_out, n_tok };
    let mut base_only = 0.0;
    for n_experts in 0..=4 {
        // tokens split evenly between the experts
        let segments: Vec<(usize, usize, usize)> =
            (0..n_experts).map(|e| (e, e * n_tok / n_experts, (e + 1) * n_tok / n_experts)).collect();
        let t = time(rounds, || {
            let y = gpu.mixed_expert_matmul(&w, &refs, &segments, &x, shape).unwrap();
            gpu.synchronize().unwrap();
            drop(y);
        });
        if n_experts == 0 {
            base_only = t;
        }
        println!(
            "mixed-expert matmul {n_out}x{n_in}, {n_tok} tokens, {n_experts} experts: {:.3} ms, {:.2}x base-only",
            t * 1e3,
            t / base_only
        );
    }

    // 3. switching a Mistral-7B-shaped model vs reading its f16 bytes from disk
    let shapes: Vec<_> = MISTRAL_LAYER
        .iter()
        .map(|&(_, o, i)| -> Result<_, Box<dyn std::error::Error>> {
            let d = DeviceDelta::upload(&gpu, &synthetic_delta(o, i, &mut rng))?;
            let b = gpu.upload(&synthetic_q4_1(o * i, &mut rng))?;
            let out = gpu.stream.alloc_zeros::<f16>(o * i)?;
            Ok((d, b, out))
        })
        .collect::<Result<_, _>>()?;
    let t_switch = time(rounds, || {
        for _ in 0..layers {
            for (d, b, out) in &shapes {
                let (ptr, _rec) = cudarc::driver::DevicePtr::device_ptr(out, &gpu.stream);
                // SAFETY: out holds the weight's f16 values; nothing else uses it.
                unsafe { gpu.decompress_add_into(GgmlType::Q4_1, b, d, GgmlType::F16, ptr) }.unwrap();
            }
        }
        gpu.synchronize().unwrap();
    });
    let layer_bytes: usize = MISTRAL_LAYER.iter().map(|&(_, o, i)| o * i * 2).sum();
    let path = dir.join("switchyard-gpu-bench.f16");
    {
        let chunk = vec![0x3cu8; 64 << 20];
        let mut f = std::fs::File::create(&path)?;
        let mut left = layer_bytes * layers;
        while left > 0 {
            let n = left.min(chunk.len());
            std::io::Write::write_all(&mut f, &chunk[..n])?;
            left -= n;
        }
        f.sync_all()?;
    }
    let read_cold = || -> std::io::Result<f64> {
        let f = std::fs::File::open(&path)?;
        // SAFETY: advisory call on an open descriptor: drop the file from the page cache.
        unsafe { libc_fadvise_dontneed(&f) };
        let t = Instant::now();
        let mut r = std::io::BufReader::with_capacity(64 << 20, f);
        let mut buf = vec![0u8; 64 << 20];
        while r.read(&mut buf)? > 0 {}
        Ok(t.elapsed().as_secs_f64())
    };
    let t_read = median((0..rounds.min(3)).map(|_| read_cold()).collect::<Result<_, _>>()?);
    std::fs::remove_file(&path)?;
    println!(
        "switch {layers} Mistral-7B layers on the GPU: {:.1} ms; reading their {:.2} GB of f16 from disk (cold): {:.1} ms; ratio {:.1}",
        t_switch * 1e3,
        (layer_bytes * layers) as f64 / 1e9,
        t_read * 1e3,
        t_read / t_switch
    );
    Ok(())
}

/// posix_fadvise(POSIX_FADV_DONTNEED) on the whole file.
///
/// # Safety
/// `f` is an open file.
unsafe fn libc_fadvise_dontneed(f: &std::fs::File) {
    use std::os::fd::AsRawFd;
    extern "C" {
        fn posix_fadvise(fd: i32, offset: i64, len: i64, advice: i32) -> i32;
    }
    const POSIX_FADV_DONTNEED: i32 = 4;
    // SAFETY: forwarded from the caller; the call only advises the kernel.
    unsafe { posix_fadvise(f.as_raw_fd(), 0, 0, POSIX_FADV_DONTNEED) };
}
