//! Strict JWS compact verification for access tokens from any issuer: the token is parsed by
//! hand (exactly three base64url segments, no padding, nothing else), the header's `alg` must be
//! on the issuer's allow-list (so `none` never is), the key comes only from ward's own key set
//! (never from `jku`, `x5u`, `x5c` or an embedded `jwk`), the signature is checked by
//! `jsonwebtoken`, and only then are the claims read and checked. Pure: no I/O, no clock.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::keyset::{parse_algorithm, KeySet};
use super::{AuthMethod, Principal};

/// What an issuer's tokens must satisfy. Built by policy compilation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rules {
    /// The issuer's name in the policy (the principal's auth method names it).
    pub name: Arc<str>,
    /// `iss`, compared exactly.
    pub issuer: String,
    /// `aud` must hold one of these, compared exactly.
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    /// Seconds of clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway: u64,
    /// Claims that must be present (beyond `exp`, `iss`, `aud` and the subject, always required).
    pub required_claims: Vec<String>,
    pub max_token_bytes: usize,
    /// The header's `typ`, when required (compared case-insensitively, `application/` optional).
    pub typ: Option<String>,
    pub claims: ClaimNames,
}

/// Which claims make up the principal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClaimNames {
    pub subject: String,
    pub tenant: String,
    /// A string (one role) or an array of strings.
    pub roles: String,
    /// A space-separated string (OAuth `scope`) or an array of strings.
    pub scopes: String,
}

impl Default for ClaimNames {
    fn default() -> Self {
        ClaimNames {
            subject: "sub".into(),
            tenant: "tenant".into(),
            roles: "roles".into(),
            scopes: "scope".into(),
        }
    }
}

/// Why a token was refused. Every one is a 401; the reason goes to logs and metrics only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFault {
    /// Not three base64url segments of JSON, or a header member of the wrong type.
    Malformed,
    TooLarge,
    /// `alg` missing, `none`, or not on the issuer's allow-list.
    Algorithm,
    /// A `crit` header: ward understands no JWS extension.
    Critical,
    WrongType,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    MissingClaim,
    /// A claim of the wrong type (`exp` as a string, a non-string subject, ...).
    BadClaim,
    WrongIssuer,
    WrongAudience,
}

impl TokenFault {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenFault::Malformed => "malformed",
            TokenFault::TooLarge => "too_large",
            TokenFault::Algorithm => "algorithm",
            TokenFault::Critical => "crit",
            TokenFault::WrongType => "typ",
            TokenFault::UnknownKey => "unknown_key",
            TokenFault::BadSignature => "bad_signature",
            TokenFault::Expired => "expired",
            TokenFault::NotYetValid => "not_yet_valid",
            TokenFault::MissingClaim => "missing_claim",
            TokenFault::BadClaim => "bad_claim",
            TokenFault::WrongIssuer => "wrong_issuer",
            TokenFault::WrongAudience => "wrong_audience",
        }
    }
}

/// A token split and its header checked, signature not yet verified.
#[derive(Debug)]
pub struct Unverified<'a> {
    pub alg: Algorithm,
    pub kid: Option<String>,
    signing_input: &'a str,
    payload: &'a str,
    signature: &'a str,
}

/// Splits a compact JWS and checks its header against `rules`. Cheap: no signature work.
pub fn parse<'a>(token: &'a str, rules: &Rules) -> Result<Unverified<'a>, TokenFault> {
    if token.len() > rules.max_token_bytes {
        return Err(TokenFault::TooLarge);
    }
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(TokenFault::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenFault::Malformed);
    };
    if header.is_empty() || payload.is_empty() || signature.is_empty() {
        return Err(TokenFault::Malformed);
    }
    let header = decode_object(header)?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => parse_algorithm(a)
            .filter(|a| rules.algorithms.contains(a))
            .ok_or(TokenFault::Algorithm)?,
        _ => return Err(TokenFault::Algorithm),
    };
    if header.contains_key("crit") {
        return Err(TokenFault::Critical);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) if !k.is_empty() && k.len() <= 256 => Some(k.clone()),
        Some(_) => return Err(TokenFault::Malformed),
    };
    if let Some(want) = &rules.typ {
        let ok = match header.get("typ") {
            Some(Value::String(t)) => {
                let t = t.to_ascii_lowercase();
                let t = t.strip_prefix("application/").unwrap_or(&t);
                t.eq_ignore_ascii_case(want)
            }
            _ => false,
        };
        if !ok {
            return Err(TokenFault::WrongType);
        }
    }
    Ok(Unverified {
        alg,
        kid,
        signing_input: &token[..token.len() - signature.len() - 1],
        payload,
        signature,
    })
}

