//! First-start work: the signing secret and the first administrator.

use std::io::Write;
use std::path::Path;

use guruconnect_store::{Backend, DEFAULT_TENANT, NewUser, Store, StoreError};
use secrecy::{ExposeSecret, SecretString};

use crate::auth::password;
use crate::auth::tokens::now_millis;
use crate::config::{Config, MIN_SIGNING_SECRET_BYTES};

const SECRET_FILE: &str = "signing.key";
const SECRET_SETTING: &str = "signing_secret";

/// Returns the configured secret, or the persisted one, generating it on first start:
/// a file in the data directory for SQLite, a settings row shared by every instance for
/// PostgreSQL.
pub async fn signing_secret(config: &Config, store: &Store) -> anyhow::Result<SecretString> {
    if let Some(secret) = &config.signing_secret {
        return Ok(secret.clone());
    }
    let generated = hex::encode(crate::secrets::random_bytes::<48>());
    let secret = match store.backend() {
        Backend::Sqlite => secret_file(&config.data_dir, generated)?,
        Backend::Postgres => {
            store
                .set_setting_if_absent(SECRET_SETTING, &generated)
                .await?
        }
    };
    if secret.len() < MIN_SIGNING_SECRET_BYTES {
        anyhow::bail!(
            "the persisted signing secret is shorter than {MIN_SIGNING_SECRET_BYTES} bytes"
        );
    }
    Ok(SecretString::from(secret))
}

fn secret_file(dir: &Path, generated: String) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(existing) => return Ok(existing.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path)?;
    file.write_all(generated.as_bytes())?;
    file.sync_all()?;
    tracing::info!(path = %path.display(), "generated a new signing secret");
    Ok(generated)
}

/// Creates the `admin` user when the tenant has no users. Returns the generated password
/// (to print once) when none was configured.
pub async fn first_admin(config: &Config, store: &Store) -> anyhow::Result<Option<SecretString>> {
    if store.count_users(DEFAULT_TENANT).await? > 0 {
        return Ok(None);
    }
    let (password, generated) = match &config.admin_password {
        Some(p) => (p.clone(), false),
        None => {
            let bytes = crate::secrets::random_bytes::<15>();
            let text =
                base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes);
            (SecretString::from(text), true)
        }
    };
    password::validate_new(password.expose_secret())
        .map_err(|e| anyhow::anyhow!("admin_password: {e}"))?;
    let hash = password::hash(password.clone())
        .await
        .map_err(|e| anyhow::anyhow!("hashing the admin password: {e}"))?;
    let user = NewUser {
        id: uuid::Uuid::new_v4().to_string(),
        tenant_id: DEFAULT_TENANT.to_owned(),
        username: "admin".to_owned(),
        password_hash: hash,
        role: "admin".to_owned(),
    };
    let audit = crate::audit::Audit::new("user.created").details(serde_json::json!({
        "target_user_id": user.id,
        "target_username": user.username,
        "role": user.role,
        "first_administrator": true,
    }));
    match store.create_user(&user, now_millis(), audit.event()).await {
        Ok(_) => tracing::info!(username = "admin", "created the first administrator"),
        // Another instance won the race; its admin stands.
        Err(StoreError::Conflict(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    if generated {
        // A password printed to a console is not the administrator's own: ask for one.
        store
            .set_setting(&crate::api::auth::password_change_key(&user.id), "1")
            .await?;
    }
    Ok(generated.then_some(password))
}
