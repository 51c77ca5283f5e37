//! Why the agent stopped. Connection trouble is never here: the agent
//! retries that forever; these are the reasons it gives up.

use crate::driver::DriverError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The hub closed with 4004: another agent registered with our
    /// NODE_ID. Reconnecting would only knock that one off in turn.
    #[error("replaced by another agent with node id {node_id} (close 4004)")]
    Replaced { node_id: String },
    /// The driver could not list devices at start-up (e.g. adb missing).
    #[error("device driver unavailable: {0}")]
    Driver(#[from] DriverError),
    #[error("invalid hub url {url:?}: {why}")]
    InvalidUrl { url: String, why: String },
    /// `--hub-ca-file` could not be read or holds no usable certificate.
    #[error("hub CA file {path:?}: {why}")]
    HubCa { path: String, why: String },
    /// `--state-dir` cannot hold the result outbox.
    #[error(transparent)]
    Outbox(#[from] crate::outbox::OutboxFileError),
    /// The TLS client configuration could not be built.
    #[error("TLS setup failed: {0}")]
    Tls(String),
}
