//! Fan-out lookups: `SessionRegistry::lookup_many` over N connections (one
//! `MGET`, split by slot on a cluster) against the baselines measured in the
//! same run: N `lookup`s one after another, and N `lookup`s in flight at
//! once. Reported as ratios (the machines are shared and noisy).
//!
//! Runs on every backend configured like the tests: memory, `REDIS_URL`,
//! `REDIS_CLUSTER_URLS`. `cargo bench -p relaymesh-state --bench fanout`;
//! `BENCH_CONNS` (default 1000) and `BENCH_ITERS` (default 20) scale it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use relaymesh_state::{Backend, ConnectionId, SessionEntry, SessionRegistry, SharedState};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

async fn time<F, Fut>(iters: usize, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        let started = Instant::now();
        f().await;
        samples.push(started.elapsed());
    }
    median(samples)
}

#[tokio::main]
async fn main() {
    let (conns, iters) = (env_usize("BENCH_CONNS", 1000), env_usize("BENCH_ITERS", 20));
    let mut backends = vec![Backend::Memory];
    let redis = std::env::var("REDIS_URL").ok();
    let cluster = std::env::var("REDIS_CLUSTER_URLS").ok();
    if let Ok(Backend::Redis(url)) = Backend::from_settings(redis.as_deref(), None) {
        backends.push(Backend::Redis(url));
    }
    if let Ok(Backend::Cluster(seeds)) = Backend::from_settings(None, cluster.as_deref()) {
        backends.push(Backend::Cluster(seeds));
    }
    for backend in backends {
        let prefix = format!("rmbench:{}:", uuid::Uuid::new_v4().simple());
        let state = SharedState::open(&backend, &prefix).await.expect("backend answers");
        let registry = SessionRegistry::new(state.clone(), Duration::from_secs(300));
        let ids: Vec<ConnectionId> = (0..conns).map(|_| ConnectionId::random()).collect();
        for (i, id) in ids.iter().enumerate() {
            let entry = SessionEntry {
                connection_id: id.to_string(),
                gateway_id: format!("gw-{}", i % 3),
                protocol: relaymesh_proto::client::v1::ClientProtocol::Livechat as i32,
                user_id: format!("u{i}"),
                connected_at_ms: 1,
            };
            registry.register(&entry).await.unwrap();
        }
        let many = time(iters, || async {
            let got = registry.lookup_many(&ids).await.unwrap();
            assert!(got.iter().all(Option::is_some));
        })
        .await;
        let sequential = time(iters, || async {
            for id in &ids {
                assert!(registry.lookup(id).await.unwrap().is_some());
            }
        })
        .await;
        let concurrent = time(iters, || async {
            let got = futures_util::future::join_all(ids.iter().map(|id| registry.lookup(id))).await;
            assert!(got.iter().all(|r| matches!(r, Ok(Some(_)))));
        })
        .await;
        println!(
            "fanout {:<14} {conns} conns: lookup_many {:>9.3?} | {conns} sequential lookups {:>9.3?} ({:.1}x) | {conns} concurrent lookups {:>9.3?} ({:.1}x)",
            state.backend_name(),
            many,
            sequential,
            sequential.as_secs_f64() / many.as_secs_f64(),
            concurrent,
            concurrent.as_secs_f64() / many.as_secs_f64(),
        );
    }
}
