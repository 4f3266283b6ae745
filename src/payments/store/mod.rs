//! Persistence: one store interface ([`Store`]), two implementations (SQLite and PostgreSQL).
//!
//! The SQL lives once in `sql/` and is compiled into both `sqlite` and `postgres` with their own
//! pool and transaction types; it sticks to what both engines accept (`$n` parameters, BIGINT
//! unix-millisecond timestamps, TEXT ids, `ON CONFLICT`, `RETURNING`). Every change and its audit
//! record are written in one transaction. Migrations are embedded and applied by [`Store::connect`].
//!
//! Rows are typed: roles are [`Role`]s and statuses [`PaymentStatus`]es. A value the types do not
//! know is [`StoreError::Corrupt`], naming the column and the value, never a default. Status moves
//! are checked with the state machine in `domain::payment`, failed logins counted with
//! `domain::lockout`, both inside the transaction that writes them.
//! This module knows nothing about HTTP or tokens.

pub mod postgres;
pub mod sqlite;

use std::time::Duration;

use crate::identity::Role;
use crate::payments::audit::{AuditEvent, AuditRecord, ChainBreak};
use crate::payments::domain::lockout::LockoutPolicy;
use crate::payments::domain::payment::{IllegalTransition, PaymentStatus};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("tenant {0} has no audit chain head")]
    NoAuditHead(String),
    #[error("{0} already exists")]
    Duplicate(&'static str),
    #[error("unsupported database URL (expected sqlite:// or postgres://)")]
    UnsupportedUrl,
    /// A stored value the service does not know: edited by hand, or written by a newer version.
    #[error("stored data is inconsistent: {column} holds {value:?}")]
    Corrupt { column: &'static str, value: String },
}

impl StoreError {
    /// Errors that mean "the database is not reachable right now" (503) rather than a bug (500).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Database(
                sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_)
            )
        )
    }
}

fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: String,
    pub slug: String,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: String,
    pub tenant_id: String,
    pub email: String,
    pub role: Role,
    pub password_hash: String,
}

/// What login needs to know about a user.
#[derive(Debug, Clone)]
pub struct UserAuth {
    pub id: String,
    pub tenant_id: String,
    pub email: String,
    pub role: Role,
    pub password_hash: String,
    pub locked_until: Option<i64>,
}

/// A new session with its first refresh token (stored as a hash only).
#[derive(Debug, Clone)]
pub struct NewSession {
    pub session_id: String,
    pub refresh_hash: String,
    pub refresh_expires_at: i64,
}

#[derive(Debug, Clone)]
pub enum RefreshOutcome {
    Rotated {
        user_id: String,
        tenant_id: String,
        role: Role,
        session_id: String,
    },
    /// An already-used token was presented: the whole family (this session) is now revoked.
    ReuseDetected {
        session_id: String,
    },
    Invalid,
}

