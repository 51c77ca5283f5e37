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
    /// Cluster mode: its node file is kept in `dir` across restarts, so a
    /// restarted node keeps its id and slots (and loses its keys).
    cluster: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts it and waits until it answers. Panics when `redis-server` is
    /// missing: a test that needs one must not pass without it.
    pub fn start() -> Self {
        Self::start_on(free_port(), false)
    }

    fn start_on(port: u16, cluster: bool) -> Self {
        let dir = std::env::temp_dir().join(format!("relaymesh-redis-{port}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("redis test dir");
        let mut server = Self {
            port,
            dir,
            cluster,
            child: None,
        };
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
            .args(if self.cluster {
                &["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"][..]
            } else {
                &[]
            })
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A free port whose cluster bus port (+10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// A three-master Redis Cluster of the test's own, on free ports, for
/// tests that restart one of its nodes. Killed when dropped.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three nodes and creates the cluster (`redis-cli --cluster
    /// create`); returns once every slot is served.
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| RedisServer::start_on(free_cluster_port(), true))
            .collect();
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli on PATH");
        assert!(status.success(), "redis-cli --cluster create failed");
        let cluster = Self { nodes };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !cluster.nodes.iter().all(RedisServer::cluster_ok) {
            assert!(
                std::time::Instant::now() < deadline,
                "the test cluster did not become ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Kills every node, starts them again (empty, same ids and slots),
    /// and waits until the cluster serves every slot again.
    pub async fn restarted(mut self) -> Self {
        tokio::task::spawn_blocking(move || {
            for node in &mut self.nodes {
                node.kill();
            }
            for node in &mut self.nodes {
                node.spawn();
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !self.nodes.iter().all(RedisServer::cluster_ok) {
                assert!(std::time::Instant::now() < deadline, "the test cluster did not recover");
                std::thread::sleep(Duration::from_millis(20));
            }
            self
        })
        .await
        .expect("restart task")
    }
}

impl RedisServer {
    fn cluster_ok(&self) -> bool {
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(["cluster", "info"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
    }
}
