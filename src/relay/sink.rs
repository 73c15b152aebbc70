//! The relay's sinks: how the program's output leaves, chosen once at the commit.
//!
//! - [`Splice`]: plain HTTP/1.x with no body filter that needs the data. Bytes go pipe -> socket
//!   with splice(2); the module writes the chunk framing itself, sized by FIONREAD.
//! - [`BufRing`]: everything else (TLS, HTTP/2, gzip, SSI, subrequests, `transform_splice off`).
//!   A bounded ring of reused buffers goes through `ngx_http_output_filter`.

use std::io;
use std::os::fd::BorrowedFd;

use nginx_sys::{ngx_int_t, NGX_ERROR};
use ngx::http::HttpModule;

use crate::conf::TransformConf;
use crate::nginx::filter::Downstream;
use crate::nginx::{BufRing, Http, Moved};
use crate::os;

pub use crate::nginx::Pumped;

/// Buffers of the buffered sink, and their size: at most 512 KiB in flight, while filters after
/// ours hold buffers; a client that does not keep up holds about one (see [`BufRing`]).
const BUFFERS: usize = 8;
const BUFFER_SIZE: usize = 64 * 1024;

/// About what the worker moves for all its streams in one turn of its event loop, up to 128
/// programs: each stream moves at most its part of it (never less than [`LEAST_CHUNK`], so
/// beyond 128 programs a turn may move up to 128 KiB each) before the others, and a request that
/// arrives meanwhile, have their turn. A new request waits a few turns; with a thousand streams
/// each moving `sendfile_max_chunk` (2 MiB) per turn, a turn would move 2 GiB. With
/// `sendfile_max_chunk 0` nothing is capped.
const TURN: usize = 16 * 1024 * 1024;
/// The least a stream moves before it yields.
const LEAST_CHUNK: usize = 128 * 1024;

/// The most a stream moves in one go: nginx's `sendfile_max_chunk` (0: no limit), less when
/// `running` programs share the worker.
pub fn fair_chunk(max_chunk: usize, running: usize) -> usize {
    if max_chunk == 0 {
        return 0;
    }
    max_chunk.min((TURN / running.max(1)).max(LEAST_CHUNK))
}

pub enum Sink {
    Splice(Splice),
    Chain(BufRing),
    /// Through the stored (or shared) file: see [`FileSink`].
    File(FileSink),
    /// Nowhere: the body of a pooled program's response to a request that gets the header only
    /// (a `mirror` or `auth_request` subrequest) is read and dropped, so the process can take
    /// the next request.
    Discard,
}

impl Sink {
    /// The sink for this response; call after the header went through the filters (they set
    /// what [`Http::zero_copy_refusal`] checks).
    pub fn choose(http: Http, conf: &TransformConf) -> Sink {
        let log = http.log();
        match http.zero_copy_refusal(conf.splice != 0) {
            None => {
                debug!(log, "transform transport: splice");
                http.tcp_nodelay();
                Sink::Splice(Splice::new(http.chunked()))
            }
            Some(why) => Sink::buffered(http, why),
        }
    }

    /// The buffered sink, for `why`.
    pub fn buffered(http: Http, why: &str) -> Sink {
        debug!(http.log(), "transform transport: buffered ({why})");
        Sink::Chain(BufRing::new(BUFFERS, BUFFER_SIZE, crate::Module::module()))
    }

    pub fn name(&self) -> &'static str {
        match self {
            Sink::Splice(_) => "splice",
            Sink::Chain(_) => "buffered",
            Sink::File(_) => "file",
            Sink::Discard => "discard",
        }
    }

    /// Moves what `pipe` holds towards the client, at most about `max_chunk` bytes per call
    /// (nginx's sendfile_max_chunk; 0 for no limit), so one stream cannot hold the worker.
    /// Buffers go to `out`: the output chain, or the filters after ours.
    pub fn pump(
        &mut self,
        http: Http,
        out: Downstream,
        pipe: BorrowedFd<'_>,
        moved: &mut Moved,
        max_chunk: usize,
    ) -> io::Result<Pumped> {
        match self {
            Sink::Splice(s) => s.pump(http, out, pipe, moved, max_chunk),
            Sink::Chain(ring) => ring.pump(http, out, pipe, moved, max_chunk),
            // (The relay pumps the file sink with its store; without one it cannot go on.)
            Sink::File(_) => Err(io::Error::other("the file sink has no store")),
            Sink::Discard => discard(pipe, moved),
        }
    }
}

