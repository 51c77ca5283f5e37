//! Helpers for tests that must run on every backend: memory always, Redis
//! too when `REDIS_URL` is set, a Redis Cluster too when `REDIS_CLUSTER_URLS`
//! is (CI sets both). A URL that does not answer fails the test rather than
//! quietly testing less.
//!
//! [`RedisServer`] runs a private `redis-server` on a free port, for tests
//! that stop and restart Redis.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{Backend, SharedState};

/// A key prefix no other test uses, so tests can share one Redis.
pub fn unique_prefix(test: &str) -> String {
    format!("rmtest:{test}:{}:", uuid::Uuid::new_v4().simple())
}

/// The Redis URL tests should use, if any.
pub fn redis_url() -> Option<String> {
    std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty())
}

/// The Redis Cluster seed nodes tests should use, if any.
pub fn redis_cluster_urls() -> Option<Vec<String>> {
    let urls = std::env::var("REDIS_CLUSTER_URLS").ok()?;
    match Backend::from_settings(None, Some(&urls)) {
        Ok(Backend::Cluster(seeds)) => Some(seeds),
        _ => None,
    }
}

/// Every backend under test: memory, then Redis and the cluster when set.
pub fn backend_list() -> Vec<Backend> {
    let mut out = vec![Backend::Memory];
    out.extend(redis_url().map(Backend::Redis));
    out.extend(redis_cluster_urls().map(Backend::Cluster));
    out
}

/// One state per backend under test, each under a fresh prefix.
pub async fn backends(test: &str) -> Vec<SharedState> {
    let mut out = Vec::new();
    for backend in backend_list() {
        match SharedState::open(&backend, &unique_prefix(test)).await {
            Ok(state) => out.push(state),
            Err(err) => panic!("{backend:?} is configured but does not answer: {err}"),
        }
    }
    out
}

/// A `redis-server` of the test's own on a free loopback port, without
/// persistence: a restart loses every key, as a Redis without a volume
/// does. Killed when dropped.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts it and waits until it answers. Panics when `redis-server` is
    /// missing: a test that needs one must not pass without it.
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let dir = std::env::temp_dir().join(format!("relaymesh-redis-{port}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("redis test dir");
        let mut server = Self { port, dir, child: None };
        server.spawn();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `kill -9`, then waits for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills it and starts it again on the same port, with no data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// [`Self::restart`] off the async runtime's threads.
    pub async fn restarted(mut self) -> Self {
        tokio::task::spawn_blocking(move || {
            self.restart();
            self
        })
        .await
        .expect("restart task")
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server :{} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A PING over a plain socket.
    fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
