//! Which experts are in memory, within the budget: the MoE cache's residency.
//!
//! The expert tensors keep llama.cpp's layout: an expert in memory holds its bytes at its place
//! in the stacked tensor, one that is not reads as zero (its pages handed back to the kernel),
//! so the budget bounds resident memory (up to the partial pages at each expert's ends) and the
//! graph is unchanged. Every pick that is served is in memory when its layer runs: a batch that
//! needs more than the budget holds its experts for that batch only ("streamed"). A pick that
//! needs only low precision loads the expert's low-precision copy, widened into place; a later
//! pick that needs high precision reloads it.
//!
//! Reads ahead (prefetching) go to a background thread while the current layer computes. Room
//! is made for them at once, never by evicting what the current layer uses or what is still
//! being read; a layer waits for the reads meant for it before it is served, so a right guess
//! is a hit and a wrong one costs a read and a slot (given back when its layer does not pick
//! it).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use super::io::{advise_small_pages, read_part, release, Part, Reader};
use super::layout::{ExpertLayout, LowCopy, StackedTensor};
use super::policy::{ExpertCache, Key, Lookup, Policy, Use};
use crate::error::{Error, Result};
use crate::moe::importance::Need;
use crate::moe::low_precision::widen_expert;

/// What the cache did so far (C reads it as `switchyard_moe_cache_stats`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MoeCacheStats {
    /// Picks served from memory, read from the file (of them, from low-precision copies: t1),
    /// and skipped (t2 or beta; not read, their gate weight zeroed).
    pub hits: u64,
    pub loads: u64,
    pub loads_low: u64,
    pub skipped: u64,
    pub bytes_read: u64,
    pub evictions: u64,
    /// The budget in bytes, and the most expert bytes resident at once.
    pub budget: u64,
    pub peak_resident: u64,
    /// Experts read ahead by prefetching (their bytes are in `bytes_read`), and those of them a
    /// later pick used (also counted in `hits`).
    pub prefetched: u64,
    pub prefetch_hits: u64,
}

pub struct Residency {
    path: PathBuf,
    label: String,
    file: File,
    layout: ExpertLayout,
    /// Per layer and stacked tensor, the memory the host bound to it.
    memory: Vec<Vec<Option<*mut u8>>>,
    cache: ExpertCache,
    /// Experts in memory, and whether in high precision.
    resident: HashMap<Key, bool>,
    resident_bytes: u64,
    /// Loaded for the current batch only (did not fit the budget).
    streamed: Vec<Key>,
    /// The experts serving the layer prepared last, which its matmuls are about to read.
    serving: HashSet<Key>,
    /// Started by the first read ahead.
    reader: Option<Reader>,
    /// Experts the reader is filling, with what it writes (kept to zero them on a failure).
    in_flight: HashMap<Key, Vec<Part>>,
    /// Read ahead and not used since.
    unused_prefetch: HashSet<Key>,
    /// The policy's clock in tokens: a batch's tokens follow the previous batch's.
    token_base: u64,
    last_batch_tokens: u64,
    last_layer: Option<usize>,
    stats: MoeCacheStats,
}

// SAFETY: the bound memory is only written through `&mut self` or by the reader thread (experts
// in `in_flight`, which nothing else touches until their read is collected), and the caller of
// `bind` guarantees the memory outlives the residency, whose drop joins the reader.
unsafe impl Send for Residency {}