/// Reads what the pipe holds and drops it, within the response's framing.
fn discard(pipe: BorrowedFd<'_>, moved: &mut Moved) -> io::Result<Pumped> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let room = moved.room();
        if room == 0 {
            return Ok(Pumped::Eof);
        }
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = match os::read(pipe, &mut buf[..want]) {
            Ok(0) => return Ok(Pumped::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Pumped::ProgramIdle),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        moved.calls += 1;
        match moved.dechunk.as_mut() {
            None => moved.bytes += n as u64,
            Some(d) => {
                let decoded = d
                    .decode(&mut buf[..n])
                    .map_err(|why| io::Error::new(io::ErrorKind::InvalidData, why))?;
                moved.bytes += decoded.data as u64;
                if d.done() {
                    moved.excess += (n - decoded.used) as u64;
                    moved.limit = moved.bytes;
                }
            }
        }
    }
}

/// The file sink: pipe -> the store's file with splice(2), then the file -> the client as
/// in-file buffers through nginx's output chain (sendfile on plain HTTP/1.x; nginx reads it
/// for TLS, HTTP/2 or gzip). The program is never held back by the client: its output goes to
/// the file as fast as it comes, and the client follows.
pub struct FileSink {
    /// Bytes of the file passed to nginx.
    sent: u64,
}

/// Most moved into the file per call before the other connections get their turn.
const FILE_CHUNK: usize = 8 * 1024 * 1024;

/// How far the file may run ahead of a client that does not keep up, when no other request
/// reads it: beyond, the program waits for the client, as it does without a store (a slow
/// client on an endless output must not fill the disk).
pub const FILE_LEAD: u64 = 64 * 1024 * 1024;

/// Why the file sink stopped.
pub enum FileError {
    /// Writing the file failed: the caller goes on without it.
    Store(io::Error),
    /// The client side failed.
    Client(io::Error),
}

impl FileSink {
    pub fn new(sent: u64) -> FileSink {
        FileSink { sent }
    }

    pub fn pump(
        &mut self,
        http: Http,
        pipe: BorrowedFd<'_>,
        moved: &mut Moved,
        store: &mut crate::store::Store,
    ) -> Result<Pumped, FileError> {
        let mut eof = false;
        let mut this_call = 0;
        let mut failed = None;
        // Far enough ahead of a client that holds output back, with nobody else reading: the
        // client first (its write event comes back here, and the pipe is read again). The
        // shared zone is asked last, only when the file is that far ahead.
        let too_far = |store: &crate::store::Store, sent: u64| {
            store.written() - sent >= FILE_LEAD && http.pending_output() && !store.has_waiters()
        };
        loop {
            if too_far(store, self.sent) {
                if http.output_filter(core::ptr::null_mut()) == NGX_ERROR as ngx_int_t {
                    return Err(FileError::Client(io::Error::other("output filter failed")));
                }
                if http.pending_output() {
                    return Ok(Pumped::ClientBusy);
                }
            }
            let room = moved.room();
            if room == 0 {
                eof = true;
                break;
            }
            if this_call >= FILE_CHUNK {
                break;
            }
            let want = usize::try_from(room).unwrap_or(usize::MAX).min(FILE_CHUNK);
            match store.append(pipe, want) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    moved.calls += 1;
                    moved.bytes += n as u64;
                    this_call += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if this_call > 0 {
            store.notify();
        }
        let written = store.written();
        // New output goes to nginx when what it had went out (one buffer for all of it), and at
        // the end or a failure whatever is left, so that it precedes what follows.
        let pending = http.pending_output();
        if written > self.sent && (!pending || eof || failed.is_some()) {
            if store.file().send(http, self.sent, written) == NGX_ERROR as ngx_int_t {
                return Err(FileError::Client(io::Error::other("output filter failed")));
            }
            self.sent = written;
        } else if pending && http.output_filter(core::ptr::null_mut()) == NGX_ERROR as ngx_int_t {
            return Err(FileError::Client(io::Error::other("output filter failed")));
        }
        if let Some(e) = failed {
            return Err(FileError::Store(e));
        }
        if eof {
            return Ok(Pumped::Eof);
        }
        if this_call >= FILE_CHUNK {
            // Back in a millisecond, after the other connections.
            http.delay_write(1);
            return Ok(Pumped::ClientBusy);
        }
        Ok(if http.pending_output() {
            Pumped::ClientBusy
        } else {
            Pumped::ProgramIdle
        })
    }
}

/// The splice sink: pipe -> socket, with the module's own chunk framing.
pub struct Splice {
    chunked: bool,
    /// Bytes of the current chunk (or piece) still to move.
    left: usize,
    /// The CRLF that ends the last chunk is owed.
    crlf_due: bool,
    /// Framing bytes (CRLF, chunk size line) not yet written.
    frame: [u8; 24],
    frame_pos: usize,
    frame_len: usize,
}

impl Splice {
    fn new(chunked: bool) -> Splice {
        Splice {
            chunked,
            left: 0,
            crlf_due: false,
            frame: [0; 24],
            frame_pos: 0,
            frame_len: 0,
        }
    }

