//! One KMS conformance story, run on both backends: the local KMS always, AWS KMS against
//! a `moto_server` of the test's own when moto is installed (mandatory in `.ci/run`).
//!
//! The story drives the `Kms` trait and the service on top of it: the key lifecycle and
//! its audit records, tenant isolation, and a PUT/GET of a setting.

use crate::common;
use crate::common::moto;

use std::sync::Arc;
use std::time::Duration;

use repocrypt::clock::SystemClock;
use repocrypt::domain::key_states::KeyStateCache;
use repocrypt::domain::{parse_setting_patch, Actor, Error, KeyState, Service};
use repocrypt::http::views::SettingView;
use repocrypt::kms::aws::{AwsKms, AwsSettings, Credentials, TENANT_TAG};
use repocrypt::kms::{KeyOrigin, Kms};
use repocrypt::store::{AuditFilter, Store};

use common::{spawn_app, tid, TENANT_A, TENANT_B};
use moto::Moto;

/// What one backend can do that the other cannot.
struct Caps {
    /// Keys can be named by ARN and `alias/NAME` as well as by key id.
    names_by_arn_and_alias: bool,
    /// The KMS models keys waiting for imported material (state 5). moto does not.
    pending_import: bool,
    /// Longest deletion window.
    max_pending_days: u32,
}

fn actor() -> Actor {
    Actor {
        actor: "conformance".into(),
        request_id: Some("req-conformance".into()),
    }
}

fn is_not_found(r: &Result<impl std::fmt::Debug, Error>) -> bool {
    matches!(r, Err(Error::KeyNotFound { .. }))
}

