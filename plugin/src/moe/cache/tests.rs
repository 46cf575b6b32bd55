use std::path::{Path, PathBuf};

use super::*;
use crate::gguf::{write_gguf, Metadata, TensorInfoOut, Value};
use crate::moe::low_precision::EXPERT_KINDS as KINDS;
use crate::GgmlType;

/// A 2-layer MoE GGUF of 4 experts whose expert e of layer l holds bytes all equal to
/// 16 * l + 4 * kind + e + 1 (each expert 8192 bytes per tensor, two pages). Both routers
/// (n_embd = 2) score expert e by x . (cos(e pi/2), sin(e pi/2)): x = (1, 0.5) picks 0 then 1.
fn moe_file(dir: &Path) -> PathBuf {
    let mut md = Metadata::new();
    md.insert("general.architecture", Value::String("llama".into()));
    md.insert("llama.block_count", Value::U32(2));
    md.insert("llama.expert_count", Value::U32(4));
    let mut infos = Vec::new();
    let mut data = Vec::new();
    for l in 0..2u8 {
        for (k, kind) in KINDS.iter().enumerate() {
            infos.push(TensorInfoOut::new(format!("blk.{l}.{kind}.weight"), GgmlType::I8, [64u64, 128, 4]));
            data.push((0..4u8).flat_map(|e| vec![16 * l + 4 * k as u8 + e + 1; 8192]).collect::<Vec<u8>>());
        }
        infos.push(TensorInfoOut::new(format!("blk.{l}.ffn_gate_inp.weight"), GgmlType::F32, [2u64, 4]));
        let router = [1.0f32, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0, -1.0];
        data.push(router.iter().flat_map(|v| v.to_le_bytes()).collect());
    }
    let path = dir.join("moe.gguf");
    let tensors: Vec<(TensorInfoOut, &[u8])> = infos.into_iter().zip(data.iter().map(Vec::as_slice)).collect();
    write_gguf(&path, &md, &tensors).unwrap();
    path
}

/// The memory of the 6 expert tensors.
struct Memory(Vec<Vec<u8>>);

fn bind_all(cache: &mut MoeCache) -> Memory {
    let mut mem = Memory((0..6).map(|_| vec![0xAAu8; 4 * 8192]).collect());
    for (i, buf) in mem.0.iter_mut().enumerate() {
        let name = format!("blk.{}.{}.weight", i / 3, KINDS[i % 3]);
        // SAFETY: the buffer outlives the cache in each test.
        unsafe { cache.bind(&name, buf.as_mut_ptr(), buf.len()).unwrap() };
    }
    mem
}

/// A cache of `moe_file` with `budget`, t2 and prefetching depth, its tensors bound.
fn bound(path: &Path, budget: Budget, t2: f64, prefetch: usize) -> (MoeCache, Memory) {
    let config = MoeCacheConfig { t2, prefetch, ..MoeCacheConfig::new(budget) };
    let mut cache = MoeCache::open(path, &config).unwrap();
    let mem = bind_all(&mut cache);
    (cache, mem)
}

/// Which experts of (layer, kind) hold their bytes, and that the others are zero.
fn loaded(mem: &Memory, layer: usize, kind: usize) -> Vec<usize> {
    let buf = &mem.0[layer * 3 + kind];
    (0..4)
        .filter(|&e| {
            let s = &buf[e * 8192..(e + 1) * 8192];
            let want = (16 * layer + 4 * kind + e + 1) as u8;
            assert!(s.iter().all(|&b| b == want) || s.iter().all(|&b| b == 0), "expert {e} torn");
            s[0] == want
        })
        .collect()
}

/// Router probabilities of `n` tokens that weigh the 4 experts the same.
fn even(n: usize) -> Vec<f32> {
    vec![0.25; 4 * n]
}

