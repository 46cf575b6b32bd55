//! The MoE cache's reads and releases of expert memory: pread into the tensors llama.cpp
//! allocated, a background thread for reads ahead, and memory handed back to the kernel when an
//! expert is evicted.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::JoinHandle;

use super::policy::Key;

/// One contiguous piece of an expert: `len` bytes at `offset` in the file, read to `dest`.
#[derive(Clone, Copy)]
pub struct Part {
    pub dest: *mut u8,
    pub len: usize,
    pub offset: u64,
}

// SAFETY: a Part is handed to the reader thread with exclusive use of its bytes: the cache
// touches no expert whose read is in flight until the read is collected.
unsafe impl Send for Part {}

impl Part {
    /// The part's bytes in memory.
    ///
    /// # Safety
    /// `dest` holds `len` writable bytes that no one else uses while the slice lives.
    pub unsafe fn memory<'a>(&self) -> &'a mut [u8] {
        // SAFETY: upheld by the caller.
        unsafe { std::slice::from_raw_parts_mut(self.dest, self.len) }
    }
}

/// Reads one part into place, then drops the file's pages from the page cache: the copy in the
/// cache is the one kept, and the page cache would otherwise hold the expert twice and push out
/// the dense weights.
pub fn read_part(file: &File, p: &Part) -> std::io::Result<()> {
    // SAFETY: the part's bytes lie inside a bound tensor and are this reader's alone (Part).
    file.read_exact_at(unsafe { p.memory() }, p.offset)?;
    // SAFETY: a valid descriptor; the advice only concerns the kernel's cache.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), p.offset as libc::off_t, p.len as libc::off_t, libc::POSIX_FADV_DONTNEED)
    };
    Ok(())
}

/// The background thread of prefetching: reads whole experts in the order asked.
pub struct Reader {
    jobs: Option<Sender<(Key, Vec<Part>)>>,
    done: Receiver<(Key, std::io::Result<()>)>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    pub fn start(file: File) -> std::io::Result<Reader> {
        let (jobs, todo) = channel::<(Key, Vec<Part>)>();
        let (finished, done) = channel();
        let thread = std::thread::Builder::new().name("switchyard-prefetch".into()).spawn(move || {
            for (key, parts) in todo {
                let result = parts.iter().try_for_each(|p| read_part(&file, p));
                if finished.send((key, result)).is_err() {
                    return;
                }
            }
        })?;
        Ok(Reader { jobs: Some(jobs), done, thread: Some(thread) })
    }

    /// Queues the read of expert `key`; false when the thread has stopped.
    pub fn send(&self, key: Key, parts: Vec<Part>) -> bool {
        self.jobs.as_ref().is_some_and(|j| j.send((key, parts)).is_ok())
    }

    /// The next finished read, waiting for one when `wait`; None when there is none (or, when
    /// waiting, when the thread has stopped).
    pub fn finished(&self, wait: bool) -> Option<(Key, std::io::Result<()>)> {
        if wait {
            self.done.recv().ok()
        } else {
            self.done.try_recv().ok()
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // the thread ends with its queue, and must not outlive the memory it writes to
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize
}

/// Zeroes `len` bytes at `ptr` and gives their whole pages back to the kernel (they read as
/// zero until written again), so an evicted expert stops counting as resident memory.
///
/// # Safety
/// `ptr` must point to `len` writable bytes of anonymous private memory (malloc'd).
pub unsafe fn release(ptr: *mut u8, len: usize) {
    let page = page_size();
    let start = ptr as usize;
    let first_page = start.div_ceil(page) * page;
    let last_page = (start + len) / page * page;
    if first_page >= last_page {
        // SAFETY: within the caller's range.
        unsafe { std::ptr::write_bytes(ptr, 0, len) };
        return;
    }
    // SAFETY: the partial pages at both ends lie within the caller's range; the whole pages
    // between are private anonymous memory (MADV_DONTNEED makes them read as zero).
    unsafe {
        std::ptr::write_bytes(ptr, 0, first_page - start);
        std::ptr::write_bytes(last_page as *mut u8, 0, start + len - last_page);
        if libc::madvise(first_page as *mut libc::c_void, last_page - first_page, libc::MADV_DONTNEED) != 0 {
            std::ptr::write_bytes(first_page as *mut u8, 0, last_page - first_page);
        }
    }
}

/// Asks for small pages in `len` bytes at `ptr`: huge pages would be refilled whole behind the
/// cache's back (khugepaged), so released experts would count as resident again.
///
/// # Safety
/// `ptr` must point to `len` bytes of memory the caller owns.
pub unsafe fn advise_small_pages(ptr: *mut u8, len: usize) {
    let page = page_size();
    let start = (ptr as usize).div_ceil(page) * page;
    let end = (ptr as usize + len) / page * page;
    if start < end {
        // SAFETY: whole pages within the caller's range; the advice changes no contents.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_NOHUGEPAGE) };
    }
}