/// Verifies the signature with a key of `keys`, then the claims; returns the principal.
/// `now` is unix seconds.
pub fn verify(
    token: &Unverified<'_>,
    rules: &Rules,
    keys: &KeySet,
    now: i64,
) -> Result<Principal, TokenFault> {
    let key = keys
        .find(token.kid.as_deref(), token.alg)
        .ok_or(TokenFault::UnknownKey)?;
    if !key.verifies(token.alg, token.signing_input.as_bytes(), token.signature) {
        return Err(TokenFault::BadSignature);
    }
    let claims = decode_object(token.payload)?;
    check_claims(claims, rules, now)
}

fn decode_object(segment: &str) -> Result<Map<String, Value>, TokenFault> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenFault::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(TokenFault::Malformed),
    }
}

/// A NumericDate: a JSON number (RFC 7519 §2), never a string. Fractions are floored.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, TokenFault> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                return Ok(Some(i));
            }
            match n.as_f64() {
                Some(f) if f.is_finite() && f.abs() < 1e15 => Ok(Some(f.floor() as i64)),
                _ => Err(TokenFault::BadClaim),
            }
        }
        Some(_) => Err(TokenFault::BadClaim),
    }
}

fn optional_string(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, TokenFault> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(TokenFault::BadClaim),
    }
}

fn string_list(
    claims: &Map<String, Value>,
    name: &str,
    split: bool,
) -> Result<Vec<String>, TokenFault> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if split => Ok(s.split_whitespace().map(str::to_owned).collect()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or(TokenFault::BadClaim))
            .collect(),
        Some(_) => Err(TokenFault::BadClaim),
    }
}

