// The store operations, written once and included by `sqlite.rs` and `postgres.rs`, each of which
// defines `Db`, `Pool`, `Backend { pool }` and `Backend::begin`. Keep the SQL portable.

use sqlx::Row;

use super::{
    unique_violation, AuditFilter, IdempotentOutcome, LockoutPolicy, NewSession, NewUser, PaymentFilter, PaymentRow,
    RefreshOutcome, StoreError, StoredResponse, Tenant, Transition, TransitionOutcome, UserAuth,
};
use crate::payments::audit::{chain_hash, verify_chain, AuditEvent, AuditRecord, ChainBreak, AUDIT_LANES, GENESIS_HASH};

type Tx = sqlx::Transaction<'static, Db>;

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

const PAYMENT_COLUMNS: &str = "id, tenant_id, amount_minor, currency, description, payer_masked, payer_ciphertext, \
     payer_key_id, status, created_by, created_at, updated_at";

const AUDIT_COLUMNS: &str = "pos, id, tenant_id, lane, seq, created_at, actor, action, resource_type, resource_id, client_ip, \
     request_id, details, prev_hash, hash";

fn payment_from_row(row: &<Db as sqlx::Database>::Row) -> Result<PaymentRow, sqlx::Error> {
    Ok(PaymentRow {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        amount_minor: row.try_get("amount_minor")?,
        currency: row.try_get("currency")?,
        description: row.try_get("description")?,
        payer_masked: row.try_get("payer_masked")?,
        payer_ciphertext: row.try_get("payer_ciphertext")?,
        payer_key_id: row.try_get("payer_key_id")?,
        status: row.try_get("status")?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn audit_from_row(row: &<Db as sqlx::Database>::Row) -> Result<AuditRecord, sqlx::Error> {
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

fn user_from_row(row: &<Db as sqlx::Database>::Row) -> Result<UserAuth, sqlx::Error> {
    Ok(UserAuth {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        email: row.try_get("email")?,
        role: row.try_get("role")?,
        password_hash: row.try_get("password_hash")?,
        locked_until: row.try_get("locked_until")?,
    })
}

/// Append one record to a chain (lane) of its tenant. The `UPDATE ... RETURNING` on the lane's
/// head row takes its row lock until commit, so writers of one lane queue instead of forking it;
/// callers write audit records last in their transaction to keep that lock short.
///
/// `lane`: a lane this transaction already holds for the tenant (several records in one
/// transaction), else `None` to pick one. A transaction therefore waits for at most one lane per
/// tenant and holds no lane while waiting for another: no lock cycle, no deadlock.
async fn write_audit(tx: &mut Tx, ev: &AuditEvent, now: i64, lane: Option<i64>) -> Result<AuditRecord, StoreError> {
    const TAKE_LANE: &str = "UPDATE audit_heads SET seq = seq + 1 WHERE tenant_id = $1 AND lane = $2 RETURNING lane, seq, hash";
    let mut head = None;
    if let (None, Some(pick)) = (lane, PICK_FREE_LANE) {
        head = sqlx::query(pick).bind(&ev.tenant_id).fetch_optional(&mut **tx).await?;
    }
    if head.is_none() {
        // Every lane busy (or SQLite, or a lane already held): wait for one.
        let lane = lane.unwrap_or_else(|| if PICK_FREE_LANE.is_some() { rand::random::<u32>() as i64 % AUDIT_LANES } else { 0 });
        head = sqlx::query(TAKE_LANE).bind(&ev.tenant_id).bind(lane).fetch_optional(&mut **tx).await?;
    }
    let head = head.ok_or_else(|| StoreError::NoAuditHead(ev.tenant_id.clone()))?;
    let lane: i64 = head.try_get("lane")?;
    let seq: i64 = head.try_get("seq")?;
    let prev: String = head.try_get("hash")?;
    let mut rec = AuditRecord {
        pos: 0,
        id: new_id(),
        tenant_id: ev.tenant_id.clone(),
        lane,
        seq,
        created_at: now,
        actor: ev.actor.clone(),
        action: ev.action.to_string(),
        resource_type: ev.resource_type.to_string(),
        resource_id: ev.resource_id.clone(),
        client_ip: ev.client_ip.clone(),
        request_id: ev.request_id.clone(),
        details: ev.details.to_string(),
        prev_hash: prev.clone(),
        hash: String::new(),
    };
    rec.hash = chain_hash(&prev, &rec);
    const INSERT: &str = "INSERT INTO audit_log (id, tenant_id, seq, created_at, actor, action, resource_type, \
         resource_id, client_ip, request_id, details, prev_hash, hash, lane) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";
    // One round trip less while the chain head is locked, where the engine allows it.
    let combined;
    let sql = if DATA_MODIFYING_CTE {
        combined = format!("WITH appended AS ({INSERT}) UPDATE audit_heads SET hash = $13 WHERE tenant_id = $2 AND lane = $14");
        combined.as_str()
    } else {
        INSERT
    };
    sqlx::query(sql)
    .bind(&rec.id)
    .bind(&rec.tenant_id)
    .bind(rec.seq)
    .bind(rec.created_at)
    .bind(&rec.actor)
    .bind(&rec.action)
    .bind(&rec.resource_type)
    .bind(&rec.resource_id)
    .bind(&rec.client_ip)
    .bind(&rec.request_id)
    .bind(&rec.details)
    .bind(&rec.prev_hash)
    .bind(&rec.hash)
    .bind(rec.lane)
    .execute(&mut **tx)
    .await?;
    if !DATA_MODIFYING_CTE {
        sqlx::query("UPDATE audit_heads SET hash = $1 WHERE tenant_id = $2 AND lane = $3")
            .bind(&rec.hash)
            .bind(&ev.tenant_id)
            .bind(rec.lane)
            .execute(&mut **tx)
            .await?;
    }
    Ok(rec)
}

async fn insert_session(tx: &mut Tx, user: &UserAuth, s: &NewSession, now: i64) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO sessions (id, tenant_id, user_id, created_at) VALUES ($1, $2, $3, $4)")
        .bind(&s.session_id)
        .bind(&user.tenant_id)
        .bind(&user.id)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    insert_refresh(tx, &user.tenant_id, &user.id, s, now).await
}

async fn insert_refresh(tx: &mut Tx, tenant_id: &str, user_id: &str, s: &NewSession, now: i64) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO refresh_tokens (id, token_hash, session_id, tenant_id, user_id, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(new_id())
    .bind(&s.refresh_hash)
    .bind(&s.session_id)
    .bind(tenant_id)
    .bind(user_id)
    .bind(now)
    .bind(s.refresh_expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

type Query<'q> = sqlx::query::Query<'q, Db, <Db as sqlx::Database>::Arguments<'q>>;

/// Bind a payment's twelve columns as `$1..$12`, in `PAYMENT_COLUMNS` order.
fn bind_payment<'q>(q: Query<'q>, p: &'q PaymentRow) -> Query<'q> {
    q.bind(&p.id)
        .bind(&p.tenant_id)
        .bind(p.amount_minor)
        .bind(&p.currency)
        .bind(&p.description)
        .bind(&p.payer_masked)
        .bind(&p.payer_ciphertext)
        .bind(&p.payer_key_id)
        .bind(&p.status)
        .bind(&p.created_by)
        .bind(p.created_at)
        .bind(p.updated_at)
}

impl Backend {
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn create_tenant(&self, slug: &str, name: &str, admin: &NewUser, evs: &[AuditEvent]) -> Result<Tenant, StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let inserted = sqlx::query("INSERT INTO tenants (id, slug, name, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&admin.tenant_id)
            .bind(slug)
            .bind(name)
            .bind(now)
            .execute(&mut *tx)
            .await;
        match inserted {
            Err(e) if unique_violation(&e) => return Err(StoreError::Duplicate("tenant")),
            other => other?,
        };
        for lane in 0..AUDIT_LANES {
            sqlx::query("INSERT INTO audit_heads (tenant_id, lane, seq, hash) VALUES ($1, $2, 0, $3)")
                .bind(&admin.tenant_id)
                .bind(lane)
                .bind(GENESIS_HASH)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO users (id, tenant_id, email, role, password_hash, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&admin.id)
        .bind(&admin.tenant_id)
        .bind(&admin.email)
        .bind(&admin.role)
        .bind(&admin.password_hash)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let mut held: Vec<(String, i64)> = Vec::new();
        for ev in evs {
            let lane = held.iter().find(|(t, _)| *t == ev.tenant_id).map(|(_, l)| *l);
            let rec = write_audit(&mut tx, ev, now, lane).await?;
            held.push((rec.tenant_id, rec.lane));
        }
        tx.commit().await?;
        Ok(Tenant {
            id: admin.tenant_id.clone(),
            slug: slug.to_string(),
            name: name.to_string(),
        })
    }

    pub async fn tenant_by_slug(&self, slug: &str) -> Result<Option<Tenant>, StoreError> {
        let row = sqlx::query("SELECT id, slug, name FROM tenants WHERE slug = $1")
            .bind(slug)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(Tenant {
                id: r.try_get("id")?,
                slug: r.try_get("slug")?,
                name: r.try_get("name")?,
            }),
            None => None,
        })
    }

    pub async fn create_user(&self, user: &NewUser, ev: &AuditEvent) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO users (id, tenant_id, email, role, password_hash, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&user.id)
        .bind(&user.tenant_id)
        .bind(&user.email)
        .bind(&user.role)
        .bind(&user.password_hash)
        .bind(now)
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(e) if unique_violation(&e) => return Err(StoreError::Duplicate("user")),
            other => other?,
        };
        write_audit(&mut tx, ev, now, None).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn user_for_login(&self, tenant_id: &str, email: &str) -> Result<Option<UserAuth>, StoreError> {
        let row = sqlx::query(
            "SELECT id, tenant_id, email, role, password_hash, locked_until FROM users WHERE tenant_id = $1 AND email = $2",
        )
        .bind(tenant_id)
        .bind(email)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(user_from_row).transpose()?)
    }

    pub async fn user_by_id(&self, tenant_id: &str, user_id: &str) -> Result<Option<UserAuth>, StoreError> {
        let row = sqlx::query(
            "SELECT id, tenant_id, email, role, password_hash, locked_until FROM users WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant_id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(user_from_row).transpose()?)
    }

    pub async fn login_succeeded(&self, user: &UserAuth, session: &NewSession, ev: &AuditEvent) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE users SET failed_count = 0, first_failed_at = NULL, locked_until = NULL WHERE id = $1")
            .bind(&user.id)
            .execute(&mut *tx)
            .await?;
        insert_session(&mut tx, user, session, now).await?;
        write_audit(&mut tx, ev, now, None).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn login_failed(&self, user: &UserAuth, policy: LockoutPolicy, ev: &AuditEvent, lock_ev: &AuditEvent) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let row = sqlx::query("SELECT failed_count, first_failed_at, locked_until FROM users WHERE id = $1")
            .bind(&user.id)
            .fetch_one(&mut *tx)
            .await?;
        let count: i64 = row.try_get("failed_count")?;
        let first: Option<i64> = row.try_get("first_failed_at")?;
        let locked_until: Option<i64> = row.try_get("locked_until")?;
        let mut locked_now = false;
        // While locked, attempts are refused without counting: the lock ends on schedule.
        if locked_until.is_none_or(|until| until <= now) {
            let window_ms = policy.window.as_millis() as i64;
            let (count, first) = match first {
                Some(f) if now - f < window_ms => (count + 1, f),
                _ => (1, now),
            };
            if count >= policy.max_failures {
                locked_now = true;
                sqlx::query("UPDATE users SET failed_count = 0, first_failed_at = NULL, locked_until = $1 WHERE id = $2")
                    .bind(now + policy.duration.as_millis() as i64)
                    .bind(&user.id)
                    .execute(&mut *tx)
                    .await?;
            } else {
                sqlx::query("UPDATE users SET failed_count = $1, first_failed_at = $2, locked_until = NULL WHERE id = $3")
                    .bind(count)
                    .bind(first)
                    .bind(&user.id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let first = write_audit(&mut tx, ev, now, None).await?;
        if locked_now {
            write_audit(&mut tx, lock_ev, now, Some(first.lane)).await?;
        }
        tx.commit().await?;
        Ok(locked_now)
    }

    pub async fn append_audit(&self, ev: &AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        write_audit(&mut tx, ev, now_ms(), None).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn rotate_refresh(
        &self,
        token_hash: &str,
        new: &NewSession,
        ok_ev: &AuditEvent,
        reuse_ev: &AuditEvent,
    ) -> Result<RefreshOutcome, StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let row = sqlx::query(
            "SELECT r.id, r.session_id, r.tenant_id, r.user_id, r.expires_at, r.used_at, s.revoked_at, u.role \
             FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id JOIN users u ON u.id = r.user_id \
             WHERE r.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(RefreshOutcome::Invalid);
        };
        let token_id: String = row.try_get("id")?;
        let session_id: String = row.try_get("session_id")?;
        let tenant_id: String = row.try_get("tenant_id")?;
        let user_id: String = row.try_get("user_id")?;
        let role: String = row.try_get("role")?;
        let expires_at: i64 = row.try_get("expires_at")?;
        let used_at: Option<i64> = row.try_get("used_at")?;
        let revoked_at: Option<i64> = row.try_get("revoked_at")?;
        if revoked_at.is_some() || expires_at <= now {
            return Ok(RefreshOutcome::Invalid);
        }
        // Claim the token; a concurrent refresh with the same token loses this race and is treated
        // as reuse, which is what a stolen-and-replayed token looks like.
        let claimed = if used_at.is_none() {
            sqlx::query("UPDATE refresh_tokens SET used_at = $1 WHERE id = $2 AND used_at IS NULL")
                .bind(now)
                .bind(&token_id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1
        } else {
            false
        };
        if !claimed {
            sqlx::query("UPDATE sessions SET revoked_at = $1, revoked_reason = 'refresh_reuse' WHERE id = $2 AND revoked_at IS NULL")
                .bind(now)
                .bind(&session_id)
                .execute(&mut *tx)
                .await?;
            let mut ev = reuse_ev.clone();
            ev.tenant_id = tenant_id.clone();
            ev.actor = format!("user:{user_id}");
            ev.resource_id = session_id.clone();
            write_audit(&mut tx, &ev, now, None).await?;
            tx.commit().await?;
            return Ok(RefreshOutcome::ReuseDetected);
        }
        let next = NewSession {
            session_id: session_id.clone(),
            ..new.clone()
        };
        insert_refresh(&mut tx, &tenant_id, &user_id, &next, now).await?;
        let mut ev = ok_ev.clone();
        ev.tenant_id = tenant_id.clone();
        ev.actor = format!("user:{user_id}");
        ev.resource_id = session_id.clone();
        write_audit(&mut tx, &ev, now, None).await?;
        tx.commit().await?;
        Ok(RefreshOutcome::Rotated {
            user_id,
            tenant_id,
            role,
            session_id,
        })
    }

    pub async fn session_active(&self, session_id: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT revoked_at FROM sessions WHERE id = $1")
            .bind(session_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => r.try_get::<Option<i64>, _>("revoked_at")?.is_none(),
            None => false,
        })
    }

    pub async fn revoke_session(&self, tenant_id: &str, session_id: &str, reason: &str, ev: &AuditEvent) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE sessions SET revoked_at = $1, revoked_reason = $2 WHERE id = $3 AND tenant_id = $4 AND revoked_at IS NULL")
            .bind(now)
            .bind(reason)
            .bind(session_id)
            .bind(tenant_id)
            .execute(&mut *tx)
            .await?;
        write_audit(&mut tx, ev, now, None).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn change_password(&self, tenant_id: &str, user_id: &str, new_hash: &str, ev: &AuditEvent) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2 AND tenant_id = $3")
            .bind(new_hash)
            .bind(user_id)
            .bind(tenant_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE sessions SET revoked_at = $1, revoked_reason = 'password_change' WHERE user_id = $2 AND revoked_at IS NULL")
            .bind(now)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        write_audit(&mut tx, ev, now, None).await?;
        tx.commit().await?;
        Ok(())
    }

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
                status: u16::try_from(status).map_err(|_| StoreError::Corrupt("status code".into()))?,
                body: row.try_get("response_body")?,
            }));
        }
        write_audit(&mut tx, ev, now, None).await?;
        tx.commit().await?;
        Ok(IdempotentOutcome::Created(response.clone()))
    }

    pub async fn payment(&self, tenant_id: &str, id: &str) -> Result<Option<PaymentRow>, StoreError> {
        let row = sqlx::query(&format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE tenant_id = $1 AND id = $2"))
            .bind(tenant_id)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(payment_from_row).transpose()?)
    }

    pub async fn list_payments(&self, tenant_id: &str, f: &PaymentFilter) -> Result<Vec<PaymentRow>, StoreError> {
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
        sql.push_str(&format!(" ORDER BY created_at DESC, id DESC LIMIT ${}", n + 1));
        let mut q = sqlx::query(&sql).bind(tenant_id);
        if let Some(s) = &f.status {
            q = q.bind(s);
        }
        if let Some((at, id)) = &f.after {
            q = q.bind(*at).bind(id);
        }
        let rows = q.bind(f.limit).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(payment_from_row).collect::<Result<_, _>>()?)
    }

    pub async fn transition(&self, t: &Transition, ev: &AuditEvent) -> Result<TransitionOutcome, StoreError> {
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
            Some(tenant) => sqlx::query(&format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1 AND tenant_id = $2"))
                .bind(&t.payment_id)
                .bind(tenant)
                .fetch_optional(&mut *tx)
                .await?,
            None => sqlx::query(&format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1"))
                .bind(&t.payment_id)
                .fetch_optional(&mut *tx)
                .await?,
        };
        let Some(row) = row else {
            return Ok(TransitionOutcome::NotFound);
        };
        let mut payment = payment_from_row(&row)?;
        if !t.from.contains(&payment.status.as_str()) {
            return Ok(TransitionOutcome::Illegal { from: payment.status });
        }
        // Compare-and-set on the status: a concurrent change makes this one a conflict, never a lost update.
        let moved = sqlx::query("UPDATE payments SET status = $1, updated_at = $2 WHERE id = $3 AND status = $4")
            .bind(t.to)
            .bind(now)
            .bind(&payment.id)
            .bind(&payment.status)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if !moved {
            return Ok(TransitionOutcome::Illegal { from: payment.status });
        }
        let mut ev = ev.clone();
        ev.tenant_id = payment.tenant_id.clone();
        ev.resource_id = payment.id.clone();
        if let serde_json::Value::Object(map) = &mut ev.details {
            map.insert("from".into(), payment.status.clone().into());
            map.insert("to".into(), t.to.into());
        }
        write_audit(&mut tx, &ev, now, None).await?;
        tx.commit().await?;
        payment.status = t.to.to_string();
        payment.updated_at = now;
        Ok(TransitionOutcome::Moved(Box::new(payment)))
    }

    pub async fn list_audit(&self, tenant_id: &str, f: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let mut sql = format!("SELECT {AUDIT_COLUMNS} FROM audit_log WHERE tenant_id = $1");
        let mut n = 1;
        let mut texts: Vec<&String> = Vec::new();
        let mut numbers: Vec<i64> = Vec::new();
        for (col, v) in [("action", &f.action), ("resource_type", &f.resource_type), ("resource_id", &f.resource_id)] {
            if let Some(v) = v {
                n += 1;
                sql.push_str(&format!(" AND {col} = ${n}"));
                texts.push(v);
            }
        }
        for (cond, v) in [("created_at >=", f.since), ("created_at <", f.until), ("pos <", f.before_pos)] {
            if let Some(v) = v {
                n += 1;
                sql.push_str(&format!(" AND {cond} ${n}"));
                numbers.push(v);
            }
        }
        sql.push_str(&format!(" ORDER BY pos DESC LIMIT ${}", n + 1));
        let mut q = sqlx::query(&sql).bind(tenant_id);
        for t in texts {
            q = q.bind(t);
        }
        for v in numbers {
            q = q.bind(v);
        }
        let rows = q.bind(f.limit).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(audit_from_row).collect::<Result<_, _>>()?)
    }

    pub async fn verify_audit(&self) -> Result<Result<u64, ChainBreak>, StoreError> {
        let heads = sqlx::query("SELECT tenant_id, lane, seq, hash FROM audit_heads ORDER BY tenant_id, lane")
            .fetch_all(&self.pool)
            .await?;
        let mut checked = 0u64;
        let mut lanes: Vec<(String, i64)> = Vec::new();
        for head in heads {
            let tenant_id: String = head.try_get("tenant_id")?;
            let lane: i64 = head.try_get("lane")?;
            let seq: i64 = head.try_get("seq")?;
            let hash: String = head.try_get("hash")?;
            let rows = sqlx::query(&format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE tenant_id = $1 AND lane = $2 ORDER BY seq"
            ))
            .bind(&tenant_id)
            .bind(lane)
            .fetch_all(&self.pool)
            .await?;
            let records: Vec<AuditRecord> = rows.iter().map(audit_from_row).collect::<Result<_, _>>()?;
            if let Err(b) = verify_chain(&tenant_id, lane, &records, seq, &hash) {
                return Ok(Err(b));
            }
            checked += records.len() as u64;
            lanes.push((tenant_id, lane));
        }
        // Records outside every known lane (a lane or tenant id edited) are breaks too.
        let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM audit_log").fetch_one(&self.pool).await?.try_get("n")?;
        if total as u64 != checked {
            let rows = sqlx::query(&format!("SELECT {AUDIT_COLUMNS} FROM audit_log ORDER BY pos"))
                .fetch_all(&self.pool)
                .await?;
            for row in &rows {
                let r = audit_from_row(row)?;
                if !lanes.iter().any(|(t, l)| *t == r.tenant_id && *l == r.lane) {
                    return Ok(Err(ChainBreak::UnknownLane {
                        tenant_id: r.tenant_id,
                        lane: r.lane,
                        seq: r.seq,
                        id: r.id,
                    }));
                }
            }
        }
        Ok(Ok(checked))
    }
}
