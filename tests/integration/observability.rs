//! What an operator sees of a running `relaymesh up` (a real child process):
//! a clean stop on SIGTERM, JSON logs a parser takes, Prometheus names by
//! the rules, and one trace per LiveChat frame across gateway and service.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, Span};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;

use super::harness::{self, Chat};

const BIN: &str = env!("CARGO_BIN_EXE_relaymesh");
const CREATE: u16 = 10;
const JOIN: u16 = 11;
const MESSAGE: u16 = 20;

/// `relaymesh up` as a child process on free ports, in-memory state and an
/// in-memory scheduler database; its stderr collected line by line.
struct Up {
    child: tokio::process::Child,
    addr: SocketAddr,
    stderr: tokio::task::JoinHandle<Vec<String>>,
}

impl Up {
    /// Starts `up` on a port found free. Between finding it and `up`
    /// binding it, another test's listener may take it: `up` then exits
    /// while starting (or the port answers for someone else), and the start
    /// is retried on a fresh port.
    async fn start(env: &[(&str, &str)]) -> Self {
        for _ in 0..3 {
            if let Some(up) = Self::try_start(env).await {
                return up;
            }
        }
        panic!("relaymesh up did not start on three free ports");
    }

    async fn try_start(env: &[(&str, &str)]) -> Option<Self> {
        let port = harness::free_port();
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(["up", "--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--media-udp-port", "0", "--database-url", "sqlite::memory:"])
            .args(["--jwt-secret", harness::JWT_SECRET]);
        for var in [
            "REDIS_URL",
            "REDIS_CLUSTER_URLS",
            "GRPC_BASE_PORT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "LOG_FORMAT",
            "RUST_LOG",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        // Read stderr as it comes, so a chatty process never blocks on a full pipe.
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let stderr = tokio::spawn(async move {
            let mut out = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                out.push(line);
            }
            out
        });
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ready = harness::try_http_get(addr, "/readyz").await == Some(200);
            if let Ok(Some(status)) = child.try_wait() {
                let text = stderr.await.unwrap().join("\n");
                assert!(
                    text.contains("binding"),
                    "relaymesh up exited while starting: {status}\n{text}"
                );
                return None;
            }
            if ready {
                return Some(Self { child, addr, stderr });
            }
            assert!(tokio::time::Instant::now() < deadline, "relaymesh up never ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then the exit status and every stderr line.
    async fn terminate(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let pid = self.child.id().unwrap().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("relaymesh up stops after SIGTERM")
            .unwrap();
        (status, self.stderr.await.unwrap())
    }
}

/// Two members of one channel, one of whom sends a message the other gets.
async fn chat_once(addr: SocketAddr) {
    let mut ann = Chat::ready(addr, "ann").await;
    let mut bob = Chat::ready(addr, "bob").await;
    ann.ok(CREATE, json!({"channel_id": "CH_OBS", "name": "obs", "floor": "none"}))
        .await;
    ann.ok(JOIN, json!({"channel_id": "CH_OBS", "ssrc": 11})).await;
    bob.ok(JOIN, json!({"channel_id": "CH_OBS", "ssrc": 22})).await;
    ann.ok(MESSAGE, json!({"channel_id": "CH_OBS", "content": "hello"}))
        .await;
    assert_eq!(bob.event(101).await["d"]["content"], "hello");
}

#[tokio::test]
async fn sigterm_stops_up_cleanly_twenty_times_in_a_row() {
    for run in 0..20 {
        let up = Up::start(&[]).await;
        let (status, stderr) = up.terminate().await;
        let text = stderr.join("\n");
        assert!(status.success(), "run {run}: exit {status:?}\n{text}");
        assert!(!text.contains("Error"), "run {run}: an error on stderr\n{text}");
    }
}

/// Keys of every object in one JSON document, refusing a repeated key
/// (serde_json's own maps would keep the last one silently).
struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
            }
            map.next_value::<UniqueKeys>()?;
        }
        Ok(UniqueKeys)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }
    fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
}

