//! `Rejection`: every way the proxy answers a request by itself. It is the only type that turns
//! into a proxy-made response, through one exhaustive `match` (no `_` arm: a new variant forces
//! a decision on its status, problem type and extra headers). Bodies are RFC 9457
//! `application/problem+json` with a stable `type`, a short title and the request id; causes go to
//! the logs only. A refused credential gets the same body whatever the cause, so an attacker learns
//! nothing from it.

use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderName, HeaderValue, StatusCode};

use crate::identity::jwt::TokenFault;

/// Why a framing check refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingFault {
    MissingHost,
    DuplicateHost,
    ConflictingLength,
    BadTransferEncoding,
    BadContentLength,
    BadChunk,
    BareLineFeed,
    ControlCharacter,
    ObsoleteLineFolding,
    MalformedHead,
}

impl FramingFault {
    pub fn as_str(self) -> &'static str {
        match self {
            FramingFault::MissingHost => "missing_host",
            FramingFault::DuplicateHost => "duplicate_host",
            FramingFault::ConflictingLength => "content_length_with_transfer_encoding",
            FramingFault::BadTransferEncoding => "bad_transfer_encoding",
            FramingFault::BadContentLength => "bad_content_length",
            FramingFault::BadChunk => "bad_chunk",
            FramingFault::BareLineFeed => "bare_line_feed",
            FramingFault::ControlCharacter => "control_character",
            FramingFault::ObsoleteLineFolding => "obsolete_line_folding",
            FramingFault::MalformedHead => "malformed_head",
        }
    }
}

/// Why authentication refused a request (all 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFault {
    /// No credentials on a route that requires them.
    Missing,
    /// Two Authorization headers, a token in the query string where not allowed, a bearer
    /// token and an API key together, or a scheme other than Bearer.
    AmbiguousCredentials,
    /// A bearer token that did not verify.
    Token(TokenFault),
    /// A bearer token from no issuer the route accepts.
    UnknownIssuer,
    /// An API key that matches no stored hash.
    UnknownApiKey,
    /// A verified token that was revoked (by its id, its session or its subject).
    Revoked(crate::state::revocation::Kind),
}

impl AuthFault {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFault::Missing => "missing",
            AuthFault::AmbiguousCredentials => "ambiguous_credentials",
            AuthFault::Token(t) => t.as_str(),
            AuthFault::UnknownIssuer => "unknown_issuer",
            AuthFault::UnknownApiKey => "unknown_api_key",
            AuthFault::Revoked(k) => match k {
                crate::state::revocation::Kind::Token => "revoked_token",
                crate::state::revocation::Kind::Session => "revoked_session",
                crate::state::revocation::Kind::Subject => "revoked_subject",
            },
        }
    }
}

/// Which authorization rule refused a request (all 403).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forbidden {
    Role,
    Scope,
    Claim,
    Tenant,
}

