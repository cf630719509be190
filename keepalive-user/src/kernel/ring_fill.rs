//! How full the ring buffer is: the kernel's producer position minus the reader's consumer
//! position, read from a read-only mapping of the map's two position pages (the same pages
//! the reader maps, so the numbers are the ones it works with).

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicUsize, Ordering},
};

/// Bytes waiting in the ring buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingFill {
    /// Waiting when the reader last began a drain.
    pub used_bytes: u64,
    /// The most that was waiting when a drain began, since start.
    pub peak_bytes: u64,
    /// The ring buffer's size.
    pub size_bytes: u64,
}

/// The mapped consumer and producer position pages.
pub(super) struct RingPositions {
    pages: NonNull<libc::c_void>,
    page_size: usize,
}

// SAFETY: the mapping is only read, through atomic loads; the kernel and the reader write it.
unsafe impl Send for RingPositions {}

impl RingPositions {
    /// Maps the first two pages of the ring buffer `fd` (consumer, then producer position)
    /// read-only.
    pub(super) fn map(fd: BorrowedFd<'_>) -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page_size = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| io::Error::other("sysconf(_SC_PAGESIZE) failed"))?;
        // SAFETY: a fresh shared read-only mapping of a ring-buffer map fd, which allows
        // read-only mappings of its position pages; checked below.
        let pages = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page_size,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if pages == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let pages = NonNull::new(pages).ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok(Self { pages, page_size })
    }

    /// Bytes written by the kernel and not yet consumed.
    pub(super) fn waiting(&self) -> u64 {
        let position = |offset: usize| {
            // SAFETY: both pages are mapped for as long as `self` lives, page-aligned (so
            // aligned for a usize), and the kernel updates the positions atomically.
            let atomic = unsafe {
                AtomicUsize::from_ptr(self.pages.as_ptr().byte_add(offset).cast::<usize>())
            };
            atomic.load(Ordering::Acquire)
        };
        let consumer = position(0);
        let producer = position(self.page_size);
        u64::try_from(producer.wrapping_sub(consumer)).unwrap_or(0)
    }
}

impl Drop for RingPositions {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`, which nothing else references.
        unsafe { libc::munmap(self.pages.as_ptr(), 2 * self.page_size) };
    }
}
