//! Everything `ward demo` needs to run this service with no setup: fresh keys and secrets in a data
//! directory, an SQLite file, and a bootstrapped demo tenant whose generated password is returned
//! (for printing once). Nothing here is a default credential: every run makes new ones.

use std::path::{Path, PathBuf};

use super::keys::{self, DataKeys, KeyRef, Secret, SigningKeys};
use super::store::Store;
use super::{bootstrap, Config, Error};

/// The demo tenant's slug.
pub const DEMO_TENANT: &str = "demo";
/// The demo admin's email.
pub const DEMO_EMAIL: &str = "admin@demo.example";

/// A ready-to-run demo: pass `config` to [`super::run`], print the credentials once.
#[derive(Debug, Clone)]
pub struct DemoSetup {
    pub config: Config,
    pub database_url: String,
    pub tenant: String,
    pub email: String,
    /// Generated for this run; print it once, never log it.
    pub password: String,
    /// HMAC secret file for signing PSP webhook deliveries in the walkthrough.
    pub webhook_secret_file: PathBuf,
    /// Bearer token file the proxy may use for `/internal/v1/security-events`.
    pub internal_token_file: PathBuf,
}

/// Prepare a demo in `data_dir` (created if missing; must not already hold a demo database).
pub async fn prepare(data_dir: &Path) -> Result<DemoSetup, Error> {
    std::fs::create_dir_all(data_dir).map_err(|source| keys::KeyError::Write {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let key_dir = data_dir.join("keys");
    std::fs::create_dir_all(&key_dir).map_err(|source| keys::KeyError::Write {
        path: key_dir.clone(),
        source,
    })?;
    let kid = format!("demo-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (private, _public) = keys::write_signing_keypair(&key_dir, &kid)?;
    let data_key = keys::write_data_key(&key_dir, "data-1")?;
    let webhook_secret_file = key_dir.join("webhook.secret");
    keys::write_private_file(&webhook_secret_file, Secret::generate_text().as_bytes())?;
    let internal_token_file = key_dir.join("internal.token");
    keys::write_private_file(&internal_token_file, Secret::generate_text().as_bytes())?;

    let pem = String::from_utf8_lossy(&keys::read_secret_file("demo signing key", &private)?)
        .into_owned();
    let signing = SigningKeys::from_pems(&kid, &pem, &[])?;
    let data_keys = DataKeys::from_files(&[KeyRef {
        kid: "data-1".into(),
        path: data_key,
    }])?;
    let webhook_secret = Secret::from_file("demo webhook secret", &webhook_secret_file)?;
    let internal_token = Secret::from_file("demo internal token", &internal_token_file)?;

    let database_url = format!("sqlite://{}", data_dir.join("payments.db").display());
    let mut config = Config::new(
        database_url.clone(),
        signing,
        data_keys,
        webhook_secret,
        "ward-payments".into(),
        "ward-api".into(),
    );
    config.internal_token = Some(internal_token);

    let store = Store::connect(&database_url, config.db_timeout).await?;
    let created = bootstrap(&store, DEMO_TENANT, "Demo merchant", DEMO_EMAIL).await;
    store.close().await;
    let created = created?;
    Ok(DemoSetup {
        config,
        database_url,
        tenant: created.tenant,
        email: created.email,
        password: created.password,
        webhook_secret_file,
        internal_token_file,
    })
}
