//! What a host (the llama.cpp plugin) needs to run a bundle.
//!
//! Most changed weights are applied in the host's graph ([`Switcher::in_graph`]): the host
//! loads the base weight as the file holds it and adds the product with the expert's delta,
//! which it gets once, converted ([`Switcher::graph_delta`]). The rest (norms, biases, tensors
//! an expert replaces whole) are switched in place: the host creates them in
//! [`Switcher::managed_type`] instead of the file's type, does not load them from the file, and
//! binds each created tensor ([`Switcher::bind`]); [`Switcher::set_expert`] materializes
//! W_base + D of each and hands the bytes to the host's writer, which copies them into the
//! tensor (on the CPU or a GPU). W_base stays in the bundle file (memory-mapped), so going
//! back to `base` or to another expert never needs a reload.

use std::collections::BTreeMap;
use std::path::Path;

use crate::bundle::delta::{layout_for, rows_of};
use crate::bundle::in_graph::{self, GraphDelta, GraphDeltaShape};
use crate::bundle::{materialize, Bundle, TensorDelta};
use crate::codec::Output;
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, TensorInfo};
use crate::GgmlType;

/// An opaque handle of the host's tensor (a `ggml_tensor*` for llama.cpp).
pub type TensorHandle = usize;

pub struct Switcher {
    bundle: Bundle,
    /// Managed base tensor -> (type it is materialized in, the host tensors bound to it).
    managed: BTreeMap<String, (GgmlType, Vec<TensorHandle>)>,
    /// Index of the expert the bound tensors hold; None for the base model.
    current: Option<usize>,
    /// Whether the bound tensors hold anything yet.
    filled: bool,
}

/// The name that selects the base model wherever experts are named.
pub const BASE: &str = "base";

impl Switcher {
    /// Open and fully validate a bundle, the base fingerprint included. The base's tokenizer
    /// keys are left out: the library never reads them, and its host has a tokenizer of its own.
    pub fn open(path: &Path) -> Result<Switcher> {
        let bundle = Bundle::from_file(GgufFile::open_without(path, "tokenizer.")?)?;
        bundle.verify_base()?;
        bundle.validate_all()?;
        // The checks read the whole file, which the host maps too (its base weights): keep
        // those pages out of the host's RSS twice over.
        bundle.file.release_resident();
        let managed = bundle
            .base_tensors()
            .filter(|t| !bundle.in_graph(&t.name))
            .filter_map(|t| bundle.materialized_type(&t.name).map(|ty| (t.name.clone(), (ty, Vec::new()))))
            .collect();
        Ok(Switcher { bundle, managed, current: None, filled: false })
    }

    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// The type the host must create weight `name` in, or None for weights it loads as usual.
    pub fn managed_type(&self, name: &str) -> Option<GgmlType> {
        self.managed.get(name).map(|(ty, _)| *ty)
    }

    pub fn managed_count(&self) -> usize {
        self.managed.len()
    }

    /// Register a host tensor created for managed weight `name` (a weight may be created
    /// more than once, e.g. tied embeddings duplicated as the output on another device).
    pub fn bind(&mut self, name: &str, handle: TensorHandle) -> Result<()> {
        let (_, handles) = self.managed.get_mut(name).ok_or_else(|| {
            Error::NotFound(format!("{}: tensor '{name}' is not managed by the bundle", self.bundle.label()))
        })?;
        if !handles.contains(&handle) {
            handles.push(handle);
        }
        Ok(())
    }

    /// Every managed weight must have been created by the host: check after binding.
    pub fn check_bound(&self) -> Result<()> {
        match self.managed.iter().find(|(_, (_, h))| h.is_empty()) {
            Some((name, _)) => {
                Err(Error::Invalid(format!("{}: the model never created managed tensor '{name}'", self.bundle.label())))
            }
            None => Ok(()),
        }
    }

    /// Whether the host applies weight `name`'s deltas in its graph (see the module doc).
    pub fn in_graph(&self, name: &str) -> bool {
        self.bundle.in_graph(name)
    }