#[test]
fn picks_are_read_in_and_evicted_experts_read_as_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = moe_file(dir.path());
    // room for two experts (3 tensors x 8 KiB each)
    let (mut cache, mem) = bound(&path, Budget::Bytes(2 * 3 * 8192), 1.0, 0);
    assert_eq!(loaded(&mem, 0, 0), Vec::<usize>::new(), "bound memory starts empty");
    cache.eval_topk(0, 2, &[1, 3]).unwrap();
    assert_eq!((loaded(&mem, 0, 0), loaded(&mem, 0, 2)), (vec![1, 3], vec![1, 3]));
    // layer 1 needs two more: layer 0's are evicted (least recently used)
    cache.eval_topk(1, 2, &[0, 2]).unwrap();
    assert_eq!((loaded(&mem, 0, 1), loaded(&mem, 1, 1)), (vec![], vec![0, 2]));
    // the next token: layer 0's experts were evicted, two misses
    cache.eval_topk(0, 2, &[1, 0]).unwrap();
    let s = cache.stats();
    assert_eq!((s.hits, s.loads, s.skipped), (0, 6, 0));
    assert_eq!(s.bytes_read, 6 * 3 * 8192);
    assert!(s.peak_resident <= s.budget);
    // a batch needing more than the budget holds all its picks for that batch
    cache.eval_topk(1, 2, &[0, 1, 2, 3]).unwrap();
    assert_eq!(loaded(&mem, 1, 2), vec![0, 1, 2, 3]);
    cache.eval_topk(0, 1, &[1]).unwrap();
    assert!(loaded(&mem, 1, 2).len() <= 2, "streamed experts are dropped after their batch");
}

#[test]
fn unimportant_misses_are_skipped_above_t2_and_their_gate_weights_zeroed() {
    let dir = tempfile::tempdir().unwrap();
    let path = moe_file(dir.path());
    let (mut cache, mem) = bound(&path, Budget::Percent(100.0), 0.5, 0);
    // token 0: expert 1 is skipped (0.9 of the picks' weight ranked above it); token 1's two
    // picks weigh the same (0.5 above the second: kept)
    let probs = [0.05, 0.09, 0.81, 0.05, 0.45, 0.0, 0.1, 0.45];
    cache.eval_probs(0, &probs, &[]).unwrap();
    cache.eval_topk(0, 2, &[2, 1, 3, 0]).unwrap();
    assert_eq!(loaded(&mem, 0, 0), vec![0, 2, 3]);
    assert_eq!(cache.stats().skipped, 1);
    let mut weights = [0.81, 0.09, 0.05, 0.45];
    assert!(cache.eval_weights(0, &mut weights).unwrap());
    assert_eq!(weights, [0.81, 0.0, 0.05, 0.45]);
    assert!(!cache.eval_weights(0, &mut weights).unwrap(), "the batch's skipped picks were zeroed once");

    cache.eval_probs(0, &probs, &[]).unwrap();
    let err = cache.eval_topk(0, 2, &[2, 1]).unwrap_err().to_string();
    assert!(err.contains("router probabilities for 2 tokens, picks for 1"), "{err}");
    assert!(cache.eval_topk(0, 2, &[2, 4]).is_err(), "expert 4 of 4");
    assert!(cache.eval_probs(0, &probs[..3], &[]).is_err(), "not whole rows of 4 experts");
    cache.eval_probs(0, &probs, &[]).unwrap();
    cache.eval_topk(0, 2, &[2, 1, 3, 0]).unwrap();
    assert!(cache.eval_weights(0, &mut weights[..2]).is_err(), "gate weights of one token for two");

    // a layer may get no rows from a batch (llama.cpp's last layer runs for output tokens only)
    let before = cache.stats();
    cache.eval_probs(0, &[], &[]).unwrap();
    cache.eval_topk(0, 2, &[]).unwrap();
    assert!(!cache.eval_weights(0, &mut []).unwrap());
    assert_eq!(cache.stats(), before, "an empty batch reads and skips nothing");
}

#[test]
fn a_skippable_pick_in_memory_is_used_not_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let path = moe_file(dir.path());
    let (mut cache, mem) = bound(&path, Budget::Bytes(2 * 3 * 8192), 0.5, 0);
    cache.eval_topk(0, 2, &[1, 2]).unwrap();
    // expert 0 misses; 1 (least recently used, skippable) is in memory and serves: 2 goes
    cache.eval_probs(0, &[0.9, 0.1, 0.0, 0.0], &[]).unwrap();
    cache.eval_topk(0, 2, &[0, 1]).unwrap();
    assert_eq!(loaded(&mem, 0, 1), vec![0, 1]);
    assert_eq!((cache.stats().hits, cache.stats().skipped), (1, 0));
    assert!(!cache.eval_weights(0, &mut [0.9, 0.1]).unwrap());
}

