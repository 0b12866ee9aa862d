//! The process-wide allocator of the swinfc binaries: the system allocator, except that freed blocks
//! of tensor size are kept and handed out again.
//!
//! A training step allocates and frees the same few hundred activation and gradient buffers, of the
//! same sizes, every step. glibc returns blocks of that size to the kernel (`mmap`/`munmap`, heap
//! trimming), so every step touched fresh pages: on the small benchmark config a million minor page
//! faults per step, 40 % of the process's CPU time in the kernel and one core's page-fault handling
//! serialising the step (docs/benchmarks.md, 2026-12-05). PyTorch's CUDA caching allocator answers
//! the same pattern; this is its CPU counterpart, kept as small as the pattern allows.
//!
//! Owns: the cache of freed large blocks (one free list per rounded size, at most [`CACHE_LIMIT`]
//! bytes held). Must not: allocate itself (the lists live inside the freed blocks), change a block's
//! contents or alignment guarantees, or hold memory that a later request of another size needs (a
//! full cache frees instead of keeping).

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};

/// Blocks below this size are glibc's business: its bins already reuse them without page faults.
pub const MIN_CACHED: usize = 128 * 1024;
/// Cached sizes are rounded up to this granule, so that nearby sizes share a list.
const GRANULE: usize = 64 * 1024;
/// The most bytes the cache holds at once; a block freed into a full cache goes back to the system.
pub const CACHE_LIMIT: usize = 2 << 30;
/// Distinct sizes tracked; a size beyond the table is not cached. A SwinFC step uses a few dozen.
const SIZES: usize = 256;
/// Alignment of every cached block, so a block serves any request of its size.
const BLOCK_ALIGN: usize = 64;

/// The swinfc global allocator. Declare it in a binary with
/// `#[global_allocator] static ALLOC: swinfc_alloc::TensorCache = swinfc_alloc::TensorCache::new();`.
pub struct TensorCache {
    lock: AtomicBool,
    // Guarded by `lock`; raw cells because a global allocator cannot use an allocating lock type.
    table: std::cell::UnsafeCell<Table>,
}

struct Table {
    /// `sizes[i]` is the rounded block size of list `i` (0: unused); `heads[i]` its first free block,
    /// whose first word points to the next.
    sizes: [usize; SIZES],
    heads: [*mut u8; SIZES],
    held: usize,
}

// SAFETY: `table` is only touched with `lock` held.
unsafe impl Sync for TensorCache {}

impl TensorCache {
    pub const fn new() -> Self {
        Self {
            lock: AtomicBool::new(false),
            table: std::cell::UnsafeCell::new(Table {
                sizes: [0; SIZES],
                heads: [ptr::null_mut(); SIZES],
                held: 0,
            }),
        }
    }

    /// Runs `f` on the table under the spin lock (held for a table scan, never across a syscall).
    fn with_table<R>(&self, f: impl FnOnce(&mut Table) -> R) -> R {
        while self
            .lock
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
        // SAFETY: the lock is held, so this is the only reference.
        let result = f(unsafe { &mut *self.table.get() });
        self.lock.store(false, Ordering::Release);
        result
    }

    /// The block layout a large request is served with, or `None` if the request is not cached.
    fn block_layout(layout: Layout) -> Option<Layout> {
        if layout.size() < MIN_CACHED || layout.align() > BLOCK_ALIGN {
            return None;
        }
        let size = layout.size().checked_next_multiple_of(GRANULE)?;
        Layout::from_size_align(size, BLOCK_ALIGN).ok()
    }

    /// Bytes currently held for reuse (for tests and diagnostics).
    pub fn held_bytes(&self) -> usize {
        self.with_table(|table| table.held)
    }
}

impl Default for TensorCache {
    fn default() -> Self {
        Self::new()
    }
}

impl Table {
    fn take(&mut self, size: usize) -> *mut u8 {
        let Some(i) = self.sizes.iter().position(|&s| s == size) else {
            return ptr::null_mut();
        };
        let block = self.heads[i];
        if !block.is_null() {
            // SAFETY: a listed block is at least GRANULE bytes, 64-aligned, and starts with its link.
            self.heads[i] = unsafe { block.cast::<*mut u8>().read() };
            self.held -= size;
        }
        block
    }

    /// Lists `block`; false when the cache is full or has no list left for its size.
    fn put(&mut self, block: *mut u8, size: usize) -> bool {
        if self.held + size > CACHE_LIMIT {
            return false;
        }
        let i = match self.sizes.iter().position(|&s| s == size) {
            Some(i) => i,
            None => match self.sizes.iter().position(|&s| s == 0) {
                Some(i) => {
                    self.sizes[i] = size;
                    i
                }
                None => return false,
            },
        };
        // SAFETY: the block is ours (freed by its user) and large enough to hold the link.
        unsafe { block.cast::<*mut u8>().write(self.heads[i]) };
        self.heads[i] = block;
        self.held += size;
        true
    }
}