fn check_claims(
    claims: Map<String, Value>,
    rules: &Rules,
    now: i64,
) -> Result<Principal, TokenFault> {
    let leeway = i64::try_from(rules.leeway).unwrap_or(i64::MAX);
    let exp = numeric_date(&claims, "exp")?.ok_or(TokenFault::MissingClaim)?;
    if now.saturating_sub(leeway) >= exp {
        return Err(TokenFault::Expired);
    }
    if let Some(nbf) = numeric_date(&claims, "nbf")? {
        if now.saturating_add(leeway) < nbf {
            return Err(TokenFault::NotYetValid);
        }
    }
    let iat = numeric_date(&claims, "iat")?;
    if iat.is_some_and(|iat| now.saturating_add(leeway) < iat) {
        return Err(TokenFault::NotYetValid);
    }
    match claims.get("iss") {
        Some(Value::String(iss)) if *iss == rules.issuer => {}
        Some(Value::String(_)) | None => return Err(TokenFault::WrongIssuer),
        Some(_) => return Err(TokenFault::BadClaim),
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(a)) => rules.audiences.contains(a),
        Some(Value::Array(items)) => items.iter().any(|v| {
            v.as_str()
                .is_some_and(|a| rules.audiences.iter().any(|w| w == a))
        }),
        Some(_) | None => false,
    };
    if !audience_ok {
        return Err(TokenFault::WrongAudience);
    }
    if rules
        .required_claims
        .iter()
        .any(|c| !claims.contains_key(c))
    {
        return Err(TokenFault::MissingClaim);
    }
    let names = &rules.claims;
    let subject = optional_string(&claims, &names.subject)?.ok_or(TokenFault::MissingClaim)?;
    if subject.is_empty() {
        return Err(TokenFault::BadClaim);
    }
    Ok(Principal {
        subject,
        tenant: optional_string(&claims, &names.tenant)?,
        roles: string_list(&claims, &names.roles, false)?,
        scopes: string_list(&claims, &names.scopes, true)?,
        session: optional_string(&claims, "sid")?,
        token_id: optional_string(&claims, "jti")?,
        issued_at: iat,
        expires_at: Some(exp),
        method: AuthMethod::Jwt {
            issuer: rules.name.clone(),
        },
        claims: Arc::new(claims),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn rules() -> Rules {
        Rules {
            name: "test".into(),
            issuer: "https://issuer.example".into(),
            audiences: vec!["api".into()],
            algorithms: vec![Algorithm::HS256],
            leeway: 30,
            required_claims: vec![],
            max_token_bytes: 4096,
            typ: None,
            claims: ClaimNames::default(),
        }
    }

    fn keys() -> KeySet {
        KeySet::from_hmac_secret(SECRET, &[Algorithm::HS256]).unwrap()
    }

    fn sign(claims: Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn check(token: &str, now: i64) -> Result<Principal, TokenFault> {
        let r = rules();
        let u = parse(token, &r)?;
        verify(&u, &r, &keys(), now)
    }

    fn good() -> Value {
        serde_json::json!({"iss": "https://issuer.example", "aud": "api", "sub": "u1", "exp": 1000,
            "tenant": "t1", "roles": ["admin", "ops"], "scope": "read write", "sid": "s1", "jti": "j1"})
    }

    #[test]
    fn a_good_token_gives_its_principal() {
        let p = check(&sign(good()), 900).unwrap();
        assert_eq!(p.subject, "u1");
        assert_eq!(p.tenant.as_deref(), Some("t1"));
        assert_eq!(p.roles, ["admin", "ops"]);
        assert_eq!(p.scopes, ["read", "write"]);
        assert_eq!(p.session.as_deref(), Some("s1"));
        assert_eq!(p.expires_at, Some(1000));
    }

    #[test]
    fn time_claims_are_numbers_and_hold_within_leeway() {
        assert_eq!(check(&sign(good()), 1029).map(|_| ()), Ok(()));
        assert_eq!(check(&sign(good()), 1030).unwrap_err(), TokenFault::Expired);
        let mut c = good();
        c["exp"] = "2000".into();
        assert_eq!(check(&sign(c), 900).unwrap_err(), TokenFault::BadClaim);
        let mut c = good();
        c.as_object_mut().unwrap().remove("exp");
        assert_eq!(check(&sign(c), 900).unwrap_err(), TokenFault::MissingClaim);
        let mut c = good();
        c["nbf"] = 950.into();
        assert_eq!(check(&sign(c), 900).unwrap_err(), TokenFault::NotYetValid);
    }

    #[test]
    fn issuer_and_audience_match_exactly() {
        for (claim, value, fault) in [
            ("iss", "https://issuer.example/", TokenFault::WrongIssuer),
            ("aud", "api/", TokenFault::WrongAudience),
            ("aud", "API", TokenFault::WrongAudience),
        ] {
            let mut c = good();
            c[claim] = value.into();
            assert_eq!(check(&sign(c), 900).unwrap_err(), fault, "{claim}={value}");
        }
        let mut c = good();
        c["aud"] = serde_json::json!(["other", "api"]);
        assert!(check(&sign(c), 900).is_ok());
    }

    #[test]
    fn framing_faults_are_malformed() {
        let t = sign(good());
        let parts: Vec<&str> = t.split('.').collect();
        for bad in [
            format!("{}.{}", parts[0], parts[1]),
            format!("{t}."),
            format!("{t}.x"),
            format!("{}.{}.{}=", parts[0], parts[1], parts[2]),
            format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
            format!("{}.{}.", parts[0], parts[1]),
            format!(" {t}"),
            format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode("not json"),
                parts[1],
                parts[2]
            ),
        ] {
            assert!(
                matches!(check(&bad, 900), Err(TokenFault::Malformed)),
                "{bad}: {:?}",
                check(&bad, 900)
            );
        }
    }

    #[test]
    fn alg_none_and_unlisted_algorithms_are_refused() {
        let t = sign(good());
        let body = t.split('.').nth(1).unwrap();
        for alg in ["none", "None", "NONE", "HS512", "ES256"] {
            let h = URL_SAFE_NO_PAD.encode(format!("{{\"alg\":\"{alg}\",\"typ\":\"JWT\"}}"));
            let forged = format!("{h}.{body}.AAAA");
            assert_eq!(
                check(&forged, 900).unwrap_err(),
                TokenFault::Algorithm,
                "{alg}"
            );
        }
        let h = URL_SAFE_NO_PAD.encode("{\"typ\":\"JWT\"}");
        assert_eq!(
            check(&format!("{h}.{body}.AAAA"), 900).unwrap_err(),
            TokenFault::Algorithm
        );
    }

    #[test]
    fn crit_headers_and_tampered_payloads_are_refused() {
        let mut h = Header::new(Algorithm::HS256);
        h.crit = Some(vec!["exp".into()]);
        let t = jsonwebtoken::encode(&h, &good(), &EncodingKey::from_secret(SECRET)).unwrap();
        assert_eq!(check(&t, 900).unwrap_err(), TokenFault::Critical);
        let t = sign(good());
        let parts: Vec<&str> = t.split('.').collect();
        let mut c = good();
        c["sub"] = "admin".into();
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(c.to_string()),
            parts[2]
        );
        assert_eq!(check(&tampered, 900).unwrap_err(), TokenFault::BadSignature);
    }
}
