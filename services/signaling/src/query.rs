//! The built-in copilot query service (`relaymesh.query.v1.QueryService`):
//! answers a query by asking the client through callbacks, in the chains of
//! seed 001's scenario table. A real deployment points QUERY_SERVICE_URL at
//! its own implementation; this one makes the mesh complete and testable.
//!
//! Scenarios, chosen by the query's `data.scenario`:
//! - `basic` (default): `request_available_data` -> `available_data`; an
//!   empty list ends the query with `cache: "miss"`; otherwise
//!   `request_api` -> `api_result` -> `response`.
//! - `clarification`: `clarification_request` -> `human_response` -> `response`.
//!
//! A callback that is not answered in time ends the query with
//! CALLBACK_TIMEOUT (the client sees `TIMEOUT`).

use std::collections::BTreeMap;
use std::sync::Arc;

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use relaymesh_proto::query::v1::{
    ErrorReason, QueryRequest, QueryResponse, query_service_server::QueryService as QueryApi,
};
use relaymesh_proto::signaling::v1::CallbackKind;
use relaymesh_rpc::ServiceError;
use relaymesh_state::ConnectionId;
use tonic::{Code, Request, Response, Status};

use crate::callbacks::CallbackBroker;
use crate::error::SignalingError;

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("unknown scenario {0:?} (expected \"basic\" or \"clarification\")")]
    UnknownScenario(String),
    #[error(transparent)]
    Callback(#[from] SignalingError),
}

impl ServiceError for QueryError {
    type Reason = ErrorReason;

    fn code(&self) -> Code {
        match self {
            Self::UnknownScenario(_) => Code::InvalidArgument,
            Self::Callback(e) => e.code(),
        }
    }

    fn reason(&self) -> ErrorReason {
        match self {
            Self::UnknownScenario(_) => ErrorReason::InvalidQuery,
            Self::Callback(SignalingError::CallbackTimeout(_)) => ErrorReason::CallbackTimeout,
            Self::Callback(SignalingError::ConnectionClosed(_)) => ErrorReason::ConnectionClosed,
            Self::Callback(_) => ErrorReason::Unavailable,
        }
    }
}

/// The built-in query service, calling back through this replica's broker.
#[derive(Clone)]
pub struct BuiltinQueryService {
    broker: Arc<CallbackBroker>,
}

impl BuiltinQueryService {
    pub fn new(broker: Arc<CallbackBroker>) -> Self {
        Self { broker }
    }

    async fn answer(&self, conn: &ConnectionId, query: Option<&Value>) -> Result<Value, QueryError> {
        let text = field_str(query, "text").unwrap_or_default();
        let scenario = field_str(query, "scenario").unwrap_or("basic");
        match scenario {
            "basic" => self.basic(conn, text).await,
            "clarification" => {
                let question = format!("What do you mean by {text:?}?");
                let ask = object([("question", string(&question))]);
                let (_, reply) = self.ask(conn, CallbackKind::Clarification, ask).await?;
                Ok(object([
                    ("scenario", string("clarification")),
                    ("question", string(&question)),
                    ("answer", reply),
                ]))
            }
            other => Err(QueryError::UnknownScenario(other.to_owned())),
        }
    }

    async fn basic(&self, conn: &ConnectionId, text: &str) -> Result<Value, QueryError> {
        let ask = object([("query", string(text))]);
        let (_, available) = self.ask(conn, CallbackKind::AvailableData, ask).await?;
        let datasets = datasets(&available);
        if datasets.is_empty() {
            return Ok(object([
                ("scenario", string("basic")),
                ("cache", string("miss")),
                ("datasets", list(Vec::new())),
                ("answer", string(&format!("no cached data for {text:?}"))),
            ]));
        }
        let ask = object([
            ("api", string("query")),
            (
                "params",
                object([("text", string(text)), ("datasets", list(datasets.clone()))]),
            ),
        ]);
        let (_, api_result) = self.ask(conn, CallbackKind::Api, ask).await?;
        Ok(object([
            ("scenario", string("basic")),
            ("cache", string("hit")),
            ("datasets", list(datasets)),
            ("apiResult", api_result),
            ("answer", string(&format!("answered {text:?} from the client's data"))),
        ]))
    }

    async fn ask(&self, conn: &ConnectionId, kind: CallbackKind, data: Value) -> Result<(String, Value), QueryError> {
        let (id, answer) = self.broker.call(conn, kind, Some(data), None).await?;
        Ok((id, answer.unwrap_or_default()))
    }
}

#[tonic::async_trait]
impl QueryApi for BuiltinQueryService {
    async fn query(&self, req: Request<QueryRequest>) -> Result<Response<QueryResponse>, Status> {
        let req = req.into_inner();
        let conn = ConnectionId::new(req.connection_id);
        let data = self
            .answer(&conn, req.data.as_ref())
            .await
            .map_err(ServiceError::into_status)?;
        Ok(Response::new(QueryResponse { data: Some(data) }))
    }
}

fn field_str<'a>(v: Option<&'a Value>, name: &str) -> Option<&'a str> {
    let Some(Kind::StructValue(s)) = v?.kind.as_ref() else {
        return None;
    };
    match s.fields.get(name)?.kind.as_ref()? {
        Kind::StringValue(t) => Some(t),
        _ => None,
    }
}

/// The datasets of an `available_data` answer: the list itself, or its
/// `datasets` field.
fn datasets(answer: &Value) -> Vec<Value> {
    match answer.kind.as_ref() {
        Some(Kind::ListValue(l)) => l.values.clone(),
        Some(Kind::StructValue(s)) => match s.fields.get("datasets").and_then(|d| d.kind.as_ref()) {
            Some(Kind::ListValue(l)) => l.values.clone(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

fn list(values: Vec<Value>) -> Value {
    Value {
        kind: Some(Kind::ListValue(ListValue { values })),
    }
}

fn object<const N: usize>(fields: [(&str, Value); N]) -> Value {
    let fields: BTreeMap<String, Value> = fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    Value {
        kind: Some(Kind::StructValue(Struct { fields })),
    }
}
