//! The header block of `transform_output cgi`: header lines (`Status`, `Content-Type`, `Location`,
//! `Content-Length`, others), a blank line, then the body (as CGI, RFC 3875).
//!
//! Two layers. [`fields`] is the syntax: `httparse::parse_headers` splits the block into
//! `name: value` pairs (RFC 9110 token names; values without CR, LF, NUL or other controls but
//! HTAB; obs-fold rejected; CRLF or bare LF line ends, as CGI allows). [`parse`] is the meaning,
//! after ngx_http_fastcgi_module and ngx_http_upstream_headers_in: the status (200..599 only),
//! the length, repeated single-valued headers, and the headers nginx hides from an application.
//!
//! Pure (std and httparse only) so that tests/cgi_parser.rs can include this file and test it
//! without nginx.

/// The most header lines a block may have (httparse parses into a fixed array).
pub const MAX_HEADERS: usize = 100;

/// What the program said about its response. Names and values are bytes as the program sent
/// them (values trimmed of surrounding spaces and tabs): names are RFC 9110 tokens, values have
/// no control character but HTAB.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Head {
    /// 200..=599 (an interim 1xx response would let a body pass for a response).
    pub status: Option<u16>,
    pub content_type: Option<Vec<u8>>,
    pub location: Option<Vec<u8>>,
    pub content_length: Option<u64>,
    /// The other headers, in order, for the response. Never `Status`, `Content-Type`,
    /// `Location`, `Content-Length`, a hop-by-hop header or one that nginx hides.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Repeats of a single-valued header, dropped (the first one counts, as upstream's do), as
    /// log text: `duplicate header line: "ETag: b", previous value: "ETag: a", ignored`.
    pub warnings: Vec<String>,
}

impl Head {
    /// Why this response must not be stored or handed to other requests, if it must not: it
    /// sets a cookie, says it is private or not to be kept (as nginx's cache refuses such
    /// responses), or its body is encoded (a stored file is served without the encoding, a
    /// waiting request gets the body and the Content-Type only).
    pub fn unshareable(&self) -> Option<&'static str> {
        for (name, value) in &self.headers {
            if name.eq_ignore_ascii_case(b"set-cookie") {
                return Some("it sets a cookie");
            }
            if name.eq_ignore_ascii_case(b"content-encoding") {
                return Some("its body has a Content-Encoding");
            }
            if name.eq_ignore_ascii_case(b"vary") {
                return Some("it varies with the request's headers (Vary)");
            }
            if name.eq_ignore_ascii_case(b"cache-control") {
                let v = value.to_ascii_lowercase();
                let says = |word: &[u8]| {
                    v.split(|&b| b == b',' || b == b'=' || b == b' ' || b == b'\t')
                        .any(|w| w == word)
                };
                if says(b"private") || says(b"no-store") || says(b"no-cache") {
                    return Some("its Cache-Control forbids it");
                }
            }
        }
        None
    }
}

/// The result of looking at what the program wrote so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// No blank line yet.
    Incomplete,
    /// The header block, and how many bytes of the input it took (the body starts there).
    Done(Head, usize),
    /// Not a valid header block: the reason, for the log.
    Invalid(String),
}

/// The syntax of a header block, before any meaning.
#[derive(Debug, PartialEq, Eq)]
pub enum Fields<'a> {
    Incomplete,
    /// `(name, value)` pairs in order, and the bytes the block took with its blank line.
    Done(Vec<(&'a [u8], &'a [u8])>, usize),
    Invalid(String),
}

/// Headers that belong to a connection, not to a response: a program that sends one is
/// confused about the framing (nginx frames the body), so the block is refused.
const HOP_BY_HOP: &[&[u8]] = &[
    b"connection",
    b"keep-alive",
    b"transfer-encoding",
    b"upgrade",
    b"te",
    b"trailer",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"proxy-connection",
];

/// Headers nginx keeps from the client of a FastCGI application (ngx_http_fastcgi_hide_headers;
/// Status is taken apart). Dropped, not acted on.
const HIDDEN: &[&[u8]] = &[
    b"x-accel-expires",
    b"x-accel-redirect",
    b"x-accel-limit-rate",
    b"x-accel-buffering",
    b"x-accel-charset",
];

/// Single-valued headers of ngx_http_upstream_headers_in (its process_header_line,
/// process_last_modified and process_expires handlers): a repeat is logged and dropped. The
/// repeats upstream refuses (Content-Length) or that decide the response (Status, Location) make
/// the block invalid instead.
const SINGLE: &[&[u8]] = &[
    b"content-type",
    b"date",
    b"etag",
    b"server",
    b"last-modified",
    b"expires",
    b"refresh",
];

