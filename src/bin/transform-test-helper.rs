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
//! - `pipe-sizes`: `stdout N stderr M`, the capacities of the pipes on its fds 1 and 2.
//! - `hold-pipes`: takes the user's pipe budget (pipes grown to 1 MiB until the kernel refuses),
//!   prints `held N` and keeps them until its stdin ends.
//! - `pause BYTES AT MILLIS`: writes the first AT bytes of the BYTES-byte stream, sleeps MILLIS,
//!   then writes the rest (the whole equals `gen BYTES`).
//! - `pause-fail AT MILLIS CODE`: writes AT bytes of the stream, sleeps MILLIS, exits with CODE.
//! - `cgi-status STATUS BYTES LENGTH`: prints a CGI header block with `Status: STATUS` and, unless
//!   LENGTH is `-`, `Content-Length: LENGTH`, then BYTES of the stream.
//! - `xor KEY`: copies stdin to stdout as it arrives, each byte XORed with KEY (0 to 255), in
//!   pieces of at most 64 KiB (a streaming filter whose output differs from its input).
//! - `slurp`: reads all of stdin first, then writes it to stdout (a filter that writes nothing
//!   before its input ended).
//! - `pool-serve [die-at-start CODE | slow-start MILLIS]`: a pooled program (`transform_pool`):
//!   reads HTTP/1.1 requests from stdin one after another (request line, header lines, an empty
//!   line, Content-Length bytes of body) and answers each on stdout by the last segment of its
//!   path, the query being its argument; exits 0 at end of input before a request. `die-at-start
//!   CODE` exits with CODE at once; `slow-start MILLIS` sleeps MILLIS before the first read.
//!   A response message (a status line first: `transform_filter_pass`) is answered by its
//!   Content-Type `application/x-pool-MODE`: `headers` (200 text/plain, lines `line=STATUS
//!   LINE`, `h:NAME: VALUE` for each header line, `body=LENGTH`), `crash` (a head with a
//!   Content-Length of 1000, 10 bytes, then SIGSEGV), `slow` (1 s, then `slow`), `replace` (201
//!   with `X-Replaced: yes` and `replaced`); any other type: the same status and type, the body
//!   XORed with 1, chunked as it comes. Each filter answer has `X-Filter: pid=PID n=N
//!   status=STATUS` (the original's status).
//!   Answers to requests (a HEAD request gets the head only):
//!   - `echo`: 200 text/plain, lines `pid=PID`, `n=REQUESTS` (served by this process, this one
//!     included), `method=M`, `uri=URI` (as received), `body=LENGTH`, then `h:NAME: VALUE` for
//!     each header line received, in order;
//!   - `gen?N`: N bytes of the `gen` stream with a Content-Length; `chunked?N`: the same bytes
//!     chunked (chunks of 1, 7, 4096, 65536, 3 and 100000 bytes in turn);
//!   - `echo-body`: a Content-Length of the request's, the head written first, then the body
//!     copied from stdin as it comes, in pieces of at most 64 KiB;
//!   - `sha-body`: reads the whole body, then answers `len=N sha256=HEX`;
//!   - `crash?N`: a head with a Content-Length of 2N, N bytes of the stream, then SIGSEGV;
//!   - `exit`: exits with code 3 without answering; `exit0`: exits 0 without answering;
//!   - `garbage`: writes `this is not http` and an empty line, then waits for the next request;
//!   - `excess`: a Content-Length of 5 and 10 bytes; `no-length`: `abc` with no framing;
//!   - `hang`: sleeps for an hour; `slow?MILLIS`: sleeps MILLIS, then answers `slow`;
//!   - `close`: answers `bye` with `Connection: close`, then exits 0;
//!   - `status?CODE`: that status with a short body (none, and no framing, for 204 and 304);
//!   - `stderr`: writes `pool stderr line` to stderr, then answers `ok`;
//!   - `late`: answers `ok`, then 300 ms later writes `late` (outside any response);
//!   - `head-check`: `hello` with a Content-Length of 5 (the head only for HEAD);
//!   - `unread-body`: answers `ok` without reading the request's body, then sleeps for an hour
//!     (it never reads again).
//!
//!   - `probe?MODE:ARG`: runs the sandbox probe MODE (below) with its one argument ARG (or
//!     none: `probe?MODE`) and answers its line.
//!
//! Sandbox probes (`transform_sandbox_*`, `transform_cgroup`): each prints one line to stdout,
//! `ok ...` or the name of the errno that stopped it (`EACCES`, `EPERM`...), and exits 0, so the
//! response body tells what happened:
//! - `read-file PATH`: opens PATH and reads it (`ok read N`).
//! - `write-file PATH`: creates or truncates PATH and writes 3 bytes (`ok wrote 3`).
//! - `exec PATH [ARG...]`: runs PATH with its output dropped and waits (`ok exit CODE`); it opens
//!   no file (not even /dev/null) but PATH.
//! - `socket-inet [HOST:PORT]`: socket(AF_INET, SOCK_STREAM) (`ok socket`), then connects to
//!   HOST:PORT if given (`ok connected`).
//! - `socket-unix`: socket(AF_UNIX, SOCK_STREAM) and an AF_UNIX socketpair (`ok unix`).
//! - `connect-abstract NAME`: connects to the abstract UNIX socket NAME (`ok connected`).
//! - `kill-parent [SIGNAL]`: kill(getppid(), SIGNAL), 0 unless given (`ok kill`).
//! - `ptrace-parent`: PTRACE_SEIZE of getppid() (which never stops it; exiting detaches).
//! - `prlimit-parent`: reads the worker's RLIMIT_CORE with prlimit (`ok prlimit`).
//! - `nice-parent`: setpriority(PRIO_PROCESS, worker, 0) (`ok nice`).
//! - `parent-mem`: opens /proc/PPID/mem for reading and writing (`ok mem`).
//! - `ptrace-child`: PTRACE_SEIZE of a child of its own (allowed without a sandbox: a parent with
//!   the same ids), then kills and reaps it.
//! - `fork-bomb N`: forks N children that wait (stdio closed) until it ends them; stops at the
//!   first failure (`ok forked N`, or the errno name; the count reached goes to stderr).
//! - `alloc MB`: allocates MB MiB and touches every page (`ok alloc MB`, or `ENOMEM`).
//! - `spin MS`: burns CPU for MS milliseconds of wall time (`ok spin MS cpu_ms=N`, the CPU time
//!   it got); `spin` with no argument burns CPU until stopped.
//! - `thread`: starts a thread (pthread_create: clone3, then clone on ENOSYS) and joins it
//!   (`ok thread`).
//! - `pid`: `ok pid N`, its own pid (1 in a new pid namespace).
//! - `clone3`: the raw clone3 system call with no arguments, which always fails: the errno
//!   name (`EINVAL` from the kernel, `ENOSYS` where a filter refuses the call).
//! - `int80` (x86_64): the i386 getpid through `int 0x80` (`ok int80 PID`); a seccomp filter that
//!   refuses foreign architectures kills the program with SIGSYS instead.
//!
//! Prefixes, followed by another mode and its arguments:
//! - `count FILE MODE...`: first appends a line (its pid) to FILE: the tests count program runs.
//! - `delay MILLIS MODE...`: first sleeps MILLIS, writing nothing.

