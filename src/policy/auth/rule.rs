//! Compiling each route's authentication and authorization rule.

use super::*;

impl Compiler {
    /// A route's rule: `over` field by field over `base` (the defaults').
    pub(in crate::policy) fn auth_rule(
        &mut self,
        identity: &Identity,
        base: Option<&AuthSpec>,
        over: Option<&AuthSpec>,
        at: &str,
    ) -> AuthRule {
        let pick = |f: fn(&AuthSpec) -> bool| over.is_some_and(f);
        let base = base.cloned().unwrap_or_default();
        let over = over.cloned().unwrap_or_default();
        let own_issuers = pick(|a| a.issuers.is_some());
        let field = |own: bool, name: &str| {
            if own {
                format!("{at}.auth.{name}")
            } else {
                format!("defaults.auth.{name}")
            }
        };
        let require = over.require.or(base.require).unwrap_or(Requirement::None);
        let names = over.issuers.or(base.issuers).unwrap_or_default();
        let mut issuers = Vec::new();
        for (i, n) in names.iter().enumerate() {
            match identity.issuers.iter().find(|is| *is.rules.name == **n) {
                Some(is) => {
                    if matches!(is.keys, KeySource::Hmac(_)) && !own_issuers {
                        self.err(
                            field(false, &format!("issuers[{i}]")),
                            format!("HMAC issuer `{n}` must be named by each route that accepts it, not in defaults"),
                        );
                    }
                    issuers.push(is.clone());
                }
                None => self.err(
                    field(own_issuers, &format!("issuers[{i}]")),
                    format!("unknown issuer `{n}` (define it under identity.issuers)"),
                ),
            }
        }
        let api_keys = over.api_keys.or(base.api_keys).unwrap_or(false);
        if api_keys && identity.api_keys.is_none() {
            self.err(
                field(pick(|a| a.api_keys.is_some()), "api_keys"),
                "API keys are accepted here but identity.api_keys names no key file",
            );
        }
        if require != Requirement::None && issuers.is_empty() && !api_keys {
            self.err(
                field(pick(|a| a.require.is_some()), "require"),
                "authentication is required but no issuer and no API keys are accepted",
            );
        }
        let roles = over.roles.or(base.roles).unwrap_or_default();
        let scopes = over.scopes.or(base.scopes).unwrap_or_default();
        let own_claims = pick(|a| a.claims.is_some());
        let claims = over
            .claims
            .or(base.claims)
            .unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(i, c)| self.claim_rule(c, &field(own_claims, &format!("claims[{i}]"))))
            .collect::<Vec<_>>();
        let own_tenant = pick(|a| a.tenant.is_some());
        let tenant = match over.tenant.or(base.tenant) {
            None => None,
            Some(t) => match (t.header, t.path_segment) {
                (Some(h), None) => Some(TenantSource::Header(h.0)),
                (None, Some(n)) if n >= 1 => Some(TenantSource::PathSegment(n)),
                _ => {
                    self.err(
                        field(own_tenant, "tenant"),
                        "give exactly one of `header` and `path_segment` (1-based)",
                    );
                    None
                }
            },
        };
        let rule = AuthRule {
            require,
            issuers,
            api_keys,
            roles,
            scopes,
            claims,
            tenant,
            token_in_query: over.token_in_query.or(base.token_in_query).unwrap_or(false),
            mode: over.mode.or(base.mode).unwrap_or(Mode::Enforce),
        };
        if rule.require != Requirement::Required && rule.authorizes() {
            self.err(
                field(pick(|a| a.require.is_some()), "require"),
                "roles, scopes, claims or tenant rules need `require: required` (an anonymous caller has none of them)",
            );
        }
        rule
    }

    pub(super) fn claim_rule(&mut self, c: &ClaimRuleSpec, at: &str) -> Option<ClaimRule> {
        if c.claim.is_empty() {
            self.err(format!("{at}.claim"), "must not be empty");
            return None;
        }
        let claim = c.claim.clone();
        match (&c.equals, &c.one_of, &c.contains) {
            (Some(v), None, None) => Some(ClaimRule::Equals {
                claim,
                value: v.clone(),
            }),
            (None, Some(vs), None) if !vs.is_empty() => Some(ClaimRule::OneOf {
                claim,
                values: vs.clone(),
            }),
            (None, None, Some(v)) => Some(ClaimRule::Contains {
                claim,
                value: v.clone(),
            }),
            _ => {
                self.err(
                    at,
                    "give exactly one of `equals`, `one_of` (not empty) and `contains`",
                );
                None
            }
        }
    }
}
