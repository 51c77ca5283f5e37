//! RS256/ES256 tokens against a `JWKS_URL` served by the test, which
//! rotates its keys while the mesh runs.

use relaymesh_auth::testing::{JwksServer, SigningKey};
use relaymesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use relaymesh_proto::auth::v1::{ErrorReason, VerifyTokenRequest};
use serde_json::json;
use tonic::Code;

use super::harness::{self, Backend, Client};

/// A mesh whose auth service reads `server`'s keys, with `extra` flags.
async fn mesh_with(server: &JwksServer, extra: &[&str]) -> relaymesh::Mesh {
    let mut args = vec!["--jwks-url", server.url()];
    let ca = server.ca_file().map(|p| p.display().to_string());
    if let Some(ca) = &ca {
        args.extend(["--jwks-ca-file", ca.as_str()]);
    }
    args.extend_from_slice(extra);
    harness::start(&Backend::Memory, &args).await
}

async fn verify(mesh: &relaymesh::Mesh, token: String) -> Result<(String, Vec<String>), (Code, Option<ErrorReason>)> {
    let addr = mesh.services.iter().find(|(r, _)| *r == "auth").unwrap().1;
    let mut c = AuthServiceClient::connect(format!("http://{addr}")).await.unwrap();
    c.verify_token(VerifyTokenRequest { token })
        .await
        .map(|r| {
            let r = r.into_inner();
            (r.user_id, r.roles)
        })
        .map_err(|s| (s.code(), relaymesh_rpc::reason_of::<ErrorReason>(&s)))
}

#[tokio::test]
async fn a_rotated_key_verifies_over_https_without_restart() {
    let old = SigningKey::rs256("rsa-2025", 0);
    let new = SigningKey::es256("ec-2026");
    let server = JwksServer::https(&[&old]).await;
    let mesh = mesh_with(&server, &["--jwks-refetch-cooldown-ms", "0"]).await;

    let roles = json!({"realm_access": {"roles": ["platform_admin"]}, "roles": ["operator"]});
    assert_eq!(
        verify(&mesh, old.token("alice", roles)).await,
        Ok(("alice".into(), vec!["operator".into(), "platform_admin".into()]))
    );

    // Keycloak rotates: the new key is published, the old one withdrawn.
    server.publish(&[&new]);
    assert_eq!(
        verify(&mesh, new.token("bob", json!({}))).await.map(|r| r.0),
        Ok("bob".into())
    );
    assert_eq!(
        verify(&mesh, old.token("alice", json!({}))).await.map_err(|e| e.1),
        Err(Some(ErrorReason::TokenInvalid)),
        "a withdrawn key no longer verifies"
    );
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn keys_are_refreshed_in_the_background() {
    let old = SigningKey::rs256("k1", 0);
    let new = SigningKey::rs256("k2", 1);
    let server = JwksServer::http(&[&old]).await;
    // Unknown kids never refetch here: only the background refresh can
    // bring the new key in.
    let mesh = mesh_with(
        &server,
        &["--jwks-refresh-secs", "1", "--jwks-refetch-cooldown-ms", "3600000"],
    )
    .await;
    server.wait_fetches(1).await;
    assert!(verify(&mesh, old.token("u", json!({}))).await.is_ok());

    server.publish(&[&old, &new]);
    let seen = server.fetches();
    server.wait_fetches(seen + 1).await;
    assert_eq!(
        verify(&mesh, new.token("u2", json!({}))).await.map(|r| r.0),
        Ok("u2".into())
    );
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn refetching_for_unknown_kids_is_rate_limited() {
    let known = SigningKey::es256("known");
    let server = JwksServer::http(&[&known]).await;
    let mesh = mesh_with(&server, &["--jwks-refetch-cooldown-ms", "3600000"]).await;
    server.wait_fetches(1).await;
    assert!(verify(&mesh, known.token("u", json!({}))).await.is_ok());
    assert_eq!(server.fetches(), 1, "a known kid needs no fetch");

    // The first unknown kid fetches once; within the cooldown, more
    // unknown kids (forged, or a key published since) fetch nothing.
    let forged = known.with_kid("forged-1");
    assert_eq!(
        verify(&mesh, forged.token("u", json!({}))).await,
        Err((Code::Unauthenticated, Some(ErrorReason::TokenInvalid)))
    );
    assert_eq!(server.fetches(), 2);
    let later = SigningKey::es256("published-later");
    server.publish(&[&known, &later]);
    for i in 0..5 {
        let t = known.with_kid(&format!("forged-{i}")).token("u", json!({}));
        assert!(verify(&mesh, t).await.is_err());
    }
    assert!(verify(&mesh, later.token("u", json!({}))).await.is_err());
    assert_eq!(server.fetches(), 2, "no fetch within the cooldown");
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn issuer_and_audience_are_enforced_on_jwks_tokens() {
    let key = SigningKey::rs256("k", 0);
    let server = JwksServer::http(&[&key]).await;
    let mesh = mesh_with(
        &server,
        &["--jwt-issuer", "https://sso/realms/R", "--jwt-audience", "platform_api"],
    )
    .await;
    let good = json!({"iss": "https://sso/realms/R", "aud": ["platform_api", "account"]});
    assert!(verify(&mesh, key.token("u", good)).await.is_ok());
    let wrong_iss = json!({"iss": "https://evil/realms/R", "aud": "platform_api"});
    assert!(verify(&mesh, key.token("u", wrong_iss)).await.is_err());
    let wrong_aud = json!({"iss": "https://sso/realms/R", "aud": "account"});
    assert!(verify(&mesh, key.token("u", wrong_aud)).await.is_err());
    // Tokens without the configured claims are refused, whatever signs them.
    assert!(
        verify(&mesh, key.token("u", json!({"aud": "platform_api"})))
            .await
            .is_err()
    );
    assert!(
        verify(&mesh, key.token("u", json!({"iss": "https://sso/realms/R"})))
            .await
            .is_err()
    );
    assert!(verify(&mesh, harness::token("u", 60)).await.is_err());
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn copilot_accepts_jwks_tokens_and_closes_4001_on_an_unknown_kid() {
    let key = SigningKey::es256("k");
    let server = JwksServer::https(&[&key]).await;
    let mesh = mesh_with(&server, &[]).await;

    let mut ok = Client::connect(
        mesh.gateway_addr,
        &format!("/ws/copilot?token={}", key.token("ann", json!({}))),
    )
    .await;
    let connected = ok.recv().await;
    assert_eq!(connected["type"], "connected");
    assert_eq!(connected["userId"], "ann");

    let stranger = key.with_kid("not-published").token("ann", json!({}));
    let mut refused = Client::connect(mesh.gateway_addr, &format!("/ws/copilot?token={stranger}")).await;
    assert_eq!(refused.close_code().await, 4001);

    // HS256 with JWT_SECRET keeps working beside JWKS_URL.
    let mut hs = Client::connect(
        mesh.gateway_addr,
        &format!("/ws/copilot?token={}", harness::token("bo", 60)),
    )
    .await;
    assert_eq!(hs.recv().await["type"], "connected");
    mesh.shutdown().await.unwrap();
}
