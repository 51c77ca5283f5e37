//! Identifier newtypes, so a `run_id` can never be passed where a
//! `device_serial` is expected. On the wire each is a plain JSON string.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }
    };
}

id_newtype!(
    /// This node's id: `node_id` of every frame, both directions.
    NodeId
);
id_newtype!(
    /// The hub's id of one command; the key of deduplication and of ACKs.
    CommandId
);
id_newtype!(
    /// The backend run a command belongs to (seed 002: created by the backend).
    RunId
);
id_newtype!(
    /// An Android device's serial (`adb devices`) or a simulated one (`SIM-0001`).
    DeviceSerial
);
