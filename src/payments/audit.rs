//! The audit trail: what a record holds, how it is chained, and how a chain is verified.
//!
//! [`AuditAction`] lists every action the service records, with its resource type. Records are
//! written by the store in the same transaction as the change they describe (see `store/sql/`).
//! Each tenant's trail is [`AUDIT_LANES`] hash chains ("lanes"):
//! `hash = SHA-256(prev_hash || canonical(record))`, and `audit_heads` remembers each lane's last
//! sequence number and hash so that removing the newest records is detected too. Why lanes: a
//! chain head must be locked from the audit write until commit, so with a single chain every
//! write of a tenant would queue behind the previous commit's fsync. On PostgreSQL a writer takes
//! the first lane no other transaction holds (`FOR UPDATE SKIP LOCKED`); SQLite has one writer at a
//! time and always uses lane 0. `pos` orders records across lanes for reading; it is not hashed.
//! Details never hold secrets or unmasked personal data: callers pass
//! masked values only.
//!
//! A stored [`AuditRecord`] keeps `action` and `resource_type` as the strings that were hashed, so
//! that `ward audit verify` can name an edited record whatever it was edited to.

use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

/// The tenant that owns events belonging to no customer tenant.
pub const SYSTEM_TENANT: &str = "00000000-0000-0000-0000-000000000000";
/// Hash chains per tenant (see the module docs).
pub const AUDIT_LANES: i64 = 8;
/// `prev_hash` of the first record of every chain.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who did something and from where; the request-scoped half of an audit record.
#[derive(Debug, Clone)]
pub struct AuditContext {
    pub actor: String,
    pub client_ip: String,
    pub request_id: String,
}

/// What an audit record says happened. Every action the service records is listed here, with the
/// type of resource it concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditAction {
    LoginSucceeded,
    LoginFailed,
    Lockout,
    Refresh,
    RefreshReuseDetected,
    Logout,
    PasswordChanged,
    UserCreated,
    TenantCreated,
    PaymentCreated,
    PaymentCancelled,
    PaymentWebhookApplied,
    ProxySecurityEvent,
    SessionsRevoked,
}

impl AuditAction {
    pub const ALL: [AuditAction; 14] = [
        AuditAction::LoginSucceeded,
        AuditAction::LoginFailed,
        AuditAction::Lockout,
        AuditAction::Refresh,
        AuditAction::RefreshReuseDetected,
        AuditAction::Logout,
        AuditAction::PasswordChanged,
        AuditAction::UserCreated,
        AuditAction::TenantCreated,
        AuditAction::PaymentCreated,
        AuditAction::PaymentCancelled,
        AuditAction::PaymentWebhookApplied,
        AuditAction::ProxySecurityEvent,
        AuditAction::SessionsRevoked,
    ];

    /// The action's stored name and its resource type. Both are part of every record's hash and
    /// are what `GET /v1/audit?action=&resource_type=` filters on: never rename one.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            AuditAction::LoginSucceeded => ("auth.login_succeeded", "session"),
            AuditAction::LoginFailed => ("auth.login_failed", "user"),
            AuditAction::Lockout => ("auth.lockout", "user"),
            AuditAction::Refresh => ("auth.refresh", "session"),
            AuditAction::RefreshReuseDetected => ("auth.refresh_reuse_detected", "session"),
            AuditAction::Logout => ("auth.logout", "session"),
            AuditAction::PasswordChanged => ("auth.password_changed", "user"),
            AuditAction::UserCreated => ("user.created", "user"),
            AuditAction::TenantCreated => ("tenant.created", "tenant"),
            AuditAction::PaymentCreated => ("payment.created", "payment"),
            AuditAction::PaymentCancelled => ("payment.cancelled", "payment"),
            AuditAction::PaymentWebhookApplied => ("payment.webhook_applied", "payment"),
            AuditAction::ProxySecurityEvent => ("proxy.security_event", "security_event"),
            AuditAction::SessionsRevoked => ("auth.sessions_revoked", "user"),
        }
    }

    /// The stored name, e.g. `auth.login_succeeded`.
    pub fn as_str(self) -> &'static str {
        self.names().0
    }

    /// The type of resource the action concerns, e.g. `session`.
    pub fn resource_type(self) -> &'static str {
        self.names().1
    }
}