impl Forbidden {
    pub fn as_str(self) -> &'static str {
        match self {
            Forbidden::Role => "role",
            Forbidden::Scope => "scope",
            Forbidden::Claim => "claim",
            Forbidden::Tenant => "tenant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, strum::EnumDiscriminants)]
#[strum_discriminants(name(RejectionKind), derive(strum::EnumIter))]
pub enum Rejection {
    Framing(FramingFault),
    BadBody,
    RequestTimeout,
    NoRoute,
    Denied(StatusCode),
    MethodNotAllowed,
    UriTooLong,
    TooManyHeaders,
    HeaderTooLarge,
    HeadersTooLarge,
    UnsupportedMediaType,
    BodyTooLarge,
    RateLimited {
        limit: Arc<str>,
        retry_after: Duration,
    },
    /// A limit whose store (Redis) is unavailable, with `on_redis_error: deny`.
    RateLimitUnavailable {
        limit: Arc<str>,
        retry_after: Duration,
    },
    CorsDenied,
    Unauthorized(AuthFault),
    Forbidden(Forbidden),
    /// The keys that would verify the token have never loaded (the issuer's JWKS URL has not
    /// answered since start): not the client's fault, so 503 and not 401.
    AuthUnavailable,
    /// This replica has never loaded the revocations and the policy says `fail_closed`.
    RevocationUnavailable,
    /// A refresh token presented a second time (or while its first use is in flight).
    RefreshTokenReused,
    /// Too many failed logins for this identity or client IP, or too soon after the last one.
    LoginLocked {
        retry_after: Duration,
    },
    /// A refresh or login body that is not JSON, lacks the field, or has it twice.
    BadCredentialBody,
    /// The refresh-token or lockout store is unavailable and the rule says `deny`.
    SessionStoreUnavailable,
    UpstreamUnavailable,
    UpstreamTimeout,
    /// The upstream's circuit breaker is open: answered at once, without contacting it.
    UpstreamCircuitOpen {
        retry_after: Duration,
    },
    /// More requests in flight to the upstream than its `max_concurrent`: shed at once.
    UpstreamOverloaded,
}

const BEARER: HeaderValue = HeaderValue::from_static("Bearer realm=\"ward\"");
const BEARER_INVALID: HeaderValue =
    HeaderValue::from_static("Bearer realm=\"ward\", error=\"invalid_token\"");

impl Rejection {
    /// Status, stable problem slug and title.
    pub fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Rejection::Framing(_) => (
                StatusCode::BAD_REQUEST,
                "malformed-request",
                "Malformed request",
            ),
            Rejection::BadBody => (
                StatusCode::BAD_REQUEST,
                "malformed-body",
                "Malformed request body",
            ),
            Rejection::RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "request-timeout",
                "Request body not received in time",
            ),
            Rejection::NoRoute => (
                StatusCode::NOT_FOUND,
                "no-route",
                "No route for this request",
            ),
            Rejection::Denied(s) => (*s, "denied", "Request denied by policy"),
            Rejection::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed on this route",
            ),
            Rejection::UriTooLong => (StatusCode::URI_TOO_LONG, "uri-too-long", "URI too long"),
            Rejection::TooManyHeaders => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too-many-headers",
                "Too many request headers",
            ),
            Rejection::HeaderTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "header-too-large",
                "A request header is too large",
            ),
            Rejection::HeadersTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers-too-large",
                "Request headers too large",
            ),
            Rejection::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Content type not accepted on this route",
            ),
            Rejection::BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Request body too large",
            ),
            Rejection::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
            ),
            Rejection::RateLimitUnavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "rate-limit-unavailable",
                "Rate limiting is temporarily unavailable",
            ),
            Rejection::CorsDenied => (
                StatusCode::FORBIDDEN,
                "cors-denied",
                "Cross-origin request not allowed",
            ),
            Rejection::Unauthorized(AuthFault::Missing) => (
                StatusCode::UNAUTHORIZED,
                "authentication-required",
                "Authentication required",
            ),
            Rejection::Unauthorized(
                AuthFault::AmbiguousCredentials
                | AuthFault::Token(_)
                | AuthFault::UnknownIssuer
                | AuthFault::UnknownApiKey
                | AuthFault::Revoked(_),
            ) => (
                StatusCode::UNAUTHORIZED,
                "invalid-credentials",
                "Invalid or expired credentials",
            ),
            Rejection::Forbidden(_) => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "Not allowed for this caller",
            ),
            Rejection::AuthUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "auth-unavailable",
                "Authentication is temporarily unavailable",
            ),
            Rejection::RevocationUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "revocation-unavailable",
                "Token revocation is temporarily unavailable",
            ),
            Rejection::RefreshTokenReused => (
                StatusCode::UNAUTHORIZED,
                "refresh-token-reused",
                "Refresh token already used; the session is revoked",
            ),
            Rejection::LoginLocked { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-attempts",
                "Too many attempts; try again later",
            ),
            Rejection::BadCredentialBody => (
                StatusCode::BAD_REQUEST,
                "invalid-credential-request",
                "The request body does not carry the expected credential fields",
            ),
            Rejection::SessionStoreUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "session-store-unavailable",
                "Session checks are temporarily unavailable",
            ),
            Rejection::UpstreamUnavailable => (
                StatusCode::BAD_GATEWAY,
                "upstream-unavailable",
                "Upstream unavailable",
            ),
            Rejection::UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream-timeout",
                "Upstream timed out",
            ),
            Rejection::UpstreamCircuitOpen { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream-circuit-open",
                "Upstream failing; not contacted for now",
            ),
            Rejection::UpstreamOverloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream-overloaded",
                "Upstream at capacity",
            ),
        }
    }

    /// Headers this answer carries besides the problem body's: RFC 6750 `WWW-Authenticate` on a
    /// 401, `Retry-After` on a 429 or 503, `Connection: close` when the request body was not
    /// read to its end (the connection cannot carry another request).
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let retry = |d: &Duration| {
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            (header::RETRY_AFTER, HeaderValue::from(secs.max(1)))
        };
        let close = || (header::CONNECTION, HeaderValue::from_static("close"));
        match self {
            Rejection::RateLimited { retry_after, .. }
            | Rejection::RateLimitUnavailable { retry_after, .. } => vec![retry(retry_after)],
            Rejection::LoginLocked { retry_after } => vec![retry(retry_after)],
            Rejection::UpstreamCircuitOpen { retry_after } => vec![retry(retry_after)],
            Rejection::UpstreamOverloaded => vec![retry(&Duration::from_secs(1))],
            Rejection::AuthUnavailable
            | Rejection::RevocationUnavailable
            | Rejection::SessionStoreUnavailable => vec![retry(&Duration::from_secs(5))],
            Rejection::RefreshTokenReused => vec![(header::WWW_AUTHENTICATE, BEARER_INVALID)],
            Rejection::Unauthorized(AuthFault::Missing) => {
                vec![(header::WWW_AUTHENTICATE, BEARER)]
            }
            Rejection::Unauthorized(
                AuthFault::AmbiguousCredentials
                | AuthFault::Token(_)
                | AuthFault::UnknownIssuer
                | AuthFault::UnknownApiKey
                | AuthFault::Revoked(_),
            ) => vec![(header::WWW_AUTHENTICATE, BEARER_INVALID)],
            Rejection::BodyTooLarge | Rejection::BadBody | Rejection::RequestTimeout => {
                vec![close()]
            }
            Rejection::Framing(_)
            | Rejection::NoRoute
            | Rejection::Denied(_)
            | Rejection::MethodNotAllowed
            | Rejection::UriTooLong
            | Rejection::TooManyHeaders
            | Rejection::HeaderTooLarge
            | Rejection::HeadersTooLarge
            | Rejection::UnsupportedMediaType
            | Rejection::CorsDenied
            | Rejection::Forbidden(_)
            | Rejection::BadCredentialBody
            | Rejection::UpstreamUnavailable
            | Rejection::UpstreamTimeout => Vec::new(),
        }
    }

    /// The reason logged with the decision (and the shadow rule name).
    pub fn reason(&self) -> String {
        match self {
            Rejection::Framing(f) => format!("framing:{}", f.as_str()),
            Rejection::RateLimited { limit, .. } => format!("rate_limited:{limit}"),
            Rejection::RateLimitUnavailable { limit, .. } => {
                format!("rate_limit_unavailable:{limit}")
            }
            Rejection::Unauthorized(f) => format!("unauthorized:{}", f.as_str()),
            Rejection::Forbidden(f) => format!("forbidden:{}", f.as_str()),
            Rejection::BadBody
            | Rejection::RequestTimeout
            | Rejection::NoRoute
            | Rejection::Denied(_)
            | Rejection::MethodNotAllowed
            | Rejection::UriTooLong
            | Rejection::TooManyHeaders
            | Rejection::HeaderTooLarge
            | Rejection::HeadersTooLarge
            | Rejection::UnsupportedMediaType
            | Rejection::BodyTooLarge
            | Rejection::CorsDenied
            | Rejection::AuthUnavailable
            | Rejection::RevocationUnavailable
            | Rejection::RefreshTokenReused
            | Rejection::LoginLocked { .. }
            | Rejection::BadCredentialBody
            | Rejection::SessionStoreUnavailable
            | Rejection::UpstreamUnavailable
            | Rejection::UpstreamTimeout
            | Rejection::UpstreamCircuitOpen { .. }
            | Rejection::UpstreamOverloaded => self.parts().1.to_owned(),
        }
    }

    /// The answer: the status, `application/problem+json`, this rejection's own headers.
    pub fn to_response(
        &self,
        request_id: &http::HeaderValue,
    ) -> http::Response<super::upstream::ProxyBody> {
        let (status, _, _) = self.parts();
        let body = self.body(request_id.to_str().unwrap_or("-"));
        let mut r = http::Response::new(super::upstream::full(body));
        *r.status_mut() = status;
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/problem+json"),
        );
        for (n, v) in self.headers() {
            h.insert(n, v);
        }
        r
    }

    /// The problem+json body.
    pub fn body(&self, request_id: &str) -> String {
        let (status, slug, title) = self.parts();
        serde_json::json!({
            "type": format!("urn:ward:problem:{slug}"),
            "title": title,
            "status": status.as_u16(),
            "request_id": request_id,
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::IntoEnumIterator;

    /// One value of each kind; the match has no `_` arm, so a new variant must be added here.
    fn example(kind: RejectionKind) -> Rejection {
        match kind {
            RejectionKind::Framing => Rejection::Framing(FramingFault::BareLineFeed),
            RejectionKind::BadBody => Rejection::BadBody,
            RejectionKind::RequestTimeout => Rejection::RequestTimeout,
            RejectionKind::NoRoute => Rejection::NoRoute,
            RejectionKind::Denied => Rejection::Denied(StatusCode::FORBIDDEN),
            RejectionKind::MethodNotAllowed => Rejection::MethodNotAllowed,
            RejectionKind::UriTooLong => Rejection::UriTooLong,
            RejectionKind::TooManyHeaders => Rejection::TooManyHeaders,
            RejectionKind::HeaderTooLarge => Rejection::HeaderTooLarge,
            RejectionKind::HeadersTooLarge => Rejection::HeadersTooLarge,
            RejectionKind::UnsupportedMediaType => Rejection::UnsupportedMediaType,
            RejectionKind::BodyTooLarge => Rejection::BodyTooLarge,
            RejectionKind::RateLimited => Rejection::RateLimited {
                limit: "x".into(),
                retry_after: Duration::from_millis(1500),
            },
            RejectionKind::RateLimitUnavailable => Rejection::RateLimitUnavailable {
                limit: "x".into(),
                retry_after: Duration::from_secs(2),
            },
            RejectionKind::CorsDenied => Rejection::CorsDenied,
            RejectionKind::Unauthorized => Rejection::Unauthorized(AuthFault::Missing),
            RejectionKind::Forbidden => Rejection::Forbidden(Forbidden::Role),
            RejectionKind::AuthUnavailable => Rejection::AuthUnavailable,
            RejectionKind::RevocationUnavailable => Rejection::RevocationUnavailable,
            RejectionKind::RefreshTokenReused => Rejection::RefreshTokenReused,
            RejectionKind::LoginLocked => Rejection::LoginLocked {
                retry_after: Duration::from_secs(3),
            },
            RejectionKind::BadCredentialBody => Rejection::BadCredentialBody,
            RejectionKind::SessionStoreUnavailable => Rejection::SessionStoreUnavailable,
            RejectionKind::UpstreamUnavailable => Rejection::UpstreamUnavailable,
            RejectionKind::UpstreamTimeout => Rejection::UpstreamTimeout,
            RejectionKind::UpstreamCircuitOpen => Rejection::UpstreamCircuitOpen {
                retry_after: Duration::from_secs(4),
            },
            RejectionKind::UpstreamOverloaded => Rejection::UpstreamOverloaded,
        }
    }

    #[test]
    fn problem_bodies_carry_type_status_and_request_id_only() {
        let b: serde_json::Value =
            serde_json::from_str(&Rejection::BodyTooLarge.body("r1")).unwrap();
        assert_eq!(b["type"], "urn:ward:problem:body-too-large");
        assert_eq!(b["status"], 413);
        assert_eq!(b["request_id"], "r1");
        assert_eq!(b.as_object().unwrap().len(), 4);
    }

    #[test]
    fn every_rejection_has_an_error_status_and_a_distinct_problem_type() {
        let mut slugs = std::collections::HashSet::new();
        for kind in RejectionKind::iter() {
            let r = example(kind);
            assert_eq!(RejectionKind::from(&r), kind);
            let (s, slug, title) = r.parts();
            assert!(s.is_client_error() || s.is_server_error(), "{r:?}");
            assert!(!title.is_empty());
            assert!(
                slugs.insert(slug) || kind == RejectionKind::Unauthorized,
                "{slug}"
            );
        }
    }

    #[test]
    fn refusals_carry_the_headers_their_status_needs() {
        for kind in RejectionKind::iter() {
            let r = example(kind);
            let h = r.headers();
            let has = |n: &HeaderName| h.iter().any(|(k, _)| k == n);
            let status = r.parts().0;
            assert_eq!(
                has(&header::WWW_AUTHENTICATE),
                status == StatusCode::UNAUTHORIZED,
                "{r:?}"
            );
            assert_eq!(
                has(&header::RETRY_AFTER),
                status == StatusCode::TOO_MANY_REQUESTS
                    || status == StatusCode::SERVICE_UNAVAILABLE,
                "{r:?}"
            );
        }
        let h = Rejection::RateLimited {
            limit: "x".into(),
            retry_after: Duration::from_millis(1500),
        }
        .headers();
        assert_eq!(h[0].1, "2", "Retry-After rounds up");
        let invalid = Rejection::Unauthorized(AuthFault::Token(TokenFault::Expired)).headers();
        assert_eq!(
            invalid[0].1,
            "Bearer realm=\"ward\", error=\"invalid_token\""
        );
    }

    #[test]
    fn every_invalid_credential_gets_the_same_answer() {
        let faults = [
            AuthFault::AmbiguousCredentials,
            AuthFault::Token(TokenFault::BadSignature),
            AuthFault::Token(TokenFault::Expired),
            AuthFault::UnknownIssuer,
            AuthFault::UnknownApiKey,
            AuthFault::Revoked(crate::state::revocation::Kind::Session),
        ];
        let bodies: std::collections::HashSet<String> = faults
            .iter()
            .map(|f| Rejection::Unauthorized(*f).body("same"))
            .collect();
        assert_eq!(bodies.len(), 1);
    }
}
