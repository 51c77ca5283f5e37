//! TLS for `wss://` hub URLs (seed 000: nodes normally reach the hub over
//! WSS). The agent uses rustls with the `ring` crypto provider, named
//! explicitly so it works whatever other rustls providers the process links.
//! It trusts the webpki (Mozilla) roots and, with `--hub-ca-file` /
//! `NODE_HUB_CA_FILE`, also every certificate in that PEM file: a private
//! hub's CA, or a self-signed hub certificate in tests.
//!
//! The client configuration is built once at start-up, so an unreadable or
//! empty CA file stops the agent with [`AgentError::HubCa`] instead of
//! turning into an endless reconnect loop. `ws://` URLs ignore it.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use rustls::{ClientConfig, RootCertStore};
use tokio_tungstenite::Connector;
use tokio_tungstenite::tungstenite;

use crate::error::AgentError;

/// Makes `ring` the process-wide default rustls provider, unless one is
/// installed already (then that one stays; the agent's own connections use
/// `ring` explicitly either way).
pub(crate) fn install_default_provider() {
    // Err only means another provider was installed first: fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The connector for every hub connection: webpki roots plus the
/// certificates in `ca_file`, if any.
pub(crate) fn connector(ca_file: Option<&Path>) -> Result<Connector, AgentError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let extra = read_ca_file(path)?;
        for cert in extra {
            roots
                .add(cert)
                .map_err(|e| hub_ca(path, format!("unusable certificate: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AgentError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Connector::Rustls(Arc::new(config)))
}

/// Every certificate in a PEM file; none at all is an error.
fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, AgentError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| hub_ca(path, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| hub_ca(path, e.to_string()))?;
    if certs.is_empty() {
        return Err(hub_ca(path, "no PEM CERTIFICATE found".into()));
    }
    Ok(certs)
}

fn hub_ca(path: &Path, why: String) -> AgentError {
    AgentError::HubCa {
        path: path.display().to_string(),
        why,
    }
}

/// A failed connect, for the backoff log: TLS failures say so, and an
/// untrusted certificate points at `--hub-ca-file`.
pub(crate) fn describe_connect_error(e: &tungstenite::Error) -> String {
    let tls = match e {
        tungstenite::Error::Io(io) => io.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        _ => None,
    };
    match tls {
        Some(rustls::Error::InvalidCertificate(why)) => format!(
            "TLS handshake failed: hub certificate not trusted ({why}); \
             a private or self-signed hub needs --hub-ca-file"
        ),
        Some(other) => format!("TLS handshake failed: {other}"),
        None => format!("connect failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn webpki_roots_alone_build_a_connector() {
        assert!(matches!(connector(None).unwrap(), Connector::Rustls(_)));
    }

    #[test]
    fn a_missing_ca_file_is_a_hub_ca_error() {
        let Err(err) = connector(Some(Path::new("/nonexistent/hub-ca.pem"))) else {
            panic!("a missing CA file must be refused");
        };
        assert!(matches!(err, AgentError::HubCa { .. }), "{err:?}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let path = std::env::temp_dir().join(format!("relaymesh-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&path, "not a certificate\n").unwrap();
        let result = connector(Some(&path));
        let _ = std::fs::remove_file(&path);
        let Err(err) = result else {
            panic!("a CA file without certificates must be refused");
        };
        assert!(err.to_string().contains("no PEM CERTIFICATE"), "{err}");
    }

    #[test]
    fn untrusted_certificates_point_at_the_flag() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let text = describe_connect_error(&tungstenite::Error::Io(io));
        assert!(text.contains("--hub-ca-file"), "{text}");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(describe_connect_error(&tungstenite::Error::Io(refused)).starts_with("connect failed"));
    }
}
