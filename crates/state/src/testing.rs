//! Helpers for tests that must run on every backend: memory always, Redis
//! too when `REDIS_URL` is set (CI sets it). A `REDIS_URL` that does not
//! answer fails the test rather than quietly testing memory alone.

use crate::SharedState;

/// A key prefix no other test uses, so tests can share one Redis.
pub fn unique_prefix(test: &str) -> String {
    format!("rmtest:{test}:{}:", uuid::Uuid::new_v4().simple())
}

/// The Redis URL tests should use, if any.
pub fn redis_url() -> Option<String> {
    std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty())
}

/// One state per backend under test, each under a fresh prefix.
pub async fn backends(test: &str) -> Vec<SharedState> {
    let mut out = vec![SharedState::memory()];
    if let Some(url) = redis_url() {
        match SharedState::connect(Some(&url), &unique_prefix(test)).await {
            Ok(state) => out.push(state),
            Err(err) => panic!("REDIS_URL={url} is set but Redis does not answer: {err}"),
        }
    }
    out
}