use std::io::{self, Read, Write};
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
        Some("pool-serve") => pool_serve(&args[1..], &mut out),
        Some(mode) if PROBES.contains(&mode) && !(mode == "spin" && args.len() == 1) => {
            let line = probe(mode, &args[1..]);
            writeln!(out, "{line}").map_or(1, |_| 0)
        }
        Some("spin") => {
            let mut x: u64 = 1;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        Some("pipe-sizes") => {
            // SAFETY: fcntl on the process's own standard descriptors.
            let size = |fd| unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
            writeln!(out, "stdout {} stderr {}", size(1), size(2)).map_or(1, |_| 0)
        }
        Some("hold-pipes") => hold_pipes(&mut out),
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

/// Takes the user's pipe budget: makes pipes of 1 MiB until the kernel refuses to grow one,
/// prints `held N` (the pipes it holds), then holds them until stdin ends.
fn hold_pipes(out: &mut impl Write) -> i32 {
    let mut held = Vec::new();
    loop {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the array; the descriptors are this process's to keep.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            break;
        }
        held.push(fds);
        // SAFETY: a pipe of ours.
        if unsafe { libc::fcntl(fds[0], libc::F_SETPIPE_SZ, 1 << 20) } < 0 || held.len() > 4096 {
            break;
        }
    }
    if writeln!(out, "held {}", held.len())
        .and_then(|_| out.flush())
        .is_err()
    {
        return 1;
    }
    let mut rest = Vec::new();
    io::stdin().read_to_end(&mut rest).ok();
    0
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

/// A request read by `pool-serve`.
struct PoolRequest {
    /// The status line of a response to filter; None for a request.
    status_line: Option<String>,
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    length: u64,
}

/// Reads a request's line and header lines; None at end of input before a request.
fn read_pool_request(input: &mut impl Read) -> io::Result<Option<PoolRequest>> {
    // One byte at a time: nothing past the head leaves the pipe (a body left unread stays).
    let mut line = |first: bool| -> io::Result<Option<String>> {
        let mut raw = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match input.read(&mut byte) {
                Ok(0) if first && raw.is_empty() => return Ok(None),
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "end of input in a head",
                    ))
                }
                Ok(_) => {
                    raw.push(byte[0]);
                    if byte[0] == b'\n' {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        while matches!(raw.last(), Some(b'\n' | b'\r')) {
            raw.pop();
        }
        String::from_utf8(raw)
            .map(Some)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a head line not UTF-8"))
    };
    let Some(request_line) = line(true)? else {
        return Ok(None);
    };
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    // A response to filter (transform_filter_pass) starts with its status line.
    let status_line = request_line
        .starts_with("HTTP/1.1 ")
        .then(|| request_line.clone());
    let mut parts = request_line.split(' ');
    let (method, uri) = if status_line.is_some() {
        ("", "")
    } else {
        let (Some(method), Some(uri), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad(&format!("bad request line {request_line:?}")));
        };
        if version != "HTTP/1.1" || method.is_empty() || !uri.starts_with('/') {
            return Err(bad(&format!("bad request line {request_line:?}")));
        }
        (method, uri)
    };
    let mut headers = Vec::new();
    let mut length = 0;
    loop {
        let h = line(false)?.unwrap_or_default();
        if h.is_empty() {
            break;
        }
        let Some((name, value)) = h.split_once(':') else {
            return Err(bad(&format!("bad header line {h:?}")));
        };
        let value = value.trim().to_string();
        if name.eq_ignore_ascii_case("Content-Length") {
            length = value
                .parse()
                .map_err(|_| bad(&format!("bad Content-Length {value:?}")))?;
        }
        headers.push((name.to_string(), value));
    }
    Ok(Some(PoolRequest {
        status_line,
        method: method.to_string(),
        uri: uri.to_string(),
        headers,
        length,
    }))
}