#[test]
fn prefetched_experts_are_read_ahead_and_serve_the_next_layer() {
    let dir = tempfile::tempdir().unwrap();
    let path = moe_file(dir.path());
    let (mut cache, mem) = bound(&path, Budget::Bytes(3 * 3 * 8192), 1.0, 1);
    // layer 1's router guesses expert 0 for this gate input
    cache.eval_probs(0, &even(1), &[1.0, 0.5]).unwrap();
    cache.eval_topk(0, 1, &[1]).unwrap();
    cache.eval_topk(1, 1, &[0]).unwrap();
    assert_eq!(loaded(&mem, 1, 2), vec![0]);
    let s = cache.stats();
    assert_eq!((s.hits, s.loads, s.prefetched, s.prefetch_hits), (1, 1, 1, 1));
    assert_eq!(s.bytes_read, 2 * 3 * 8192);
    // nothing lies beyond the last layer; a prompt-sized batch is not prefetched for
    cache.eval_probs(1, &even(1), &[1.0, 0.5]).unwrap();
    cache.eval_topk(1, 1, &[0]).unwrap();
    let n = PREFETCH_MAX_TOKENS + 1;
    cache.eval_probs(0, &even(n), &[0.0, -1.0].repeat(n)).unwrap();
    cache.eval_topk(0, 1, &vec![1; n]).unwrap();
    assert_eq!(cache.stats().prefetched, 1);
    // a wrong guess (expert 3) costs a read and a slot; the budget holds
    cache.eval_probs(0, &even(1), &[0.0, -1.0]).unwrap();
    cache.eval_topk(0, 1, &[2]).unwrap();
    cache.eval_topk(1, 1, &[1]).unwrap();
    let s = cache.stats();
    assert_eq!((s.prefetched, s.prefetch_hits, s.loads), (2, 1, 3));
    assert!(s.peak_resident <= s.budget, "{} > {}", s.peak_resident, s.budget);
    assert!(loaded(&mem, 1, 0).contains(&1));
    assert!(cache.take_prefetch_failure().is_none());
    // a gate input that is not the batch's rows stops prefetching, not the layer
    cache.eval_probs(0, &even(1), &[1.0, 0.5, 2.0]).unwrap();
    cache.eval_topk(0, 1, &[2]).unwrap();
    let err = cache.take_prefetch_failure().expect("prefetching stopped").to_string();
    assert!(err.contains("whole rows of 2"), "{err}");
    cache.eval_probs(0, &even(1), &[0.0, -1.0]).unwrap();
    cache.eval_topk(0, 1, &[2]).unwrap();
    assert_eq!(cache.stats().prefetched, 2, "no guesses once stopped");
}

#[test]
fn the_serving_layer_is_never_evicted_for_a_guess() {
    let dir = tempfile::tempdir().unwrap();
    let path = moe_file(dir.path());
    let (mut cache, mem) = bound(&path, Budget::Bytes(2 * 3 * 8192), 1.0, 1);
    cache.eval_probs(0, &even(1), &[1.0, 0.5]).unwrap();
    cache.eval_topk(0, 2, &[1, 3]).unwrap();
    assert_eq!(loaded(&mem, 0, 0), vec![1, 3], "layer 0 is about to run");
    assert_eq!(cache.stats().prefetched, 0);
}

#[test]
fn a_failed_read_ahead_is_zeroed_and_reported_as_io() {
    let dir = tempfile::tempdir().unwrap();
    let path = moe_file(dir.path());
    let (mut cache, mem) = bound(&path, Budget::Percent(100.0), 1.0, 1);
    cache.eval_topk(0, 1, &[0]).unwrap();
    // the file loses layer 1's experts after it was opened
    let cut = std::fs::metadata(&path).unwrap().len() - 3 * 4 * 8192;
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(cut).unwrap();
    cache.eval_probs(0, &even(1), &[1.0, 0.5]).unwrap();
    cache.eval_topk(0, 1, &[0]).unwrap();
    let err = cache.eval_topk(1, 1, &[0]).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    let err = err.to_string();
    assert!(err.contains("moe.gguf") && err.contains("expert 0 of layer 1 ahead"), "{err}");
    assert_eq!(loaded(&mem, 1, 0), Vec::<usize>::new());
}