#[derive(Debug, Clone)]
pub struct PaymentRow {
    pub id: String,
    pub tenant_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub description: String,
    pub payer_masked: String,
    pub payer_ciphertext: Vec<u8>,
    pub payer_key_id: String,
    pub status: PaymentStatus,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A stored response replayed for a repeated Idempotency-Key.
#[derive(Debug, Clone)]
pub struct StoredResponse {
    pub status: u16,
    pub body: String,
}

#[derive(Debug, Clone)]
pub enum IdempotentOutcome {
    Created(StoredResponse),
    Replayed(StoredResponse),
    KeyReused,
}

#[derive(Debug, Clone)]
pub enum TransitionOutcome {
    Moved(Box<PaymentRow>),
    NotFound,
    Illegal(IllegalTransition),
    Replayed,
}

/// A status change: where the payment should go, and what to record. Whether it may go there
/// from its current status is the state machine's decision, taken by the store.
#[derive(Debug, Clone)]
pub struct Transition {
    pub payment_id: String,
    /// `None` for PSP webhooks, which know only the payment id.
    pub tenant_id: Option<String>,
    pub to: PaymentStatus,
    pub webhook_event_id: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct PaymentFilter {
    pub status: Option<PaymentStatus>,
    /// Keyset cursor: (created_at, id) of the last item of the previous page.
    pub after: Option<(i64, String)>,
    pub limit: i64,
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Return records with `pos` below this (newest first).
    pub before_pos: Option<i64>,
    pub limit: i64,
}

/// The store: SQLite by default, PostgreSQL for several replicas.
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(sqlite::Backend),
    Postgres(postgres::Backend),
}

macro_rules! dispatch {
    ($self:ident, $b:ident => $call:expr) => {
        match $self {
            Store::Sqlite($b) => $call,
            Store::Postgres($b) => $call,
        }
    };
}

impl Store {
    /// Connect, apply the embedded migrations and return a ready store.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Store, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Store::Sqlite(sqlite::Backend::connect(url, timeout).await?))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Store::Postgres(
                postgres::Backend::connect(url, timeout).await?,
            ))
        } else {
            Err(StoreError::UnsupportedUrl)
        }
    }

    pub async fn close(&self) {
        dispatch!(self, b => b.close().await)
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, b => b.ping().await)
    }

    pub async fn create_tenant(
        &self,
        slug: &str,
        name: &str,
        admin: &NewUser,
        ev: &[AuditEvent],
    ) -> Result<Tenant, StoreError> {
        dispatch!(self, b => b.create_tenant(slug, name, admin, ev).await)
    }

    pub async fn tenant_by_slug(&self, slug: &str) -> Result<Option<Tenant>, StoreError> {
        dispatch!(self, b => b.tenant_by_slug(slug).await)
    }

    pub async fn tenant_exists(&self, id: &str) -> Result<bool, StoreError> {
        dispatch!(self, b => b.tenant_exists(id).await)
    }

    pub async fn create_user(&self, user: &NewUser, ev: &AuditEvent) -> Result<(), StoreError> {
        dispatch!(self, b => b.create_user(user, ev).await)
    }

    pub async fn user_for_login(
        &self,
        tenant_id: &str,
        email: &str,
    ) -> Result<Option<UserAuth>, StoreError> {
        dispatch!(self, b => b.user_for_login(tenant_id, email).await)
    }

    pub async fn user_by_id(
        &self,
        tenant_id: &str,
        user_id: &str,
    ) -> Result<Option<UserAuth>, StoreError> {
        dispatch!(self, b => b.user_by_id(tenant_id, user_id).await)
    }

    pub async fn login_succeeded(
        &self,
        user: &UserAuth,
        session: &NewSession,
        ev: &AuditEvent,
    ) -> Result<(), StoreError> {
        dispatch!(self, b => b.login_succeeded(user, session, ev).await)
    }

    /// Count a failure; returns true when this failure locked the account.
    pub async fn login_failed(
        &self,
        user: &UserAuth,
        policy: LockoutPolicy,
        ev: &AuditEvent,
        lock_ev: &AuditEvent,
    ) -> Result<bool, StoreError> {
        dispatch!(self, b => b.login_failed(user, policy, ev, lock_ev).await)
    }

    pub async fn append_audit(&self, ev: &AuditEvent) -> Result<(), StoreError> {
        dispatch!(self, b => b.append_audit(ev).await)
    }

    pub async fn rotate_refresh(
        &self,
        token_hash: &str,
        new: &NewSession,
        ok_ev: &AuditEvent,
        reuse_ev: &AuditEvent,
    ) -> Result<RefreshOutcome, StoreError> {
        dispatch!(self, b => b.rotate_refresh(token_hash, new, ok_ev, reuse_ev).await)
    }

    pub async fn session_active(&self, session_id: &str) -> Result<bool, StoreError> {
        dispatch!(self, b => b.session_active(session_id).await)
    }

    pub async fn revoke_session(
        &self,
        tenant_id: &str,
        session_id: &str,
        reason: &str,
        ev: &AuditEvent,
    ) -> Result<(), StoreError> {
        dispatch!(self, b => b.revoke_session(tenant_id, session_id, reason, ev).await)
    }

    pub async fn revoke_user_sessions(
        &self,
        tenant_id: &str,
        user_id: &str,
        ev: &AuditEvent,
    ) -> Result<u64, StoreError> {
        dispatch!(self, b => b.revoke_user_sessions(tenant_id, user_id, ev).await)
    }

    pub async fn change_password(
        &self,
        tenant_id: &str,
        user_id: &str,
        new_hash: &str,
        ev: &AuditEvent,
    ) -> Result<(), StoreError> {
        dispatch!(self, b => b.change_password(tenant_id, user_id, new_hash, ev).await)
    }

    pub async fn create_payment(
        &self,
        tenant_id: &str,
        idem_key: &str,
        request_hash: &str,
        payment: &PaymentRow,
        response: &StoredResponse,
        ev: &AuditEvent,
    ) -> Result<IdempotentOutcome, StoreError> {
        dispatch!(self, b => b.create_payment(tenant_id, idem_key, request_hash, payment, response, ev).await)
    }

    pub async fn payment(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<PaymentRow>, StoreError> {
        dispatch!(self, b => b.payment(tenant_id, id).await)
    }

    pub async fn list_payments(
        &self,
        tenant_id: &str,
        filter: &PaymentFilter,
    ) -> Result<Vec<PaymentRow>, StoreError> {
        dispatch!(self, b => b.list_payments(tenant_id, filter).await)
    }

    /// Apply a status change; `ev` is completed with the payment's tenant and written in the same transaction.
    pub async fn transition(
        &self,
        t: &Transition,
        ev: &AuditEvent,
    ) -> Result<TransitionOutcome, StoreError> {
        dispatch!(self, b => b.transition(t, ev).await)
    }

    pub async fn list_audit(
        &self,
        tenant_id: &str,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        dispatch!(self, b => b.list_audit(tenant_id, filter).await)
    }

    /// Verify every tenant's chain; returns the number of records checked or the first break.
    pub async fn verify_audit(&self) -> Result<Result<u64, ChainBreak>, StoreError> {
        dispatch!(self, b => b.verify_audit().await)
    }
}