async fn story(kms: Arc<dyn Kms>, store: Arc<dyn Store>, caps: Caps) -> Vec<String> {
    let (a, b) = (tid(TENANT_A), tid(TENANT_B));
    let me = actor();
    kms.check_access(&a).await.expect("the KMS is reachable");

    // Create: enabled, named by its alias.
    let key = kms
        .create_key(&a, "alpha", KeyOrigin::Kms, false, &me)
        .await
        .expect("create_key");
    assert_eq!(key.key_name, "alpha");
    assert_eq!(key.key_state, KeyState::Enabled);
    let id = key.key_id.clone();
    assert_eq!(
        kms.describe_key(&a, &id).await.expect("describe"),
        Some(key.clone())
    );

    // Another tenant can neither see nor change it.
    assert_eq!(kms.describe_key(&b, &id).await.expect("describe"), None);
    assert!(is_not_found(&kms.disable_key(&b, &id, &me).await));
    assert!(is_not_found(&kms.enable_key(&b, &id, &me).await));
    assert!(is_not_found(
        &kms.schedule_key_deletion(&b, &id, 7, &me).await
    ));
    assert!(!kms
        .list_keys(&b)
        .await
        .expect("list")
        .iter()
        .any(|k| k.key_id == id));
    assert!(kms
        .list_keys(&a)
        .await
        .expect("list")
        .iter()
        .any(|k| k.key_id == id));
    assert_eq!(
        kms.describe_key(&a, "no-such-key").await.expect("describe"),
        None
    );

    // The lifecycle: 2 -> 3 -> 2 -> 4 -> 3 -> 2, and the moves a KMS refuses.
    let state = |k: repocrypt::kms::KeyInfo| k.key_state;
    assert_eq!(
        state(kms.disable_key(&a, &id, &me).await.expect("disable")),
        KeyState::Disabled
    );
    assert_eq!(
        kms.describe_key(&a, &id)
            .await
            .expect("describe")
            .map(state),
        Some(KeyState::Disabled)
    );
    assert_eq!(
        state(kms.enable_key(&a, &id, &me).await.expect("enable")),
        KeyState::Enabled
    );
    let too_long = caps.max_pending_days + 1;
    assert!(matches!(
        kms.schedule_key_deletion(&a, &id, too_long, &me).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        kms.schedule_key_deletion(&a, &id, 6, &me).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        kms.cancel_key_deletion(&a, &id, &me).await,
        Err(Error::KeyInvalidState { .. })
    ));
    assert_eq!(
        state(
            kms.schedule_key_deletion(&a, &id, 7, &me)
                .await
                .expect("schedule")
        ),
        KeyState::PendingDeletion
    );
    assert!(matches!(
        kms.enable_key(&a, &id, &me).await,
        Err(Error::KeyInvalidState { .. })
    ));
    assert!(matches!(
        kms.schedule_key_deletion(&a, &id, 7, &me).await,
        Err(Error::KeyInvalidState { .. })
    ));
    assert_eq!(
        state(kms.cancel_key_deletion(&a, &id, &me).await.expect("cancel")),
        KeyState::Disabled
    );
    assert_eq!(
        state(kms.enable_key(&a, &id, &me).await.expect("enable")),
        KeyState::Enabled
    );

    if caps.pending_import {
        let ext = kms
            .create_key(&a, "external", KeyOrigin::External, false, &me)
            .await
            .expect("create external");
        assert_eq!(ext.key_state, KeyState::PendingImport);
    }

    // Every change is in the tenant's audit log, with who and which request; none in B's.
    let actions: Vec<String> = store
        .list_audit(&AuditFilter::tenant(&a))
        .await
        .expect("audit")
        .into_iter()
        .filter(|r| r.actor == "conformance" && r.request_id.as_deref() == Some("req-conformance"))
        .map(|r| r.action)
        .collect();
    for expected in [
        "kms.create_key",
        "kms.disable_key",
        "kms.enable_key",
        "kms.schedule_key_deletion",
        "kms.cancel_key_deletion",
    ] {
        assert!(
            actions.iter().any(|a| a == expected),
            "{expected} in {actions:?}"
        );
    }
    assert!(store
        .list_audit(&AuditFilter::tenant(&b))
        .await
        .expect("audit")
        .is_empty());

    // The service on top: a PUT with the key works for A; B cannot select A's key, and is
    // told exactly what it is told of a key that does not exist.
    let service = Service::new(
        store.clone(),
        kms.clone(),
        KeyStateCache::new(Duration::ZERO, 100, Arc::new(SystemClock)),
        "r".into(),
        "primary".into(),
    );
    store.put_grant(&a, &me).await.expect("grant a");
    store.put_grant(&b, &me).await.expect("grant b");
    let select = |key: &str| {
        parse_setting_patch(
            serde_json::json!({"encryption_type": "kms", "default_encryption_enabled": true, "cmk_key_id": key})
                .to_string()
                .as_bytes(),
        )
        .expect("patch")
    };
    let report = service
        .update_setting(&me, &a, select(&id))
        .await
        .expect("A selects its key");
    let view = SettingView::from(&report);
    assert_eq!(view.cmk_key_id, Some(id.as_str()));
    assert_eq!(view.cmk_key_name, Some("alpha"));
    assert_eq!(view.key_state, Some(KeyState::Enabled));
    let theirs = service.update_setting(&me, &b, select(&id)).await;
    let unknown = service.update_setting(&me, &b, select("no-such-key")).await;
    let message = |r: &Result<_, Error>| match r {
        Err(e) => (
            e.code(),
            e.to_string()
                .replace(&id, "<ID>")
                .replace("no-such-key", "<ID>"),
        ),
        Ok(_) => panic!("B selected a key that is not its own"),
    };
    assert_eq!(message(&theirs), message(&unknown));
    assert_eq!(message(&theirs).0, "RC.400008");

    let mut names = vec![id.clone()];
    if caps.names_by_arn_and_alias {
        names.push("alias/alpha".into());
    }
    names
}

fn settings(moto: &Moto) -> AwsSettings {
    AwsSettings {
        endpoint: Some(moto.endpoint()),
        region: Some(moto::REGION.into()),
        timeout: Duration::from_secs(2),
    }
}

async fn aws_kms(moto: &Moto, store: Arc<dyn Store>) -> Arc<dyn Kms> {
    let credentials = Credentials::new(moto::ACCESS_KEY, moto::SECRET_KEY, None, None, "test");
    Arc::new(
        AwsKms::with_credentials(&settings(moto), store, credentials)
            .await
            .expect("aws kms"),
    )
}

#[tokio::test]
async fn local_kms_conformance() {
    let t = spawn_app().await;
    story(
        t.app.kms.clone(),
        t.app.store.clone(),
        Caps {
            names_by_arn_and_alias: false,
            pending_import: true,
            max_pending_days: repocrypt::kms::MAX_PENDING_DAYS,
        },
    )
    .await;
}

