//! The `repocrypt` command line: `serve` and the admin commands. Every command takes the
//! same configuration flags, so admin commands work on the data a running server uses.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::app::App;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ConfigArgs};
use crate::domain::{Actor, Error, Identity, PermitPublic, Result, Role, TenantId};
use crate::kms::KeyOrigin;
use crate::store::AuditFilter;

#[derive(Debug, Parser)]
#[command(
    name = "repocrypt",
    version,
    about = "CodeArts Repo V4 tenant repository-encryption service"
)]
pub struct Cli {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API (creating the data directory and its root key on first start).
    Serve,
    /// Create the data directory and its root key, if missing, and say where they are.
    /// Every command but `serve` and `init` needs them to exist.
    Init,
    /// Issue tokens for X-Auth-Token.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage AK/SK credentials for SDK request signatures.
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// Manage keys of the local KMS.
    #[command(subcommand)]
    Kms(KmsCommand),
    /// Manage projects and their members.
    #[command(subcommand)]
    Project(ProjectCommand),
    /// Manage tenant settings.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Read the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Benchmark tooling.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Add tenants bench 0..N, each with a local-KMS key, a grant and a KMS setting, in
    /// batches of 5,000 per transaction. Run it with the server stopped (a running
    /// SQLite server would not see rows it had cached as missing).
    Load {
        /// How many tenants.
        #[arg(long)]
        tenants: u64,
        /// Write `TENANT_ID TOKEN` lines for a random sample of the tenants here.
        #[arg(long, value_name = "FILE")]
        tokens_file: Option<std::path::PathBuf>,
        /// How many tokens to write.
        #[arg(long, default_value_t = 1000)]
        tokens: usize,
        /// Lifetime of those tokens.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        token_ttl: Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a new token (and nothing else).
    Issue {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        user: String,
        /// Display name [default: the user id].
        #[arg(long)]
        user_name: Option<String>,
        #[arg(long, value_enum, default_value_t = Role::Member)]
        role: Role,
        /// Lifetime, e.g. `3600s`, `12h` (at most 365 days).
        #[arg(long, default_value = "3600s", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum CredentialCommand {
    /// Create an access key / secret key pair; prints {"access_key","secret_key"} (the secret is shown only here).
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        user: String,
        #[arg(long, value_enum, default_value_t = Role::Member)]
        role: Role,
    },
    /// List a tenant's credentials (never their secrets) as a JSON array.
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Delete a credential: requests signed with it are refused from then on.
    Delete {
        #[arg(long)]
        access_key: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KmsCommand {
    /// Create a key; prints {"key_id","key_name","key_state"}.
    CreateKey {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        alias: String,
        #[arg(long, value_enum, default_value_t = KeyOrigin::Kms)]
        origin: KeyOrigin,
        /// Create the key in state 1 (to be activated); `enable-key` activates it. Local KMS only.
        #[arg(long)]
        inactive: bool,
    },
    /// List a tenant's keys as a JSON array.
    ListKeys {
        #[arg(long)]
        tenant: String,
    },
    /// Enable a key (from states 1, 2 or 3).
    EnableKey(KeyRef),
    /// Disable a key (from states 2 or 3).
    DisableKey(KeyRef),
    /// Schedule deletion after 7 to 1096 days (7 to 30 on AWS KMS) (state 4).
    ScheduleKeyDeletion {
        #[command(flatten)]
        key: KeyRef,
        #[arg(long)]
        pending_days: u32,
    },
    /// Cancel a scheduled deletion (back to 3, or 5 for a key without material).
    CancelKeyDeletion(KeyRef),
    /// Import 32 bytes of material into an external key (5 to 2); generated if no file. Local KMS only.
    ImportKeyMaterial {
        #[command(flatten)]
        key: KeyRef,
        #[arg(long, value_name = "FILE")]
        material_file: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
pub struct KeyRef {
    #[arg(long)]
    tenant: String,
    #[arg(long)]
    key_id: String,
}

#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Register a project owned by a tenant.
    Add {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        project_id: String,
        #[arg(long)]
        name: String,
    },
    /// Make a user of a (possibly other) tenant a member of a project.
    AddMember {
        #[arg(long)]
        project_id: String,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        user: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Change a tenant's settings.
    Set {
        #[arg(long)]
        tenant: String,
        #[arg(long, value_enum)]
        permit_public: PermitPublic,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print audit records as JSON lines, oldest first: all of them, or those the flags select.
    List {
        /// Records of this tenant only (`*`: bulk loads).
        #[arg(long)]
        tenant: Option<String>,
        /// Records of this actor only: an API caller's user id, or `cli`.
        #[arg(long)]
        actor: Option<String>,
        /// Records written at or after this time: RFC 3339 (`2026-01-31T12:00:00Z`,
        /// `2026-01-31T14:00:00+02:00`), a date (`2026-01-31`, midnight UTC), or a
        /// duration ago (`90s`, `1h`, `7days`).
        #[arg(long, value_name = "TIME", value_parser = parse_time_arg)]
        since: Option<TimeArg>,
        /// Records written before this time (same forms as --since).
        #[arg(long, value_name = "TIME", value_parser = parse_time_arg)]
        until: Option<TimeArg>,
        /// Only the N most recent of the records selected (still printed oldest first).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
    },
}

/// A time on the command line: a point, or a duration before now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeArg {
    At(SystemTime),
    Ago(Duration),
}

impl TimeArg {
    fn resolve(self, now: SystemTime) -> SystemTime {
        match self {
            TimeArg::At(t) => t,
            // Before 1970 (or further back than the clock can go): before every record.
            TimeArg::Ago(d) => now
                .checked_sub(d)
                .filter(|t| *t >= UNIX_EPOCH)
                .unwrap_or(UNIX_EPOCH),
        }
    }
}

/// `--since`/`--until`: an RFC 3339 time with `Z` or an offset, a date (midnight UTC),
/// or a duration ago (humantime: `90s`, `1h`, `7days`).
pub fn parse_time_arg(value: &str) -> std::result::Result<TimeArg, String> {
    let fail = || {
        format!(
            "`{value}` is not a time: give an RFC 3339 time (2026-01-31T12:00:00Z or \
             2026-01-31T14:00:00+02:00), a date (2026-01-31, midnight UTC) or a duration \
             ago (90s, 1h, 7days)"
        )
    };
    let s = value.trim();
    let looks_like_date = s.len() >= 10 && s.as_bytes().get(4) == Some(&b'-');
    if !looks_like_date {
        return humantime::parse_duration(s)
            .map(TimeArg::Ago)
            .map_err(|_| fail());
    }
    if s.len() == 10 {
        return humantime::parse_rfc3339(&format!("{s}T00:00:00Z"))
            .map(TimeArg::At)
            .map_err(|_| fail());
    }
    let s = s.to_ascii_uppercase();
    if s.ends_with('Z') {
        return humantime::parse_rfc3339(&s)
            .map(TimeArg::At)
            .map_err(|_| fail());
    }
    // An offset from UTC: `+HH:MM` or `-HH:MM` (humantime reads UTC only).
    let cut = s.len().saturating_sub(6);
    if !s.is_char_boundary(cut) {
        return Err(fail());
    }
    let (local, offset) = s.split_at(cut);
    let o = offset.as_bytes();
    let sign = match o.first() {
        Some(b'+') => 1i64,
        Some(b'-') => -1,
        _ => {
            return Err(format!(
                "`{value}` has no time zone: an RFC 3339 time ends in Z (UTC) or an offset \
                 such as +02:00"
            ))
        }
    };
    let digits = |r: std::ops::Range<usize>| offset.get(r).and_then(|d| d.parse::<u64>().ok());
    let (Some(hours), Some(minutes)) = (digits(1..3), digits(4..6)) else {
        return Err(fail());
    };
    if o.get(3) != Some(&b':') || hours > 23 || minutes > 59 {
        return Err(fail());
    }
    let utc = humantime::parse_rfc3339(&format!("{local}Z")).map_err(|_| fail())?;
    let shift = Duration::from_secs(hours * 3600 + minutes * 60);
    // Local time = UTC + offset.
    let at = if sign > 0 {
        utc.checked_sub(shift)
    } else {
        utc.checked_add(shift)
    };
    // Records are written from 1970 to 9999 UTC: the offset must not leave that range.
    const YEAR_10000: u64 = 253_402_300_800;
    at.filter(|t| {
        t.duration_since(UNIX_EPOCH)
            .is_ok_and(|d| d.as_secs() < YEAR_10000)
    })
    .map(TimeArg::At)
    .ok_or_else(fail)
}

/// Longest token lifetime `token issue` accepts.
const MAX_TTL: Duration = Duration::from_secs(365 * 86_400);

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(cli));
    drop(runtime);
    crate::telemetry::flush();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

fn describe(e: &Error) -> String {
    match e.internal_detail() {
        Some(detail) => format!("{e}: {detail}"),
        None => e.to_string(),
    }
}

pub async fn run(cli: Cli) -> Result<()> {
    let config = Config::load(&cli.config)?;
    let default_log = match cli.command {
        Command::Serve => "info",
        _ => "warn",
    };
    crate::telemetry::init(config.log.as_deref(), default_log, config.log_format);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);

    // `token issue` needs only the root key, not the database.
    if let Command::Token(TokenCommand::Issue {
        tenant,
        user,
        user_name,
        role,
        ttl,
    }) = &cli.command
    {
        if ttl.is_zero() || *ttl > MAX_TTL {
            return Err(Error::InvalidArgument(
                "--ttl must be between 1s and 365 days".into(),
            ));
        }
        let root = crate::keys::RootKey::load(&config.data_dir, config.expose_root_key())?;
        let codec = crate::auth::token::TokenCodec::new(&root);
        let now = clock.unix_seconds();
        let identity = Identity {
            tenant_id: TenantId::parse(tenant.as_str())?,
            user_id: nonempty("--user", user)?,
            user_name: nonempty("--user-name", user_name.as_ref().unwrap_or(user))?,
            role: *role,
            expires_at: now + ttl.as_secs(),
        };
        return print_line(&codec.issue(&identity, now)?);
    }

    if let Command::Init = cli.command {
        return init(&config);
    }

    let app = match cli.command {
        Command::Serve => App::open(config, clock).await?,
        _ => App::open_existing(config, clock).await?,
    };
    let actor = Actor::cli();
    match cli.command {
        Command::Serve => serve(app).await,
        Command::Init | Command::Token(_) => Ok(()),
        Command::Kms(cmd) => kms(&app, &actor, cmd).await,
        Command::Credential(cmd) => credential(&app, &actor, cmd).await,
        Command::Project(ProjectCommand::Add {
            tenant,
            project_id,
            name,
        }) => {
            let tenant = TenantId::parse(tenant)?;
            let p = app
                .service
                .add_project(&actor, &tenant, &project_id, &name)
                .await?;
            print_json(&p)
        }
        Command::Project(ProjectCommand::AddMember {
            project_id,
            tenant,
            user,
        }) => {
            let tenant = TenantId::parse(tenant)?;
            app.service
                .add_project_member(&actor, &project_id, &tenant, &user)
                .await?;
            print_json(&serde_json::json!({
                "project_id": project_id, "tenant_id": tenant.as_str(), "user_id": user
            }))
        }
        Command::Tenant(TenantCommand::Set {
            tenant,
            permit_public,
        }) => {
            let tenant = TenantId::parse(tenant)?;
            app.service
                .set_permit_public(&actor, &tenant, permit_public)
                .await?;
            print_json(&serde_json::json!({
                "tenant_id": tenant.as_str(), "permit_public": permit_public.as_str()
            }))
        }
        Command::Audit(AuditCommand::List {
            tenant,
            actor,
            since,
            until,
            limit,
        }) => {
            let now = app.clock.now();
            let filter = AuditFilter {
                tenant: tenant.map(TenantId::parse).transpose()?,
                actor: actor.map(|a| nonempty("--actor", &a)).transpose()?,
                since: since.map(|t| t.resolve(now)),
                until: until.map(|t| t.resolve(now)),
                limit,
            };
            if let (Some(since), Some(until)) = (filter.since, filter.until) {
                if since >= until {
                    return Err(Error::InvalidArgument(format!(
                        "--since ({}) must be before --until ({})",
                        crate::store::audit_time_bound(since),
                        crate::store::audit_time_bound(until)
                    )));
                }
            }
            for record in app.store.list_audit(&filter).await? {
                print_json(&record)?;
            }
            Ok(())
        }
        Command::Bench(BenchCommand::Load {
            tenants,
            tokens_file,
            tokens,
            token_ttl,
        }) => {
            if token_ttl.is_zero() || token_ttl > MAX_TTL {
                return Err(Error::InvalidArgument(
                    "--token-ttl must be between 1s and 365 days".into(),
                ));
            }
            let root =
                crate::keys::RootKey::load(&app.config.data_dir, app.config.expose_root_key())?;
            let opts = crate::bench::LoadOptions {
                count: tenants,
                tokens_file,
                tokens,
                token_ttl,
            };
            crate::bench::load(&app, &root, &actor, opts).await
        }
    }
}

/// `repocrypt init`: the data directory and its root key, made if missing.
fn init(config: &Config) -> Result<()> {
    let dir = &config.data_dir;
    if let Some(value) = config.expose_root_key() {
        crate::keys::RootKey::load(dir, Some(value))?;
        crate::keys::create_private_dir(dir)?;
        return print_line(&format!(
            "data directory {}; the root key is {} (no root key file is needed)",
            dir.display(),
            crate::keys::ROOT_KEY_ENV
        ));
    }
    let (_, created) = crate::keys::RootKey::file_or_create(dir)?;
    let path = dir.join(crate::keys::ROOT_KEY_FILE);
    print_line(&if created {
        format!("created a new root key at {}", path.display())
    } else {
        format!("root key already at {} (kept)", path.display())
    })
}

fn nonempty(flag: &str, value: &str) -> Result<String> {
    crate::domain::check_text_arg(flag, value).map(|()| value.to_owned())
}

async fn credential(app: &App, actor: &Actor, cmd: CredentialCommand) -> Result<()> {
    match cmd {
        CredentialCommand::Create { tenant, user, role } => {
            let tenant = TenantId::parse(tenant)?;
            let (credential, secret) = app.credentials.create(&tenant, &user, role, actor).await?;
            print_json(&serde_json::json!({
                "access_key": credential.access_key,
                "secret_key": secret.expose(),
            }))
        }
        CredentialCommand::List { tenant } => {
            print_json(&app.credentials.list(&TenantId::parse(tenant)?).await?)
        }
        CredentialCommand::Delete { access_key } => {
            app.credentials.delete(&access_key, actor).await?;
            print_json(&serde_json::json!({ "access_key": access_key, "deleted": true }))
        }
    }
}

async fn kms(app: &App, actor: &Actor, cmd: KmsCommand) -> Result<()> {
    let tenant = |t: &str| TenantId::parse(t);
    let k = &app.kms;
    match cmd {
        KmsCommand::CreateKey {
            tenant: t,
            alias,
            origin,
            inactive,
        } => print_json(
            &k.create_key(&tenant(&t)?, &alias, origin, inactive, actor)
                .await?,
        ),
        KmsCommand::ListKeys { tenant: t } => print_json(&k.list_keys(&tenant(&t)?).await?),
        KmsCommand::EnableKey(r) => {
            print_json(&k.enable_key(&tenant(&r.tenant)?, &r.key_id, actor).await?)
        }
        KmsCommand::DisableKey(r) => {
            print_json(&k.disable_key(&tenant(&r.tenant)?, &r.key_id, actor).await?)
        }
        KmsCommand::ScheduleKeyDeletion {
            key: r,
            pending_days,
        } => print_json(
            &k.schedule_key_deletion(&tenant(&r.tenant)?, &r.key_id, pending_days, actor)
                .await?,
        ),
        KmsCommand::CancelKeyDeletion(r) => print_json(
            &k.cancel_key_deletion(&tenant(&r.tenant)?, &r.key_id, actor)
                .await?,
        ),
        KmsCommand::ImportKeyMaterial {
            key: r,
            material_file,
        } => {
            let material = match material_file {
                Some(path) => Some(std::fs::read(&path).map_err(|e| {
                    Error::InvalidArgument(format!("cannot read {}: {e}", path.display()))
                })?),
                None => None,
            };
            print_json(
                &k.import_key_material(&tenant(&r.tenant)?, &r.key_id, material, actor)
                    .await?,
            )
        }
    }
}

async fn serve(app: App) -> Result<()> {
    let addr = app.config.listen;
    // Certificate problems are reported before the port is taken.
    let tls = match &app.config.tls() {
        Some(files) => Some(crate::http::server::tls_config(files)?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::InvalidArgument(format!("cannot listen on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("local address: {e}")))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(
        listen = %local,
        scheme,
        database = %crate::config::redact_url(&app.config.database_url),
        data_dir = %app.config.data_dir.display(),
        limits = ?app.config.limits(),
        rate_limits = ?app.config.rate_limits(),
        "repocrypt started"
    );
    print_line(&format!("repocrypt listening on {scheme}://{local}"))?;
    let options = crate::http::server::ServerOptions {
        limits: app.config.limits(),
        tls,
    };
    crate::http::server::serve(listener, app.router(), options, shutdown_signal())
        .await
        .map_err(|e| Error::Internal(format!("server: {e}")))?;
    tracing::info!("repocrypt stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received: finishing in-flight requests");
}

fn print_line(s: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{s}").and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        // The reader went away (`| head`): stop quietly, like other command-line tools.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            crate::telemetry::flush();
            std::process::exit(0)
        }
        Err(e) => Err(Error::Internal(format!("stdout: {e}"))),
    }
}

fn print_json<T: Serialize>(value: &T) -> Result<()> {
    let s = serde_json::to_string(value).map_err(|e| Error::Internal(format!("json: {e}")))?;
    print_line(&s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(value: &str) -> Option<u64> {
        match parse_time_arg(value) {
            Ok(TimeArg::At(t)) => t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs()),
            _ => None,
        }
    }

    #[test]
    fn times_are_rfc3339_dates_or_durations_ago() {
        let noon = 1_769_860_800; // 2026-01-31T12:00:00Z
        assert_eq!(at("2026-01-31T12:00:00Z"), Some(noon));
        assert_eq!(at("2026-01-31t12:00:00z"), Some(noon));
        assert_eq!(at("2026-01-31T12:00:00.250Z"), Some(noon));
        assert_eq!(at("2026-01-31T14:00:00+02:00"), Some(noon));
        assert_eq!(at("2026-01-31T07:30:00-04:30"), Some(noon));
        assert_eq!(at("2026-01-31T14:00:00.5+02:00"), Some(noon));
        assert_eq!(at("2026-01-31T12:00:00+00:00"), Some(noon));
        assert_eq!(at("2026-01-31"), Some(noon - 12 * 3600));
        assert_eq!(
            parse_time_arg("1h"),
            Ok(TimeArg::Ago(Duration::from_secs(3600)))
        );
        assert_eq!(
            parse_time_arg("7days"),
            Ok(TimeArg::Ago(Duration::from_secs(7 * 86_400)))
        );
        for bad in [
            "",
            "yesterday",
            "1 fortnight",
            "2026-01-31T12:00:00",
            "2026-13-01T00:00:00Z",
            "2026-01-31T12:00:00+24:00",
            "2026-01-31T12:00:00+0200",
            "2026-01-32",
            "1969-12-31T23:00:00Z",
            "1970-01-01T00:30:00+01:00",
            "9999-12-31T23:30:00-01:00",
            "2026-01-31 €€x",
            "2026-01-31T12:00:00+02€",
        ] {
            let err = parse_time_arg(bad).expect_err(bad);
            assert!(err.contains("RFC 3339"), "{bad}: {err}");
        }
        assert!(parse_time_arg("2026-01-31T12:00:00")
            .expect_err("no zone")
            .contains("no time zone"));
    }

    #[test]
    fn durations_ago_count_back_from_now_and_stop_at_1970() {
        let now = UNIX_EPOCH + Duration::from_secs(1_769_860_800);
        assert_eq!(
            TimeArg::Ago(Duration::from_secs(3600)).resolve(now),
            now - Duration::from_secs(3600)
        );
        assert_eq!(
            TimeArg::Ago(Duration::from_secs(100 * 365 * 86_400)).resolve(now),
            UNIX_EPOCH
        );
    }
}
