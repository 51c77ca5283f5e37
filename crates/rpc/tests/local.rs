//! In-process calls (`relaymesh_rpc::local`): a call to an address a
//! server of this process serves is handled without the socket, with the
//! same answers, and goes back to the network once that server stops
//! (its trace context: `trace_context.rs`).

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use relaymesh_rpc::{GrpcServer, ServeOptions, connect_lazy, local};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// A relaymesh server (health only) on a free port; returns once it takes
/// in-process calls.
async fn server(
    stop: &CancellationToken,
) -> (SocketAddr, tokio::task::JoinHandle<Result<(), relaymesh_rpc::RpcError>>) {
    local::set_enabled(true);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = tokio::spawn(GrpcServer::new().serve(listener, ServeOptions::default(), stop.clone()));
    for _ in 0..500 {
        if local::lookup(addr).is_some() {
            return (addr, served);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("the server never registered for in-process calls");
}

async fn check(addr: SocketAddr) -> Result<(), tonic::Status> {
    let channel = connect_lazy(&format!("http://{addr}"), Duration::from_secs(2)).unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .map(drop)
}

/// A port nothing listens on.
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn a_call_to_a_server_of_this_process_does_not_need_the_socket() {
    let stop = CancellationToken::new();
    let (addr, served) = server(&stop).await;
    check(addr).await.unwrap();

    // The same server's routes registered where nothing listens: only an
    // in-process call can be answered there.
    let nowhere = closed_port().await;
    let registration = local::register(nowhere, local::lookup(addr).unwrap());
    check(nowhere).await.unwrap();
    drop(registration);
    let refused = check(nowhere).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");

    // A stopped server is unregistered: callers go to the network.
    stop.cancel();
    served.await.unwrap().unwrap();
    assert!(local::lookup(addr).is_none());
    assert_eq!(check(addr).await.unwrap_err().code(), tonic::Code::Unavailable);
}

#[tokio::test]
async fn a_stopping_server_leaves_a_newer_registration_on_its_address_alone() {
    let stop = CancellationToken::new();
    let (addr, served) = server(&stop).await;
    let svc = local::lookup(addr).unwrap();
    // Another server took the address (a restart on the same port).
    let newer = local::register(addr, svc);
    stop.cancel();
    served.await.unwrap().unwrap();
    assert!(local::lookup(addr).is_some(), "the newer registration stays");
    drop(newer);
    assert!(local::lookup(addr).is_none());
}
