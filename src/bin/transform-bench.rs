//! Benchmark tools run by `ci/bench` (bench/run.py): the producer, the physical-limit
//! contestants and the load client.
//!
//! - `produce BYTES [write]`: writes BYTES to stdout as cheaply as possible: vmsplice(2) of one
//!   reused buffer into the stdout pipe (write(2) of 256 KiB pieces when stdout is not a pipe,
//!   or with `write`, as most programs do).
//! - run under a name ending in `.cgi` (a symlink, as fcgiwrap runs it: no arguments): a CGI
//!   program that writes its own CGI header, then produces `$QUERY_STRING` bytes as `produce`
//!   does: the same program as the module's, one exec per request.
//! - `relay PORT splice|rw PROGRAM ARGS...`: a minimal HTTP server, one connection at a time: for
//!   each request it runs PROGRAM with stdout on a pipe and relays that pipe to the socket, with
//!   splice(2) or with read(2)/write(2) of 64 KiB (close-delimited response).
//! - `relay-mt PORT splice PROGRAM ARGS...`: the limit of "a program per request" under many
//!   connections: a thread per connection, keep-alive, and for each request PROGRAM run with
//!   stdout on a pipe (1 MiB asked), an argument `{}` replaced by the last number of the request's
//!   path (the response's Content-Length), the pipe spliced to the socket (blocking).
//! - `spawn SECONDS THREADS PROGRAM ARGS...`: in each of THREADS threads, posix_spawn of PROGRAM
//!   with stdout on a pipe, read to end of file, waitpid, as many times as it can in SECONDS;
//!   prints `spawns_per_s N p99_ms T requests R self_cpu_s C` (C: this process's own CPU time).
//! - `get URL [--conns N] [--rate B_PER_S] [--expect B] [--for SECONDS] [--rcvbuf B]`: N concurrent GETs
//!   (each on its own connection, rate-limited if asked), bodies counted and dropped (chunked,
//!   Content-Length or close-delimited); with `--for`, each connection reads for SECONDS at most,
//!   then closes (a connection still healthy then counts as ok, with the body bytes it read);
//!   `--rcvbuf BYTES` sets each socket's SO_RCVBUF before it connects (a small window, as a
//!   distant slow client's, rather than loopback's buffers of megabytes);
//!   prints one JSON line: ok, errors, bytes, seconds, cut (connections closed by `--for`).

use std::ffi::CString;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

fn main() {
    if std::env::args().next().is_some_and(|a| a.ends_with(".cgi")) {
        let n = std::env::var("QUERY_STRING")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        return produce(
            Some(b"Content-Type: application/octet-stream\r\n\r\n"),
            n,
            true,
        );
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = || args[1..].to_vec();
    match args.first().map(String::as_str) {
        Some("produce") => produce(
            None,
            args.get(1).and_then(|s| s.parse().ok()).unwrap_or(0),
            args.get(2).map(String::as_str) != Some("write"),
        ),
        Some("relay") => relay(&rest()),
        Some("relay-mt") => relay_mt(&rest()),
        Some("spawn") => spawn_loop(&rest()),
        Some("get") => get(&rest()),
        _ => {
            eprintln!(
                "usage: transform-bench produce|relay|relay-mt|spawn|get ... (see the source)"
            );
            std::process::exit(2);
        }
    }
}

/// Writes `header` (with write(2)), then `left` bytes.
fn produce(header: Option<&[u8]>, mut left: u64, mut vmsplice: bool) {
    const PIECE: usize = 256 * 1024;
    // Page-aligned, so vmsplice maps whole pages; the content does not matter.
    let buf = vec![b'x'; PIECE + 4096];
    let off = buf.as_ptr().align_offset(4096);
    let piece = &buf[off..off + PIECE];
    let mut out = io::stdout().lock();
    if let Some(h) = header {
        if out.write_all(h).and_then(|()| out.flush()).is_err() {
            std::process::exit(1);
        }
    }
    while left > 0 {
        let n = (left as usize).min(PIECE);
        if vmsplice {
            let iov = libc::iovec {
                iov_base: piece.as_ptr() as *mut libc::c_void,
                iov_len: n,
            };
            // SAFETY: iov points at live memory; fd 1 is our stdout. The pages stay referenced
            // by the pipe, and are never changed after this point.
            let r = unsafe { libc::vmsplice(1, &iov, 1, 0) };
            if r > 0 {
                left -= r as u64;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EBADF | libc::EINVAL) => vmsplice = false,
                _ => std::process::exit(1),
            }
        }
        if out.write_all(&piece[..n]).is_err() {
            std::process::exit(1);
        }
        left -= n as u64;
    }
}

