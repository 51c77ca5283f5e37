//! TLS of the mesh's gRPC with certificates made here (rcgen): a CA, and a
//! server certificate for the name every service carries.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use relaymesh_rpc::tls::{ClientTls, server_tls};
use relaymesh_rpc::{BalanceOptions, DnsResolver, GrpcServer, RpcChannel, ServeOptions, connect_balanced};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const NAME: &str = "relaymesh-grpc";

struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn pki() -> Pki {
    let ca = ca();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![NAME.to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// A relaymesh gRPC server (health only) serving TLS with `pki`'s certificate.
async fn tls_server(pki: &Pki, stop: &CancellationToken) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let opts = ServeOptions {
        tls: Some(server_tls(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes())),
        ..ServeOptions::default()
    };
    tokio::spawn(GrpcServer::new().serve(listener, opts, stop.clone()));
    addr
}

fn channel(url: &str, tls: Option<ClientTls>, stop: &CancellationToken) -> RpcChannel {
    let opts = BalanceOptions {
        request_timeout: Duration::from_secs(5),
        refresh: Duration::from_millis(50),
        tls,
    };
    connect_balanced(url, opts, DnsResolver, stop.clone()).unwrap().0
}

async fn check(channel: &RpcChannel) -> Result<(), tonic::Status> {
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest { service: String::new() })
        .await
        .map(drop)
}

#[tokio::test]
async fn a_caller_trusting_the_ca_reaches_a_tls_server_by_its_address() {
    // Even with in-process calls on, a caller that asked for TLS gets TLS:
    // a TLS server never takes calls in process.
    relaymesh_rpc::local::set_enabled(true);
    let stop = CancellationToken::new();
    let pki = pki();
    let addr = tls_server(&pki, &stop).await;
    // Dialled by address (as a resolved pod), verified by the service name.
    let tls = ClientTls::new(pki.ca_pem.as_bytes(), Some(NAME.to_owned()));
    check(&channel(&format!("https://{addr}"), Some(tls), &stop))
        .await
        .unwrap();
    assert!(relaymesh_rpc::local::lookup(addr).is_none());
    stop.cancel();
}

#[tokio::test]
async fn a_caller_trusting_another_ca_is_refused() {
    let stop = CancellationToken::new();
    let pki = pki();
    let addr = tls_server(&pki, &stop).await;
    let other = ca().pem();
    let tls = ClientTls::new(other.as_bytes(), Some(NAME.to_owned()));
    assert!(
        check(&channel(&format!("https://{addr}"), Some(tls), &stop))
            .await
            .is_err()
    );
    stop.cancel();
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let stop = CancellationToken::new();
    let pki = pki();
    let addr = tls_server(&pki, &stop).await;
    let tls = ClientTls::new(pki.ca_pem.as_bytes(), Some("someone-else".to_owned()));
    assert!(
        check(&channel(&format!("https://{addr}"), Some(tls), &stop))
            .await
            .is_err()
    );
    stop.cancel();
}

#[tokio::test]
async fn a_plaintext_caller_gets_nothing_from_a_tls_server() {
    let stop = CancellationToken::new();
    let pki = pki();
    let addr = tls_server(&pki, &stop).await;
    assert!(check(&channel(&format!("http://{addr}"), None, &stop)).await.is_err());
    stop.cancel();
}

#[test]
fn an_https_url_without_a_ca_is_a_configuration_error() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let stop = CancellationToken::new();
    let opts = BalanceOptions {
        tls: None,
        ..BalanceOptions::default()
    };
    let err = connect_balanced("https://auth:50051", opts, DnsResolver, stop)
        .err()
        .unwrap();
    assert!(err.to_string().contains("GRPC_TLS_CA"), "{err}");
}