impl Residency {
    /// Experts of `layout`, read from the file at `path`, in a cache of `budget` bytes.
    pub fn new(path: &Path, layout: ExpertLayout, budget: u64, policy: Policy) -> Result<Residency> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let n_layer = layout.layers.len();
        Ok(Residency {
            path: path.to_path_buf(),
            label: path.display().to_string(),
            file,
            memory: layout.layers.iter().map(|ts| vec![None; ts.len()]).collect(),
            layout,
            cache: ExpertCache::new(policy, budget as f64, n_layer as u32),
            resident: HashMap::new(),
            resident_bytes: 0,
            streamed: Vec::new(),
            serving: HashSet::new(),
            reader: None,
            in_flight: HashMap::new(),
            unused_prefetch: HashSet::new(),
            token_base: 0,
            last_batch_tokens: 0,
            last_layer: None,
            stats: MoeCacheStats { budget, ..Default::default() },
        })
    }

    /// The model file, as error messages name it.
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn layout(&self) -> &ExpertLayout {
        &self.layout
    }

    pub fn stats(&self) -> MoeCacheStats {
        self.stats
    }

    /// Hands over the memory of tensor `name` (`len` bytes), which is filled and emptied from
    /// now on; it is emptied (zero) now.
    ///
    /// # Safety
    /// `dest` must point to `len` writable bytes of malloc'd memory that no one else writes and
    /// that outlive the residency.
    pub unsafe fn bind(&mut self, name: &str, dest: *mut u8, len: usize) -> Result<()> {
        let label = &self.label;
        let Some((il, i)) = self.layout.tensor(name) else {
            return Err(Error::NotFound(format!("{label}: '{name}' is not an expert tensor of this model")));
        };
        let total = self.layout.layers[il][i].total_bytes;
        if dest.is_null() || len != total {
            crate::bail_invalid!("{label}: tensor '{name}': {len} bytes bound, the file holds {total}");
        }
        self.memory[il][i] = Some(dest);
        // SAFETY: dest holds len bytes of malloc'd memory, by the caller's contract.
        unsafe {
            release(dest, len);
            advise_small_pages(dest, len);
        }
        Ok(())
    }

    /// Makes a batch's picks of layer `layer` resident. `tokens` holds each token's picks, most
    /// important first, with what each needs. A skippable pick is served only by an expert
    /// already in memory (a skip saves a read, nothing more); see [`Residency::is_serving`].
    pub fn serve(&mut self, layer: usize, tokens: &[Vec<(u32, Need)>]) -> Result<()> {
        self.check_bound(layer)?;
        self.collect_reads(|k| k.0 as usize == layer)?;
        // a new batch starts when the layers start over
        if self.last_layer.is_some_and(|l| layer <= l) {
            self.token_base += self.last_batch_tokens;
        }
        self.last_layer = Some(layer);
        self.last_batch_tokens = tokens.len() as u64;

        // per expert, the most any token needs
        let mut need: HashMap<u32, Need> = HashMap::new();
        for &(e, n) in tokens.iter().flatten() {
            need.entry(e).and_modify(|m| *m = (*m).max(n)).or_insert(n);
        }
        // what this batch uses must stay in memory while it is served
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
            self.evict(key);
        }
        // what the previous batch streamed through is dropped, unless this one needs it
        for key in std::mem::take(&mut self.streamed) {
            if !batch.contains(&key) && !self.cache.contains(key) {
                self.evict(key);
            }
        }
        let expert_bytes = self.layout.expert_bytes(layer);
        for (t, picks) in tokens.iter().enumerate() {
            let token = self.token_base + t as u64;
            for &(e, _) in picks {
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
                            self.evict(v);
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
        }
        self.serving = batch;
        Ok(())
    }

    /// Whether expert `e` serves the batch of layer `layer` served last.
    pub fn is_serving(&self, layer: usize, e: u32) -> bool {
        self.serving.contains(&(layer as u32, e))
    }

    /// Starts reading `wanted` (experts of later layers, most wanted first) in the background,
    /// as far as the cache makes room for them without evicting what is serving, being read or
    /// wanted. Returns at once.
    pub fn read_ahead(&mut self, layer: usize, wanted: &[Key]) -> Result<()> {
        if wanted.is_empty() {
            return Ok(());
        }
        if self.reader.is_none() {
            let started = self.file.try_clone().and_then(Reader::start);
            self.reader = Some(started.map_err(|e| self.read_error("starting the prefetch reader".into(), e))?);
        }
        let token = self.token_base;
        for &key in wanted {
            self.check_bound(key.0 as usize)?;
            if self.resident.contains_key(&key) || self.in_flight.contains_key(&key) {
                continue;
            }
            let parts = self.parts(key);
            let cost: usize = parts.iter().map(|p| p.len).sum();
            let u = Use { key, token, seq: 0, high: true, cost: cost as f64, next_use: None };
            let (serving, in_flight) = (&self.serving, &self.in_flight);
            let protected = |k: Key, _| serving.contains(&k) || in_flight.contains_key(&k) || wanted.contains(&k);
            let Lookup::Miss { evicted, cached } = self.cache.admit(u, layer as u32, protected) else {
                continue;
            };
            for v in evicted {
                self.evict(v);
            }
            if !cached {
                break; // everything left is protected: no room for more guesses
            }
            if !self.reader.as_ref().is_some_and(|r| r.send(key, parts.clone())) {
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
            let Some((key, result)) = reader.finished(waiting) else {
                if waiting {
                    // only a dead reader leaves reads unfinished: their memory cannot be trusted
                    crate::bail_invalid!("{}: the prefetch reader stopped with reads unfinished", self.label);
                }
                break;
            };
            let parts = self.in_flight.remove(&key).expect("a read the cache started");
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
                    failure.get_or_insert((format!("reading expert {} of layer {} ahead", key.1, key.0), err));
                }
            }
        }
        match failure {
            Some((what, err)) => Err(self.read_error(what, err)),
            None => Ok(()),
        }
    }

    /// Refuses a layer with a tensor the host has not bound: nothing of it can be read in.
    fn check_bound(&self, layer: usize) -> Result<()> {
        match self.memory[layer].iter().position(Option::is_none) {
            Some(i) => {
                crate::bail_invalid!("{}: tensor '{}' was never bound", self.label, self.layout.layers[layer][i].name)
            }
            None => Ok(()),
        }
    }

    /// An I/O error on the model file, saying what was being read.
    fn read_error(&self, what: String, err: std::io::Error) -> Error {
        Error::io(&self.path, std::io::Error::new(err.kind(), format!("{what}: {err}")))
    }

    /// Where expert `key` lies in the file and in memory, one part per stacked tensor (all bound:
    /// an expert enters the cache only after `check_bound`).
    fn parts(&self, key: Key) -> Vec<Part> {
        let (layer, e) = (key.0 as usize, key.1 as usize);
        self.layout.layers[layer]
            .iter()
            .zip(&self.memory[layer])
            .map(|(s, dest)| {
                let dest = dest.expect("the layer's tensors are bound");
                Part {
                    // SAFETY: expert e's slice lies inside the bound tensor.
                    dest: unsafe { dest.add(e * s.expert_bytes) },
                    len: s.expert_bytes,
                    offset: s.file_offset + (e * s.expert_bytes) as u64,
                }
            })
            .collect()
    }

    /// Reads expert `key` into its place in every tensor of its layer, in high precision or
    /// from its low-precision copies (widened into place); on a failure, what was read is
    /// zeroed again and nothing is counted.
    fn load(&mut self, key: Key, high: bool) -> Result<()> {
        let parts = self.parts(key);
        let mut read = 0u64;
        for (s, p) in self.layout.layers[key.0 as usize].iter().zip(&parts) {
            let result = match (&s.low, high) {
                (Some(low), false) => self.read_low(s, low, key.1 as usize, p),
                _ => read_part(&self.file, p)
                    .map(|()| p.len as u64)
                    .map_err(|err| self.read_error(format!("reading expert {} of '{}'", key.1, s.name), err)),
            };
            match result {
                Ok(n) => read += n,
                Err(err) => {
                    // all of it: an expert reloaded in high precision had its copy in the rest
                    for p in &parts {
                        // SAFETY: the parts lie inside bound tensors, and no one else writes them.
                        unsafe { release(p.dest, p.len) };
                    }
                    if self.resident.remove(&key).is_some() {
                        self.resident_bytes -= parts.iter().map(|p| p.len as u64).sum::<u64>();
                    }
                    return Err(err);
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

    /// Reads expert `e`'s low-precision copy of `s` and widens it into `p`, its place; returns
    /// the bytes read.
    fn read_low(&self, s: &StackedTensor, low: &LowCopy, e: usize, p: &Part) -> Result<u64> {
        let mut buf = vec![0u8; low.expert_bytes];
        let copy =
            Part { dest: buf.as_mut_ptr(), len: buf.len(), offset: low.file_offset + (e * low.expert_bytes) as u64 };
        read_part(&self.file, &copy).map_err(|err| {
            self.read_error(format!("reading expert {e} of '{}' (its low-precision copy)", s.name), err)
        })?;
        // SAFETY: the part lies inside a bound tensor, and no one else writes it.
        widen_expert(low.ty, &buf, s.ty, s.ne0, unsafe { p.memory() })?;
        Ok(low.expert_bytes as u64)
    }

    fn evict(&mut self, key: Key) {
        if self.resident.remove(&key).is_none() {
            return;
        }
        self.unused_prefetch.remove(&key);
        for p in self.parts(key) {
            // SAFETY: the part lies inside a bound tensor, and no read of it is in flight.
            unsafe { release(p.dest, p.len) };
            self.resident_bytes -= p.len as u64;
        }
        self.stats.evictions += 1;
    }
}
