//! Test helpers (feature `testing`): signing keys that publish themselves
//! as JWKs, and a JWKS endpoint over HTTP or HTTPS whose key set a test
//! rotates while the service runs, counting every fetch.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_util::sync::CancellationToken;

/// Two fixed RSA keys: generating RSA keys in a debug build takes seconds.
const RSA_KEYS: [&str; 2] = [include_str!("rsa-1.pem"), include_str!("rsa-2.pem")];

/// A private key that signs tokens with its `kid` and publishes its JWK.
pub struct SigningKey {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Jwk,
}

impl SigningKey {
    /// An RS256 key (`which` is 0 or 1: two distinct fixed keys).
    pub fn rs256(kid: &str, which: usize) -> Self {
        let key = EncodingKey::from_rsa_pem(RSA_KEYS[which].as_bytes()).unwrap();
        Self::new(kid, Algorithm::RS256, key)
    }

    /// A fresh ES256 (P-256) key.
    pub fn es256(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        Self::new(kid, Algorithm::ES256, key)
    }

    fn new(kid: &str, alg: Algorithm, key: EncodingKey) -> Self {
        let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        Self {
            kid: kid.to_owned(),
            alg,
            key,
            jwk,
        }
    }

    /// The same key published under another `kid` (a token naming that kid
    /// is signed by this key).
    pub fn with_kid(&self, kid: &str) -> Self {
        let mut jwk = self.jwk.clone();
        jwk.common.key_id = Some(kid.to_owned());
        Self {
            kid: kid.to_owned(),
            alg: self.alg,
            key: self.key.clone(),
            jwk,
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// A token with `claims`, signed by this key, naming its `kid`.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }

    /// A token for `user` valid for a minute, with `extra` claims merged in.
    pub fn token(&self, user: &str, extra: serde_json::Value) -> String {
        let now = chrono::Utc::now().timestamp_millis() / 1000;
        let mut claims = serde_json::json!({"sub": user, "iat": now, "exp": now + 60});
        if let (Some(map), serde_json::Value::Object(more)) = (claims.as_object_mut(), extra) {
            map.extend(more);
        }
        self.sign(&claims)
    }
}

/// A JWKS endpoint on loopback: `GET` of any path answers the current set.
pub struct JwksServer {
    url: String,
    body: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
    ca_file: Option<PathBuf>,
    stop: CancellationToken,
}

impl JwksServer {
    /// Over plain HTTP.
    pub async fn http(keys: &[&SigningKey]) -> Self {
        Self::start(keys, false).await
    }

    /// Over HTTPS with a fresh self-signed certificate for 127.0.0.1; its
    /// PEM is in [`JwksServer::ca_file`], for `JWKS_CA_FILE`.
    pub async fn https(keys: &[&SigningKey]) -> Self {
        Self::start(keys, true).await
    }

    async fn start(keys: &[&SigningKey], tls: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (acceptor, ca_file) = if tls {
            let rcgen::CertifiedKey { cert, signing_key } =
                rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(signing_key.serialize_der()));
            let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
            let config = ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert.der().clone()], key)
                .unwrap();
            let path = std::env::temp_dir().join(format!("relaymesh-jwks-ca-{}-{port}.pem", std::process::id()));
            std::fs::write(&path, cert.pem()).unwrap();
            (Some(TlsAcceptor::from(Arc::new(config))), Some(path))
        } else {
            (None, None)
        };
        let scheme = if tls { "https" } else { "http" };
        let server = Self {
            url: format!("{scheme}://127.0.0.1:{port}/realms/test/protocol/openid-connect/certs"),
            body: Arc::new(Mutex::new(String::new())),
            fetches: Arc::new(AtomicUsize::new(0)),
            ca_file,
            stop: CancellationToken::new(),
        };
        server.publish(keys);
        let (body, fetches, stop) = (server.body.clone(), server.fetches.clone(), server.stop.clone());
        tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let tcp = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(_) => continue,
                    },
                };
                let (body, fetches, acceptor) = (body.clone(), fetches.clone(), acceptor.clone());
                conns.spawn(async move {
                    match acceptor {
                        None => answer(tcp, &body, &fetches).await,
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                answer(tls, &body, &fetches).await;
                            }
                        }
                    }
                });
            }
        });
        server
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The certificate to trust (HTTPS servers only).
    pub fn ca_file(&self) -> Option<&std::path::Path> {
        self.ca_file.as_deref()
    }

    /// Replaces the published set (a key rotation).
    pub fn publish(&self, keys: &[&SigningKey]) {
        let set = JwkSet {
            keys: keys.iter().map(|k| k.jwk.clone()).collect(),
        };
        *self.body.lock().unwrap() = serde_json::to_string(&set).unwrap();
    }

    /// How many documents were served.
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` documents were served (panics after 10 s).
    pub async fn wait_fetches(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.fetches() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "JWKS fetched {} times, expected {n}",
                self.fetches()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(path) = &self.ca_file {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Reads one request head and answers the current document, then closes.
async fn answer(mut io: impl AsyncRead + AsyncWrite + Unpin, body: &Mutex<String>, fetches: &AtomicUsize) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 16 * 1024 {
            return;
        }
    }
    let doc = body.lock().unwrap().clone();
    fetches.fetch_add(1, Ordering::SeqCst);
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{doc}",
        doc.len()
    );
    let _ = io.write_all(response.as_bytes()).await;
    let _ = io.shutdown().await;
}