/// A pipe (read end, write end), close-on-exec.
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: pipe2 returned two new descriptors that we now own.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Starts `argv` with stdout on `out` (stdin and stderr inherited); returns the pid.
fn spawn(argv: &[CString], out: RawFd) -> libc::pid_t {
    let mut ptrs: Vec<*mut libc::c_char> = argv.iter().map(|a| a.as_ptr().cast_mut()).collect();
    ptrs.push(std::ptr::null_mut());
    let env: [*mut libc::c_char; 1] = [std::ptr::null_mut()];
    let mut pid = 0;
    // SAFETY: the file actions object is initialised, used and destroyed here; argv and env are
    // NULL-terminated arrays of C strings that outlive the call.
    unsafe {
        let mut fa: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        libc::posix_spawn_file_actions_init(&mut fa);
        libc::posix_spawn_file_actions_adddup2(&mut fa, out, 1);
        let rc = libc::posix_spawn(
            &mut pid,
            ptrs[0],
            &fa,
            std::ptr::null(),
            ptrs.as_ptr(),
            env.as_ptr(),
        );
        libc::posix_spawn_file_actions_destroy(&mut fa);
        assert_eq!(rc, 0, "posix_spawn {:?}", argv[0]);
    }
    pid
}

fn wait(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: pid is our child.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
        && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
    {}
}

fn cstrings(args: &[String]) -> Vec<CString> {
    args.iter()
        .map(|a| CString::new(a.as_str()).expect("no NUL"))
        .collect()
}

fn relay(args: &[String]) {
    let port: u16 = args[0].parse().expect("port");
    let splice = args[1] == "splice";
    let argv = cstrings(&args[2..]);
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
    // One connection at a time, in this thread: its CPU time is the process's own.
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let _ = serve(conn, splice, &argv);
    }
}

fn serve(mut conn: TcpStream, splice: bool, argv: &[CString]) -> io::Result<()> {
    // The request head (its content does not matter).
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    // As nginx does for non-buffered upstream responses (the module too).
    conn.set_nodelay(true)?;
    conn.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
    let (r, w) = pipe();
    // SAFETY: a pipe descriptor we own; the size is a hint.
    unsafe { libc::fcntl(r.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
    let pid = spawn(argv, w.as_raw_fd());
    drop(w);
    let result = if splice {
        loop {
            match splice_some(r.as_raw_fd(), conn.as_raw_fd()) {
                Ok(0) => break Ok(()),
                Ok(_) => {}
                Err(e) => break Err(e),
            }
        }
    } else {
        let mut pipe_file = std::fs::File::from(r);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match pipe_file.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    if let Err(e) = conn.write_all(&buf[..n]) {
                        break Err(e);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        }
    };
    wait(pid);
    result
}

fn relay_mt(args: &[String]) {
    let port: u16 = args[0].parse().expect("port");
    assert_eq!(args[1], "splice", "relay-mt relays with splice only");
    let argv: Vec<String> = args[2..].to_vec();
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let argv = argv.clone();
        // Small stacks: thousands of connections, each a thread that only splices.
        let _ = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || {
                let _ = serve_keepalive(conn, &argv);
            });
    }
}

