//! Rewrap: after a tenant chooses a new CMK, the data keys of its repositories registered
//! earlier are still wrapped by the old one. A rewrap job re-wraps each of them under the
//! tenant's current CMK (the same key in clear: no repository data is re-encrypted).
//!
//! A job is a row of the store (`rewrap_jobs`), at most one running per tenant. Its work is
//! never listed up front: it is always "the tenant's encrypted, not shredded repositories
//! whose CMK is not the target and that have not failed in this job", so a job that stops
//! (a `kill -9`, a lost lease, a store error) resumes where it was, and no repository is
//! done twice. Each repository is one store transaction: its wrapped key and CMK are
//! replaced only if they are still the ones the rewrap started from (compare-and-set, so a
//! concurrent shred is never undone), with its audit record and the job's count.
//!
//! One runner at a time per job, across processes (a CLI, several replicas): a runner
//! holds the job's lease (`lease_owner`, `lease_until`), taken by one conditional UPDATE
//! and renewed by each repository's transaction, which also checks that the lease is still
//! its own (a fence: a runner that paused past its lease and was replaced writes nothing).
//! A runner that dies leaves a lease that expires within [`REWRAP_LEASE`]; `serve` looks for
//! running jobs with no live lease every [`REWRAP_SWEEP`] and takes them over.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::error::{Error, Result};
use super::repository::{EncryptionContext, RepoId, Repository};
use super::service::Service;
use super::types::{truncate, Actor, EncryptionType, KeyState, TenantId};

/// How long a runner's lease on a job lasts without being renewed (every repository's
/// transaction renews it).
pub const REWRAP_LEASE: Duration = Duration::from_secs(10);
/// How often `serve` looks for running jobs that no runner holds.
pub const REWRAP_SWEEP: Duration = Duration::from_secs(2);
/// Repositories read per query of a job's work.
const BATCH: u32 = 100;
/// Attempts of one repository's rewrap while the KMS is unavailable.
const KMS_ATTEMPTS: u32 = 3;

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RewrapState {
    /// Work remains (or a runner is about to find there is none).
    Running,
    /// Finished: every repository is under the target key.
    Succeeded,
    /// Finished with repositories listed in `failed`, or stopped by `error`.
    Failed,
}

impl RewrapState {
    pub fn as_str(self) -> &'static str {
        match self {
            RewrapState::Running => "running",
            RewrapState::Succeeded => "succeeded",
            RewrapState::Failed => "failed",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "running" => Some(RewrapState::Running),
            "succeeded" => Some(RewrapState::Succeeded),
            "failed" => Some(RewrapState::Failed),
            _ => None,
        }
    }
}

/// A repository a job could not rewrap, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RewrapFailure {
    pub repo_id: RepoId,
    pub reason: String,
}

/// A rewrap job as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RewrapJob {
    pub job_id: String,
    pub tenant_id: TenantId,
    /// The CMK every data key is rewrapped under: the tenant's CMK when the job started.
    pub target_key_id: String,
    pub state: RewrapState,
    /// Repositories to rewrap, counted at the start (raised if more turn up under an old
    /// key while the job runs).
    pub total: u64,
    /// Repositories rewrapped.
    pub done: u64,
    /// Repositories not rewrapped, by id.
    pub failed: Vec<RewrapFailure>,
    /// Why the job stopped before its end (its target key became unusable).
    pub error: Option<String>,
    /// Who started it (audit records of its repositories name them).
    pub actor: String,
    pub request_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
}

impl RewrapJob {
    /// The actor of the records the job writes: whoever started it, with their request id.
    pub fn actor(&self) -> Actor {
        Actor {
            actor: self.actor.clone(),
            request_id: self.request_id.clone(),
        }
    }

    /// Repositories dealt with: rewrapped or failed.
    pub fn processed(&self) -> u64 {
        self.done + self.failed.len() as u64
    }
}

/// What one repository's rewrap transaction found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewrapCommit {
    /// Rewrapped now: the new wrapped key and CMK are stored, the job counts it.
    Rewrapped,
    /// The repository changed since it was read (shredded, or rewrapped by someone else):
    /// nothing written.
    Changed,
    /// The job is no longer this runner's (finished, or taken over): nothing written.
    LeaseLost,
}

