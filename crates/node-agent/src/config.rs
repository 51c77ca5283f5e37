//! The node agent's configuration: one clap struct, every flag with an
//! environment variable (seed 000's `NODE_ID`, `NODE_SECRET`, `VULTR_URL`
//! plus the agent's own knobs), defaults from seeds 000 and 002.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::ids::NodeId;

/// Environment variable names, next to the struct that reads them.
pub mod env {
    pub const NODE_ID: &str = "NODE_ID";
    pub const HOSTNAME: &str = "HOSTNAME";
    pub const NODE_SECRET: &str = "NODE_SECRET";
    pub const VULTR_URL: &str = "VULTR_URL";
    pub const NODE_HUB_CA_FILE: &str = "NODE_HUB_CA_FILE";
    pub const NODE_SLOTS: &str = "NODE_SLOTS";
    pub const NODE_HEARTBEAT_INTERVAL_MS: &str = "NODE_HEARTBEAT_INTERVAL_MS";
    pub const NODE_TASK_TIMEOUT_MS: &str = "NODE_TASK_TIMEOUT_MS";
    pub const NODE_RESULT_BUFFER: &str = "NODE_RESULT_BUFFER";
    pub const NODE_STATE_DIR: &str = "NODE_STATE_DIR";
    pub const NODE_RECONNECT_MIN_MS: &str = "NODE_RECONNECT_MIN_MS";
    pub const NODE_RECONNECT_MAX_MS: &str = "NODE_RECONNECT_MAX_MS";
    pub const NODE_SHUTDOWN_GRACE_MS: &str = "NODE_SHUTDOWN_GRACE_MS";
    pub const NODE_DRIVER: &str = "NODE_DRIVER";
    pub const ADB_PATH: &str = "ADB_PATH";
    pub const SIM_DEVICES: &str = "SIM_DEVICES";
    pub const SIM_TASK_MS: &str = "SIM_TASK_MS";
    pub const SIM_JITTER_MS: &str = "SIM_JITTER_MS";
    pub const SIM_FAIL_RATE: &str = "SIM_FAIL_RATE";
    pub const SIM_HANG_SERIALS: &str = "SIM_HANG_SERIALS";
}

/// Where the host name is read when neither `NODE_ID` nor `HOSTNAME` is set.
const HOSTNAME_FILE: &str = "/etc/hostname";

/// Which devices the agent drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DriverKind {
    /// Real Android devices through the `adb` command line.
    Adb,
    /// Simulated devices `SIM-0001`…, for tests and load runs.
    Sim,
}

/// The shared secret (base64, or raw UTF-8 as seed 000's Python falls back
/// to). Its `Debug` never shows it, so logging the config is safe.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeSecret(String);

impl NodeSecret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NodeSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeSecret(..)")
    }
}

impl FromStr for NodeSecret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// `relaymesh node-agent` flags.
#[derive(Debug, Clone, Args)]
pub struct AgentConfig {
    /// This node's id (default: the host name, from HOSTNAME or /etc/hostname, else "node").
    #[arg(long, env = env::NODE_ID)]
    pub node_id: Option<String>,
    /// The host name as the environment gives it; only a fallback for --node-id.
    #[arg(long = "agent-hostname", env = env::HOSTNAME, hide = true)]
    pub hostname: Option<String>,
    /// Shared secret for frame signatures (base64, or raw UTF-8).
    #[arg(long, env = env::NODE_SECRET, hide_env_values = true)]
    pub node_secret: NodeSecret,
    /// The hub's WebSocket URL, e.g. wss://hub.example.com/ws/node (or ws:// without TLS).
    #[arg(long, env = env::VULTR_URL)]
    pub vultr_url: String,
    /// PEM file of extra CA certificates to trust for a wss:// hub (a private
    /// hub's CA, or a self-signed hub certificate), on top of the webpki roots.
    #[arg(long, env = env::NODE_HUB_CA_FILE, value_name = "PEM")]
    pub hub_ca_file: Option<PathBuf>,
    /// Commands run at once on this node (seed 002: 20).
    #[arg(long, env = env::NODE_SLOTS, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub slots: u32,
    /// Heartbeat period; the HELLO_ACK's heartbeat_interval_s overrides it.
    #[arg(long, env = env::NODE_HEARTBEAT_INTERVAL_MS, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_interval_ms: u64,
    /// Timeout of a COMMAND that carries no timeout_ms (seed 002: 90 s per task).
    #[arg(long, env = env::NODE_TASK_TIMEOUT_MS, default_value_t = 90_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub task_timeout_ms: u64,
    /// Results kept until the hub ACKs them; when full the oldest is dropped.
    #[arg(long, env = env::NODE_RESULT_BUFFER, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub result_buffer: u32,
    /// Directory where results not yet ACKed are kept (outbox-<node_id>.jsonl),
    /// so they survive a restart of the agent; unset: kept in memory only.
    #[arg(long, env = env::NODE_STATE_DIR, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// First reconnect delay; doubles per failed attempt.
    #[arg(long, env = env::NODE_RECONNECT_MIN_MS, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay.
    #[arg(long, env = env::NODE_RECONNECT_MAX_MS, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub reconnect_max_ms: u64,
    /// On shutdown, how long running commands may finish before they are cut off.
    #[arg(long, env = env::NODE_SHUTDOWN_GRACE_MS, default_value_t = 30_000)]
    pub shutdown_grace_ms: u64,
    /// Device driver.
    #[arg(long, env = env::NODE_DRIVER, value_enum, default_value_t = DriverKind::Sim)]
    pub driver: DriverKind,
    /// The adb executable (adb driver).
    #[arg(long, env = env::ADB_PATH, default_value = "adb")]
    pub adb_path: String,
    /// Number of simulated devices (sim driver).
    #[arg(long, env = env::SIM_DEVICES, default_value_t = 100)]
    pub sim_devices: u32,
    /// Base duration of a simulated command.
    #[arg(long, env = env::SIM_TASK_MS, default_value_t = 200)]
    pub sim_task_ms: u64,
    /// Extra random duration, 0..=jitter, of a simulated command.
    #[arg(long, env = env::SIM_JITTER_MS, default_value_t = 100)]
    pub sim_jitter_ms: u64,
    /// Probability in [0, 1] that a simulated command fails.
    #[arg(long, env = env::SIM_FAIL_RATE, default_value_t = 0.0, value_parser = parse_rate)]
    pub sim_fail_rate: f64,
    /// Comma list of simulated serials whose commands never finish.
    #[arg(long, env = env::SIM_HANG_SERIALS, value_delimiter = ',')]
    pub sim_hang_serials: Vec<String>,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("{rate} is not a probability in [0, 1]"))
    }
}

