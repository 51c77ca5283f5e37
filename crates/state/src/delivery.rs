//! Delivery of frames and closes to a connection held by any gateway replica.
//!
//! A producer (a service, or a gateway acting for another connection) looks
//! the connection up in the registry and publishes an [`Envelope`] on the
//! topic of the replica holding it; that replica's [`GatewayInbox`] hands it
//! to the socket. Delivery is at most once: state that must not be lost
//! (device commands) is kept by its service and re-sent, not by this path.

use bytes::Bytes;
use prost::Message;

use crate::{
    Body, ConnectionId, Envelope, GatewayId, Result, SessionEntry, SessionRegistry, SharedState, Subscription,
};

#[derive(Clone, Debug)]
pub struct Delivery {
    state: SharedState,
    registry: SessionRegistry,
}

fn inbox_topic(gateway: &str) -> String {
    format!("gw:{gateway}")
}

impl Delivery {
    pub fn new(state: SharedState, registry: SessionRegistry) -> Self {
        Self { state, registry }
    }

    pub fn registry(&self) -> &SessionRegistry {
        &self.registry
    }

    /// Sends `envelope` to the replica holding `entry`'s connection.
    pub async fn send_to_session(&self, entry: &SessionEntry, mut envelope: Envelope) -> Result<()> {
        envelope.connection_id.clone_from(&entry.connection_id);
        self.state
            .publish(&inbox_topic(&entry.gateway_id), Bytes::from(envelope.encode_to_vec()))
            .await
    }

    /// Sends `envelope` to one connection; false when no replica holds it.
    pub async fn send_to_connection(&self, conn: &ConnectionId, envelope: Envelope) -> Result<bool> {
        let Some(entry) = self.registry.lookup(conn).await? else {
            return Ok(false);
        };
        self.send_to_session(&entry, envelope).await?;
        Ok(true)
    }

    /// Sends `envelope` to every connection of `user` on `protocol`; returns
    /// how many connections it was sent to.
    pub async fn send_to_user(&self, protocol: &str, user: &str, envelope: &Envelope) -> Result<usize> {
        let sessions = self.registry.sessions_of(protocol, user).await?;
        for entry in &sessions {
            self.send_to_session(entry, envelope.clone()).await?;
        }
        Ok(sessions.len())
    }

    /// The inbox of gateway replica `gateway`: live when this returns.
    pub async fn inbox(&self, gateway: &GatewayId) -> Result<GatewayInbox> {
        Ok(GatewayInbox {
            sub: self.state.subscribe(&inbox_topic(gateway.as_str())).await?,
        })
    }
}

/// An envelope carrying one text frame.
pub fn text_envelope(text: impl Into<String>, droppable: bool) -> Envelope {
    Envelope {
        body: Some(Body::Text(text.into())),
        droppable,
        ..Envelope::default()
    }
}

/// An envelope asking the holding gateway to close the connection.
pub fn close_envelope(code: u16, reason: impl Into<String>) -> Envelope {
    Envelope {
        body: Some(Body::Close(crate::Close {
            code: u32::from(code),
            reason: reason.into(),
        })),
        ..Envelope::default()
    }
}

/// An envelope telling the connection's protocol adapter to pull what a
/// service has for it.
pub fn nudge_envelope(reason: impl Into<String>) -> Envelope {
    Envelope {
        body: Some(Body::Nudge(crate::Nudge { reason: reason.into() })),
        droppable: true,
        ..Envelope::default()
    }
}

/// Envelopes addressed to one gateway replica.
pub struct GatewayInbox {
    sub: Subscription,
}

impl GatewayInbox {
    /// The next envelope; None when the backend is gone. Undecodable
    /// messages are skipped and counted.
    pub async fn recv(&mut self) -> Option<Envelope> {
        loop {
            let bytes = self.sub.recv().await?;
            match Envelope::decode(bytes) {
                Ok(env) => return Some(env),
                Err(_) => metrics::counter!("delivery_envelopes_corrupt_total").increment(1),
            }
        }
    }
}
