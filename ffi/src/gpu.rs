//! Which decoder serves hosts whose weights live on a GPU: with the `cuda` feature, the one in
//! `switchyard_kernels::switching` (its module documentation says what stays on the device and
//! `SWITCHYARD_GPU_BASE`); without it, a stand-in that hands every tensor back to the host
//! callbacks.

#[cfg(feature = "cuda")]
pub use switchyard_kernels::switching::SwitchDecoder as DeviceDecoder;

#[cfg(not(feature = "cuda"))]
#[derive(Default)]
pub struct DeviceDecoder {
    _no_gpu: (),
}

#[cfg(not(feature = "cuda"))]
impl DeviceDecoder {
    /// Built without CUDA: the caller decodes on the host.
    ///
    /// # Safety
    /// None needed; `unsafe` only to match the CUDA decoder.
    pub unsafe fn decode(&mut self, _ptr: u64, _device: i32, _job: &switchyard::switch::DeviceJob<'_>) -> bool {
        false
    }
}
