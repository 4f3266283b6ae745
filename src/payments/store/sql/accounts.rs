//! Tenants, users, failed logins, sessions and refresh tokens. Compiled into both backends (see
//! `store`).

use sqlx::Row;

use super::audit::write_audit;
use super::rows::{new_id, now_ms, role_of, user_from_row, Tx};
use super::Backend;
use crate::payments::audit::{AuditEvent, AUDIT_LANES, GENESIS_HASH};
use crate::payments::domain::lockout::{FailedLogins, Failure, LockoutPolicy};
use crate::payments::store::{
    unique_violation, NewSession, NewUser, RefreshOutcome, StoreError, Tenant, UserAuth,
};

async fn insert_session(
    tx: &mut Tx,
    user: &UserAuth,
    s: &NewSession,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO sessions (id, tenant_id, user_id, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(&s.session_id)
    .bind(&user.tenant_id)
    .bind(&user.id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    insert_refresh(tx, &user.tenant_id, &user.id, s, now).await
}

async fn insert_refresh(
    tx: &mut Tx,
    tenant_id: &str,
    user_id: &str,
    s: &NewSession,
    now: i64,
) -> Result<(), StoreError> {
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

impl Backend {
    pub async fn create_tenant(
        &self,
        slug: &str,
        name: &str,
        admin: &NewUser,
        evs: &[AuditEvent],
    ) -> Result<Tenant, StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let inserted =
            sqlx::query("INSERT INTO tenants (id, slug, name, created_at) VALUES ($1, $2, $3, $4)")
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
            sqlx::query(
                "INSERT INTO audit_heads (tenant_id, lane, seq, hash) VALUES ($1, $2, 0, $3)",
            )
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
        .bind(admin.role.as_str())
        .bind(&admin.password_hash)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let mut held: Vec<(String, i64)> = Vec::new();
        for ev in evs {
            let lane = held
                .iter()
                .find(|(t, _)| *t == ev.tenant_id)
                .map(|(_, l)| *l);
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

    pub async fn tenant_exists(&self, id: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT id FROM tenants WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
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
        .bind(user.role.as_str())
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

    pub async fn user_for_login(
        &self,
        tenant_id: &str,
        email: &str,
    ) -> Result<Option<UserAuth>, StoreError> {
        let row = sqlx::query(
            "SELECT id, tenant_id, email, role, password_hash, locked_until FROM users WHERE tenant_id = $1 AND email = $2",
        )
        .bind(tenant_id)
        .bind(email)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    pub async fn user_by_id(
        &self,
        tenant_id: &str,
        user_id: &str,
    ) -> Result<Option<UserAuth>, StoreError> {
        let row = sqlx::query(
            "SELECT id, tenant_id, email, role, password_hash, locked_until FROM users WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant_id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    pub async fn login_succeeded(
        &self,
        user: &UserAuth,
        session: &NewSession,
        ev: &AuditEvent,
    ) -> Result<(), StoreError> {
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

    pub async fn login_failed(
        &self,
        user: &UserAuth,
        policy: LockoutPolicy,
        ev: &AuditEvent,
        lock_ev: &AuditEvent,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let row = sqlx::query(
            "SELECT failed_count, first_failed_at, locked_until FROM users WHERE id = $1",
        )
        .bind(&user.id)
        .fetch_one(&mut *tx)
        .await?;
        let before = FailedLogins {
            count: row.try_get("failed_count")?,
            first_failed_at: row.try_get("first_failed_at")?,
            locked_until: row.try_get("locked_until")?,
        };
        let failure = policy.record_failure(before, now);
        match failure {
            Failure::WhileLocked => {}
            Failure::Counted {
                count,
                first_failed_at,
            } => {
                sqlx::query("UPDATE users SET failed_count = $1, first_failed_at = $2, locked_until = NULL WHERE id = $3")
                    .bind(count)
                    .bind(first_failed_at)
                    .bind(&user.id)
                    .execute(&mut *tx)
                    .await?;
            }
            Failure::LockedNow { until } => {
                sqlx::query("UPDATE users SET failed_count = 0, first_failed_at = NULL, locked_until = $1 WHERE id = $2")
                    .bind(until)
                    .bind(&user.id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let locked_now = matches!(failure, Failure::LockedNow { .. });
        let first = write_audit(&mut tx, ev, now, None).await?;
        if locked_now {
            write_audit(&mut tx, lock_ev, now, Some(first.lane)).await?;
        }
        tx.commit().await?;
        Ok(locked_now)
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
        let role = role_of(&row)?;
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
            return Ok(RefreshOutcome::ReuseDetected { session_id });
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

    pub async fn revoke_session(
        &self,
        tenant_id: &str,
        session_id: &str,
        reason: &str,
        ev: &AuditEvent,
    ) -> Result<(), StoreError> {
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

    /// Revokes every active session of a user (an admin's decision).
    pub async fn revoke_user_sessions(
        &self,
        tenant_id: &str,
        user_id: &str,
        ev: &AuditEvent,
    ) -> Result<u64, StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let n = sqlx::query("UPDATE sessions SET revoked_at = $1, revoked_reason = 'admin' WHERE user_id = $2 AND tenant_id = $3 AND revoked_at IS NULL")
            .bind(now)
            .bind(user_id)
            .bind(tenant_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        write_audit(&mut tx, ev, now, None).await?;
        tx.commit().await?;
        Ok(n)
    }

    pub async fn change_password(
        &self,
        tenant_id: &str,
        user_id: &str,
        new_hash: &str,
        ev: &AuditEvent,
    ) -> Result<(), StoreError> {
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
}
