//! Prometheus metrics: fixed sets of lock-free counters and histograms, rendered in the
//! text exposition format by `GET /metrics`.
//!
//! Labels come from fixed lists (operations, KMS calls, outcomes), never from request
//! data, so no tenant id, key id or credential can reach a scrape and the number of
//! series is bounded.
//!
//! Why not `prometheus-client`: it writes OpenMetrics (`_total` outside the `# TYPE` name,
//! `le="1.0"`, `# EOF`), not the text format 0.0.4 served here (docs/performance.md,
//! 2026-12-01).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Status codes counted one by one (100..=599); anything else counts as 599.
const STATUSES: usize = 500;

#[derive(Default)]
struct Histogram {
    /// Per bucket (not cumulative); the last one is +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = BUCKETS
                .get(i)
                .map(|b| b.to_string())
                .unwrap_or_else(|| "+Inf".into());
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(
            out,
            "{name}_count{{{labels}}} {}",
            self.count.load(Ordering::Relaxed)
        );
    }
}

/// What `/metrics` counts a request under: one of the routes of `http::routes::ROUTES`,
/// or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    ShowSetting,
    UpdateSetting,
    ShowGrant,
    CreateGrant,
    ShowTenantSetting,
    ListCmks,
    ListRepositories,
    RegisterRepository,
    ShowDataKey,
    DeleteDataKey,
    CreateRewrap,
    ShowRewrap,
    ListCmkRepositories,
    DeleteGrant,
    Events,
    Health,
    Ready,
    Metrics,
    OpenApi,
    /// No route, or a method the route does not have.
    Other,
}

impl Operation {
    pub const ALL: [Operation; 20] = [
        Operation::ShowSetting,
        Operation::UpdateSetting,
        Operation::ShowGrant,
        Operation::CreateGrant,
        Operation::ShowTenantSetting,
        Operation::ListCmks,
        Operation::ListRepositories,
        Operation::RegisterRepository,
        Operation::ShowDataKey,
        Operation::DeleteDataKey,
        Operation::CreateRewrap,
        Operation::ShowRewrap,
        Operation::ListCmkRepositories,
        Operation::DeleteGrant,
        Operation::Events,
        Operation::Health,
        Operation::Ready,
        Operation::Metrics,
        Operation::OpenApi,
        Operation::Other,
    ];

    /// The label of its requests: an API operation's OpenAPI operation id, or the name
    /// of one of the other routes (`http::routes::ROUTES`, the one list of them), or
    /// `other`.
    pub fn name(self) -> &'static str {
        crate::http::routes::route_of(self).map_or("other", |r| r.id)
    }
}

/// Why a request was refused at the HTTP edge, before any handler ran: by the service
/// itself (`http::context`), or by hyper's parser (`http::server`, which sees the
/// connection end with the parse error hyper answered with a bare status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// An HTTP/1.1 request without a `Host` header (400).
    NoHost,
    /// More than one `Host` header, or one that is not a host and port (400).
    BadHost,
    /// A `Transfer-Encoding` other than `chunked` alone (400).
    Framing,
    /// A declared `Content-Length` over `max_body_bytes` (413, without reading the body).
    BodyTooLarge,
    /// A head hyper could not parse (its bare 400).
    Parse,
    /// A head over `max_header_bytes`, or a URI over hyper's 65534 bytes (its bare 431 or 414).
    HeadTooLarge,
    /// A head begun but not finished within `header_read_timeout` (the connection is closed).
    HeaderTimeout,
}

impl Refusal {
    pub const ALL: [Refusal; 7] = [
        Refusal::NoHost,
        Refusal::BadHost,
        Refusal::Framing,
        Refusal::BodyTooLarge,
        Refusal::Parse,
        Refusal::HeadTooLarge,
        Refusal::HeaderTimeout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Refusal::NoHost => "no_host",
            Refusal::BadHost => "bad_host",
            Refusal::Framing => "framing",
            Refusal::BodyTooLarge => "body_too_large",
            Refusal::Parse => "parse",
            Refusal::HeadTooLarge => "head_too_large",
            Refusal::HeaderTimeout => "header_timeout",
        }
    }
}

