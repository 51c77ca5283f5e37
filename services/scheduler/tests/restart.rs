//! Run and task state survive a restart of the scheduler, on SQLite and
//! on PostgreSQL (when TEST_DATABASE_URL is set; CI sets it).

#![allow(clippy::unwrap_used)]

mod harness;

use relaymesh_proto::scheduler::v1::scheduler_service_client::SchedulerServiceClient;
use relaymesh_proto::scheduler::v1::{
    CommandType, CreateRunRequest, CreateWorkflowRequest, GetRunRequest, ListNodesRequest, NodeHeartbeatRequest,
    NodeStatus, Recipe, RegisterNodeRequest, ReportResultRequest, ResultStatus, RunStatus, TaskState,
};
use sqlx::Executor;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Database URLs under test, each fresh: a SQLite file always, a new
/// PostgreSQL schema when TEST_DATABASE_URL is set.
async fn databases() -> Vec<String> {
    let mut out = vec![harness::sqlite_url()];
    if let Ok(base) = std::env::var("TEST_DATABASE_URL")
        && !base.is_empty()
    {
        sqlx::any::install_default_drivers();
        let schema = format!("rmtest_{}", uuid::Uuid::new_v4().simple());
        let pool = sqlx::AnyPool::connect(&base).await.expect("TEST_DATABASE_URL answers");
        pool.execute(format!("CREATE SCHEMA {schema}").as_str()).await.unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        out.push(format!("{base}{sep}options=-c%20search_path%3D{schema}"));
    }
    out
}

async fn start(
    db: &str,
) -> (
    SchedulerServiceClient<Channel>,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    harness::start(&["--database-url", db, "--timeout-sweep-ms", "50"]).await
}

fn register(conn: &str) -> RegisterNodeRequest {
    RegisterNodeRequest {
        node_id: "node-1".into(),
        connection_id: conn.into(),
        device_serials: vec!["D1".into(), "D2".into()],
        slots: 1,
    }
}

