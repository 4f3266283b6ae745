//! Stage 9, sessions at the edge: refresh-token single use (401 on reuse) and login lockout
//! (429), on the routes that name them. Both need to look inside the request body (a JSON field
//! or a cookie), so the body is read here, bounded, and then forwarded unchanged.
//!
//! `before` runs before the upstream and may refuse; `after` runs on the upstream's answer:
//! a refresh token is committed (2xx) or released (anything else), a login failure is counted
//! (the configured statuses) or a success clears the failures the check found recorded. Store
//! errors in `after` are logged, never turned into a different answer: the upstream has acted.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use hmac::{Hmac, Mac};
use http::{header, HeaderMap, StatusCode};
use hyper::body::Incoming;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use sha2::{Digest, Sha256};
use unicode_normalization::UnicodeNormalization;

use crate::policy::sessions::{FamilySource, LockoutRule, RefreshRule, TokenSource};
use crate::policy::spec::OnStoreError;
use crate::policy::{Policy, Route};
use crate::proxy::discard::{self, Bounded};
use crate::proxy::rejection::Rejection;
use crate::proxy::upstream::InBody;
use crate::redis_link::RedisFault;
use crate::state::events::{EventKind, SecurityEvent, SecurityEvents};
use crate::state::lockout::{Gate, Lockouts};
use crate::state::refresh::{Claim, RefreshClaims, TokenHash};
use crate::state::revocation::{Entry, Kind, Revocations};

/// The session stores and where events go.
pub struct Sessions<'a> {
    pub policy: &'a Policy,
    pub refresh: &'a RefreshClaims,
    pub lockouts: &'a Lockouts,
    pub revocations: &'a Revocations,
    pub events: &'a SecurityEvents,
    /// The lockout HMAC key in force (the policy's, or the process's own).
    pub lockout_key: &'a [u8],
    /// `{store}`: store calls that failed (refresh, lockout).
    pub store_errors: &'a prometheus::IntCounterVec,
}

/// Facts for the events this stage emits.
pub struct About<'a> {
    pub route: &'a str,
    pub client_ip: IpAddr,
    pub request_id: &'a str,
}

/// What `before` claimed, for `after` to settle.
#[derive(Debug, Default)]
pub struct Pending {
    /// The claimed token's hash, and its family when the token itself names it.
    refresh: Option<(TokenHash, Option<String>)>,
    /// The identity's and the client IP's lockout keys, and whether the identity had failures
    /// recorded (only then does a success have something to clear).
    lockout: Option<(String, String, bool)>,
}

/// Reads the body of a route with a refresh or lockout rule, bounded (400 past the bound,
/// before reading when the declared length already is); other routes keep streaming.
pub async fn read_body(
    route: &Route,
    headers: &HeaderMap,
    mut body: Incoming,
    deadline: Duration,
) -> Result<InBody, Rejection> {
    let bound = match (&route.refresh, &route.lockout) {
        (None, None) => return Ok(InBody::Stream(body)),
        (r, l) => r
            .as_ref()
            .map_or(0, |r| r.max_body)
            .max(l.as_ref().map_or(0, |l| l.max_body)),
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > bound as u64) {
        // Nothing read. A client that asked to continue waits for this answer and sends
        // nothing; any other is sending now and may finish (within bounds) to read it.
        if !headers.contains_key(header::EXPECT) {
            discard::drain(body);
        }
        return Err(Rejection::BadBody);
    }
    match tokio::time::timeout(deadline, discard::read_at_most(&mut body, bound as u64)).await {
        Err(_) => Err(Rejection::RequestTimeout),
        Ok(Bounded::TooLarge) => {
            discard::drain(body);
            Err(Rejection::BadBody)
        }
        Ok(Bounded::Failed(_)) => Err(Rejection::BadBody),
        Ok(Bounded::Complete(bytes)) => Ok(InBody::Read(bytes)),
    }
}

/// Before the upstream: claim the refresh token, check the login's lockout.
pub async fn before(
    s: &Sessions<'_>,
    route: &Route,
    headers: &HeaderMap,
    body: &Bytes,
    about: &About<'_>,
) -> Result<Pending, Rejection> {
    let mut pending = Pending::default();
    if let Some(rule) = &route.refresh {
        pending.refresh = claim_refresh(s, rule, headers, body, about, route).await?;
    }
    if let Some(rule) = &route.lockout {
        pending.lockout = check_lockout(s, rule, body, about).await?;
    }
    Ok(pending)
}

