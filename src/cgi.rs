//! The header block of `transform_output cgi`: header lines (`Status`, `Content-Type`, `Location`,
//! `Content-Length`, others), a blank line, then the body (as CGI, RFC 3875).

/// What the program said about its response.
#[derive(Debug, Default)]
pub struct Head {
    pub status: Option<u16>,
    pub content_type: Option<Vec<u8>>,
    pub location: Option<Vec<u8>>,
    pub content_length: Option<u64>,
    /// Other headers, passed on as they are.
    pub headers: Vec<(String, String)>,
}

/// The result of looking at what the program wrote so far.
#[derive(Debug)]
pub enum Parsed {
    /// No blank line yet.
    Incomplete,
    /// The header block, and how many bytes of the input it took (the body starts there).
    Done(Head, usize),
    /// Not a valid header block: the reason, for the log.
    Invalid(String),
}

/// Headers that belong to a connection, not to a response: a program may not set them.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
];

/// Parses the header block at the start of `input`.
pub fn parse(input: &[u8]) -> Parsed {
    let mut head = Head::default();
    let mut at = 0;
    loop {
        let Some(nl) = input[at..].iter().position(|&b| b == b'\n') else {
            return Parsed::Incomplete;
        };
        let mut line = &input[at..at + nl];
        at += nl + 1;
        if let Some(l) = line.strip_suffix(b"\r") {
            line = l;
        }
        if line.is_empty() {
            return Parsed::Done(head, at);
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Parsed::Invalid(format!("header line without a colon: \"{}\"", show(line)));
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        let token = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
        if name.is_empty() || !name.iter().all(token) {
            return Parsed::Invalid(format!("invalid header name \"{}\"", show(name)));
        }
        if value.iter().any(|&b| b < 0x20 && b != b'\t' || b == 0x7f) {
            return Parsed::Invalid(format!("control character in header \"{}\"", show(name)));
        }
        let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
        if HOP_BY_HOP.contains(&lower.as_str()) {
            return Parsed::Invalid(format!("hop-by-hop header \"{}\"", show(name)));
        }
        match lower.as_str() {
            "status" => {
                let code = value.get(..3).and_then(|d| std::str::from_utf8(d).ok());
                let code = code
                    .and_then(|d| d.parse::<u16>().ok())
                    .filter(|c| (100..600).contains(c));
                let Some(code) = code.filter(|_| value.len() == 3 || value[3] == b' ') else {
                    return Parsed::Invalid(format!("invalid Status \"{}\"", show(value)));
                };
                head.status = Some(code);
            }
            "content-type" => head.content_type = Some(value.to_vec()),
            "location" => head.location = Some(value.to_vec()),
            "content-length" => {
                let n = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok());
                let Some(n) = n.filter(|_| value.iter().all(u8::is_ascii_digit)) else {
                    return Parsed::Invalid(format!("invalid Content-Length \"{}\"", show(value)));
                };
                head.content_length = Some(n);
            }
            _ => head.headers.push((
                String::from_utf8_lossy(name).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            )),
        }
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b" \t".contains(b))
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b" \t".contains(b))
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// A printable, bounded rendering for log lines.
fn show(v: &[u8]) -> String {
    v.iter()
        .take(100)
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                (b as char).to_string()
            } else {
                format!("\\x{b:02x}")
            }
        })
        .collect()
}
