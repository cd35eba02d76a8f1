//! A `moto_server` (PyPI `moto[server]`) of the test's own: AWS KMS's API on a free
//! loopback port, with its own empty state, stopped when dropped.
//!
//! The binary is `$REPOCRYPT_MOTO_SERVER`, else `moto_server` on the PATH. When neither
//! exists the tests that need it print why and pass, unless `REPOCRYPT_REQUIRE_EXTERNAL`
//! is set (as in `.ci/run`), where a missing moto fails.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REGION: &str = "us-east-1";
pub const ACCESS_KEY: &str = "testing";
pub const SECRET_KEY: &str = "testing";

pub struct Moto {
    pub port: u16,
    child: Option<Child>,
}

fn binary() -> Option<String> {
    if let Some(path) = std::env::var_os("REPOCRYPT_MOTO_SERVER").filter(|p| !p.is_empty()) {
        return Some(path.to_string_lossy().into_owned());
    }
    let found = Command::new("moto_server")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    found.then(|| "moto_server".to_owned())
}

impl Moto {
    /// A running moto, or `None` (with the reason printed) when it is not installed.
    pub fn start(test: &str) -> Option<Moto> {
        let Some(bin) = binary() else {
            assert!(
                std::env::var_os("REPOCRYPT_REQUIRE_EXTERNAL").is_none(),
                "REPOCRYPT_REQUIRE_EXTERNAL is set but moto_server is not installed \
                 (set REPOCRYPT_MOTO_SERVER or put moto_server on the PATH)"
            );
            eprintln!(
                "skipping {test}: moto_server not found (pip install 'moto[server]', or set REPOCRYPT_MOTO_SERVER)"
            );
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut moto = Moto { port, child: None };
        moto.spawn(&bin);
        Some(moto)
    }

    fn spawn(&mut self, bin: &str) {
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e}"));
        self.child = Some(child);
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not start in 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kill it (an outage): connections to its port are refused from now on.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The environment a `repocrypt` process needs to use this moto as its KMS.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("REPOCRYPT_KMS_BACKEND", "aws".into()),
            ("REPOCRYPT_KMS_ENDPOINT", self.endpoint()),
            ("REPOCRYPT_KMS_REGION", REGION.into()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            // Keep the AWS chain off any real profile or instance metadata.
            ("AWS_CONFIG_FILE", "/dev/null".into()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// A plain AWS SDK client on this moto, for what the service must not do itself
    /// (keys without the tenant tag, tags of another tenant).
    pub fn raw_client(&self) -> aws_sdk_kms::Client {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let config = aws_sdk_kms::Config::builder()
            .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
            .region(aws_sdk_kms::config::Region::new(REGION))
            .endpoint_url(self.endpoint())
            .credentials_provider(aws_sdk_kms::config::Credentials::new(
                ACCESS_KEY, SECRET_KEY, None, None, "test",
            ))
            .http_client(http)
            .build();
        aws_sdk_kms::Client::from_conf(config)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}
