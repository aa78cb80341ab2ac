//! The service binaries, started as processes: where they are, their ports, their metrics and
//! health endpoints, their memory.

use crate::*;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs one of the analysts' scripts (`tests/analysts/<script>`) with the tools' Python
/// (`make analyst-tools`; `$POSFLOW_ANALYST_PYTHON` overrides), bounded at 120 s so that a
/// reader that hangs fails the test instead of holding the tier. Its stdout, once it succeeded.
pub fn analyst_script<S: AsRef<std::ffi::OsStr>>(script: &str, args: &[S]) -> Vec<u8> {
    let python = std::env::var("POSFLOW_ANALYST_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/.cache/posflow/tools/venv/bin/python",
            std::env::var("HOME").unwrap()
        )
    });
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("analysts")
        .join(script);
    let out = Command::new("timeout")
        .args(["120", &python])
        .arg(path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e} (make analyst-tools installs it)"));
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A service binary from `target/debug` (or `$POSFLOW_BIN_DIR`).
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var("POSFLOW_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
                .join("debug")
        });
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (make test does)",
        p.display()
    );
    p
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running service process, stopped (SIGKILL) when dropped.
pub struct Service {
    pub name: String,
    pub child: Child,
    pub http: String,
    pub log: PathBuf,
}

impl Service {
    pub async fn start(binary: &str, env: &[(String, String)], args: &[&str]) -> Service {
        let mut s = Self::spawn(binary, env, args);
        s.wait_ready(Duration::from_secs(60)).await;
        s
    }

    /// Starts `binary` without waiting for it to be ready (it may not become ready: a component
    /// it needs is down).
    pub fn spawn(binary: &str, env: &[(String, String)], args: &[&str]) -> Service {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("posflow-e2e-{binary}-{port}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin(binary))
            .args(args)
            .envs(stage_env(binary, args, env))
            .env("POSFLOW_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
        Service {
            name: binary.to_string(),
            child,
            http: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    pub async fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "{} exited with {status} before ready; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            if http_get(&self.http, "/readyz")
                .await
                .map(|(c, _)| c == 200)
                .unwrap_or(false)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready; log:\n{}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: no drain, no goodbye — a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn metrics(&self) -> String {
        http_get(&self.http, "/metrics")
            .await
            .expect("metrics endpoint")
            .1
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop on SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of a counter or gauge in a Prometheus text page (`name{labels}` exactly as rendered).
pub fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// A minimal HTTP/1.1 GET (status, body) over a raw socket.
pub async fn http_get(base: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(host).await.ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// Resident memory of a process, in KiB (Linux).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