/// Serves requests on `conn` until the client closes it (or a response fails): each one runs
/// `argv` with `{}` replaced by the last number of the request's path.
fn serve_keepalive(mut conn: TcpStream, argv: &[String]) -> io::Result<()> {
    conn.set_nodelay(true)?;
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = conn.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            pending.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&pending[..end]).into_owned();
        pending.drain(..end);
        let path = head.split_whitespace().nth(1).unwrap_or("/");
        let digits: String = path
            .chars()
            .rev()
            .skip_while(|c| !c.is_ascii_digit())
            .take_while(char::is_ascii_digit)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let n: u64 = digits.parse().unwrap_or(0);
        let run: Vec<String> = argv
            .iter()
            .map(|a| if a == "{}" { n.to_string() } else { a.clone() })
            .collect();
        write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n")?;
        let (r, w) = pipe();
        // SAFETY: a pipe descriptor we own; the size is a hint.
        unsafe { libc::fcntl(r.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
        let pid = spawn(&cstrings(&run), w.as_raw_fd());
        drop(w);
        let mut sent = 0u64;
        let result = loop {
            match splice_some(r.as_raw_fd(), conn.as_raw_fd()) {
                Ok(0) => break Ok(()),
                Ok(k) => sent += k as u64,
                Err(e) => break Err(e),
            }
        };
        drop(r);
        wait(pid);
        result?;
        if sent != n {
            // The body is not what the header announced: the connection cannot go on.
            return Err(io::Error::other("short body"));
        }
    }
}

/// One blocking splice of up to 1 MiB from a pipe to a socket (retried when interrupted);
/// 0 at the end of the pipe.
fn splice_some(pipe: RawFd, sock: RawFd) -> io::Result<usize> {
    loop {
        // SAFETY: both descriptors are open; no offsets.
        let n = unsafe {
            libc::splice(
                pipe,
                std::ptr::null_mut(),
                sock,
                std::ptr::null_mut(),
                1 << 20,
                libc::SPLICE_F_MOVE,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn spawn_loop(args: &[String]) {
    let seconds: f64 = args[0].parse().expect("seconds");
    let threads: usize = args[1].parse().expect("threads");
    let argv = cstrings(&args[2..]);
    let start = Instant::now();
    let mut times: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut times = Vec::new();
                    let mut buf = [0u8; 4096];
                    while start.elapsed().as_secs_f64() < seconds {
                        let t = Instant::now();
                        let (r, w) = pipe();
                        let pid = spawn(&argv, w.as_raw_fd());
                        drop(w);
                        let mut f = std::fs::File::from(r);
                        while matches!(f.read(&mut buf), Ok(n) if n > 0) {}
                        wait(pid);
                        times.push(t.elapsed());
                    }
                    times
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    times.sort();
    let p99 = times
        .get(times.len() * 99 / 100)
        .copied()
        .unwrap_or_default();
    // SAFETY: a zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: ru is a valid rusage to fill.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    println!(
        "spawns_per_s {:.1} p99_ms {:.3} requests {} self_cpu_s {:.4}",
        times.len() as f64 / start.elapsed().as_secs_f64(),
        p99.as_secs_f64() * 1000.0,
        times.len(),
        secs(ru.ru_utime) + secs(ru.ru_stime)
    );
}

/// Reads a response body without keeping it: counts its bytes.
struct BodyReader {
    conn: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    rate: Option<f64>,
    start: Instant,
    taken: u64,
    /// `--for`: when reading stops (the connection is then closed, healthy).
    deadline: Option<Instant>,
}

/// The error of a read that `--for`'s deadline stopped.
#[derive(Debug)]
struct Stopped;

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stopped at the deadline")
    }
}

impl std::error::Error for Stopped {}

fn stopped(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|x| x.is::<Stopped>())
}