/// Reads and drops `n` bytes of a request's body.
fn skip_body(input: &mut impl Read, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut input.take(n), &mut io::sink())?;
    if copied < n {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "end of input in a body",
        ));
    }
    Ok(())
}

/// Writes a whole response with a Content-Length (only its head for HEAD).
fn pool_respond(
    out: &mut impl Write,
    head_only: bool,
    status: &str,
    extra: &str,
    body: &[u8],
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    );
    out.write_all(head.as_bytes())?;
    if !head_only {
        out.write_all(body)?;
    }
    out.flush()
}

/// Mode `pool-serve`: answers requests on stdin until its end (see the header of this file).
fn pool_serve(args: &[String], out: &mut impl Write) -> i32 {
    match (args.first().map(String::as_str), args.get(1)) {
        (Some("die-at-start"), Some(code)) => return code.parse().unwrap_or(1),
        (Some("slow-start"), Some(ms)) => {
            std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)))
        }
        _ => {}
    }
    // Unbuffered (Rust's stdin reads ahead): what the program did not read stays in the pipe.
    use std::os::fd::FromRawFd;
    // SAFETY: descriptor 0 is open for the life of the process; ManuallyDrop never closes it.
    let mut input = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(0) });
    let input = &mut *input;
    let mut served = 0u64;
    loop {
        let req = match read_pool_request(input) {
            Ok(Some(req)) => req,
            Ok(None) => return 0,
            Err(e) => {
                eprintln!("transform-test-helper: pool-serve: {e}");
                return 4;
            }
        };
        served += 1;
        let answered = match req.status_line {
            Some(_) => pool_filter(&req, served, input, out),
            None => pool_answer(&req, served, input, out),
        };
        match answered {
            Ok(None) => {}
            Ok(Some(code)) => return code,
            Err(e) => {
                eprintln!("transform-test-helper: pool-serve: {e}");
                return 1;
            }
        }
    }
}