/// The node says READY on `conn`; returns the commands it gets.
async fn ready(c: &mut SchedulerServiceClient<Channel>, conn: &str) -> Vec<relaymesh_proto::scheduler::v1::Command> {
    c.node_heartbeat(NodeHeartbeatRequest {
        node_id: "node-1".into(),
        status: NodeStatus::Ready as i32,
        connection_id: conn.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .commands
}

fn recipe(t: CommandType) -> Option<Recipe> {
    let params = serde_json::json!({"video_id": "v"});
    Some(Recipe {
        command_type: t as i32,
        params: params.as_object().cloned().map(relaymesh_proto::json::struct_from_json),
        ..Default::default()
    })
}

fn states(run: &relaymesh_proto::scheduler::v1::Run) -> Vec<(String, i32)> {
    let mut s: Vec<_> = run.tasks.iter().map(|t| (t.device_serial.clone(), t.state)).collect();
    s.sort();
    s
}

#[tokio::test]
async fn queued_and_running_tasks_survive_a_scheduler_restart() {
    for db in databases().await {
        let (mut c, stop, task) = start(&db).await;
        c.register_node(register("conn-1")).await.unwrap();
        let wf = CreateWorkflowRequest {
            workflow_id: "w".into(),
            name: "w".into(),
            recipe: recipe(CommandType::WatchVideo),
        };
        let version = |r: relaymesh_proto::scheduler::v1::CreateWorkflowResponse| r.workflow.unwrap().version;
        assert_eq!(version(c.create_workflow(wf.clone()).await.unwrap().into_inner()), 1);
        assert_eq!(
            version(c.create_workflow(wf).await.unwrap().into_inner()),
            2,
            "{db}: versions increase"
        );
        let run = CreateRunRequest {
            workflow_id: "w".into(),
            node_ids: vec!["node-1".into()],
            ..Default::default()
        };
        let run_id = c.create_run(run).await.unwrap().into_inner().run.unwrap().run_id;
        let first = ready(&mut c, "conn-1").await;
        assert_eq!(first.len(), 1, "{db}: one slot");
        let running = first[0].clone();

        // Restart: a new scheduler process on the same database.
        stop.cancel();
        task.await.unwrap();
        let (mut c, stop, task) = start(&db).await;
        let run = c
            .get_run(GetRunRequest { run_id: run_id.clone() })
            .await
            .unwrap()
            .into_inner()
            .run
            .unwrap();
        let other = if running.device_serial == "D1" { "D2" } else { "D1" };
        assert_eq!(
            states(&run),
            {
                let mut want = vec![
                    (running.device_serial.clone(), TaskState::Dispatched as i32),
                    (other.to_owned(), TaskState::Queued as i32),
                ];
                want.sort();
                want
            },
            "{db}: nothing lost, nothing restarted"
        );
        let nodes = c.list_nodes(ListNodesRequest {}).await.unwrap().into_inner().nodes;
        assert_eq!(
            (nodes.len(), nodes[0].connected, nodes[0].slots_in_use),
            (1, false, 1),
            "{db}"
        );

        // The node comes back and delivers the result it finished meanwhile:
        // the freed slot is refilled with the queued task at once.
        c.register_node(register("conn-2")).await.unwrap();
        // Its heartbeat does not list the in-flight command: it is sent
        // again (the node runs an id once, or answers with its result),
        // and nothing new goes out while the one slot is taken.
        let again: Vec<String> = ready(&mut c, "conn-2")
            .await
            .into_iter()
            .map(|c| c.command_id)
            .collect();
        assert_eq!(again, std::slice::from_ref(&running.command_id), "{db}");
        let report = |id: &str| ReportResultRequest {
            node_id: "node-1".into(),
            command_id: id.to_owned(),
            status: ResultStatus::Success as i32,
            ..Default::default()
        };
        let r = c.report_result(report(&running.command_id)).await.unwrap().into_inner();
        assert!(r.recorded, "{db}");
        assert_eq!(r.commands.len(), 1, "{db}: refill");
        assert_eq!(r.commands[0].device_serial, other);
        let again = c.report_result(report(&running.command_id)).await.unwrap().into_inner();
        assert!(!again.recorded, "{db}: a resent result is recorded once");
        c.report_result(report(&r.commands[0].command_id)).await.unwrap();
        let run = c
            .get_run(GetRunRequest { run_id })
            .await
            .unwrap()
            .into_inner()
            .run
            .unwrap();
        assert_eq!(run.status(), RunStatus::Finished, "{db}");
        assert!(
            run.tasks
                .iter()
                .all(|t| t.state == TaskState::Succeeded as i32 && t.attempts == 1),
            "{db}: {run:?}"
        );
        stop.cancel();
        task.await.unwrap();
    }
}

#[tokio::test]
async fn unknown_devices_nodes_and_command_types_are_refused() {
    let db = databases().await.remove(0);
    let (mut c, stop, task) = start(&db).await;
    let bad = CreateWorkflowRequest {
        workflow_id: "x".into(),
        name: String::new(),
        recipe: recipe(CommandType::Unspecified),
    };
    assert_eq!(
        c.create_workflow(bad).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    let ok = CreateWorkflowRequest {
        workflow_id: "w".into(),
        name: String::new(),
        recipe: recipe(CommandType::SyncState),
    };
    c.create_workflow(ok).await.unwrap();
    let run = CreateRunRequest {
        workflow_id: "w".into(),
        device_serials: vec!["ghost".into()],
        ..Default::default()
    };
    assert_eq!(
        c.create_run(run).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    let run = CreateRunRequest {
        workflow_id: "w".into(),
        node_ids: vec!["ghost".into()],
        ..Default::default()
    };
    assert_eq!(c.create_run(run).await.unwrap_err().code(), tonic::Code::NotFound);
    stop.cancel();
    task.await.unwrap();
}
