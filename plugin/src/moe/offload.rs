//! Experts left on disk, a byte-budgeted cache of them in memory: the CPU side of `--moe-cache`
//! in the patched llama.cpp (HOBBIT, ANCHORS §3).
//!
//! llama.cpp allocates each layer's stacked expert tensors (ffn_{gate,up,down}_exps) in plain
//! host memory and hands their addresses over ([`ExpertStore::bind`]); nothing is read at load
//! time. Before a layer's experts run, the runtime passes the router's picks for the batch
//! ([`ExpertStore::prepare`]): each picked expert not in memory is read from the GGUF file with
//! pread into its place in the stacked tensor, and experts the cache evicts get their memory
//! zeroed and returned to the kernel (madvise). The budget therefore bounds resident memory (up
//! to the partial pages at each expert's ends), and the tensors keep llama.cpp's layout, so the
//! graph is unchanged. One store serves one context at a time: contexts sharing a model would
//! evict each other's experts between a layer's preparation and its matmul.
//!
//! Correctness does not depend on the budget: every picked expert is in memory when its layer
//! runs (a batch that needs more than the budget holds them for that batch only). What the
//! thresholds change ([`MissRules`], decided per pick by [`rank`]): a pick that may be skipped
//! (HOBBIT's t2, seed 001's beta) is not loaded on a miss, and [`ExpertStore::prepare`] says
//! which picks were dropped so the host can zero their gate weights (llama.cpp then
//! renormalises the rest, as seed 001 does); a skippable pick already in memory is used. A pick
//! that needs only low precision (t1) loads the expert's low-precision copy (`moe-pack`) and
//! widens it into place, so it reads a fraction of the bytes; a later pick that needs high
//! precision reloads it.
//!
//! Prefetching ([`ExpertStore::prefetch`]): once a layer is prepared, the routers of the next
//! few layers are applied to its gate input ([`Lookahead`]) and the experts they pick are read
//! by a background thread while the layer computes. The cache makes room for them at once
//! (never evicting what the current layer uses or what is still being read), and a layer's
//! preparation first waits for the reads meant for it, so a right guess is a hit and a wrong
//! one costs a read and a slot.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::JoinHandle;

use super::cache::{ExpertCache, Key, Lookup, Policy, Use};
use super::importance::{rank, Need, Thresholds};
use super::lookahead::Lookahead;
use super::pack::{low_name, widen_expert, EXPERT_KINDS as KINDS, SKIP_BETA_KEY};
use crate::error::{Error, Result};
use crate::gguf::{Array, GgufFile};
use crate::GgmlType;

/// Batches of more tokens than this are not prefetched for: a prompt's batch picks nearly every
/// expert of a layer, so reading them early only reorders the reads and fights the budget.
const PREFETCH_MAX_TOKENS: usize = 8;

/// How big the cache is: bytes, or a share of all expert bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    Bytes(u64),
    Percent(f64),
}

impl Budget {
    /// "25%", "512M", "2G", "1073741824".
    pub fn parse(s: &str) -> Option<Budget> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            return p.trim().parse::<f64>().ok().filter(|p| (0.0..=100.0).contains(p)).map(Budget::Percent);
        }
        let (num, mult) = match s.chars().last()? {
            'K' | 'k' => (&s[..s.len() - 1], 1u64 << 10),
            'M' | 'm' => (&s[..s.len() - 1], 1 << 20),
            'G' | 'g' => (&s[..s.len() - 1], 1 << 30),
            _ => (s, 1),
        };
        num.trim().parse::<f64>().ok().filter(|v| *v >= 0.0).map(|v| Budget::Bytes((v * mult as f64) as u64))
    }
}

/// What a miss loads: HOBBIT's thresholds t1 and t2 (1 and 1: everything in high precision;
/// t2 wins where t1 > t2), and whether seed 001's per-layer beta (stored by `moe-pack`) skips
/// too.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MissRules {
    pub t1: f64,
    pub t2: f64,
    pub beta: bool,
}

