//! Wiring: the configuration becomes a store, a KMS, a service and a router, once.

use std::sync::{Arc, Weak};

use crate::auth::credentials::Credentials;
use crate::auth::keystone::{KeystoneAuth, KeystoneSettings};
use crate::auth::signature::SignatureVerifier;
use crate::auth::token::TokenCodec;
use crate::auth::{Authenticator, LocalAuth};
use crate::clock::Clock;
use crate::config::{Config, IamBackend, KmsBackend};
use crate::domain::events::{EventFeed, EventSink};
use crate::domain::key_states::KeyStateCache;
use crate::domain::{Error, Result, Service};
use crate::keys::{self, RootKey};
use crate::kms::aws::{AwsKms, AwsSettings};
use crate::kms::local::LocalKms;
use crate::kms::metered::MeteredKms;
use crate::kms::Kms;
use crate::metrics::Metrics;
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{Database, KeyStore, Store};

pub struct App {
    pub config: Config,
    pub clock: Arc<dyn Clock>,
    pub store: Arc<dyn Store>,
    /// The local KMS's keys, in the same database as `store`.
    pub keys: Arc<dyn KeyStore>,
    pub kms: Arc<dyn Kms>,
    pub service: Arc<Service>,
    pub tokens: TokenCodec,
    pub credentials: Arc<Credentials>,
    pub auth: Arc<dyn Authenticator>,
    pub metrics: Arc<Metrics>,
    /// The change events, followed by a task of this process's.
    pub events: Arc<EventFeed>,
}

impl App {
    /// Open the data directory (creating it and its root key on first start: what
    /// `serve` does), the database (migrating it) and the KMS.
    pub async fn open(config: Config, clock: Arc<dyn Clock>) -> Result<App> {
        keys::create_private_dir(&config.data_dir)?;
        let root = RootKey::load_or_create(&config.data_dir, config.expose_root_key())?;
        Self::open_with_root(config, clock, root, Serving::Callers).await
    }

    /// Like [`App::open`], for the admin commands: the root key must exist already (in the
    /// data directory, or in `REPOCRYPT_ROOT_KEY`). A data directory without one is
    /// refused, not given a new key that no server shares.
    pub async fn open_existing(config: Config, clock: Arc<dyn Clock>) -> Result<App> {
        let root = RootKey::load(&config.data_dir, config.expose_root_key())?;
        // A key from the environment needs no file, but the SQLite database may still
        // live in the data directory.
        keys::create_private_dir(&config.data_dir)?;
        Self::open_with_root(config, clock, root, Serving::Admin).await
    }