impl BodyReader {
    fn fill(&mut self) -> io::Result<bool> {
        if self.pos < self.len {
            return Ok(true);
        }
        if let Some(rate) = self.rate {
            let due = Duration::from_secs_f64(self.taken as f64 / rate);
            if let Some(mut wait) = due.checked_sub(self.start.elapsed()) {
                if let Some(d) = self.deadline {
                    wait = wait.min(d.saturating_duration_since(Instant::now()));
                }
                std::thread::sleep(wait);
            }
        }
        if let Some(d) = self.deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::other(Stopped));
            }
            self.conn.set_read_timeout(Some(left))?;
        }
        let cap = if self.rate.is_some() {
            64 * 1024
        } else {
            self.buf.len()
        };
        let n = match self.conn.read(&mut self.buf[..cap]) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) && self.deadline.is_some_and(|d| Instant::now() >= d) =>
            {
                return Err(io::Error::other(Stopped));
            }
            r => r?,
        };
        self.taken += n as u64;
        self.pos = 0;
        self.len = n;
        Ok(n > 0)
    }

    fn line(&mut self) -> io::Result<Vec<u8>> {
        let mut line = Vec::new();
        loop {
            if !self.fill()? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let b = self.buf[self.pos];
            self.pos += 1;
            line.push(b);
            if line.ends_with(b"\r\n") {
                line.truncate(line.len() - 2);
                return Ok(line);
            }
        }
    }

    /// Skips `n` bytes; false at end of file.
    fn skip(&mut self, mut n: u64) -> io::Result<bool> {
        while n > 0 {
            if !self.fill()? {
                return Ok(false);
            }
            let k = ((self.len - self.pos) as u64).min(n);
            self.pos += k as usize;
            n -= k;
        }
        Ok(true)
    }

    fn rest_len(&mut self) -> io::Result<u64> {
        let mut total = 0;
        while self.fill()? {
            total += (self.len - self.pos) as u64;
            self.pos = self.len;
        }
        Ok(total)
    }
}

/// A connection to `addr` (IPv4) whose receive buffer is set to `size` before it connects (the
/// window it offers stays small: the kernel does not grow it).
fn connect_with_rcvbuf(addr: &str, size: i32) -> io::Result<TcpStream> {
    let sa: std::net::SocketAddrV4 = addr
        .parse()
        .map_err(|_| io::Error::other("--rcvbuf needs an IPv4 address:port"))?;
    // SAFETY: plain socket calls on a descriptor we own from here on; the sockaddr and the int
    // outlive the calls that read them.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let conn = TcpStream::from_raw_fd(fd);
        let len = std::mem::size_of::<i32>() as libc::socklen_t;
        if libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const i32).cast(),
            len,
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
        let mut sin: libc::sockaddr_in = std::mem::zeroed();
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_port = sa.port().to_be();
        sin.sin_addr.s_addr = u32::from(*sa.ip()).to_be();
        let slen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::connect(fd, (&sin as *const libc::sockaddr_in).cast(), slen) < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(conn)
    }
}

/// One GET: the body's length and whether `deadline` cut it, or an error.
fn fetch(
    addr: &str,
    path: &str,
    rate: Option<f64>,
    deadline: Option<Instant>,
    rcvbuf: Option<i32>,
) -> io::Result<(u64, bool)> {
    let mut conn = match rcvbuf {
        Some(size) => connect_with_rcvbuf(addr, size)?,
        None => TcpStream::connect(addr)?,
    };
    conn.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut r = BodyReader {
        conn,
        buf: vec![0; 1 << 20],
        pos: 0,
        len: 0,
        rate,
        start: Instant::now(),
        taken: 0,
        deadline,
    };
    let mut body0 = None;
    match read_response(&mut r, &mut body0) {
        Ok(n) => Ok((n, false)),
        Err(e) if stopped(&e) => match body0 {
            Some(b) => Ok((r.taken - b, true)),
            None => Err(io::Error::other("no response head before the deadline")),
        },
        Err(e) => Err(e),
    }
}

