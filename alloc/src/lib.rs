//! mimalloc as a global allocator, dispatched on the layout's alignment.
//!
//! The `mimalloc` crate sends every allocation through `mi_malloc_aligned`. In mimalloc v3
//! that call takes the plain path only when a small block happens to be aligned or the block
//! size is a power of two; anything over 1 KiB of another size (header maps, read buffers,
//! tokio channel blocks) goes through `mi_theap_malloc_zero_aligned_at_overalloc`: a larger
//! block and about 150 more instructions, for an alignment a plain block already has.
//! (Measured in authgate: 17 such allocations per proxied request; bench/ANALYSIS.md,
//! 2026-12-06. The same fix is proposed upstream as purpleprotocol/mimalloc_rust#170.)
//!
//! Every mimalloc block is a whole number of words and every page's first block is 16-byte
//! aligned (`MI_PAGE_MIN_START_BLOCK_ALIGN`), so plain `mi_malloc` memory is always aligned to
//! a word. Layouts that ask for no more than that take the plain calls; stricter ones keep
//! the aligned calls. `mi_free` takes either.

#![no_std]

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;
use libmimalloc_sys as mi;

/// The alignment every plain mimalloc block has: one machine word.
const WORD: usize = core::mem::size_of::<usize>();

/// mimalloc, with plain calls for word-aligned layouts (see the crate documentation).
pub struct MiMalloc;

#[inline]
fn plain(layout: &Layout) -> bool {
    layout.align() <= WORD
}

// SAFETY (all four): each call forwards a layout the caller guarantees valid (non-zero size,
// power-of-two alignment) to the mimalloc function that honours it: plain calls return
// word-aligned memory, which satisfies any alignment up to a word; the `_aligned` calls
// honour any alignment. `dealloc` and `realloc` receive pointers this allocator returned,
// all of them mimalloc blocks, which `mi_free` and `mi_realloc[_aligned]` accept.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        // SAFETY: see above.
        let p = unsafe {
            if plain(&layout) {
                mi::mi_malloc(size)
            } else {
                mi::mi_malloc_aligned(size, align)
            }
        };
        p as *mut u8
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        // SAFETY: see above.
        let p = unsafe {
            if plain(&layout) {
                mi::mi_zalloc(size)
            } else {
                mi::mi_zalloc_aligned(size, align)
            }
        };
        p as *mut u8
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: see above.
        unsafe { mi::mi_free(ptr as *mut c_void) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let ptr = ptr as *mut c_void;
        // SAFETY: see above.
        let p = unsafe {
            if plain(&layout) {
                mi::mi_realloc(ptr, new_size)
            } else {
                mi::mi_realloc_aligned(ptr, new_size, layout.align())
            }
        };
        p as *mut u8
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// Sizes around mimalloc's bin edges, its 1 KiB small limit and its larger classes.
    fn sizes() -> Vec<usize> {
        const LARGER: [usize; 19] = [
            96,
            100,
            127,
            128,
            129,
            1000,
            1023,
            1024,
            1025,
            1600,
            1792,
            3000,
            4096,
            4097,
            10_000,
            65_536,
            70_000,
            1 << 20,
            (1 << 20) + 8,
        ];
        (1..=80).chain(LARGER).collect()
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).expect("valid layout")
    }

    #[test]
    fn every_allocation_has_its_alignment_and_is_usable() {
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            // Many at once, so they come from different places in a page, not one slot reused.
            let mut held = Vec::new();
            for size in sizes() {
                for _ in 0..4 {
                    let l = layout(size, align);
                    // SAFETY: a valid, non-zero layout.
                    let p = unsafe { MiMalloc.alloc(l) };
                    assert!(!p.is_null(), "size {size} align {align}");
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    // SAFETY: `p` holds `size` bytes.
                    unsafe { core::ptr::write_bytes(p, 0xA5, size) };
                    held.push((p, l));
                }
            }
            for (p, l) in held {
                // SAFETY: `p` came from `alloc` with `l`.
                unsafe { MiMalloc.dealloc(p, l) };
            }
        }
    }

    #[test]
    fn zeroed_allocations_are_zero() {
        for align in [8, 16, 64] {
            for size in sizes() {
                let l = layout(size, align);
                // Dirty memory first, so a reused block would show through if not zeroed.
                // SAFETY: a valid, non-zero layout; the block is written within its size.
                unsafe {
                    let d = MiMalloc.alloc(l);
                    core::ptr::write_bytes(d, 0xFF, size);
                    MiMalloc.dealloc(d, l);
                }
                // SAFETY: as above.
                let p = unsafe { MiMalloc.alloc_zeroed(l) };
                assert_eq!(p as usize % align, 0);
                // SAFETY: `p` holds `size` initialised (zeroed) bytes.
                let bytes = unsafe { core::slice::from_raw_parts(p, size) };
                assert!(bytes.iter().all(|&b| b == 0), "size {size} align {align}");
                // SAFETY: from `alloc_zeroed` with `l`.
                unsafe { MiMalloc.dealloc(p, l) };
            }
        }
    }

    #[test]
    fn realloc_keeps_the_contents_and_the_alignment() {
        for align in [1, 8, 16, 64, 4096] {
            let mut size = 3;
            let l = layout(size, align);
            // SAFETY: a valid, non-zero layout.
            let mut p = unsafe { MiMalloc.alloc(l) };
            // SAFETY: `p` holds `size` bytes.
            unsafe { core::ptr::write_bytes(p, 7, size) };
            // Grow through the small, medium and large classes, then shrink back.
            for new in [24, 200, 1100, 5000, 80_000, 1500, 40] {
                // SAFETY: `p` is live with layout (size, align); `new` is non-zero.
                p = unsafe { MiMalloc.realloc(p, layout(size, align), new) };
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0, "grow to {new} align {align}");
                let kept = size.min(new);
                // SAFETY: the first `kept` bytes were written before.
                let bytes = unsafe { core::slice::from_raw_parts(p, kept) };
                assert!(bytes.iter().all(|&b| b == 7), "to {new} align {align}");
                // SAFETY: `p` now holds `new` bytes.
                unsafe { core::ptr::write_bytes(p, 7, new) };
                size = new;
            }
            // SAFETY: `p` is live with layout (size, align).
            unsafe { MiMalloc.dealloc(p, layout(size, align)) };
        }
    }

    #[test]
    fn ordinary_layouts_take_the_plain_calls() {
        // The point of the crate: what a String, Vec<u64> or Box<[u8; 1600]> asks for is plain.
        assert!(plain(&layout(1600, 1)));
        assert!(plain(&layout(1600, 8)));
        assert!(!plain(&layout(48, 16)));
        assert!(!plain(&layout(256, 128)));
    }
}
