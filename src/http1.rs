//! HTTP/1.1 over a pooled program's pipes (see `pool`): the request head the module writes to its
//! stdin, and the decoder of a chunked response body read from its stdout. (The response head is
//! parsed by `cgi::parse_response`.)
//!
//! Pure (std only).

/// Request headers never passed to a pooled program: the client connection's own, and the body
/// framing, which the module sets itself (the body is always whole, with its length).
const NOT_PASSED: &[&[u8]] = &[
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"transfer-encoding",
    b"upgrade",
    b"expect",
    b"content-length",
];

/// The request head for a pooled program: `METHOD URI HTTP/1.1`, the client's header lines but
/// the connection's own, `Content-Length` when there is a body, the blank line.
pub fn request_head<'a>(
    method: &[u8],
    uri: &[u8],
    headers: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    body: Option<u64>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(uri);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        if NOT_PASSED.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(n) = body {
        out.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// `uri` with what cannot stand in a request line percent-escaped (controls, space, non-ASCII,
/// `%` is kept: nginx's decoded URI is escaped as ngx_escape_uri does for a proxied one).
pub fn escape_uri(uri: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(uri.len());
    for &b in uri {
        if b <= b' ' || b >= 0x7f || b == b'"' || b == b'#' || b == b'?' {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out
}

/// The longest chunk size line or trailer line accepted.
const MAX_LINE: usize = 4096;

/// A streaming decoder of a chunked body (RFC 9112 7.1), in place: the data bytes of each piece
/// of input are moved to its front, the framing dropped.
#[derive(Debug, Default)]
pub struct Dechunk {
    state: State,
    /// Data bytes left in the current chunk.
    left: u64,
    /// Hex digits of the current size, or bytes of the current line.
    line: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the chunk size.
    #[default]
    Size,
    /// In a chunk extension (skipped).
    Extension,
    /// After the size line's CR.
    SizeLf,
    Data,
    /// After the data: its CRLF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final blank line).
    TrailerStart,
    /// In a trailer field (skipped).
    Trailer,
    /// After the final blank line's CR.
    EndLf,
    /// The body is complete.
    Done,
}

/// What a piece of input gave.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Data bytes, now at the front of the piece.
    pub data: usize,
    /// Bytes of the piece taken (less than all of it only when the body ended in it: the rest
    /// is not the body's).
    pub used: usize,
}

impl Dechunk {
    /// Whether the last chunk and the trailer section were read.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes `buf` in place. `Err` is why the framing is broken.
    pub fn decode(&mut self, buf: &mut [u8]) -> Result<Decoded, &'static str> {
        let mut data = 0;
        let mut i = 0;
        while i < buf.len() && self.state != State::Done {
            if self.state == State::Data {
                let n = (buf.len() - i).min(usize::try_from(self.left).unwrap_or(usize::MAX));
                buf.copy_within(i..i + n, data);
                data += n;
                i += n;
                self.left -= n as u64;
                if self.left == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let b = buf[i];
            i += 1;
            self.state = match (self.state, b) {
                (State::Size, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                    let digit = (b as char).to_digit(16).unwrap_or(0) as u64;
                    self.line += 1;
                    if self.line > 15 {
                        return Err("a chunk size too large");
                    }
                    self.left = self.left * 16 + digit;
                    State::Size
                }
                (State::Size, b';' | b' ' | b'\t') if self.line > 0 => State::Extension,
                (State::Size, b'\r') if self.line > 0 => State::SizeLf,
                (State::Size, b'\n') if self.line > 0 => self.size_line_ended(),
                (State::Size, _) => return Err("an invalid chunk size"),
                (State::Extension, b'\r') => State::SizeLf,
                (State::Extension, b'\n') => self.size_line_ended(),
                (State::Extension, _) => {
                    self.line += 1;
                    if self.line > MAX_LINE {
                        return Err("a chunk extension too long");
                    }
                    State::Extension
                }
                (State::SizeLf, b'\n') => self.size_line_ended(),
                (State::SizeLf, _) => return Err("a bare CR in a chunk size line"),
                (State::DataCr, b'\r') => State::DataLf,
                (State::DataCr, b'\n') | (State::DataLf, b'\n') => State::Size,
                (State::DataCr | State::DataLf, _) => return Err("no CRLF after a chunk's data"),
                (State::TrailerStart, b'\r') => State::EndLf,
                (State::TrailerStart, b'\n') | (State::EndLf, b'\n') => State::Done,
                (State::EndLf, _) => return Err("a bare CR after the last chunk"),
                (State::Trailer, b'\n') => State::TrailerStart,
                (State::TrailerStart | State::Trailer, _) => {
                    self.line += 1;
                    if self.line > MAX_LINE {
                        return Err("a trailer section too long");
                    }
                    State::Trailer
                }
                (State::Data | State::Done, _) => unreachable!("handled above"),
            };
        }
        Ok(Decoded { data, used: i })
    }

    /// The chunk size line ended: data follows, or (size 0) the trailer section.
    fn size_line_ended(&mut self) -> State {
        self.line = 0;
        if self.left == 0 {
            State::TrailerStart
        } else {
            State::Data
        }
    }
}
