//! The PostgreSQL store: the scale path, shared by several replicas. Concurrency comes from row
//! locks (`UPDATE ... RETURNING` on the audit head, unique-index waits on idempotency keys);
//! every statement has a server-side `statement_timeout`.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

type Db = sqlx::Postgres;
/// PostgreSQL runs data-modifying CTEs: ops.rs folds two statements into one.
const DATA_MODIFYING_CTE: bool = true;
/// Take the first audit lane of the tenant that no other transaction holds (see `audit`).
const PICK_FREE_LANE: Option<&str> = Some(
    "UPDATE audit_heads SET seq = seq + 1 WHERE tenant_id = $1 AND lane = \
     (SELECT lane FROM audit_heads WHERE tenant_id = $1 ORDER BY lane LIMIT 1 FOR UPDATE SKIP LOCKED) \
     RETURNING lane, seq, hash",
);
type Pool = sqlx::PgPool;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/payments/migrations/postgres");

#[derive(Debug, Clone)]
pub struct Backend {
    pub(super) pool: Pool,
}

impl Backend {
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?
            .options([("statement_timeout", format!("{}", timeout.as_millis()))]);
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(timeout)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Backend { pool })
    }

    pub(super) async fn close(&self) {
        self.pool.close().await;
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, Db>, StoreError> {
        Ok(self.pool.begin().await?)
    }
}

include!("ops.rs");