#[tokio::test]
async fn json_logs_are_one_object_a_line_with_unique_keys_and_no_debug_options() {
    let up = Up::start(&[("LOG_FORMAT", "json"), ("RUST_LOG", "debug")]).await;
    chat_once(up.addr).await;
    // Refused and bad frames log too.
    let mut c = harness::Client::connect(up.addr, "/ws/livechat").await;
    c.recv().await;
    c.send_text("not json").await;
    c.recv().await;
    c.send_json(json!({"op": 3, "d": {"user_id": "eve", "token": "forged"}}))
        .await;
    let _ = c.try_recv(Duration::from_secs(2)).await;
    let (status, lines) = up.terminate().await;
    assert!(status.success(), "{status:?}");
    assert!(lines.len() > 10, "debug logging says something: {lines:?}");
    for line in &lines {
        if let Err(err) = serde_json::from_str::<UniqueKeys>(line) {
            panic!("not one JSON object with unique keys ({err}): {line}");
        }
        assert!(!line.contains("Some("), "an Option logged as Debug text: {line}");
    }
}

/// Prometheus naming: `relaymesh_` prefix, counters `_total`, histograms in
/// a unit with explicit buckets, nothing but counters ending in `_total`.
fn naming_problems(name: &str, kind: &str) -> Vec<&'static str> {
    let mut out = Vec::new();
    if !name.starts_with("relaymesh_") {
        out.push("no relaymesh_ prefix");
    }
    match kind {
        "counter" if !name.ends_with("_total") => out.push("a counter not ending in _total"),
        "histogram" if !(name.ends_with("_seconds") || name.ends_with("_bytes")) => {
            out.push("a histogram without a unit suffix (_seconds, _bytes)")
        }
        "summary" => out.push("a histogram without explicit buckets (rendered as a summary)"),
        "gauge" if name.ends_with("_total") => out.push("a gauge ending in _total"),
        _ => {}
    }
    if name.contains("_bytes_") && !name.ends_with("_bytes_total") || name.contains("_ms") {
        out.push("a unit not at the end, or not a base unit");
    }
    out
}

/// Names other engineers' crates still export against the rules, to be
/// renamed by the lead (each must go; nothing may be added).
const KNOWN_NONCONFORMING: &[&str] = &[];

/// Every metric name written in the workspace's sources, with its kind.
fn names_in_sources() -> Vec<(String, &'static str, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    let mut dirs: Vec<_> = ["src", "crates", "services", "gateway"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for (macro_name, kind) in [
                    ("counter!(", "counter"),
                    ("gauge!(", "gauge"),
                    ("histogram!(", "histogram"),
                ] {
                    for (at, _) in text.match_indices(macro_name) {
                        let rest = text[at + macro_name.len()..].trim_start();
                        if let Some(name) = rest.strip_prefix('"').and_then(|r| r.split('"').next()) {
                            out.push((name.to_owned(), kind, path.display().to_string()));
                        }
                    }
                }
            }
        }
    }
    out
}

#[test]
fn every_metric_name_in_the_sources_follows_prometheus_rules() {
    let names = names_in_sources();
    assert!(names.len() > 10, "found the metrics: {names:?}");
    let mut bad = Vec::new();
    for (name, kind, file) in &names {
        let problems = naming_problems(name, kind);
        if !problems.is_empty() && !KNOWN_NONCONFORMING.contains(&name.as_str()) {
            bad.push(format!("{name} ({kind}, {file}): {problems:?}"));
        }
    }
    assert!(bad.is_empty(), "metric names against the rules:\n{}", bad.join("\n"));
    for known in KNOWN_NONCONFORMING {
        assert!(
            names.iter().any(|(n, ..)| n == known),
            "{known} is gone: remove it from KNOWN_NONCONFORMING"
        );
    }
}

