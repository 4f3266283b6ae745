//! The HTTP/1 framing guard (`ward::proxy::guard::Scanner`) on arbitrary byte streams.
//!
//! The stream is scanned three ways: in one call, one byte per call, and cut into pieces at
//! points derived from the input. All three must agree on the verdict and on where the refused
//! request began. Every head the scanner accepts is then checked on its own, independently of the
//! scanner: no bare LF or control byte, no obsolete folding, at most one Content-Length, never
//! Content-Length with Transfer-Encoding, Transfer-Encoding only `chunked` (HTTP/1.1), exactly one
//! Host on HTTP/1.1; where httparse (hyper's parser) reads the head, it must see the same. The
//! bytes the scanner skips as a body must be exactly what the head declared (Content-Length bytes,
//! or a complete chunked body), so the scanner and hyper never disagree on where the next request
//! starts.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ward::proxy::guard::{Fault, Scanner};

fuzz_target!(|data: &[u8]| check(data));

/// What an accepted head says about the body that follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

fn check(data: &[u8]) {
    // One byte per call: the finest split, and the reference for where each request starts.
    let mut s = Scanner::new();
    let mut req_start = 0usize;
    let mut body: Option<(usize, Framing)> = None;
    let mut bytewise: Result<(), (usize, Fault)> = Ok(());
    for (i, b) in data.iter().enumerate() {
        let heads = s.heads;
        if let Err((off, fault)) = s.feed(std::slice::from_ref(b)) {
            assert_eq!(off, 0, "a one-byte call cannot point past its own start");
            bytewise = Err((req_start, fault));
            break;
        }
        if s.heads > heads {
            assert_eq!(s.heads, heads + 1);
            let framing = check_head(&data[req_start..=i]);
            body = Some((i + 1, framing));
        }
        if s.in_head() {
            if let Some((head_end, framing)) = body.take() {
                // `head_end == i + 1` when the head ended the request: an empty body.
                check_body(&data[head_end..=i], framing);
                req_start = i + 1;
            }
        }
    }
    let heads = s.heads;
    let in_head = s.in_head();

    // One call.
    let mut whole = Scanner::new();
    assert_eq!(whole.feed(data), bytewise, "one call and one byte per call disagree");
    if bytewise.is_ok() {
        assert_eq!(whole.heads, heads);
        assert_eq!(whole.in_head(), in_head);
    }

    // Pieces cut where the input says (a cheap hash of it picks the cuts).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ data.len() as u64;
    for &b in data {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut split = Scanner::new();
    let mut pos = 0usize;
    let mut verdict = Ok(());
    while pos < data.len() {
        h = h.rotate_left(13).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5851_f42d;
        let len = 1 + (h % 64) as usize;
        let end = (pos + len).min(data.len());
        if let Err((off, fault)) = split.feed(&data[pos..end]) {
            assert!(off <= end - pos, "offset {off} outside the piece");
            verdict = Err((pos + off, fault));
            if let Err((start, _)) = bytewise {
                assert_eq!(off, start.saturating_sub(pos), "offset in a piece");
            }
            break;
        }
        pos = end;
    }
    match (verdict, bytewise) {
        (Ok(()), Ok(())) => assert_eq!(split.heads, heads),
        (Err((_, a)), Err((_, b))) => assert_eq!(a, b, "pieces and bytes disagree on the fault"),
        (a, b) => panic!("pieces {a:?} and bytes {b:?} disagree"),
    }
}

/// Checks one accepted head (leading empty lines included) without the scanner.
fn check_head(head: &[u8]) -> Framing {
    let mut rest = head;
    while let Some(r) = rest.strip_prefix(b"\r\n") {
        rest = r;
    }
    assert!(rest.ends_with(b"\r\n\r\n"), "an accepted head ends with an empty line");
    for (i, &b) in head.iter().enumerate() {
        match b {
            b'\n' => assert!(i > 0 && head[i - 1] == b'\r', "bare LF accepted"),
            b'\r' => assert!(head.get(i + 1) == Some(&b'\n'), "bare CR accepted"),
            b'\t' => {}
            0..=0x1f | 0x7f => panic!("control byte {b:#x} accepted"),
            _ => {}
        }
    }
    let lines: Vec<&[u8]> = rest[..rest.len() - 4].split(|&b| b == b'\n').collect();
    let request_line = lines[0].strip_suffix(b"\r").unwrap_or(lines[0]);
    let http11 = request_line.ends_with(b" HTTP/1.1");
    assert!(http11 || request_line.ends_with(b" HTTP/1.0"), "version");
    let (mut cl, mut te, mut hosts) = (Vec::new(), Vec::new(), 0);
    for line in &lines[1..] {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(!line.is_empty(), "an empty line inside an accepted head");
        assert!(line[0] != b' ' && line[0] != b'\t', "obsolete line folding accepted");
        let colon = line.iter().position(|&b| b == b':').expect("a header has a colon");
        let name = &line[..colon];
        assert!(!name.is_empty() && name.iter().all(|&b| is_tchar(b)), "header name");
        let value = trim(&line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            cl.push(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te.push(value);
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        }
    }
    assert!(cl.len() <= 1, "two Content-Length headers accepted");
    assert!(cl.is_empty() || te.is_empty(), "Content-Length with Transfer-Encoding accepted");
    assert!(te.len() <= 1, "two Transfer-Encoding headers accepted");
    if let Some(v) = te.first() {
        assert!(v.eq_ignore_ascii_case(b"chunked"), "Transfer-Encoding other than chunked");
        assert!(http11, "Transfer-Encoding on HTTP/1.0 accepted");
    }
    if let Some(v) = cl.first() {
        assert!(!v.is_empty() && v.iter().all(u8::is_ascii_digit), "Content-Length value");
    }
    assert!(hosts <= 1, "two Host headers accepted");
    assert!(!http11 || hosts == 1, "HTTP/1.1 without a Host accepted");

    // hyper's parser: where it reads the head, it must read the same framing.
    let mut headers = [httparse::EMPTY_HEADER; 300];
    let mut req = httparse::Request::new(&mut headers);
    if let Ok(httparse::Status::Complete(n)) = req.parse(rest) {
        assert_eq!(n, rest.len(), "httparse ends the head elsewhere");
        let count = |name: &str| req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).count();
        assert_eq!(count("content-length"), cl.len());
        assert_eq!(count("transfer-encoding"), te.len());
        assert_eq!(count("host"), hosts);
        assert_eq!(req.version, Some(u8::from(http11)));
    }

    match (cl.first(), te.first()) {
        (_, Some(_)) => Framing::Chunked,
        (Some(v), None) => {
            let n: u64 = std::str::from_utf8(v).unwrap().parse().expect("a length that fits");
            if n == 0 {
                Framing::None
            } else {
                Framing::Length(n)
            }
        }
        (None, None) => Framing::None,
    }
}

/// The bytes skipped as the body of a request must be what its head declared.
fn check_body(body: &[u8], framing: Framing) {
    match framing {
        Framing::None => assert!(body.is_empty(), "a body skipped without a length"),
        Framing::Length(n) => assert_eq!(body.len() as u64, n, "Content-Length body"),
        Framing::Chunked => {
            let used = chunked_len(body).expect("a complete chunked body");
            assert_eq!(used, body.len(), "chunked body ends elsewhere");
        }
    }
}

/// Length of one complete chunked body (chunks, last chunk, trailers, empty line), if `b` starts
/// with one.
fn chunked_len(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    loop {
        let eol = i + b[i..].windows(2).position(|w| w == b"\r\n")?;
        let line = &b[i..eol];
        let size = line.split(|&c| c == b';').next()?;
        let n = u64::from_str_radix(std::str::from_utf8(size).ok()?, 16).ok()?;
        i = eol + 2;
        if n == 0 {
            break;
        }
        i = i.checked_add(usize::try_from(n).ok()?)?;
        if b.get(i..i + 2)? != b"\r\n" {
            return None;
        }
        i += 2;
    }
    loop {
        let eol = i + b[i..].windows(2).position(|w| w == b"\r\n")?;
        let empty = eol == i;
        i = eol + 2;
        if empty {
            return Some(i);
        }
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim(v: &[u8]) -> &[u8] {
    let is_ws = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !is_ws(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !is_ws(b)).map_or(start, |e| e + 1);
    &v[start..end]
}