/// Answers one request; Some(code) to exit with code after it.
fn pool_answer(
    req: &PoolRequest,
    served: u64,
    input: &mut impl Read,
    out: &mut impl Write,
) -> io::Result<Option<i32>> {
    let (path, query) = req.uri.split_once('?').unwrap_or((&req.uri, ""));
    let name = path.rsplit('/').next().unwrap_or_default();
    let arg: u64 = query.parse().unwrap_or(0);
    let head_only = req.method == "HEAD";
    // Every answer but those that read it themselves first reads the body.
    if !matches!(name, "echo-body" | "sha-body" | "unread-body") {
        skip_body(input, req.length)?;
    }
    match name {
        "echo" => {
            let mut body = format!(
                "pid={}\nn={served}\nmethod={}\nuri={}\nbody={}\n",
                std::process::id(),
                req.method,
                req.uri,
                req.length
            );
            for (k, v) in &req.headers {
                body.push_str(&format!("h:{k}: {v}\n"));
            }
            pool_respond(out, head_only, "200 OK", "", body.as_bytes())?;
        }
        "gen" => {
            out.write_all(
                format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {arg}\r\n\r\n")
                    .as_bytes(),
            )?;
            if !head_only {
                gen(out, arg, 64 * 1024)?;
            }
            out.flush()?;
        }
        "chunked" => {
            out.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
            )?;
            if !head_only {
                let mut all = Vec::new();
                gen(&mut all, arg, 64 * 1024)?;
                let sizes = [1usize, 7, 4096, 65536, 3, 100_000];
                let mut at = 0;
                for size in sizes.iter().cycle() {
                    if at == all.len() {
                        break;
                    }
                    let piece = &all[at..(at + size).min(all.len())];
                    out.write_all(format!("{:x}\r\n", piece.len()).as_bytes())?;
                    out.write_all(piece)?;
                    out.write_all(b"\r\n")?;
                    at += piece.len();
                }
                out.write_all(b"0\r\n\r\n")?;
            }
            out.flush()?;
        }
        "echo-body" => {
            out.write_all(
                format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n", req.length)
                    .as_bytes(),
            )?;
            out.flush()?;
            let mut buf = vec![0u8; 64 * 1024];
            let mut left = req.length;
            while left > 0 {
                let want = buf.len().min(left as usize);
                let n = input.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "end of input in a body",
                    ));
                }
                if !head_only {
                    out.write_all(&buf[..n])?;
                    out.flush()?;
                }
                left -= n as u64;
            }
        }
        "sha-body" => {
            use sha2::Digest;
            let mut hasher = sha2::Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut left = req.length;
            while left > 0 {
                let want = buf.len().min(left as usize);
                let n = input.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "end of input in a body",
                    ));
                }
                hasher.update(&buf[..n]);
                left -= n as u64;
            }
            let body = format!("len={} sha256={:x}\n", req.length, hasher.finalize());
            pool_respond(out, head_only, "200 OK", "", body.as_bytes())?;
        }
        "crash" => {
            out.write_all(
                format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n", 2 * arg)
                    .as_bytes(),
            )?;
            gen(out, arg, 64 * 1024)?;
            out.flush()?;
            // As mode `crash-after`: the default action for SIGSEGV, and no core file.
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
            return Ok(Some(1));
        }
        "exit" => return Ok(Some(3)),
        "exit0" => return Ok(Some(0)),
        "garbage" => {
            out.write_all(b"this is not http\r\n\r\n")?;
            out.flush()?;
        }
        "excess" => {
            out.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n0123456789",
            )?;
            out.flush()?;
        }
        "no-length" => {
            out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nabc")?;
            out.flush()?;
        }
        "hang" => {
            std::thread::sleep(Duration::from_secs(3600));
            return Ok(Some(0));
        }
        "slow" => {
            std::thread::sleep(Duration::from_millis(arg));
            pool_respond(out, head_only, "200 OK", "", b"slow")?;
        }
        "close" => {
            pool_respond(out, head_only, "200 OK", "Connection: close\r\n", b"bye")?;
            return Ok(Some(0));
        }
        "status" => {
            if arg == 204 || arg == 304 {
                out.write_all(
                    format!("HTTP/1.1 {arg} Helper\r\nX-Status: {arg}\r\n\r\n").as_bytes(),
                )?;
                out.flush()?;
            } else {
                let body = format!("status {arg}\n");
                pool_respond(
                    out,
                    head_only,
                    &format!("{arg} Helper"),
                    "",
                    body.as_bytes(),
                )?;
            }
        }
        "stderr" => {
            eprintln!("pool stderr line");
            pool_respond(out, head_only, "200 OK", "", b"ok")?;
        }
        "late" => {
            pool_respond(out, head_only, "200 OK", "", b"ok")?;
            std::thread::sleep(Duration::from_millis(300));
            out.write_all(b"late")?;
            out.flush()?;
        }
        "head-check" => pool_respond(out, head_only, "200 OK", "", b"hello")?,
        "probe" => {
            let (mode, arg) = query.split_once(':').unwrap_or((query, ""));
            let args: Vec<String> = (!arg.is_empty())
                .then(|| arg.to_string())
                .into_iter()
                .collect();
            let line = if PROBES.contains(&mode) {
                probe(mode, &args)
            } else {
                format!("unknown probe {mode:?}")
            };
            pool_respond(out, head_only, "200 OK", "", format!("{line}\n").as_bytes())?;
        }
        "unread-body" => {
            // Never reads again: a module that reused this process would wait forever.
            pool_respond(out, head_only, "200 OK", "", b"ok")?;
            std::thread::sleep(Duration::from_secs(3600));
            return Ok(Some(0));
        }
        _ => pool_respond(
            out,
            head_only,
            "404 Not Found",
            "",
            b"unknown pool-serve path\n",
        )?,
    }
    Ok(None)
}