    /// The type and number of salient channels of expert `e`'s delta of weight `name` in the
    /// graph's form, without converting it; None when the expert leaves the weight unchanged
    /// or the weight is not applied in the graph. `requested`: the codec deltas' type (None:
    /// [`in_graph::codec_type`]'s choice).
    /// Reads only the file's header, so that a host sizing its buffers first does not read
    /// every delta twice.
    pub fn graph_delta_shape(
        &self,
        e: usize,
        name: &str,
        requested: Option<GgmlType>,
    ) -> Result<Option<GraphDeltaShape>> {
        self.check_expert(e)?;
        if !self.bundle.in_graph(name) || !self.bundle.changes(e, name) {
            return Ok(None);
        }
        let whole = |ty| Some(GraphDeltaShape { ty, rank: 0, n_salient: 0 });
        if let Some(dense) = self.bundle.delta_part(e, name, "delta") {
            return Ok(whole(dense.ty));
        }
        if self.bundle.replaces_whole(e, name) {
            return Ok(whole(GgmlType::F32));
        }
        if let Some(a) = self.bundle.delta_part(e, name, "lr_a") {
            return Ok(Some(GraphDeltaShape { ty: a.ty, rank: a.ne[1] as usize, n_salient: 0 }));
        }
        let n_in = self.bundle.file.tensor(name).map_or(0, |t| rows_of(&t.ne).0);
        let params = &self.bundle.experts[e].params;
        let n_salient = self.bundle.delta_part(e, name, "sal_idx").map_or(0, |t| t.n_elements() as usize);
        let ty = in_graph::codec_type(params.bits, n_in, layout_for(params, n_in), requested, &self.what(e, name))?;
        Ok(Some(GraphDeltaShape { ty, rank: 0, n_salient }))
    }

    /// Expert `e`'s delta of weight `name` converted for the graph (None as in
    /// [`Switcher::graph_delta_shape`]).
    pub fn graph_delta(&self, e: usize, name: &str, requested: Option<GgmlType>) -> Result<Option<GraphDelta>> {
        match self.graph_source(e, name)? {
            Some(d) => {
                let converted = in_graph::graph_delta(d, requested, &self.what(e, name))?;
                self.release_stored_delta(e, name);
                Ok(Some(converted))
            }
            None => Ok(None),
        }
    }

    /// Drop the bundle file's pages from resident memory: for a host done converting the
    /// deltas (each conversion drops its own stored delta, but the kernel maps neighbouring
    /// pages in with every fault, so some come back).
    pub fn release_resident(&self) {
        self.bundle.file.release_resident();
    }

    fn release_stored_delta(&self, e: usize, name: &str) {
        for info in self.bundle.delta_tensors(e, name) {
            self.bundle.file.release_tensor(info);
        }
    }

    fn check_expert(&self, e: usize) -> Result<()> {
        if e >= self.bundle.experts.len() {
            return Err(Error::NotFound(format!(
                "{}: no expert {e} (the bundle has {})",
                self.bundle.label(),
                self.bundle.experts.len()
            )));
        }
        Ok(())
    }

    fn graph_source(&self, e: usize, name: &str) -> Result<Option<TensorDelta>> {
        self.check_expert(e)?;
        if !self.bundle.in_graph(name) {
            return Ok(None);
        }
        self.bundle.delta(e, name)
    }

    fn what(&self, e: usize, name: &str) -> String {
        format!("{}: expert '{}', tensor '{name}'", self.bundle.label(), self.bundle.experts[e].name)
    }

    /// Index of the expert in place (None for the base model).
    pub fn current_index(&self) -> Option<usize> {
        self.current
    }

    pub fn expert_names(&self) -> impl Iterator<Item = &str> {
        self.bundle.experts.iter().map(|e| e.name.as_str())
    }

    /// Name of the expert the bound tensors hold ("base" for the base model).
    pub fn current(&self) -> &str {
        self.current.map_or(BASE, |e| self.bundle.experts[e].name.as_str())
    }

    /// Resolve a name to an expert index (None = base); the error lists the valid names.
    pub fn resolve(&self, name: &str) -> Result<Option<usize>> {
        if name == BASE {
            Ok(None)
        } else {
            self.bundle.expert_index(name).map(Some)
        }
    }

