//! The pooled programs' HTTP/1.1 pieces that are pure: the chunked-body decoder and the request
//! head (src/http1.rs), and the response head parser (src/cgi.rs's `parse_response`), included
//! as they are. The decoder is checked against an encoder written here: any data, cut into
//! chunks of any sizes, with extensions and trailers, fed in pieces split anywhere, decodes to
//! the data and stops exactly at the end of the body; damaged framing is refused.

#[allow(dead_code)]
#[path = "../src/http1.rs"]
mod http1;

#[allow(dead_code)]
#[path = "../src/cgi.rs"]
mod cgi;

use http1::Dechunk;
use proptest::prelude::*;

/// `data` chunked at `cuts` (sizes, cycled), with an extension on every other size line and
/// the given trailer lines.
fn encode(data: &[u8], cuts: &[usize], ext: bool, trailers: &[&str], upper: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = cuts[i % cuts.len()].clamp(1, rest.len());
        let size = if upper {
            format!("{n:X}")
        } else {
            format!("{n:x}")
        };
        out.extend_from_slice(size.as_bytes());
        if ext && i % 2 == 1 {
            out.extend_from_slice(b";name=\"va;lue\"");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
        i += 1;
    }
    out.extend_from_slice(b"0\r\n");
    for t in trailers {
        out.extend_from_slice(t.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Feeds `input` in pieces of `splits` sizes (cycled); returns the data, the bytes used, and
/// whether the body ended.
fn decode(input: &[u8], splits: &[usize]) -> Result<(Vec<u8>, usize, bool), &'static str> {
    let mut d = Dechunk::default();
    let mut data = Vec::new();
    let mut used = 0;
    let mut i = 0;
    while used < input.len() && !d.done() {
        let n = splits[i % splits.len()].clamp(1, input.len() - used);
        let mut piece = input[used..used + n].to_vec();
        let r = d.decode(&mut piece)?;
        data.extend_from_slice(&piece[..r.data]);
        used += r.used;
        assert!(
            r.used == n || d.done(),
            "a piece is used whole unless the body ended"
        );
        i += 1;
    }
    Ok((data, used, d.done()))
}

proptest! {
    #[test]
    fn any_chunking_decodes_to_the_data_and_stops_at_its_end(
        data in prop::collection::vec(any::<u8>(), 0..3000),
        cuts in prop::collection::vec(1usize..700, 1..8),
        splits in prop::collection::vec(1usize..900, 1..8),
        ext in any::<bool>(),
        upper in any::<bool>(),
        trailer in any::<bool>(),
        after in prop::collection::vec(any::<u8>(), 0..40),
    ) {
        let trailers: &[&str] = if trailer { &["X-Sum: 1", "X-Other: two"] } else { &[] };
        let body = encode(&data, &cuts, ext, trailers, upper);
        let mut input = body.clone();
        input.extend_from_slice(&after);
        let (out, used, done) = decode(&input, &splits).unwrap();
        prop_assert!(done);
        prop_assert_eq!(used, body.len(), "stops at the end of the body, not after");
        prop_assert_eq!(out, data);
    }

    #[test]
    fn a_cut_body_is_not_complete(
        data in prop::collection::vec(any::<u8>(), 1..2000),
        cuts in prop::collection::vec(1usize..500, 1..5),
        at in any::<prop::sample::Index>(),
    ) {
        let body = encode(&data, &cuts, false, &[], false);
        let cut = at.index(body.len());
        let (_, used, done) = decode(&body[..cut], &[64]).unwrap();
        prop_assert!(!done);
        prop_assert_eq!(used, cut);
    }
}

#[test]
fn broken_framing_is_refused() {
    for bad in [
        &b"x\r\n"[..],
        b"\r\n",
        b"5\r\nhelloXY",
        b"5\rX",
        b"1234567890abcdef1\r\n",
        b"-1\r\n",
        b" 5\r\nhello\r\n",
        b"0\r\n\rX",
    ] {
        let mut d = Dechunk::default();
        let mut buf = bad.to_vec();
        assert!(
            d.decode(&mut buf).is_err(),
            "{:?} was accepted",
            String::from_utf8_lossy(bad)
        );
    }
    // Bare LFs are tolerated, as nginx's own chunked parser tolerates them.
    let mut d = Dechunk::default();
    let mut buf = b"3\nabc\n0\n\n".to_vec();
    let r = d.decode(&mut buf).unwrap();
    assert!(d.done());
    assert_eq!(&buf[..r.data], b"abc");
}

#[test]
fn the_request_head_drops_the_connections_own_headers_and_sets_the_length() {
    let headers: Vec<(&[u8], &[u8])> = vec![
        (b"Host", b"example.com"),
        (b"Connection", b"keep-alive"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Content-Length", b"999"),
        (b"Expect", b"100-continue"),
        (b"X-Custom", b"a b"),
        (b"keep-alive", b"300"),
    ];
    let head = http1::request_head(b"POST", b"/up?x=1", headers.into_iter(), Some(12)).unwrap();
    assert_eq!(
        String::from_utf8(head).unwrap(),
        "POST /up?x=1 HTTP/1.1\r\nHost: example.com\r\nX-Custom: a b\r\nContent-Length: 12\r\n\r\n"
    );
    let head = http1::request_head(b"GET", b"/", core::iter::empty(), None).unwrap();
    assert_eq!(head, b"GET / HTTP/1.1\r\n\r\n");
    // Nothing that would break the framing is passed on.
    type Header<'a> = (&'a [u8], &'a [u8]);
    let bad: [(&[u8], &[u8], Header); 5] = [
        (b"GET", b"/a\r\nX: y", (b"A", b"b")),
        (b"GET", b"/a b", (b"A", b"b")),
        (b"GET", b"/", (b"A", b"b\r\nX-Injected: 1")),
        (b"GET", b"/", (b"A\n", b"b")),
        (b"GET\0", b"/", (b"A", b"b")),
    ];
    for (method, uri, header) in bad {
        assert!(http1::request_head(method, uri, core::iter::once(header), None).is_none());
    }
    assert!(http1::response_head(
        200,
        b"OK",
        b"text/html",
        core::iter::once((&b"L"[..], &b"/a\r\nX: 1"[..]))
    )
    .is_none());
    assert_eq!(
        http1::escape_raw(b"q=/a b\r\n#x%41"),
        b"q=/a%20b%0D%0A%23x%41"
    );
    assert_eq!(
        http1::escape_uri(b"/a b/\xc3\xa9?#\"%"),
        b"/a%20b/%C3%A9%3F%23%22%25"
    );
}

#[test]
fn response_heads_are_parsed_as_an_upstream_would() {
    use cgi::{parse_response, ParsedResponse};
    let done = |input: &[u8]| match parse_response(input) {
        ParsedResponse::Done(r, used) => (r, used),
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
    };
    let input = b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabc";
    let (r, used) = done(input);
    assert_eq!((r.head.status, r.head.content_length), (Some(201), Some(3)));
    assert_eq!(
        &input[used..],
        b"abc",
        "the body starts after the blank line"
    );
    assert_eq!(r.head.headers, vec![(b"X-A".to_vec(), b"b".to_vec())]);
    assert!(!r.chunked && !r.close);
    let (r, _) =
        done(b"HTTP/1.0 200\nTransfer-Encoding: Chunked\nConnection: keep-alive, close\n\n");
    assert!(r.chunked && r.close);
    assert!(
        r.head.headers.is_empty(),
        "connection headers are not passed on"
    );
    // Hop-by-hop headers of the connection are dropped, not refused (unlike a CGI block).
    let (r, _) = done(b"HTTP/1.1 200 OK\r\nKeep-Alive: 5\r\nUpgrade: h2c\r\nStatus: 404\r\n\r\n");
    assert!(r.head.headers.is_empty());
    assert_eq!(
        r.head.status,
        Some(200),
        "a Status header does not override the line"
    );
    assert_eq!(
        parse_response(b"HTTP/1.1 200 OK\r\nA: b\r\n"),
        ParsedResponse::Incomplete
    );
    assert_eq!(parse_response(b"HTT"), ParsedResponse::Incomplete);
    for bad in [
        &b"HTTP/1.1 100 Continue\r\n\r\n"[..],
        b"HTTP/1.1 600 X\r\n\r\n",
        b"HTTP/2 200\r\n\r\n",
        b"garbage\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
    ] {
        assert!(
            matches!(parse_response(bad), ParsedResponse::Invalid(_)),
            "{:?} was accepted",
            String::from_utf8_lossy(bad)
        );
    }
}