/// Reads a chunk-size line of a chunked body (extensions ignored).
fn read_chunk_size(input: &mut impl Read) -> io::Result<u64> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        if input.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "end of input in a chunk size",
            ));
        }
        line.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&line);
    let size = text.trim_end().split(';').next().unwrap_or_default();
    u64::from_str_radix(size.trim(), 16).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad chunk size {text:?}"),
        )
    })
}

/// Reads a chunked body, handing each piece to `piece`; reads the trailer to its empty line.
fn read_chunked_body(
    input: &mut impl Read,
    piece: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    let mut total = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let size = read_chunk_size(input)?;
        if size == 0 {
            // The trailer: header lines up to an empty one.
            loop {
                let mut line = Vec::new();
                let mut byte = [0u8; 1];
                while byte[0] != b'\n' {
                    if input.read(&mut byte)? == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "end of input in a trailer",
                        ));
                    }
                    line.push(byte[0]);
                }
                if line == b"\r\n" || line == b"\n" {
                    return Ok(total);
                }
            }
        }
        let mut left = size;
        while left > 0 {
            let want = buf.len().min(left as usize);
            let n = input.read(&mut buf[..want])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "end of input in a chunk",
                ));
            }
            piece(&buf[..n])?;
            left -= n as u64;
            total += n as u64;
        }
        let mut crlf = [0u8; 2];
        input.read_exact(&mut crlf)?;
        if &crlf != b"\r\n" {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "chunk data not followed by CRLF",
            ));
        }
    }
}

/// Answers a response to filter (transform_filter_pass), as its Content-Type says
/// (`application/x-pool-MODE`; any other type: `xor`).
fn pool_filter(
    msg: &PoolRequest,
    served: u64,
    input: &mut impl Read,
    out: &mut impl Write,
) -> io::Result<Option<i32>> {
    let status_line = msg.status_line.as_deref().unwrap_or_default();
    let status = status_line.split(' ').nth(1).unwrap_or_default();
    let header = |name: &str| {
        msg.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let ctype = header("Content-Type").unwrap_or_default().to_string();
    let chunked = header("Transfer-Encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let mode = ctype.strip_prefix("application/x-pool-").unwrap_or("xor");
    let tag = format!(
        "X-Filter: pid={} n={served} status={status}\r\n",
        std::process::id()
    );
    let body =
        |input: &mut dyn Read, piece: &mut dyn FnMut(&[u8]) -> io::Result<()>| -> io::Result<u64> {
            if chunked {
                read_chunked_body(&mut &mut *input, piece)
            } else {
                let mut left = msg.length;
                let mut buf = vec![0u8; 64 * 1024];
                while left > 0 {
                    let want = buf.len().min(left as usize);
                    let n = input.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "end of input in a body",
                        ));
                    }
                    piece(&buf[..n])?;
                    left -= n as u64;
                }
                Ok(msg.length)
            }
        };
    match mode {
        "headers" => {
            let length = body(input, &mut |_| Ok(()))?;
            let mut text = format!("line={status_line}\n");
            for (k, v) in &msg.headers {
                text.push_str(&format!("h:{k}: {v}\n"));
            }
            text.push_str(&format!("body={length}\n"));
            pool_respond(out, false, "200 OK", &tag, text.as_bytes())?;
        }
        "crash" => {
            out.write_all(
                format!("HTTP/1.1 200 OK\r\n{tag}Content-Length: 1000\r\n\r\n0123456789")
                    .as_bytes(),
            )?;
            out.flush()?;
            // SAFETY: plain libc calls with valid arguments (as mode `crash-after`).
            unsafe {
                let no_core = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &no_core);
                libc::signal(libc::SIGSEGV, libc::SIG_DFL);
                libc::raise(libc::SIGSEGV);
            }
            return Ok(Some(1));
        }
        "slow" => {
            body(input, &mut |_| Ok(()))?;
            std::thread::sleep(Duration::from_millis(1000));
            pool_respond(out, false, "200 OK", &tag, b"slow")?;
        }
        "replace" => {
            body(input, &mut |_| Ok(()))?;
            let extra = format!("{tag}X-Replaced: yes\r\n");
            pool_respond(out, false, "201 Created", &extra, b"replaced")?;
        }
        _ => {
            // xor: the body XORed with 1, chunk by chunk as it comes.
            out.write_all(
                format!("HTTP/1.1 {status} Filtered\r\nContent-Type: {ctype}\r\n{tag}Transfer-Encoding: chunked\r\n\r\n")
                    .as_bytes(),
            )?;
            out.flush()?;
            body(input, &mut |piece| {
                let flipped: Vec<u8> = piece.iter().map(|b| b ^ 1).collect();
                out.write_all(format!("{:x}\r\n", flipped.len()).as_bytes())?;
                out.write_all(&flipped)?;
                out.write_all(b"\r\n")?;
                out.flush()
            })?;
            out.write_all(b"0\r\n\r\n")?;
            out.flush()?;
        }
    }
    Ok(None)
}

