//! The program's stderr, line by line into nginx's error log with the request context.
//!
//! Lines are cut at [`MAX_LINE`] bytes and escaped (no control bytes reach the log). A token bucket
//! per request ([`BURST`] lines, then [`PER_SECOND`] a second) bounds what a program can put in the
//! log, so a flood of stderr never fills the disk; dropped lines are counted and reported. The
//! last [`TAIL_BYTES`] bytes are kept in a ring, whatever the lines' count or length, to be
//! logged as one error-level message if the program fails. `transform_stderr off` logs nothing
//! at all. The pipe is always drained, so stderr never blocks the program's stdout.

use nginx_sys::{ngx_log_t, ngx_msec_t, ngx_uint_t, NGX_LOG_ERR};

use crate::log::escape;
use crate::nginx::{now_msec, EventFd};
use crate::os;

/// stderr read per event before yielding to other connections.
const PER_EVENT: usize = 256 * 1024;

/// Longest line logged; the rest is cut.
pub const MAX_LINE: usize = 1024;
/// Lines a request may log at once, and then per second.
pub const BURST: u64 = 100;
pub const PER_SECOND: u64 = 20;
/// stderr kept for the failure report (raw bytes; escaped, the message stays under nginx's
/// 2048-byte log line).
pub const TAIL_BYTES: usize = 1024;
/// The longest escaped tail in the failure report.
const TAIL_TEXT: usize = 1500;

/// Per-request stderr state.
pub struct StderrLog {
    /// nginx log level of each line; 0 logs nothing.
    level: ngx_uint_t,
    /// The current, unfinished line (at most MAX_LINE bytes) and whether it was cut.
    line: Vec<u8>,
    cut: bool,
    /// The last TAIL_BYTES bytes written, in a ring starting at `tail_start` once full.
    tail: Vec<u8>,
    tail_start: usize,
    tokens: u64,
    refilled: ngx_msec_t,
    suppressed: u64,
    /// Who wrote the lines, when the log's context does not say (a pool's process: its pool and
    /// pid).
    source: String,
}

impl StderrLog {
    pub fn new(level: ngx_uint_t, now: ngx_msec_t) -> StderrLog {
        StderrLog {
            level,
            line: Vec::new(),
            cut: false,
            tail: Vec::new(),
            tail_start: 0,
            tokens: BURST,
            refilled: now,
            suppressed: 0,
            source: String::new(),
        }
    }

    /// The same, its lines naming `source` (`pool "x" process 123`).
    pub fn with_source(mut self, source: String) -> StderrLog {
        self.source = source;
        self
    }

    /// `transform stderr` or `transform pool "x" process 123 stderr`.
    fn what(&self) -> String {
        if self.source.is_empty() {
            "transform stderr".to_string()
        } else {
            format!("transform {} stderr", self.source)
        }
    }

    /// Reads what the program wrote to `fd` and logs it, fairly: a bounded amount per call, then
    /// again from nginx's posted events (all of it when `last`). True once stderr ended (end of
    /// file, or an error: the lines are complete, and `fd` can go).
    pub fn drain(&mut self, fd: &EventFd, log: *mut ngx_log_t, last: bool) -> bool {
        let mut buf = [0u8; 16 * 1024];
        let mut taken = 0;
        loop {
            if taken >= PER_EVENT && !last {
                fd.post_read();
                return false;
            }
            match os::read(fd.fd(), &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    taken += n;
                    self.feed(log, &buf[..n], now_msec());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if !last && fd.arm_read() {
                        return false;
                    }
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.finish(log, now_msec());
        true
    }

    /// Takes what the program wrote; logs every complete line.
    pub fn feed(&mut self, log: *mut ngx_log_t, mut data: &[u8], now: ngx_msec_t) {
        if self.level == 0 {
            return;
        }
        self.keep_tail(data);
        while !data.is_empty() {
            let (piece, rest, complete) = match data.iter().position(|&b| b == b'\n') {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &data[data.len()..], false),
            };
            let room = MAX_LINE - self.line.len();
            self.line.extend_from_slice(&piece[..piece.len().min(room)]);
            self.cut |= piece.len() > room;
            if complete {
                self.end_line(log, now);
            }
            data = rest;
        }
    }

    /// The program's stderr ended (or the request ends): logs the unfinished line and what was
    /// suppressed.
    pub fn finish(&mut self, log: *mut ngx_log_t, now: ngx_msec_t) {
        if !self.line.is_empty() {
            self.end_line(log, now);
        }
        self.report_suppressed(log);
    }

    /// Logs the kept tail at error level in one message, for a program that failed (nothing
    /// with `transform_stderr off`, or when it wrote nothing).
    pub fn log_tail(&self, log: *mut ngx_log_t, program: &str) {
        if self.level == 0 || self.tail.is_empty() {
            return;
        }
        let (newer, older) = self.tail.split_at(self.tail_start);
        let mut raw = Vec::with_capacity(self.tail.len());
        raw.extend_from_slice(older);
        raw.extend_from_slice(newer);
        let text = escape(raw.strip_suffix(b"\n").unwrap_or(&raw)).replace("\\x0a", "\\n");
        let (cut, text) = match text.len().checked_sub(TAIL_TEXT) {
            Some(skip) if skip > 0 => ("...", &text[skip..]),
            _ => ("", &text[..]),
        };
        log_error!(
            NGX_LOG_ERR,
            log,
            0,
            "transform program \"{program}\" stderr (last lines): {cut}{text}"
        );
    }

    /// Keeps the last TAIL_BYTES bytes of `data` in the ring.
    fn keep_tail(&mut self, data: &[u8]) {
        if data.len() >= TAIL_BYTES {
            self.tail.clear();
            self.tail
                .extend_from_slice(&data[data.len() - TAIL_BYTES..]);
            self.tail_start = 0;
            return;
        }
        for &b in data {
            if self.tail.len() < TAIL_BYTES {
                self.tail.push(b);
            } else {
                self.tail[self.tail_start] = b;
                self.tail_start = (self.tail_start + 1) % TAIL_BYTES;
            }
        }
    }

    fn end_line(&mut self, log: *mut ngx_log_t, now: ngx_msec_t) {
        let cut = core::mem::take(&mut self.cut);
        self.refill(now);
        if self.tokens > 0 {
            self.tokens -= 1;
            self.report_suppressed(log);
            let more = if cut { "[...]" } else { "" };
            log_error!(
                self.level,
                log,
                0,
                "{}: {}{more}",
                self.what(),
                escape(&self.line)
            );
        } else {
            self.suppressed += 1;
        }
        self.line.clear();
    }

    fn refill(&mut self, now: ngx_msec_t) {
        let earned = now.saturating_sub(self.refilled) as u64 * PER_SECOND / 1000;
        if earned > 0 {
            self.tokens = (self.tokens + earned).min(BURST);
            self.refilled = now;
        }
    }

    fn report_suppressed(&mut self, log: *mut ngx_log_t) {
        if self.suppressed > 0 && self.level != 0 {
            log_error!(
                self.level,
                log,
                0,
                "{}: {} lines suppressed (rate limit)",
                self.what(),
                self.suppressed
            );
            self.suppressed = 0;
        }
    }
}
