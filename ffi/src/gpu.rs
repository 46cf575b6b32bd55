//! Switching weights that live on a GPU: with the `cuda` feature, W_base + D is decoded on the
//! device by switchyard's kernels straight into the host's tensor, so nothing crosses PCIe but
//! the compressed deltas (once per expert and tensor) and, with `SWITCHYARD_GPU_BASE=pinned`,
//! the base weights.
//!
//! `SWITCHYARD_GPU_BASE` picks where W_base of the switchable weights is kept for decoding:
//! - `device` (default): a copy on the GPU in the bundle's type (0.5-1 byte per parameter for
//!   quantized bases, 2 for F16): switching reads only device memory;
//! - `pinned`: page-locked host memory (no extra GPU memory); every switch uploads W_base of
//!   each weight it rewrites (base bytes over PCIe per switch).
//!
//! Without the feature, or without a usable GPU (no driver, no NVRTC: logged once), every
//! tensor goes through the host callbacks as before.

use switchyard::switch::DeviceJob;

#[cfg(feature = "cuda")]
pub use imp::DeviceDecoder;

#[cfg(not(feature = "cuda"))]
#[derive(Default)]
pub struct DeviceDecoder {
    _no_gpu: (),
}

#[cfg(not(feature = "cuda"))]
impl DeviceDecoder {
    /// Built without CUDA: the caller decodes on the host.
    pub fn decode(&mut self, _ptr: u64, _device: i32, _job: &DeviceJob<'_>) -> switchyard::Result<bool> {
        Ok(false)
    }
}

#[cfg(feature = "cuda")]
mod imp {
    use std::collections::HashMap;

    use cudarc::driver::{CudaSlice, PinnedHostSlice};
    use switchyard::bundle::TensorDelta;
    use switchyard::GgmlType;
    use switchyard_kernels::device::{DeviceDelta, Gpu};

    use super::DeviceJob;

    /// Where W_base waits between switches (module documentation).
    enum BaseCopy {
        Device(CudaSlice<u8>),
        Pinned(PinnedHostSlice<u8>),
    }

    struct GpuState {
        gpu: Gpu,
        pinned: bool,
        bases: HashMap<String, BaseCopy>,
        deltas: HashMap<(usize, String), DeviceDelta>,
    }

    /// Per device ordinal: the GPU's state, or None once opening it failed (logged once).
    #[derive(Default)]
    pub struct DeviceDecoder {
        devices: HashMap<i32, Option<GpuState>>,
    }

    fn gpu_error(e: impl std::fmt::Display) -> switchyard::Error {
        switchyard::Error::Invalid(format!("GPU: {e}"))
    }

    impl DeviceDecoder {
        /// Decode `job` into the f16 tensor at device pointer `ptr` on GPU `device`; false when
        /// the kernels do not cover it (the caller then decodes on the host).
        pub fn decode(&mut self, ptr: u64, device: i32, job: &DeviceJob<'_>) -> switchyard::Result<bool> {
            let base_ok = matches!(
                job.info.ty,
                GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1
            );
            let delta_ok = matches!(job.delta, None | Some(TensorDelta::Codec(_)));
            if job.ty != GgmlType::F16 || !base_ok || !delta_ok || device < 0 {
                return Ok(false);
            }
            let state = self.devices.entry(device).or_insert_with(|| {
                let pinned = std::env::var("SWITCHYARD_GPU_BASE").is_ok_and(|v| v == "pinned");
                match Gpu::open(device as usize) {
                    Ok(gpu) => Some(GpuState { gpu, pinned, bases: HashMap::new(), deltas: HashMap::new() }),
                    Err(e) => {
                        eprintln!("switchyard: GPU {device} unusable ({e}); switching through the host");
                        None
                    }
                }
            });
            let Some(state) = state else { return Ok(false) };
            let name = &job.info.name;
            let n = job.info.n_elements() as usize;
            let n_in = job.info.ne[0] as usize;

            if !state.bases.contains_key(name) {
                let copy = if state.pinned {
                    // SAFETY: a fresh page-locked buffer, filled right below.
                    let mut p = unsafe { state.gpu.context().alloc_pinned::<u8>(job.base.len()) }.map_err(gpu_error)?;
                    p.as_mut_slice().map_err(gpu_error)?.copy_from_slice(job.base);
                    BaseCopy::Pinned(p)
                } else {
                    BaseCopy::Device(state.gpu.upload(job.base).map_err(gpu_error)?)
                };
                state.bases.insert(name.clone(), copy);
            }
            let staged;
            let base = match &state.bases[name] {
                BaseCopy::Device(d) => d,
                BaseCopy::Pinned(p) => {
                    staged = state.gpu.stream.clone_htod(p).map_err(gpu_error)?;
                    &staged
                }
            };
            match (job.expert, job.delta) {
                (Some(e), Some(TensorDelta::Codec(c))) => {
                    let key = (e, name.clone());
                    if !state.deltas.contains_key(&key) {
                        state.deltas.insert(key.clone(), DeviceDelta::upload(&state.gpu, c).map_err(gpu_error)?);
                    }
                    // SAFETY: ptr is the host's f16 tensor of this shape on this device, idle
                    // while the host waits for the switch (synchronised below).
                    unsafe {
                        state.gpu.decompress_add_into(job.info.ty, base, &state.deltas[&key], GgmlType::F16, ptr)
                    }
                    .map_err(gpu_error)?;
                }
                // SAFETY: as above, n f16 values.
                _ => unsafe { state.gpu.dequantize_f16_into(job.info.ty, base, n_in, n, ptr) }.map_err(gpu_error)?,
            }
            state.gpu.synchronize().map_err(gpu_error)?;
            Ok(true)
        }
    }
}
