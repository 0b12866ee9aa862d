//! Which accelerator is usable, asked without touching Burn's CUDA runtime (which panics when
//! the driver library is absent, burn.md §1), and the GPU backends without Burn's fusion.

/// Number of visible CUDA devices; 0 when libcuda is absent. Never panics.
#[cfg(feature = "cuda")]
pub fn cuda_device_count() -> usize {
    // SAFETY: only probes whether the shared library can be loaded.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return 0;
    }
    cudarc::driver::CudaContext::device_count()
        .map(|n| n as usize)
        .unwrap_or(0)
}

/// Number of visible CUDA devices: always 0 in a build without the `cuda` feature.
#[cfg(not(feature = "cuda"))]
pub fn cuda_device_count() -> usize {
    0
}

/// CUDA's CubeBackend without Burn's fusion, every operation its own kernel: the probe's
/// fusion-off side (the `Cuda` that trains is `Fusion<CubeBackend<CudaRuntime>>`). A device that
/// parts from the CPU with fusion on and not off points at fusion. fp32.
#[cfg(feature = "cuda")]
pub type CudaUnfused = burn_cubecl::CubeBackend<cubecl_cuda::CudaRuntime, f32, i32, u8>;

/// wgpu's CubeBackend without Burn's fusion (see [`CudaUnfused`]).
#[cfg(feature = "wgpu")]
pub type WgpuUnfused = burn::backend::wgpu::CubeBackend<burn::backend::wgpu::WgpuRuntime, f32, i32, u32>;
