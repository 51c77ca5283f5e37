//! Typed in-process calls (`relaymesh_rpc::LocalOrRemote`): a call to a
//! server of this process that registered its handler reaches the handler
//! without being encoded, with the same answers, metrics, span, limit and
//! deadline as a call through its routes; and goes to the network once
//! that server stops, or when it registered no handler. (The span of a
//! typed call: `trace_context.rs`, whose tests all install a subscriber.)

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relaymesh_proto::query::v1::query_service_client::QueryServiceClient;
use relaymesh_proto::query::v1::query_service_server::{self, QueryService, QueryServiceServer};
use relaymesh_proto::query::v1::{QueryRequest, QueryResponse};
use relaymesh_rpc::{GrpcServer, LocalOrRemote, RpcChannel, ServeOptions, connect_lazy, local, unary};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// How a request reached the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// Over a socket.
    Network,
    /// In process through the routes: encoded, with the client's HTTP
    /// headers as metadata.
    Routes,
    /// In process as the typed message, with no metadata at all.
    Typed,
}

/// Answers by `user_id`: "refuse" with INVALID_ARGUMENT and an ErrorInfo,
/// "abort" with ABORTED (which only typed calls ask for, so the metrics
/// test counts them alone), "hold" once `release` is notified, anything
/// else at once.
#[derive(Clone, Default)]
struct Answers {
    seen: Arc<Mutex<Vec<Path>>>,
    release: Arc<Notify>,
}

#[tonic::async_trait]
impl QueryService for Answers {
    async fn query(&self, req: Request<QueryRequest>) -> Result<Response<QueryResponse>, Status> {
        let path = if req.remote_addr().is_some() {
            Path::Network
        } else if req.metadata().get("content-type").is_some() {
            Path::Routes
        } else {
            Path::Typed
        };
        self.seen.lock().unwrap().push(path);
        match req.get_ref().user_id.as_str() {
            "refuse" => Err(Status::with_error_details(
                tonic::Code::InvalidArgument,
                "refused",
                ErrorDetails::with_error_info("ERROR_REASON_INVALID_QUERY", "relaymesh.query.v1", []),
            )),
            "abort" => Err(Status::aborted("aborted")),
            "hold" => {
                self.release.notified().await;
                Ok(Response::new(QueryResponse::default()))
            }
            _ => Ok(Response::new(QueryResponse::default())),
        }
    }
}

type Calls = LocalOrRemote<QueryServiceClient<RpcChannel>, dyn QueryService>;

