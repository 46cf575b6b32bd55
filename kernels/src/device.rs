//! A GPU with switchyard's kernels loaded, and the launches.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg,
};
use half::f16;
use switchyard::codec::{CompressedDelta, SalientValues, StepLayout};
use switchyard::GgmlType;

use crate::compile::{arch_for, compile_ptx, nvrtc_available};
use crate::{KernelError, Result, KERNELS};

/// Threads per block: 8 warps.
const BLOCK: u32 = 256;

pub struct Gpu {
    ctx: Arc<CudaContext>,
    /// switchyard's own stream: hosts with private streams (ggml-cuda) synchronise before
    /// handing buffers over.
    pub stream: Arc<CudaStream>,
    functions: HashMap<&'static str, CudaFunction>,
    pub name: String,
}

/// Whether the CUDA driver library can be loaded (checked before any cudarc call, which would
/// panic).
pub fn driver_available() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

impl Gpu {
    /// Device `ordinal` with every kernel compiled for it and loaded.
    pub fn open(ordinal: usize) -> Result<Gpu> {
        if !driver_available() {
            return Err(KernelError::Unavailable("libcuda not found (no NVIDIA driver)".into()));
        }
        if !nvrtc_available() {
            return Err(KernelError::Unavailable("libnvrtc not found (install the CUDA toolkit)".into()));
        }
        let ctx = CudaContext::new(ordinal)?;
        let (major, minor) = ctx.compute_capability()?;
        let module = ctx.load_module(compile_ptx(arch_for(major, minor)?)?)?;
        let mut functions = HashMap::new();
        for &k in KERNELS {
            functions.insert(k, module.load_function(k)?);
        }
        let name = ctx.name()?;
        let stream = ctx.new_stream()?;
        Ok(Gpu { ctx, stream, functions, name })
    }

    /// Device 0, or None with one line on stderr saying why the CPU path will be used.
    pub fn open_or_log() -> Option<Gpu> {
        match Gpu::open(0) {
            Ok(gpu) => Some(gpu),
            Err(e) => {
                eprintln!("switchyard: no GPU path ({e}); using the CPU");
                None
            }
        }
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    fn function(&self, name: &str) -> &CudaFunction {
        &self.functions[name]
    }

    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        Ok(self.stream.clone_htod(host)?)
    }

    pub fn download<T: DeviceRepr + Default + Clone>(&self, dev: &CudaSlice<T>) -> Result<Vec<T>> {
        Ok(self.stream.clone_dtoh(dev)?)
    }

    /// W_base + D into a new device buffer of `out` type (F32, F16, BF16 or Q8_0), one block
    /// per row. `base` holds the base weight in `base_ty` (F32, F16, BF16, Q8_0, Q4_0, Q4_1).
    pub fn decompress_add(
        &self,
        base_ty: GgmlType,
        base: &CudaSlice<u8>,
        delta: &DeviceDelta,
        out: GgmlType,
    ) -> Result<CudaSlice<u8>> {
        let bytes = out.row_bytes(delta.n_in as u64).map_err(|e| KernelError::Unsupported(e.to_string()))? as usize;
        let mut dst = self.stream.alloc_zeros::<u8>(bytes * delta.n_out)?;
        let (ptr, _record) = dst.device_ptr_mut(&self.stream);
        // SAFETY: dst holds n_out rows of `out`, and lives until after the launch.
        unsafe { self.decompress_add_into(base_ty, base, delta, out, ptr) }?;
        drop(_record);
        Ok(dst)
    }