/// Parses only [`AgentConfig`], for tests and embedding.
#[derive(Debug, clap::Parser)]
#[command(name = "node-agent", args_override_self = true)]
struct AgentCli {
    #[command(flatten)]
    config: AgentConfig,
}

impl AgentConfig {
    /// Parses flags (first item is the program name), falling back to the
    /// environment and the defaults, exactly as the `node-agent` role does.
    pub fn try_parse_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::Parser as _;
        AgentCli::try_parse_from(args).map(|cli| cli.config)
    }

    /// The node id: --node-id, else HOSTNAME, else /etc/hostname, else "node".
    pub fn resolved_node_id(&self) -> NodeId {
        let non_empty = |s: &str| {
            let s = s.trim();
            (!s.is_empty()).then(|| s.to_owned())
        };
        self.node_id
            .as_deref()
            .and_then(non_empty)
            .or_else(|| self.hostname.as_deref().and_then(non_empty))
            .or_else(|| {
                std::fs::read_to_string(HOSTNAME_FILE)
                    .ok()
                    .as_deref()
                    .and_then(non_empty)
            })
            .map_or_else(|| NodeId::from("node"), NodeId::from)
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    pub fn task_timeout(&self) -> Duration {
        Duration::from_millis(self.task_timeout_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<AgentConfig, clap::Error> {
        let mut args = vec![
            "node-agent",
            "--node-secret",
            "c2VjcmV0",
            "--vultr-url",
            "ws://127.0.0.1:1/ws/node",
        ];
        args.extend_from_slice(extra);
        AgentConfig::try_parse_from(args)
    }

    #[test]
    fn defaults_follow_the_seeds() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.slots, 20);
        assert_eq!(c.heartbeat_interval_ms, 30_000);
        assert_eq!(c.task_timeout_ms, 90_000);
        assert_eq!(c.result_buffer, 10_000);
        assert_eq!(c.driver, DriverKind::Sim);
        assert_eq!(c.sim_devices, 100);
        assert_eq!(c.sim_task_ms, 200);
        assert_eq!(c.sim_jitter_ms, 100);
        assert!(c.sim_fail_rate.abs() < f64::EPSILON);
        assert!(c.sim_hang_serials.is_empty());
        assert_eq!(c.state_dir, None);
    }

    #[test]
    fn hub_ca_file_is_optional() {
        assert_eq!(parse(&[]).unwrap().hub_ca_file, None);
        let c = parse(&["--hub-ca-file", "/etc/relaymesh/hub-ca.pem"]).unwrap();
        assert_eq!(c.hub_ca_file, Some(PathBuf::from("/etc/relaymesh/hub-ca.pem")));
    }

    #[test]
    fn hang_serials_are_a_comma_list() {
        let c = parse(&["--sim-hang-serials", "SIM-0001,SIM-0002"]).unwrap();
        assert_eq!(c.sim_hang_serials, ["SIM-0001", "SIM-0002"]);
    }

    #[test]
    fn fail_rate_must_be_a_probability() {
        assert!(parse(&["--sim-fail-rate", "1.5"]).is_err());
        assert!(parse(&["--sim-fail-rate", "0.25"]).is_ok());
    }

    #[test]
    fn zero_slots_are_refused() {
        assert!(parse(&["--slots", "0"]).is_err());
    }

    #[test]
    fn explicit_node_id_wins_over_the_host_name() {
        let c = parse(&["--node-id", "node-A1", "--agent-hostname", "box"]).unwrap();
        assert_eq!(c.resolved_node_id(), NodeId::from("node-A1"));
        let c = parse(&["--node-id", " ", "--agent-hostname", "box"]).unwrap();
        assert_eq!(c.resolved_node_id(), NodeId::from("box"));
    }

    #[test]
    fn the_secret_never_shows_in_debug() {
        let c = parse(&[]).unwrap();
        assert!(!format!("{c:?}").contains("c2VjcmV0"));
    }
}