/// A query server on a free port serving `answers`; `typed` registers its
/// handler too. Returns once it takes in-process calls.
async fn server(
    answers: &Answers,
    typed: bool,
    opts: ServeOptions,
    stop: &CancellationToken,
) -> (SocketAddr, tokio::task::JoinHandle<Result<(), relaymesh_rpc::RpcError>>) {
    local::set_enabled(true);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut server = GrpcServer::new().add_service(QueryServiceServer::new(answers.clone()));
    if typed {
        server = server.handles_in_process::<dyn QueryService>(Arc::new(answers.clone()));
    }
    let served = tokio::spawn(server.serve(listener, opts, stop.clone()));
    for _ in 0..500 {
        if local::lookup(addr).is_some() {
            return (addr, served);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("the server never registered for in-process calls");
}

fn calls(addr: SocketAddr, timeout: Duration) -> Calls {
    let url = format!("http://{addr}");
    let channel = connect_lazy(&url, timeout).unwrap();
    LocalOrRemote::new(
        QueryServiceClient::new(channel),
        &url,
        query_service_server::SERVICE_NAME,
        timeout,
    )
}

async fn query(calls: &Calls, user: &str) -> Result<Response<QueryResponse>, Status> {
    let req = QueryRequest {
        connection_id: "c".into(),
        user_id: user.into(),
        data: None,
    };
    unary!(calls, query, req).await
}

/// A refusal arrives as the handler made it: code, message and reason.
fn assert_refused_as_made(answer: Result<Response<QueryResponse>, Status>) {
    let refused = answer.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(refused.message(), "refused");
    assert_eq!(
        refused.get_details_error_info().map(|i| i.reason).as_deref(),
        Some("ERROR_REASON_INVALID_QUERY")
    );
}

#[tokio::test]
async fn a_server_of_this_process_answers_typed_and_a_stopped_one_is_called_over_the_network() {
    let answers = Answers::default();
    let stop = CancellationToken::new();
    let (addr, served) = server(&answers, true, ServeOptions::default(), &stop).await;
    let calls = calls(addr, Duration::from_secs(2));

    query(&calls, "ok").await.unwrap();
    assert_refused_as_made(query(&calls, "refuse").await);
    // The generated client over the same channel goes through the routes.
    let mut plain = calls.remote();
    plain
        .query(QueryRequest {
            user_id: "ok".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        *answers.seen.lock().unwrap(),
        [Path::Typed, Path::Typed, Path::Routes],
        "typed calls skip the encoding; the plain client does not"
    );

    // Stopped, the server is unregistered: the next call goes to the
    // network, where nothing listens any more.
    stop.cancel();
    served.await.unwrap().unwrap();
    let gone = query(&calls, "ok").await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::Unavailable, "{gone:?}");
    assert_eq!(answers.seen.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn without_a_typed_handler_a_call_goes_through_the_routes_with_the_same_answers() {
    let answers = Answers::default();
    let stop = CancellationToken::new();
    let (addr, served) = server(&answers, false, ServeOptions::default(), &stop).await;
    let calls = calls(addr, Duration::from_secs(2));
    query(&calls, "ok").await.unwrap();
    assert_refused_as_made(query(&calls, "refuse").await);
    assert_eq!(*answers.seen.lock().unwrap(), [Path::Routes, Path::Routes]);
    stop.cancel();
    served.await.unwrap().unwrap();
}

#[tokio::test]
async fn typed_calls_count_against_the_servers_limit_and_end_by_the_callers_deadline() {
    let answers = Answers::default();
    let stop = CancellationToken::new();
    let opts = ServeOptions {
        max_concurrent_requests: 1,
        ..ServeOptions::default()
    };
    let (addr, served) = server(&answers, true, opts, &stop).await;
    let calls = calls(addr, Duration::from_secs(5));

    // One call holds the server's only slot: a second waits for it.
    let held = tokio::spawn({
        let calls = calls.clone();
        async move { query(&calls, "hold").await.map(drop) }
    });
    while answers.seen.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let waiting = tokio::spawn({
        let calls = calls.clone();
        async move { query(&calls, "ok").await.map(drop) }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "the second call waits for the server's slot");
    assert_eq!(answers.seen.lock().unwrap().len(), 1, "and has not reached the handler");
    answers.release.notify_one();
    held.await.unwrap().unwrap();
    waiting.await.unwrap().unwrap();

    // A handler that does not answer by the caller's deadline: UNAVAILABLE,
    // as a call over the network gets.
    let short = self::calls(addr, Duration::from_millis(150));
    let late = query(&short, "hold").await.unwrap_err();
    assert_eq!(late.code(), tonic::Code::Unavailable, "{late:?}");
    answers.release.notify_one();

    // Typed calls are counted per method and code, as network calls are;
    // only this one ends ABORTED, the others OK.
    assert_eq!(query(&calls, "abort").await.unwrap_err().code(), tonic::Code::Aborted);
    let metrics = relaymesh_telemetry::metrics::render();
    let counted = |code: &str| {
        metrics.lines().any(|l| {
            l.starts_with("relaymesh_grpc_server_requests_total{")
                && l.contains("grpc_service=\"relaymesh.query.v1.QueryService\"")
                && l.contains("grpc_method=\"Query\"")
                && l.contains(&format!("grpc_code=\"{code}\""))
        })
    };
    assert!(counted("ABORTED"), "{metrics}");
    // OK calls are counted through handles kept per method.
    assert!(counted("OK"), "{metrics}");
    stop.cancel();
    served.await.unwrap().unwrap();
}
