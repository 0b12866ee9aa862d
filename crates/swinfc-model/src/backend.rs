//! Which accelerator is usable, asked without touching Burn's CUDA runtime (which panics when
//! the driver library is absent, burn.md §1).

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