async fn claim_refresh(
    s: &Sessions<'_>,
    rule: &RefreshRule,
    headers: &HeaderMap,
    body: &Bytes,
    about: &About<'_>,
    route: &Route,
) -> Result<Option<(TokenHash, Option<String>)>, Rejection> {
    let token = match &rule.source {
        TokenSource::JsonField(f) => json_fields(body, &[f.as_str()])?.remove(0),
        TokenSource::Cookie(name) => cookie(headers, name)?,
    };
    if token.is_empty() {
        return Err(Rejection::BadCredentialBody);
    }
    let hash: TokenHash = Sha256::digest(token.as_bytes()).into();
    let tuning = &s.policy.server.redis;
    let pending_for = route.upstream.target.request_timeout + Duration::from_secs(5);
    let claim = match s.refresh.claim(&hash, pending_for, tuning).await {
        Ok(c) => c,
        Err(e) => return store_failed(s, "refresh", rule.on_store_error, e).map(|()| None),
    };
    let family = match claim {
        Claim::First => {
            let from_token = match &rule.family {
                FamilySource::TokenClaim(c) => unverified_claim(&token, c),
                FamilySource::ResponseHeader(_) | FamilySource::Unknown => None,
            };
            return Ok(Some((hash, from_token)));
        }
        // Still pending: its family is revoked when that first use commits.
        Claim::InFlight => None,
        Claim::Reused { family } => family,
    };
    if let Some(f) = &family {
        revoke_family(s, f).await;
    }
    s.events.emit(SecurityEvent {
        kind: EventKind::RefreshReuse,
        tenant_id: None,
        subject: None,
        client_ip: Some(about.client_ip),
        request_id: Some(about.request_id.to_owned()),
        route: Some(about.route.to_owned()),
        reason: if family.is_some() {
            "family revoked".into()
        } else {
            "concurrent use".into()
        },
    });
    Err(Rejection::RefreshTokenReused)
}

async fn check_lockout(
    s: &Sessions<'_>,
    rule: &LockoutRule,
    body: &Bytes,
    about: &About<'_>,
) -> Result<Option<(String, String, bool)>, Rejection> {
    let names: Vec<&str> = rule.identity.iter().map(String::as_str).collect();
    let values = json_fields(body, &names)?;
    let id_key = format!("id:{}", identity_key(s.lockout_key, &values));
    let ip_key = format!("ip:{}", about.client_ip);
    let tuning = &s.policy.server.redis;
    let mut keys = vec![(id_key.as_str(), "identity")];
    if rule.per_ip.is_some() {
        keys.push((ip_key.as_str(), "client_ip"));
    }
    // The account's and the IP's gates are asked at once: one round trip to Redis, not two.
    let gates = join_all(keys.iter().map(|(key, _)| s.lockouts.check(key, tuning))).await;
    let mut wait: Option<Duration> = None;
    let recorded = matches!(gates[0], Ok(Gate::Open));
    for ((key, which), gate) in keys.into_iter().zip(gates) {
        match gate {
            Ok(Gate::Clean | Gate::Open) => {}
            Ok(Gate::Ended) => lockout_event(s, EventKind::LockoutEnded, which, key, about),
            Ok(Gate::Wait { retry_after, .. }) => {
                wait = Some(wait.map_or(retry_after, |w| w.max(retry_after)));
            }
            Err(e) => {
                return store_failed(s, "lockout", rule.on_store_error, e).map(|()| None);
            }
        }
    }
    match wait {
        Some(retry_after) => Err(Rejection::LoginLocked { retry_after }),
        None => Ok(Some((id_key, ip_key, recorded))),
    }
}

