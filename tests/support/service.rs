//! The payments service under test: a real service on 127.0.0.1:0 over a real store (an SQLite
//! file in a temp dir, or a freshly created PostgreSQL database on 127.0.0.1:5432 that is dropped
//! afterwards), keys generated at run time, and a plain HTTP client (the service speaks plain
//! HTTP; the proxy in front of it is what speaks TLS).

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use rand::RngCore;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Connection;
use tokio::sync::oneshot;
use ward::payments::keys::{self, DataKeys, Secret, SigningKeys};
use ward::payments::store::Store;
use ward::payments::{self, Config};

pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Run one scenario against both stores: `both_stores!(scenario)` next to `async fn scenario(kind)`
/// makes the tests `scenario::sqlite` and `scenario::postgres`.
#[macro_export]
macro_rules! both_stores {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::support::service::Kind::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::support::service::Kind::Postgres).await
            }
        }
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// A database of its own for one test: removed when dropped.
pub struct TestDb {
    pub kind: Kind,
    pub url: String,
    pub dir: tempfile::TempDir,
    pg_name: Option<String>,
}

impl TestDb {
    pub async fn new(kind: Kind) -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        match kind {
            Kind::Sqlite => {
                let url = format!("sqlite://{}", dir.path().join("payments.db").display());
                TestDb {
                    kind,
                    url,
                    dir,
                    pg_name: None,
                }
            }
            Kind::Postgres => {
                let name = format!("ward_test_{}", uuid::Uuid::new_v4().simple());
                let mut admin = sqlx::PgConnection::connect(PG_ADMIN_URL)
                    .await
                    .expect("PostgreSQL at 127.0.0.1:5432");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut admin)
                    .await
                    .expect("create test database");
                admin.close().await.ok();
                let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
                TestDb {
                    kind,
                    url,
                    dir,
                    pg_name: Some(name),
                }
            }
        }
    }

    /// A raw connection for tampering and inspecting rows as an attacker with database access would.
    pub async fn raw_execute(&self, sql: &str) -> u64 {
        match self.kind {
            Kind::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::query(sql)
                    .execute(&mut c)
                    .await
                    .unwrap()
                    .rows_affected()
            }
            Kind::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::query(sql)
                    .execute(&mut c)
                    .await
                    .unwrap()
                    .rows_affected()
            }
        }
    }

    /// Set a column to a value its CHECK constraint refuses, as a hand edit or a newer version
    /// of the service could leave it: `UPDATE {table} SET {column} = '{value}' WHERE {condition}`.
    /// Returns the rows changed.
    pub async fn write_unchecked(
        &self,
        table: &str,
        column: &str,
        value: &str,
        condition: &str,
    ) -> u64 {
        let update = format!("UPDATE {table} SET {column} = '{value}' WHERE {condition}");
        match self.kind {
            Kind::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::query("PRAGMA ignore_check_constraints = ON")
                    .execute(&mut c)
                    .await
                    .unwrap();
                sqlx::query(&update)
                    .execute(&mut c)
                    .await
                    .unwrap()
                    .rows_affected()
            }
            Kind::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::query(&format!(
                    "ALTER TABLE {table} DROP CONSTRAINT {table}_{column}_check"
                ))
                .execute(&mut c)
                .await
                .unwrap();
                sqlx::query(&update)
                    .execute(&mut c)
                    .await
                    .unwrap()
                    .rows_affected()
            }
        }
    }

    /// The raw bytes of one column of one row, as stored.
    pub async fn raw_bytes(&self, sql: &str) -> Vec<u8> {
        use sqlx::Row;
        match self.kind {
            Kind::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::query(sql)
                    .fetch_one(&mut c)
                    .await
                    .unwrap()
                    .get::<Vec<u8>, _>(0)
            }
            Kind::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::query(sql)
                    .fetch_one(&mut c)
                    .await
                    .unwrap()
                    .get::<Vec<u8>, _>(0)
            }
        }
    }

    /// Every text column of a table dumped together, for "the plaintext is nowhere" checks.
    pub async fn raw_count(&self, sql: &str) -> i64 {
        use sqlx::Row;
        match self.kind {
            Kind::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::query(sql)
                    .fetch_one(&mut c)
                    .await
                    .unwrap()
                    .get::<i64, _>(0)
            }
            Kind::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::query(sql)
                    .fetch_one(&mut c)
                    .await
                    .unwrap()
                    .get::<i64, _>(0)
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            // Drop from a separate thread: we may be inside a runtime that is shutting down.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    if let Ok(mut admin) = sqlx::PgConnection::connect(PG_ADMIN_URL).await {
                        let _ =
                            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                .execute(&mut admin)
                                .await;
                    }
                });
            })
            .join();
        }
    }
}

pub fn random_data_key() -> Vec<u8> {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    base64::engine::general_purpose::STANDARD
        .encode(b)
        .into_bytes()
}

/// A config with keys generated for this test only.
pub fn test_config(url: &str) -> Config {
    let pair = keys::generate_signing_keypair();
    let signing = SigningKeys::from_pems("test-1", &pair.private_pem, &[]).unwrap();
    let data = DataKeys::from_raw(&[("d1".into(), random_data_key())]).unwrap();
    let secret = Secret::parse("webhook", Secret::generate_text().as_bytes()).unwrap();
    let mut c = Config::new(
        url.to_string(),
        signing,
        data,
        secret,
        "ward-payments".into(),
        "ward-api".into(),
    );
    c.internal_token = Some(Secret::parse("internal", Secret::generate_text().as_bytes()).unwrap());
    c
}

