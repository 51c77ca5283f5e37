//! One adapter per protocol: parse the frame (`relaymesh-wire`), call the
//! service, answer in the protocol's own frames. Each module holds its
//! protocol's one mapping from a service `Status` to its error frame.

mod copilot;
mod livechat;
mod node;
mod signal;

pub use copilot::CopilotProtocol;
pub use livechat::LivechatProtocol;
pub use node::NodeProtocol;
pub use signal::SignalProtocol;
