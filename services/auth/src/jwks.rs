//! The RS256/ES256 keys user tokens are checked against, by `kid`: those of
//! `JWKS_FILE`, read once, and those of `JWKS_URL`, fetched over HTTP(S)
//! and kept fresh, so an identity provider's key rotation (Keycloak's) needs
//! no restart.
//!
//! A fetched set replaces the previous one whole (a key the provider
//! removed stops verifying); a failed fetch keeps the last good set. A
//! token naming an unknown `kid` triggers one fetch, at most once per
//! cooldown: a forged `kid` must not turn every request into a call to the
//! identity provider. Never logs a token.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{AuthConfig, AuthError};

/// How long one fetch of `JWKS_URL` may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest JWKS document accepted (a realm has a handful of keys).
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// One usable key: its decoding form, and the algorithm the provider bound
/// it to, if any.
#[derive(Clone)]
pub(crate) struct KeyEntry {
    pub key: DecodingKey,
    pub alg: Option<KeyAlgorithm>,
}

type KeyMap = HashMap<String, KeyEntry>;

/// The keys of `JWKS_FILE` and `JWKS_URL`, looked up by `kid`.
pub struct JwksKeys {
    file: KeyMap,
    /// The last set fetched from `JWKS_URL`. Swapped whole; never held
    /// across an `.await`.
    fetched: RwLock<Arc<KeyMap>>,
    remote: Option<RemoteJwks>,
}

struct RemoteJwks {
    url: String,
    client: reqwest::Client,
    every: Duration,
    cooldown: Duration,
    /// When the last fetch for an unknown `kid` started. An async mutex on
    /// purpose: it is held for that fetch, so a burst of tokens signed with
    /// a freshly rotated key waits for one fetch instead of each starting
    /// its own (single flight).
    last_on_demand: tokio::sync::Mutex<Option<Instant>>,
}

impl JwksKeys {
    pub fn new(config: &AuthConfig) -> Result<Self, AuthError> {
        let file = match &config.jwks_file {
            None => KeyMap::new(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| AuthError::Config(format!("JWKS_FILE {}: {e}", path.display())))?;
                key_map(&text).map_err(|e| AuthError::Config(format!("JWKS_FILE {}: {e}", path.display())))?
            }
        };
        let remote = match config.jwks_url.as_deref().filter(|u| !u.is_empty()) {
            None => None,
            Some(url) => Some(RemoteJwks {
                url: url.to_owned(),
                client: http_client(url, config.jwks_ca_file.as_deref())?,
                every: Duration::from_secs(config.jwks_refresh_secs.max(1)),
                cooldown: Duration::from_millis(config.jwks_refetch_cooldown_ms),
                last_on_demand: tokio::sync::Mutex::new(None),
            }),
        };
        Ok(Self {
            file,
            fetched: RwLock::new(Arc::new(KeyMap::new())),
            remote,
        })
    }

    /// The key for `kid`; fetches `JWKS_URL` once when it is unknown and
    /// the cooldown allows.
    pub(crate) async fn find(&self, kid: &str) -> Result<KeyEntry, AuthError> {
        if let Some(entry) = self.cached(kid) {
            return Ok(entry);
        }
        if let Some(remote) = &self.remote {
            let mut last = remote.last_on_demand.lock().await;
            // Another caller may have fetched it while this one waited.
            if let Some(entry) = self.cached(kid) {
                return Ok(entry);
            }
            if last.is_none_or(|at| at.elapsed() >= remote.cooldown) {
                *last = Some(Instant::now());
                tracing::info!(kid, "unknown kid: fetching the JWKS again");
                self.fetch(remote, "unknown_kid").await;
            } else {
                metrics::counter!("relaymesh_auth_jwks_refetch_suppressed_total").increment(1);
            }
        }
        self.cached(kid).ok_or_else(|| AuthError::NoKey(format!("kid {kid}")))
    }

    fn cached(&self, kid: &str) -> Option<KeyEntry> {
        if let Some(entry) = self.file.get(kid) {
            return Some(entry.clone());
        }
        let fetched = self.fetched.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        fetched.get(kid).cloned()
    }

    /// The background refresh: fetches `JWKS_URL` now and every
    /// `JWKS_REFRESH_SECS` until `stop`. None without a `JWKS_URL`.
    pub fn refresh_task(
        self: &Arc<Self>,
        stop: CancellationToken,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        self.remote.as_ref()?;
        let keys = Arc::clone(self);
        Some(async move {
            let Some(remote) = &keys.remote else { return };
            loop {
                keys.fetch(remote, "scheduled").await;
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(remote.every) => {}
                }
            }
        })
    }

    /// Fetches the set and swaps it in; on failure keeps the last good set.
    async fn fetch(&self, remote: &RemoteJwks, why: &'static str) {
        match fetch_key_map(remote).await {
            Ok(keys) => {
                metrics::counter!("relaymesh_auth_jwks_fetches_total", "trigger" => why, "result" => "ok").increment(1);
                tracing::debug!(keys = keys.len(), trigger = why, "jwks fetched");
                *self.fetched.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
            }
            Err(err) => {
                metrics::counter!("relaymesh_auth_jwks_fetches_total", "trigger" => why, "result" => "error")
                    .increment(1);
                tracing::warn!(url = %remote.url, error = %err, "jwks fetch failed; keeping the last good keys");
            }
        }
    }
}