/// Step 11, on the upstream's answer: what must be settled before the client can act on it
/// happens now: a refresh token is released after a failure (so an honest retry is not theft),
/// and a failed login is counted (so the next attempt meets its backoff or lock). What a success
/// leaves (commit the refresh token, clear the account's failures) is returned, for `settle`
/// off the request's path: nothing the client does next depends on it, since a second use of a
/// pending refresh token is refused just as a committed one is, and revokes the family when the
/// commit lands.
pub async fn after(
    s: &Sessions<'_>,
    route: &Route,
    pending: Pending,
    status: StatusCode,
    response: &HeaderMap,
    about: &About<'_>,
) -> Settle {
    let tuning = &s.policy.server.redis;
    let mut settle = Settle::default();
    if let (Some((hash, from_token)), Some(rule)) = (pending.refresh, &route.refresh) {
        if status.is_success() {
            let family = match &rule.family {
                FamilySource::ResponseHeader(h) => response
                    .get(h)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                FamilySource::TokenClaim(_) => from_token,
                FamilySource::Unknown => None,
            };
            settle.commit = Some((hash, family, rule.lifetime));
        } else if let Err(e) = s.refresh.release(&hash, tuning).await {
            note_store_error(s, "refresh", &e);
        }
    }
    if let (Some((id_key, ip_key, recorded)), Some(rule)) = (pending.lockout, &route.lockout) {
        if rule.failure_statuses.contains(&status) {
            let counted = [
                Some((id_key.as_str(), &rule.rules, "identity")),
                rule.per_ip
                    .as_ref()
                    .map(|r| (ip_key.as_str(), r, "client_ip")),
            ];
            let counted: Vec<_> = counted.into_iter().flatten().collect();
            // Both counters at once, as the gates were asked: one round trip to Redis, not two.
            let counts = join_all(
                counted
                    .iter()
                    .map(|(key, rules, _)| s.lockouts.failure(key, rules, tuning)),
            )
            .await;
            for ((key, _, which), count) in counted.into_iter().zip(counts) {
                match count {
                    Ok(f) if f.locked => {
                        lockout_event(s, EventKind::LockoutStarted, which, key, about)
                    }
                    Ok(_) => {}
                    Err(e) => note_store_error(s, "lockout", &e),
                }
            }
        } else if status.is_success() && recorded {
            // An account with nothing recorded has nothing to clear: no write on a clean login.
            settle.clear = Some(id_key);
        }
    }
    settle
}

/// What a successful answer leaves to settle, after the answer is on its way.
#[derive(Debug, Default)]
pub struct Settle {
    /// The refresh token to commit as used: its hash, family and lifetime.
    commit: Option<(TokenHash, Option<String>, Duration)>,
    /// The account whose failures a successful login clears.
    clear: Option<String>,
}

impl Settle {
    pub fn is_empty(&self) -> bool {
        self.commit.is_none() && self.clear.is_none()
    }
}

/// Settles a success: commits the refresh token (revoking its family when another use came in
/// meanwhile) and clears the account's failures. Store errors are counted and logged.
pub async fn settle(s: &Sessions<'_>, work: Settle) {
    let tuning = &s.policy.server.redis;
    if let Some((hash, family, lifetime)) = work.commit {
        match s
            .refresh
            .commit(&hash, family.as_deref(), lifetime, tuning)
            .await
        {
            Ok(true) => {
                // Another use came in while this one was pending: theft, the family goes.
                if let Some(f) = &family {
                    revoke_family(s, f).await;
                }
            }
            Ok(false) => {}
            Err(e) => note_store_error(s, "refresh", &e),
        }
    }
    if let Some(id_key) = work.clear {
        if let Err(e) = s.lockouts.clear(&id_key, tuning).await {
            note_store_error(s, "lockout", &e);
        }
    }
}

async fn revoke_family(s: &Sessions<'_>, family: &str) {
    let lifetime = s
        .policy
        .sessions
        .revocation
        .map_or(Duration::from_secs(3600), |r| r.max_token_lifetime);
    let entry = Entry {
        kind: Kind::Session,
        id: family.to_owned(),
        before: None,
        expires_at: crate::state::now_secs() + lifetime.as_secs() as i64,
    };
    if let Err(e) = s.revocations.revoke(entry).await {
        tracing::error!(error = %e, "cannot revoke the family of a reused refresh token");
    }
}

fn lockout_event(s: &Sessions<'_>, kind: EventKind, which: &str, key: &str, about: &About<'_>) {
    // The identity's key is an HMAC: its first characters tell events apart, and reveal nothing.
    let shown: String = key.chars().take(19).collect();
    s.events.emit(SecurityEvent {
        kind,
        tenant_id: None,
        subject: None,
        client_ip: Some(about.client_ip),
        request_id: Some(about.request_id.to_owned()),
        route: Some(about.route.to_owned()),
        reason: format!("{which} {shown}"),
    });
}

fn store_failed(
    s: &Sessions<'_>,
    store: &'static str,
    on_error: OnStoreError,
    e: RedisFault,
) -> Result<(), Rejection> {
    note_store_error(s, store, &e);
    match on_error {
        OnStoreError::Deny => Err(Rejection::SessionStoreUnavailable),
        OnStoreError::Allow => Ok(()),
    }
}

fn note_store_error(s: &Sessions<'_>, store: &'static str, e: &RedisFault) {
    s.store_errors.with_label_values(&[store]).inc();
    tracing::warn!(store, error = %e, "session store unavailable");
}

