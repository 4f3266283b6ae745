//! Reading and binding rows, shared by the store's SQL: column lists, row decoders, ids and the
//! clock. A role or status the types do not know is [`StoreError::Corrupt`] naming the column and
//! the value, never a default. Compiled into both backends (see `store`).

use sqlx::Row;

use super::Db;
use crate::identity::Role;
use crate::payments::audit::AuditRecord;
use crate::payments::domain::payment::PaymentStatus;
use crate::payments::store::{PaymentRow, StoreError, UserAuth};

pub(super) type Tx = sqlx::Transaction<'static, Db>;
pub(super) type DbRow = <Db as sqlx::Database>::Row;
type Query<'q> = sqlx::query::Query<'q, Db, <Db as sqlx::Database>::Arguments<'q>>;

pub(super) fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

pub(super) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub(super) const PAYMENT_COLUMNS: &str =
    "id, tenant_id, amount_minor, currency, description, payer_masked, payer_ciphertext, \
     payer_key_id, status, created_by, created_at, updated_at";

pub(super) const AUDIT_COLUMNS: &str = "pos, id, tenant_id, lane, seq, created_at, actor, action, resource_type, resource_id, client_ip, \
     request_id, details, prev_hash, hash";

/// `users.role` of a row (selected as `role`).
pub(super) fn role_of(row: &DbRow) -> Result<Role, StoreError> {
    let raw: String = row.try_get("role")?;
    Role::parse(&raw).ok_or(StoreError::Corrupt {
        column: "users.role",
        value: raw,
    })
}

/// `payments.status` of a row (selected as `status`).
pub(super) fn status_of(row: &DbRow) -> Result<PaymentStatus, StoreError> {
    let raw: String = row.try_get("status")?;
    PaymentStatus::parse(&raw).ok_or(StoreError::Corrupt {
        column: "payments.status",
        value: raw,
    })
}

pub(super) fn payment_from_row(row: &DbRow) -> Result<PaymentRow, StoreError> {
    Ok(PaymentRow {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        amount_minor: row.try_get("amount_minor")?,
        currency: row.try_get("currency")?,
        description: row.try_get("description")?,
        payer_masked: row.try_get("payer_masked")?,
        payer_ciphertext: row.try_get("payer_ciphertext")?,
        payer_key_id: row.try_get("payer_key_id")?,
        status: status_of(row)?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

pub(super) fn audit_from_row(row: &DbRow) -> Result<AuditRecord, sqlx::Error> {
    Ok(AuditRecord {
        pos: row.try_get("pos")?,
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        lane: row.try_get("lane")?,
        seq: row.try_get("seq")?,
        created_at: row.try_get("created_at")?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        resource_type: row.try_get("resource_type")?,
        resource_id: row.try_get("resource_id")?,
        client_ip: row.try_get("client_ip")?,
        request_id: row.try_get("request_id")?,
        details: row.try_get("details")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

pub(super) fn user_from_row(row: &DbRow) -> Result<UserAuth, StoreError> {
    Ok(UserAuth {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        email: row.try_get("email")?,
        role: role_of(row)?,
        password_hash: row.try_get("password_hash")?,
        locked_until: row.try_get("locked_until")?,
    })
}

/// Bind a payment's twelve columns as `$1..$12`, in `PAYMENT_COLUMNS` order.
pub(super) fn bind_payment<'q>(q: Query<'q>, p: &'q PaymentRow) -> Query<'q> {
    q.bind(&p.id)
        .bind(&p.tenant_id)
        .bind(p.amount_minor)
        .bind(&p.currency)
        .bind(&p.description)
        .bind(&p.payer_masked)
        .bind(&p.payer_ciphertext)
        .bind(&p.payer_key_id)
        .bind(p.status.as_str())
        .bind(&p.created_by)
        .bind(p.created_at)
        .bind(p.updated_at)
}