    async fn open_with_root(
        config: Config,
        clock: Arc<dyn Clock>,
        root: RootKey,
        serving: Serving,
    ) -> Result<App> {
        let url = &config.database_url;
        let db_timeout = serving.db_timeout(&config);
        let database: Arc<dyn Database> = if url.starts_with("sqlite:") {
            Arc::new(
                SqliteStore::open(
                    url,
                    clock.clone(),
                    None,
                    config.row_cache_capacity,
                    db_timeout,
                )
                .await?,
            )
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Arc::new(PostgresStore::open(url, clock.clone(), None, db_timeout).await?)
        } else {
            return Err(Error::InvalidArgument(format!(
                "unsupported database URL `{}`: use sqlite://PATH or postgres://USER@HOST/DB",
                crate::config::redact_url(url)
            )));
        };
        let store = database.clone().settings();
        let keys = database.clone().keys();
        let kms: Arc<dyn Kms> = match config.kms_backend {
            KmsBackend::Local => Arc::new(LocalKms::new(keys.clone(), &root, clock.clone())),
            KmsBackend::Aws => {
                let settings = AwsSettings {
                    endpoint: config.kms_endpoint.clone(),
                    region: config.kms_region.clone(),
                    timeout: config.kms_timeout,
                };
                Arc::new(AwsKms::connect(&settings, store.clone()).await?)
            }
        };
        let metrics = Arc::new(Metrics::new());
        let kms: Arc<dyn Kms> = Arc::new(MeteredKms::new(kms, metrics.clone()));
        let cache = KeyStateCache::new(
            config.key_state_cache_ttl,
            config.key_state_cache_capacity,
            clock.clone(),
        );
        let service = Arc::new(Service::new(
            store.clone(),
            kms.clone(),
            cache,
            config.region.clone(),
            config.region_type.clone(),
        ));
        let events = EventFeed::start(
            store.clone(),
            service.key_watch(),
            clock.clone(),
            config.event_retention,
        )
        .await?;
        let sink: Weak<dyn EventSink> = Arc::downgrade(&service) as Weak<Service>;
        tokio::spawn(events.clone().follow(sink));
        let tokens = TokenCodec::new(&root);
        let credentials = Arc::new(Credentials::new(
            database.credentials(),
            &root,
            clock.clone(),
        ));
        let signatures = SignatureVerifier::new(
            credentials.clone(),
            clock.clone(),
            config.signature_max_skew,
        );
        let auth: Arc<dyn Authenticator> = match (config.iam, serving) {
            // An admin command authenticates nobody: it needs no IAM password.
            (IamBackend::Local, _) | (IamBackend::Keystone, Serving::Admin) => {
                Arc::new(LocalAuth::new(tokens.clone(), signatures, clock.clone()))
            }
            (IamBackend::Keystone, Serving::Callers) => Arc::new(KeystoneAuth::new(
                keystone_settings(&config)?,
                signatures,
                clock.clone(),
                metrics.clone(),
            )?),
        };
        Ok(App {
            metrics,
            tokens,
            credentials,
            auth,
            config,
            clock,
            store,
            keys,
            kms,
            service,
            events,
        })
    }

    pub fn router(&self) -> axum::Router {
        crate::http::router(crate::http::Deps {
            service: self.service.clone(),
            events: self.events.clone(),
            auth: self.auth.clone(),
            kms: self.kms.clone(),
            metrics: self.metrics.clone(),
            limits: self.config.limits(),
            rate_limits: self.config.rate_limits(),
            clock: self.clock.clone(),
        })
    }
}

/// Whether the app will authenticate callers (`serve`, the tests) or run an admin command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Serving {
    Callers,
    Admin,
}

/// The deadline of an admin command's database calls: an operator's `audit list` of a
/// large trail, say, is not a request with a client waiting on a timeout.
const ADMIN_DB_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

impl Serving {
    /// `db_timeout` bounds what callers wait for; an admin command waits longer.
    fn db_timeout(self, config: &Config) -> std::time::Duration {
        match self {
            Serving::Callers => config.db_timeout,
            Serving::Admin => ADMIN_DB_TIMEOUT.max(config.db_timeout),
        }
    }
}

/// The `iam_*` settings of `iam = "keystone"` (checked by `Config::validate`, but for the
/// password, which only `serve` needs).
fn keystone_settings(config: &Config) -> Result<KeystoneSettings> {
    let missing = |what: &str| Error::InvalidArgument(format!("iam = keystone needs {what}"));
    Ok(KeystoneSettings {
        url: config.iam_url.clone().ok_or_else(|| missing("iam_url"))?,
        user: config.iam_user.clone().ok_or_else(|| missing("iam_user"))?,
        user_domain: config.iam_user_domain.clone(),
        project: config.iam_project.clone(),
        password: config.iam_password.clone().ok_or_else(|| {
            missing("the password of iam_user: set REPOCRYPT_IAM_PASSWORD or iam_password_file")
        })?,
        admin_roles: config.iam_admin_roles.clone(),
        member_roles: config.iam_member_roles.clone(),
        service_roles: config.iam_service_roles.clone(),
        cache_ttl: config.iam_cache_ttl,
        timeout: config.iam_timeout,
    })
}
