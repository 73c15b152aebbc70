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
/// the connection's own, `Content-Length` when there is a body, the blank line. None if a piece
/// would break the framing (a CR, LF or NUL anywhere, a space in the method or URI): nginx's
/// parsers let none through, and the module never passes one on.
pub fn request_head<'a>(
    method: &[u8],
    uri: &[u8],
    headers: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    body: Option<u64>,
) -> Option<Vec<u8>> {
    if breaks(method) || breaks(uri) || method.contains(&b' ') || uri.contains(&b' ') {
        return None;
    }
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(uri);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    write_headers(&mut out, headers, &[])?;
    if let Some(n) = body {
        out.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    Some(out)
}

/// Whether a piece of a head would break its framing.
fn breaks(v: &[u8]) -> bool {
    v.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0)
}

/// Writes header lines but the connection's own and `skip`; None if one would break the
/// framing.
fn write_headers<'a>(
    out: &mut Vec<u8>,
    headers: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    skip: &[&[u8]],
) -> Option<()> {
    for (name, value) in headers {
        if NOT_PASSED
            .iter()
            .chain(skip)
            .any(|n| n.eq_ignore_ascii_case(name))
        {
            continue;
        }
        if breaks(name) || breaks(value) || name.contains(&b':') || name.is_empty() {
            return None;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    Some(())
}

/// Raw bytes of a request line (a URI as received, arguments) with what cannot stand there
/// percent-escaped: controls, space, DEL, non-ASCII and `#`; escapes already there stay.
pub fn escape_raw(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    for &b in v {
        if b <= b' ' || b >= 0x7f || b == b'#' {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out
}

/// The response head for a pooled filter program (`transform_filter_pass`): the status line,
/// the Content-Type, the response's header lines, `Transfer-Encoding: chunked` (the body follows
/// chunked, each piece as the response's handler passes it). None if a piece would break the
/// framing (a CR, LF or NUL: a header value made from a decoded `$uri`, say).
pub fn response_head<'a>(
    status: u16,
    reason: &[u8],
    content_type: &[u8],
    headers: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> Option<Vec<u8>> {
    if breaks(reason) || breaks(content_type) {
        return None;
    }
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(format!("HTTP/1.1 {status} ").as_bytes());
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
    if !content_type.is_empty() {
        out.extend_from_slice(b"Content-Type: ");
        out.extend_from_slice(content_type);
        out.extend_from_slice(b"\r\n");
    }
    write_headers(&mut out, headers, &[b"content-type"])?;
    out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
    Some(out)
}

/// The reason phrase of a status (RFC 9110), for a status line that has none of its own.
pub fn reason(status: u16) -> &'static [u8] {
    match status {
        200 => b"OK",
        201 => b"Created",
        202 => b"Accepted",
        203 => b"Non-Authoritative Information",
        204 => b"No Content",
        206 => b"Partial Content",
        301 => b"Moved Permanently",
        302 => b"Found",
        303 => b"See Other",
        304 => b"Not Modified",
        307 => b"Temporary Redirect",
        308 => b"Permanent Redirect",
        400 => b"Bad Request",
        401 => b"Unauthorized",
        403 => b"Forbidden",
        404 => b"Not Found",
        405 => b"Method Not Allowed",
        406 => b"Not Acceptable",
        408 => b"Request Timeout",
        409 => b"Conflict",
        410 => b"Gone",
        413 => b"Content Too Large",
        415 => b"Unsupported Media Type",
        416 => b"Range Not Satisfiable",
        429 => b"Too Many Requests",
        500 => b"Internal Server Error",
        501 => b"Not Implemented",
        502 => b"Bad Gateway",
        503 => b"Service Unavailable",
        504 => b"Gateway Timeout",
        _ => b"",
    }
}

/// `uri` (nginx's decoded one) with what cannot stand in a request line percent-escaped:
/// controls, space, non-ASCII, `"`, `#`, `?` and `%` itself (a literal `%` of the decoded URI
/// must not be decoded again by the program), as ngx_escape_uri does for a proxied URI.
pub fn escape_uri(uri: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(uri.len());
    for &b in uri {
        if b <= b' ' || b >= 0x7f || b == b'"' || b == b'#' || b == b'?' || b == b'%' {
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
