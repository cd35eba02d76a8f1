//! A TCP proxy for fault injection: put it between the service and one of its dependencies
//! (PostgreSQL, the KMS, the IAM) and make the path pass, slow down, hang, reset or cut
//! mid-response, for the connections already open and for new ones alike.
//!
//! It runs on a thread and runtime of its own, so that a test on any runtime (or none) can
//! drive it, and a hung path never stalls the test's own tasks.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the path does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward both ways.
    Pass,
    /// Forward both ways, each chunk after this delay.
    Latency(Duration),
    /// Accept connections and forward nothing, either way: a stalled network path or a
    /// frozen server. Nothing is lost: what was held is forwarded once the path passes
    /// again (as TCP would retransmit it), but a client that gave up meanwhile has closed.
    Blackhole,
    /// Reset every connection, open and new (RST).
    Reset,
    /// Forward requests, but reset each connection once this many bytes of answers have
    /// crossed it since the fault began: an answer cut in the middle.
    Cut(usize),
}

impl Fault {
    pub fn name(&self) -> String {
        match self {
            Fault::Pass => "pass".into(),
            Fault::Latency(d) => format!("latency {}ms", d.as_millis()),
            Fault::Blackhole => "blackhole".into(),
            Fault::Reset => "reset".into(),
            Fault::Cut(n) => format!("cut after {n} B"),
        }
    }
}

/// The proxy; stops (and drops every connection) when dropped.
pub struct FaultProxy {
    /// Where the service connects instead of the dependency.
    pub addr: SocketAddr,
    state: watch::Sender<(Fault, u64)>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy to `target` (`host:port`), passing.
    pub fn start(target: &str) -> FaultProxy {
        let target = target.to_owned();
        let (state, _) = watch::channel((Fault::Pass, 0u64));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let faults = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("proxy runtime");
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                addr_tx
                    .send(listener.local_addr().expect("addr"))
                    .expect("addr");
                let conns = Arc::new(Mutex::new(tokio::task::JoinSet::new()));
                let accept = async {
                    while let Ok((client, _)) = listener.accept().await {
                        let _ = client.set_nodelay(true);
                        let (target, faults) = (target.clone(), faults.subscribe());
                        conns.lock().unwrap().spawn(relay(client, target, faults));
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stopped => {}
                }
                conns.lock().unwrap().abort_all();
            });
        });
        let addr = addr_rx.recv().expect("the proxy's address");
        FaultProxy {
            addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// From now on, for open connections and new ones.
    pub fn set(&self, fault: Fault) {
        self.state.send_modify(|(f, epoch)| {
            *f = fault;
            *epoch += 1;
        });
    }

    pub fn fault(&self) -> Fault {
        self.state.borrow().0
    }

    /// `url` (any scheme) with its `host:port` replaced by the proxy's.
    pub fn rewrite(&self, url: &str, hostport: &str) -> String {
        assert!(url.contains(hostport), "{url} has no {hostport}");
        url.replacen(hostport, &self.addr.to_string(), 1)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Close with RST instead of FIN.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// One connection through the proxy, obeying the fault of the moment.
async fn relay(client: TcpStream, target: String, mut faults: watch::Receiver<(Fault, u64)>) {
    // Connect upstream only when the path lets anything through.
    loop {
        let fault = faults.borrow_and_update().0;
        match fault {
            Fault::Blackhole => {
                if faults.changed().await.is_err() {
                    return;
                }
            }
            Fault::Reset => return reset(client),
            _ => break,
        }
    }
    let Ok(server) = TcpStream::connect(&target).await else {
        return reset(client);
    };
    let _ = server.set_nodelay(true);
    let (mut client, mut server) = (client, server);
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 16 * 1024];
    // Answers forwarded since the current fault began (for `Cut`).
    let mut answered = 0usize;
    let mut epoch = faults.borrow().1;
    loop {
        let (fault, now) = *faults.borrow_and_update();
        if now != epoch {
            (epoch, answered) = (now, 0);
        }
        let delay = match fault {
            Fault::Reset => {
                reset(client);
                return reset(server);
            }
            Fault::Blackhole => {
                // Hold: read nothing, so nothing is lost.
                if faults.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Fault::Latency(d) => Some(d),
            Fault::Pass | Fault::Cut(_) => None,
        };
        tokio::select! {
            changed = faults.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            read = client.read(&mut up) => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
                if server.write_all(&up[..n]).await.is_err() {
                    return;
                }
            }
            read = server.read(&mut down) => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
                if let Fault::Cut(limit) = fault {
                    let room = limit.saturating_sub(answered);
                    if n >= room {
                        let _ = client.write_all(&down[..room]).await;
                        let _ = client.flush().await;
                        reset(client);
                        return reset(server);
                    }
                }
                answered += n;
                if client.write_all(&down[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}