/// Splits the header block at the start of `input` into fields (httparse).
pub fn fields(input: &[u8]) -> Fields<'_> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(input, &mut slots) {
        Ok(httparse::Status::Partial) => Fields::Incomplete,
        Ok(httparse::Status::Complete((used, headers))) => Fields::Done(
            headers
                .iter()
                .map(|h| (h.name.as_bytes(), h.value))
                .collect(),
            used,
        ),
        Err(httparse::Error::TooManyHeaders) => {
            Fields::Invalid(format!("more than {MAX_HEADERS} header lines"))
        }
        Err(_) => Fields::Invalid(diagnose(input)),
    }
}

/// Parses the header block at the start of `input`.
pub fn parse(input: &[u8]) -> Parsed {
    let (fields, used) = match fields(input) {
        Fields::Incomplete => return Parsed::Incomplete,
        Fields::Invalid(why) => return Parsed::Invalid(why),
        Fields::Done(fields, used) => (fields, used),
    };
    match meaning(fields, None) {
        Ok(head) => Parsed::Done(head, used),
        Err(why) => Parsed::Invalid(why),
    }
}

/// A pooled program's HTTP/1.x response head: the status line's code in `head.status`, the
/// headers as a CGI block's, and the framing of its body.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Response {
    pub head: Head,
    /// `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// `Connection: close`: the program ends its service after this response.
    pub close: bool,
}

/// The result of looking at a pooled program's response so far.
#[derive(Debug, PartialEq, Eq)]
pub enum ParsedResponse {
    Incomplete,
    /// The head, and how many bytes it took (the body starts there).
    Done(Response, usize),
    Invalid(String),
}

/// Parses an HTTP/1.0 or HTTP/1.1 response head (status line, header block) at the start of
/// `input`, as nginx's upstream takes a proxied one: the status 200..=599 (an interim 1xx is
/// refused: the program answers once), Content-Length or `Transfer-Encoding: chunked` (not both),
/// `Connection: close` noted; the other headers mean what they mean in a CGI block, and the
/// connection's own (Keep-Alive, Upgrade...) are dropped.
pub fn parse_response(input: &[u8]) -> ParsedResponse {
    let Some(nl) = input.iter().position(|&b| b == b'\n') else {
        let start = &input[..input.len().min(9)];
        if !b"HTTP/1.1 ".starts_with(start) && !b"HTTP/1.0 ".starts_with(start) {
            return ParsedResponse::Invalid(format!("invalid status line \"{}\"", show(input)));
        }
        return ParsedResponse::Incomplete;
    };
    let line = input[..nl].strip_suffix(b"\r").unwrap_or(&input[..nl]);
    let Some(code) = status_line(line) else {
        return ParsedResponse::Invalid(format!("invalid status line \"{}\"", show(line)));
    };
    if !(200..=599).contains(&code) {
        return ParsedResponse::Invalid(format!("status {code} in \"{}\"", show(line)));
    }
    let (fields, used) = match fields(&input[nl + 1..]) {
        Fields::Incomplete => return ParsedResponse::Incomplete,
        Fields::Invalid(why) => return ParsedResponse::Invalid(why),
        Fields::Done(fields, used) => (fields, used),
    };
    let mut response = Response::default();
    match meaning(fields, Some(&mut response)) {
        Ok(head) => response.head = head,
        Err(why) => return ParsedResponse::Invalid(why),
    }
    if response.chunked && response.head.content_length.is_some() {
        return ParsedResponse::Invalid("both Content-Length and Transfer-Encoding".to_string());
    }
    response.head.status = Some(code);
    ParsedResponse::Done(response, nl + 1 + used)
}

/// `HTTP/1.x NNN[ reason]`: the code.
fn status_line(line: &[u8]) -> Option<u16> {
    let rest = line
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| line.strip_prefix(b"HTTP/1.0 "))?;
    let (code, reason) = rest.split_at_checked(3)?;
    if !code.iter().all(u8::is_ascii_digit)
        || !(reason.is_empty() || reason[0] == b' ')
        || !reason.iter().all(|&b| is_value_byte(b))
    {
        return None;
    }
    Some(code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0')))
}