    /// Materialize expert `name` (or "base") into every bound tensor of `host`. Nothing
    /// happens when that expert is already in place. On error the tensors may hold a mix of
    /// experts: the caller must switch again before using them.
    pub fn set_expert(&mut self, name: &str, host: &mut dyn TensorHost) -> Result<()> {
        let target = self.resolve(name)?;
        if self.filled && target == self.current {
            return Ok(());
        }
        self.check_bound()?;
        // A tensor neither the previous nor the target expert changes already holds the base.
        let previous = if self.filled { Some(self.current) } else { None };
        self.filled = false;
        // u32 storage: 4-byte aligned, so it can be viewed as f32 or f16 without copying.
        let mut scratch: Vec<u32> = Vec::new();
        for (tname, (ty, handles)) in &self.managed {
            let changes = |e: Option<usize>| e.is_some_and(|e| self.bundle.changes(e, tname));
            if let Some(prev) = previous {
                if !changes(prev) && !changes(target) {
                    continue;
                }
            }
            let delta = match target {
                Some(e) => self.bundle.delta(e, tname)?,
                None => None,
            };
            let info = self.bundle.file.tensor(tname).expect("managed tensors are base tensors");
            let base = self.bundle.file.try_tensor_data(info)?;
            // Tensors in GPU memory the host decodes there itself; the rest are decoded here.
            let job = DeviceJob { expert: target, info, base, delta: delta.as_ref(), ty: *ty };
            let mut on_host = Vec::with_capacity(handles.len());
            for &h in handles {
                if !host.decode_on_device(h, &job)? {
                    on_host.push(h);
                }
            }
            let Some((first, rest)) = on_host.split_first() else { continue };
            let n = info.n_elements() as usize;
            let bytes = ty.row_bytes(n as u64)? as usize;
            // Decode straight into the first tensor when the host lends its memory; copy from
            // there (or from scratch) into the others.
            let decoded: &[u8] = match host.memory(*first, bytes) {
                Some(mem) => {
                    materialize(info, base, delta.as_ref(), Output::from_bytes(*ty, mem)?)?;
                    &*mem
                }
                None => {
                    scratch.resize(bytes.div_ceil(4), 0);
                    let mem = &mut bytemuck::cast_slice_mut::<u32, u8>(&mut scratch[..])[..bytes];
                    materialize(info, base, delta.as_ref(), Output::from_bytes(*ty, mem)?)?;
                    host.write(*first, mem)?;
                    &*mem
                }
            };
            // Duplicates (tied embeddings on two devices) are rare: copy only for them.
            if !rest.is_empty() {
                let decoded = decoded.to_vec();
                for &h in rest {
                    host.write(h, &decoded)?;
                }
            }
        }
        self.current = target;
        self.filled = true;
        Ok(())
    }
}

/// One managed weight to materialize, as a host that decodes on its own device sees it.
pub struct DeviceJob<'a> {
    /// The expert (None: base); with the tensor's name, a key for caching uploads.
    pub expert: Option<usize>,
    pub info: &'a TensorInfo,
    /// W_base's bytes in `info.ty`, from the mapped bundle.
    pub base: &'a [u8],
    pub delta: Option<&'a TensorDelta>,
    /// The type the host tensor holds.
    pub ty: GgmlType,
}

/// Where materialized weights go: the host's tensors.
pub trait TensorHost {
    /// Materialize `job` into the tensor on its own device (a GPU) and return true, or return
    /// false to receive the bytes through [`TensorHost::memory`] / [`TensorHost::write`].
    fn decode_on_device(&mut self, _handle: TensorHandle, _job: &DeviceJob<'_>) -> Result<bool> {
        Ok(false)
    }

    /// The tensor's memory, `len` bytes, when the host can lend it (CPU tensors); None to
    /// receive the bytes through [`TensorHost::write`] instead (GPU tensors).
    fn memory(&mut self, handle: TensorHandle, len: usize) -> Option<&mut [u8]>;
    /// Copy `bytes` into the tensor.
    fn write(&mut self, handle: TensorHandle, bytes: &[u8]) -> Result<()>;
}
