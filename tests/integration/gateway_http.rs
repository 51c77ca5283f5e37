//! `/healthz`, `/readyz`, `/metrics` and the console.

use relaymesh_gateway::GatewayConfig;
use relaymesh_state::SharedState;
use tokio_util::sync::CancellationToken;

use super::harness::{self, Client, http_get};

#[tokio::test]
async fn healthz_answers_200() {
    let mesh = harness::start(&harness::Backend::Memory, &[]).await;
    assert_eq!(http_get(mesh.gateway_addr, "/healthz").await.0, 200);
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn readyz_is_200_when_every_upstream_serves() {
    for backend in harness::backends() {
        let mesh = harness::start(&backend, &[]).await;
        let (status, body) = http_get(mesh.gateway_addr, "/readyz").await;
        assert_eq!(status, 200, "{backend:?}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["upstreams"].as_array().unwrap().len(), 6, "every service is checked");
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn readyz_is_503_while_an_upstream_is_down() {
    // A gateway alone, its upstreams pointing at a port nobody listens on.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let mut config = harness::options(&harness::Backend::Memory, &[]).gateway;
    let u = &mut config.upstreams;
    for url in [
        &mut u.auth_url,
        &mut u.signaling_url,
        &mut u.channel_url,
        &mut u.media_relay_url,
        &mut u.match_url,
        &mut u.scheduler_url,
    ] {
        url.clone_from(&dead_url);
    }
    let (addr, shutdown, task) = lone_gateway(config).await;
    let (status, body) = http_get(addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(http_get(addr, "/healthz").await.0, 200, "alive even when not ready");
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn readyz_is_200_while_only_the_scheduler_is_down() {
    // The scheduler runs one active instance; its restart must not take
    // every gateway out of service.
    let mesh = harness::start(&harness::Backend::Memory, &[]).await;
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let url = |role: &str| {
        let addr = mesh.services.iter().find(|(r, _)| *r == role).unwrap().1;
        format!("http://{addr}")
    };
    let mut config = harness::options(&harness::Backend::Memory, &[]).gateway;
    let u = &mut config.upstreams;
    u.auth_url = url("auth");
    u.signaling_url = url("signaling");
    u.channel_url = url("channel");
    u.media_relay_url = url("media-relay");
    u.match_url = url("match");
    u.scheduler_url = dead_url;
    let (addr, shutdown, task) = lone_gateway(config).await;
    let (status, body) = http_get(addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let scheduler = v["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["role"] == "scheduler")
        .unwrap();
    assert_eq!(scheduler["serving"], false, "the scheduler is reported down: {body}");
    assert_eq!(scheduler["required"], false);
    shutdown.cancel();
    task.await.unwrap().unwrap();
    mesh.shutdown().await.unwrap();
}

async fn lone_gateway(
    config: GatewayConfig,
) -> (
    std::net::SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), relaymesh_gateway::GatewayError>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relaymesh_gateway::serve(
        listener,
        config,
        SharedState::memory(),
        shutdown.clone(),
    ));
    (addr, shutdown, task)
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_gateway_and_grpc_series() {
    let mesh = harness::start(&harness::Backend::Memory, &[]).await;
    let _c = harness::livechat_ready(mesh.gateway_addr, "metered").await;
    let (status, body) = http_get(mesh.gateway_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("# TYPE relaymesh_gateway_connections gauge"), "{body}");
    assert!(
        body.contains("relaymesh_gateway_frames_in_total{protocol=\"livechat\"}"),
        "{body}"
    );
    assert!(
        body.lines()
            .any(|l| l.starts_with("relaymesh_grpc_server_requests_total{")
                && l.contains("grpc_service=\"relaymesh.auth.v1.AuthService\"")
                && l.contains("grpc_method=\"VerifyToken\"")),
        "{body}"
    );
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn console_exercises_every_endpoint() {
    let mesh = harness::start(&harness::Backend::Memory, &[]).await;
    let (status, body) = http_get(mesh.gateway_addr, "/").await;
    assert_eq!(status, 200);
    for path in [
        "/ws/node",
        "/ws/copilot",
        "/ws/livechat",
        "/ws/signal",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(body.contains(path), "console mentions {path}");
    }
    // And the page's WebSocket endpoints really answer.
    let mut c = Client::connect(mesh.gateway_addr, "/ws/livechat").await;
    assert_eq!(c.recv().await["op"], 0);
    mesh.shutdown().await.unwrap();
}
