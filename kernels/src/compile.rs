//! NVRTC: the kernels' source to PTX for one architecture.

use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};

use crate::{KernelError, Result, SOURCE};

/// Whether libnvrtc can be loaded (checked before any cudarc call, which would panic).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// PTX of every kernel for `arch`, a virtual architecture such as "compute_80".
pub fn compile_ptx(arch: &'static str) -> Result<Ptx> {
    if !nvrtc_available() {
        return Err(KernelError::Unavailable(
            "libnvrtc not found (install the CUDA toolkit or nvidia-cuda-nvrtc)".into(),
        ));
    }
    let opts = CompileOptions {
        arch: Some(arch),
        options: vec!["--std=c++17".into()],
        name: Some("switchyard.cu".into()),
        // fused multiply-adds stay allowed: the exact paths use __fmul_rn/__fadd_rn, which
        // are never fused; only the matmuls' sums (held to a tolerance) may fuse
        fmad: Some(true),
        ..CompileOptions::default()
    };
    compile_ptx_with_opts(SOURCE, opts).map_err(|e| KernelError::Compile { arch: arch.to_string(), log: e.to_string() })
}

/// The virtual architecture NVRTC targets for a device of compute capability (major, minor).
pub fn arch_for(major: i32, minor: i32) -> Result<&'static str> {
    Ok(match (major, minor) {
        (8, 6) => "compute_86",
        (8, 9) => "compute_89",
        (8, _) => "compute_80",
        // newer devices JIT-compile compute_90 PTX
        (m, _) if m >= 9 => "compute_90",
        _ => {
            return Err(KernelError::Unsupported(format!(
                "compute capability {major}.{minor}: switchyard's kernels need 8.0 or newer"
            )))
        }
    })
}
