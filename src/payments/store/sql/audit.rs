//! The audit trail's SQL: appending to a lane of a tenant's chains, reading with filters, and
//! verifying every lane. Compiled into both backends (see `store`).

use sqlx::Row;

use super::rows::{audit_from_row, new_id, now_ms, Tx, AUDIT_COLUMNS};
use super::{Backend, DATA_MODIFYING_CTE, PICK_FREE_LANE};
use crate::payments::audit::{
    chain_hash, verify_chain, AuditEvent, AuditRecord, ChainBreak, AUDIT_LANES,
};
use crate::payments::store::{AuditFilter, StoreError};

/// Append one record to a chain (lane) of its tenant. The `UPDATE ... RETURNING` on the lane's
/// head row takes its row lock until commit, so writers of one lane queue instead of forking it;
/// callers write audit records last in their transaction to keep that lock short.
///
/// `lane`: a lane this transaction already holds for the tenant (several records in one
/// transaction), else `None` to pick one. A transaction therefore waits for at most one lane per
/// tenant and holds no lane while waiting for another: no lock cycle, no deadlock.
pub(super) async fn write_audit(
    tx: &mut Tx,
    ev: &AuditEvent,
    now: i64,
    lane: Option<i64>,
) -> Result<AuditRecord, StoreError> {
    const TAKE_LANE: &str = "UPDATE audit_heads SET seq = seq + 1 WHERE tenant_id = $1 AND lane = $2 RETURNING lane, seq, hash";
    let mut head = None;
    if let (None, Some(pick)) = (lane, PICK_FREE_LANE) {
        head = sqlx::query(pick)
            .bind(&ev.tenant_id)
            .fetch_optional(&mut **tx)
            .await?;
    }
    if head.is_none() {
        // Every lane busy (or SQLite, or a lane already held): wait for one.
        let lane = lane.unwrap_or_else(|| {
            if PICK_FREE_LANE.is_some() {
                rand::random::<u32>() as i64 % AUDIT_LANES
            } else {
                0
            }
        });
        head = sqlx::query(TAKE_LANE)
            .bind(&ev.tenant_id)
            .bind(lane)
            .fetch_optional(&mut **tx)
            .await?;
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
        action: ev.action.as_str().to_string(),
        resource_type: ev.resource_type().to_string(),
        resource_id: ev.resource_id.clone(),
        client_ip: ev.client_ip.clone(),
        request_id: ev.request_id.clone(),
        details: ev.details.to_string(),
        prev_hash: prev.clone(),
        hash: String::new(),
    };
    rec.hash = chain_hash(&prev, &rec);
    const INSERT: &str =
        "INSERT INTO audit_log (id, tenant_id, seq, created_at, actor, action, resource_type, \
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

impl Backend {
    pub async fn append_audit(&self, ev: &AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        write_audit(&mut tx, ev, now_ms(), None).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn list_audit(
        &self,
        tenant_id: &str,
        f: &AuditFilter,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let mut sql = format!("SELECT {AUDIT_COLUMNS} FROM audit_log WHERE tenant_id = $1");
        let mut n = 1;
        let mut texts: Vec<&String> = Vec::new();
        let mut numbers: Vec<i64> = Vec::new();
        for (col, v) in [
            ("action", &f.action),
            ("resource_type", &f.resource_type),
            ("resource_id", &f.resource_id),
        ] {
            if let Some(v) = v {
                n += 1;
                sql.push_str(&format!(" AND {col} = ${n}"));
                texts.push(v);
            }
        }
        for (cond, v) in [
            ("created_at >=", f.since),
            ("created_at <", f.until),
            ("pos <", f.before_pos),
        ] {
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
        let heads = sqlx::query(
            "SELECT tenant_id, lane, seq, hash FROM audit_heads ORDER BY tenant_id, lane",
        )
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
            let records: Vec<AuditRecord> =
                rows.iter().map(audit_from_row).collect::<Result<_, _>>()?;
            if let Err(b) = verify_chain(&tenant_id, lane, &records, seq, &hash) {
                return Ok(Err(b));
            }
            checked += records.len() as u64;
            lanes.push((tenant_id, lane));
        }
        // Records outside every known lane (a lane or tenant id edited) are breaks too.
        let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM audit_log")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        if total as u64 != checked {
            let rows = sqlx::query(&format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_log ORDER BY pos"
            ))
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
