//! Request smuggling and malformed framing: refused with 400 before anything reaches the upstream.

mod support;

use support::{start, BASIC};

#[tokio::test]
async fn smuggling_attempts_never_reach_the_upstream() {
    let p = start(BASIC).await;
    let cases: [(&str, &[u8]); 11] = [
        ("CL then TE", b"POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX"),
        ("TE then CL", b"POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nX"),
        ("obfuscated TE", b"POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
        ("TE list", b"POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
        ("space before colon", b"POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
        ("two TE headers", b"POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n"),
        ("bare LF", b"GET /a HTTP/1.1\nHost: localhost\n\n"),
        ("NUL in header", b"GET /a HTTP/1.1\r\nHost: localhost\r\nX-A: a\x00b\r\n\r\n"),
        ("missing Host", b"GET /a HTTP/1.1\r\nX-A: 1\r\n\r\n"),
        ("duplicate Host", b"GET /a HTTP/1.1\r\nHost: localhost\r\nHost: evil\r\n\r\n"),
        ("two Content-Lengths", b"POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
    ];
    for (name, bytes) in cases {
        let resp = p.raw(bytes).await;
        assert!(
            resp.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{name}: {resp}"
        );
        assert!(
            resp.contains("application/problem+json")
                && resp.contains("urn:ward:problem:malformed-request"),
            "{name}: {resp}"
        );
        assert!(
            resp.contains("x-content-type-options: nosniff"),
            "{name}: security headers on guard answers: {resp}"
        );
    }
    assert_eq!(p.upstream.count(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn invalid_chunk_sizes_never_reach_the_upstream() {
    let p = start(BASIC).await;
    for bytes in [
        &b"POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"[..],
        &b"POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n"[..],
        &b"POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nhello\r\n0\r\n\r\n"[..],
    ] {
        let resp = p.raw(bytes).await;
        assert!(
            resp.starts_with("HTTP/1.1 400 Bad Request\r\n")
                && resp.contains("urn:ward:problem:malformed-request"),
            "{resp}"
        );
    }
    assert_eq!(p.upstream.count(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn a_smuggled_second_request_is_cut_off_after_the_first() {
    let p = start(BASIC).await;
    let resp = p.raw(b"POST /first HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\nGET /smuggled HTTP/1.1\nHost: localhost\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("HTTP/1.1 400 Bad Request"), "{resp}");
    assert_eq!(p.upstream.count(), 1);
    assert_eq!(p.upstream.last().path, "/first");
}
