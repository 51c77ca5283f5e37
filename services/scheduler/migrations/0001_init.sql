-- Scheduler state. Portable SQL: runs unchanged on PostgreSQL and SQLite.
CREATE TABLE IF NOT EXISTS workflows (
    workflow_id   TEXT   NOT NULL,
    version       BIGINT NOT NULL,
    name          TEXT   NOT NULL,
    recipe_json   TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (workflow_id, version)
);

CREATE TABLE IF NOT EXISTS runs (
    run_id            TEXT   PRIMARY KEY,
    workflow_id       TEXT   NOT NULL,
    workflow_version  BIGINT NOT NULL,
    params_json       TEXT   NOT NULL,
    task_timeout_ms   BIGINT NOT NULL,
    upload_timeout_ms BIGINT NOT NULL,
    created_at_ms     BIGINT NOT NULL
);

-- One task per (run, device): the whole workflow on that device.
CREATE TABLE IF NOT EXISTS tasks (
    task_id          TEXT   PRIMARY KEY,
    run_id           TEXT   NOT NULL,
    seq              BIGINT NOT NULL,
    node_id          TEXT   NOT NULL,
    device_serial    TEXT   NOT NULL,
    command_type     TEXT   NOT NULL,
    params_json      TEXT   NOT NULL,
    timeout_ms       BIGINT NOT NULL,
    state            TEXT   NOT NULL,
    attempts         BIGINT NOT NULL,
    error            TEXT,
    result_json      TEXT,
    dispatched_at_ms BIGINT,
    deadline_ms      BIGINT,
    finished_at_ms   BIGINT
);
CREATE INDEX IF NOT EXISTS tasks_by_run ON tasks (run_id);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks (state);

CREATE TABLE IF NOT EXISTS nodes (
    node_id           TEXT   PRIMARY KEY,
    devices_json      TEXT   NOT NULL,
    slots             BIGINT NOT NULL,
    last_heartbeat_ms BIGINT NOT NULL
);
