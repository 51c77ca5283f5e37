//! Node frame authentication material (seed 000), shared by the auth service
//! (which verifies) and the node agent and gateway (which sign): the bytes a
//! frame's HMAC covers, computed byte for byte as the seed's Python does
//! ([`canonical`]), the HMAC-SHA256 signature itself ([`signature`]), and
//! the frame timestamps the replay window reads ([`timestamp`]).
//!
//! It knows nothing else about node frames: their payloads and types live
//! in `relaymesh-wire`, which only the gateway and the agent use.

pub mod canonical;
pub mod signature;
pub mod timestamp;

pub use canonical::{CanonicalError, CanonicalFrame};
pub use signature::{NodeKey, SignatureError};
pub use timestamp::{parse_rfc3339_ms, rfc3339_millis, rfc3339_millis_now};