impl MissRules {
    pub const ALL_HIGH: MissRules = MissRules { t1: 1.0, t2: 1.0, beta: false };
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OffloadStats {
    /// Picks served from memory, picks read from disk (of them, in low precision), picks
    /// skipped (not loaded; their gate weight is dropped).
    pub hits: u64,
    pub loads: u64,
    pub loads_low: u64,
    pub skipped: u64,
    pub bytes_read: u64,
    pub evictions: u64,
    /// The budget and the most expert bytes ever in memory at once.
    pub budget: u64,
    pub peak_resident: u64,
    /// Experts read ahead by prefetching (their bytes are in `bytes_read`), and those of them
    /// a later pick then used (counted in `hits` too).
    pub prefetched: u64,
    pub prefetch_hits: u64,
}

/// One stacked expert tensor of a layer: where expert 0 starts in the file, and where the
/// runtime's copy lives.
struct Stacked {
    name: String,
    ty: GgmlType,
    /// Values per row.
    ne0: usize,
    file_offset: u64,
    expert_bytes: usize,
    total_bytes: usize,
    low: Option<LowCopy>,
    dest: Option<*mut u8>,
}

/// Where a stacked tensor's low-precision copy lies in the file.
struct LowCopy {
    ty: GgmlType,
    file_offset: u64,
    expert_bytes: usize,
}

pub struct ExpertStore {
    label: String,
    file: File,
    n_expert: usize,
    lookahead: Lookahead,
    /// Started by the first prefetch.
    reader: Option<Reader>,
    /// Experts the reader is filling, with what it writes (kept to zero them on a failure).
    in_flight: HashMap<Key, Vec<Part>>,
    /// Read ahead and not used since.
    unused_prefetch: HashSet<Key>,
    /// The picks of the layer prepared last, which its matmuls are about to read.
    serving: HashSet<Key>,
    /// Per layer, its stacked tensors (empty for a dense layer).
    layers: Vec<Vec<Stacked>>,
    cache: ExpertCache,
    t1: f64,
    t2: f64,
    /// Per layer, seed 001's beta (0: never skips).
    beta: Vec<f64>,
    /// Experts in memory, and whether in high precision.
    resident: HashMap<Key, bool>,
    /// Loaded for the current batch only (did not fit the budget).
    streamed: Vec<Key>,
    resident_bytes: u64,
    token_base: u64,
    last_batch_tokens: u64,
    last_layer: Option<usize>,
    stats: OffloadStats,
}

// SAFETY: the destination pointers are only written through `&mut self` or by the reader thread
// (experts in `in_flight`, which nothing else touches until their read is collected), and the
// caller of `bind` guarantees the memory outlives the store, whose drop joins the reader.
unsafe impl Send for ExpertStore {}

/// One contiguous piece of an expert: `len` bytes at `offset` in the file, read to `dest`.
#[derive(Clone, Copy)]
struct Part {
    dest: *mut u8,
    len: usize,
    offset: u64,
}

// SAFETY: a Part is handed to the reader thread with exclusive use of its bytes (see ExpertStore).
unsafe impl Send for Part {}

/// The background thread of prefetching: reads whole experts in the order asked.
struct Reader {
    jobs: Option<Sender<(Key, Vec<Part>)>>,
    done: Receiver<(Key, std::io::Result<()>)>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    fn start(file: File) -> std::io::Result<Reader> {
        let (jobs, todo) = channel::<(Key, Vec<Part>)>();
        let (finished, done) = channel();
        let thread = std::thread::Builder::new().name("switchyard-prefetch".into()).spawn(move || {
            for (key, parts) in todo {
                let result = parts.iter().try_for_each(|p| read_part(&file, p));
                if finished.send((key, result)).is_err() {
                    return;
                }
            }
        })?;
        Ok(Reader { jobs: Some(jobs), done, thread: Some(thread) })
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // the thread ends with its queue, and must not outlive the memory it writes to
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one part into place, then drops the file's pages from the page cache: the copy in the
/// cache is the one kept, and the page cache would otherwise hold the expert twice and push out
/// the dense weights.
fn read_part(file: &File, p: &Part) -> std::io::Result<()> {
    // SAFETY: the part's bytes lie inside a bound tensor and are this reader's alone (Part).
    let slice = unsafe { std::slice::from_raw_parts_mut(p.dest, p.len) };
    file.read_exact_at(slice, p.offset)?;
    // SAFETY: a valid descriptor; the advice only concerns the kernel's cache.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), p.offset as libc::off_t, p.len as libc::off_t, libc::POSIX_FADV_DONTNEED)
    };
    Ok(())
}

impl ExpertStore {
    /// Opens a mixture-of-experts GGUF: every layer's ffn_{gate,up,down}_exps are found and will
    /// be read from it (with their low-precision copies, when `rules` use them).
    pub fn open(path: &Path, budget: Budget, policy: Policy, rules: MissRules) -> Result<ExpertStore> {
        let gguf = GgufFile::open(path)?;
        let label = gguf.label().to_string();
        let arch = gguf.metadata.get_str("general.architecture")?.to_string();
        let n_layer = gguf.metadata.get_u32(&format!("{arch}.block_count"))? as usize;
        let n_expert = gguf.metadata.opt_u32(&format!("{arch}.expert_count"))?.unwrap_or(0) as usize;
        if n_expert == 0 {
            crate::bail_invalid!("{label}: not a mixture of experts ({arch}.expert_count): nothing to offload");
        }
        let MissRules { t1, t2, beta } = rules;
        if !(0.0..=1.0).contains(&t1) || !(0.0..=1.0).contains(&t2) {
            crate::bail_invalid!("{label}: the thresholds t1 and t2 must be in [0, 1] (got t1 {t1}, t2 {t2})");
        }
        let beta = match beta {
            false => vec![0.0; n_layer],
            true => match gguf.metadata.get(SKIP_BETA_KEY) {
                Some(crate::gguf::Value::Array(Array::F32(b))) if b.len() == n_layer => {
                    b.iter().map(|&v| v as f64).collect()
                }
                _ => crate::bail_invalid!(
                    "{label}: no per-layer skipping thresholds ({SKIP_BETA_KEY}, {n_layer} f32): pack the model with `switchyard moe-pack --trace`"
                ),
            },
        };
        let mut layers = Vec::with_capacity(n_layer);
        let mut total = 0u64;
        for il in 0..n_layer {
            let mut stacked = Vec::new();
            for kind in KINDS {
                let name = format!("blk.{il}.{kind}.weight");
                let Some(t) = gguf.tensor(&name) else { continue };
                let bytes = t.n_bytes();
                if t.ne.len() != 3 || t.ne[2] != n_expert as u64 || !bytes.is_multiple_of(n_expert as u64) {
                    crate::bail_invalid!("{label}: tensor '{name}' is {:?}, not [.., .., {n_expert}] experts", t.ne);
                }
                total += bytes;
                let low = match gguf.tensor(&low_name(&name)) {
                    Some(c) if c.ne == t.ne && c.n_bytes().is_multiple_of(n_expert as u64) => Some(LowCopy {
                        ty: c.ty,
                        file_offset: gguf.data_offset + c.offset,
                        expert_bytes: (c.n_bytes() / n_expert as u64) as usize,
                    }),
                    Some(c) => crate::bail_invalid!("{label}: tensor '{}' is {:?}, its expert {:?}", c.name, c.ne, t.ne),
                    None if t1 < 1.0 => crate::bail_invalid!(
                        "{label}: t1 < 1 loads low-precision copies, and '{name}' has none: pack the model with `switchyard moe-pack`"
                    ),
                    None => None,
                };
                stacked.push(Stacked {
                    name,
                    ty: t.ty,
                    ne0: t.ne[0] as usize,
                    file_offset: gguf.data_offset + t.offset,
                    expert_bytes: (bytes / n_expert as u64) as usize,
                    total_bytes: bytes as usize,
                    low,
                    dest: None,
                });
            }
            layers.push(stacked);
        }
        if total == 0 {
            crate::bail_invalid!("{label}: no ffn_*_exps tensors to offload");
        }
        let budget = match budget {
            Budget::Bytes(b) => b,
            Budget::Percent(p) => (total as f64 * p / 100.0) as u64,
        };
        let lookahead = Lookahead::load(&gguf, n_layer, n_expert)?;
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        Ok(ExpertStore {
            label,
            file,
            n_expert,
            lookahead,
            reader: None,
            in_flight: HashMap::new(),
            unused_prefetch: HashSet::new(),
            serving: HashSet::new(),
            layers,
            cache: ExpertCache::new(policy, budget as f64, n_layer as u32),
            t1,
            t2,
            beta,
            resident: HashMap::new(),
            streamed: Vec::new(),
            resident_bytes: 0,
            token_base: 0,
            last_batch_tokens: 0,
            last_layer: None,
            stats: OffloadStats { budget, ..Default::default() },
        })
    }

