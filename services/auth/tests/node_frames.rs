//! VerifyNodeFrame and SignNodeFrame over real gRPC: signatures as seed 000
//! computes them, timestamps within the replay window, message ids once.
#![allow(clippy::unwrap_used)]

use relaymesh_auth::AuthConfig;
use relaymesh_node_signature::{NodeKey, rfc3339_millis, signature};
use relaymesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use relaymesh_proto::auth::v1::{ErrorReason, SignNodeFrameRequest, VerifyNodeFrameRequest};
use relaymesh_state::SharedState;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

const SECRET: &str = "c2VjcmV0LWtleS1mb3Itbm9kZXM=";
const WINDOW_MS: i64 = 60_000;

/// One auth service on port 0, stopped by `stop`.
struct Auth {
    client: AuthServiceClient<Channel>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), relaymesh_auth::AuthError>>,
}

impl Auth {
    async fn start(config: AuthConfig, state: SharedState) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(relaymesh_auth::serve(listener, config, state, shutdown.clone()));
        let client = AuthServiceClient::connect(format!("http://{addr}")).await.unwrap();
        Self { client, shutdown, task }
    }

    async fn with_secret() -> Self {
        Self::start(config(Some(SECRET), true), SharedState::memory()).await
    }

    async fn verify(&mut self, frame: &str) -> Result<(String, bool), (Code, Option<ErrorReason>)> {
        self.client
            .verify_node_frame(VerifyNodeFrameRequest {
                frame: frame.as_bytes().to_vec(),
            })
            .await
            .map(|r| {
                let r = r.into_inner();
                (r.node_id, r.verified)
            })
            .map_err(|s| (s.code(), relaymesh_rpc::reason_of::<ErrorReason>(&s)))
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

fn config(secret: Option<&str>, verify_signature: bool) -> AuthConfig {
    AuthConfig {
        node_shared_secret: secret.map(str::to_owned),
        verify_signature,
        node_replay_window_ms: WINDOW_MS.unsigned_abs(),
        ..AuthConfig::default()
    }
}

/// An unsigned HEARTBEAT frame of `node` sent `age_ms` ago, with non-ASCII
/// text and a float so the signature covers Python's spellings.
fn frame(node: &str, message_id: &str, age_ms: i64) -> String {
    frame_stamped(
        node,
        message_id,
        &rfc3339_millis(chrono::Utc::now().timestamp_millis() - age_ms),
    )
}

fn frame_stamped(node: &str, message_id: &str, timestamp: &str) -> String {
    serde_json::json!({
        "version": "1.0",
        "timestamp": timestamp,
        "message_id": message_id,
        "type": "HEARTBEAT",
        "node_id": node,
        "payload": {"status": "READY", "label": "노드 😀", "load": 1.0, "devices": [1, 2]},
    })
    .to_string()
}

fn signed(text: &str) -> String {
    signature::signed_frame(text, &NodeKey::from_secret(SECRET)).unwrap()
}

fn refused(code: Code, reason: ErrorReason) -> Result<(String, bool), (Code, Option<ErrorReason>)> {
    Err((code, Some(reason)))
}

#[tokio::test]
async fn signed_frames_are_verified() {
    let mut auth = Auth::with_secret().await;
    let f = signed(&frame("node_runner_001", "m-1", 0));
    assert_eq!(auth.verify(&f).await, Ok(("node_runner_001".into(), true)));
    auth.stop().await;
}

#[tokio::test]
async fn forged_signatures_are_invalid_signature() {
    let mut auth = Auth::with_secret().await;
    let tampered = signed(&frame("n1", "m-1", 0)).replace("READY", "BUSY!");
    assert_eq!(
        auth.verify(&tampered).await,
        refused(Code::Unauthenticated, ErrorReason::InvalidSignature)
    );
    let wrong_key = signature::signed_frame(&frame("n1", "m-2", 0), &NodeKey::from_secret("other")).unwrap();
    assert_eq!(
        auth.verify(&wrong_key).await,
        refused(Code::Unauthenticated, ErrorReason::InvalidSignature)
    );
    let unsigned = frame("n1", "m-3", 0);
    assert_eq!(
        auth.verify(&unsigned).await,
        refused(Code::Unauthenticated, ErrorReason::InvalidSignature)
    );
    auth.stop().await;
}

#[tokio::test]
async fn replayed_message_ids_are_refused() {
    let mut auth = Auth::with_secret().await;
    let f = signed(&frame("n1", "m-1", 0));
    assert!(auth.verify(&f).await.is_ok());
    assert_eq!(
        auth.verify(&f).await,
        refused(Code::Unauthenticated, ErrorReason::Replayed)
    );
    // Re-signed with a new timestamp, the same id is still a replay.
    let again = signed(&frame("n1", "m-1", 1_000));
    assert_eq!(
        auth.verify(&again).await,
        refused(Code::Unauthenticated, ErrorReason::Replayed)
    );
    auth.stop().await;
}

#[tokio::test]
async fn message_ids_are_remembered_per_node() {
    let mut auth = Auth::with_secret().await;
    assert!(auth.verify(&signed(&frame("n1", "m-1", 0))).await.is_ok());
    assert!(auth.verify(&signed(&frame("n2", "m-1", 0))).await.is_ok());
    auth.stop().await;
}

#[tokio::test]
async fn forged_frames_do_not_burn_a_message_id() {
    let mut auth = Auth::with_secret().await;
    let genuine = signed(&frame("n1", "m-1", 0));
    let forged = genuine.replace("READY", "OWNED");
    assert!(auth.verify(&forged).await.is_err());
    assert!(auth.verify(&genuine).await.is_ok());
    auth.stop().await;
}

#[tokio::test]
async fn replicas_sharing_state_refuse_each_others_replays() {
    let state = SharedState::memory();
    let mut a = Auth::start(config(Some(SECRET), true), state.clone()).await;
    let mut b = Auth::start(config(Some(SECRET), true), state).await;
    let f = signed(&frame("n1", "m-1", 0));
    assert!(a.verify(&f).await.is_ok());
    assert_eq!(
        b.verify(&f).await,
        refused(Code::Unauthenticated, ErrorReason::Replayed)
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn timestamps_outside_the_window_are_stale() {
    let mut auth = Auth::with_secret().await;
    let old = signed(&frame("n1", "m-old", WINDOW_MS + 5_000));
    assert_eq!(
        auth.verify(&old).await,
        refused(Code::Unauthenticated, ErrorReason::StaleTimestamp)
    );
    let future = signed(&frame("n1", "m-future", -(WINDOW_MS + 5_000)));
    assert_eq!(
        auth.verify(&future).await,
        refused(Code::Unauthenticated, ErrorReason::StaleTimestamp)
    );
    let late_but_fresh = signed(&frame("n1", "m-late", WINDOW_MS - 5_000));
    assert!(auth.verify(&late_but_fresh).await.is_ok());
    auth.stop().await;
}

#[tokio::test]
async fn frames_without_identity_or_time_are_invalid_frame() {
    let mut auth = Auth::with_secret().await;
    let full: serde_json::Value = serde_json::from_str(&frame("n1", "m-1", 0)).unwrap();
    for field in ["node_id", "message_id", "timestamp"] {
        let mut f = full.clone();
        f.as_object_mut().unwrap().remove(field);
        let text = signed(&f.to_string());
        assert_eq!(
            auth.verify(&text).await,
            refused(Code::InvalidArgument, ErrorReason::InvalidFrame),
            "{field}"
        );
    }
    let bad_time = signed(&frame_stamped("n1", "m-2", "yesterday"));
    assert_eq!(
        auth.verify(&bad_time).await,
        refused(Code::InvalidArgument, ErrorReason::InvalidFrame)
    );
    for not_a_frame in ["", "[1]", "{\"node_id\":", "{\"a\":NaN}"] {
        assert_eq!(
            auth.verify(not_a_frame).await,
            refused(Code::InvalidArgument, ErrorReason::InvalidFrame),
            "{not_a_frame:?}"
        );
    }
    auth.stop().await;
}

#[tokio::test]
async fn verify_signature_false_accepts_unsigned_frames_unverified() {
    let mut auth = Auth::start(config(None, false), SharedState::memory()).await;
    assert_eq!(auth.verify(&frame("n1", "m-1", 0)).await, Ok(("n1".into(), false)));
    let badly_signed = signed(&frame("n1", "m-2", 0)).replace("READY", "BUSY!");
    assert_eq!(auth.verify(&badly_signed).await, Ok(("n1".into(), false)));
    auth.stop().await;
}

#[tokio::test]
async fn a_missing_secret_refuses_with_no_key() {
    let mut auth = Auth::start(config(None, true), SharedState::memory()).await;
    let f = signed(&frame("n1", "m-1", 0));
    assert_eq!(
        auth.verify(&f).await,
        refused(Code::FailedPrecondition, ErrorReason::NoNodeKey)
    );
    let sign = auth
        .client
        .sign_node_frame(SignNodeFrameRequest { frame: f.into_bytes() })
        .await
        .unwrap_err();
    assert_eq!(relaymesh_rpc::reason_of(&sign), Some(ErrorReason::NoNodeKey));
    auth.stop().await;
}

#[tokio::test]
async fn sign_node_frame_output_verifies() {
    let mut auth = Auth::with_secret().await;
    let unsigned = frame("hub", "m-1", 0);
    let out = auth
        .client
        .sign_node_frame(SignNodeFrameRequest {
            frame: unsigned.clone().into_bytes(),
        })
        .await
        .unwrap()
        .into_inner();
    let key = NodeKey::from_secret(SECRET);
    assert_eq!(out.signature, signature::sign(&unsigned, &key).unwrap());
    assert_eq!(
        signature::verify(std::str::from_utf8(&out.frame).unwrap(), &key),
        Ok(())
    );
    assert_eq!(
        auth.verify(std::str::from_utf8(&out.frame).unwrap()).await,
        Ok(("hub".into(), true))
    );
    auth.stop().await;
}

#[tokio::test]
async fn sign_node_frame_refuses_non_objects() {
    let mut auth = Auth::with_secret().await;
    let err = auth
        .client
        .sign_node_frame(SignNodeFrameRequest {
            frame: b"[\"not\", \"a\", \"frame\"]".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(relaymesh_rpc::reason_of(&err), Some(ErrorReason::InvalidFrame));
    auth.stop().await;
}
