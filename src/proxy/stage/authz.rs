//! Stage 7, authorization (403). Takes the verified caller, so it cannot run before
//! authentication: the caller needs one of the route's roles, every one of its scopes, every
//! claim rule, and, where the route names where a request carries its tenant, the same tenant as
//! its token (tenant isolation at the edge).

use http::{HeaderMap, Uri};
use serde_json::Value;

use crate::identity::Principal;
use crate::policy::{AuthRule, ClaimRule, TenantSource};
use crate::proxy::rejection::{Forbidden, Rejection};

pub fn check(
    rule: &AuthRule,
    principal: &Principal,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<(), Rejection> {
    let refuse = |f| Err(Rejection::Forbidden(f));
    if !rule.roles.is_empty() && !rule.roles.iter().any(|r| principal.has_role(r)) {
        return refuse(Forbidden::Role);
    }
    if !rule
        .scopes
        .iter()
        .all(|s| principal.scopes.iter().any(|have| have == s))
    {
        return refuse(Forbidden::Scope);
    }
    if !rule.claims.iter().all(|c| claim_holds(c, principal)) {
        return refuse(Forbidden::Claim);
    }
    if let Some(source) = &rule.tenant {
        let named = match source {
            TenantSource::Header(h) => {
                let mut values = headers.get_all(h).iter();
                match (values.next(), values.next()) {
                    (Some(v), None) => v.to_str().ok(),
                    // Absent, or sent twice: which one would the upstream believe?
                    _ => None,
                }
            }
            TenantSource::PathSegment(n) => path_segment(uri.path(), *n),
        };
        match (named, principal.tenant.as_deref()) {
            (Some(named), Some(own)) if !named.is_empty() && named == own => {}
            _ => return refuse(Forbidden::Tenant),
        }
    }
    Ok(())
}

/// The `n`th (1-based) segment of a path: `/v1/tenants/t1/x` has `v1`, `tenants`, `t1`, `x`.
fn path_segment(path: &str, n: usize) -> Option<&str> {
    path.strip_prefix('/')?.split('/').nth(n.checked_sub(1)?)
}

fn claim_holds(rule: &ClaimRule, p: &Principal) -> bool {
    match rule {
        ClaimRule::Equals { claim, value } => p.claims.get(claim) == Some(value),
        ClaimRule::OneOf { claim, values } => {
            p.claims.get(claim).is_some_and(|v| values.contains(v))
        }
        ClaimRule::Contains { claim, value } => match (p.claims.get(claim), value) {
            (Some(Value::Array(items)), v) => items.contains(v),
            (Some(Value::String(s)), Value::String(word)) => {
                s.split_whitespace().any(|w| w == word)
            }
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::identity::AuthMethod;
    use crate::policy::spec::{Mode, Requirement};

    fn caller() -> Principal {
        let claims = serde_json::json!({"plan": "pro", "groups": ["payments", "ops"], "amr": "pwd mfa", "level": 3});
        Principal {
            subject: "u1".into(),
            tenant: Some("t1".into()),
            roles: vec!["merchant".into()],
            scopes: vec!["payments:read".into(), "payments:write".into()],
            session: None,
            token_id: None,
            issued_at: None,
            expires_at: None,
            method: AuthMethod::Jwt { issuer: "i".into() },
            claims: Arc::new(claims.as_object().unwrap().clone()),
        }
    }

    fn rule() -> AuthRule {
        AuthRule {
            require: Requirement::Required,
            mode: Mode::Enforce,
            ..AuthRule::none()
        }
    }

    fn verdict(rule: &AuthRule, headers: &HeaderMap, path: &str) -> Result<(), Rejection> {
        check(rule, &caller(), headers, &path.parse().unwrap())
    }

    #[test]
    fn roles_need_one_and_scopes_need_all() {
        let h = HeaderMap::new();
        let mut r = rule();
        r.roles = vec!["admin".into(), "merchant".into()];
        assert!(verdict(&r, &h, "/").is_ok());
        r.roles = vec!["admin".into()];
        assert_eq!(
            verdict(&r, &h, "/"),
            Err(Rejection::Forbidden(Forbidden::Role))
        );
        let mut r = rule();
        r.scopes = vec!["payments:read".into(), "payments:write".into()];
        assert!(verdict(&r, &h, "/").is_ok());
        r.scopes.push("payments:refund".into());
        assert_eq!(
            verdict(&r, &h, "/"),
            Err(Rejection::Forbidden(Forbidden::Scope))
        );
    }

    #[test]
    fn claim_rules_compare_json_values() {
        let h = HeaderMap::new();
        let cases = [
            (
                ClaimRule::Equals {
                    claim: "plan".into(),
                    value: "pro".into(),
                },
                true,
            ),
            (
                ClaimRule::Equals {
                    claim: "level".into(),
                    value: "3".into(),
                },
                false,
            ),
            (
                ClaimRule::Equals {
                    claim: "level".into(),
                    value: 3.into(),
                },
                true,
            ),
            (
                ClaimRule::OneOf {
                    claim: "plan".into(),
                    values: vec!["free".into(), "pro".into()],
                },
                true,
            ),
            (
                ClaimRule::OneOf {
                    claim: "missing".into(),
                    values: vec!["pro".into()],
                },
                false,
            ),
            (
                ClaimRule::Contains {
                    claim: "groups".into(),
                    value: "payments".into(),
                },
                true,
            ),
            (
                ClaimRule::Contains {
                    claim: "groups".into(),
                    value: "pay".into(),
                },
                false,
            ),
            (
                ClaimRule::Contains {
                    claim: "amr".into(),
                    value: "mfa".into(),
                },
                true,
            ),
        ];
        for (c, ok) in cases {
            let mut r = rule();
            r.claims = vec![c.clone()];
            assert_eq!(verdict(&r, &h, "/").is_ok(), ok, "{c:?}");
        }
    }

    #[test]
    fn the_named_tenant_must_be_the_callers() {
        let mut r = rule();
        r.tenant = Some(TenantSource::Header(http::HeaderName::from_static(
            "x-tenant",
        )));
        let mut h = HeaderMap::new();
        assert!(verdict(&r, &h, "/").is_err(), "absent");
        h.insert("x-tenant", "t2".parse().unwrap());
        assert_eq!(
            verdict(&r, &h, "/"),
            Err(Rejection::Forbidden(Forbidden::Tenant))
        );
        h.insert("x-tenant", "t1".parse().unwrap());
        assert!(verdict(&r, &h, "/").is_ok());
        h.append("x-tenant", "t1".parse().unwrap());
        assert!(verdict(&r, &h, "/").is_err(), "sent twice");
        let mut r = rule();
        r.tenant = Some(TenantSource::PathSegment(3));
        let h = HeaderMap::new();
        assert!(verdict(&r, &h, "/v1/tenants/t1/payments").is_ok());
        assert!(verdict(&r, &h, "/v1/tenants/t2/payments").is_err());
        assert!(verdict(&r, &h, "/v1/tenants").is_err());
    }
}
