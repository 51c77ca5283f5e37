//! Durable scheduler state: workflows, runs, tasks, nodes. PostgreSQL in
//! production, SQLite embedded (`relaymesh up`), through sqlx's `Any`
//! driver so one set of queries and one migration serve both.
//!
//! The store is the source of truth across restarts; the in-memory queues
//! (`core`) are rebuilt from it at start.

use relaymesh_proto::enum_names::{parse_wire_name, wire_name};
use relaymesh_proto::scheduler::v1::{CommandType, TaskState};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::error::{Result, SchedulerError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowRow {
    pub workflow_id: String,
    pub version: i64,
    pub name: String,
    pub recipe_json: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRow {
    pub run_id: String,
    pub workflow_id: String,
    pub workflow_version: i64,
    pub params_json: String,
    pub task_timeout_ms: i64,
    pub upload_timeout_ms: i64,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRow {
    pub task_id: String,
    pub run_id: String,
    pub seq: i64,
    pub node_id: String,
    pub device_serial: String,
    pub command_type: CommandType,
    pub params_json: String,
    pub timeout_ms: i64,
    pub state: TaskState,
    pub attempts: i64,
    pub error: Option<String>,
    pub result_json: Option<String>,
    pub deadline_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub node_id: String,
    pub devices: Vec<String>,
    pub slots: i64,
    pub last_heartbeat_ms: i64,
}

/// Enums are stored by their wire names (`QUEUED`, `WATCH_VIDEO`).
fn stored<E: relaymesh_proto::enum_names::WireEnum>(r: &AnyRow, column: &str) -> std::result::Result<E, sqlx::Error> {
    let name: String = r.try_get(column)?;
    parse_wire_name(&name).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: format!("unknown value {name:?}").into(),
    })
}

fn task_row(r: &AnyRow) -> std::result::Result<TaskRow, sqlx::Error> {
    Ok(TaskRow {
        task_id: r.try_get("task_id")?,
        run_id: r.try_get("run_id")?,
        seq: r.try_get("seq")?,
        node_id: r.try_get("node_id")?,
        device_serial: r.try_get("device_serial")?,
        command_type: stored(r, "command_type")?,
        params_json: r.try_get("params_json")?,
        timeout_ms: r.try_get("timeout_ms")?,
        state: stored(r, "state")?,
        attempts: r.try_get("attempts")?,
        error: r.try_get("error")?,
        result_json: r.try_get("result_json")?,
        deadline_ms: r.try_get("deadline_ms")?,
    })
}

const TASK_COLUMNS: &str = "task_id, run_id, seq, node_id, device_serial, command_type, params_json, timeout_ms, \
                            state, attempts, error, result_json, deadline_ms";

impl Store {
    /// Connects and applies migrations. `sqlite::memory:` keeps one
    /// connection, since each in-memory SQLite connection is its own database.
    pub async fn connect(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let max = if url.starts_with("sqlite:") { 1 } else { 8 };
        let pool = AnyPoolOptions::new().max_connections(max).connect(url).await?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| SchedulerError::Store(e.to_string()))?;
        Ok(Self { pool })
    }

    pub async fn next_workflow_version(&self, workflow_id: &str) -> Result<i64> {
        let row = sqlx::query("SELECT MAX(version) AS v FROM workflows WHERE workflow_id = $1")
            .bind(workflow_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>("v")?.unwrap_or(0) + 1)
    }

    pub async fn insert_workflow(&self, w: &WorkflowRow, now_ms: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO workflows (workflow_id, version, name, recipe_json, created_at_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&w.workflow_id)
        .bind(w.version)
        .bind(&w.name)
        .bind(&w.recipe_json)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The given version, or the latest when `version` is 0.
    pub async fn workflow(&self, workflow_id: &str, version: i64) -> Result<Option<WorkflowRow>> {
        let q = if version > 0 {
            sqlx::query(
                "SELECT workflow_id, version, name, recipe_json FROM workflows WHERE workflow_id = $1 AND version = $2",
            )
            .bind(workflow_id)
            .bind(version)
        } else {
            sqlx::query(
                "SELECT workflow_id, version, name, recipe_json FROM workflows WHERE workflow_id = $1 \
                 ORDER BY version DESC LIMIT 1",
            )
            .bind(workflow_id)
        };
        let Some(r) = q.fetch_optional(&self.pool).await? else {
            return Ok(None);
        };
        Ok(Some(WorkflowRow {
            workflow_id: r.try_get("workflow_id")?,
            version: r.try_get("version")?,
            name: r.try_get("name")?,
            recipe_json: r.try_get("recipe_json")?,
        }))
    }

    /// Inserts a run and its tasks in one transaction.
    pub async fn insert_run(&self, run: &RunRow, tasks: &[TaskRow]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO runs (run_id, workflow_id, workflow_version, params_json, task_timeout_ms, upload_timeout_ms, \
             created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&run.run_id)
        .bind(&run.workflow_id)
        .bind(run.workflow_version)
        .bind(&run.params_json)
        .bind(run.task_timeout_ms)
        .bind(run.upload_timeout_ms)
        .bind(run.created_at_ms)
        .execute(&mut *tx)
        .await?;
        for t in tasks {
            sqlx::query(
                "INSERT INTO tasks (task_id, run_id, seq, node_id, device_serial, command_type, params_json, \
                 timeout_ms, state, attempts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(&t.task_id)
            .bind(&t.run_id)
            .bind(t.seq)
            .bind(&t.node_id)
            .bind(&t.device_serial)
            .bind(wire_name(t.command_type))
            .bind(&t.params_json)
            .bind(t.timeout_ms)
            .bind(wire_name(t.state))
            .bind(t.attempts)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn run(&self, run_id: &str) -> Result<Option<(RunRow, Vec<TaskRow>)>> {
        let Some(r) = sqlx::query(
            "SELECT run_id, workflow_id, workflow_version, params_json, task_timeout_ms, upload_timeout_ms, \
             created_at_ms FROM runs WHERE run_id = $1",
        )
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let run = RunRow {
            run_id: r.try_get("run_id")?,
            workflow_id: r.try_get("workflow_id")?,
            workflow_version: r.try_get("workflow_version")?,
            params_json: r.try_get("params_json")?,
            task_timeout_ms: r.try_get("task_timeout_ms")?,
            upload_timeout_ms: r.try_get("upload_timeout_ms")?,
            created_at_ms: r.try_get("created_at_ms")?,
        };
        let rows = sqlx::query(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE run_id = $1 ORDER BY seq"
        ))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        let tasks = rows.iter().map(task_row).collect::<std::result::Result<_, _>>()?;
        Ok(Some((run, tasks)))
    }

    pub async fn task(&self, task_id: &str) -> Result<Option<TaskRow>> {
        let row = sqlx::query(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = $1"))
            .bind(task_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(task_row).transpose()?)
    }

    /// Tasks not yet finished, in queue order: what a restarted scheduler
    /// must pick up again.
    pub async fn open_tasks(&self) -> Result<Vec<TaskRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE state IN ('QUEUED', 'DISPATCHED') ORDER BY seq"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(task_row).collect::<std::result::Result<_, _>>()?)
    }

    /// Puts a dispatched task back in its queue (the node refused it).
    pub async fn mark_queued(&self, task_id: &str) -> Result<()> {
        sqlx::query(
            "UPDATE tasks SET state = 'QUEUED', dispatched_at_ms = NULL, deadline_ms = NULL \
             WHERE task_id = $1 AND state = 'DISPATCHED'",
        )
        .bind(task_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn mark_dispatched(&self, task_id: &str, attempts: i64, now_ms: i64, deadline_ms: i64) -> Result<()> {
        sqlx::query(
            "UPDATE tasks SET state = 'DISPATCHED', attempts = $2, dispatched_at_ms = $3, deadline_ms = $4 \
             WHERE task_id = $1",
        )
        .bind(task_id)
        .bind(attempts)
        .bind(now_ms)
        .bind(deadline_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a final state once: false when the task was already final.
    pub async fn finish(
        &self,
        task_id: &str,
        state: TaskState,
        error: Option<&str>,
        result_json: Option<&str>,
        now_ms: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE tasks SET state = $2, error = $3, result_json = $4, finished_at_ms = $5 \
             WHERE task_id = $1 AND state IN ('QUEUED', 'DISPATCHED')",
        )
        .bind(task_id)
        .bind(wire_name(state))
        .bind(error)
        .bind(result_json)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn upsert_node(&self, n: &NodeRow) -> Result<()> {
        let devices = serde_json::to_string(&n.devices).unwrap_or_else(|_| "[]".into());
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM nodes WHERE node_id = $1")
            .bind(&n.node_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO nodes (node_id, devices_json, slots, last_heartbeat_ms) VALUES ($1, $2, $3, $4)")
            .bind(&n.node_id)
            .bind(devices)
            .bind(n.slots)
            .bind(n.last_heartbeat_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn nodes(&self) -> Result<Vec<NodeRow>> {
        let rows = sqlx::query("SELECT node_id, devices_json, slots, last_heartbeat_ms FROM nodes ORDER BY node_id")
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let devices: String = r.try_get("devices_json")?;
            out.push(NodeRow {
                node_id: r.try_get("node_id")?,
                devices: serde_json::from_str(&devices).map_err(|e| SchedulerError::Store(e.to_string()))?,
                slots: r.try_get("slots")?,
                last_heartbeat_ms: r.try_get("last_heartbeat_ms")?,
            });
        }
        Ok(out)
    }
}