#[tokio::test]
async fn aws_kms_conformance() {
    let Some(moto) = Moto::start("aws_kms_conformance") else {
        return;
    };
    let t = spawn_app().await;
    let kms = aws_kms(&moto, t.app.store.clone()).await;
    let names = story(
        kms.clone(),
        t.app.store.clone(),
        Caps {
            names_by_arn_and_alias: true,
            pending_import: false,
            max_pending_days: repocrypt::kms::aws::AWS_MAX_PENDING_DAYS,
        },
    )
    .await;

    // Named by ARN or alias, the key is A's and only A's.
    let (a, b) = (tid(TENANT_A), tid(TENANT_B));
    let raw = moto.raw_client();
    let id = &names[0];
    let arn = raw
        .describe_key()
        .key_id(id)
        .send()
        .await
        .expect("describe")
        .key_metadata()
        .and_then(|m| m.arn().map(str::to_owned))
        .expect("arn");
    for name in [arn.as_str(), "alias/alpha"] {
        let info = kms.describe_key(&a, name).await.expect("describe");
        assert_eq!(info.map(|i| i.key_id), Some(id.clone()), "{name}");
        assert_eq!(
            kms.describe_key(&b, name).await.expect("describe"),
            None,
            "{name}"
        );
    }

    // Keys without the tag belong to nobody; a key tagged for B is B's alone.
    let untagged = raw
        .create_key()
        .send()
        .await
        .expect("create untagged")
        .key_metadata()
        .map(|m| m.key_id().to_owned())
        .expect("id");
    raw.create_alias()
        .alias_name("alias/untagged")
        .target_key_id(&untagged)
        .send()
        .await
        .expect("alias");
    for tenant in [&a, &b] {
        assert_eq!(kms.describe_key(tenant, &untagged).await.expect("d"), None);
        assert_eq!(
            kms.describe_key(tenant, "alias/untagged").await.expect("d"),
            None
        );
        assert!(!kms
            .list_keys(tenant)
            .await
            .expect("list")
            .iter()
            .any(|k| k.key_id == untagged));
    }
    let tag = aws_sdk_kms::types::Tag::builder()
        .tag_key(TENANT_TAG)
        .tag_value(TENANT_B)
        .build()
        .expect("tag");
    raw.tag_resource()
        .key_id(&untagged)
        .tags(tag)
        .send()
        .await
        .expect("tag for B");
    assert_eq!(kms.describe_key(&a, &untagged).await.expect("d"), None);
    let bs = kms
        .describe_key(&b, &untagged)
        .await
        .expect("d")
        .expect("B's key");
    assert_eq!(
        (bs.key_name.as_str(), bs.key_state),
        ("untagged", KeyState::Enabled)
    );

    // A setting chosen by ARN stores the KMS's key id.
    let service = Service::new(
        t.app.store.clone(),
        kms.clone(),
        KeyStateCache::new(Duration::ZERO, 100, Arc::new(SystemClock)),
        "r".into(),
        "primary".into(),
    );
    let patch = parse_setting_patch(
        serde_json::json!({"encryption_type": "kms", "cmk_key_id": arn})
            .to_string()
            .as_bytes(),
    )
    .expect("patch");
    let report = service
        .update_setting(&actor(), &a, patch)
        .await
        .expect("by ARN");
    let view = SettingView::from(&report);
    assert_eq!(view.cmk_key_id, Some(id.as_str()));
    assert_eq!(view.key_state, Some(KeyState::Enabled));
    // AWS-managed keys belong to nobody (and are not even looked up); aliases follow AWS's
    // rules before any key is created.
    assert_eq!(kms.describe_key(&a, "alias/aws/s3").await.expect("d"), None);
    let keys_before = raw.list_keys().send().await.expect("list").keys().len();
    for bad in ["bad.alias", "aws/mine", ""] {
        assert!(
            matches!(
                kms.create_key(&a, bad, KeyOrigin::Kms, false, &actor())
                    .await,
                Err(Error::InvalidArgument(_))
            ),
            "{bad}"
        );
    }
    assert_eq!(
        raw.list_keys().send().await.expect("list").keys().len(),
        keys_before
    );

    // AWS has no "inactive" creation and import is AWS's own tooling: both refused clearly.
    let me = actor();
    assert!(matches!(
        kms.create_key(&a, "later", KeyOrigin::Kms, true, &me).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        kms.import_key_material(&a, id, None, &me).await,
        Err(Error::InvalidArgument(_))
    ));
    // An alias already taken is a clear error, and leaves no unnamed key enabled behind.
    let before = raw.list_keys().send().await.expect("list").keys().len();
    let dup = kms
        .create_key(&a, "alpha", KeyOrigin::Kms, false, &me)
        .await;
    assert!(
        matches!(&dup, Err(Error::InvalidArgument(m)) if m.contains("already in use")),
        "{dup:?}"
    );
    let keys = raw.list_keys().send().await.expect("list");
    assert_eq!(keys.keys().len(), before + 1);
    let newest = keys
        .keys()
        .last()
        .and_then(|k| k.key_id())
        .expect("id")
        .to_owned();
    let state = raw.describe_key().key_id(&newest).send().await.expect("d");
    assert_eq!(
        state
            .key_metadata()
            .and_then(|m| m.key_state())
            .map(|s| s.as_str().to_owned()),
        Some("PendingDeletion".into())
    );
}

