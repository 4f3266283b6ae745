//! Payments: idempotent creation, reads, and status moves checked by the state machine. Compiled
//! into both backends (see `store`).

use sqlx::Row;

use super::audit::write_audit;
use super::rows::{bind_payment, now_ms, payment_from_row, PAYMENT_COLUMNS};
use super::{Backend, DATA_MODIFYING_CTE};
use crate::payments::audit::AuditEvent;
use crate::payments::domain::payment::{check_transition, IllegalTransition};
use crate::payments::store::{
    IdempotentOutcome, PaymentFilter, PaymentRow, StoreError, StoredResponse, Transition,
    TransitionOutcome,
};

impl Backend {
    pub async fn create_payment(
        &self,
        tenant_id: &str,
        idem_key: &str,
        request_hash: &str,
        p: &PaymentRow,
        response: &StoredResponse,
        ev: &AuditEvent,
    ) -> Result<IdempotentOutcome, StoreError> {
        let now = p.created_at;
        let mut tx = self.begin().await?;
        // Claim the key first. On PostgreSQL a concurrent claim of the same key waits here until
        // the first transaction ends, then sees its committed row: exactly one payment is created.
        let claimed = if DATA_MODIFYING_CTE {
            // Claim and insert in one statement: the payment row is written only if the claim won.
            let sql = format!(
                "WITH claim AS (INSERT INTO idempotency_keys (tenant_id, idem_key, request_hash, status_code, \
                 response_body, created_at) VALUES ($13, $14, $15, $16, $17, $18) ON CONFLICT DO NOTHING RETURNING 1) \
                 INSERT INTO payments ({PAYMENT_COLUMNS}) SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12 \
                 WHERE EXISTS (SELECT 1 FROM claim)"
            );
            bind_payment(sqlx::query(&sql), p)
                .bind(tenant_id)
                .bind(idem_key)
                .bind(request_hash)
                .bind(i64::from(response.status))
                .bind(&response.body)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1
        } else {
            let claimed = sqlx::query(
                "INSERT INTO idempotency_keys (tenant_id, idem_key, request_hash, status_code, response_body, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(tenant_id)
            .bind(idem_key)
            .bind(request_hash)
            .bind(i64::from(response.status))
            .bind(&response.body)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if claimed {
                let sql = format!(
                    "INSERT INTO payments ({PAYMENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
                );
                bind_payment(sqlx::query(&sql), p).execute(&mut *tx).await?;
            }
            claimed
        };
        if !claimed {
            let row = sqlx::query(
                "SELECT request_hash, status_code, response_body FROM idempotency_keys WHERE tenant_id = $1 AND idem_key = $2",
            )
            .bind(tenant_id)
            .bind(idem_key)
            .fetch_one(&mut *tx)
            .await?;
            tx.rollback().await?;
            let stored_hash: String = row.try_get("request_hash")?;
            if stored_hash != request_hash {
                return Ok(IdempotentOutcome::KeyReused);
            }
            let status: i64 = row.try_get("status_code")?;
            return Ok(IdempotentOutcome::Replayed(StoredResponse {
                status: u16::try_from(status).map_err(|_| StoreError::Corrupt {
                    column: "idempotency_keys.status_code",
                    value: status.to_string(),
                })?,
                body: row.try_get("response_body")?,
            }));
        }
        write_audit(&mut tx, ev, now, None).await?;
        tx.commit().await?;
        Ok(IdempotentOutcome::Created(response.clone()))
    }

    pub async fn payment(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<PaymentRow>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(tenant_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(payment_from_row).transpose()
    }

    pub async fn list_payments(
        &self,
        tenant_id: &str,
        f: &PaymentFilter,
    ) -> Result<Vec<PaymentRow>, StoreError> {
        let mut sql = format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE tenant_id = $1");
        let mut n = 1;
        if f.status.is_some() {
            n += 1;
            sql.push_str(&format!(" AND status = ${n}"));
        }
        if f.after.is_some() {
            sql.push_str(&format!(
                " AND (created_at < ${a} OR (created_at = ${a} AND id < ${b}))",
                a = n + 1,
                b = n + 2
            ));
            n += 2;
        }
        sql.push_str(&format!(
            " ORDER BY created_at DESC, id DESC LIMIT ${}",
            n + 1
        ));
        let mut q = sqlx::query(&sql).bind(tenant_id);
        if let Some(s) = f.status {
            q = q.bind(s.as_str());
        }
        if let Some((at, id)) = &f.after {
            q = q.bind(*at).bind(id);
        }
        let rows = q.bind(f.limit).fetch_all(&self.pool).await?;
        rows.iter().map(payment_from_row).collect()
    }

    pub async fn transition(
        &self,
        t: &Transition,
        ev: &AuditEvent,
    ) -> Result<TransitionOutcome, StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        if let Some(event_id) = &t.webhook_event_id {
            let fresh = sqlx::query(
                "INSERT INTO webhook_deliveries (event_id, payment_id, received_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(event_id)
            .bind(&t.payment_id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !fresh {
                return Ok(TransitionOutcome::Replayed);
            }
        }
        let row = match &t.tenant_id {
            Some(tenant) => {
                sqlx::query(&format!(
                    "SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1 AND tenant_id = $2"
                ))
                .bind(&t.payment_id)
                .bind(tenant)
                .fetch_optional(&mut *tx)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1"
                ))
                .bind(&t.payment_id)
                .fetch_optional(&mut *tx)
                .await?
            }
        };
        let Some(row) = row else {
            return Ok(TransitionOutcome::NotFound);
        };
        let mut payment = payment_from_row(&row)?;
        if let Err(illegal) = check_transition(payment.status, t.to) {
            return Ok(TransitionOutcome::Illegal(illegal));
        }
        // Compare-and-set on the status: a concurrent change makes this one a conflict, never a lost update.
        let moved = sqlx::query(
            "UPDATE payments SET status = $1, updated_at = $2 WHERE id = $3 AND status = $4",
        )
        .bind(t.to.as_str())
        .bind(now)
        .bind(&payment.id)
        .bind(payment.status.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !moved {
            // It moved meanwhile: the move was checked against a status that is gone.
            return Ok(TransitionOutcome::Illegal(IllegalTransition {
                from: payment.status,
                to: t.to,
            }));
        }
        let mut ev = ev.clone();
        ev.tenant_id = payment.tenant_id.clone();
        ev.resource_id = payment.id.clone();
        if let serde_json::Value::Object(map) = &mut ev.details {
            map.insert("from".into(), payment.status.as_str().into());
            map.insert("to".into(), t.to.as_str().into());
        }
        write_audit(&mut tx, &ev, now, None).await?;
        tx.commit().await?;
        payment.status = t.to;
        payment.updated_at = now;
        Ok(TransitionOutcome::Moved(Box::new(payment)))
    }
}