    /// Like [`Gpu::decompress_add`], into device memory the caller owns (a host's weight tensor).
    ///
    /// # Safety
    /// `dst` must point to `n_out` rows of `out` in this context, not in use until the stream
    /// is synchronised.
    pub unsafe fn decompress_add_into(
        &self,
        base_ty: GgmlType,
        base: &CudaSlice<u8>,
        delta: &DeviceDelta,
        out: GgmlType,
        dst: u64,
    ) -> Result<()> {
        check_base(base_ty, delta.n_in)?;
        let kernel = match out {
            GgmlType::F32 | GgmlType::Q8_0 => "sy_decompress_add_f32",
            GgmlType::F16 => "sy_decompress_add_f16",
            GgmlType::BF16 => "sy_decompress_add_bf16",
            other => return Err(KernelError::Unsupported(format!("decompressing into {other} on the GPU"))),
        };
        if out == GgmlType::Q8_0 && !delta.n_in.is_multiple_of(32) {
            return Err(KernelError::Unsupported(format!("Q8_0 rows of {} elements", delta.n_in)));
        }
        // Q8_0: decompress to f32 first, then quantize into dst
        let staging =
            if out == GgmlType::Q8_0 { Some(self.stream.alloc_zeros::<f32>(delta.n_in * delta.n_out)?) } else { None };
        // the guard records the read of the staging buffer once the launch is queued
        let (target, _guard) = match &staging {
            Some(s) => {
                let (p, g) = s.device_ptr(&self.stream);
                (p, Some(g))
            }
            None => (dst, None),
        };
        let base_ty_id = base_ty as i32;
        let n_in = delta.n_in as i32;
        let args = delta.args(&self.stream);
        let cfg = LaunchConfig { grid_dim: (delta.n_out as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        let mut launch = self.stream.launch_builder(self.function(kernel));
        launch.arg(&base_ty_id).arg(base).arg(&args).arg(&n_in).arg(&target);
        // SAFETY: the argument list matches the kernel's signature; base and the delta hold
        // what the shapes say (checked on upload), the target n_out rows (caller's contract).
        unsafe { launch.launch(cfg) }?;
        if let Some(staging) = &staging {
            let n_blocks = delta.n_in * delta.n_out / 32;
            let n_blocks_i = n_blocks as i64;
            let cfg =
                LaunchConfig { grid_dim: (grid_for(n_blocks), 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
            let mut launch = self.stream.launch_builder(self.function("sy_quantize_q8_0"));
            launch.arg(staging).arg(&n_blocks_i).arg(&dst);
            // SAFETY: signature matches; staging holds n_blocks * 32 floats, dst n_blocks blocks.
            unsafe { launch.launch(cfg) }?;
        }
        Ok(())
    }

    /// `n` elements of `ty` (rows of `n_in`) to f16, for moving expert slots between types.
    pub fn dequantize_f16(&self, ty: GgmlType, src: &CudaSlice<u8>, n_in: usize, n: usize) -> Result<CudaSlice<f16>> {
        let mut dst = self.stream.alloc_zeros::<f16>(n)?;
        let (ptr, _record) = dst.device_ptr_mut(&self.stream);
        // SAFETY: dst holds n f16 and lives until after the launch.
        unsafe { self.dequantize_f16_into(ty, src, n_in, n, ptr) }?;
        drop(_record);
        Ok(dst)
    }

    /// Like [`Gpu::dequantize_f16`], into device memory the caller owns.
    ///
    /// # Safety
    /// `dst` must point to `n` f16 values in this context, not in use until the stream is
    /// synchronised.
    pub unsafe fn dequantize_f16_into(
        &self,
        ty: GgmlType,
        src: &CudaSlice<u8>,
        n_in: usize,
        n: usize,
        dst: u64,
    ) -> Result<()> {
        check_base(ty, n_in)?;
        let (ty_id, n_in, n_i64) = (ty as i32, n_in as i32, n as i64);
        let cfg = LaunchConfig { grid_dim: (grid_for(n), 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        let mut launch = self.stream.launch_builder(self.function("sy_dequantize_f16"));
        launch.arg(&ty_id).arg(src).arg(&n_in).arg(&n_i64).arg(&dst);
        // SAFETY: signature matches; src holds n elements of ty, dst n f16 (caller's contract).
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// Waits for everything launched on switchyard's stream.
    pub fn synchronize(&self) -> Result<()> {
        Ok(self.stream.synchronize()?)
    }

    /// The mixed-expert matmul: y = W_base x for every token (once), then y += D_e x for each
    /// `(expert, first token, end token)` segment. `w` is f16 `[n_out][n_in]`, `x` f32
    /// `[n_tok][n_in]`; returns y `[n_tok][n_out]`.
    pub fn mixed_expert_matmul(
        &self,
        w: &CudaSlice<f16>,
        deltas: &[&DeviceDelta],
        segments: &[(usize, usize, usize)],
        x: &CudaSlice<f32>,
        shape: MatmulShape,
    ) -> Result<CudaSlice<f32>> {
        let MatmulShape { n_in, n_out, n_tok } = shape;
        if w.len() != n_in * n_out || x.len() != n_in * n_tok {
            return Err(KernelError::Unsupported(format!(
                "{} weights and {} inputs for a {n_out}x{n_in} weight and {n_tok} tokens",
                w.len(),
                x.len()
            )));
        }
        for &(e, begin, end) in segments {
            let fits = deltas.get(e).is_some_and(|d| d.n_in == n_in && d.n_out == n_out);
            if !fits || begin > end || end > n_tok {
                return Err(KernelError::Unsupported(format!(
                    "segment ({e}, {begin}..{end}) of {n_tok} tokens with {} deltas for a {n_out}x{n_in} weight",
                    deltas.len()
                )));
            }
        }
        let mut y = self.stream.alloc_zeros::<f32>(n_tok * n_out)?;
        let warps = BLOCK / 32;
        let cfg = LaunchConfig {
            grid_dim: ((n_out as u32).div_ceil(warps), 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let (n_in_i, n_out_i, n_tok_i) = (n_in as i32, n_out as i32, n_tok as i32);
        let mut launch = self.stream.launch_builder(self.function("sy_matmul_f16"));
        launch.arg(w).arg(x).arg(&mut y).arg(&n_in_i).arg(&n_out_i).arg(&n_tok_i);
        // SAFETY: signature matches; w, x and y hold the shapes above.
        unsafe { launch.launch(cfg) }?;
        for &(e, begin, end) in segments {
            let d = deltas[e];
            let args = d.args(&self.stream);
            let (b, en) = (begin as i32, end as i32);
            let mut launch = self.stream.launch_builder(self.function("sy_delta_matmul"));
            launch.arg(&args).arg(x).arg(&mut y).arg(&n_in_i).arg(&n_out_i).arg(&b).arg(&en);
            // SAFETY: signature matches; the delta's buffers were sized on upload.
            unsafe { launch.launch(cfg) }?;
        }
        Ok(y)
    }
}

/// Sizes of a mixed-expert matmul.
#[derive(Clone, Copy, Debug)]
pub struct MatmulShape {
    pub n_in: usize,
    pub n_out: usize,
    pub n_tok: usize,
}

/// Blocks for a grid-stride loop over `n` items.
fn grid_for(n: usize) -> u32 {
    n.div_ceil(BLOCK as usize).clamp(1, 65_535) as u32
}

/// Whether the kernels read weights of type `ty` in rows of `n_in` elements.
pub fn reads_weights(ty: GgmlType, n_in: usize) -> bool {
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => true,
        GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 => n_in.is_multiple_of(32),
        _ => false,
    }
}

fn check_base(ty: GgmlType, n_in: usize) -> Result<()> {
    if reads_weights(ty, n_in) {
        Ok(())
    } else {
        Err(KernelError::Unsupported(format!("reading {ty} weights on the GPU (rows of {n_in})")))
    }
}

/// The kernels' view of one delta (`struct sy_delta` in the source): device pointers and sizes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct DeltaArgs {
    codes: u64,
    steps: u64,
    sal_idx: u64,
    sal_f16: u64,
    sal_q8: u64,
    sal_step: u64,
    bits: i32,
    group: i32,
    step_per_matrix: i32,
    n_sal: i32,
}

// SAFETY: plain C layout of integers, matching `struct sy_delta`.
unsafe impl DeviceRepr for DeltaArgs {}

/// A compressed delta uploaded to the device.
pub struct DeviceDelta {
    pub n_in: usize,
    pub n_out: usize,
    bits: u8,
    layout: StepLayout,
    n_sal: usize,
    codes: CudaSlice<u8>,
    steps: CudaSlice<u16>,
    sal_idx: Option<CudaSlice<u32>>,
    sal_f16: Option<CudaSlice<u16>>,
    sal_q8: Option<(CudaSlice<i8>, CudaSlice<u16>)>,
}

impl DeviceDelta {
    pub fn upload(gpu: &Gpu, d: &CompressedDelta) -> Result<DeviceDelta> {
        d.validate("delta").map_err(|e| KernelError::Unsupported(e.to_string()))?;
        if let StepLayout::Groups { group } = d.layout {
            // the kernels give each 8-code unit one step
            if !group.is_multiple_of(8) {
                return Err(KernelError::Unsupported(format!("step groups of {group} channels (not a multiple of 8)")));
            }
        }
        let bits16 = |v: &[f16]| v.iter().map(|h| h.to_bits()).collect::<Vec<u16>>();
        let n_sal = d.salient_idx.len();
        let (sal_f16, sal_q8) = match &d.salient {
            _ if n_sal == 0 => (None, None),
            SalientValues::F16(v) => (Some(gpu.upload(&bits16(v))?), None),
            SalientValues::Q8 { values, steps } => (None, Some((gpu.upload(values)?, gpu.upload(&bits16(steps))?))),
        };
        Ok(DeviceDelta {
            n_in: d.n_in,
            n_out: d.n_out,
            bits: d.bits,
            layout: d.layout,
            n_sal,
            codes: gpu.upload(&d.codes)?,
            steps: gpu.upload(&bits16(&d.steps))?,
            sal_idx: if n_sal > 0 { Some(gpu.upload(&d.salient_idx)?) } else { None },
            sal_f16,
            sal_q8,
        })
    }

    /// The kernels' view. The pointers' stream guards are dropped at once: every launch and
    /// copy of these buffers goes through switchyard's one stream, which orders them already.
    fn args(&self, stream: &Arc<CudaStream>) -> DeltaArgs {
        fn ptr<T>(s: Option<&CudaSlice<T>>, stream: &Arc<CudaStream>) -> u64 {
            s.map_or(0, |s| s.device_ptr(stream).0)
        }
        let (group, per_matrix) = match self.layout {
            StepLayout::Matrix => (self.n_in as i32, 1),
            StepLayout::Groups { group } => (group as i32, 0),
        };
        DeltaArgs {
            codes: ptr(Some(&self.codes), stream),
            steps: ptr(Some(&self.steps), stream),
            sal_idx: ptr(self.sal_idx.as_ref(), stream),
            sal_f16: ptr(self.sal_f16.as_ref(), stream),
            sal_q8: ptr(self.sal_q8.as_ref().map(|q| &q.0), stream),
            sal_step: ptr(self.sal_q8.as_ref().map(|q| &q.1), stream),
            bits: self.bits as i32,
            group,
            step_per_matrix: per_matrix,
            n_sal: self.n_sal as i32,
        }
    }
}
