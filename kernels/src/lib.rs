//! switchyard's CUDA kernels and their launcher.
//!
//! The kernels are one CUDA source ([`SOURCE`], `src/cuda/switchyard.cu`) compiled at run time
//! with NVRTC for the device at hand ([`compile`]); [`device::Gpu`] loads them and launches them
//! on its own stream. CUDA is loaded dynamically: without a driver or NVRTC the crate still
//! builds and [`device::Gpu::open_or_log`] returns None with one log line, so callers take the
//! CPU path (cudarc itself would panic on a missing library, so presence is checked first).
//!
//! Kernels and their CPU references in the `switchyard` crate:
//!
//! | kernel | does | CPU reference |
//! |---|---|---|
//! | `sy_decompress_add_{f32,f16,bf16}` (+ `sy_quantize_q8_0` for Q8_0) | W_base + D into a weight, every codec width, salient channels | `codec::reconstruct_into` with `codec::add_delta_row` (what `bundle::materialize` runs) |
//! | `sy_dequantize_f16` | transcode F32/F16/BF16/Q8_0/Q4_0/Q4_1 rows to f16 (expert cache slots) | `quants::dequantize_row` + `quants::f32_to_f16` |
//! | `sy_matmul_f16` + `sy_delta_matmul` | y = W_base x once per batch, + D_e x per expert segment, D read compressed | `codec::matmul::mixed_expert_matmul` |

pub mod compile;
pub mod device;
pub mod switching;

/// The CUDA source of every kernel.
pub const SOURCE: &str = include_str!("cuda/switchyard.cu");

/// Every kernel entry point in [`SOURCE`].
pub const KERNELS: &[&str] = &[
    "sy_decompress_add_f32",
    "sy_decompress_add_f16",
    "sy_decompress_add_bf16",
    "sy_quantize_q8_0",
    "sy_dequantize_f16",
    "sy_matmul_f16",
    "sy_delta_matmul",
];

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A CUDA library (driver or NVRTC) is not installed or not found.
    #[error("{0}")]
    Unavailable(String),
    #[error("compiling the kernels for {arch}: {log}")]
    Compile { arch: String, log: String },
    #[error("CUDA driver: {0}")]
    Driver(String),
    /// Input the kernels do not handle (the CPU path does).
    #[error("{0}")]
    Unsupported(String),
}

impl From<cudarc::driver::DriverError> for KernelError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        KernelError::Driver(e.to_string())
    }
}

pub type Result<T, E = KernelError> = std::result::Result<T, E>;