#[tokio::test]
async fn aws_kms_that_cannot_be_reached_is_unavailable_not_a_500() {
    let t = spawn_app().await;
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let settings = AwsSettings {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        region: Some("us-east-1".into()),
        timeout: Duration::from_secs(2),
    };
    let kms = AwsKms::with_credentials(
        &settings,
        t.app.store.clone(),
        Credentials::new("x", "y", None, None, "test"),
    )
    .await
    .expect("client");
    let started = std::time::Instant::now();
    let a = tid(TENANT_A);
    assert!(matches!(
        kms.check_access(&a).await,
        Err(Error::KmsUnavailable(_))
    ));
    assert!(matches!(
        kms.describe_key(&a, "k").await,
        Err(Error::KmsUnavailable(_))
    ));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// `check_access` asks this tenant's keys, not only whether the database answers: a
/// tenant whose key rows cannot be read is refused while the database pings and another
/// tenant's access is fine.
#[tokio::test]
async fn local_kms_access_check_reads_the_tenants_own_keys() {
    use sqlx::Connection;
    let t = spawn_app().await;
    let (kms, store) = (t.app.kms.clone(), t.app.store.clone());
    let (a, b) = (tid(TENANT_A), tid(TENANT_B));
    kms.create_key(&a, "alpha", KeyOrigin::Kms, false, &actor())
        .await
        .expect("create_key");
    kms.check_access(&a).await.expect("A's keys read");
    let url = &t.app.config.database_url;
    if url.starts_with("sqlite:") {
        // A row of A's that cannot be decoded (SQLite keeps the text in an INTEGER column).
        let mut c = sqlx::SqliteConnection::connect(url).await.expect("sqlite");
        sqlx::query("UPDATE kms_keys SET deletion_at = 'soon' WHERE tenant_id = ?")
            .bind(a.as_str())
            .execute(&mut c)
            .await
            .expect("corrupt A's key");
        c.close().await.expect("close");
    } else {
        // PostgreSQL types its columns: the key table is gone instead.
        let mut c = sqlx::PgConnection::connect(url).await.expect("postgres");
        sqlx::query("ALTER TABLE kms_keys RENAME TO kms_keys_gone")
            .execute(&mut c)
            .await
            .expect("rename");
        c.close().await.expect("close");
    }
    store.ping().await.expect("the database itself answers");
    // The local KMS is the service's database: a failure to read it is the database's
    // (503 RC.503002), as a hung or unreachable database is (tests/external/faults.rs).
    let refused = kms.check_access(&a).await;
    assert!(matches!(refused, Err(Error::Store(_))), "{refused:?}");
    if url.starts_with("sqlite:") {
        kms.check_access(&b).await.expect("B's keys still read");
    }
}

/// On AWS KMS a tenant is bound to its keys by a tag: a tenant id that cannot be a tag
/// value can have no key, and its access check says so; others pass, keys or none.
#[tokio::test]
async fn aws_kms_access_check_is_for_the_tenant() {
    let Some(moto) = Moto::start("aws_kms_access_check_is_for_the_tenant") else {
        return;
    };
    let t = spawn_app().await;
    let kms = aws_kms(&moto, t.app.store.clone()).await;
    let a = tid(TENANT_A);
    kms.check_access(&a).await.expect("no keys yet");
    kms.create_key(&a, "alpha", KeyOrigin::Kms, false, &actor())
        .await
        .expect("create_key");
    kms.check_access(&a).await.expect("with a key");
    kms.check_access(&tid(TENANT_B))
        .await
        .expect("another tenant");
    for bad in ["t#1", "tenant!", &"x".repeat(257)] {
        let refused = kms.check_access(&tid(bad)).await;
        assert!(
            matches!(&refused, Err(Error::InvalidArgument(m)) if m.contains("tag value")),
            "{bad}: {refused:?}"
        );
    }
}
