//! The auth service over real gRPC.

use relaymesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use relaymesh_proto::auth::v1::{ErrorReason, VerifyNodeSecretRequest, VerifyTokenRequest};
use tonic::Code;

use super::harness::{self, Backend, token, token_with_secret};

async fn client(mesh: &relaymesh::Mesh) -> AuthServiceClient<tonic::transport::Channel> {
    let addr = mesh.services.iter().find(|(r, _)| *r == "auth").unwrap().1;
    AuthServiceClient::connect(format!("http://{addr}")).await.unwrap()
}

async fn verify(
    c: &mut AuthServiceClient<tonic::transport::Channel>,
    t: String,
) -> Result<String, (Code, Option<ErrorReason>)> {
    c.verify_token(VerifyTokenRequest { token: t })
        .await
        .map(|r| r.into_inner().user_id)
        .map_err(|s| (s.code(), relaymesh_rpc::reason_of::<ErrorReason>(&s)))
}

#[tokio::test]
async fn valid_tokens_yield_their_subject() {
    let mesh = harness::start(&Backend::Memory, &[]).await;
    let mut c = client(&mesh).await;
    assert_eq!(verify(&mut c, token("user-7", 60)).await, Ok("user-7".into()));
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn expired_forged_and_garbage_tokens_are_unauthenticated_with_a_reason() {
    let mesh = harness::start(&Backend::Memory, &[]).await;
    let mut c = client(&mesh).await;
    let unauth = |reason: ErrorReason| Err((Code::Unauthenticated, Some(reason)));
    assert_eq!(
        verify(&mut c, token("u", -600)).await,
        unauth(ErrorReason::TokenExpired)
    );
    assert_eq!(
        verify(&mut c, token_with_secret("u", 60, "other")).await,
        unauth(ErrorReason::TokenInvalid)
    );
    assert_eq!(
        verify(&mut c, "not-a-jwt".into()).await,
        unauth(ErrorReason::TokenInvalid)
    );
    assert_eq!(verify(&mut c, String::new()).await, unauth(ErrorReason::TokenInvalid));
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn issuer_and_audience_are_enforced_when_configured() {
    let mesh = harness::start(
        &Backend::Memory,
        &["--jwt-issuer", "https://idp", "--jwt-audience", "relaymesh"],
    )
    .await;
    let mut c = client(&mesh).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sign = |claims: serde_json::Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(harness::JWT_SECRET.as_bytes()),
        )
        .unwrap()
    };
    let good = sign(serde_json::json!({"sub":"u","exp":now+60,"iss":"https://idp","aud":["relaymesh","account"]}));
    assert_eq!(verify(&mut c, good).await, Ok("u".into()));
    let wrong_iss = sign(serde_json::json!({"sub":"u","exp":now+60,"iss":"https://evil","aud":"relaymesh"}));
    assert_eq!(verify(&mut c, wrong_iss).await.unwrap_err().0, Code::Unauthenticated);
    let wrong_aud = sign(serde_json::json!({"sub":"u","exp":now+60,"iss":"https://idp","aud":"other"}));
    assert_eq!(verify(&mut c, wrong_aud).await.unwrap_err().0, Code::Unauthenticated);
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn node_agent_secret_is_checked() {
    let mesh = harness::start(&Backend::Memory, &["--node-agent-shared-secret", "s3cret"]).await;
    let mut c = client(&mesh).await;
    let check = |p: &str| VerifyNodeSecretRequest {
        presented: p.to_owned(),
    };
    assert!(c.verify_node_secret(check("s3cret")).await.is_ok());
    assert_eq!(
        c.verify_node_secret(check("s3cre")).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        c.verify_node_secret(check("")).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn every_server_offers_health_and_reflection() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let mesh = harness::start(&Backend::Memory, &[]).await;
    for (role, addr) in &mesh.services {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = HealthClient::new(channel.clone());
        let r = health
            .check(HealthCheckRequest { service: String::new() })
            .await
            .unwrap();
        assert_eq!(r.into_inner().status, ServingStatus::Serving as i32, "{role}");
        let mut reflection = tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel);
        use tonic_reflection::pb::v1::{ServerReflectionRequest, server_reflection_request::MessageRequest};
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = reflection
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let answer = stream.message().await.unwrap().unwrap();
        let text = format!("{answer:?}");
        assert!(
            text.contains("relaymesh."),
            "{role} lists its services by reflection: {text}"
        );
    }
    mesh.shutdown().await.unwrap();
}