/// The lockout key of an identity: HMAC-SHA256 over its normalised fields (NFC, trimmed,
/// inner whitespace collapsed, lower case), hex. No raw identity is stored, logged or sent.
pub fn identity_key(key: &[u8], values: &[String]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    for v in values {
        let normal: String = v.nfc().collect::<String>().to_lowercase();
        let normal = normal.split_whitespace().collect::<Vec<_>>().join(" ");
        mac.update(normal.as_bytes());
        mac.update(&[0]);
    }
    hex::encode(&mac.finalize().into_bytes()[..16])
}

/// The values of top-level string fields of a JSON object body, in `names` order. Not JSON,
/// not an object, a field missing, not a string, or present twice: 400.
pub fn json_fields(body: &[u8], names: &[&str]) -> Result<Vec<String>, Rejection> {
    struct Fields<'n> {
        names: &'n [&'n str],
    }
    impl<'de> Visitor<'de> for Fields<'_> {
        type Value = Vec<Option<String>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
            let mut found: Vec<Option<String>> = vec![None; self.names.len()];
            while let Some(key) = map.next_key::<String>()? {
                match self.names.iter().position(|n| *n == key) {
                    Some(i) => {
                        if found[i].is_some() {
                            return Err(de::Error::custom("duplicate field"));
                        }
                        found[i] = Some(map.next_value::<String>()?);
                    }
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(found)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let found = de
        .deserialize_map(Fields { names })
        .and_then(|f| de.end().map(|()| f))
        .map_err(|_| Rejection::BadCredentialBody)?;
    found
        .into_iter()
        .map(|v| v.ok_or(Rejection::BadCredentialBody))
        .collect()
}

/// One cookie's value; absent or sent twice is a bad request.
fn cookie(headers: &HeaderMap, name: &str) -> Result<String, Rejection> {
    let mut found = None;
    for v in headers.get_all(header::COOKIE) {
        let v = v.to_str().map_err(|_| Rejection::BadCredentialBody)?;
        for pair in v.split(';') {
            if let Some((k, val)) = pair.trim().split_once('=') {
                if k == name {
                    if found.is_some() {
                        return Err(Rejection::BadCredentialBody);
                    }
                    found = Some(val.trim_matches('"').to_owned());
                }
            }
        }
    }
    found.ok_or(Rejection::BadCredentialBody)
}

/// A string claim of a JWT, not verified here: it is used only once the upstream has accepted
/// the token (a commit), to remember which family a reuse must revoke.
fn unverified_claim(token: &str, claim: &str) -> Option<String> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get(claim)?
        .as_str()
        .filter(|s| !s.is_empty() && s.len() <= crate::state::revocation::MAX_ID)
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_fields_are_strings_present_once() {
        let ok = json_fields(
            br#"{"email":"a@b.c","x":[1,{"email":2}],"tenant":"t"}"#,
            &["tenant", "email"],
        );
        assert_eq!(ok.unwrap(), ["t", "a@b.c"]);
        for bad in [
            &br#"{"email":"a@b.c","email":"c@d.e"}"#[..],
            br#"{"email":1}"#,
            br#"{"other":"x"}"#,
            br#"["email"]"#,
            br#"not json"#,
            br#"{"email":"a"} trailing"#,
            br#"{"email":"a""#,
        ] {
            assert_eq!(
                json_fields(bad, &["email"]),
                Err(Rejection::BadCredentialBody),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn identities_are_normalised_before_the_hmac() {
        let k = b"k";
        let a = identity_key(k, &["  Alice@Example.COM ".into()]);
        assert_eq!(a, identity_key(k, &["alice@example.com".into()]));
        // NFC: a precomposed and a combining "é" are the same identity.
        assert_eq!(
            identity_key(k, &["caf\u{e9}".into()]),
            identity_key(k, &["cafe\u{301}".into()])
        );
        assert_eq!(
            identity_key(k, &["a  b".into()]),
            identity_key(k, &["a b".into()])
        );
        assert_ne!(a, identity_key(b"other key", &["alice@example.com".into()]));
        assert_ne!(
            identity_key(k, &["t1".into(), "a".into()]),
            identity_key(k, &["t1a".into()]),
            "fields are separated"
        );
        assert_eq!(a.len(), 32);
        assert!(!a.contains("alice"));
    }

    #[test]
    fn a_cookie_is_found_once() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "a=1; rt=abc".parse().unwrap());
        assert_eq!(cookie(&h, "rt").unwrap(), "abc");
        h.append(header::COOKIE, "rt=def".parse().unwrap());
        assert_eq!(cookie(&h, "rt"), Err(Rejection::BadCredentialBody));
        assert_eq!(
            cookie(&HeaderMap::new(), "rt"),
            Err(Rejection::BadCredentialBody)
        );
    }
}
