//! The copilot JS client (`/copilot-client.js`) as the console page uses
//! it, in headless Chromium: tests/browser/copilot_client.cjs drives the
//! page; this test owns the mesh and stops and restarts the gateway when
//! the script asks.
//!
//! Needs `node`, Debian's `chromium` and `playwright-core` installed under
//! `RELAYMESH_PLAYWRIGHT_DIR` (default `target/browser-deps`); `.ci/run`
//! installs them. Without them the test is skipped, except under `CI=true`
//! or `RELAYMESH_REQUIRE_BROWSER_TEST=1` (set by `.ci/run`), where it fails.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use super::harness::{self, Backend, token};

const CHROMIUM: &str = "/usr/bin/chromium";

fn playwright_dir() -> PathBuf {
    std::env::var_os("RELAYMESH_PLAYWRIGHT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-deps"))
}

/// Why the browser test cannot run here, if it cannot.
fn missing_tools(dir: &Path) -> Option<String> {
    if std::process::Command::new("node").arg("--version").output().is_err() {
        return Some("node is not installed".into());
    }
    if !Path::new(CHROMIUM).exists() {
        return Some(format!("{CHROMIUM} is not installed (apt-get install chromium)"));
    }
    if !dir.join("node_modules/playwright-core").is_dir() {
        return Some(format!("playwright-core is not installed under {}", dir.display()));
    }
    None
}

/// Binds `port` again once the stopped gateway has let it go.
async fn restart_gateway(mesh: &mut relaymesh::Mesh, port: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match mesh.add_gateway(port, None).await {
            Ok(_) => return,
            Err(err) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "port {port} not free again: {err}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test]
async fn the_console_page_connects_queries_answers_callbacks_and_reconnects() {
    let dir = playwright_dir();
    if let Some(why) = missing_tools(&dir) {
        let required = std::env::var("CI").as_deref() == Ok("true")
            || std::env::var("RELAYMESH_REQUIRE_BROWSER_TEST").as_deref() == Ok("1");
        assert!(!required, "the browser test is required here, but {why}");
        eprintln!("skipped: {why}");
        return;
    }
    let mut mesh = harness::start(
        &Backend::Memory,
        &["--heartbeat-interval-ms", "300", "--drain-timeout-ms", "200"],
    )
    .await;
    let port = mesh.gateway_addr.port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/copilot_client.cjs");
    let mut child = Command::new("node")
        .arg(&script)
        .env("GATEWAY", format!("http://127.0.0.1:{port}"))
        .env("TOKEN", token("browser-user", 600))
        .env("EXPIRED_TOKEN", token("browser-user", -600))
        .env("PLAYWRIGHT_DIR", &dir)
        .env("CHROMIUM", CHROMIUM)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut up = true;
    let verdict = loop {
        let line = tokio::time::timeout(Duration::from_secs(120), out.next_line())
            .await
            .expect("the browser script answers within 2 minutes")
            .unwrap();
        match line.as_deref() {
            Some("STOP") => {
                assert!(up && mesh.stop_gateway(mesh.gateway_addr), "a gateway to stop");
                up = false;
            }
            Some("START") => {
                restart_gateway(&mut mesh, port).await;
                up = true;
            }
            Some(other) => break other.to_owned(),
            None => break "exited".to_owned(),
        }
        stdin.write_all(b"ok\n").await.unwrap();
    };
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the browser script exits")
        .unwrap();
    assert_eq!(
        (verdict.as_str(), status.success()),
        ("DONE", true),
        "see the script's stderr"
    );
    mesh.shutdown().await.unwrap();
}
