//! The node agent against a fake hub on a real socket: registration,
//! pull-based commands, slot and device limits, timeouts, forged frames,
//! redelivery after reconnects and the hub's close codes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use relaymesh_node_agent::AgentError;
use relaymesh_wire::node::{FrameType, NodeKey};
use serde_json::json;
use support::{FakeHub, Frame, NODE, config, serial, start};

/// The most results whose `[started_at, finished_at)` overlap at one instant.
fn peak_concurrency<'a>(results: impl IntoIterator<Item = &'a Frame>) -> usize {
    let mut events: Vec<(i64, i32)> = Vec::new();
    for r in results {
        events.push((r.payload["started_at"].as_i64().unwrap(), 1));
        events.push((r.payload["finished_at"].as_i64().unwrap(), -1));
    }
    // Ends sort before starts at the same millisecond: the intervals are half-open.
    events.sort_unstable();
    let (mut now, mut peak) = (0i32, 0i32);
    for (_, delta) in events {
        now += delta;
        peak = peak.max(now);
    }
    usize::try_from(peak).unwrap()
}

#[tokio::test]
async fn hello_is_signed_and_lists_100_sim_devices() {
    let hub = FakeHub::bind().await;
    let agent = start(config(&hub, &[]));
    let mut conn = hub.accept().await;

    let hello = conn.handshake().await;
    assert!(hello.signed_ok, "HELLO signature must verify with the shared secret");
    assert_eq!(hello.node_id, NODE);
    let devices: Vec<&str> = hello.payload["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(devices.len(), 100);
    assert_eq!(devices[0], "SIM-0001");
    assert_eq!(devices[99], "SIM-0100");
    assert_eq!(hello.payload["slots"], 20);
    assert!(hello.payload["agent_version"].is_string());

    let hb = conn.expect("HEARTBEAT").await;
    assert!(hb.signed_ok);
    assert_eq!(
        hb.payload,
        json!({ "status": "READY", "free_slots": 20, "running": [] })
    );

    agent.shutdown.cancel();
    while conn.recv().await.is_some() {}
    assert_eq!(conn.closed_with, Some(1000));
    agent.finished().await.unwrap();
}

#[tokio::test]
async fn ready_heartbeats_get_commands_that_yield_results() {
    let hub = FakeHub::bind().await;
    let agent = start(config(&hub, &["--sim-fail-rate", "0"]));
    let mut conn = hub.accept().await;
    conn.handshake().await;
    conn.expect("HEARTBEAT").await;

    let ids = ["cmd-1", "cmd-2", "cmd-3"];
    for (i, id) in ids.iter().enumerate() {
        conn.command(id, &serial(i + 1), None).await;
    }
    let mut seen = HashSet::new();
    while seen.len() < ids.len() {
        let r = conn.expect("RESULT").await;
        assert!(r.signed_ok);
        assert_eq!(r.str("status"), "SUCCESS", "{:?}", r.payload);
        assert_eq!(r.str("run_id"), "run-1");
        assert!(r.payload["finished_at"].as_i64() >= r.payload["started_at"].as_i64());
        assert!(r.payload["result"].is_object());
        conn.ack_result(&r).await;
        // A freed slot is announced at once so the hub can refill it.
        let hb = conn.expect("HEARTBEAT").await;
        assert_eq!(hb.str("status"), "READY");
        seen.insert(r.str("command_id").to_owned());
    }
    assert_eq!(seen, ids.iter().map(|s| (*s).to_owned()).collect());
    agent.shutdown.cancel();
    agent.finished().await.unwrap();
}

#[tokio::test]
async fn failing_devices_report_failed_with_an_error() {
    let hub = FakeHub::bind().await;
    let agent = start(config(&hub, &["--sim-fail-rate", "1"]));
    let mut conn = hub.accept().await;
    conn.handshake().await;
    conn.command("cmd-f", &serial(1), None).await;
    let r = conn.expect("RESULT").await;
    assert_eq!(r.str("status"), "FAILED");
    assert!(r.str("error").contains("simulated"));
    conn.ack_result(&r).await;
    agent.shutdown.cancel();
    agent.finished().await.unwrap();
}

/// The hub plays fair scheduler: per-device FIFO, dispatch on READY up to
/// the free slots it believes the node has. The agent must run 20 at once,
/// never more, and never two on one device.
#[tokio::test]
async fn forty_commands_run_at_most_twenty_at_once_and_one_per_device() {
    let hub = FakeHub::bind().await;
    let agent = start(config(
        &hub,
        &[
            "--slots",
            "20",
            "--sim-task-ms",
            "150",
            "--sim-jitter-ms",
            "100",
            "--heartbeat-interval-ms",
            "5000",
        ],
    ));
    let mut conn = hub.accept().await;
    conn.handshake().await;

    // 40 commands over 30 devices: devices 1..=10 get two each.
    let mut queue: VecDeque<(String, String)> = (0..40).map(|i| (format!("cmd-{i:02}"), serial(i % 30 + 1))).collect();
    let mut in_flight: HashMap<String, String> = HashMap::new();
    let mut results: HashMap<String, Frame> = HashMap::new();
    while results.len() < 40 {
        let f = conn.recv().await.expect("agent closed");
        match f.kind.as_str() {
            "HEARTBEAT" if f.str("status") == "READY" => {
                let free = f.payload["free_slots"].as_u64().unwrap() as usize;
                let mut budget = free.min(20 - in_flight.len());
                let mut skipped = VecDeque::new();
                while budget > 0 {
                    let Some((id, device)) = queue.pop_front() else { break };
                    if in_flight.values().any(|d| *d == device) {
                        skipped.push_back((id, device));
                        continue;
                    }
                    conn.command(&id, &device, None).await;
                    in_flight.insert(id, device);
                    budget -= 1;
                }
                while let Some(s) = skipped.pop_back() {
                    queue.push_front(s);
                }
            }
            "RESULT" => {
                let id = f.str("command_id").to_owned();
                assert_eq!(f.str("status"), "SUCCESS", "{:?}", f.payload);
                in_flight.remove(&id);
                conn.ack_result(&f).await;
                results.insert(id, f);
            }
            "ERROR" => panic!("agent refused a fair dispatch: {:?}", f.payload),
            _ => {}
        }
    }

    assert_eq!(
        peak_concurrency(results.values()),
        20,
        "slots must be filled, never exceeded"
    );
    let mut by_device: HashMap<&str, Vec<&Frame>> = HashMap::new();
    for r in results.values() {
        by_device.entry(r.str("device_serial")).or_default().push(r);
    }
    for (device, runs) in by_device {
        assert!(
            peak_concurrency(runs.iter().copied()) <= 1,
            "two commands overlapped on {device}"
        );
    }
    agent.shutdown.cancel();
    agent.finished().await.unwrap();
}

#[tokio::test]
async fn commands_beyond_the_slots_or_on_a_busy_device_get_error_frames() {
    let hub = FakeHub::bind().await;
    let agent = start(config(&hub, &["--slots", "2", "--sim-task-ms", "400"]));
    let mut conn = hub.accept().await;
    conn.handshake().await;

    conn.command("a", &serial(1), None).await;
    let busy = conn.command("b", &serial(1), None).await;
    conn.command("c", &serial(2), None).await;
    let full = conn.command("d", &serial(3), None).await;
    // A resent COMMAND for a running id is ignored, not refused.
    conn.command("a", &serial(1), None).await;

    let mut errors = HashMap::new();
    let mut results = HashSet::new();
    while results.len() < 2 {
        let f = conn.recv().await.unwrap();
        match f.kind.as_str() {
            "ERROR" => {
                assert!(f.signed_ok);
                errors.insert(f.str("ref_message_id").to_owned(), f.str("code").to_owned());
            }
            "RESULT" => {
                conn.ack_result(&f).await;
                results.insert(f.str("command_id").to_owned());
            }
            _ => {}
        }
    }
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[&busy], "DEVICE_BUSY");
    assert_eq!(errors[&full], "NO_FREE_SLOT");
    assert_eq!(results, HashSet::from(["a".to_owned(), "c".to_owned()]));
    let late = conn.collect_for(Duration::from_millis(600)).await;
    assert!(late.iter().all(|f| f.kind != "RESULT"), "refused commands must not run");
    agent.shutdown.cancel();
    agent.finished().await.unwrap();
}

