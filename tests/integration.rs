#![allow(clippy::unwrap_used)] // a test that cannot set up should panic

//! Integration tests: the mesh on real loopback sockets, port 0, on every
//! shared-state backend under test (memory always, Redis when REDIS_URL, a
//! Redis Cluster when REDIS_CLUSTER_URLS).

mod integration {
    pub mod harness;

    mod auth;
    mod copilot;
    mod copilot_browser;
    mod copilot_connections;
    mod cross_replica;
    mod device_farm;
    mod farm_faults;
    mod faults;
    mod gateway_http;
    mod grpc_api;
    mod jwks;
    mod limits;
    mod livechat_channels;
    mod livechat_media;
    mod livechat_session;
    mod observability;
    mod python_client;
    mod redis_restart;
    mod relay_process;
    mod role_processes;
    mod signal;
    mod signal_webrtc;
    mod ws_machinery;
}
