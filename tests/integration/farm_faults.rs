//! The device farm as an operator breaks it: every role its own process
//! (auth, scheduler, gateway, node agent, from the built binary), the
//! scheduler killed with SIGKILL mid-run while the node stays connected.
//!
//! Store: a SQLite file in a temp dir, and a fresh PostgreSQL schema too
//! when TEST_DATABASE_URL is set. Shared state: in memory per process, and
//! Redis too when REDIS_URL is set. Without Redis a restarted scheduler
//! meets the node through its next heartbeat; with Redis it also finds it
//! in the session registry and pulls work at once. The standby test needs a
//! lease: PostgreSQL's advisory lock, or a Redis key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use super::harness::{JWT_SECRET, NODE_AGENT_SECRET, NODE_SECRET, http_get, operator_call};

const BIN: &str = env!("CARGO_BIN_EXE_relaymesh");
const SCHEDULER_SERVICE: &str = "relaymesh.scheduler.v1.SchedulerService";

/// Redis URL and a fresh key prefix when REDIS_URL is set.
fn redis() -> Option<(String, String)> {
    relaymesh_state::testing::redis_url().map(|url| (url, relaymesh_state::testing::unique_prefix("farm")))
}

/// A fresh PostgreSQL schema when TEST_DATABASE_URL is set.
async fn postgres() -> Option<String> {
    use sqlx::Executor as _;
    let base = std::env::var("TEST_DATABASE_URL").ok().filter(|u| !u.is_empty())?;
    sqlx::any::install_default_drivers();
    let schema = format!("rmfarm_{}", uuid::Uuid::new_v4().simple());
    let pool = sqlx::AnyPool::connect(&base).await.expect("TEST_DATABASE_URL answers");
    pool.execute(format!("CREATE SCHEMA {schema}").as_str()).await.unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}options=-c%20search_path%3D{schema}"))
}

/// One deployment under test: a temp dir for logs, the SQLite file and
/// the agent's state, and the environment every role shares.
struct Farm {
    dir: PathBuf,
    redis: Option<(String, String)>,
    /// PostgreSQL; a SQLite file in `dir` when unset.
    postgres: Option<String>,
    auth_port: u16,
    gateway: SocketAddr,
    procs: Vec<(String, Child)>,
}

