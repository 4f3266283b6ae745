//! The SQLite store: one file, WAL journal, `synchronous=FULL` so that a commit that was answered
//! with 201 survives a crash. SQLite allows one writer at a time, so writes go through a pool of
//! exactly one connection: writers wait in that pool's fair queue instead of in SQLite's busy
//! handler, whose sleeps make tail latency explode. `BEGIN IMMEDIATE` (and the busy timeout) still
//! cover writers in other processes such as `ward payments bootstrap`. Reads use their own pool.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::StoreError;

type Db = sqlx::Sqlite;
/// SQLite has no data-modifying CTEs.
const DATA_MODIFYING_CTE: bool = false;
/// SQLite has one writer at a time: every record goes to lane 0.
const PICK_FREE_LANE: Option<&str> = None;
type Pool = sqlx::SqlitePool;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/payments/migrations/sqlite");

#[derive(Debug, Clone)]
pub struct Backend {
    pub(super) pool: Pool,
    writer: Pool,
}

impl Backend {
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(timeout);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(timeout)
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&writer).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(timeout)
            .connect_with(options)
            .await?;
        Ok(Backend { pool, writer })
    }

    pub(super) async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, Db>, StoreError> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
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
