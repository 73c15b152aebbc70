//! The arithmetic of the pipe budget (no system call: the tests include this file).

/// A page of pipe buffer.
pub const PAGE: usize = 4096;
/// What the kernel gives past the soft limit (PIPE_MIN_DEF_BUFFERS), and the least asked.
pub const PAST_LIMIT: usize = 2 * PAGE;

/// The size to ask for a stdout pipe: each of `running + 1` programs gets an equal part of
/// `share` pages (less its stderr page), rounded down to a power of two pages, within
/// [`PAST_LIMIT`, `wanted`]; without a share, `wanted`.
pub fn fair_size(wanted: usize, share: usize, running: usize) -> usize {
    if share == 0 {
        return wanted;
    }
    let pages = (share / (running + 1)).saturating_sub(1).max(1);
    let fair = (1usize << (usize::BITS - 1 - pages.leading_zeros())) * PAGE;
    fair.clamp(PAST_LIMIT.min(wanted), wanted)
}