impl std::fmt::Display for AuditAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event to record, before the store gives it an id, a sequence number and a hash.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub tenant_id: String,
    pub actor: String,
    pub action: AuditAction,
    pub resource_id: String,
    pub client_ip: String,
    pub request_id: String,
    pub details: serde_json::Value,
}

impl AuditEvent {
    pub fn new(
        ctx: &AuditContext,
        tenant_id: &str,
        action: AuditAction,
        resource_id: &str,
        details: serde_json::Value,
    ) -> Self {
        AuditEvent {
            tenant_id: tenant_id.to_string(),
            actor: ctx.actor.clone(),
            action,
            resource_id: resource_id.to_string(),
            client_ip: ctx.client_ip.clone(),
            request_id: ctx.request_id.clone(),
            details,
        }
    }

    /// The type of the resource `resource_id` names, which the action determines.
    pub fn resource_type(&self) -> &'static str {
        self.action.resource_type()
    }
}

/// A stored audit record, as returned by `GET /v1/audit` and read by `ward audit verify`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditRecord {
    /// Position across all records (read order only; not part of the hash).
    pub pos: i64,
    pub id: String,
    pub tenant_id: String,
    /// Which of the tenant's chains this record belongs to.
    pub lane: i64,
    /// Position within the lane, from 1.
    pub seq: i64,
    /// Unix milliseconds.
    pub created_at: i64,
    pub actor: String,
    pub action: String,
    pub resource_type: String,
    pub resource_id: String,
    pub client_ip: String,
    pub request_id: String,
    /// JSON text, exactly as hashed.
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
}

/// The chained hash of a record. The field list is a JSON array so that no field can bleed into
/// the next one (`"ab","c"` and `"a","bc"` hash differently).
pub fn chain_hash(prev_hash: &str, r: &AuditRecord) -> String {
    let canonical = serde_json::json!([
        r.id,
        r.tenant_id,
        r.lane,
        r.seq,
        r.created_at,
        r.actor,
        r.action,
        r.resource_type,
        r.resource_id,
        r.client_ip,
        r.request_id,
        r.details,
    ]);
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(canonical.to_string().as_bytes());
    hex::encode(hasher.finalize())
}

/// Where a chain first goes wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    #[error(
        "tenant {tenant_id}: record seq {seq} (id {id}) names lane {lane}, which does not exist"
    )]
    UnknownLane {
        tenant_id: String,
        lane: i64,
        seq: i64,
        id: String,
    },
    #[error("tenant {tenant_id} lane {lane}: record seq {seq} (id {id}) was altered: its hash does not match its contents")]
    Altered {
        tenant_id: String,
        lane: i64,
        seq: i64,
        id: String,
    },
    #[error("tenant {tenant_id} lane {lane}: record seq {seq} (id {id}) does not link to the record before it (a record before it was altered or removed)")]
    Unlinked {
        tenant_id: String,
        lane: i64,
        seq: i64,
        id: String,
    },
    #[error("tenant {tenant_id} lane {lane}: record seq {expected} was removed (next present record is seq {found})")]
    Removed {
        tenant_id: String,
        lane: i64,
        expected: i64,
        found: i64,
    },
    #[error("tenant {tenant_id} lane {lane}: the newest records after seq {last} were removed (head says seq {head})")]
    TailRemoved {
        tenant_id: String,
        lane: i64,
        last: i64,
        head: i64,
    },
    #[error(
        "tenant {tenant_id} lane {lane}: the head hash does not match the last record (seq {last})"
    )]
    HeadMismatch {
        tenant_id: String,
        lane: i64,
        last: i64,
    },
}