async fn fetch_key_map(remote: &RemoteJwks) -> Result<KeyMap, String> {
    let response = remote
        .client
        .get(&remote.url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("request: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    if response.content_length().is_some_and(|n| n > MAX_JWKS_BYTES as u64) {
        return Err("document too large".into());
    }
    let body = response.bytes().await.map_err(|e| format!("body: {e}"))?;
    if body.len() > MAX_JWKS_BYTES {
        return Err("document too large".into());
    }
    let text = std::str::from_utf8(&body).map_err(|_| "document is not UTF-8".to_owned())?;
    key_map(text)
}

/// The usable keys of a JWKS document. Keys without a `kid` or of a kind
/// jsonwebtoken cannot verify with are skipped, not fatal: providers
/// publish encryption keys beside signing keys.
fn key_map(text: &str) -> Result<KeyMap, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("not a JWKS: {e}"))?;
    Ok(set.keys.iter().filter_map(entry).collect())
}

fn entry(jwk: &Jwk) -> Option<(String, KeyEntry)> {
    let kid = jwk.common.key_id.clone()?;
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some((
        kid,
        KeyEntry {
            key,
            alg: jwk.common.key_algorithm,
        },
    ))
}

/// An HTTP client with rustls on the `ring` provider, trusting the webpki
/// roots plus the certificates of `ca_file`.
fn http_client(url: &str, ca_file: Option<&Path>) -> Result<reqwest::Client, AuthError> {
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(AuthError::Config(format!("JWKS_URL {url:?} is not http(s)://")));
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let bad = |why: String| AuthError::Config(format!("JWKS_CA_FILE {}: {why}", path.display()));
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no PEM CERTIFICATE found".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| AuthError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(FETCH_TIMEOUT)
        .build()
        .map_err(|e| AuthError::Config(format!("JWKS_URL client: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn keys_without_kid_or_unusable_are_skipped() {
        let doc = r#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0"},
            {"kty":"EC","kid":"bad","crv":"P-256","x":"!!","y":"!!"},
            {"kty":"RSA","kid":"r1","alg":"RS256","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}
        ]}"#;
        let keys = key_map(doc).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), ["r1"]);
        assert_eq!(keys["r1"].alg, Some(KeyAlgorithm::RS256));
    }

    #[test]
    fn a_document_that_is_not_a_jwks_is_an_error() {
        assert!(key_map("{\"keys\": 3}").is_err());
        assert!(key_map("[]").is_err());
    }

    #[test]
    fn only_http_urls_are_accepted() {
        assert!(http_client("ftp://idp/certs", None).is_err());
        assert!(http_client("https://idp/certs", None).is_ok());
        assert!(http_client("https://idp/certs", Some(Path::new("/nonexistent.pem"))).is_err());
    }
}