    /// Whether `name` is a tensor this store fills (llama.cpp then allocates it, unread).
    pub fn manages(&self, name: &str) -> bool {
        self.layers.iter().flatten().any(|s| s.name == name)
    }

    pub fn stats(&self) -> OffloadStats {
        self.stats
    }

    /// Hands over the memory of tensor `name` (`len` bytes), which the store fills and empties
    /// from now on; it is emptied (zero) now.
    ///
    /// # Safety
    /// `dest` must point to `len` writable bytes that no one else writes and that outlive the
    /// store.
    pub unsafe fn bind(&mut self, name: &str, dest: *mut u8, len: usize) -> Result<()> {
        let label = &self.label;
        let s = self
            .layers
            .iter_mut()
            .flatten()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::Invalid(format!("{label}: '{name}' is not an expert tensor of this model")))?;
        if dest.is_null() || len != s.total_bytes {
            crate::bail_invalid!("{label}: tensor '{name}': {len} bytes bound, the file holds {}", s.total_bytes);
        }
        s.dest = Some(dest);
        // SAFETY: dest holds len bytes, by the caller's contract. Huge pages would be refilled
        // whole behind the cache's back (khugepaged), so the range asks for small ones.
        unsafe {
            release(dest, len);
            let page = libc::sysconf(libc::_SC_PAGESIZE).max(4096) as usize;
            let start = (dest as usize).div_ceil(page) * page;
            let end = (dest as usize + len) / page * page;
            if start < end {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_NOHUGEPAGE);
            }
        }
        Ok(())
    }

