//! The SQLite writer commits concurrent PUTs together: each is answered only after the
//! commit, a refused one rolls back alone, and the read cache never serves a row older
//! than a write that has been answered.

use std::sync::Arc;

use repocrypt::clock::SystemClock;
use repocrypt::domain::{Actor, EncryptionType, Error, SettingDraft, TenantId};
use repocrypt::store::sqlite::SqliteStore;
use repocrypt::store::{AuditFilter, Store};

fn draft(key: &str) -> SettingDraft {
    SettingDraft {
        encryption_type: Some(EncryptionType::Kms),
        default_encryption_enabled: false,
        cmk_key_id: Some(key.to_owned()),
        cmk_key_name: Some("n".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_puts_commit_together_and_refusals_roll_back_alone() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("g.db").display());
    let store = Arc::new(
        SqliteStore::connect(&url, Arc::new(SystemClock))
            .await
            .unwrap(),
    );
    let mut tasks = Vec::new();
    for i in 0..300u32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let tenant = TenantId::parse(format!("tenant-{}", i % 30)).unwrap();
            let actor = Actor {
                actor: format!("u{i}"),
                request_id: Some(format!("r{i}")),
            };
            // Every third write is refused by its plan.
            let plan = Arc::new(move |_: Option<&_>, _: bool| {
                if i % 3 == 0 {
                    Err(Error::MissingCmkKeyId)
                } else {
                    Ok(draft(&format!("key-{i}")))
                }
            });
            // Read our own write at once: the cache must not hide it.
            let result = store.update_setting(&tenant, &actor, plan).await;
            if let Ok(saved) = &result {
                let now = store.get_setting(&tenant).await.unwrap().unwrap();
                assert_eq!(now.id, saved.id);
            }
            (i, result.is_ok())
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let (i, success) = t.await.unwrap();
        assert_eq!(success, i % 3 != 0, "write {i}");
        ok += usize::from(success);
    }
    assert_eq!(ok, 200);
    // Exactly one audit record per acknowledged write, none for refused ones.
    let mut records = 0;
    for t in 0..30 {
        let tenant = TenantId::parse(format!("tenant-{t}")).unwrap();
        let audit = store
            .list_audit(&AuditFilter::tenant(&tenant))
            .await
            .unwrap();
        assert!(audit.iter().all(|r| {
            let i: u32 = r.actor[1..].parse().unwrap();
            i % 3 != 0
        }));
        records += audit.len();
        // The stored row is the last write's, and the cache agrees with a fresh store.
        let cached = store.get_setting(&tenant).await.unwrap();
        let fresh = SqliteStore::connect(&url, Arc::new(SystemClock))
            .await
            .unwrap()
            .get_setting(&tenant)
            .await
            .unwrap();
        assert_eq!(cached, fresh);
        match audit.last() {
            // Tenants whose every write was refused (t % 3 == 0) have no row at all.
            None => assert!(fresh.is_none() && t % 3 == 0, "tenant-{t}"),
            Some(last) => assert_eq!(
                last.after.as_ref().unwrap()["cmk_key_id"],
                fresh.unwrap().cmk_key_id.unwrap()
            ),
        }
    }
    assert_eq!(records, 200);
}
