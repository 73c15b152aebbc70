//! Test helper program run by nginx in the integration tests (and the demo).
//!
//! Modes (first argument):
//! - `argv ARG...`: writes each argument followed by a NUL byte.
//! - `gen BYTES [WRITE_SIZE]`: writes BYTES of a deterministic pseudo-random stream.
//! - `fail-after BYTES CODE`: writes BYTES of the stream, then exits with CODE.
//! - `crash-after BYTES`: writes BYTES of the stream, then dies of SIGSEGV.
//! - `hang-after BYTES`: writes BYTES of the stream, then sleeps for an hour.
//! - `gen-linger BYTES MILLIS`: writes BYTES of the stream, then waits MILLIS before exiting 0.
//! - `stderr LINES LINE_BYTES STDOUT_BYTES CODE`: writes LINES lines of LINE_BYTES to stderr, then
//!   STDOUT_BYTES of the stream to stdout, then exits with CODE.
//! - `spin`: burns CPU until stopped.
//! - `cgi BYTES`: prints a CGI header block (Status 203, a Content-Type, X-Helper), then BYTES of
//!   the stream.
//! - `write-then-read BYTES`: writes BYTES of the stream, then reads all of stdin, then prints
//!   `read N` with the count.
//! - `stubborn-grandchild`: starts a child that ignores SIGTERM and sleeps for an hour, prints
//!   its pid to stderr, writes 10 bytes, then sleeps for an hour itself.
//! - `ignore-term BYTES`: ignores SIGTERM, writes BYTES of the stream, then sleeps for an hour.
//! - `grandchild BYTES`: starts a child that sleeps for an hour holding stdout, writes BYTES of
//!   the stream, prints the grandchild's pid to stderr, and exits 0.
//! - `drip COUNT MILLIS`: writes COUNT lines, one every MILLIS milliseconds.
//! - `pause BYTES AT MILLIS`: writes the first AT bytes of the BYTES-byte stream, sleeps MILLIS,
//!   then writes the rest (the whole equals `gen BYTES`).
//! - `pause-fail AT MILLIS CODE`: writes AT bytes of the stream, sleeps MILLIS, exits with CODE.
//! - `cgi-status STATUS BYTES LENGTH`: prints a CGI header block with `Status: STATUS` and, unless
//!   LENGTH is `-`, `Content-Length: LENGTH`, then BYTES of the stream.
//! - `xor KEY`: copies stdin to stdout as it arrives, each byte XORed with KEY (0 to 255), in
//!   pieces of at most 64 KiB (a streaming filter whose output differs from its input).
//! - `slurp`: reads all of stdin first, then writes it to stdout (a filter that writes nothing
//!   before its input ended).
//!
//! Prefixes, followed by another mode and its arguments:
//! - `count FILE MODE...`: first appends a line (its pid) to FILE: the tests count program runs.
//! - `delay MILLIS MODE...`: first sleeps MILLIS, writing nothing.

