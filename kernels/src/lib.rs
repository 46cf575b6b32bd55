//! CUDA kernels of switchyard. The CUDA sources live in `kernels/src/*.cu`; this crate embeds
//! them so they can be compiled with NVRTC at run time (issue "CUDA kernels" adds the launcher).
