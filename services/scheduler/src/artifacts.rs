//! Where device-farm artifacts (screenshots) are kept: a directory on the
//! local filesystem by default, or an S3-compatible bucket (AWS S3, MinIO,
//! Cloudflare R2, Supabase storage) when `--artifact-store-url` is set.
//!
//! Both go through `object_store`, so an upload is either whole or absent: a
//! reader never sees half a PNG. This module stores bytes under a key; the
//! key's shape (seed 002's path convention) is the caller's business, and it
//! must never invent or rewrite one.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{Attribute, Attributes, ObjectStore, PutOptions, PutPayload, RetryConfig};

use crate::error::{Result, SchedulerError};

/// Flags choosing and reaching the artifact store.
#[derive(Debug, Clone, clap::Args)]
pub struct ArtifactConfig {
    /// Local directory artifacts are stored under when no --artifact-store-url is set.
    #[arg(long = "artifact-dir", env = "ARTIFACT_DIR", default_value = "artifacts")]
    pub dir: String,

    /// Object store for artifacts instead of --artifact-dir: s3://bucket[/prefix].
    /// Other AWS_* variables (AWS_SESSION_TOKEN, AWS_ENDPOINT, ...) are honoured too.
    #[arg(long = "artifact-store-url", env = "ARTIFACT_STORE_URL")]
    pub store_url: Option<String>,

    /// S3 endpoint for a non-AWS store (MinIO, R2, Supabase); AWS's when unset.
    #[arg(long = "artifact-s3-endpoint", env = "AWS_ENDPOINT_URL")]
    pub s3_endpoint: Option<String>,

    /// S3 region.
    #[arg(long = "artifact-s3-region", env = "AWS_REGION")]
    pub s3_region: Option<String>,

    /// S3 access key id; without one the AWS credential chain is used.
    #[arg(
        long = "artifact-s3-access-key-id",
        env = "AWS_ACCESS_KEY_ID",
        hide_env_values = true
    )]
    pub s3_access_key_id: Option<String>,

    #[arg(
        long = "artifact-s3-secret-access-key",
        env = "AWS_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    pub s3_secret_access_key: Option<String>,

    /// Allow a plain-http endpoint (a local MinIO); refused otherwise.
    #[arg(
        long = "artifact-s3-allow-http",
        env = "AWS_ALLOW_HTTP",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub s3_allow_http: bool,
}

/// The artifact store chosen at start.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    /// Rooted at the artifact directory or the bucket's prefix, so keys are
    /// the relative paths the RPC answers with.
    store: Arc<dyn ObjectStore>,
    /// Sent with every object; empty for the local filesystem, which
    /// refuses attributes rather than ignoring them.
    attributes: Attributes,
    /// Where artifacts go, for logs: a directory or `s3://bucket/prefix`.
    location: String,
}

/// A bucket and key prefix from `s3://bucket[/prefix]`.
#[derive(Debug, PartialEq, Eq)]
struct S3Url<'a> {
    bucket: &'a str,
    prefix: &'a str,
}

impl<'a> S3Url<'a> {
    fn parse(url: &'a str) -> Result<Self> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            SchedulerError::Artifact(format!("artifact store url {url:?} is not s3://bucket[/prefix]"))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(SchedulerError::Artifact(format!(
                "artifact store url {url:?} names no bucket"
            )));
        }
        Ok(Self {
            bucket,
            prefix: prefix.trim_matches('/'),
        })
    }
}