/// What a runner does after one repository.
enum Step {
    Next,
    /// The job is no longer ours.
    Stop,
    /// The target key refused: the job cannot go on.
    TargetRefused(String),
}

/// Job ids are UUIDs.
fn parse_job_id(job_id: &str) -> Result<String> {
    uuid::Uuid::parse_str(job_id)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| {
            Error::invalid(
                "job_id",
                format!("must be a UUID, got `{}`", truncate(job_id, 64)),
            )
        })
}

/// An error of a rewrap that names `key_id` as the key that refused.
fn names_key(e: &Error, key_id: &str) -> bool {
    match e {
        Error::KeyRefused { key_id: k, .. }
        | Error::KeyNotEnabled { key_id: k, .. }
        | Error::KeyNotFound { key_id: k }
        | Error::CmkGone { key_id: k } => k == key_id,
        _ => false,
    }
}

/// The jobs this process runs now (so that it never runs one twice).
#[derive(Debug, Default)]
pub struct RunningHere(std::sync::Mutex<HashSet<String>>);

impl RunningHere {
    fn insert(&self, job_id: &str) -> bool {
        self.0
            .lock()
            .map(|mut s| s.insert(job_id.to_owned()))
            .unwrap_or(false)
    }

    fn remove(&self, job_id: &str) {
        if let Ok(mut s) = self.0.lock() {
            s.remove(job_id);
        }
    }
}

impl Service {
    // ---- CreateTenantRewrapJob ---------------------------------------------------------

    /// Start a rewrap of the tenant's data keys under its current CMK, or answer the job
    /// already running (`false`: not created now). The target must be usable as a
    /// registration requires: the grant, encryption type KMS with a key, the key enabled.
    /// The job is not run here: see [`Service::spawn_rewrap`] and [`Service::run_rewrap`].
    pub async fn start_rewrap(
        &self,
        actor: &Actor,
        tenant: &TenantId,
    ) -> Result<(RewrapJob, bool)> {
        if let Some(running) = self.store.running_rewrap_job(tenant).await? {
            return Ok((running, false));
        }
        if self.store.get_grant(tenant).await?.is_none() {
            return Err(Error::KmsGrantMissing {
                tenant: tenant.as_str().to_owned(),
            });
        }
        let setting = self
            .store
            .get_setting(tenant)
            .await?
            .filter(|s| s.encryption_type == Some(EncryptionType::Kms))
            .ok_or_else(|| Error::RewrapNeedsKms {
                tenant: tenant.as_str().to_owned(),
            })?;
        let key_id = setting.cmk_key_id.ok_or(Error::MissingCmkKeyId)?;
        let target = self.target_key(tenant, &key_id).await?;
        let job_id = uuid::Uuid::new_v4().hyphenated().to_string();
        self.store
            .start_rewrap_job(tenant, &job_id, &target, actor)
            .await
    }

    /// The target key as the KMS says now: it must exist and be enabled.
    async fn target_key(&self, tenant: &TenantId, key_id: &str) -> Result<String> {
        let read_at = self.cache.now();
        let info = self.kms.describe_key(tenant, key_id).await?;
        self.remember_key(tenant, key_id, info.as_ref(), read_at, false);
        let info = info.ok_or_else(|| Error::KeyNotFound {
            key_id: key_id.to_owned(),
        })?;
        if info.key_state != KeyState::Enabled {
            return Err(Error::KeyNotEnabled {
                key_id: info.key_id,
                state: info.key_state.describe(),
                code: info.key_state.code(),
            });
        }
        Ok(info.key_id)
    }

    // ---- ShowTenantRewrapJob -----------------------------------------------------------

    pub async fn show_rewrap(&self, tenant: &TenantId, job_id: &str) -> Result<RewrapJob> {
        let job_id = parse_job_id(job_id)?;
        self.store
            .get_rewrap_job(tenant, &job_id)
            .await?
            .ok_or(Error::RewrapJobNotFound { job_id })
    }