/// Verify one lane of a tenant, given its records in ascending `seq` order and its head.
pub fn verify_chain(
    tenant_id: &str,
    lane: i64,
    records: &[AuditRecord],
    head_seq: i64,
    head_hash: &str,
) -> Result<(), ChainBreak> {
    let mut prev = GENESIS_HASH.to_string();
    let mut expected_seq = 1;
    for r in records {
        if r.seq != expected_seq {
            return Err(ChainBreak::Removed {
                tenant_id: tenant_id.to_string(),
                lane,
                expected: expected_seq,
                found: r.seq,
            });
        }
        if chain_hash(&r.prev_hash, r) != r.hash || r.tenant_id != tenant_id || r.lane != lane {
            return Err(ChainBreak::Altered {
                tenant_id: tenant_id.to_string(),
                lane,
                seq: r.seq,
                id: r.id.clone(),
            });
        }
        if r.prev_hash != prev {
            return Err(ChainBreak::Unlinked {
                tenant_id: tenant_id.to_string(),
                lane,
                seq: r.seq,
                id: r.id.clone(),
            });
        }
        prev = r.hash.clone();
        expected_seq += 1;
    }
    let last = expected_seq - 1;
    if head_seq != last {
        return Err(ChainBreak::TailRemoved {
            tenant_id: tenant_id.to_string(),
            lane,
            last,
            head: head_seq,
        });
    }
    if head_hash != prev {
        return Err(ChainBreak::HeadMismatch {
            tenant_id: tenant_id.to_string(),
            lane,
            last,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditRecord> {
        let mut prev = GENESIS_HASH.to_string();
        (1..=n)
            .map(|seq| {
                let mut r = AuditRecord {
                    pos: seq,
                    id: format!("id{seq}"),
                    tenant_id: "t".into(),
                    lane: 0,
                    seq,
                    created_at: seq,
                    actor: "a".into(),
                    action: "x".into(),
                    resource_type: "payment".into(),
                    resource_id: "p".into(),
                    client_ip: "127.0.0.1".into(),
                    request_id: "r".into(),
                    details: "{}".into(),
                    prev_hash: prev.clone(),
                    hash: String::new(),
                };
                r.hash = chain_hash(&prev, &r);
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies_and_an_edit_is_named() {
        let mut c = chain(3);
        let head = c[2].hash.clone();
        assert_eq!(verify_chain("t", 0, &c, 3, &head), Ok(()));
        c[1].action = "y".into();
        assert!(matches!(
            verify_chain("t", 0, &c, 3, &head),
            Err(ChainBreak::Altered { seq: 2, .. })
        ));
    }

    #[test]
    fn removed_records_are_named() {
        let mut c = chain(3);
        let head = c[2].hash.clone();
        c.remove(1);
        assert!(matches!(
            verify_chain("t", 0, &c, 3, &head),
            Err(ChainBreak::Removed { expected: 2, .. })
        ));
        let c = chain(3);
        assert!(matches!(
            verify_chain("t", 0, &c[..2], 3, &head),
            Err(ChainBreak::TailRemoved { last: 2, .. })
        ));
    }

    #[test]
    fn every_action_keeps_its_stored_name_and_resource_type() {
        // Records are hashed with these strings and clients filter on them: byte for byte.
        let table: Vec<(&str, &str)> = AuditAction::ALL
            .iter()
            .map(|a| (a.as_str(), a.resource_type()))
            .collect();
        assert_eq!(
            table,
            [
                ("auth.login_succeeded", "session"),
                ("auth.login_failed", "user"),
                ("auth.lockout", "user"),
                ("auth.refresh", "session"),
                ("auth.refresh_reuse_detected", "session"),
                ("auth.logout", "session"),
                ("auth.password_changed", "user"),
                ("user.created", "user"),
                ("tenant.created", "tenant"),
                ("payment.created", "payment"),
                ("payment.cancelled", "payment"),
                ("payment.webhook_applied", "payment"),
                ("proxy.security_event", "security_event"),
                ("auth.sessions_revoked", "user"),
            ]
        );
    }

    #[test]
    fn the_action_list_is_complete() {
        // No wildcard: a new action fails to compile here until it is given a place in `ALL`.
        fn position(a: AuditAction) -> usize {
            match a {
                AuditAction::LoginSucceeded => 0,
                AuditAction::LoginFailed => 1,
                AuditAction::Lockout => 2,
                AuditAction::Refresh => 3,
                AuditAction::RefreshReuseDetected => 4,
                AuditAction::Logout => 5,
                AuditAction::PasswordChanged => 6,
                AuditAction::UserCreated => 7,
                AuditAction::TenantCreated => 8,
                AuditAction::PaymentCreated => 9,
                AuditAction::PaymentCancelled => 10,
                AuditAction::PaymentWebhookApplied => 11,
                AuditAction::ProxySecurityEvent => 12,
                AuditAction::SessionsRevoked => 13,
            }
        }
        for (i, a) in AuditAction::ALL.into_iter().enumerate() {
            assert_eq!(position(a), i, "{a} is out of place in ALL");
        }
    }
}