    /// Makes layer `layer`'s picks for a batch resident. `experts` holds `n_used` picks per
    /// token; `probs`, when given, the router probabilities of all experts per token (`n_expert`
    /// per token), from which the picks' gate weights decide precision and skipping. Returns,
    /// per pick in the order given, whether it was dropped (skipped and not in memory: the host
    /// zeroes its gate weight).
    pub fn prepare(
        &mut self,
        layer: usize,
        n_used: usize,
        experts: &[i32],
        probs: Option<&[f32]>,
    ) -> Result<Vec<bool>> {
        let label = self.label.clone();
        let n_expert = self.n_expert;
        if layer >= self.layers.len()
            || self.layers[layer].is_empty()
            || n_used == 0
            || !experts.len().is_multiple_of(n_used)
        {
            crate::bail_invalid!("{label}: layer {layer}: {} picks of {n_used} per token for a layer without experts, or not whole tokens", experts.len());
        }
        if let Some(s) = self.layers[layer].iter().find(|s| s.dest.is_none()) {
            crate::bail_invalid!("{label}: tensor '{}' was never bound", s.name);
        }
        let n_tokens = experts.len() / n_used;
        if probs.is_some_and(|p| p.len() != n_tokens * n_expert) {
            crate::bail_invalid!(
                "{label}: layer {layer}: router probabilities for {} values, want {n_tokens} x {n_expert}",
                probs.map_or(0, <[f32]>::len)
            );
        }
        if experts.iter().any(|&e| e < 0 || e as usize >= n_expert) {
            crate::bail_invalid!("{label}: layer {layer}: a pick outside 0..{n_expert}");
        }
        self.collect_reads(|k| k.0 as usize == layer)?;
        // a new batch starts when the layers start over: its tokens follow the previous batch's
        if self.last_layer.is_some_and(|l| layer <= l) {
            self.token_base += self.last_batch_tokens;
        }
        self.last_layer = Some(layer);
        self.last_batch_tokens = n_tokens as u64;

        // each token's picks, most important first, and per expert the most any token needs
        let th = Thresholds { t1: self.t1, t2: self.t2, beta: self.beta[layer] };
        let mut picks: Vec<(u32, u64)> = Vec::with_capacity(experts.len()); // expert, token
        let mut need: HashMap<u32, Need> = HashMap::new();
        for (t, row) in experts.chunks_exact(n_used).enumerate() {
            let weight = |e: i32| probs.map_or(1.0, |p| p[t * n_expert + e as usize] as f64);
            for (e, n) in rank(row.iter().map(|&e| (e as u32, weight(e))), &th) {
                picks.push((e, self.token_base + t as u64));
                need.entry(e).and_modify(|m| *m = (*m).max(n)).or_insert(n);
            }
        }
        // what this batch uses must stay in memory while it is prepared: its picks, and the
        // skippable ones already in memory (a skip only saves a read)
        let batch: HashSet<Key> = need
            .iter()
            .map(|(&e, &n)| ((layer as u32, e), n))
            .filter(|(k, n)| *n != Need::Skippable || self.resident.contains_key(k))
            .map(|(k, _)| k)
            .collect();
        // a guess for this layer that it did not pick gives its slot back at once: kept, it
        // would push out an expert the next layers use, a miss for each wrong guess
        let wrong: Vec<Key> =
            self.unused_prefetch.iter().filter(|k| k.0 as usize == layer && !batch.contains(k)).copied().collect();
        for key in wrong {
            self.cache.remove(key);
            self.evict(key)?;
        }
        // what the previous batch streamed through is dropped, unless this one needs it
        for key in std::mem::take(&mut self.streamed) {
            if !batch.contains(&key) && !self.cache.contains(key) {
                self.evict(key)?;
            }
        }
        let expert_bytes: u64 = self.layers[layer].iter().map(|s| s.expert_bytes as u64).sum();
        for (e, token) in picks {
            let key = (layer as u32, e);
            if !batch.contains(&key) {
                self.stats.skipped += 1;
                continue;
            }
            // a skippable pick in memory is served by whatever copy is there
            let high = need[&e] == Need::High;
            let u = Use { key, token, seq: 0, high, cost: expert_bytes as f64, next_use: None };
            let in_flight = &self.in_flight;
            match self.cache.access(u, layer as u32, |k, _| batch.contains(&k) || in_flight.contains_key(&k)) {
                Lookup::Hit => {
                    self.stats.hits += 1;
                    if self.unused_prefetch.remove(&key) {
                        self.stats.prefetch_hits += 1;
                    }
                }
                Lookup::Miss { evicted, cached } => {
                    for v in evicted {
                        self.evict(v)?;
                    }
                    // streamed in earlier in this batch, in a precision that serves
                    if self.resident.get(&key).is_some_and(|&h| h || !high) {
                        self.stats.hits += 1;
                    } else {
                        if let Err(e) = self.load(key, high) {
                            self.cache.remove(key);
                            return Err(e);
                        }
                        self.stats.loads += 1;
                        self.stats.loads_low += !high as u64;
                    }
                    if !cached && !self.streamed.contains(&key) {
                        self.streamed.push(key);
                    }
                }
            }
        }
        let dropped = experts.iter().map(|&e| !batch.contains(&(layer as u32, e as u32))).collect();
        self.serving = batch;
        Ok(dropped)
    }

    /// After layer `layer` was prepared, with its tokens' gate input `x` (n_tokens x n_embd,
    /// the input of the layer's router): starts reading the experts that the routers of the
    /// next `depth` layers pick for `x`, `n_used` per token, nearest layer first, as far as the
    /// cache makes room for them. Returns at once; the reads finish in the background.
    pub fn prefetch(&mut self, layer: usize, depth: usize, n_used: usize, x: &[f32]) -> Result<()> {
        let n_embd = self.lookahead.n_embd();
        if n_embd == 0 || !x.len().is_multiple_of(n_embd) {
            crate::bail_invalid!(
                "{}: layer {layer}: {} gate input values are not whole rows of {n_embd}",
                self.label,
                x.len()
            );
        }
        let n_tokens = x.len() / n_embd;
        if n_tokens == 0 || n_tokens > PREFETCH_MAX_TOKENS {
            return Ok(());
        }
        let mut wanted: Vec<Key> = Vec::new();
        for target in layer + 1..=(layer + depth).min(self.layers.len() - 1) {
            for row in x.chunks_exact(n_embd) {
                for e in self.lookahead.predict(target, row, n_used).unwrap_or_default() {
                    if !wanted.contains(&(target as u32, e)) {
                        wanted.push((target as u32, e));
                    }
                }
            }
        }
        if self.reader.is_none() && !wanted.is_empty() {
            let started = self.file.try_clone().and_then(Reader::start);
            self.reader = Some(
                started.map_err(|e| Error::Invalid(format!("{}: starting the prefetch reader: {e}", self.label)))?,
            );
        }
        let token = self.token_base;
        for &key in &wanted {
            if self.resident.contains_key(&key) || self.in_flight.contains_key(&key) {
                continue;
            }
            let parts = self.parts(key)?;
            let cost: usize = parts.iter().map(|p| p.len).sum();
            let u = Use { key, token, seq: 0, high: true, cost: cost as f64, next_use: None };
            let (serving, in_flight) = (&self.serving, &self.in_flight);
            let protected = |k: Key, _| serving.contains(&k) || in_flight.contains_key(&k) || wanted.contains(&k);
            let Lookup::Miss { evicted, cached } = self.cache.admit(u, layer as u32, protected) else {
                continue;
            };
            for v in evicted {
                self.evict(v)?;
            }
            if !cached {
                break; // everything left is protected: no room for more guesses
            }
            let jobs = self.reader.as_ref().and_then(|r| r.jobs.as_ref());
            if jobs.is_none_or(|j| j.send((key, parts.clone())).is_err()) {
                // cached but never read, it would serve zeros
                self.cache.remove(key);
                crate::bail_invalid!("{}: the prefetch reader stopped", self.label);
            }
            self.in_flight.insert(key, parts);
            self.resident_bytes += cost as u64;
            self.stats.peak_resident = self.stats.peak_resident.max(self.resident_bytes);
            self.stats.prefetched += 1;
        }
        Ok(())
    }