unsafe impl GlobalAlloc for TensorCache {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(block) = Self::block_layout(layout) else {
            // SAFETY: forwarded unchanged.
            return unsafe { System.alloc(layout) };
        };
        let cached = self.with_table(|table| table.take(block.size()));
        if cached.is_null() {
            // SAFETY: `block` has non-zero size.
            unsafe { System.alloc(block) }
        } else {
            cached
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let Some(block) = Self::block_layout(layout) else {
            // SAFETY: forwarded unchanged.
            return unsafe { System.alloc_zeroed(layout) };
        };
        let cached = self.with_table(|table| table.take(block.size()));
        if cached.is_null() {
            // SAFETY: `block` has non-zero size; the system's zeroed pages need no memset.
            unsafe { System.alloc_zeroed(block) }
        } else {
            // SAFETY: the cached block holds at least `layout.size()` bytes.
            unsafe { ptr::write_bytes(cached, 0, layout.size()) };
            cached
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match Self::block_layout(layout) {
            Some(block) => {
                if !self.with_table(|table| table.put(ptr, block.size())) {
                    // SAFETY: `ptr` was allocated with `block` (alloc and dealloc round alike).
                    unsafe { System.dealloc(ptr, block) }
                }
            }
            // SAFETY: forwarded unchanged.
            None => unsafe { System.dealloc(ptr, layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old_block = Self::block_layout(layout);
        // SAFETY: the caller guarantees `new_size` forms a valid layout with `layout.align()`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if old_block.is_none() && Self::block_layout(new_layout).is_none() {
            // SAFETY: neither size is cached, so the system owns the block on both sides.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        if old_block == Self::block_layout(new_layout) {
            return ptr; // same rounded block: it already holds `new_size` bytes
        }
        // SAFETY: `new_layout` is valid (see above); the copy stays within both blocks.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 8).expect("valid layout")
    }

    #[test]
    fn a_freed_large_block_is_handed_out_again_for_the_same_rounded_size() {
        let cache = TensorCache::new();
        unsafe {
            let a = cache.alloc(layout(MIN_CACHED + 100));
            a.write_bytes(7, MIN_CACHED + 100);
            cache.dealloc(a, layout(MIN_CACHED + 100));
            assert_eq!(cache.held_bytes(), MIN_CACHED + GRANULE);
            // A slightly different size in the same granule reuses the block.
            let b = cache.alloc(layout(MIN_CACHED + 5000));
            assert_eq!(a, b);
            assert_eq!(cache.held_bytes(), 0);
            cache.dealloc(b, layout(MIN_CACHED + 5000));
        }
    }

    #[test]
    fn zeroed_requests_are_zeroed_even_when_served_from_the_cache() {
        let cache = TensorCache::new();
        let size = 3 * MIN_CACHED;
        unsafe {
            let a = cache.alloc(layout(size));
            a.write_bytes(0xAB, size);
            cache.dealloc(a, layout(size));
            let b = cache.alloc_zeroed(layout(size));
            assert_eq!(a, b);
            assert!(std::slice::from_raw_parts(b, size).iter().all(|&x| x == 0));
            cache.dealloc(b, layout(size));
        }
    }

    #[test]
    fn small_and_over_aligned_blocks_are_not_cached() {
        let cache = TensorCache::new();
        unsafe {
            let small = cache.alloc(layout(1024));
            cache.dealloc(small, layout(1024));
            let aligned = Layout::from_size_align(MIN_CACHED, 4096).expect("valid layout");
            let big = cache.alloc(aligned);
            assert_eq!(big as usize % 4096, 0);
            cache.dealloc(big, aligned);
        }
        assert_eq!(cache.held_bytes(), 0);
    }

    #[test]
    fn realloc_keeps_the_contents_across_cached_and_system_sizes() {
        let cache = TensorCache::new();
        unsafe {
            let mut p = cache.alloc(layout(1000));
            for i in 0..1000 {
                p.add(i).write(i as u8);
            }
            // small -> cached -> same granule -> larger cached -> small
            for (old, new) in [
                (1000, MIN_CACHED + 1),
                (MIN_CACHED + 1, MIN_CACHED + 2),
                (MIN_CACHED + 2, 4 * MIN_CACHED),
                (4 * MIN_CACHED, 900),
            ] {
                p = cache.realloc(p, layout(old), new);
                assert!(!p.is_null());
                let kept = old.min(new).min(1000);
                assert!((0..kept).all(|i| *p.add(i) == i as u8), "{old} -> {new}");
            }
            cache.dealloc(p, layout(900));
        }
    }

    #[test]
    fn a_full_cache_returns_blocks_to_the_system() {
        let cache = TensorCache::new();
        let size = CACHE_LIMIT / 2 + GRANULE; // two of these do not fit
        unsafe {
            let a = cache.alloc(layout(size));
            let b = cache.alloc(layout(size));
            cache.dealloc(a, layout(size));
            cache.dealloc(b, layout(size));
        }
        assert_eq!(cache.held_bytes(), size);
    }
}