/// The value of one counter series (`name{labels}`) on `/metrics`; 0 before
/// its first increment.
async fn counter_value(addr: SocketAddr, series: &str) -> f64 {
    let (code, body) = harness::http_get(addr, "/metrics").await;
    assert_eq!(code, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The environment that points a child `relaymesh up` at `backend`, under a
/// key prefix of its own.
fn backend_env(backend: &harness::Backend) -> Vec<(&'static str, String)> {
    let prefix = (
        "REDIS_KEY_PREFIX",
        relaymesh_state::testing::unique_prefix("render-once"),
    );
    match backend {
        harness::Backend::Memory => Vec::new(),
        harness::Backend::Redis(url) => vec![("REDIS_URL", url.clone()), prefix],
        harness::Backend::Cluster(seeds) => vec![("REDIS_CLUSTER_URLS", seeds.join(",")), prefix],
    }
}

/// A chat message to N members on one gateway is rendered to JSON once
/// there, not once per member: the gateway's render counter (its own
/// process, so no other test adds to it) grows by one per message.
#[tokio::test]
async fn an_event_for_many_members_on_one_gateway_is_rendered_once() {
    const RENDERED: &str = "relaymesh_gateway_frames_rendered_total{protocol=\"livechat\"}";
    const MEMBERS: usize = 6;
    const MESSAGES: usize = 3;
    for backend in harness::backends() {
        let env = backend_env(&backend);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let up = Up::start(&env).await;
        let mut members = Vec::new();
        for i in 0..MEMBERS {
            let mut chat = Chat::ready(up.addr, &format!("member{i}")).await;
            if i == 0 {
                chat.ok(CREATE, json!({"channel_id": "CH_RENDER", "floor": "none"}))
                    .await;
            }
            chat.ok(JOIN, json!({"channel_id": "CH_RENDER", "ssrc": i + 1})).await;
            members.push(chat);
        }
        // Every member has the next message only after every earlier event
        // of the channel (the join events): their renders are all counted.
        let everyone_gets = async |members: &mut Vec<Chat>, content: &str| {
            members[0]
                .ok(MESSAGE, json!({"channel_id": "CH_RENDER", "content": content}))
                .await;
            for m in members.iter_mut() {
                assert_eq!(m.event(101).await["d"]["content"], content, "{backend:?}");
            }
        };
        everyone_gets(&mut members, "settle").await;
        let before = counter_value(up.addr, RENDERED).await;
        for n in 0..MESSAGES {
            everyone_gets(&mut members, &format!("message {n}")).await;
        }
        let rendered = counter_value(up.addr, RENDERED).await - before;
        assert_eq!(
            rendered, MESSAGES as f64,
            "{backend:?}: {MESSAGES} messages to {MEMBERS} members on one gateway"
        );
        let (status, _) = up.terminate().await;
        assert!(status.success(), "{backend:?}");
    }
}

#[tokio::test]
async fn scraped_metrics_follow_prometheus_rules_with_buckets_and_grpc_codes() {
    let up = Up::start(&[]).await;
    chat_once(up.addr).await;
    let mut chat = Chat::ready(up.addr, "cat").await;
    // A refused call: the channel does not exist.
    chat.err(JOIN, json!({"channel_id": "CH_NONE", "ssrc": 5})).await;
    let (code, body) = harness::http_get(up.addr, "/metrics").await;
    assert_eq!(code, 200);
    let mut bad = Vec::new();
    let mut families = 0;
    for line in body.lines() {
        let Some(decl) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = decl.split_once(' ').unwrap();
        families += 1;
        let problems = naming_problems(name, kind);
        if !problems.is_empty() && !KNOWN_NONCONFORMING.contains(&name) {
            bad.push(format!("{name} ({kind}): {problems:?}"));
        }
    }
    assert!(families > 5, "{body}");
    assert!(
        bad.is_empty(),
        "series against the rules:\n{}\n\n{body}",
        bad.join("\n")
    );
    // gRPC server metrics carry service, method and status code; the
    // latency histogram has buckets.
    assert!(
        body.lines()
            .any(|l| l.starts_with("relaymesh_grpc_server_requests_total{")
                && l.contains("grpc_service=\"relaymesh.channel.v1.")
                && l.contains("grpc_code=\"OK\"")),
        "{body}"
    );
    assert!(
        body.lines()
            .any(|l| l.starts_with("relaymesh_grpc_server_requests_total{")
                && l.contains("grpc_service=\"relaymesh.channel.v1.")
                && !l.contains("grpc_code=\"OK\"")),
        "a refused call is counted with its code: {body}"
    );
    assert!(
        body.contains("relaymesh_grpc_server_handling_seconds_bucket{"),
        "{body}"
    );
    let (status, _) = up.terminate().await;
    assert!(status.success());
}

/// An OTLP/gRPC collector keeping what it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<ResourceSpans>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.spans.lock().unwrap().extend(request.into_inner().resource_spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn string_attr<'a>(attrs: &'a [opentelemetry_proto::tonic::common::v1::KeyValue], key: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref() {
            Some(AnyValue {
                value: Some(any_value::Value::StringValue(s)),
            }) => Some(s.as_str()),
            _ => None,
        })
}

