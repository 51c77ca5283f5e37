//! Artifacts stored through the scheduler's RPC land under seed 002's path
//! convention, `{youtubeVideoId}/{node_id}/{device_serial}/{run_id}/{timestamp}.png`:
//! in the local artifact directory by default, and in an S3-compatible bucket
//! under its prefix when `--artifact-store-url` is set. The bucket is a real
//! S3 server (Python's moto) when moto is installed; CI installs it and sets
//! RELAYMESH_REQUIRE_S3_TEST so the test cannot be skipped there.

#![allow(clippy::unwrap_used)]

mod harness;

use std::process::Stdio;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{Attribute, ObjectStoreExt};
use relaymesh_proto::scheduler::v1::StoreArtifactRequest;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const REQUIRE_S3_TEST: &str = "RELAYMESH_REQUIRE_S3_TEST";
const SEED_PATH: &str = "dQw4w9WgXcQ/node-A1/ABC123/run-1/1739012345.png";
const BUCKET: &str = "relaymesh-artifacts";
/// moto accepts any credentials; they only have to be present, or the S3
/// client would go looking for instance credentials off this machine.
const KEY_ID: &str = "relaymesh-test";
const SECRET: &str = "relaymesh-test-secret";
const REGION: &str = "us-east-1";

fn screenshot(device_serial: &str) -> StoreArtifactRequest {
    StoreArtifactRequest {
        node_id: "node-A1".into(),
        device_serial: device_serial.into(),
        run_id: "run-1".into(),
        youtube_video_id: "dQw4w9WgXcQ".into(),
        timestamp: 1_739_012_345,
        content: b"\x89PNG\r\n\x1a\n not really a picture".to_vec(),
    }
}

#[tokio::test]
async fn artifacts_go_under_the_artifact_dir_by_default() {
    let dir = std::env::temp_dir().join(format!("rm-artifacts-{}", uuid::Uuid::new_v4().simple()));
    let (db, dir_s) = (harness::sqlite_url(), dir.display().to_string());
    let (mut c, stop, task) = harness::start(&["--database-url", &db, "--artifact-dir", &dir_s]).await;

    let path = c.store_artifact(screenshot("ABC123")).await.unwrap().into_inner().path;
    assert_eq!(path, SEED_PATH);
    assert_eq!(std::fs::read(dir.join(&path)).unwrap(), screenshot("ABC123").content);

    let escape = c.store_artifact(screenshot("..")).await.unwrap_err();
    assert_eq!(escape.code(), tonic::Code::InvalidArgument, "{escape:?}");

    stop.cancel();
    task.await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Python's moto serving S3 on a loopback port; killed when dropped.
struct MotoS3 {
    endpoint: String,
    _server: Child,
}

/// Starts moto's S3 server on a port the OS picks, with `BUCKET` created
/// (object_store cannot create buckets), then reports the port and serves
/// until its stdin closes.
const MOTO_SCRIPT: &str = r#"
import logging, sys
import boto3
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
port = server.get_host_and_port()[1]
bucket, key_id, secret, region = sys.argv[1:5]
boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name=region,
             aws_access_key_id=key_id, aws_secret_access_key=secret).create_bucket(Bucket=bucket)
print(port, flush=True)
sys.stdin.read()
"#;

impl MotoS3 {
    /// None, after saying why, when moto is not installed and the test may
    /// be skipped.
    async fn start() -> Option<Self> {
        let installed = Command::new("python3")
            .args(["-c", "import moto.server, boto3"])
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success());
        if !installed {
            assert!(
                std::env::var_os(REQUIRE_S3_TEST).is_none(),
                "{REQUIRE_S3_TEST} is set but python3 cannot import moto: pip install 'moto[server]'"
            );
            eprintln!(
                "SKIPPED artifacts_go_to_the_s3_bucket_under_its_prefix: python3 cannot import moto \
                 (pip install 'moto[server]' to run it; {REQUIRE_S3_TEST}=1 makes this a failure)"
            );
            return None;
        }
        let mut server = Command::new("python3")
            .args(["-c", MOTO_SCRIPT, BUCKET, KEY_ID, SECRET, REGION])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 starts");
        let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
        let port = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("moto reports its port within a minute")
            .unwrap()
            .expect("moto started (see its stderr above)");
        Some(Self {
            endpoint: format!("http://127.0.0.1:{}", port.trim()),
            _server: server,
        })
    }
}

#[tokio::test]
async fn artifacts_go_to_the_s3_bucket_under_its_prefix_when_configured() {
    let Some(s3) = MotoS3::start().await else { return };
    let db = harness::sqlite_url();
    let url = format!("s3://{BUCKET}/farm/eu");
    let (mut c, stop, task) = harness::start(&[
        "--database-url",
        &db,
        "--artifact-store-url",
        &url,
        "--artifact-s3-endpoint",
        &s3.endpoint,
        "--artifact-s3-region",
        REGION,
        "--artifact-s3-access-key-id",
        KEY_ID,
        "--artifact-s3-secret-access-key",
        SECRET,
        "--artifact-s3-allow-http",
    ])
    .await;

    let path = c.store_artifact(screenshot("ABC123")).await.unwrap().into_inner().path;
    assert_eq!(
        path, SEED_PATH,
        "the path is relative to the store's root, without the prefix"
    );

    let bucket = AmazonS3Builder::new()
        .with_bucket_name(BUCKET)
        .with_endpoint(&s3.endpoint)
        .with_region(REGION)
        .with_access_key_id(KEY_ID)
        .with_secret_access_key(SECRET)
        .with_allow_http(true)
        .build()
        .unwrap();
    let stored = bucket.get(&Path::from(format!("farm/eu/{SEED_PATH}"))).await.unwrap();
    assert_eq!(
        stored.attributes.get(&Attribute::ContentType).map(|v| v.as_ref()),
        Some("image/png")
    );
    assert_eq!(stored.bytes().await.unwrap().as_ref(), screenshot("ABC123").content);
    assert!(
        matches!(
            bucket.head(&Path::from(SEED_PATH)).await,
            Err(object_store::Error::NotFound { .. })
        ),
        "nothing is stored outside the prefix"
    );

    stop.cancel();
    task.await.unwrap();
}