/// A call to the KMS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KmsCall {
    CheckAccess,
    DescribeKey,
    CreateKey,
    ListKeys,
    EnableKey,
    DisableKey,
    ScheduleKeyDeletion,
    CancelKeyDeletion,
    ImportKeyMaterial,
    GenerateDataKey,
    Decrypt,
    ReEncrypt,
    Ping,
}

impl KmsCall {
    const ALL: [KmsCall; 13] = [
        KmsCall::CheckAccess,
        KmsCall::DescribeKey,
        KmsCall::CreateKey,
        KmsCall::ListKeys,
        KmsCall::EnableKey,
        KmsCall::DisableKey,
        KmsCall::ScheduleKeyDeletion,
        KmsCall::CancelKeyDeletion,
        KmsCall::ImportKeyMaterial,
        KmsCall::GenerateDataKey,
        KmsCall::Decrypt,
        KmsCall::ReEncrypt,
        KmsCall::Ping,
    ];

    pub fn name(self) -> &'static str {
        match self {
            KmsCall::CheckAccess => "check_access",
            KmsCall::DescribeKey => "describe_key",
            KmsCall::CreateKey => "create_key",
            KmsCall::ListKeys => "list_keys",
            KmsCall::EnableKey => "enable_key",
            KmsCall::DisableKey => "disable_key",
            KmsCall::ScheduleKeyDeletion => "schedule_key_deletion",
            KmsCall::CancelKeyDeletion => "cancel_key_deletion",
            KmsCall::ImportKeyMaterial => "import_key_material",
            KmsCall::GenerateDataKey => "generate_data_key",
            KmsCall::Decrypt => "decrypt",
            KmsCall::ReEncrypt => "re_encrypt",
            KmsCall::Ping => "ping",
        }
    }
}

/// A call to the external IAM (`iam = "keystone"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IamCall {
    /// `GET /v3/auth/tokens`: a caller's token validated.
    ValidateToken,
    /// `POST /v3/auth/tokens`: the service's own token issued or renewed.
    IssueServiceToken,
}

impl IamCall {
    const ALL: [IamCall; 2] = [IamCall::ValidateToken, IamCall::IssueServiceToken];

    pub fn name(self) -> &'static str {
        match self {
            IamCall::ValidateToken => "validate_token",
            IamCall::IssueServiceToken => "issue_service_token",
        }
    }
}

/// How a call to a dependency (the KMS, the IAM) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    Ok,
    /// The dependency answered with a refusal (KMS: not found, wrong state, …; IAM: an
    /// unknown, revoked or expired token, or one without a mapped role or scope).
    Refused,
    /// The KMS could not be reached or failed (the `RC.503001` cases).
    Unavailable,
    /// The call failed in this service, not in the KMS: its database (the local KMS's keys,
    /// the AWS KMS's key bindings) or another internal error (`RC.503002`, `RC.500000`).
    Error,
}

const OUTCOMES: [CallOutcome; 4] = [
    CallOutcome::Ok,
    CallOutcome::Refused,
    CallOutcome::Unavailable,
    CallOutcome::Error,
];

impl CallOutcome {
    fn name(self) -> &'static str {
        match self {
            CallOutcome::Ok => "ok",
            CallOutcome::Refused => "refused",
            CallOutcome::Unavailable => "unavailable",
            CallOutcome::Error => "error",
        }
    }
}

struct OperationMetrics {
    by_status: Vec<AtomicU64>,
    latency: Histogram,
    /// Requests whose client went away before their answer.
    client_closed: AtomicU64,
}

/// Calls of one kind to a dependency: their outcomes and latency.
#[derive(Default)]
struct CallMetrics {
    outcomes: [AtomicU64; OUTCOMES.len()],
    latency: Histogram,
}

pub use crate::domain::ports::CacheStats;

