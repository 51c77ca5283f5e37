//! Client-side balancing: three real gRPC servers of one service on
//! 127.0.0.1, 127.0.0.2 and 127.0.0.3, one balanced channel over them.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relaymesh_rpc::{BalanceOptions, DnsResolver, Resolve, RpcChannel, connect_balanced};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::util::MapRequestLayer;

/// One replica: a gRPC health service that counts the calls it answers.
struct Replica {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
}

impl Replica {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

async fn serve_replica(listener: TcpListener, stop: CancellationToken) -> Replica {
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let (_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(async move {
        Server::builder()
            .layer(MapRequestLayer::new(move |req: http::Request<tonic::body::Body>| {
                counter.fetch_add(1, Ordering::SeqCst);
                req
            }))
            .add_service(health)
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), stop.cancelled_owned())
            .await
            .unwrap();
    });
    Replica { addr, calls }
}

/// Three replicas on three loopback addresses sharing one port, as three
/// pods behind one headless Service share the Service's target port.
async fn three_replicas(stop: &CancellationToken) -> Vec<Replica> {
    for _ in 0..20 {
        let first = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = first.local_addr().unwrap().port();
        let (Ok(second), Ok(third)) = (
            TcpListener::bind(("127.0.0.2", port)).await,
            TcpListener::bind(("127.0.0.3", port)).await,
        ) else {
            continue;
        };
        let mut out = Vec::new();
        for l in [first, second, third] {
            out.push(serve_replica(l, stop.clone()).await);
        }
        return out;
    }
    panic!("no port free on 127.0.0.1-3");
}

/// A name service under the test's control: every host answers with the
/// addresses currently in the list.
#[derive(Clone, Default)]
struct TestResolver(Arc<Mutex<Vec<SocketAddr>>>);

impl TestResolver {
    fn answer(&self, addrs: Vec<SocketAddr>) {
        *self.0.lock().unwrap() = addrs;
    }
}

impl Resolve for TestResolver {
    async fn resolve(&self, _host: &str, _port: u16) -> std::io::Result<Vec<SocketAddr>> {
        Ok(self.0.lock().unwrap().clone())
    }
}

async fn call(channel: &RpcChannel) {
    let mut client = HealthClient::new(channel.clone());
    client
        .check(HealthCheckRequest { service: String::new() })
        .await
        .expect("health check through the balanced channel");
}

fn opts() -> BalanceOptions {
    BalanceOptions {
        request_timeout: Duration::from_secs(5),
        refresh: Duration::from_millis(50),
        tls: None,
    }
}

#[tokio::test]
async fn calls_spread_over_every_replica_in_an_endpoint_list() {
    let stop = CancellationToken::new();
    let replicas = three_replicas(&stop).await;
    let urls = replicas
        .iter()
        .map(|r| format!("http://{}", r.addr))
        .collect::<Vec<_>>()
        .join(",");
    let (channel, resolver) = connect_balanced(&urls, opts(), DnsResolver, stop.clone()).unwrap();

    for _ in 0..300 {
        call(&channel).await;
    }
    let calls: Vec<usize> = replicas.iter().map(Replica::calls).collect();
    assert_eq!(calls.iter().sum::<usize>(), 300, "{calls:?}");
    // Each replica takes a share; one third is 100, and fewer than 30 of
    // 300 uniform picks would be a one-in-10^12 event.
    assert!(calls.iter().all(|&n| n >= 30), "uneven spread: {calls:?}");

    stop.cancel();
    resolver.await.unwrap();
}

#[tokio::test]
async fn a_replica_that_appears_in_the_name_gets_calls_and_one_that_leaves_stops() {
    let stop = CancellationToken::new();
    let replicas = three_replicas(&stop).await;
    let names = TestResolver::default();
    names.answer(vec![replicas[0].addr, replicas[1].addr]);
    let url = format!("http://relaymesh-auth-headless:{}", replicas[0].addr.port());
    let (channel, resolver) = connect_balanced(&url, opts(), names.clone(), stop.clone()).unwrap();

    for _ in 0..60 {
        call(&channel).await;
    }
    assert_eq!(replicas[2].calls(), 0, "not in the name yet");
    assert!(replicas[0].calls() > 0 && replicas[1].calls() > 0);

    // A third pod becomes ready: the next resolution adds it.
    names.answer(replicas.iter().map(|r| r.addr).collect());
    let mut rounds = 0;
    while replicas[2].calls() == 0 {
        rounds += 1;
        assert!(rounds < 2000, "the new replica never got a call");
        call(&channel).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // The first pod goes away: once resolution drops it, it gets nothing.
    // (While it is still in the set it takes about a third of the calls, so
    // 30 calls without one are a (2/3)^30 < 1e-5 accident.)
    names.answer(vec![replicas[1].addr, replicas[2].addr]);
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 200, "the removed replica kept getting calls");
        let before = replicas[0].calls();
        for _ in 0..30 {
            call(&channel).await;
        }
        if replicas[0].calls() == before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    stop.cancel();
    resolver.await.unwrap();
}

#[tokio::test]
async fn the_resolver_task_stops_with_its_token() {
    let stop = CancellationToken::new();
    let (_channel, resolver) = connect_balanced("http://127.0.0.1:1", opts(), DnsResolver, stop.clone()).unwrap();
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), resolver)
        .await
        .expect("resolver task ended")
        .unwrap();
}

#[tokio::test]
async fn a_name_that_resolves_to_nothing_answers_unavailable_within_the_deadline() {
    let stop = CancellationToken::new();
    let names = TestResolver::default();
    let opts = BalanceOptions {
        request_timeout: Duration::from_millis(200),
        ..opts()
    };
    let (channel, resolver) = connect_balanced("http://nobody-home:50051", opts, names, stop.clone()).unwrap();
    let err = HealthClient::new(channel)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    stop.cancel();
    resolver.await.unwrap();
}
