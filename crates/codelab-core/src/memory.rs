//! Giving memory the process freed back to the system.
//!
//! glibc's malloc keeps what a thread frees in that thread's arena for reuse, and returns to
//! the system only the free top of each heap: after a burst of load, freed blocks below a
//! live one stay resident, so a service stayed near its peak long after the load (the soak,
//! docs/reliability.md, "Memory after load"). [`release_free_memory`] asks glibc for every
//! whole free page back; the metrics upkeep thread of `crate::telemetry` calls it every few
//! seconds, so every service (and `codelab up`) gets it.

/// Returns the free pages of every malloc arena to the system (glibc's `malloc_trim(0)`):
/// `true` when some memory was given back. Does nothing elsewhere (musl, macOS), whose
/// allocators give memory back themselves or have no such call.
///
/// glibc locks each arena in turn while it walks its free blocks, which takes a few
/// milliseconds on a heap of a hundred MiB: call it from a background thread, now and then.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[expect(
    unsafe_code,
    reason = "the one FFI call of the workspace: glibc's malloc_trim has no safe binding"
)]
pub fn release_free_memory() -> bool {
    // SAFETY: malloc_trim takes no pointer and only rearranges glibc's own free lists, under
    // the arena locks every other allocator call takes too; any thread may call it any time.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Returns the free pages of every malloc arena to the system: nothing to do with this
/// allocator.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() -> bool {
    false
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("Linux has /proc");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .expect("/proc/self/status has VmRSS")
    }

    /// Regression (the soak): 64 MiB freed in blocks that each sit below a live one, which
    /// glibc alone keeps resident, come back.
    #[test]
    fn freed_blocks_below_live_ones_go_back_to_the_system() {
        const BLOCKS: usize = 4096;
        let mut freed = Vec::with_capacity(BLOCKS);
        let mut kept = Vec::with_capacity(BLOCKS);
        for i in 0..BLOCKS {
            // Written, so the pages are resident; 16 KiB stays below the mmap threshold.
            freed.push(vec![u8::try_from(i % 251).unwrap_or(1) | 1; 16 * 1024]);
            kept.push(vec![1u8; 64]);
        }
        drop(freed);
        let before = rss_kib();
        assert!(release_free_memory(), "nothing was given back");
        let after = rss_kib();
        assert!(
            before.saturating_sub(after) >= 32 * 1024,
            "RSS {before} KiB before the trim, {after} KiB after"
        );
        assert_eq!(kept.len(), BLOCKS);
    }
}