pub struct Metrics {
    operations: Vec<OperationMetrics>,
    kms: Vec<CallMetrics>,
    iam: Vec<CallMetrics>,
    refused: [AtomicU64; Refusal::ALL.len()],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            operations: Operation::ALL
                .iter()
                .map(|_| OperationMetrics {
                    by_status: (0..STATUSES).map(|_| AtomicU64::new(0)).collect(),
                    latency: Histogram::default(),
                    client_closed: AtomicU64::new(0),
                })
                .collect(),
            kms: KmsCall::ALL
                .iter()
                .map(|_| CallMetrics::default())
                .collect(),
            iam: IamCall::ALL
                .iter()
                .map(|_| CallMetrics::default())
                .collect(),
            refused: Default::default(),
        }
    }

    pub fn record_request(&self, op: Operation, status: u16, elapsed: Duration) {
        let m = &self.operations[op as usize];
        let slot = usize::from(status)
            .checked_sub(100)
            .filter(|&i| i < STATUSES)
            .unwrap_or(STATUSES - 1);
        m.by_status[slot].fetch_add(1, Ordering::Relaxed);
        m.latency.observe(elapsed);
    }

    /// A request whose client went away before it was answered (also counted by
    /// [`Metrics::record_request`], with the status of what was done).
    pub fn record_client_closed(&self, op: Operation) {
        self.operations[op as usize]
            .client_closed
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A request refused at the HTTP edge.
    pub fn record_refused(&self, reason: Refusal) {
        self.refused[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_kms(&self, call: KmsCall, outcome: CallOutcome, elapsed: Duration) {
        let m = &self.kms[call as usize];
        m.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
        m.latency.observe(elapsed);
    }

    pub fn record_iam(&self, call: IamCall, outcome: CallOutcome, elapsed: Duration) {
        let m = &self.iam[call as usize];
        m.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
        m.latency.observe(elapsed);
    }

    /// The text exposition format, with the caches' and rate limiters' counters given
    /// by the caller (they live with what they count).
    pub fn render(&self, caches: &[CacheStats], rate_limited: &[(&str, u64)]) -> String {
        let mut out = String::with_capacity(16 * 1024);
        header(
            &mut out,
            "repocrypt_http_requests_total",
            "counter",
            "Requests answered, by operation and HTTP status.",
        );
        for (op, m) in Operation::ALL.iter().zip(&self.operations) {
            for (i, count) in m.by_status.iter().enumerate() {
                let count = count.load(Ordering::Relaxed);
                if count > 0 {
                    let _ = writeln!(
                        out,
                        "repocrypt_http_requests_total{{operation=\"{}\",status=\"{}\"}} {count}",
                        op.name(),
                        i + 100
                    );
                }
            }
        }
        header(
            &mut out,
            "repocrypt_http_request_duration_seconds",
            "histogram",
            "Time from a request's head to its response, by operation.",
        );
        for (op, m) in Operation::ALL.iter().zip(&self.operations) {
            let labels = format!("operation=\"{}\"", op.name());
            m.latency
                .render(&mut out, "repocrypt_http_request_duration_seconds", &labels);
        }
        header(
            &mut out,
            "repocrypt_http_requests_client_closed_total",
            "counter",
            "Requests whose client went away before the answer, by operation.",
        );
        for (op, m) in Operation::ALL.iter().zip(&self.operations) {
            let count = m.client_closed.load(Ordering::Relaxed);
            if count > 0 {
                let _ = writeln!(
                    out,
                    "repocrypt_http_requests_client_closed_total{{operation=\"{}\"}} {count}",
                    op.name()
                );
            }
        }
        header(
            &mut out,
            "repocrypt_http_requests_refused_total",
            "counter",
            "Requests refused at the HTTP edge before any handler ran, by reason.",
        );
        for (reason, count) in Refusal::ALL.iter().zip(&self.refused) {
            let _ = writeln!(
                out,
                "repocrypt_http_requests_refused_total{{reason=\"{}\"}} {}",
                reason.name(),
                count.load(Ordering::Relaxed)
            );
        }
        let kms: Vec<_> = KmsCall::ALL
            .iter()
            .map(|c| c.name())
            .zip(&self.kms)
            .collect();
        render_calls(
            &mut out,
            "repocrypt_kms",
            "Calls to the KMS",
            "Time of a KMS call, retries included, by call.",
            &kms,
        );
        let iam: Vec<_> = IamCall::ALL
            .iter()
            .map(|c| c.name())
            .zip(&self.iam)
            .collect();
        render_calls(
            &mut out,
            "repocrypt_iam",
            "Calls to the external IAM (Keystone)",
            "Time of a call to the external IAM, by call.",
            &iam,
        );
        for (name, help, pick) in [
            (
                "repocrypt_cache_hits_total",
                "Lookups answered from an in-memory cache.",
                (|c: &CacheStats| c.hits) as fn(&CacheStats) -> u64,
            ),
            (
                "repocrypt_cache_misses_total",
                "Lookups an in-memory cache could not answer.",
                |c: &CacheStats| c.misses,
            ),
        ] {
            header(&mut out, name, "counter", help);
            for c in caches {
                let _ = writeln!(out, "{name}{{cache=\"{}\"}} {}", c.name, pick(c));
            }
        }
        header(
            &mut out,
            "repocrypt_rate_limited_total",
            "counter",
            "Requests refused with 429, by limit (tenant or credential).",
        );
        for (scope, count) in rate_limited {
            let _ = writeln!(
                out,
                "repocrypt_rate_limited_total{{scope=\"{scope}\"}} {count}"
            );
        }
        header(
            &mut out,
            "repocrypt_log_lines_dropped_total",
            "counter",
            "Log lines dropped because the log's output (stderr) could not keep up.",
        );
        let _ = writeln!(
            out,
            "repocrypt_log_lines_dropped_total {}",
            crate::telemetry::dropped_lines()
        );
        out
    }
}

/// `PREFIX_calls_total{call,outcome}` and `PREFIX_call_duration_seconds{call}` of one
/// dependency's calls.
fn render_calls(
    out: &mut String,
    prefix: &str,
    what: &str,
    duration_help: &str,
    calls: &[(&str, &CallMetrics)],
) {
    let total = format!("{prefix}_calls_total");
    header(
        out,
        &total,
        "counter",
        &format!("{what}, by call and outcome (ok, refused, unavailable, error)."),
    );
    for (call, m) in calls {
        for (outcome, count) in OUTCOMES.iter().zip(&m.outcomes) {
            let _ = writeln!(
                out,
                "{total}{{call=\"{call}\",outcome=\"{}\"}} {}",
                outcome.name(),
                count.load(Ordering::Relaxed)
            );
        }
    }
    let duration = format!("{prefix}_call_duration_seconds");
    header(out, &duration, "histogram", duration_help);
    for (call, m) in calls {
        m.latency
            .render(out, &duration, &format!("call=\"{call}\""));
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_operation_and_status_with_cumulative_buckets() {
        let m = Metrics::new();
        m.record_request(Operation::ShowSetting, 202, Duration::from_micros(300));
        m.record_request(Operation::ShowSetting, 202, Duration::from_millis(3));
        m.record_request(Operation::ShowSetting, 429, Duration::from_micros(50));
        m.record_request(Operation::Other, 404, Duration::from_micros(50));
        let text = m.render(&[], &[("tenant", 1)]);
        let has = |line: &str| text.lines().any(|l| l == line);
        assert!(has(
            "repocrypt_http_requests_total{operation=\"ShowTenantRepoEncryptionSetting\",status=\"202\"} 2"
        ));
        assert!(has(
            "repocrypt_http_requests_total{operation=\"ShowTenantRepoEncryptionSetting\",status=\"429\"} 1"
        ));
        assert!(has(
            "repocrypt_http_requests_total{operation=\"other\",status=\"404\"} 1"
        ));
        let bucket = |le: &str| {
            format!(
                "repocrypt_http_request_duration_seconds_bucket{{operation=\"ShowTenantRepoEncryptionSetting\",le=\"{le}\"}}"
            )
        };
        assert!(has(&format!("{} 1", bucket("0.0001"))));
        assert!(has(&format!("{} 2", bucket("0.0005"))));
        assert!(has(&format!("{} 3", bucket("0.005"))));
        assert!(has(&format!("{} 3", bucket("+Inf"))));
        assert!(has(
            "repocrypt_http_request_duration_seconds_count{operation=\"ShowTenantRepoEncryptionSetting\"} 3"
        ));
        assert!(has("repocrypt_rate_limited_total{scope=\"tenant\"} 1"));
    }

    #[test]
    fn kms_calls_and_caches_are_rendered() {
        let m = Metrics::new();
        m.record_kms(
            KmsCall::DescribeKey,
            CallOutcome::Unavailable,
            Duration::from_secs(2),
        );
        let text = m.render(
            &[CacheStats {
                name: "key_state",
                hits: 7,
                misses: 3,
            }],
            &[],
        );
        let has = |line: &str| text.lines().any(|l| l == line);
        assert!(has(
            "repocrypt_kms_calls_total{call=\"describe_key\",outcome=\"unavailable\"} 1"
        ));
        assert!(has(
            "repocrypt_kms_call_duration_seconds_bucket{call=\"describe_key\",le=\"1\"} 0"
        ));
        assert!(has(
            "repocrypt_kms_call_duration_seconds_bucket{call=\"describe_key\",le=\"2.5\"} 1"
        ));
        assert!(has("repocrypt_cache_hits_total{cache=\"key_state\"} 7"));
        assert!(has("repocrypt_cache_misses_total{cache=\"key_state\"} 3"));
    }

    #[test]
    fn the_lists_are_in_declaration_order() {
        // `record_*` index the counters by discriminant.
        for (i, op) in Operation::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i);
        }
        for (i, call) in KmsCall::ALL.iter().enumerate() {
            assert_eq!(*call as usize, i);
        }
        for (i, outcome) in OUTCOMES.iter().enumerate() {
            assert_eq!(*outcome as usize, i);
        }
        for (i, reason) in Refusal::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i);
        }
    }

    /// `/metrics` is served as `text/plain; version=0.0.4`, and a scraper reading that
    /// format finds a sample's type by its family's `# TYPE` line: a counter's family is
    /// named with its `_total` (OpenMetrics names it without, as `prometheus-client`
    /// writes it), a histogram's samples add `_bucket`, `_sum` and `_count` to theirs, and
    /// there is no OpenMetrics `# EOF`. See docs/performance.md (2026-12-01).
    #[test]
    fn every_sample_is_typed_by_its_own_family_in_the_text_format() {
        let m = Metrics::new();
        m.record_request(Operation::ShowSetting, 200, Duration::from_millis(1));
        m.record_kms(KmsCall::Ping, CallOutcome::Ok, Duration::from_millis(1));
        let caches = [CacheStats {
            name: "key_state",
            hits: 1,
            misses: 1,
        }];
        let text = m.render(&caches, &[("tenant", 1)]);
        let mut types = std::collections::HashMap::new();
        let mut helps = std::collections::HashSet::new();
        let mut samples = 0;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("a help text");
                assert!(!help.is_empty(), "{line}");
                helps.insert(name.to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("a type");
                assert!(helps.contains(name), "TYPE before HELP: {line}");
                types.insert(name.to_owned(), kind.to_owned());
            } else {
                assert!(!line.starts_with('#'), "{line}");
                let name = line.split(['{', ' ']).next().expect("a name");
                let family = match types.get(name).map(String::as_str) {
                    Some("counter") => {
                        assert!(name.ends_with("_total"), "{line}");
                        name
                    }
                    Some(kind) => panic!("{kind} sample under its own name: {line}"),
                    None => ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                        .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
                        .unwrap_or_else(|| panic!("no TYPE for {line}")),
                };
                assert!(helps.contains(family), "no HELP for {line}");
                samples += 1;
            }
        }
        assert_eq!(types.len(), 12, "{text}");
        assert!(samples > 0);
    }

    #[test]
    fn refusals_and_closed_clients_are_counted() {
        let m = Metrics::new();
        m.record_refused(Refusal::NoHost);
        m.record_refused(Refusal::Parse);
        m.record_refused(Refusal::Parse);
        m.record_client_closed(Operation::UpdateSetting);
        let text = m.render(&[], &[]);
        let has = |line: &str| text.lines().any(|l| l == line);
        assert!(
            has("repocrypt_http_requests_refused_total{reason=\"no_host\"} 1"),
            "{text}"
        );
        assert!(has(
            "repocrypt_http_requests_refused_total{reason=\"parse\"} 2"
        ));
        // Every reason is a series from the start, so a rate of it is never missing.
        assert!(has(
            "repocrypt_http_requests_refused_total{reason=\"body_too_large\"} 0"
        ));
        assert!(has(
            "repocrypt_http_requests_client_closed_total{operation=\"UpdateTenantRepoEncryptionSetting\"} 1"
        ));
    }

    #[test]
    fn odd_statuses_do_not_panic() {
        let m = Metrics::new();
        m.record_request(Operation::Other, 0, Duration::ZERO);
        m.record_request(Operation::Other, 999, Duration::ZERO);
        assert!(m
            .render(&[], &[])
            .contains("repocrypt_http_requests_total{operation=\"other\",status=\"599\"} 2"));
    }
}
