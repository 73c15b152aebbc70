//! The program's stderr, line by line into nginx's error log with the request context.
//!
//! Lines are cut at [`MAX_LINE`] bytes and escaped (no control bytes reach the log). A token bucket
//! per request ([`BURST`] lines, then [`PER_SECOND`] a second) bounds what a program can put in the
//! log, so a flood of stderr never fills the disk; dropped lines are counted and reported. The last
//! lines ([`TAIL_BYTES`]) are kept whatever the level, to be logged at error level if the program
//! fails. The pipe is always drained, so stderr never blocks the program's stdout.

use std::collections::VecDeque;

use nginx_sys::{ngx_log_t, ngx_msec_t, ngx_uint_t, NGX_LOG_ERR};

/// Longest line logged; the rest is cut.
pub const MAX_LINE: usize = 1024;
/// Lines a request may log at once, and then per second.
pub const BURST: u64 = 100;
pub const PER_SECOND: u64 = 20;
/// stderr kept for the failure report.
pub const TAIL_BYTES: usize = 4096;

/// Per-request stderr state.
pub struct StderrLog {
    /// nginx log level of each line; 0 logs nothing (the tail is still kept).
    level: ngx_uint_t,
    /// The current, unfinished line (at most MAX_LINE bytes) and whether it was cut.
    line: Vec<u8>,
    cut: bool,
    tail: VecDeque<Vec<u8>>,
    tail_bytes: usize,
    tokens: u64,
    refilled: ngx_msec_t,
    suppressed: u64,
}

impl StderrLog {
    pub fn new(level: ngx_uint_t, now: ngx_msec_t) -> StderrLog {
        StderrLog {
            level,
            line: Vec::new(),
            cut: false,
            tail: VecDeque::new(),
            tail_bytes: 0,
            tokens: BURST,
            refilled: now,
            suppressed: 0,
        }
    }

    /// Takes what the program wrote; logs every complete line.
    pub fn feed(&mut self, log: *mut ngx_log_t, mut data: &[u8], now: ngx_msec_t) {
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

    /// Logs the kept tail at error level, for a program that failed.
    pub fn log_tail(&self, log: *mut ngx_log_t, program: &str) {
        for line in &self.tail {
            log_error!(
                NGX_LOG_ERR,
                log,
                0,
                "transform program \"{program}\" stderr: {}",
                escape(line)
            );
        }
    }

    fn end_line(&mut self, log: *mut ngx_log_t, now: ngx_msec_t) {
        let mut line = core::mem::take(&mut self.line);
        if core::mem::take(&mut self.cut) {
            line.extend_from_slice(b"[...]");
        }
        if self.level != 0 {
            self.refill(now);
            if self.tokens > 0 {
                self.tokens -= 1;
                self.report_suppressed(log);
                log_error!(self.level, log, 0, "transform stderr: {}", escape(&line));
            } else {
                self.suppressed += 1;
            }
        }
        self.tail_bytes += line.len();
        self.tail.push_back(line);
        while self.tail_bytes > TAIL_BYTES && self.tail.len() > 1 {
            let old = self.tail.pop_front().expect("not empty");
            self.tail_bytes -= old.len();
        }
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
                "transform stderr: {} lines suppressed (rate limit)",
                self.suppressed
            );
            self.suppressed = 0;
        }
    }
}

/// Printable ASCII as is, everything else as \xNN.
fn escape(line: &[u8]) -> String {
    let mut out = String::with_capacity(line.len());
    for &b in line {
        if (0x20..0x7f).contains(&b) && b != b'\\' {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}
