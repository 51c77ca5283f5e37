//! The program on a device node (seeds 000 and 002): connects to the hub
//! over WebSocket, signs every frame with the shared secret, runs the hub's
//! COMMANDs on devices through a [`DeviceDriver`] (at most `--slots` at
//! once, never two on one device, each bounded by its timeout), and reports
//! RESULTs, kept until the hub ACKs them and resent after reconnects.
//!
//! `wss://` hub URLs use rustls (ring provider) trusting the webpki roots,
//! plus the PEM certificates of `--hub-ca-file` / `NODE_HUB_CA_FILE` for a
//! private or self-signed hub; see [`AgentConfig::hub_ca_file`].
//!
//! The frame contract is docs/node-protocol.md. This crate never decides
//! which command runs next: the hub schedules, the agent only enforces the
//! slot and device limits and refuses what breaks them.

mod agent;
mod backoff;
pub mod config;
pub mod driver;
mod error;
pub mod frames;
pub use relaymesh_wire::node::ids;
mod outbox;
mod slots;
mod tls;

pub use agent::close;
pub use config::{AgentConfig, DriverKind, NodeSecret};
pub use driver::{AdbDriver, DeviceDriver, Driver, DriverError, SimDriver};
pub use error::AgentError;
pub use frames::{Command, CommandResult, CommandType, ResultStatus};
pub use ids::{CommandId, DeviceSerial, NodeId, RunId};

use tokio_util::sync::CancellationToken;

/// Runs the agent with the driver `--driver` selects until `shutdown` is
/// cancelled (then drains and returns `Ok`) or the hub replaces this node
/// (close 4004: `Err(AgentError::Replaced)`).
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    let driver = Driver::from_config(&config);
    run_with_driver(config, driver, shutdown).await
}

/// [`run`] with a caller-supplied driver.
pub async fn run_with_driver<D: DeviceDriver>(
    config: AgentConfig,
    driver: D,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    agent::Agent::start(config, driver).await?.run(shutdown).await
}