#[tokio::test]
async fn a_hanging_device_times_out_after_its_timeout_ms() {
    let hub = FakeHub::bind().await;
    let hang = serial(7);
    let agent = start(config(&hub, &["--sim-hang-serials", &hang]));
    let mut conn = hub.accept().await;
    conn.handshake().await;

    conn.command("stuck", &hang, Some(300)).await;
    let r = conn.expect("RESULT").await;
    assert_eq!(r.str("command_id"), "stuck");
    assert_eq!(r.str("status"), "TIMEOUT");
    let took = r.payload["finished_at"].as_i64().unwrap() - r.payload["started_at"].as_i64().unwrap();
    assert!((300..3000).contains(&took), "took {took} ms");
    conn.ack_result(&r).await;
    // The device is free again afterwards.
    let hb = conn.expect("HEARTBEAT").await;
    assert_eq!(hb.payload["running"], json!([]));
    agent.shutdown.cancel();
    agent.finished().await.unwrap();
}

#[tokio::test]
async fn a_forged_command_is_refused_with_an_error_and_not_run() {
    let hub = FakeHub::bind().await;
    let agent = start(config(&hub, &["--sim-task-ms", "50"]));
    let mut conn = hub.accept().await;
    conn.handshake().await;

    let forger = NodeKey::from_secret("not-the-secret");
    let forged = conn
        .send_signed_by(
            FrameType::Command,
            support::command("forged", &serial(1), None),
            &forger,
        )
        .await;
    let err = conn.expect("ERROR").await;
    assert!(err.signed_ok);
    assert_eq!(err.str("code"), "INVALID_SIGNATURE");
    assert_eq!(err.str("ref_message_id"), forged);

    let later = conn.collect_for(Duration::from_millis(400)).await;
    assert!(
        later.iter().all(|f| f.kind != "RESULT"),
        "a forged command must not run"
    );
    // The genuine one still does.
    conn.command("genuine", &serial(1), None).await;
    let r = conn.expect("RESULT").await;
    assert_eq!(r.str("command_id"), "genuine");
    conn.ack_result(&r).await;
    agent.shutdown.cancel();
    agent.finished().await.unwrap();
}

