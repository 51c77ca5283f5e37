//! TLS of the mesh's own gRPC, optional. A role process loads it once at
//! start ([`install`], from [`GrpcTlsArgs`]); servers built with
//! `ServeOptions::default()` then serve TLS and channels to `https://` URLs
//! verify the server against the configured CA. `relaymesh up` installs
//! nothing: its services talk over loopback.
//!
//! Mutual TLS (clients proving who they are) is left to a service mesh
//! (Linkerd, Istio), which also rotates the certificates.

use std::sync::OnceLock;

use relaymesh_config::GrpcTlsArgs;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::RpcError;

/// How calls to `https://` services verify them.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// Trusts the configured CA only.
    config: ClientTlsConfig,
    /// Name expected in every server certificate; None: the URL's host.
    server_name: Option<String>,
}

impl ClientTls {
    /// Trust `ca_pem`; expect `server_name` in certificates (None: the host
    /// of the URL dialled).
    pub fn new(ca_pem: &[u8], server_name: Option<String>) -> Self {
        ensure_crypto_provider();
        Self {
            config: ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)),
            server_name,
        }
    }

    /// The TLS settings of a connection to `host` (the name the URL named,
    /// before it was resolved to an address).
    pub(crate) fn for_host(&self, host: &str) -> ClientTlsConfig {
        let name = self.server_name.as_deref().unwrap_or(host);
        self.config.clone().domain_name(name)
    }
}

/// Makes `ring` the process's rustls provider unless one is installed: with
/// more than one provider compiled in (other crates bring aws-lc-rs),
/// rustls cannot pick one by itself and panics on first use.
fn ensure_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// TLS settings of one process.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    pub server: Option<ServerTlsConfig>,
    pub client: Option<ClientTls>,
}

/// The server identity from PEM certificate chain and key.
pub fn server_tls(cert_pem: &[u8], key_pem: &[u8]) -> ServerTlsConfig {
    ensure_crypto_provider();
    ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem))
}

/// Reads the files `args` names.
pub fn load(args: &GrpcTlsArgs) -> Result<TlsSettings, RpcError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|source| RpcError::TlsFile {
            path: path.display().to_string(),
            source,
        })
    };
    let server = match (&args.grpc_tls_cert, &args.grpc_tls_key) {
        (Some(cert), Some(key)) => Some(server_tls(&read(cert)?, &read(key)?)),
        _ => None,
    };
    let client = match &args.grpc_tls_ca {
        Some(ca) => Some(ClientTls::new(&read(ca)?, args.grpc_tls_server_name.clone())),
        None => None,
    };
    Ok(TlsSettings { server, client })
}

static INSTALLED: OnceLock<TlsSettings> = OnceLock::new();

/// Sets this process's TLS settings; the first call wins (a process has
/// one configuration, read once at start).
pub fn install(settings: TlsSettings) {
    if INSTALLED.set(settings).is_err() {
        tracing::warn!("grpc tls settings already installed; keeping the first");
    }
}

pub(crate) fn installed_server() -> Option<ServerTlsConfig> {
    INSTALLED.get().and_then(|s| s.server.clone())
}

pub(crate) fn installed_client() -> Option<ClientTls> {
    INSTALLED.get().and_then(|s| s.client.clone())
}