/// The sandbox probes (see the header of this file).
const PROBES: &[&str] = &[
    "read-file",
    "write-file",
    "exec",
    "socket-inet",
    "socket-unix",
    "connect-abstract",
    "kill-parent",
    "ptrace-parent",
    "ptrace-child",
    "parent-mem",
    "prlimit-parent",
    "nice-parent",
    "fork-bomb",
    "alloc",
    "spin",
    "thread",
    "pid",
    "clone3",
    "int80",
];

/// The name of an errno value (`EACCES`), or `errno N` for one not in the table.
fn errno_name(errno: i32) -> String {
    const NAMES: &[(i32, &str)] = &[
        (libc::EPERM, "EPERM"),
        (libc::ENOENT, "ENOENT"),
        (libc::ESRCH, "ESRCH"),
        (libc::EINTR, "EINTR"),
        (libc::EIO, "EIO"),
        (libc::E2BIG, "E2BIG"),
        (libc::ENOEXEC, "ENOEXEC"),
        (libc::EBADF, "EBADF"),
        (libc::ECHILD, "ECHILD"),
        (libc::EAGAIN, "EAGAIN"),
        (libc::ENOMEM, "ENOMEM"),
        (libc::EACCES, "EACCES"),
        (libc::EFAULT, "EFAULT"),
        (libc::EBUSY, "EBUSY"),
        (libc::EEXIST, "EEXIST"),
        (libc::EXDEV, "EXDEV"),
        (libc::ENOTDIR, "ENOTDIR"),
        (libc::EISDIR, "EISDIR"),
        (libc::EINVAL, "EINVAL"),
        (libc::EMFILE, "EMFILE"),
        (libc::ETXTBSY, "ETXTBSY"),
        (libc::EFBIG, "EFBIG"),
        (libc::ENOSPC, "ENOSPC"),
        (libc::EROFS, "EROFS"),
        (libc::ENOSYS, "ENOSYS"),
        (libc::EPROTONOSUPPORT, "EPROTONOSUPPORT"),
        (libc::EOPNOTSUPP, "EOPNOTSUPP"),
        (libc::EAFNOSUPPORT, "EAFNOSUPPORT"),
        (libc::EADDRNOTAVAIL, "EADDRNOTAVAIL"),
        (libc::ENETDOWN, "ENETDOWN"),
        (libc::ENETUNREACH, "ENETUNREACH"),
        (libc::ECONNREFUSED, "ECONNREFUSED"),
        (libc::ETIMEDOUT, "ETIMEDOUT"),
        (libc::EHOSTUNREACH, "EHOSTUNREACH"),
    ];
    NAMES
        .iter()
        .find(|&&(e, _)| e == errno)
        .map_or_else(|| format!("errno {errno}"), |&(_, n)| n.to_string())
}

/// The errno name of an I/O error (`EIO` for one without an errno).
fn io_errno(e: &io::Error) -> String {
    e.raw_os_error()
        .map_or_else(|| "EIO".to_string(), errno_name)
}

/// The errno name of the last failed libc call.
fn last_errno() -> String {
    io_errno(&io::Error::last_os_error())
}