    // ---- running jobs ------------------------------------------------------------------

    /// Take the job's lease if no runner holds it: the lease's token, or `None`.
    pub async fn claim_rewrap(&self, job_id: &str) -> Result<Option<String>> {
        let lease = uuid::Uuid::new_v4().simple().to_string();
        let claimed = self
            .store
            .claim_rewrap_job(job_id, &lease, REWRAP_LEASE)
            .await?;
        Ok(claimed.then_some(lease))
    }

    /// Run a job whose lease this caller holds, to its end, or until the lease is lost
    /// (another runner took over: `Ok`). On an error (the store, an unreachable KMS) the
    /// lease is given back, so that the job can be resumed at once.
    pub async fn run_rewrap(&self, job: &RewrapJob, lease: &str) -> Result<()> {
        let outcome = self.rewrap_all(job, lease).await;
        if let Err(e) = &outcome {
            tracing::warn!(
                tenant = %job.tenant_id,
                job_id = %job.job_id,
                error = %e,
                detail = e.internal_detail().unwrap_or(""),
                "rewrap job stopped; it resumes when run again"
            );
            if let Err(e) = self.store.release_rewrap_lease(&job.job_id, lease).await {
                tracing::warn!(job_id = %job.job_id, error = %e, "could not release a rewrap lease; it expires");
            }
        }
        outcome
    }

    /// Claim and run the job in the background, on the service's home runtime (not the
    /// connection thread of the request that started it), unless this process runs it
    /// already or another runner holds it.
    pub fn spawn_rewrap(self: &Arc<Self>, job: RewrapJob) {
        if job.state != RewrapState::Running || !self.rewraps.insert(&job.job_id) {
            return;
        }
        let service = self.clone();
        let job_id = job.job_id.clone();
        let started = self.home.spawn(async move {
            match service.claim_rewrap(&job.job_id).await {
                Ok(Some(lease)) => {
                    tracing::info!(tenant = %job.tenant_id, job_id = %job.job_id, "rewrap job running");
                    let _ = service.run_rewrap(&job, &lease).await;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(job_id = %job.job_id, error = %e, "could not claim a rewrap job")
                }
            }
            service.rewraps.remove(&job.job_id);
        });
        if !started {
            self.rewraps.remove(&job_id);
        }
    }

    /// Run every running job that no runner holds (jobs of a process that died, or started
    /// by `repocrypt repo rewrap` without `--wait`).
    pub async fn resume_rewraps(self: &Arc<Self>) -> Result<()> {
        for job in self.store.unleased_rewrap_jobs().await? {
            self.spawn_rewrap(job);
        }
        Ok(())
    }

    /// `serve`'s background task: [`resume_rewraps`](Self::resume_rewraps) now and every
    /// [`REWRAP_SWEEP`], for ever.
    pub async fn sweep_rewraps(self: Arc<Self>) {
        loop {
            if let Err(e) = self.resume_rewraps().await {
                tracing::warn!(error = %e, detail = e.internal_detail().unwrap_or(""), "looking for rewrap jobs to resume failed");
            }
            tokio::time::sleep(REWRAP_SWEEP).await;
        }
    }

    async fn rewrap_all(&self, job: &RewrapJob, lease: &str) -> Result<()> {
        let actor = job.actor();
        let mut after: Option<RepoId> = None;
        loop {
            // The target must still be usable; checked once per batch (each repository's
            // rewrap checks it too).
            if let Err(e) = self.target_key(&job.tenant_id, &job.target_key_id).await {
                if names_key(&e, &job.target_key_id) {
                    self.store
                        .finish_rewrap_job(job, lease, Some(&e.to_string()), &actor)
                        .await?;
                    return Ok(());
                }
                return Err(e);
            }
            let batch = self.store.rewrap_work(job, after, BATCH).await?;
            if batch.is_empty() {
                break;
            }
            for repo in &batch {
                after = Some(repo.fields.repo_id);
                match self.rewrap_one(job, lease, &actor, repo).await? {
                    Step::Next => {}
                    Step::Stop => return Ok(()),
                    Step::TargetRefused(reason) => {
                        self.store
                            .finish_rewrap_job(job, lease, Some(&reason), &actor)
                            .await?;
                        return Ok(());
                    }
                }
            }
        }
        self.store
            .finish_rewrap_job(job, lease, None, &actor)
            .await?;
        Ok(())
    }

