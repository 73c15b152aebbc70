//! The arithmetic of the pipe budget (no system call: the tests include this file).

/// A page of pipe buffer.
pub const PAGE: usize = 4096;
/// What the kernel gives past the soft limit (PIPE_MIN_DEF_BUFFERS), and the least asked.
pub const PAST_LIMIT: usize = 2 * PAGE;
/// The most a new pipe starts with when a budget applies (the kernel's default size): it grows
/// when its program fills it, so that a burst of programs does not hand the share to the first.
pub const START: usize = 16 * PAGE;

/// The size to ask for a stdout pipe: each of `running + 1` programs gets an equal part of
/// `share` pages (less its stderr page), and no pipe more than half of what the pipes of this
/// worker leave of the share (`used` pages), so that a burst of new programs does not give the
/// first ones the whole share and the rest the kernel's 2 pages past the limit; rounded down to
/// a power of two pages (the kernel rounds up), within [`PAST_LIMIT`, `wanted`]. Without a
/// share, `wanted`.
pub fn fair_size(wanted: usize, share: usize, running: usize, used: usize) -> usize {
    if share == 0 {
        return wanted;
    }
    let equal = (share / (running + 1)).saturating_sub(1);
    let left = share.saturating_sub(used) / 2;
    let pages = equal.min(left).max(1);
    let fair = (1usize << (usize::BITS - 1 - pages.leading_zeros())) * PAGE;
    fair.clamp(PAST_LIMIT.min(wanted), wanted)
}

/// The size to ask for a new stdout pipe: [`fair_size`], at most [`START`] when a budget applies
/// (the pipe grows from there, see `pipes::grow_stdout`).
pub fn start_size(wanted: usize, share: usize, running: usize, used: usize) -> usize {
    let fair = fair_size(wanted, share, running, used);
    if share == 0 {
        fair
    } else {
        fair.min(START)
    }
}
