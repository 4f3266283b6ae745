//! The SQLite store: one file, WAL journal, `synchronous=FULL` so that a commit that was answered
//! with 201 survives a crash, and `BEGIN IMMEDIATE` so that writers queue instead of failing.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

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
}

impl Backend {
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(timeout)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Backend { pool })
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, Db>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

include!("ops.rs");