fn int_attr(attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue], key: &str) -> Option<i64> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref() {
            Some(AnyValue {
                value: Some(any_value::Value::IntValue(i)),
            }) => Some(*i),
            _ => None,
        })
}

/// Every exported span with its resource's `service.name`.
fn spans_by_service(collected: &[ResourceSpans]) -> Vec<(String, Span)> {
    let mut out = Vec::new();
    for rs in collected {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| string_attr(&r.attributes, "service.name"))
            .unwrap_or_default()
            .to_owned();
        for ss in &rs.scope_spans {
            for span in &ss.spans {
                out.push((service.clone(), span.clone()));
            }
        }
    }
    out
}

#[tokio::test]
async fn one_message_create_is_one_trace_from_the_gateway_frame_to_the_channel_call() {
    let collector = Collector::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let serve = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(collector.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let receiver = tokio::spawn(serve);

    let up = Up::start(&[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())]).await;
    chat_once(up.addr).await;
    // Stopping flushes every batch exporter.
    let (status, stderr) = up.terminate().await;
    assert!(status.success(), "{}", stderr.join("\n"));
    let spans = spans_by_service(&collector.spans.lock().unwrap());
    receiver.abort();

    let frames: Vec<_> = spans
        .iter()
        .filter(|(_, s)| s.name == "livechat MESSAGE_CREATE")
        .collect();
    assert_eq!(
        frames.len(),
        1,
        "one gateway span for the one MESSAGE_CREATE: {spans:#?}"
    );
    let (service, frame) = frames[0];
    assert_eq!(service, "relaymesh-gateway");
    assert!(frame.parent_span_id.is_empty(), "the frame span is the trace's root");
    assert_eq!(string_attr(&frame.attributes, "relaymesh.protocol"), Some("livechat"));
    assert_eq!(string_attr(&frame.attributes, "enduser.id"), Some("ann"));
    assert!(string_attr(&frame.attributes, "relaymesh.connection_id").is_some());

    let calls: Vec<_> = spans
        .iter()
        .filter(|(_, s)| s.trace_id == frame.trace_id && s.parent_span_id == frame.span_id)
        .collect();
    let (service, call) = calls
        .iter()
        .find(|(_, s)| s.name.starts_with("relaymesh.channel.v1."))
        .unwrap_or_else(|| panic!("a channel call as the frame's child: {calls:#?}"));
    assert_eq!(service, "relaymesh-channel");
    assert_eq!(string_attr(&call.attributes, "rpc.system"), Some("grpc"));
    assert_eq!(
        Some(call.name.as_str()),
        string_attr(&call.attributes, "rpc.service")
            .zip(string_attr(&call.attributes, "rpc.method"))
            .map(|(s, m)| format!("{s}/{m}"))
            .as_deref()
    );
    assert_eq!(int_attr(&call.attributes, "rpc.grpc.status_code"), Some(0));

    // The event's delivery to bob's gateway continues the same trace.
    assert!(
        spans
            .iter()
            .any(|(svc, s)| s.trace_id == frame.trace_id && s.name == "gateway deliver" && svc == "relaymesh-gateway"),
        "the delivery joins the message's trace: {spans:#?}"
    );
    // No span of this trace is exported under the process-wide name.
    assert!(
        spans
            .iter()
            .filter(|(_, s)| s.trace_id == frame.trace_id)
            .all(|(svc, _)| svc.starts_with("relaymesh-")),
        "{spans:#?}"
    );
}