    fn pump(
        &mut self,
        http: Http,
        out: Downstream,
        pipe: BorrowedFd<'_>,
        moved: &mut Moved,
        max_chunk: usize,
    ) -> io::Result<Pumped> {
        // A pause after sendfile_max_chunk lasts until its timer: output events meanwhile wait.
        if http.write_delayed() {
            return Ok(Pumped::ClientBusy);
        }
        // Whatever nginx still holds (the header) goes first.
        if http.pending_output() {
            if out.body(http, core::ptr::null_mut()) == NGX_ERROR as ngx_int_t {
                return Err(io::Error::other("output filter failed"));
            }
            if http.pending_output() {
                return Ok(Pumped::ClientBusy);
            }
        }
        let sock = http.client_fd();
        let mut this_call = 0usize;
        loop {
            if self.frame_pos < self.frame_len {
                let frame = &self.frame[self.frame_pos..self.frame_len];
                match os::send(sock, frame, self.left > 0) {
                    Ok(n) => {
                        self.frame_pos += n;
                        http.add_sent(n);
                    }
                    Err(e) => {
                        if client_would_block(http, e)? {
                            return Ok(Pumped::ClientBusy);
                        }
                    }
                }
                continue;
            }
            if self.left > 0 {
                if max_chunk > 0 && this_call >= max_chunk {
                    // The other connections go first (see Pumped::Yield).
                    debug!(
                        http.log(),
                        "transform: sendfile_max_chunk {max_chunk} reached, yielding"
                    );
                    return Ok(Pumped::Yield);
                }
                let want = match max_chunk {
                    0 => self.left,
                    max => self.left.min(max - this_call),
                };
                match os::splice_to_socket(pipe, sock, want, false) {
                    Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                    Ok(n) => {
                        moved.calls += 1;
                        moved.bytes += n as u64;
                        this_call += n;
                        http.add_sent(n);
                        self.left -= n;
                        if self.left == 0 && self.chunked {
                            self.crlf_due = true;
                        }
                    }
                    // The pipe holds the bytes (FIONREAD said so): the socket is full.
                    Err(e) => {
                        if client_would_block(http, e)? {
                            return Ok(Pumped::ClientBusy);
                        }
                    }
                }
                continue;
            }
            let room = moved.room();
            match if room == 0 {
                None
            } else {
                os::pipe_pending(pipe)?
            } {
                Some(0) => return Ok(Pumped::ProgramIdle),
                Some(n) => {
                    let n = n.min(usize::try_from(room).unwrap_or(usize::MAX));
                    self.left = n;
                    if self.chunked {
                        self.set_frame(Some(n));
                    }
                    continue;
                }
                None => {}
            }
            if self.crlf_due {
                self.set_frame(None);
                continue;
            }
            return Ok(Pumped::Eof);
        }
    }

    /// Queues the owed CRLF and, for `Some(n)`, the size line of a chunk of n bytes.
    fn set_frame(&mut self, size: Option<usize>) {
        let mut len = 0;
        if self.crlf_due {
            self.frame[..2].copy_from_slice(b"\r\n");
            len = 2;
            self.crlf_due = false;
        }
        if let Some(n) = size {
            len += write_chunk_size(&mut self.frame[len..], n);
        }
        self.frame_pos = 0;
        self.frame_len = len;
    }
}

/// Writes `n` in hex followed by CRLF; returns the length written.
fn write_chunk_size(out: &mut [u8], n: usize) -> usize {
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, digit) in out.iter_mut().take(digits).enumerate() {
        *digit = b"0123456789abcdef"[(n >> (4 * (digits - 1 - i))) & 0xf];
    }
    out[digits..digits + 2].copy_from_slice(b"\r\n");
    digits + 2
}

/// Sorts a failed write to the client: `Ok(true)` the socket is full (now marked so), `Ok(false)`
/// interrupted (try again), `Err` a real error.
fn client_would_block(http: Http, e: io::Error) -> io::Result<bool> {
    match e.kind() {
        io::ErrorKind::WouldBlock => {
            http.client_full();
            Ok(true)
        }
        io::ErrorKind::Interrupted => Ok(false),
        _ => Err(e),
    }
}