impl Farm {
    fn new(redis: Option<(String, String)>, postgres: Option<String>) -> Self {
        let dir = std::env::temp_dir().join(format!("rm-farm-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            dir,
            redis,
            postgres,
            auth_port: super::harness::free_port(),
            gateway: SocketAddr::from(([127, 0, 0, 1], super::harness::free_port())),
            procs: Vec::new(),
        }
    }

    fn database_url(&self) -> String {
        self.postgres
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", self.dir.join("scheduler.db").display()))
    }

    /// Starts `relaymesh <role>` with `env`, logging to `<dir>/<name>.log`.
    fn spawn(&mut self, name: &str, role: &str, env: &[(&str, String)]) {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg(role)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOST", "127.0.0.1")
            .env("METRICS_PORT", "0")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        if let Some((url, prefix)) = &self.redis {
            cmd.env("REDIS_URL", url).env("REDIS_KEY_PREFIX", prefix);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.procs.push((name.to_owned(), cmd.spawn().unwrap()));
    }

    fn start_auth(&mut self) {
        let env = [
            ("GRPC_PORT", self.auth_port.to_string()),
            ("JWT_SECRET", JWT_SECRET.to_owned()),
            ("NODE_SHARED_SECRET", NODE_SECRET.to_owned()),
            ("NODE_AGENT_SHARED_SECRET", NODE_AGENT_SECRET.to_owned()),
        ];
        self.spawn("auth", "auth", &env);
    }

    fn start_scheduler(&mut self, name: &str, port: u16) {
        let env = [
            ("GRPC_PORT", port.to_string()),
            ("DATABASE_URL", self.database_url()),
            ("NODE_HEARTBEAT_INTERVAL_S", "1".to_owned()),
            ("TIMEOUT_SWEEP_MS", "100".to_owned()),
            ("SCHEDULER_LEASE_TTL_MS", "2000".to_owned()),
            ("SCHEDULER_LEASE_RETRY_MS", "200".to_owned()),
            ("ARTIFACT_DIR", self.dir.join("artifacts").display().to_string()),
        ];
        self.spawn(name, "scheduler", &env);
    }

    /// The gateway, with the scheduler(s) at `schedulers`; the services the
    /// farm does not use point at a closed port (channels connect lazily).
    fn start_gateway(&mut self, schedulers: &[u16]) {
        let unused = format!("http://127.0.0.1:{}", super::harness::free_port());
        let urls: Vec<String> = schedulers.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
        let env = [
            ("PORT", self.gateway.port().to_string()),
            ("AUTH_URL", format!("http://127.0.0.1:{}", self.auth_port)),
            ("SCHEDULER_URL", urls.join(",")),
            ("SIGNALING_URL", unused.clone()),
            ("CHANNEL_URL", unused.clone()),
            ("MEDIA_RELAY_URL", unused.clone()),
            ("MATCH_URL", unused),
        ];
        self.spawn("gateway", "gateway", &env);
    }

    fn start_agent(&mut self, node_id: &str, devices: u32) {
        let env = [
            ("NODE_ID", node_id.to_owned()),
            ("NODE_SECRET", NODE_SECRET.to_owned()),
            ("VULTR_URL", format!("ws://{}/ws/node", self.gateway)),
            ("NODE_DRIVER", "sim".to_owned()),
            ("SIM_DEVICES", devices.to_string()),
            ("SIM_TASK_MS", "1500".to_owned()),
            ("SIM_JITTER_MS", "300".to_owned()),
            ("NODE_RECONNECT_MIN_MS", "100".to_owned()),
            ("NODE_RECONNECT_MAX_MS", "500".to_owned()),
            ("NODE_STATE_DIR", self.dir.join("agent").display().to_string()),
        ];
        self.spawn(&format!("agent-{node_id}"), "node-agent", &env);
    }

    /// SIGKILL: no drain, no goodbye, exactly as a crashed process.
    async fn kill_9(&mut self, name: &str) {
        let i = self.procs.iter().position(|(n, _)| n == name).unwrap();
        let (_, mut child) = self.procs.remove(i);
        child.start_kill().unwrap();
        child.wait().await.unwrap();
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Every log, for a failing assertion's message.
    fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(&self.dir).unwrap().flatten() {
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                out.push_str(&format!("\n== {} ==\n", p.display()));
                for l in tail.into_iter().rev() {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        for (_, child) in &mut self.procs {
            let _ = child.start_kill();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

async fn scheduler_status(port: u16) -> Option<i32> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .ok()?
        .connect()
        .await
        .ok()?;
    let req = HealthCheckRequest {
        service: SCHEDULER_SERVICE.to_owned(),
    };
    let status = HealthClient::new(channel).check(req).await.ok()?.into_inner().status;
    Some(status)
}

/// Polls `check` every 100 ms until it holds, or fails with the logs.
async fn until<F, Fut>(farm: &Farm, within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}{}", farm.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn serving(port: u16) -> bool {
    scheduler_status(port).await == Some(ServingStatus::Serving as i32)
}

async fn node_connected(gw: SocketAddr, node: &str, devices: usize) -> bool {
    let (status, body) = operator_call(gw, "GET", "/api/v1/nodes", None).await;
    status == 200
        && body["nodes"].as_array().is_some_and(|ns| {
            ns.iter().any(|n| {
                n["node_id"] == node && n["connected"] == true && n["devices"].as_array().map_or(0, Vec::len) == devices
            })
        })
}

async fn create_run(farm: &Farm, node: &str) -> String {
    let body = json!({"workflow_id": "watch", "nodes": [node], "task_timeout_ms": 60000});
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, run) = operator_call(farm.gateway, "POST", "/api/v1/runs", Some(body.clone())).await;
        if status == 201 {
            return run["run_id"].as_str().unwrap().to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a run could not be created: {status} {run}{}",
            farm.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run_view(gw: SocketAddr, run_id: &str) -> Value {
    operator_call(gw, "GET", &format!("/api/v1/runs/{run_id}"), None)
        .await
        .1
}

/// Waits for every run to finish; asserts each task SUCCEEDED, was
/// dispatched once, and ran once on the node (one "task started" line).
async fn all_succeeded_exactly_once(farm: &Farm, runs: &[String], node: &str) {
    for run_id in runs {
        until(
            farm,
            Duration::from_secs(90),
            &format!("run {run_id} did not finish"),
            || async { run_view(farm.gateway, run_id).await["status"] == "finished" },
        )
        .await;
    }
    let agent_log = farm.log(&format!("agent-{node}"));
    for run_id in runs {
        let r = run_view(farm.gateway, run_id).await;
        for t in r["tasks"].as_array().unwrap() {
            assert_eq!(t["state"], "SUCCEEDED", "{t}{}", farm.logs());
            assert_eq!(t["attempts"], 1, "dispatched once: {t}");
            let id = t["task_id"].as_str().unwrap();
            let started = agent_log
                .lines()
                .filter(|l| l.contains("task started") && l.contains(id))
                .count();
            assert_eq!(started, 1, "command {id} ran {started} times on the node");
        }
    }
}

async fn start_farm(farm: &mut Farm, schedulers: &[(&str, u16)]) {
    farm.start_auth();
    for (name, port) in schedulers {
        farm.start_scheduler(name, *port);
    }
    let (_, first) = schedulers[0];
    until(farm, Duration::from_secs(30), "the scheduler never served", || {
        serving(first)
    })
    .await;
    let ports: Vec<u16> = schedulers.iter().map(|(_, p)| *p).collect();
    farm.start_gateway(&ports);
    let gw = farm.gateway;
    until(
        farm,
        Duration::from_secs(30),
        "the gateway never listened",
        || async move { tokio::net::TcpStream::connect(gw).await.is_ok() && http_get(gw, "/healthz").await.0 == 200 },
    )
    .await;
    farm.start_agent("node-K", 10);
    until(farm, Duration::from_secs(30), "the node never registered", || {
        node_connected(gw, "node-K", 10)
    })
    .await;
    let wf = json!({"workflow_id": "watch", "name": "watch", "recipe": {"command_type": "WATCH_VIDEO", "params": {"video_id": "dQw4w9WgXcQ"}}});
    let (status, body) = operator_call(gw, "POST", "/api/v1/workflows", Some(wf)).await;
    assert_eq!(status, 201, "{body}");
}

/// Some task of `run_id` is running on the node.
async fn running(gw: SocketAddr, run_id: &str) -> bool {
    run_view(gw, run_id).await["tasks"]
        .as_array()
        .is_some_and(|ts| ts.iter().any(|t| t["state"] == "RUNNING"))
}

async fn scheduler_restart_mid_run(redis: Option<(String, String)>, postgres: Option<String>) {
    let mut farm = Farm::new(redis, postgres);
    let port = super::harness::free_port();
    start_farm(&mut farm, &[("scheduler", port)]).await;
    let gw = farm.gateway;
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(create_run(&farm, "node-K").await);
    }
    until(&farm, Duration::from_secs(20), "no task started", || {
        running(gw, &runs[0])
    })
    .await;

    farm.kill_9("scheduler").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    farm.start_scheduler("scheduler-2", port);
    until(
        &farm,
        Duration::from_secs(30),
        "the restarted scheduler never served",
        || serving(port),
    )
    .await;
    // The node never disconnected: /api/v1/nodes says so again.
    until(
        &farm,
        Duration::from_secs(15),
        "the node is not seen as connected",
        || node_connected(gw, "node-K", 10),
    )
    .await;
    runs.push(create_run(&farm, "node-K").await);
    all_succeeded_exactly_once(&farm, &runs, "node-K").await;
    assert!(
        !farm.log("agent-node-K").contains("hub connection lost"),
        "the node stayed connected throughout"
    );
    assert!(
        farm.log("gateway").contains("result not recorded; node told to retry")
            || !farm.log("agent-node-K").contains("hub refused a result"),
        "every refused result is logged by the gateway"
    );
}

#[tokio::test]
async fn a_killed_scheduler_restarted_with_the_node_connected_finishes_every_task_exactly_once() {
    scheduler_restart_mid_run(None, None).await;
    if let Some(redis) = redis() {
        scheduler_restart_mid_run(Some(redis), None).await;
    }
    if let Some(pg) = postgres().await {
        scheduler_restart_mid_run(None, Some(pg)).await;
    }
}

/// Needs a lease: a Redis key (REDIS_URL, with SQLite) or PostgreSQL's
/// advisory lock (TEST_DATABASE_URL, state in memory). Skipped, saying so,
/// with neither.
#[tokio::test]
async fn a_standby_scheduler_takes_over_when_the_active_one_is_killed() {
    let mut ran = false;
    if let Some(redis) = redis() {
        standby_takes_over(Some(redis), None).await;
        ran = true;
    }
    if let Some(pg) = postgres().await {
        standby_takes_over(None, Some(pg)).await;
        ran = true;
    }
    if !ran {
        eprintln!("skipped: the scheduler lease needs REDIS_URL or TEST_DATABASE_URL");
    }
}

async fn standby_takes_over(redis: Option<(String, String)>, postgres: Option<String>) {
    let mut farm = Farm::new(redis, postgres);
    let (a, b) = (super::harness::free_port(), super::harness::free_port());
    farm.start_auth();
    farm.start_scheduler("scheduler-a", a);
    until(&farm, Duration::from_secs(30), "scheduler a never served", || {
        serving(a)
    })
    .await;
    farm.start_scheduler("scheduler-b", b);
    until(
        &farm,
        Duration::from_secs(30),
        "scheduler b never answered health",
        || async move { scheduler_status(b).await.is_some() },
    )
    .await;
    assert_eq!(
        scheduler_status(b).await,
        Some(ServingStatus::NotServing as i32),
        "a standby is NOT_SERVING"
    );
    // The gateway knows both and follows the one that serves.
    farm.start_gateway(&[a, b]);
    let gw = farm.gateway;
    until(
        &farm,
        Duration::from_secs(30),
        "the gateway never listened",
        || async move { tokio::net::TcpStream::connect(gw).await.is_ok() && http_get(gw, "/healthz").await.0 == 200 },
    )
    .await;
    farm.start_agent("node-K", 10);
    until(&farm, Duration::from_secs(30), "the node never registered", || {
        node_connected(gw, "node-K", 10)
    })
    .await;
    let wf = json!({"workflow_id": "watch", "name": "watch", "recipe": {"command_type": "WATCH_VIDEO"}});
    assert_eq!(operator_call(gw, "POST", "/api/v1/workflows", Some(wf)).await.0, 201);
    let mut runs = vec![create_run(&farm, "node-K").await, create_run(&farm, "node-K").await];
    until(&farm, Duration::from_secs(20), "no task started", || {
        running(gw, &runs[0])
    })
    .await;

    farm.kill_9("scheduler-a").await;
    until(&farm, Duration::from_secs(15), "the standby never took over", || {
        serving(b)
    })
    .await;
    runs.push(create_run(&farm, "node-K").await);
    all_succeeded_exactly_once(&farm, &runs, "node-K").await;
    assert!(farm.log("scheduler-b").contains("standing by"), "{}", farm.logs());
}