#[tokio::test]
async fn results_made_while_the_hub_is_down_are_delivered_after_reconnect() {
    let hub = FakeHub::bind().await;
    let agent = start(config(&hub, &["--sim-task-ms", "300", "--heartbeat-interval-ms", "50"]));
    let mut conn = hub.accept().await;
    conn.handshake().await;

    // Delivered and acknowledged: must not come back.
    conn.command("acked", &serial(1), None).await;
    let r = conn.expect("RESULT").await;
    conn.ack_result(&r).await;
    // Delivered but never acknowledged: must come back.
    conn.command("unacked", &serial(2), None).await;
    assert_eq!(conn.expect("RESULT").await.str("command_id"), "unacked");
    // Still running when the hub goes away.
    let running: Vec<String> = (3..=7).map(|i| format!("mid-{i}")).collect();
    for (i, id) in running.iter().enumerate() {
        conn.command(id, &serial(i + 3), None).await;
    }
    // Hang up only once the agent reports all five running (dropping the
    // socket earlier could discard commands still unread in its buffers).
    loop {
        let hb = conn.expect("HEARTBEAT").await;
        if hb.payload["running"].as_array().unwrap().len() == running.len() {
            break;
        }
    }
    drop(conn);

    // The hub stays down until every command has finished.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut conn = hub.accept().await;
    conn.handshake().await;
    let mut reported = HashSet::new();
    for f in conn.collect_for(Duration::from_millis(800)).await {
        if f.kind == "RESULT" {
            assert!(f.signed_ok);
            assert_eq!(f.str("status"), "SUCCESS");
            conn.ack_result(&f).await;
            reported.insert(f.str("command_id").to_owned());
        }
    }
    let mut expected: HashSet<String> = running.into_iter().collect();
    expected.insert("unacked".into());
    assert_eq!(reported, expected);
    agent.shutdown.cancel();
    agent.finished().await.unwrap();
}

#[tokio::test]
async fn close_4004_stops_the_agent() {
    let hub = FakeHub::bind().await;
    let agent = start(config(&hub, &[]));
    let mut conn = hub.accept().await;
    conn.handshake().await;
    conn.close(4004).await;
    let err = agent.finished().await.unwrap_err();
    assert!(
        matches!(err, AgentError::Replaced { ref node_id } if node_id == NODE),
        "{err}"
    );
}

#[tokio::test]
async fn close_4001_is_retried() {
    let hub = FakeHub::bind().await;
    let agent = start(config(&hub, &[]));
    let mut conn = hub.accept().await;
    conn.expect("HELLO").await;
    conn.close(4001).await;
    let mut again = hub.accept().await;
    let hello = again.handshake().await;
    assert!(hello.signed_ok);
    agent.shutdown.cancel();
    agent.finished().await.unwrap();
}