/// Runs sandbox probe `mode` with `args`; returns its line (`ok ...` or an errno name).
fn probe(mode: &str, args: &[String]) -> String {
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    let num = |i: usize| -> u64 { arg(i).parse().unwrap_or(0) };
    match mode {
        "read-file" => match std::fs::File::open(arg(0)).and_then(|mut f| {
            let mut data = Vec::new();
            f.read_to_end(&mut data).map(|_| data.len())
        }) {
            Ok(n) => format!("ok read {n}"),
            Err(e) => io_errno(&e),
        },
        "write-file" => {
            match std::fs::File::create(arg(0)).and_then(|mut f| f.write_all(b"ok\n")) {
                Ok(()) => "ok wrote 3".to_string(),
                Err(e) => io_errno(&e),
            }
        }
        "exec" => {
            // Its output captured through pipes (and stdin inherited): /dev/null may be out of
            // the sandbox's reach.
            let status = std::process::Command::new(arg(0))
                .args(args.iter().skip(1))
                .stdin(std::process::Stdio::inherit())
                .output();
            match status.map(|o| o.status) {
                Ok(s) => match s.code() {
                    Some(code) => format!("ok exit {code}"),
                    None => format!("ok killed {s}"),
                },
                Err(e) => io_errno(&e),
            }
        }
        "socket-inet" => probe_inet(arg(0)),
        "socket-unix" => {
            // SAFETY: socket() and socketpair() with constant arguments and a 2-int array; the
            // descriptors made are closed right after.
            unsafe {
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                if fd == -1 {
                    return last_errno();
                }
                libc::close(fd);
                let mut pair = [-1; 2];
                if libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, pair.as_mut_ptr()) == -1 {
                    return last_errno();
                }
                libc::close(pair[0]);
                libc::close(pair[1]);
            }
            "ok unix".to_string()
        }
        "connect-abstract" => {
            use std::os::linux::net::SocketAddrExt;
            match std::os::unix::net::SocketAddr::from_abstract_name(arg(0))
                .and_then(|a| std::os::unix::net::UnixStream::connect_addr(&a))
            {
                Ok(_) => "ok connected".to_string(),
                Err(e) => io_errno(&e),
            }
        }
        "kill-parent" => {
            // SAFETY: kill() with integer arguments (signal 0 only checks permission).
            match unsafe { libc::kill(libc::getppid(), num(0) as i32) } {
                0 => "ok kill".to_string(),
                _ => last_errno(),
            }
        }
        "ptrace-parent" => {
            // SAFETY: getppid() has no preconditions.
            ptrace_seize(unsafe { libc::getppid() })
        }
        "prlimit-parent" => {
            // Reads the worker's core limit (no change): the call that could also set it.
            let mut old = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: prlimit with no new limit and a valid output struct.
            match unsafe {
                libc::prlimit(
                    libc::getppid(),
                    libc::RLIMIT_CORE,
                    std::ptr::null(),
                    &mut old,
                )
            } {
                0 => "ok prlimit".to_string(),
                _ => last_errno(),
            }
        }
        "nice-parent" => {
            // Sets the worker's nice value to what it is (0): the call that could lower it.
            // SAFETY: setpriority with integer arguments.
            match unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::getppid() as u32, 0) } {
                0 => "ok nice".to_string(),
                _ => last_errno(),
            }
        }
        "parent-mem" => {
            // Opening the worker's memory for writing: a way to run code in it that no system
            // call filter sees (nginx makes its workers dumpable).
            // SAFETY: getppid() has no preconditions.
            let path = format!("/proc/{}/mem", unsafe { libc::getppid() });
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
            {
                Ok(_) => "ok mem".to_string(),
                Err(e) => io_errno(&e),
            }
        }
        "ptrace-child" => {
            // SAFETY: the child only sleeps and exits; it is killed and reaped below.
            let pid = unsafe { libc::fork() };
            if pid == -1 {
                return last_errno();
            }
            if pid == 0 {
                std::thread::sleep(Duration::from_secs(60));
                // SAFETY: ends the child without running the parent's exit code.
                unsafe { libc::_exit(0) };
            }
            let line = ptrace_seize(pid);
            // SAFETY: killing and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            line
        }
        "fork-bomb" => fork_bomb(num(0)),
        "alloc" => {
            let bytes = (num(0) as usize) << 20;
            let mut block: Vec<u8> = Vec::new();
            if block.try_reserve_exact(bytes).is_err() {
                return "ENOMEM".to_string();
            }
            block.resize(bytes, 1);
            let sum: u64 = block.iter().step_by(4096).map(|&b| u64::from(b)).sum();
            std::hint::black_box(sum);
            format!("ok alloc {}", num(0))
        }
        "spin" => {
            let start = std::time::Instant::now();
            let mut x: u64 = 1;
            while start.elapsed() < Duration::from_millis(num(0)) {
                for _ in 0..10_000 {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            let mut cpu = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime writes into the timespec it is given.
            unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut cpu) };
            let cpu_ms = cpu.tv_sec as u64 * 1000 + cpu.tv_nsec as u64 / 1_000_000;
            format!("ok spin {} cpu_ms={cpu_ms}", num(0))
        }
        "thread" => match std::thread::Builder::new().spawn(|| 42) {
            Ok(handle) => match handle.join() {
                Ok(42) => "ok thread".to_string(),
                _ => "thread failed".to_string(),
            },
            Err(e) => io_errno(&e),
        },
        "pid" => format!("ok pid {}", std::process::id()),
        "clone3" => {
            // SAFETY: clone3 with a null argument and size 0 fails before creating anything.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_clone3,
                    std::ptr::null_mut::<libc::c_void>(),
                    0usize,
                )
            };
            match rc {
                -1 => last_errno(),
                _ => format!("clone3 returned {rc}"),
            }
        }
        "int80" => int80(),
        _ => format!("unknown probe {mode:?}"),
    }
}

