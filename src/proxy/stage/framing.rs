//! Stage 1, framing (400): what must hold of every request before any policy is consulted.
//! HTTP/1 byte-level framing (bare LF, CL with TE, bad chunks) is refused earlier by
//! `proxy::guard`, before hyper parses; this stage checks the parsed head for both protocols.

use http::{header, Request, Version};

use crate::proxy::rejection::{FramingFault, Rejection};

pub fn check<B>(req: &Request<B>) -> Result<(), Rejection> {
    let hosts = req.headers().get_all(header::HOST).iter().count();
    if hosts > 1 {
        return Err(Rejection::Framing(FramingFault::DuplicateHost));
    }
    match req.version() {
        Version::HTTP_2 | Version::HTTP_3 => {
            // :authority is the host; a Host header, if sent, must agree (RFC 9113 8.3.1).
            let authority = req.uri().authority().map(|a| a.as_str());
            if let (Some(a), Some(h)) = (authority, req.headers().get(header::HOST)) {
                if !h.as_bytes().eq_ignore_ascii_case(a.as_bytes()) {
                    return Err(Rejection::Framing(FramingFault::DuplicateHost));
                }
            }
            if authority.is_none() && hosts == 0 {
                return Err(Rejection::Framing(FramingFault::MissingHost));
            }
        }
        Version::HTTP_11 if hosts == 0 => {
            return Err(Rejection::Framing(FramingFault::MissingHost))
        }
        _ => {}
    }
    if req.headers().contains_key(header::CONTENT_LENGTH)
        && req.headers().contains_key(header::TRANSFER_ENCODING)
    {
        return Err(Rejection::Framing(FramingFault::ConflictingLength));
    }
    Ok(())
}

/// The request's host, without checking it: `:authority` for HTTP/2, else the Host header.
pub fn host<B>(req: &Request<B>) -> Option<&str> {
    req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// Like `host`, on the parts of a request already taken apart.
pub fn host_of(parts: &http::request::Parts) -> Option<&str> {
    parts.uri.authority().map(|a| a.as_str()).or_else(|| {
        parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}
