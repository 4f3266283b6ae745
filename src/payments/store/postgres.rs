//! The PostgreSQL store: the scale path, shared by several replicas. Concurrency comes from row
//! locks (`UPDATE ... RETURNING` on the audit head, unique-index waits on idempotency keys);
//! every statement has a server-side `statement_timeout`.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::StoreError;

type Db = sqlx::Postgres;
/// PostgreSQL runs data-modifying CTEs: the SQL folds two statements into one.
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

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, Db>, StoreError> {
        Ok(self.pool.begin().await?)
    }
}

// The SQL, written once for both engines: each file below is compiled here against this
// backend's `Db`, `Backend` and `begin`, and again in the other backend. Loading a file as two
// modules is the point, hence the allows.
#[allow(clippy::duplicate_mod)]
#[path = "sql/accounts.rs"]
mod accounts;
#[allow(clippy::duplicate_mod)]
#[path = "sql/audit.rs"]
mod audit;
#[allow(clippy::duplicate_mod)]
#[path = "sql/payments.rs"]
mod payments;
#[allow(clippy::duplicate_mod)]
#[path = "sql/rows.rs"]
mod rows;
