//! Switching weights that live on a GPU: W_base + D decoded on the device, straight into the
//! host's tensor, so nothing crosses PCIe but the compressed deltas (once per expert and
//! tensor) and, with `SWITCHYARD_GPU_BASE=pinned`, the base weights.
//!
//! What stays resident between switches is this module's policy:
//! - W_base of each switchable weight, where `SWITCHYARD_GPU_BASE` says: `device` (default) a
//!   copy on the GPU in the bundle's type (0.5-1 byte per parameter for quantized bases, 2 for
//!   F16), so switching reads only device memory; `pinned` page-locked host memory (no extra
//!   GPU memory), uploaded again by every switch that rewrites the weight;
//! - the compressed deltas of one expert, the last switched to: memory stays bounded by one
//!   expert's compressed size however many experts the bundle has.
//!
//! A GPU that cannot be opened (no driver, no NVRTC) is logged once; its tensors, and any the
//! kernels do not cover, go back to the caller to decode on the host.

use std::collections::HashMap;

use cudarc::driver::{CudaSlice, PinnedHostSlice};
use switchyard::bundle::TensorDelta;
use switchyard::switch::DeviceJob;
use switchyard::GgmlType;

use crate::device::{reads_weights, DeviceDelta, Gpu};
use crate::KernelError;

/// Where W_base of one weight waits between switches.
enum BaseCopy {
    Device(CudaSlice<u8>),
    Pinned(PinnedHostSlice<u8>),
}

struct GpuState {
    gpu: Gpu,
    pinned: bool,
    bases: HashMap<String, BaseCopy>,
    /// The deltas of expert `deltas_of`, by tensor.
    deltas: HashMap<String, DeviceDelta>,
    deltas_of: Option<usize>,
}

/// Per device ordinal: the GPU's state, or None once opening it failed (logged once).
#[derive(Default)]
pub struct SwitchDecoder {
    devices: HashMap<i32, Option<GpuState>>,
}

impl SwitchDecoder {
    /// Decode `job` into the f16 tensor at device pointer `ptr` on GPU `device`; false when
    /// this tensor is the caller's to decode on the host (the kernels do not cover it, the GPU
    /// is unusable, or decoding on it failed).
    ///
    /// # Safety
    /// `ptr` is an f16 tensor of `job`'s shape on GPU `device` that nothing else uses until
    /// this returns.
    pub unsafe fn decode(&mut self, ptr: u64, device: i32, job: &DeviceJob<'_>) -> bool {
        let base_ok = reads_weights(job.info.ty, job.info.ne[0] as usize);
        let delta_ok = matches!(job.delta, None | Some(TensorDelta::Codec(_)));
        if job.ty != GgmlType::F16 || !base_ok || !delta_ok || device < 0 {
            return false;
        }
        let state = self.devices.entry(device).or_insert_with(|| {
            let pinned = std::env::var("SWITCHYARD_GPU_BASE").is_ok_and(|v| v == "pinned");
            match Gpu::open(device as usize) {
                Ok(gpu) => {
                    Some(GpuState { gpu, pinned, bases: HashMap::new(), deltas: HashMap::new(), deltas_of: None })
                }
                Err(e) => {
                    eprintln!("switchyard: GPU {device} unusable ({e}); switching through the host");
                    None
                }
            }
        });
        let Some(state) = state else { return false };
        // SAFETY: forwarded from the caller.
        match unsafe { state.decode(ptr, job) } {
            Ok(()) => true,
            Err(e) => {
                // e.g. out of GPU memory: this tensor goes through the host instead, so the
                // switch still completes with every weight right
                eprintln!(
                    "switchyard: decoding '{}' on GPU {device} failed ({e}); writing it from the host",
                    job.info.name
                );
                false
            }
        }
    }
}

impl GpuState {
    /// # Safety
    /// As [`SwitchDecoder::decode`].
    unsafe fn decode(&mut self, ptr: u64, job: &DeviceJob<'_>) -> Result<(), KernelError> {
        let name = &job.info.name;
        let n = job.info.n_elements() as usize;
        let n_in = job.info.ne[0] as usize;

        if !self.bases.contains_key(name) {
            let copy = if self.pinned {
                // SAFETY: a fresh page-locked buffer, filled right below.
                let mut p = unsafe { self.gpu.context().alloc_pinned::<u8>(job.base.len()) }?;
                p.as_mut_slice()?.copy_from_slice(job.base);
                BaseCopy::Pinned(p)
            } else {
                BaseCopy::Device(self.gpu.upload(job.base)?)
            };
            self.bases.insert(name.clone(), copy);
        }
        let staged;
        let base = match &self.bases[name] {
            BaseCopy::Device(d) => d,
            BaseCopy::Pinned(p) => {
                staged = self.gpu.stream.clone_htod(p)?;
                &staged
            }
        };
        match (job.expert, job.delta) {
            (Some(e), Some(TensorDelta::Codec(c))) => {
                if self.deltas_of != Some(e) {
                    self.deltas.clear();
                    self.deltas_of = Some(e);
                }
                if !self.deltas.contains_key(name) {
                    self.deltas.insert(name.clone(), DeviceDelta::upload(&self.gpu, c)?);
                }
                // SAFETY: ptr is an f16 tensor of this shape on this device, idle until the
                // synchronisation below (the caller's contract).
                unsafe { self.gpu.decompress_add_into(job.info.ty, base, &self.deltas[name], GgmlType::F16, ptr) }?;
            }
            // SAFETY: as above, n f16 values.
            _ => unsafe { self.gpu.dequantize_f16_into(job.info.ty, base, n_in, n, ptr) }?,
        }
        // the host reads the tensor with its own stream once the switch returns
        self.gpu.synchronize()
    }
}
