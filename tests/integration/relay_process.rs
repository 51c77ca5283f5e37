//! A media relay process configured as the Helm chart configures one: its
//! address from the mounted address map, its gRPC URL from the pod IP, and a
//! drain on SIGTERM. Shared state is Redis (the test reads what the process
//! writes); without REDIS_URL there is nothing to share and the test says so.

use std::process::Stdio;
use std::time::Duration;

use prost::Message;
use relaymesh_proto::media_relay::v1::media_relay_service_client::MediaRelayServiceClient;
use relaymesh_proto::media_relay::v1::{AddPeerRequest, RelayRegistration, RemovePeerRequest};
use relaymesh_state::SharedState;
use relaymesh_state::testing::{redis_url, unique_prefix};

const BIN: &str = env!("CARGO_BIN_EXE_relaymesh");
const WAIT: Duration = Duration::from_secs(20);
const POD: &str = "rm-media-relay-0";

async fn registration(state: &SharedState) -> Option<RelayRegistration> {
    let bytes = state.get(&format!("media-relay:{POD}")).await.unwrap()?;
    Some(RelayRegistration::decode(bytes.as_slice()).unwrap())
}

async fn wait_for(state: &SharedState, what: &str, done: impl Fn(Option<&RelayRegistration>) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(registration(state).await.as_ref()) {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_relay_process_announces_its_mapped_address_and_drains_on_sigterm() {
    let Some(url) = redis_url() else {
        eprintln!("REDIS_URL unset: a relay process and this test share no state; not run");
        return;
    };
    let prefix = unique_prefix("relay-process");
    let state = SharedState::connect(Some(&url), &prefix).await.unwrap();
    let dir = std::env::temp_dir().join(format!("relaymesh-media-addresses-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(POD), "198.51.100.7:31004\n").unwrap();
    let grpc = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();

    let mut child = tokio::process::Command::new(BIN)
        .arg("media-relay")
        .env("HOST", "127.0.0.1")
        .env("GRPC_PORT", grpc.to_string())
        .env("METRICS_PORT", "0")
        .env("MEDIA_UDP_HOST", "127.0.0.1")
        .env("MEDIA_UDP_PORT", "0")
        .env("REDIS_URL", &url)
        .env_remove("REDIS_CLUSTER_URLS")
        .env("REDIS_KEY_PREFIX", &prefix)
        .env("MEDIA_RELAY_ID", POD)
        .env("MEDIA_GRPC_ADVERTISE", format!("http://127.0.0.1:{grpc}"))
        .env("MEDIA_DRAIN_TIMEOUT_MS", "600000")
        .env("MEDIA_PUBLIC_ADDR_DIR", &dir)
        .env("MEDIA_PUBLIC_ADDR_KEY", POD)
        .env("MEDIA_PUBLIC_HOST", "10.0.0.9")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    wait_for(&state, "the registration", |r| r.is_some()).await;
    let reg = registration(&state).await.unwrap();
    assert_eq!(
        reg.media_addr, "198.51.100.7:31004",
        "the mapped address, not the pod's"
    );
    assert_eq!(reg.grpc_url, format!("http://127.0.0.1:{grpc}"));
    assert!(!reg.draining);

    let channel = relaymesh_rpc::connect_lazy(&reg.grpc_url, Duration::from_secs(5)).unwrap();
    let mut relay = MediaRelayServiceClient::new(channel);
    let told = relay
        .add_peer(AddPeerRequest {
            channel_id: "room".into(),
            ssrc: 7,
            user_id: "alice".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .media_addr;
    assert_eq!(told, "198.51.100.7:31004");

    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_for(&state, "the draining flag", |r| r.is_some_and(|r| r.draining)).await;
    assert!(child.try_wait().unwrap().is_none(), "exited with a channel still open");

    relay
        .remove_peer(RemovePeerRequest {
            channel_id: "room".into(),
            ssrc: 7,
        })
        .await
        .unwrap();
    let exit = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exits once its channels are empty")
        .unwrap();
    assert!(exit.success(), "a drained relay stops cleanly: {exit:?}");
    assert!(registration(&state).await.is_none(), "registration withdrawn");
    std::fs::remove_dir_all(&dir).unwrap();
}
