use std::fmt;

/// One WebSocket connection, unique across every gateway replica.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(String);

/// One gateway replica; the topic its delivery inbox listens on is named
/// after it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GatewayId(String);

macro_rules! string_id {
    ($t:ty) => {
        impl $t {
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
string_id!(ConnectionId);
string_id!(GatewayId);

impl ConnectionId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }
}

impl GatewayId {
    /// A fresh random id, for a replica that was given none.
    pub fn random() -> Self {
        Self(format!("gw-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]))
    }
}