/// `moe_file`'s shape in F32 ([32, 64, 4] per tensor: 8192 bytes per expert) with values
/// that Q4_0 cannot hold exactly, packed by `moe-pack` with Q4_0 copies and a beta of 0.5
/// for both layers. Returns the packed file and the original values of each tensor.
fn packed_file(dir: &Path) -> (PathBuf, Vec<Vec<f32>>) {
    use crate::moe::low_precision::{moe_pack, MoePackOptions};
    use crate::moe::trace::{TokenRoute, Trace};
    let mut md = Metadata::new();
    md.insert("general.architecture", Value::String("llama".into()));
    md.insert("llama.block_count", Value::U32(2));
    md.insert("llama.expert_count", Value::U32(4));
    let values: Vec<Vec<f32>> = (0..6)
        .map(|i| (0..4 * 2048).map(|j| (i * 4 + j / 2048 + 1) as f32 + (j % 7) as f32 * 0.13).collect())
        .collect();
    let bytes: Vec<Vec<u8>> = values.iter().map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let router: Vec<u8> = [1.0f32, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0, -1.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut tensors: Vec<(TensorInfoOut, &[u8])> = Vec::new();
    for l in 0..2 {
        for (k, kind) in KINDS.iter().enumerate() {
            let info = TensorInfoOut::new(format!("blk.{l}.{kind}.weight"), GgmlType::F32, [32u64, 64, 4]);
            tensors.push((info, &bytes[l * 3 + k]));
        }
        tensors.push((TensorInfoOut::new(format!("blk.{l}.ffn_gate_inp.weight"), GgmlType::F32, [2u64, 4]), &router));
    }
    let plain = dir.join("plain.gguf");
    write_gguf(&plain, &md, &tensors).unwrap();
    let route = TokenRoute { seq: 0, layers: vec![vec![(0, 0.6), (1, 0.3)]; 2] };
    let trace = Trace { n_layers: 2, n_experts: 4, tokens: vec![route] };
    let packed = dir.join("packed.gguf");
    let opts = MoePackOptions { low_type: GgmlType::Q4_0, trace: Some(trace) };
    moe_pack(&GgufFile::open(&plain).unwrap(), &opts, &packed).unwrap();
    (packed, values)
}

/// Expert e of tensor i as loaded: None when zero, else whether it equals the original.
fn exact(mem: &Memory, values: &[Vec<f32>], i: usize, e: usize) -> Option<bool> {
    let got: Vec<f32> =
        mem.0[i][e * 8192..(e + 1) * 8192].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    if got.iter().all(|&x| x == 0.0) {
        return None;
    }
    let want = &values[i][e * 2048..(e + 1) * 2048];
    // within about one Q4_0 step (an eighth of the largest value of a block)
    let close = got.iter().zip(want).all(|(a, b)| (a - b).abs() <= 0.15 * b.abs());
    assert!(close, "tensor {i} expert {e} is neither zero nor close to its values");
    Some(got == want)
}

#[test]
fn low_picks_read_the_copy_and_a_high_pick_reloads_it() {
    let dir = tempfile::tempdir().unwrap();
    let (path, values) = packed_file(dir.path());
    let config = MoeCacheConfig { t1: 0.5, ..MoeCacheConfig::new(Budget::Percent(100.0)) };
    let mut cache = MoeCache::open(&path, &config).unwrap();
    let mem = bind_all(&mut cache);
    // expert 2 leads (0.7); expert 1 has 0.7 of the weight above it: low precision
    let probs = [0.0, 0.3, 0.7, 0.0];
    cache.eval_probs(0, &probs, &[]).unwrap();
    cache.eval_topk(0, 2, &[1, 2]).unwrap();
    assert!(!cache.eval_weights(0, &mut [0.3, 0.7]).unwrap(), "nothing skipped");
    assert_eq!((exact(&mem, &values, 0, 2), exact(&mem, &values, 2, 1)), (Some(true), Some(false)));
    let s = cache.stats();
    assert_eq!((s.loads, s.loads_low), (2, 1));
    // 3 tensors x (8192 bytes + 64 rows of one 18-byte Q4_0 block)
    assert_eq!(s.bytes_read, 3 * (8192 + 64 * 18));
    // a low pick of the copy hits; expert 1 as the top pick reloads it in high precision
    cache.eval_probs(0, &probs, &[]).unwrap();
    cache.eval_topk(0, 2, &[2, 1]).unwrap();
    assert_eq!((cache.stats().hits, cache.stats().loads), (2, 2));
    cache.eval_probs(0, &probs, &[]).unwrap();
    cache.eval_topk(0, 1, &[1]).unwrap();
    assert_eq!(exact(&mem, &values, 1, 1), Some(true));
    let s = cache.stats();
    assert_eq!((s.loads, s.loads_low, s.peak_resident), (3, 1, 2 * 3 * 8192));
}

#[test]
fn beta_drops_a_weak_second_pick_and_zeroes_its_gate_weight() {
    let dir = tempfile::tempdir().unwrap();
    let (path, values) = packed_file(dir.path());
    let config = MoeCacheConfig { skip_beta: true, ..MoeCacheConfig::new(Budget::Bytes(3 * 3 * 8192)) };
    let mut cache = MoeCache::open(&path, &config).unwrap();
    let mem = bind_all(&mut cache);
    // token 0: expert 3 weighs 0.4 of expert 0 (< beta 0.5): dropped; token 1: 0.75, kept
    cache.eval_probs(1, &[0.5, 0.0, 0.0, 0.2, 0.0, 0.3, 0.4, 0.0], &[]).unwrap();
    cache.eval_topk(1, 2, &[3, 0, 2, 1]).unwrap();
    let mut weights = [0.2, 0.5, 0.4, 0.3];
    assert!(cache.eval_weights(1, &mut weights).unwrap());
    assert_eq!(weights, [0.0, 0.5, 0.4, 0.3]);
    assert_eq!((exact(&mem, &values, 3, 3), exact(&mem, &values, 3, 0)), (None, Some(true)));
    assert_eq!((cache.stats().skipped, cache.stats().loads), (1, 3));
    // in memory, a skippable pick is used
    cache.eval_probs(1, &[0.5, 0.1, 0.0, 0.0], &[]).unwrap();
    cache.eval_topk(1, 2, &[0, 1]).unwrap();
    assert!(!cache.eval_weights(1, &mut [0.5, 0.1]).unwrap());
}

#[test]
fn thresholds_need_what_moe_pack_writes() {
    let dir = tempfile::tempdir().unwrap();
    let plain = moe_file(dir.path());
    let err = |config: MoeCacheConfig| MoeCache::open(&plain, &config).err().unwrap().to_string();
    let half = MoeCacheConfig::new(Budget::Percent(50.0));
    let low = err(MoeCacheConfig { t1: 0.6, ..half });
    assert!(low.contains("'blk.0.ffn_gate_exps.weight' has none") && low.contains("moe-pack"), "{low}");
    let beta = err(MoeCacheConfig { skip_beta: true, ..half });
    assert!(beta.contains("switchyard.moe.skip_beta"), "{beta}");
    let range = err(MoeCacheConfig { t2: 1.5, ..half });
    assert!(range.contains("[0, 1]"), "{range}");
}

#[test]
fn settings_parse_and_bad_files_and_names_are_refused() {
    assert_eq!(Budget::parse("25%").ok(), Some(Budget::Percent(25.0)));
    assert_eq!(Budget::parse("512M").ok(), Some(Budget::Bytes(512 << 20)));
    assert_eq!(Budget::parse("1.5G").ok(), Some(Budget::Bytes(3 << 29)));
    assert_eq!(Budget::parse("4096").ok(), Some(Budget::Bytes(4096)));
    assert!(Budget::parse("150%").is_err());
    assert!(Budget::parse("lots").unwrap_err().to_string().contains("'lots'"));
    assert_eq!(parse_policy("hobbit").ok(), Some(policy::Policy::Hobbit(Default::default())));
    assert!(parse_policy("belady").unwrap_err().to_string().contains("'belady'"), "needs the future");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dense.gguf");
    let mut md = Metadata::new();
    md.insert("general.architecture", Value::String("llama".into()));
    md.insert("llama.block_count", Value::U32(1));
    write_gguf(&path, &md, &[]).unwrap();
    let half = MoeCacheConfig::new(Budget::Percent(50.0));
    let err = MoeCache::open(&path, &half).err().unwrap().to_string();
    assert!(err.contains("dense.gguf") && err.contains("not a mixture of experts"), "{err}");
    let moe = moe_file(dir.path());
    let mut cache = MoeCache::open(&moe, &half).unwrap();
    assert!(cache.manages("blk.1.ffn_down_exps.weight") && !cache.manages("blk.1.ffn_gate_inp.weight"));
    let mut small = vec![0u8; 10];
    // SAFETY: a live buffer of the stated length.
    let err = unsafe { cache.bind("blk.0.ffn_up_exps.weight", small.as_mut_ptr(), 10) }.unwrap_err().to_string();
    assert!(err.contains("'blk.0.ffn_up_exps.weight': 10 bytes"), "{err}");
    // SAFETY: as above.
    let err = unsafe { cache.bind("token_embd.weight", small.as_mut_ptr(), 10) }.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    assert!(cache.eval_topk(0, 1, &[0]).unwrap_err().to_string().contains("never bound"));
    assert!(cache.eval_topk(2, 1, &[0]).unwrap_err().to_string().contains("layer 2 has no experts"));
}