/// What the fields of a header block mean: a CGI block's (`http` None), or an HTTP response's,
/// whose framing and connection headers go to `http`.
fn meaning(fields: Vec<(&[u8], &[u8])>, mut http: Option<&mut Response>) -> Result<Head, String> {
    let mut head = Head::default();
    // The first line of each single-valued header: (lowercase name, name, value).
    let mut first: Vec<(Vec<u8>, &[u8], &[u8])> = Vec::new();
    for (name, value) in fields {
        let lower = name.to_ascii_lowercase();
        let lower = lower.as_slice();
        if let Some(response) = http.as_deref_mut() {
            match lower {
                b"transfer-encoding" if response.chunked => {
                    return Err("duplicate Transfer-Encoding".to_string());
                }
                b"transfer-encoding" if value.eq_ignore_ascii_case(b"chunked") => {
                    response.chunked = true;
                    continue;
                }
                b"transfer-encoding" => {
                    return Err(format!("unsupported Transfer-Encoding \"{}\"", show(value)));
                }
                b"connection" => {
                    response.close |= value
                        .split(|&b| b == b',')
                        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
                    continue;
                }
                // (A header of CGI's, not of HTTP.)
                b"status" => continue,
                _ if HOP_BY_HOP.contains(&lower) => continue,
                _ => {}
            }
        }
        if HOP_BY_HOP.contains(&lower) {
            return Err(format!("hop-by-hop header \"{}\"", show(name)));
        }
        if HIDDEN.contains(&lower) {
            continue;
        }
        let decisive = matches!(lower, b"status" | b"location" | b"content-length");
        if decisive || SINGLE.contains(&lower) {
            if let Some((_, n, v)) = first.iter().find(|(l, _, _)| l == lower) {
                let line = format!(
                    "duplicate header line: \"{}: {}\", previous value: \"{}: {}\"",
                    show(name),
                    show(value),
                    show(n),
                    show(v)
                );
                if decisive {
                    return Err(line);
                }
                head.warnings.push(format!("{line}, ignored"));
                continue;
            }
            first.push((lower.to_vec(), name, value));
        }
        match lower {
            b"status" => match status(value) {
                Some(code) => head.status = Some(code),
                None => return Err(format!("invalid Status \"{}\"", show(value))),
            },
            b"content-length" => match content_length(value) {
                Some(n) => head.content_length = Some(n),
                None => return Err(format!("invalid Content-Length \"{}\"", show(value))),
            },
            b"content-type" => head.content_type = Some(value.to_vec()),
            b"location" => head.location = Some(value.to_vec()),
            _ => head.headers.push((name.to_vec(), value.to_vec())),
        }
    }
    Ok(head)
}

/// `Status: NNN[ reason]` with NNN in 200..=599 (the reason phrase is nginx's to write).
fn status(value: &[u8]) -> Option<u16> {
    let (code, rest) = value.split_at_checked(3)?;
    if !code.iter().all(u8::is_ascii_digit) || !(rest.is_empty() || rest[0] == b' ') {
        return None;
    }
    let code = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    (200..=599).contains(&code).then_some(code)
}

/// Digits only, at most what an off_t holds (ngx_atoof).
fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(value).ok()?.parse().ok()?;
    (n <= i64::MAX as u64).then_some(n)
}

/// Why httparse refused the block: the first line that breaks the syntax of [`fields`], told in
/// words (httparse only names the kind of error).
fn diagnose(input: &[u8]) -> String {
    let mut rest = input;
    while !rest.is_empty() {
        // The last line may be cut short: what is there so far is checked.
        let (line, next, whole) = match rest.iter().position(|&b| b == b'\n') {
            Some(nl) => (&rest[..nl], &rest[nl + 1..], true),
            None => (rest, &rest[rest.len()..], false),
        };
        rest = next;
        // A CR at the end of a cut line may start its CRLF, unless it ends a name.
        let line = match line.strip_suffix(b"\r") {
            Some(l) if whole || l.contains(&b':') => l,
            _ => line,
        };
        if line.is_empty() && whole {
            break;
        }
        if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            return format!("obsolete line folding: \"{}\"", show(line));
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            if !whole && (line == b"\r" || line.iter().all(|&b| is_token(b))) {
                break;
            }
            return format!("header line without a colon: \"{}\"", show(line));
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_token(b)) {
            return format!("invalid header name \"{}\"", show(name));
        }
        if !value.iter().all(|&b| is_value_byte(b)) {
            return format!("control character in header \"{}\"", show(name));
        }
    }
    "invalid header block".to_string()
}

/// An RFC 9110 tchar.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// HTAB, SP, VCHAR, obs-text.
fn is_value_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

/// A printable, bounded rendering of bytes for log lines: printable ASCII as it is, `\` as
/// `\\`, any other byte as `\xNN`; past 100 bytes, `...`.
pub fn show(v: &[u8]) -> String {
    const MAX: usize = 100;
    let mut s = String::with_capacity(v.len().min(MAX) + 3);
    for &b in v.iter().take(MAX) {
        match b {
            b'\\' => s.push_str("\\\\"),
            b' '..=b'~' => s.push(char::from(b)),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    if v.len() > MAX {
        s.push_str("...");
    }
    s
}