/// Key files on disk, as an operator would have them (for the spawned binary).
pub struct KeyFiles {
    pub signing: PathBuf,
    pub data: PathBuf,
    pub webhook: PathBuf,
}

pub fn write_key_files(dir: &Path) -> KeyFiles {
    let (signing, _) = keys::write_signing_keypair(dir, "bin-1").unwrap();
    let data = keys::write_data_key(dir, "data-1").unwrap();
    let webhook = dir.join("webhook.secret");
    keys::write_private_file(&webhook, Secret::generate_text().as_bytes()).unwrap();
    KeyFiles {
        signing,
        data,
        webhook,
    }
}

pub struct Creds {
    pub tenant: String,
    pub tenant_id: String,
    pub email: String,
    pub password: String,
}

#[derive(Debug, Clone)]
pub struct Tokens {
    pub access: String,
    pub refresh: String,
}

/// A running service plus its database.
pub struct Service {
    pub db: TestDb,
    pub config: Config,
    pub base: String,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), payments::Error>>>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Service {
    pub async fn start(kind: Kind) -> Service {
        let db = TestDb::new(kind).await;
        let config = test_config(&db.url);
        Self::start_with(db, config).await
    }

    pub async fn start_with(db: TestDb, config: Config) -> Service {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut s = Service {
            db,
            config,
            base: String::new(),
            client,
            shutdown: None,
            task: None,
        };
        s.boot().await;
        s
    }

    async fn boot(&mut self) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let config = self.config.clone();
        self.task = Some(tokio::spawn(payments::run(listener, config, async {
            let _ = rx.await;
        })));
        self.shutdown = Some(tx);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self
                .client
                .get(format!("{}/readyz", self.base))
                .send()
                .await
            {
                if r.status() == StatusCode::OK {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "service did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// Stop and start again on the same database and keys.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.boot().await;
    }

    pub async fn store(&self) -> Store {
        Store::connect(&self.db.url, Duration::from_secs(5))
            .await
            .unwrap()
    }

    /// A new tenant with its admin, through the same code path as `ward payments bootstrap`.
    pub async fn new_tenant(&self, prefix: &str) -> Creds {
        let store = self.store().await;
        let slug = format!(
            "{prefix}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let b = payments::bootstrap(&store, &slug, prefix, "admin@example.com")
            .await
            .unwrap();
        store.close().await;
        Creds {
            tenant: b.tenant,
            tenant_id: b.tenant_id,
            email: b.email,
            password: b.password,
        }
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        extra: &[(&str, &str)],
    ) -> Reply {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("request reaches the service");
        let status = r.status();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.send(reqwest::Method::POST, path, token, Some(body), &[])
            .await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.send(reqwest::Method::GET, path, token, None, &[])
            .await
    }

    pub async fn try_login(&self, tenant: &str, email: &str, password: &str) -> Reply {
        self.post(
            "/v1/auth/login",
            None,
            json!({ "tenant": tenant, "email": email, "password": password }),
        )
        .await
    }

    pub async fn login(&self, c: &Creds) -> Tokens {
        let r = self.try_login(&c.tenant, &c.email, &c.password).await;
        assert_eq!(r.status, StatusCode::OK, "login failed: {:?}", r.body);
        tokens(&r)
    }

    pub async fn create_payment(&self, token: &str, key: &str, body: Value) -> Reply {
        self.send(
            reqwest::Method::POST,
            "/v1/payments",
            Some(token),
            Some(body),
            &[("idempotency-key", key)],
        )
        .await
    }

    /// Add a user with a role to the tenant of `admin_token`; returns its credentials.
    pub async fn add_user(
        &self,
        admin_token: &str,
        tenant: &Creds,
        email: &str,
        role: &str,
    ) -> Creds {
        let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
        let r = self
            .post(
                "/v1/users",
                Some(admin_token),
                json!({ "email": email, "role": role, "password": password }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        Creds {
            tenant: tenant.tenant.clone(),
            tenant_id: tenant.tenant_id.clone(),
            email: email.to_string(),
            password,
        }
    }
}

pub fn tokens(r: &Reply) -> Tokens {
    Tokens {
        access: r.body["access_token"]
            .as_str()
            .expect("access_token")
            .to_string(),
        refresh: r.body["refresh_token"]
            .as_str()
            .expect("refresh_token")
            .to_string(),
    }
}

pub fn payment_body(amount: &str) -> Value {
    json!({ "amount": amount, "currency": "EUR", "description": "Order 42", "payer_account": "DE89 3704 0044 0532 0130 00" })
}

pub fn new_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Problem responses carry the right media type and the request id.
pub fn assert_problem(r: &Reply, status: u16) {
    assert_eq!(
        r.status.as_u16(),
        status,
        "unexpected status, body {:?}",
        r.body
    );
    assert_eq!(
        r.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/problem+json"),
        "body {:?}",
        r.body
    );
    assert_eq!(r.body["status"].as_u64(), Some(u64::from(status)));
    assert!(r.body["request_id"].as_str().is_some_and(|s| !s.is_empty()));
}