/// Reads a response's head and body from `r`; `body0` is set to `r.taken` where the body starts.
fn read_response(r: &mut BodyReader, body0: &mut Option<u64>) -> io::Result<u64> {
    let status = r.line()?;
    if !status.starts_with(b"HTTP/1.1 200") {
        return Err(io::Error::other(
            String::from_utf8_lossy(&status).into_owned(),
        ));
    }
    let (mut length, mut chunked) = (None, false);
    loop {
        let h = String::from_utf8_lossy(&r.line()?).to_ascii_lowercase();
        if h.is_empty() {
            *body0 = Some(r.taken - (r.len - r.pos) as u64);
            break;
        }
        if let Some(v) = h.strip_prefix("content-length:") {
            length = v.trim().parse::<u64>().ok();
        }
        if h.starts_with("transfer-encoding:") && h.contains("chunked") {
            chunked = true;
        }
    }
    if chunked {
        let mut total = 0;
        loop {
            let line = r.line()?;
            let size = u64::from_str_radix(String::from_utf8_lossy(&line).trim(), 16)
                .map_err(|_| io::Error::other("bad chunk size"))?;
            if size == 0 {
                r.line()?;
                return Ok(total);
            }
            if !r.skip(size + 2)? {
                return Err(io::Error::other("cut chunk"));
            }
            total += size;
        }
    }
    match length {
        Some(n) => {
            if r.skip(n)? {
                Ok(n)
            } else {
                Err(io::Error::other("cut body"))
            }
        }
        None => r.rest_len(),
    }
}

fn get(args: &[String]) {
    let url = args[0].strip_prefix("http://").expect("http:// URL");
    let (addr, path) = url.split_at(url.find('/').unwrap_or(url.len()));
    let path = if path.is_empty() { "/" } else { path };
    let (mut conns, mut rate, mut expect, mut for_s, mut rcvbuf) = (1usize, None, None, None, None);
    let mut i = 1;
    while i + 1 < args.len() {
        match args[i].as_str() {
            "--conns" => conns = args[i + 1].parse().expect("conns"),
            "--rate" => rate = Some(args[i + 1].parse::<f64>().expect("rate")),
            "--expect" => expect = Some(args[i + 1].parse::<u64>().expect("expect")),
            "--for" => for_s = Some(args[i + 1].parse::<f64>().expect("for")),
            "--rcvbuf" => rcvbuf = Some(args[i + 1].parse::<i32>().expect("rcvbuf")),
            other => panic!("unknown option {other}"),
        }
        i += 2;
    }
    let start = Instant::now();
    let deadline = for_s.map(|f| start + Duration::from_secs_f64(f));
    let results: Vec<io::Result<(u64, bool)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..conns)
            .map(|_| {
                std::thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn_scoped(s, || fetch(addr, path, rate, deadline, rcvbuf))
                    .expect("thread")
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    let (mut ok, mut errors, mut bytes, mut cut) = (0, 0, 0u64, 0);
    let mut first_error = String::new();
    for r in results {
        match r {
            Ok((n, true)) => {
                ok += 1;
                cut += 1;
                bytes += n;
            }
            Ok((n, false)) if expect.is_none_or(|e| e == n) => {
                ok += 1;
                bytes += n;
            }
            Ok((n, false)) => {
                errors += 1;
                bytes += n;
                if first_error.is_empty() {
                    first_error = format!("{n} bytes");
                }
            }
            Err(e) => {
                errors += 1;
                if first_error.is_empty() {
                    first_error = e.to_string();
                }
            }
        }
    }
    println!(
        "{{\"ok\": {ok}, \"errors\": {errors}, \"bytes\": {bytes}, \"seconds\": {seconds:.4}, \
         \"cut\": {cut}, \"first_error\": {first_error:?}}}"
    );
}