    /// Waits for the background reads of the experts `wait_for` selects, and takes in every
    /// read finished meanwhile. A failed read is zeroed, forgotten and reported.
    fn collect_reads(&mut self, wait_for: impl Fn(Key) -> bool) -> Result<()> {
        let Some(reader) = &self.reader else { return Ok(()) };
        let mut failure = None;
        loop {
            let waiting = self.in_flight.keys().any(|&k| wait_for(k));
            let next = if waiting { reader.done.recv().ok() } else { reader.done.try_recv().ok() };
            let Some((key, result)) = next else {
                if waiting {
                    // only a dead reader leaves reads unfinished: their memory cannot be trusted
                    crate::bail_invalid!("{}: the prefetch reader stopped with reads unfinished", self.label);
                }
                break;
            };
            let parts = self.in_flight.remove(&key).expect("a read the store started");
            let bytes: u64 = parts.iter().map(|p| p.len as u64).sum();
            match result {
                Ok(()) => {
                    self.resident.insert(key, true);
                    self.unused_prefetch.insert(key);
                    self.stats.bytes_read += bytes;
                }
                Err(err) => {
                    for p in &parts {
                        // SAFETY: the part lies inside a bound tensor, and its read has ended.
                        unsafe { release(p.dest, p.len) };
                    }
                    self.resident_bytes -= bytes;
                    self.cache.remove(key);
                    failure.get_or_insert(format!(
                        "{}: reading expert {} of layer {} ahead: {err}",
                        self.label, key.1, key.0
                    ));
                }
            }
        }
        match failure {
            Some(msg) => Err(Error::Invalid(msg)),
            None => Ok(()),
        }
    }

    /// Where expert `key` lies in the file and in memory, one part per stacked tensor.
    fn parts(&self, key: Key) -> Result<Vec<Part>> {
        let (layer, e) = (key.0 as usize, key.1 as usize);
        self.layers[layer]
            .iter()
            .map(|s| match s.dest {
                // SAFETY (of the add): expert e's slice lies inside the bound tensor.
                Some(dest) => Ok(Part {
                    dest: unsafe { dest.add(e * s.expert_bytes) },
                    len: s.expert_bytes,
                    offset: s.file_offset + (e * s.expert_bytes) as u64,
                }),
                None => Err(Error::Invalid(format!("{}: tensor '{}' was never bound", self.label, s.name))),
            })
            .collect()
    }

    /// Reads expert `key` into its place in every tensor of its layer, in high precision or
    /// from its low-precision copies (widened into place); on a failure, what was read is
    /// zeroed again and nothing is counted.
    fn load(&mut self, key: Key, high: bool) -> Result<()> {
        let parts = self.parts(key)?;
        let mut read = 0u64;
        for (i, p) in parts.iter().enumerate() {
            let s = &self.layers[key.0 as usize][i];
            let result = match (&s.low, high) {
                (Some(low), false) => self.read_low(s, low, key.1 as usize, p).map(|()| low.expert_bytes),
                _ => read_part(&self.file, p).map_err(|e| e.to_string()).map(|()| p.len),
            };
            match result {
                Ok(n) => read += n as u64,
                Err(err) => {
                    // all of it: an expert reloaded in high precision had its copy in the rest
                    for p in &parts {
                        // SAFETY: the parts lie inside bound tensors, and no one else writes them.
                        unsafe { release(p.dest, p.len) };
                    }
                    if self.resident.remove(&key).is_some() {
                        self.resident_bytes -= parts.iter().map(|p| p.len as u64).sum::<u64>();
                    }
                    crate::bail_invalid!("{}: reading expert {} of '{}': {err}", self.label, key.1, s.name);
                }
            }
        }
        self.stats.bytes_read += read;
        if self.resident.insert(key, high).is_none() {
            self.resident_bytes += parts.iter().map(|p| p.len as u64).sum::<u64>();
        }
        self.stats.peak_resident = self.stats.peak_resident.max(self.resident_bytes);
        Ok(())
    }

    /// Reads expert `e`'s low-precision copy of `s` and widens it into `p`, its place.
    fn read_low(&self, s: &Stacked, low: &LowCopy, e: usize, p: &Part) -> std::result::Result<(), String> {
        let mut buf = vec![0u8; low.expert_bytes];
        let part =
            Part { dest: buf.as_mut_ptr(), len: buf.len(), offset: low.file_offset + (e * low.expert_bytes) as u64 };
        read_part(&self.file, &part).map_err(|err| format!("its low-precision copy: {err}"))?;
        // SAFETY: the part lies inside a bound tensor, and no one else writes it.
        let dest = unsafe { std::slice::from_raw_parts_mut(p.dest, p.len) };
        widen_expert(low.ty, &buf, s.ty, s.ne0, dest).map_err(|err| err.to_string())
    }

    fn evict(&mut self, key: Key) -> Result<()> {
        if self.resident.remove(&key).is_none() {
            return Ok(());
        }
        self.unused_prefetch.remove(&key);
        for p in self.parts(key)? {
            // SAFETY: the part lies inside a bound tensor, and no read of it is in flight.
            unsafe { release(p.dest, p.len) };
            self.resident_bytes -= p.len as u64;
        }
        self.stats.evictions += 1;
        Ok(())
    }
}

