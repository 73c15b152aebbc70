//! The CGI header parser (src/cgi.rs, included as it is: it is pure) against references written
//! here to be obviously right: a line splitter for the syntax (RFC 9110 token names, field values
//! without CR, LF, NUL or other controls but HTAB, no obs-fold, CRLF or LF line ends) and a
//! declarative model of the meaning (status, length, repeats, hidden and hop-by-hop headers).
//! Inputs are arbitrary bytes, bytes from a small alphabet of troublemakers, and generated
//! header blocks, well-formed and then damaged.

#[allow(dead_code)]
#[path = "../src/cgi.rs"]
mod cgi;

use cgi::{Fields, Head, Parsed, MAX_HEADERS};
use proptest::prelude::*;

// ---- The syntax reference -------------------------------------------------------------------

/// `(name, value)` pairs.
type FieldList = Vec<(Vec<u8>, Vec<u8>)>;

#[derive(Debug, PartialEq)]
enum Syntax {
    Incomplete,
    Done(FieldList, usize),
    Invalid,
}

fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// field-vchar, SP or HTAB.
fn value_byte(b: u8) -> bool {
    b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

fn trim(v: &[u8]) -> &[u8] {
    let ws = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !ws(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !ws(b)).map_or(start, |e| e + 1);
    &v[start..end]
}

/// Splits at LF, drops one CR before it, ends at the first empty line. A line without its LF
/// yet is Incomplete while it can still become a valid line, Invalid once it cannot.
fn reference(input: &[u8]) -> Syntax {
    let mut fields = Vec::new();
    let mut at = 0;
    loop {
        let rest = &input[at..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            return if could_start_a_line(rest) {
                Syntax::Incomplete
            } else {
                Syntax::Invalid
            };
        };
        at += nl + 1;
        let line = &rest[..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return Syntax::Done(fields, at);
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Syntax::Invalid;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| tchar(b)) {
            return Syntax::Invalid;
        }
        if !value.iter().all(|&b| value_byte(b)) {
            return Syntax::Invalid;
        }
        fields.push((name.to_vec(), trim(value).to_vec()));
        if fields.len() > MAX_HEADERS {
            return Syntax::Invalid;
        }
    }
}

/// Whether `part`, a line without its LF, is the start of a valid line or of the blank line.
fn could_start_a_line(part: &[u8]) -> bool {
    // A CR at the very end may be the start of CRLF: after a value, or as the blank line.
    let (part, cr) = match part.strip_suffix(b"\r") {
        Some(p) => (p, true),
        None => (part, false),
    };
    match part.iter().position(|&b| b == b':') {
        None if cr => part.is_empty(),
        None => part.iter().all(|&b| tchar(b)),
        Some(colon) => {
            colon > 0
                && part[..colon].iter().all(|&b| tchar(b))
                && part[colon + 1..].iter().all(|&b| value_byte(b))
        }
    }
}

fn syntax_of(input: &[u8]) -> Syntax {
    match cgi::fields(input) {
        Fields::Incomplete => Syntax::Incomplete,
        Fields::Done(f, used) => Syntax::Done(
            f.into_iter()
                .map(|(n, v)| (n.to_vec(), v.to_vec()))
                .collect(),
            used,
        ),
        Fields::Invalid(why) => {
            assert!(!why.is_empty());
            Syntax::Invalid
        }
    }
}

// ---- The meaning reference ------------------------------------------------------------------

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
const HIDDEN: &[&str] = &[
    "x-accel-expires",
    "x-accel-redirect",
    "x-accel-limit-rate",
    "x-accel-buffering",
    "x-accel-charset",
];
/// Taken out of the list into their own fields; a repeat is an error.
const DECISIVE: &[&str] = &["status", "location", "content-length"];
/// A repeat is dropped (with a warning).
const SINGLE: &[&str] = &[
    "content-type",
    "date",
    "etag",
    "server",
    "last-modified",
    "expires",
    "refresh",
];

fn lower(name: &[u8]) -> String {
    String::from_utf8_lossy(name).to_ascii_lowercase()
}

fn valid_status(v: &[u8]) -> Option<u16> {
    let (code, rest) = (v.get(..3)?, &v[3..]);
    let ok = code.iter().all(u8::is_ascii_digit)
        && (rest.is_empty() || rest[0] == b' ')
        && (b'2'..=b'5').contains(&code[0]);
    ok.then(|| std::str::from_utf8(code).ok()?.parse().ok())
        .flatten()
}

fn valid_length(v: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(v).ok()?;
    let n: u64 = s.parse().ok()?;
    (s.bytes().all(|b| b.is_ascii_digit()) && n <= i64::MAX as u64).then_some(n)
}

/// The head a field list means: Err for an invalid one (which reason is not compared).
fn model(fields: &[(Vec<u8>, Vec<u8>)]) -> Result<Head, ()> {
    let named = |n: &str| -> Vec<&Vec<u8>> {
        fields
            .iter()
            .filter(|(k, _)| lower(k) == n)
            .map(|(_, v)| v)
            .collect()
    };
    if fields
        .iter()
        .any(|(k, _)| HOP_BY_HOP.contains(&lower(k).as_str()))
    {
        return Err(());
    }
    if DECISIVE.iter().any(|n| named(n).len() > 1) {
        return Err(());
    }
    let status = match named("status").first() {
        Some(v) => Some(valid_status(v).ok_or(())?),
        None => None,
    };
    let content_length = match named("content-length").first() {
        Some(v) => Some(valid_length(v).ok_or(())?),
        None => None,
    };
    let mut headers = Vec::new();
    let mut warnings = Vec::new();
    for (i, (k, v)) in fields.iter().enumerate() {
        let l = lower(k);
        let earlier = fields[..i].iter().any(|(k2, _)| lower(k2) == l);
        if HIDDEN.contains(&l.as_str()) || DECISIVE.contains(&l.as_str()) || l == "content-type" {
            continue;
        }
        if SINGLE.contains(&l.as_str()) && earlier {
            warnings.push(l);
            continue;
        }
        headers.push((k.clone(), v.clone()));
    }
    warnings.extend(named("content-type").iter().skip(1).map(|_| "ct".into()));
    Ok(Head {
        status,
        content_type: named("content-type").first().map(|v| v.to_vec()),
        location: named("location").first().map(|v| v.to_vec()),
        content_length,
        headers,
        warnings,
    })
}

// ---- Inputs ---------------------------------------------------------------------------------

/// Bytes that break header blocks, and a few that make them.
fn troublemaker() -> impl Strategy<Value = u8> {
    prop::sample::select(b"aZ-:: \t\t\r\r\n\n\x00\x01\x7f\x80\xff\"(\\".to_vec())
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    let known = prop::sample::select(vec![
        "Status",
        "Content-Type",
        "Location",
        "Content-Length",
        "Date",
        "ETag",
        "Server",
        "Last-Modified",
        "Expires",
        "Refresh",
        "Set-Cookie",
        "Cache-Control",
        "X-Accel-Redirect",
        "X-Accel-Buffering",
        "X-Accel-Other",
        "Transfer-Encoding",
        "Connection",
        "TE",
        "X-Test",
    ]);
    prop_oneof![
        4 => (known, any::<u64>()).prop_map(|(n, case)| {
            // Any mix of upper and lower case.
            n.bytes()
                .enumerate()
                .map(|(i, b)| if case >> (i % 64) & 1 == 1 { b.to_ascii_uppercase() } else { b.to_ascii_lowercase() })
                .collect()
        }),
        1 => "[!#$%&'*+.^_`|~0-9A-Za-z-]{1,12}".prop_map(String::into_bytes),
    ]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(vec![
            "200",
            "404 Not Found",
            "100",
            "199",
            "600",
            "2000",
            "",
            "5",
            "18446744073709551615",
            "9223372036854775807",
            "+5",
            "text/html; charset=utf-8",
            "/local",
            "\"v1\"",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        prop::collection::vec(
            prop_oneof![Just(b' '), Just(b'\t'), 0x21u8..0x7f, 0x80u8..=0xff],
            0..20
        ),
    ]
}

/// A well-formed block: fields with any spacing around values, CRLF or LF ends, then a body.
fn block() -> impl Strategy<Value = (Vec<u8>, FieldList)> {
    (
        prop::collection::vec(
            (name(), value(), 0..3usize, 0..3usize, any::<bool>()),
            0..12,
        ),
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(|(lines, crlf, body)| {
            let mut out = Vec::new();
            let mut fields = Vec::new();
            for (n, v, before, after, crlf) in lines {
                out.extend_from_slice(&n);
                out.push(b':');
                out.extend(std::iter::repeat_n(b' ', before));
                out.extend_from_slice(&v);
                out.extend(std::iter::repeat_n(b'\t', after));
                out.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
                fields.push((n, trim(&v).to_vec()));
            }
            out.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
            out.extend_from_slice(&body);
            (out, fields)
        })
}

// ---- Properties -----------------------------------------------------------------------------

/// What holds of any answer of `parse`, whatever the input.
fn check_parse(input: &[u8]) {
    let syntax = reference(input);
    match cgi::parse(input) {
        Parsed::Incomplete => assert_eq!(syntax, Syntax::Incomplete),
        Parsed::Invalid(why) => {
            assert!(!why.is_empty() && why.chars().count() < 600, "{why}");
            assert!(why.bytes().all(|b| (0x20..0x7f).contains(&b)), "{why:?}");
            if let Syntax::Done(fields, _) = &syntax {
                assert!(model(fields).is_err(), "{why}: {fields:?}");
            } else {
                assert_eq!(syntax, Syntax::Invalid, "{why}");
            }
        }
        Parsed::Done(head, used) => {
            let Syntax::Done(fields, ref_used) = &syntax else {
                panic!("parse accepted what the reference does not: {syntax:?}");
            };
            assert_eq!(used, *ref_used);
            assert!(input[..used].ends_with(b"\n"));
            let mut expected = model(fields).expect("the model accepts it");
            // The model counts warnings, it does not word them.
            assert_eq!(head.warnings.len(), expected.warnings.len());
            expected.warnings = head.warnings.clone();
            assert_eq!(head, expected);
            // What reaches nginx: token names, values without CR, LF, NUL or other controls.
            for (n, v) in &head.headers {
                assert!(!n.is_empty() && n.iter().all(|&b| tchar(b)), "{n:?}");
                assert!(v.iter().all(|&b| value_byte(b)), "{v:?}");
            }
            for v in [&head.content_type, &head.location].into_iter().flatten() {
                assert!(v.iter().all(|&b| value_byte(b)), "{v:?}");
            }
            assert!(head.status.is_none_or(|s| (200..=599).contains(&s)));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes(input in prop::collection::vec(any::<u8>(), 0..300)) {
        prop_assert_eq!(syntax_of(&input), reference(&input));
        check_parse(&input);
    }

    #[test]
    fn troublesome_bytes(input in prop::collection::vec(troublemaker(), 0..60)) {
        prop_assert_eq!(syntax_of(&input), reference(&input));
        check_parse(&input);
        // httparse's refusals are explained by the line that breaks the syntax.
        if let Fields::Invalid(why) = cgi::fields(&input) {
            prop_assert_ne!(why, "invalid header block");
        }
    }

    #[test]
    fn well_formed_blocks((input, fields) in block()) {
        let Syntax::Done(got, used) = syntax_of(&input) else {
            panic!("a well-formed block refused: {:?}", cgi::fields(&input));
        };
        prop_assert_eq!(&got, &fields);
        prop_assert_eq!(&syntax_of(&input[..used]), &Syntax::Done(fields, used));
        check_parse(&input);
        // Every cut short of the blank line is Incomplete.
        for cut in 0..used {
            prop_assert_eq!(cgi::parse(&input[..cut]), Parsed::Incomplete);
        }
    }

    #[test]
    fn damaged_blocks(
        (input, _) in block(),
        at in any::<prop::sample::Index>(),
        byte in troublemaker(),
        insert in any::<bool>(),
    ) {
        let mut input = input;
        if !input.is_empty() {
            let i = at.index(input.len());
            if insert { input.insert(i, byte) } else { input[i] = byte }
        }
        prop_assert_eq!(syntax_of(&input), reference(&input));
        check_parse(&input);
    }
}

// ---- Cases worth naming ---------------------------------------------------------------------

fn done(input: &[u8]) -> (Head, usize) {
    match cgi::parse(input) {
        Parsed::Done(head, used) => (head, used),
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
    }
}

fn invalid(input: &[u8]) -> String {
    match cgi::parse(input) {
        Parsed::Invalid(why) => why,
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
    }
}

#[test]
fn lf_only_line_ends_are_cgi() {
    let (head, used) = done(b"Content-Length: 5\n\nhello");
    assert_eq!((head.content_length, used), (Some(5), 19));
    let (head, used) = done(b"\nbody");
    assert_eq!((head, used), (Head::default(), 1));
}

#[test]
fn status_is_a_final_status() {
    for s in [
        "100",
        "101 Switching Protocols",
        "199",
        "600",
        "099",
        "20",
        "2000",
        "20x",
        "-200",
    ] {
        let why = invalid(format!("Status: {s}\r\n\r\n").as_bytes());
        assert_eq!(why, format!("invalid Status \"{s}\""));
    }
    for (s, code) in [("200", 200), ("304", 304), ("599 Whatever", 599)] {
        assert_eq!(
            done(format!("Status: {s}\r\n\r\n").as_bytes()).0.status,
            Some(code)
        );
    }
}

#[test]
fn repeats() {
    assert_eq!(
        invalid(b"Content-Length: 1\r\ncontent-length: 1\r\n\r\n"),
        "duplicate header line: \"content-length: 1\", previous value: \"Content-Length: 1\""
    );
    assert!(invalid(b"Location: /a\r\nLocation: /b\r\n\r\n").starts_with("duplicate header line"));
    let (head, _) = done(b"Date: a\r\nSet-Cookie: 1\r\nDATE: b\r\nSet-Cookie: 2\r\n\r\n");
    assert_eq!(
        head.headers,
        [
            (b"Date".to_vec(), b"a".to_vec()),
            (b"Set-Cookie".to_vec(), b"1".to_vec()),
            (b"Set-Cookie".to_vec(), b"2".to_vec()),
        ]
    );
    assert_eq!(
        head.warnings,
        ["duplicate header line: \"DATE: b\", previous value: \"Date: a\", ignored"]
    );
}

#[test]
fn hidden_and_hop_by_hop() {
    let (head, _) =
        done(b"X-Accel-Redirect: /x\r\nx-accel-buffering: no\r\nX-Accel-Foo: 1\r\n\r\n");
    assert_eq!(head.headers, [(b"X-Accel-Foo".to_vec(), b"1".to_vec())]);
    assert_eq!(
        invalid(b"Keep-Alive: 1\r\n\r\n"),
        "hop-by-hop header \"Keep-Alive\""
    );
}

#[test]
fn reasons_name_the_line() {
    assert_eq!(
        invalid(b"X-A: a\rX-B: b\r\n\r\n"),
        "control character in header \"X-A\""
    );
    assert_eq!(
        invalid(b"X-A: a\x00\r\n\r\n"),
        "control character in header \"X-A\""
    );
    assert_eq!(
        invalid(b"X-A: a\r\n X-B: b\r\n\r\n"),
        "obsolete line folding: \" X-B: b\""
    );
    assert_eq!(invalid(b"X-A : a\r\n\r\n"), "invalid header name \"X-A \"");
    assert_eq!(invalid(b": a\r\n\r\n"), "invalid header name \"\"");
    assert_eq!(
        invalid(b"not a header\r\n\r\n"),
        "header line without a colon: \"not a header\""
    );
    // The reason for a line still arriving.
    assert_eq!(
        invalid(b"X-\x01"),
        "header line without a colon: \"X-\\x01\""
    );
    let many = "X: y\r\n".repeat(MAX_HEADERS + 1);
    assert_eq!(invalid(many.as_bytes()), "more than 100 header lines");
    assert!(matches!(
        cgi::parse("X: y\r\n".repeat(MAX_HEADERS).as_bytes()),
        Parsed::Incomplete
    ));
    assert_eq!(
        done(format!("{}\r\n", "X: y\r\n".repeat(MAX_HEADERS)).as_bytes())
            .0
            .headers
            .len(),
        MAX_HEADERS
    );
}

#[test]
fn values_stay_bytes() {
    let (head, _) = done(b"X-B: caf\xc3\xa9 \xff\t\x80 \r\nContent-Type: a/b\xfe\r\n\r\n");
    assert_eq!(
        head.headers,
        [(b"X-B".to_vec(), b"caf\xc3\xa9 \xff\t\x80".to_vec())]
    );
    assert_eq!(head.content_type.as_deref(), Some(&b"a/b\xfe"[..]));
}

#[test]
fn show_is_printable_and_bounded() {
    assert_eq!(
        cgi::show(b"a\\b\r\n\x00\xff\""),
        "a\\\\b\\x0d\\x0a\\x00\\xff\""
    );
    let long = cgi::show(&[b'\x01'; 500]);
    assert_eq!(long.len(), 100 * 4 + 3);
    assert!(long.ends_with("..."));
}
