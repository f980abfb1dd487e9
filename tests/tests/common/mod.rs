//! Shared plumbing of the end-to-end tests: the binaries cargo built, free
//! loopback ports, and `writ serve` child processes.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A binary that `cargo test --workspace` built next to this test.
pub fn built(name: &str, package: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let bin = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p {package}` (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

/// The `writ` binary.
pub fn writ_bin() -> PathBuf {
    built("writ", "writ-cli")
}

/// The workspace root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64
}

/// A running `writ serve` child, killed on drop.
pub struct Server {
    /// The child process.
    pub child: Child,
    /// Its base URL.
    pub url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `writ serve --config PATH` and waits until `/readyz` answers.
    pub async fn start(config: &Path, url: String) -> Server {
        let child = Command::new(writ_bin())
            .args(["serve", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn writ serve");
        let mut server = Server { child, url };
        wait_ready(&server.url.clone(), &mut server.child).await;
        server
    }
}

/// Polls `{url}/readyz` until it answers 2xx; panics if the child exits or
/// 30 s pass.
pub async fn wait_ready(url: &str, child: &mut Child) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("{url}/readyz")).send().await
            && r.status().is_success()
        {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("writ serve exited early with {status}");
        }
        assert!(Instant::now() < deadline, "writ serve did not become ready at {url}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
