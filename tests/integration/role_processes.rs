//! The `relaymesh` binary as an operator runs it: one role per process,
//! each with its flags and environment variables in `--help`, gRPC health,
//! Prometheus metrics, and a clean drain on SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const BIN: &str = env!("CARGO_BIN_EXE_relaymesh");
const ROLES: [&str; 9] = [
    "up",
    "gateway",
    "auth",
    "signaling",
    "channel",
    "media-relay",
    "match",
    "scheduler",
    "node-agent",
];

#[test]
fn help_lists_every_role_and_each_roles_flags_with_their_environment_variables() {
    let top = std::process::Command::new(BIN).arg("--help").output().unwrap();
    let top = String::from_utf8_lossy(&top.stdout);
    for role in ROLES {
        assert!(top.contains(role), "relaymesh --help lists {role}");
        let out = std::process::Command::new(BIN).args([role, "--help"]).output().unwrap();
        assert!(out.status.success(), "{role} --help");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("[env: "), "{role} --help shows environment variables");
    }
    let gw = std::process::Command::new(BIN)
        .args(["gateway", "--help"])
        .output()
        .unwrap();
    let gw = String::from_utf8_lossy(&gw.stdout);
    for var in ["PORT=", "REDIS_URL=", "MAX_FRAME_BYTES=", "SINGLE_SESSION_PER_USER="] {
        assert!(gw.contains(var), "gateway --help lists {var}");
    }
}

#[tokio::test]
async fn a_role_process_serves_health_and_metrics_and_drains_on_sigterm() {
    let (grpc, metrics) = (super::harness::free_port(), super::harness::free_port());
    let mut child = tokio::process::Command::new(BIN)
        .arg("scheduler")
        .env("HOST", "127.0.0.1")
        .env("GRPC_PORT", grpc.to_string())
        .env("METRICS_PORT", metrics.to_string())
        .env("DATABASE_URL", "sqlite::memory:")
        .env_remove("REDIS_URL")
        .env_remove("REDIS_CLUSTER_URLS")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut health = loop {
        if let Ok(ch) = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc}"))
            .unwrap()
            .connect()
            .await
        {
            break HealthClient::new(ch);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "scheduler process never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // SERVING once it has loaded its state (and, with a lease, holds it).
    let service = "relaymesh.scheduler.v1.SchedulerService".to_owned();
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: service.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        if status == ServingStatus::Serving as i32 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "scheduler never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (code, body) = super::harness::http_get(format!("127.0.0.1:{metrics}").parse().unwrap(), "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        body.contains("relaymesh_grpc_server_requests_total"),
        "the process's own metrics: {body}"
    );

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("drains and exits")
        .unwrap();
    assert!(exit.success(), "SIGTERM is a clean stop: {exit:?}");
}