use std::io::{self, Write};
use std::time::Duration;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    loop {
        match args.first().map(String::as_str) {
            Some("count") if args.len() > 2 => {
                use std::os::unix::fs::OpenOptionsExt;
                let line = format!("{}\n", std::process::id());
                let appended = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o666)
                    .open(&args[1])
                    .and_then(|mut f| f.write_all(line.as_bytes()));
                if let Err(e) = appended {
                    eprintln!("transform-test-helper: count {}: {e}", args[1]);
                    std::process::exit(3);
                }
                args.drain(..2);
            }
            Some("delay") if args.len() > 2 => {
                let ms = args[1].parse().unwrap_or(0);
                std::thread::sleep(Duration::from_millis(ms));
                args.drain(..2);
            }
            _ => break,
        }
    }
    let num = |i: usize| -> u64 { args.get(i).and_then(|s| s.parse().ok()).unwrap_or(0) };
    let out = io::stdout();
    let mut out = out.lock();
    let code = match args.first().map(String::as_str) {
        Some("argv") => {
            for a in &args[1..] {
                out.write_all(a.as_bytes())
                    .and_then(|_| out.write_all(b"\0"))
                    .ok();
            }
            0
        }
        Some("gen") => {
            let size = args
                .get(2)
                .and_then(|s| s.parse().ok())
                .unwrap_or(64 * 1024);
            gen(&mut out, num(1), size).map_or(1, |_| 0)
        }
        Some("fail-after") => {
            gen(&mut out, num(1), 64 * 1024).ok();
            num(2) as i32
        }
        Some("crash-after") => {
            gen(&mut out, num(1), 64 * 1024).ok();
            // Rust's runtime handles SIGSEGV itself: restore the default action (and no core file).
            // SAFETY: plain libc calls with valid arguments.
            unsafe {
                let no_core = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &no_core);
                libc::signal(libc::SIGSEGV, libc::SIG_DFL);
                libc::raise(libc::SIGSEGV);
            }
            1
        }
        Some("hang-after") => {
            gen(&mut out, num(1), 64 * 1024).ok();
            std::thread::sleep(Duration::from_secs(3600));
            0
        }
        Some("gen-linger") => {
            gen(&mut out, num(1), 64 * 1024).ok();
            std::thread::sleep(Duration::from_millis(num(2)));
            0
        }
        Some("stderr") => {
            let mut err = io::stderr().lock();
            let width = num(2) as usize;
            for i in 0..num(1) {
                let mut line = format!("err {i} \x1b[31m");
                while line.len() < width {
                    line.push('x');
                }
                line.truncate(width.max(1));
                if writeln!(err, "{line}").is_err() {
                    break;
                }
            }
            drop(err);
            gen(&mut out, num(3), 64 * 1024).ok();
            num(4) as i32
        }
        Some("ignore-term") => {
            // SAFETY: setting a signal disposition has no memory-safety preconditions.
            unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
            gen(&mut out, num(1), 64 * 1024).ok();
            std::thread::sleep(Duration::from_secs(3600));
            0
        }
        Some("grandchild") => {
            // SAFETY: single-threaded here; the child only sleeps and exits.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                std::thread::sleep(Duration::from_secs(3600));
                // SAFETY: ends the child without running the parent's exit code.
                unsafe { libc::_exit(0) };
            }
            eprintln!("grandchild {pid}");
            gen(&mut out, num(1), 64 * 1024).ok();
            0
        }
        Some("stubborn-grandchild") => {
            // SAFETY: single-threaded here; the child only changes a disposition and sleeps.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: as above.
                unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
                std::thread::sleep(Duration::from_secs(3600));
                // SAFETY: ends the child without running the parent's exit code.
                unsafe { libc::_exit(0) };
            }
            eprintln!("grandchild {pid}");
            gen(&mut out, 10, 64 * 1024).ok();
            std::thread::sleep(Duration::from_secs(3600));
            0
        }
        Some("write-then-read") => {
            gen(&mut out, num(1), 64 * 1024).ok();
            let mut input = Vec::new();
            io::Read::read_to_end(&mut io::stdin().lock(), &mut input).ok();
            writeln!(out, "read {}", input.len()).ok();
            0
        }
        Some("cgi") => {
            out.write_all(b"Status: 203 Non-Authoritative\r\nContent-Type: application/x-cgi\r\n")
                .ok();
            out.write_all(b"X-Helper: yes\r\n\r\n").ok();
            gen(&mut out, num(1), 64 * 1024).ok();
            0
        }
        Some("pause") => {
            let mut all = Vec::new();
            gen(&mut all, num(1), 64 * 1024).ok();
            let at = (num(2) as usize).min(all.len());
            let first = out.write_all(&all[..at]).and_then(|_| out.flush());
            std::thread::sleep(Duration::from_millis(num(3)));
            first
                .and_then(|_| out.write_all(&all[at..]))
                .and_then(|_| out.flush())
                .map_or(1, |_| 0)
        }
        Some("pause-fail") => {
            gen(&mut out, num(1), 64 * 1024).ok();
            std::thread::sleep(Duration::from_millis(num(2)));
            num(3) as i32
        }
        Some("cgi-status") => {
            let mut head = format!(
                "Status: {} Helper\r\nContent-Type: application/x-cgi\r\n",
                num(1)
            );
            match args.get(3).map(String::as_str) {
                None | Some("-") => {}
                Some(length) => head.push_str(&format!("Content-Length: {length}\r\n")),
            }
            head.push_str("\r\n");
            out.write_all(head.as_bytes())
                .and_then(|_| gen(&mut out, num(2), 64 * 1024))
                .map_or(1, |_| 0)
        }
        Some("xor") => {
            let key = num(1) as u8;
            let mut buf = vec![0u8; 64 * 1024];
            let mut stdin = io::stdin().lock();
            loop {
                match io::Read::read(&mut stdin, &mut buf) {
                    Ok(0) => break 0,
                    Ok(n) => {
                        buf[..n].iter_mut().for_each(|b| *b ^= key);
                        if out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                            break 1;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break 1,
                }
            }
        }
        Some("slurp") => {
            let mut input = Vec::new();
            match io::Read::read_to_end(&mut io::stdin().lock(), &mut input) {
                Ok(_) => out
                    .write_all(&input)
                    .and_then(|_| out.flush())
                    .map_or(1, |_| 0),
                Err(_) => 1,
            }
        }
        Some("spin") => {
            let mut x: u64 = 1;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        Some("drip") => {
            for i in 0..num(1) {
                if writeln!(out, "line {i}").and_then(|_| out.flush()).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(num(2)));
            }
            0
        }
        _ => {
            eprintln!("transform-test-helper: unknown mode");
            2
        }
    };
    out.flush().ok();
    std::process::exit(code);
}

/// Writes `n` bytes of a xorshift64 stream in pieces of `size` bytes.
fn gen(out: &mut impl Write, mut n: u64, size: usize) -> io::Result<()> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; size.max(8)];
    while n > 0 {
        for word in buf.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes()[..word.len()]);
        }
        let take = buf.len().min(n as usize);
        out.write_all(&buf[..take])?;
        n -= take as u64;
    }
    out.flush()
}
