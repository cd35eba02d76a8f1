//! An open-loop HTTP load generator for what oha and wrk cannot do: a fixed request rate
//! where every request carries a different tenant's token (tenants spread over a large
//! database). Latency is measured from the moment a request was due, not from when it
//! was sent, so a slow server is not hidden by the generator waiting for it
//! (coordinated omission).
//!
//!   cargo run --release --example loadgen -- \
//!     --url 'http://127.0.0.1:8080/v4/tenants/{tenant}/repo-encryption/setting' \
//!     --tokens tokens.txt --rate 2000 --duration 10s --connections 32
//!
//! `tokens.txt` holds `TENANT_ID TOKEN` lines (`repocrypt bench load --tokens-file`), or
//! `TENANT_ID REPO_ID TOKEN` lines, whose `REPO_ID` replaces `{repo}` in the URL (the key
//! broker's releases over many repositories).
//! Prints one JSON line: requests, errors (non-2xx or failed), achieved rate, and the
//! p50, p99, p99.9 and max latency in milliseconds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Mutex};
use tokio::time::Instant;

struct Args {
    url: String,
    /// (tenant, repository or "", token), one per line of the tokens file.
    tokens: Vec<(String, String, String)>,
    rate: f64,
    duration: Duration,
    connections: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut url = None;
    let mut tokens_file = None;
    let mut rate = 1000.0;
    let mut duration = Duration::from_secs(10);
    let mut connections = 32;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => url = Some(value()?),
            "--tokens" => tokens_file = Some(value()?),
            "--rate" => rate = value()?.parse().map_err(|e| format!("--rate: {e}"))?,
            "--duration" => {
                duration =
                    humantime::parse_duration(&value()?).map_err(|e| format!("--duration: {e}"))?
            }
            "--connections" => {
                connections = value()?
                    .parse()
                    .map_err(|e| format!("--connections: {e}"))?
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let url = url.ok_or("--url is required")?;
    let path = tokens_file.ok_or("--tokens is required")?;
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let tokens: Vec<(String, String, String)> = text
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            match fields[..] {
                [t, k] => Some((t.to_owned(), String::new(), k.to_owned())),
                [t, r, k] => Some((t.to_owned(), r.to_owned(), k.to_owned())),
                _ => None,
            }
        })
        .collect();
    if tokens.is_empty() || rate <= 0.0 || connections == 0 {
        return Err("need at least one token, a positive rate and connections".into());
    }
    Ok(Args {
        url,
        tokens,
        rate,
        duration,
        connections,
    })
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    let (tx, rx) = mpsc::unbounded_channel::<(Instant, usize)>();
    let rx = Arc::new(Mutex::new(rx));
    let errors = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..args.connections {
        let (rx, args, errors) = (rx.clone(), args.clone(), errors.clone());
        workers.push(tokio::spawn(async move {
            // One keep-alive connection per worker.
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap_or_default();
            let mut latencies = Vec::new();
            loop {
                let next = rx.lock().await.recv().await;
                let Some((due, n)) = next else { break };
                let (tenant, repo, token) = &args.tokens[n % args.tokens.len()];
                let url = args.url.replace("{tenant}", tenant).replace("{repo}", repo);
                let ok = match client.get(&url).header("X-Auth-Token", token).send().await {
                    Ok(resp) => {
                        let good = resp.status().is_success();
                        let _ = resp.bytes().await;
                        good
                    }
                    Err(_) => false,
                };
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                latencies.push(due.elapsed().as_micros() as u64);
            }
            latencies
        }));
    }
    // The schedule runs on its own OS thread, which sleeps with microsecond precision
    // (tokio's timer wakes at most once a millisecond, which would add up to 1 ms of
    // made-up latency to requests due between two ticks).
    let start = Instant::now() + Duration::from_millis(100);
    let std_start = start.into_std();
    let (interval, duration) = (1.0 / args.rate, args.duration);
    let scheduler = std::thread::spawn(move || {
        let mut n = 0usize;
        loop {
            let offset = Duration::from_secs_f64(n as f64 * interval);
            if offset >= duration {
                return n;
            }
            let due = std_start + offset;
            let now = std::time::Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if tx.send((Instant::from_std(due), n)).is_err() {
                return n;
            }
            n += 1;
        }
    });
    let n = tokio::task::spawn_blocking(move || scheduler.join().unwrap_or(0))
        .await
        .unwrap_or(0);
    let mut all = Vec::with_capacity(n);
    for w in workers {
        all.extend(w.await.unwrap_or_default());
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    println!(
        "{{\"requests\":{},\"errors\":{},\"rate\":{:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"max_ms\":{:.3}}}",
        all.len(),
        errors.load(Ordering::Relaxed),
        all.len() as f64 / elapsed,
        percentile(&all, 50.0),
        percentile(&all, 99.0),
        percentile(&all, 99.9),
        all.last().copied().unwrap_or(0) as f64 / 1000.0
    );
}