/// Probe `socket-inet`: an AF_INET stream socket, connected to `addr` when one is given.
fn probe_inet(addr: &str) -> String {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: socket() with constant arguments; the descriptor is owned on the next line.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd == -1 {
        return last_errno();
    }
    // SAFETY: fd is a new descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    if addr.is_empty() {
        return "ok socket".to_string();
    }
    let Ok(std::net::SocketAddr::V4(v4)) = addr.parse::<std::net::SocketAddr>() else {
        return format!("bad address {addr:?}");
    };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    use std::os::fd::AsRawFd;
    // SAFETY: connect() on our socket with a sockaddr_in and its size.
    let rc = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    match rc {
        0 => "ok connected".to_string(),
        _ => last_errno(),
    }
}

/// PTRACE_SEIZE of `pid`: it never stops the tracee, and the tracer's exit detaches it.
fn ptrace_seize(pid: libc::pid_t) -> String {
    // SAFETY: ptrace() with integer arguments and null pointers.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_SEIZE,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    match rc {
        0 => "ok ptrace".to_string(),
        _ => last_errno(),
    }
}

/// Probe `fork-bomb N` (see the header of this file).
fn fork_bomb(n: u64) -> String {
    let mut pipe = [-1; 2];
    // SAFETY: pipe2() writes two descriptors into the array.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return last_errno();
    }
    let mut children = Vec::new();
    let mut failed = None;
    for _ in 0..n {
        // SAFETY: the child only closes descriptors, waits for the pipe's end and exits.
        let pid = unsafe { libc::fork() };
        if pid == -1 {
            failed = Some(last_errno());
            break;
        }
        if pid == 0 {
            // SAFETY: async-signal-safe calls only; _exit never runs the parent's exit code.
            unsafe {
                libc::close(0);
                libc::close(1);
                libc::close(2);
                libc::close(pipe[1]);
                let mut byte = 0u8;
                while libc::read(pipe[0], (&mut byte as *mut u8).cast(), 1) == -1 {}
                libc::_exit(0);
            }
        }
        children.push(pid);
    }
    // The end of the pipe ends the children; each is reaped.
    // SAFETY: closing our own descriptors, reaping our own children.
    unsafe {
        libc::close(pipe[1]);
        libc::close(pipe[0]);
        for &pid in &children {
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
    eprintln!("fork-bomb: {} children of {n}", children.len());
    failed.unwrap_or_else(|| format!("ok forked {n}"))
}

/// Probe `int80`: the i386 getpid (20) through the 32-bit system call gate.
#[cfg(target_arch = "x86_64")]
fn int80() -> String {
    let mut rax: i64 = 20;
    // SAFETY: getpid takes no arguments and touches no memory; `int 0x80` clobbers only rax
    // (the return value) and, on the kernel's way back, r8 to r11, declared clobbered here.
    unsafe {
        std::arch::asm!(
            "int 0x80",
            inout("rax") rax,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
            options(nostack),
        );
    }
    match rax {
        pid if pid > 0 => format!("ok int80 {pid}"),
        err => errno_name(-err as i32),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn int80() -> String {
    "int80 is x86_64 only".to_string()
}