/// `path` without `.` and `..` components, which object store paths refuse;
/// resolved by name, as a shell's `cd ..` would, since the directory may not
/// exist yet.
fn lexically_normal(path: &std::path::Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn artifact_error(e: impl std::fmt::Display) -> SchedulerError {
    SchedulerError::Artifact(e.to_string())
}

impl ArtifactStore {
    /// The store `config` names: the bucket of `store_url` when set, else `dir`.
    pub fn from_config(config: &ArtifactConfig) -> Result<Self> {
        match config.store_url.as_deref().filter(|u| !u.is_empty()) {
            None => Self::local(&config.dir),
            Some(url) => Self::s3(url, config),
        }
    }

    /// Artifacts under directory `dir`, created on the first upload (not
    /// here, so a scheduler that never stores one leaves no directory behind).
    pub fn local(dir: &str) -> Result<Self> {
        let abs = lexically_normal(&std::path::absolute(dir).map_err(artifact_error)?);
        let root = Path::from_absolute_path(&abs).map_err(artifact_error)?;
        Ok(Self {
            store: Arc::new(PrefixStore::new(LocalFileSystem::new(), root)),
            attributes: Attributes::new(),
            location: abs.display().to_string(),
        })
    }

    /// Artifacts in the bucket of `url` (`s3://bucket[/prefix]`), reached
    /// with the AWS_* environment overridden by the flags in `config`.
    pub fn s3(url: &str, config: &ArtifactConfig) -> Result<Self> {
        let parsed = S3Url::parse(url)?;
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(parsed.bucket)
            // A node gives up on an upload after 30 s (seed 002): retrying for
            // longer than that only holds the RPC open for nobody.
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(15),
                ..RetryConfig::default()
            });
        if let Some(endpoint) = &config.s3_endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &config.s3_region {
            builder = builder.with_region(region);
        }
        if let Some(key) = &config.s3_access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &config.s3_secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        if config.s3_allow_http {
            builder = builder.with_allow_http(true);
        }
        let s3 = builder.build().map_err(artifact_error)?;
        let store: Arc<dyn ObjectStore> = if parsed.prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(PrefixStore::new(
                s3,
                Path::parse(parsed.prefix).map_err(artifact_error)?,
            ))
        };
        Ok(Self {
            store,
            attributes: Attributes::from_iter([(Attribute::ContentType, "image/png")]),
            location: format!("s3://{}/{}", parsed.bucket, parsed.prefix),
        })
    }

    /// Where artifacts go, for logs.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Stores `png` at `key` (relative to the store's root), replacing any
    /// artifact already there.
    pub async fn put_png(&self, key: &Path, png: Vec<u8>) -> Result<()> {
        let opts = PutOptions {
            attributes: self.attributes.clone(),
            ..PutOptions::default()
        };
        self.store
            .put_opts(key, PutPayload::from(png), opts)
            .await
            .map_err(artifact_error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn s3_urls_name_a_bucket_and_an_optional_prefix() {
        assert_eq!(
            S3Url::parse("s3://shots").unwrap(),
            S3Url {
                bucket: "shots",
                prefix: ""
            }
        );
        assert_eq!(
            S3Url::parse("s3://shots/farm/eu/").unwrap(),
            S3Url {
                bucket: "shots",
                prefix: "farm/eu"
            }
        );
        for bad in ["shots", "gs://shots/x", "s3://", "s3:///x", "file:///tmp"] {
            assert!(S3Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn the_local_store_writes_the_file_under_the_artifact_dir() {
        let dir = std::env::temp_dir().join(format!("rm-art-{}", uuid::Uuid::new_v4().simple()));
        let store = ArtifactStore::local(dir.to_str().unwrap()).unwrap();
        assert!(!dir.exists(), "nothing is created before the first upload");
        let key = Path::from_iter(["v", "node-1", "ABC", "run-1", "17.png"]);
        store.put_png(&key, b"png-1".to_vec()).await.unwrap();
        store.put_png(&key, b"png-2".to_vec()).await.unwrap();
        let file = dir.join("v/node-1/ABC/run-1/17.png");
        assert_eq!(
            std::fs::read(&file).unwrap(),
            b"png-2",
            "a resent upload replaces the first"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_relative_dir_is_resolved_against_the_working_directory() {
        let store = ArtifactStore::local("artifacts").unwrap();
        let want = std::env::current_dir().unwrap().join("artifacts");
        assert_eq!(store.location(), want.display().to_string());
        let up = ArtifactStore::local("../x/./artifacts").unwrap();
        let want = std::env::current_dir().unwrap().parent().unwrap().join("x/artifacts");
        assert_eq!(up.location(), want.display().to_string());
    }
}
