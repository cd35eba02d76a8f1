//! `repocrypt bench load`: fill a database with many tenants for benchmarks, each with
//! a local-KMS key, a grant and a KMS setting using the key, plus a file of tokens for a
//! random sample of them.

use std::io::Write;
use std::time::{Duration, Instant};

use rand::seq::index::sample;
use sha2::{Digest, Sha256};

use crate::app::App;
use crate::auth::token::TokenCodec;
use crate::clock::Clock;
use crate::domain::{Actor, EncryptionType, Error, Identity, Result, Role, SettingDraft, TenantId};
use crate::kms::local::LocalKms;
use crate::store::BulkTenant;

/// Tenants written per transaction.
const BATCH: usize = 5_000;

/// The id of bench tenant `i`: 32 hex characters, like a real tenant id, spread over
/// the id space (so the database's index is exercised as by real ids).
pub fn tenant_id(i: u64) -> String {
    let digest = Sha256::digest(format!("repocrypt-bench-tenant-{i}"));
    hex::encode(&digest[..16])
}

pub struct LoadOptions {
    /// Tenants 0..count.
    pub count: u64,
    /// Where to write `TENANT_ID TOKEN` lines for a random sample of the tenants.
    pub tokens_file: Option<std::path::PathBuf>,
    pub tokens: usize,
    pub token_ttl: Duration,
}

/// `root` seals the keys' material, as the local KMS does; the app's clock and token codec
/// date the rows and issue the tokens.
pub async fn load(
    app: &App,
    root: &crate::keys::RootKey,
    actor: &Actor,
    opts: LoadOptions,
) -> Result<()> {
    // Open the tokens file first: a refusal there must not come after a long load.
    let tokens_out = match &opts.tokens_file {
        Some(path) => Some(create_private(path)?),
        None => None,
    };
    let kms = LocalKms::new(app.keys.clone(), root, app.clock.clone());
    let started = Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    for i in 0..opts.count {
        let tenant = TenantId::parse(tenant_id(i))?;
        let key = kms.new_key_row(&tenant, "bench-key")?;
        batch.push(BulkTenant {
            setting: SettingDraft {
                encryption_type: Some(EncryptionType::Kms),
                default_encryption_enabled: true,
                cmk_key_id: Some(key.key_id.clone()),
                cmk_key_name: Some(key.alias.clone()),
            },
            key,
        });
        if batch.len() == BATCH || i + 1 == opts.count {
            app.keys.bulk_load(&batch, actor).await?;
            batch.clear();
            let done = i + 1;
            if done % 100_000 == 0 || done == opts.count {
                let secs = started.elapsed().as_secs_f64();
                eprintln!(
                    "loaded {done}/{} tenants in {secs:.1} s ({:.0}/s)",
                    opts.count,
                    done as f64 / secs.max(1e-9)
                );
            }
        }
    }
    if let (Some(path), Some(file)) = (&opts.tokens_file, tokens_out) {
        write_tokens(path, file, &app.tokens, app.clock.as_ref(), &opts)?;
    }
    Ok(())
}

fn write_tokens(
    path: &std::path::Path,
    file: std::fs::File,
    codec: &TokenCodec,
    clock: &dyn Clock,
    opts: &LoadOptions,
) -> Result<()> {
    let now = clock.unix_seconds();
    let n = usize::try_from(opts.count)
        .map_err(|_| Error::InvalidArgument("--tenants too large".into()))?;
    let picked = sample(&mut rand::thread_rng(), n, opts.tokens.min(n));
    let mut out = std::io::BufWriter::new(file);
    for i in picked.iter() {
        let tenant = TenantId::parse(tenant_id(i as u64))?;
        let identity = Identity {
            tenant_id: tenant.clone(),
            user_id: "bench".into(),
            user_name: "bench".into(),
            role: Role::Admin,
            expires_at: now + opts.token_ttl.as_secs(),
        };
        writeln!(out, "{} {}", tenant, codec.issue(&identity, now)?)
            .map_err(|e| Error::Internal(format!("write tokens: {e}")))?;
    }
    out.flush()
        .map_err(|e| Error::Internal(format!("write tokens: {e}")))?;
    eprintln!("wrote {} tokens to {}", opts.tokens.min(n), path.display());
    Ok(())
}

/// Admin tokens: readable by the owner only, and never written over an existing file.
fn create_private(path: &std::path::Path) -> Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .map_err(|e| Error::InvalidArgument(format!("cannot create {}: {e}", path.display())))
}