#[tokio::test]
async fn shutdown_finishes_running_commands_and_flushes_their_results() {
    let hub = FakeHub::bind().await;
    let agent = start(config(&hub, &["--sim-task-ms", "300"]));
    let mut conn = hub.accept().await;
    conn.handshake().await;
    conn.expect("HEARTBEAT").await;
    conn.command("last", &serial(1), None).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    agent.shutdown.cancel();

    let busy = conn.expect("HEARTBEAT").await;
    assert_eq!(busy.payload["status"], "BUSY");
    assert_eq!(busy.payload["free_slots"], 0);
    let refused = conn.command("too-late", &serial(2), None).await;
    let mut got_result = false;
    let mut refusal = None;
    while let Some(f) = conn.recv().await {
        match f.kind.as_str() {
            "RESULT" => {
                assert_eq!(f.str("command_id"), "last");
                assert_eq!(f.str("status"), "SUCCESS");
                got_result = true;
                conn.ack_result(&f).await;
            }
            "ERROR" => refusal = Some((f.str("code").to_owned(), f.str("ref_message_id").to_owned())),
            _ => {}
        }
    }
    assert!(got_result);
    assert_eq!(refusal, Some(("UNAVAILABLE".to_owned(), refused)));
    assert_eq!(conn.closed_with, Some(1000));
    agent.finished().await.unwrap();
}

#[tokio::test]
async fn unacknowledged_results_survive_a_restart_of_the_agent_itself() {
    let dir = std::env::temp_dir().join(format!("rm-agent-state-{}", uuid::Uuid::new_v4().simple()));
    let dir_s = dir.display().to_string();
    let hub = FakeHub::bind().await;
    let flags = ["--sim-task-ms", "10", "--state-dir", dir_s.as_str()];
    let agent = start(config(&hub, &flags));
    let mut conn = hub.accept().await;
    conn.handshake().await;
    conn.command("kept", &serial(1), None).await;
    assert_eq!(conn.expect("RESULT").await.str("command_id"), "kept");
    // Never acknowledged; the agent stops (as in an upgrade or a crash).
    agent.shutdown.cancel();
    drop(conn);
    agent.finished().await.unwrap();

    let agent = start(config(&hub, &flags));
    let mut conn = hub.accept().await;
    conn.handshake().await;
    let again = conn.expect("RESULT").await;
    assert_eq!(again.str("command_id"), "kept", "the new agent process resends it");
    assert_eq!(again.str("status"), "SUCCESS");
    conn.ack_result(&again).await;
    // A shutdown waits for outstanding ACKs; let it read ours, then close.
    agent.shutdown.cancel();
    while conn.recv().await.is_some() {}
    agent.finished().await.unwrap();

    // Acknowledged now: a third start has nothing to resend.
    let agent = start(config(&hub, &flags));
    let mut conn = hub.accept().await;
    conn.handshake().await;
    let frames = conn.collect_for(Duration::from_millis(300)).await;
    assert!(frames.iter().all(|f| f.kind != "RESULT"), "{frames:?}");
    agent.shutdown.cancel();
    drop(conn);
    agent.finished().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_result_the_hub_refuses_is_retried_within_seconds_and_refusals_name_the_command() {
    let hub = FakeHub::bind().await;
    // Heartbeats far apart: the retry must not wait for them.
    let agent = start(config(
        &hub,
        &["--sim-task-ms", "10", "--heartbeat-interval-ms", "60000"],
    ));
    let mut conn = hub.accept().await;
    conn.handshake().await;
    conn.command("c1", &serial(1), None).await;
    let first = conn.expect("RESULT").await;
    let refused_at = tokio::time::Instant::now();
    conn.send(
        FrameType::Error,
        json!({"code": "UNAVAILABLE", "message": "scheduler restarting", "ref_message_id": first.str("message_id"), "command_id": "c1"}),
    )
    .await;
    let again = conn.expect("RESULT").await;
    assert_eq!(again.str("command_id"), "c1");
    assert!(
        refused_at.elapsed() < Duration::from_secs(5),
        "retried after {:?}, not at the next heartbeat",
        refused_at.elapsed()
    );
    conn.ack_result(&again).await;

    // A COMMAND for a busy device is refused with its command_id.
    conn.command("long", &serial(2), Some(60_000)).await;
    conn.command("same-device", &serial(2), None).await;
    let err = conn.expect("ERROR").await;
    assert_eq!(
        (err.str("code"), err.payload["command_id"].as_str()),
        ("DEVICE_BUSY", Some("same-device"))
    );
    agent.shutdown.cancel();
    drop(conn);
    let _ = agent.finished().await;
}
