//! ICE servers for players: STUN URLs as configured, and TURN with
//! time-limited credentials in coturn's REST form (`use-auth-secret`):
//! username `expiry:player`, password base64(HMAC-SHA1(secret, username)).
//! coturn checks the same HMAC with its `static-auth-secret` and refuses
//! the username once `expiry` (Unix seconds) has passed.

use base64::Engine;
use hmac::{Hmac, Mac};
use relaymesh_proto::client::v1::IceServer;
use sha1::Sha1;

/// The ICE servers one player is told, and when their TURN credentials end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceServers {
    pub servers: Vec<IceServer>,
    /// Unix seconds; 0 without TURN.
    pub expire_at: i64,
}

/// A TURN REST credential for `user` that expires at `expire_at` (Unix s).
pub fn turn_credential(secret: &str, user: &str, expire_at: i64) -> (String, String) {
    let username = format!("{expire_at}:{user}");
    // HMAC accepts keys of any length: `new_from_slice` cannot fail here.
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    let credential = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, credential)
}

/// The ICE servers for `user` at `now` (Unix s).
pub fn ice_servers(config: &crate::IceConfig, user: &str, now: i64) -> IceServers {
    let mut servers = Vec::new();
    if !config.stun_urls.is_empty() {
        servers.push(IceServer {
            urls: config.stun_urls.clone(),
            ..IceServer::default()
        });
    }
    let mut expire_at = 0;
    if let Some(secret) = config.turn_secret.as_deref().filter(|_| !config.turn_urls.is_empty()) {
        expire_at = now + i64::try_from(config.turn_ttl_secs).unwrap_or(i64::MAX / 2);
        let (username, credential) = turn_credential(secret, user, expire_at);
        servers.push(IceServer {
            urls: config.turn_urls.clone(),
            username,
            credential,
        });
    }
    IceServers { servers, expire_at }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_is_coturns_rest_form() {
        // Computed independently: printf '1700000000:alice' | openssl dgst -sha1 -hmac s3cret -binary | base64
        let (user, pass) = turn_credential("s3cret", "alice", 1_700_000_000);
        assert_eq!(user, "1700000000:alice");
        assert_eq!(pass, "TtElzSjT0GdnTQ9xdcRNxx96yQs=");
    }
}
