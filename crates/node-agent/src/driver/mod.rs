//! How commands reach devices. The agent only sees [`DeviceDriver`]: list
//! the devices, run one command on one device. Timeouts, slots and the
//! one-command-per-device rule are the agent's job, never a driver's; a
//! driver future may be dropped at any point (timeout, shutdown) and must
//! leave nothing running behind when it is.

pub mod adb;
pub mod sim;

use std::future::Future;

use serde_json::Value;

use crate::config::{AgentConfig, DriverKind};
use crate::frames::Command;
use crate::ids::DeviceSerial;

pub use adb::AdbDriver;
pub use sim::SimDriver;

/// Why a driver could not list devices or run a command. Its `Display` is
/// what a FAILED `RESULT` carries as `error`.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("adb executable {path:?} not found; install Android platform-tools or set ADB_PATH")]
    AdbMissing { path: String },
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` exited with {status}: {stderr}")]
    Exit {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("unknown device {0}")]
    UnknownDevice(DeviceSerial),
    #[error("command type {0} is not supported by this driver")]
    Unsupported(String),
    #[error("invalid params for {command_type}: {why}")]
    InvalidParams { command_type: String, why: String },
    #[error("{0}")]
    Failed(String),
}

/// A way to run commands on devices.
///
/// `run` returns the `result` object of a SUCCESS `RESULT`.
pub trait DeviceDriver: Send + Sync + 'static {
    /// The serials of the devices this node can drive now.
    fn devices(&self) -> impl Future<Output = Result<Vec<DeviceSerial>, DriverError>> + Send;

    /// Runs `command` on `serial` until it ends. Dropping the future
    /// abandons the command.
    fn run(&self, serial: &DeviceSerial, command: &Command) -> impl Future<Output = Result<Value, DriverError>> + Send;
}

/// The driver chosen by `--driver`.
#[derive(Debug, Clone)]
pub enum Driver {
    Sim(SimDriver),
    Adb(AdbDriver),
}

impl Driver {
    pub fn from_config(config: &AgentConfig) -> Self {
        match config.driver {
            DriverKind::Sim => Self::Sim(SimDriver::from_config(config)),
            DriverKind::Adb => Self::Adb(AdbDriver::new(config.adb_path.clone())),
        }
    }
}

impl DeviceDriver for Driver {
    async fn devices(&self) -> Result<Vec<DeviceSerial>, DriverError> {
        match self {
            Self::Sim(d) => d.devices().await,
            Self::Adb(d) => d.devices().await,
        }
    }

    async fn run(&self, serial: &DeviceSerial, command: &Command) -> Result<Value, DriverError> {
        match self {
            Self::Sim(d) => d.run(serial, command).await,
            Self::Adb(d) => d.run(serial, command).await,
        }
    }
}