/// Zeroes `len` bytes at `ptr` and gives their whole pages back to the kernel (they read as
/// zero until written again), so an evicted expert stops counting as resident memory.
///
/// # Safety
/// `ptr` must point to `len` writable bytes of anonymous private memory (malloc'd).
unsafe fn release(ptr: *mut u8, len: usize) {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    let start = ptr as usize;
    let first_page = start.div_ceil(page) * page;
    let last_page = (start + len) / page * page;
    if first_page >= last_page {
        // SAFETY: within the caller's range.
        unsafe { std::ptr::write_bytes(ptr, 0, len) };
        return;
    }
    // SAFETY: the partial pages at both ends lie within the caller's range; the whole pages
    // between are private anonymous memory (MADV_DONTNEED makes them read as zero).
    unsafe {
        std::ptr::write_bytes(ptr, 0, first_page - start);
        std::ptr::write_bytes(last_page as *mut u8, 0, start + len - last_page);
        if libc::madvise(first_page as *mut libc::c_void, last_page - first_page, libc::MADV_DONTNEED) != 0 {
            std::ptr::write_bytes(first_page as *mut u8, 0, last_page - first_page);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{write_gguf, Metadata, TensorInfoOut, Value};
    use crate::GgmlType;

    /// A 2-layer MoE GGUF of 4 experts whose expert e of layer l holds bytes all equal to
    /// 16 * l + 4 * kind + e + 1 (each expert 8192 bytes per tensor, two pages). Both routers
    /// (n_embd = 2) score expert e by x . (cos(e pi/2), sin(e pi/2)): x = (1, 0.5) picks 0 then 1.
    fn moe_file(dir: &Path) -> std::path::PathBuf {
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

    /// Page-aligned memory for the 6 tensors.
    struct Memory(Vec<Vec<u8>>);

    fn bound(path: &Path, budget: Budget, t2: f64) -> (ExpertStore, Memory) {
        let mut store = ExpertStore::open(path, budget, Policy::Lru, MissRules { t2, ..MissRules::ALL_HIGH }).unwrap();
        let mut mem = Memory((0..6).map(|_| vec![0xAAu8; 4 * 8192]).collect());
        for (i, buf) in mem.0.iter_mut().enumerate() {
            let name = format!("blk.{}.{}.weight", i / 3, KINDS[i % 3]);
            // SAFETY: the buffer outlives the store in each test.
            unsafe { store.bind(&name, buf.as_mut_ptr(), buf.len()).unwrap() };
        }
        (store, mem)
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

    #[test]
    fn picks_are_read_in_and_evicted_experts_read_as_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = moe_file(dir.path());
        // room for two experts (3 tensors x 8 KiB each)
        let (mut store, mem) = bound(&path, Budget::Bytes(2 * 3 * 8192), 1.0);
        assert_eq!(loaded(&mem, 0, 0), Vec::<usize>::new(), "bound memory starts empty");
        store.prepare(0, 2, &[1, 3], None).unwrap();
        assert_eq!((loaded(&mem, 0, 0), loaded(&mem, 0, 2)), (vec![1, 3], vec![1, 3]));
        // layer 1 needs two more: layer 0's are evicted (least recently used)
        store.prepare(1, 2, &[0, 2], None).unwrap();
        assert_eq!((loaded(&mem, 0, 1), loaded(&mem, 1, 1)), (vec![], vec![0, 2]));
        // the next token: layer 0's experts were evicted, two misses
        store.prepare(0, 2, &[1, 0], None).unwrap();
        let s = store.stats();
        assert_eq!((s.hits, s.loads, s.skipped), (0, 6, 0));
        assert_eq!(s.bytes_read, 6 * 3 * 8192);
        assert!(s.peak_resident <= s.budget);
        // a batch needing more than the budget holds all its picks for that batch
        store.prepare(1, 2, &[0, 1, 2, 3], None).unwrap();
        assert_eq!(loaded(&mem, 1, 2), vec![0, 1, 2, 3]);
        store.prepare(0, 1, &[1], None).unwrap();
        assert!(loaded(&mem, 1, 2).len() <= 2, "streamed experts are dropped after their batch");
    }

    #[test]
    fn unimportant_misses_are_skipped_above_t2() {
        let dir = tempfile::tempdir().unwrap();
        let path = moe_file(dir.path());
        let (mut store, mem) = bound(&path, Budget::Percent(100.0), 0.5);
        // token 0: expert 1 is skipped (0.9 of the picks' weight ranked above it); token 1's two
        // picks weigh the same (0.5 above the second: kept)
        let probs = [0.05, 0.09, 0.81, 0.05, 0.45, 0.0, 0.1, 0.45];
        store.prepare(0, 2, &[2, 1, 3, 0], Some(&probs)).unwrap();
        assert_eq!(loaded(&mem, 0, 0), vec![0, 2, 3]);
        assert_eq!(store.stats().skipped, 1);
        assert!(store.prepare(0, 2, &[2, 1], Some(&probs)).is_err(), "probabilities for two tokens, picks for one");
        assert!(store.prepare(0, 2, &[2, 4], None).is_err(), "expert 4 of 4");
    }

    #[test]
    fn a_skippable_pick_in_memory_is_used_not_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let path = moe_file(dir.path());
        let (mut store, mem) = bound(&path, Budget::Bytes(2 * 3 * 8192), 0.5);
        store.prepare(0, 2, &[1, 2], None).unwrap();
        // expert 0 misses; 1 (least recently used, skippable) is in memory and serves: 2 goes
        let probs = [0.9, 0.1, 0.0, 0.0];
        store.prepare(0, 2, &[0, 1], Some(&probs)).unwrap();
        assert_eq!(loaded(&mem, 0, 1), vec![0, 1]);
        assert_eq!((store.stats().hits, store.stats().skipped), (1, 0));
    }

    #[test]
    fn prefetched_experts_are_read_ahead_and_serve_the_next_layer() {
        let dir = tempfile::tempdir().unwrap();
        let path = moe_file(dir.path());
        let (mut store, mem) = bound(&path, Budget::Bytes(3 * 3 * 8192), 1.0);
        store.prepare(0, 1, &[1], None).unwrap();
        // layer 1's router guesses expert 0 for this gate input
        store.prefetch(0, 1, 1, &[1.0, 0.5]).unwrap();
        store.prepare(1, 1, &[0], None).unwrap();
        assert_eq!(loaded(&mem, 1, 2), vec![0]);
        let s = store.stats();
        assert_eq!((s.hits, s.loads, s.prefetched, s.prefetch_hits), (1, 1, 1, 1));
        assert_eq!(s.bytes_read, 2 * 3 * 8192);
        // nothing lies beyond the last layer; a prompt-sized batch is not prefetched for
        store.prefetch(1, 4, 1, &[1.0, 0.5]).unwrap();
        store.prefetch(0, 1, 1, &[0.0, -1.0].repeat(PREFETCH_MAX_TOKENS + 1)).unwrap();
        assert_eq!(store.stats().prefetched, 1);
        // a wrong guess (expert 3) costs a read and a slot; the budget holds
        store.prepare(0, 1, &[2], None).unwrap();
        store.prefetch(0, 1, 1, &[0.0, -1.0]).unwrap();
        store.prepare(1, 1, &[1], None).unwrap();
        let s = store.stats();
        assert_eq!((s.prefetched, s.prefetch_hits, s.loads), (2, 1, 3));
        assert!(s.peak_resident <= s.budget, "{} > {}", s.peak_resident, s.budget);
        assert!(loaded(&mem, 1, 0).contains(&1));
        assert!(store.prefetch(0, 1, 1, &[1.0, 0.5, 2.0]).unwrap_err().to_string().contains("whole rows of 2"));
    }

    #[test]
    fn the_serving_layer_is_never_evicted_for_a_guess() {
        let dir = tempfile::tempdir().unwrap();
        let path = moe_file(dir.path());
        let (mut store, mem) = bound(&path, Budget::Bytes(2 * 3 * 8192), 1.0);
        store.prepare(0, 2, &[1, 3], None).unwrap();
        store.prefetch(0, 1, 2, &[1.0, 0.5]).unwrap();
        assert_eq!(loaded(&mem, 0, 0), vec![1, 3], "layer 0 is about to run");
        assert_eq!(store.stats().prefetched, 0);
    }

    #[test]
    fn a_failed_read_ahead_is_zeroed_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = moe_file(dir.path());
        let (mut store, mem) = bound(&path, Budget::Percent(100.0), 1.0);
        store.prepare(0, 1, &[0], None).unwrap();
        // the file loses layer 1's experts after it was opened
        let cut = std::fs::metadata(&path).unwrap().len() - 3 * 4 * 8192;
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(cut).unwrap();
        store.prefetch(0, 1, 1, &[1.0, 0.5]).unwrap();
        let err = store.prepare(1, 1, &[0], None).unwrap_err().to_string();
        assert!(err.contains("moe.gguf") && err.contains("expert 0 of layer 1 ahead"), "{err}");
        assert_eq!(loaded(&mem, 1, 0), Vec::<usize>::new());
    }

    /// `moe_file`'s shape in F32 ([32, 64, 4] per tensor: 8192 bytes per expert) with values
    /// that Q4_0 cannot hold exactly, packed by `moe-pack` with Q4_0 copies and a beta of 0.5
    /// for both layers. Returns the packed file and the original values of each tensor.
    fn packed_file(dir: &Path) -> (std::path::PathBuf, Vec<Vec<f32>>) {
        use crate::gguf::{write_gguf, Metadata, TensorInfoOut, Value};
        use crate::moe::pack::{moe_pack, MoePackOptions};
        use crate::moe::trace::{TokenRoute, Trace};
        let mut md = Metadata::new();
        md.insert("general.architecture", Value::String("llama".into()));
        md.insert("llama.block_count", Value::U32(2));
        md.insert("llama.expert_count", Value::U32(4));
        let values: Vec<Vec<f32>> = (0..6)
            .map(|i| (0..4 * 2048).map(|j| (i * 4 + j / 2048 + 1) as f32 + (j % 7) as f32 * 0.13).collect())
            .collect();
        let bytes: Vec<Vec<u8>> = values.iter().map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
        let router: Vec<u8> =
            [1.0f32, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0, -1.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut tensors: Vec<(TensorInfoOut, &[u8])> = Vec::new();
        for l in 0..2 {
            for (k, kind) in KINDS.iter().enumerate() {
                let info = TensorInfoOut::new(format!("blk.{l}.{kind}.weight"), GgmlType::F32, [32u64, 64, 4]);
                tensors.push((info, &bytes[l * 3 + k]));
            }
            tensors
                .push((TensorInfoOut::new(format!("blk.{l}.ffn_gate_inp.weight"), GgmlType::F32, [2u64, 4]), &router));
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
        let got: Vec<f32> = mem.0[i][e * 8192..(e + 1) * 8192]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        if got.iter().all(|&x| x == 0.0) {
            return None;
        }
        let want = &values[i][e * 2048..(e + 1) * 2048];
        // within about one Q4_0 step (an eighth of the largest value of a block)
        let close = got.iter().zip(want).all(|(a, b)| (a - b).abs() <= 0.15 * b.abs());
        assert!(close, "tensor {i} expert {e} is neither zero nor close to its values");
        Some(got == want)
    }

    fn bind_all(store: &mut ExpertStore) -> Memory {
        let mut mem = Memory((0..6).map(|_| vec![0xAAu8; 4 * 8192]).collect());
        for (i, buf) in mem.0.iter_mut().enumerate() {
            let name = format!("blk.{}.{}.weight", i / 3, KINDS[i % 3]);
            // SAFETY: the buffer outlives the store in each test.
            unsafe { store.bind(&name, buf.as_mut_ptr(), buf.len()).unwrap() };
        }
        mem
    }

    #[test]
    fn low_picks_read_the_copy_and_a_high_pick_reloads_it() {
        let dir = tempfile::tempdir().unwrap();
        let (path, values) = packed_file(dir.path());
        let rules = MissRules { t1: 0.5, ..MissRules::ALL_HIGH };
        let mut store = ExpertStore::open(&path, Budget::Percent(100.0), Policy::Lru, rules).unwrap();
        let mem = bind_all(&mut store);
        // expert 2 leads (0.7); expert 1 has 0.7 of the weight above it: low precision
        let probs = [0.0, 0.3, 0.7, 0.0];
        assert_eq!(store.prepare(0, 2, &[1, 2], Some(&probs)).unwrap(), vec![false, false]);
        assert_eq!((exact(&mem, &values, 0, 2), exact(&mem, &values, 2, 1)), (Some(true), Some(false)));
        let s = store.stats();
        assert_eq!((s.loads, s.loads_low), (2, 1));
        // 3 tensors x (8192 bytes + 64 rows of one 18-byte Q4_0 block)
        assert_eq!(s.bytes_read, 3 * (8192 + 64 * 18));
        // a low pick of the copy hits; expert 1 as the top pick reloads it in high precision
        store.prepare(0, 2, &[2, 1], Some(&probs)).unwrap();
        assert_eq!((store.stats().hits, store.stats().loads), (2, 2));
        store.prepare(0, 1, &[1], Some(&probs)).unwrap();
        assert_eq!(exact(&mem, &values, 1, 1), Some(true));
        let s = store.stats();
        assert_eq!((s.loads, s.loads_low, s.peak_resident), (3, 1, 2 * 3 * 8192));
    }

    #[test]
    fn beta_drops_a_weak_second_pick_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let (path, values) = packed_file(dir.path());
        let rules = MissRules { beta: true, ..MissRules::ALL_HIGH };
        let mut store = ExpertStore::open(&path, Budget::Bytes(3 * 3 * 8192), Policy::Lru, rules).unwrap();
        let mem = bind_all(&mut store);
        // token 0: expert 3 weighs 0.4 of expert 0 (< beta 0.5): dropped; token 1: 0.75, kept
        let probs = [0.5, 0.0, 0.0, 0.2, 0.0, 0.3, 0.4, 0.0];
        let dropped = store.prepare(1, 2, &[3, 0, 2, 1], Some(&probs)).unwrap();
        assert_eq!(dropped, vec![true, false, false, false]);
        assert_eq!((exact(&mem, &values, 3, 3), exact(&mem, &values, 3, 0)), (None, Some(true)));
        assert_eq!((store.stats().skipped, store.stats().loads), (1, 3));
        // in memory, a skippable pick is used
        assert_eq!(store.prepare(1, 2, &[0, 1], Some(&[0.5, 0.1, 0.0, 0.0])).unwrap(), vec![false, false]);
    }

    #[test]
    fn thresholds_need_what_moe_pack_writes() {
        let dir = tempfile::tempdir().unwrap();
        let plain = moe_file(dir.path());
        let err = |path: &Path, rules| {
            ExpertStore::open(path, Budget::Percent(50.0), Policy::Lru, rules).err().unwrap().to_string()
        };
        let low = err(&plain, MissRules { t1: 0.6, ..MissRules::ALL_HIGH });
        assert!(low.contains("'blk.0.ffn_gate_exps.weight' has none") && low.contains("moe-pack"), "{low}");
        let beta = err(&plain, MissRules { beta: true, ..MissRules::ALL_HIGH });
        assert!(beta.contains("switchyard.moe.skip_beta"), "{beta}");
        let range = err(&plain, MissRules { t2: 1.5, ..MissRules::ALL_HIGH });
        assert!(range.contains("[0, 1]"), "{range}");
    }

    #[test]
    fn budgets_parse_and_bad_files_are_named() {
        assert_eq!(Budget::parse("25%"), Some(Budget::Percent(25.0)));
        assert_eq!(Budget::parse("512M"), Some(Budget::Bytes(512 << 20)));
        assert_eq!(Budget::parse("1.5G"), Some(Budget::Bytes(3 << 29)));
        assert_eq!(Budget::parse("4096"), Some(Budget::Bytes(4096)));
        assert_eq!(Budget::parse("150%"), None);
        assert_eq!(Budget::parse("lots"), None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dense.gguf");
        let mut md = Metadata::new();
        md.insert("general.architecture", Value::String("llama".into()));
        md.insert("llama.block_count", Value::U32(1));
        write_gguf(&path, &md, &[]).unwrap();
        let err = ExpertStore::open(&path, Budget::Percent(50.0), Policy::Lru, MissRules::ALL_HIGH)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("dense.gguf") && err.contains("not a mixture of experts"), "{err}");
        let moe = moe_file(dir.path());
        let mut store = ExpertStore::open(&moe, Budget::Percent(50.0), Policy::Lru, MissRules::ALL_HIGH).unwrap();
        let mut small = vec![0u8; 10];
        // SAFETY: a live buffer of the stated length.
        let err = unsafe { store.bind("blk.0.ffn_up_exps.weight", small.as_mut_ptr(), 10) }.unwrap_err().to_string();
        assert!(err.contains("'blk.0.ffn_up_exps.weight': 10 bytes"), "{err}");
        assert!(store.prepare(0, 1, &[0], None).unwrap_err().to_string().contains("never bound"));
    }
}