    async fn rewrap_one(
        &self,
        job: &RewrapJob,
        lease: &str,
        actor: &Actor,
        repo: &Repository,
    ) -> Result<Step> {
        let tenant = &job.tenant_id;
        let repo_id = repo.fields.repo_id;
        let (Some(old_key), Some(wrapped)) =
            (repo.cmk_key_id.as_deref(), repo.wrapped_key.as_deref())
        else {
            return Ok(Step::Next);
        };
        // A withdrawn grant stops the job: the service may no longer use the tenant's KMS.
        if self.store.get_grant(tenant).await?.is_none() {
            return Ok(Step::TargetRefused(
                Error::GrantWithdrawn {
                    tenant: tenant.as_str().to_owned(),
                }
                .to_string(),
            ));
        }
        let context = EncryptionContext::new(tenant, repo_id);
        let mut attempt = 1;
        let rewrapped = loop {
            match self
                .kms
                .rewrap_data_key(
                    tenant,
                    old_key,
                    &job.target_key_id,
                    wrapped,
                    &context,
                    repo_id,
                )
                .await
            {
                Err(Error::KmsUnavailable(_)) if attempt < KMS_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(250) * attempt).await;
                    attempt += 1;
                }
                outcome => break outcome,
            }
        };
        match rewrapped {
            Ok(new_wrapped) => {
                let committed = self
                    .store
                    .commit_rewrap(job, lease, repo, &new_wrapped, actor)
                    .await?;
                Ok(match committed {
                    RewrapCommit::Rewrapped => {
                        // Its entry was for the old wrapped form: it would never match again.
                        self.released.forget(tenant.as_str(), repo_id);
                        self.event_written();
                        Step::Next
                    }
                    RewrapCommit::Changed => Step::Next,
                    RewrapCommit::LeaseLost => Step::Stop,
                })
            }
            Err(e) if names_key(&e, &job.target_key_id) => Ok(Step::TargetRefused(e.to_string())),
            // An outage is not the repository's failure: the job stops, gives its lease
            // back and is resumed (by `serve`'s sweep) once the KMS answers again.
            Err(e @ (Error::Store(_) | Error::Internal(_) | Error::KmsUnavailable(_))) => Err(e),
            Err(e) => {
                let recorded = self
                    .store
                    .record_rewrap_failure(job, lease, repo_id, &e.to_string(), actor)
                    .await?;
                Ok(if recorded { Step::Next } else { Step::Stop })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_uuids_and_states_round_trip() {
        let id = "0f8fad5b-d9cb-469f-a165-70867728950e";
        assert_eq!(parse_job_id(id).ok().as_deref(), Some(id));
        assert_eq!(
            parse_job_id("0F8FAD5BD9CB469FA16570867728950E")
                .ok()
                .as_deref(),
            Some(id)
        );
        let e = parse_job_id("x'; DROP")
            .expect_err("not a uuid")
            .to_string();
        assert!(e.contains("job_id") && e.contains("UUID"), "{e}");
        for s in [
            RewrapState::Running,
            RewrapState::Succeeded,
            RewrapState::Failed,
        ] {
            assert_eq!(RewrapState::parse(s.as_str()), Some(s));
        }
        assert_eq!(RewrapState::parse("finished"), None);
    }

    #[test]
    fn only_an_error_that_names_the_target_stops_a_job() {
        let refused = Error::KeyRefused {
            key_id: "new".into(),
            state: "disabled",
            code: 3,
        };
        assert!(names_key(&refused, "new") && !names_key(&refused, "old"));
        let gone = Error::CmkGone {
            key_id: "old".into(),
        };
        assert!(!names_key(&gone, "new"));
        assert!(!names_key(&Error::KmsUnavailable("x".into()), "new"));
    }
}
