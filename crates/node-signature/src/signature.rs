//! HMAC-SHA256 signatures of node frames (seed 000), shared by the auth
//! service and the node agent so both sides compute the same bytes.
//!
//! The key is `NODE_SHARED_SECRET` as the seed's Python reads it:
//! `base64.b64decode(secret)`, or the secret's UTF-8 bytes when that raises.
//! The MAC covers [`CanonicalFrame::signed_bytes`]; the signature is its
//! lowercase hex. Comparison is constant-time. Nothing here logs or formats
//! key material.

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::canonical::{CanonicalError, CanonicalFrame};

type HmacSha256 = Hmac<Sha256>;

/// SHA-256's block size: HMAC hashes longer keys down and zero-pads shorter
/// ones to this length.
const BLOCK: usize = 64;

/// Why a frame's signature was not accepted, or could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error(transparent)]
    Frame(#[from] CanonicalError),
    #[error("frame has no signature")]
    Missing,
    #[error("signature is not 64 lowercase hex digits")]
    Malformed,
    #[error("signature does not match the frame")]
    Mismatch,
}

/// The node frame key. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct NodeKey {
    /// The key already reduced to one HMAC block, which makes building a MAC
    /// infallible and is exactly what HMAC does with the raw key.
    block: [u8; BLOCK],
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeKey(..)")
    }
}

impl NodeKey {
    /// The key the seed's Python derives from `secret`.
    pub fn from_secret(secret: &str) -> Self {
        Self::from_bytes(&secret_key_bytes(secret))
    }

    pub fn from_bytes(key: &[u8]) -> Self {
        let mut block = [0u8; BLOCK];
        if key.len() > BLOCK {
            block[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        Self { block }
    }

    fn mac(&self) -> HmacSha256 {
        <HmacSha256 as KeyInit>::new(&self.block.into())
    }

    /// Lowercase hex HMAC of already-canonical bytes.
    pub fn sign_bytes(&self, signed_bytes: &str) -> String {
        let mut mac = self.mac();
        mac.update(signed_bytes.as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// The signature of a parsed frame.
    pub fn sign_frame(&self, frame: &CanonicalFrame<'_>) -> String {
        self.sign_bytes(frame.signed_bytes())
    }

    /// Checks a parsed frame's own `signature`, in constant time.
    pub fn verify_frame(&self, frame: &CanonicalFrame<'_>) -> Result<(), SignatureError> {
        let presented = frame
            .signature()
            .ok_or(SignatureError::Missing)?
            .ok_or(SignatureError::Malformed)?;
        // Python compares hexdigest() strings, so uppercase never matches.
        let tag = unhex_lower(&presented).ok_or(SignatureError::Malformed)?;
        let mut mac = self.mac();
        mac.update(frame.signed_bytes().as_bytes());
        mac.verify_slice(&tag).map_err(|_| SignatureError::Mismatch)
    }
}

/// The signature (lowercase hex) of `frame_text`, ignoring any signature it
/// already carries.
pub fn sign(frame_text: &str, key: &NodeKey) -> Result<String, SignatureError> {
    Ok(key.sign_frame(&CanonicalFrame::parse(frame_text)?))
}

/// Checks the `signature` field of `frame_text`.
pub fn verify(frame_text: &str, key: &NodeKey) -> Result<(), SignatureError> {
    key.verify_frame(&CanonicalFrame::parse(frame_text)?)
}

/// `frame_text` with its `signature` set (replacing any it had).
pub fn signed_frame(frame_text: &str, key: &NodeKey) -> Result<String, SignatureError> {
    let frame = CanonicalFrame::parse(frame_text)?;
    Ok(frame.with_signature(&key.sign_frame(&frame)))
}

/// The key bytes seed 000 uses: `base64.b64decode(secret)`, falling back to
/// `secret.encode('utf-8')` whenever that raises.
pub fn secret_key_bytes(secret: &str) -> Vec<u8> {
    python_b64decode(secret).unwrap_or_else(|| secret.as_bytes().to_vec())
}

/// CPython's `base64.b64decode(s)` (no `validate`): `None` where it raises.
///
/// Non-ASCII input raises before decoding. Otherwise characters outside the
/// alphabet are skipped, `=` only counts once two data characters of a
/// quantum are in, a complete pad ends the input (anything after is
/// ignored), and a dangling partial quantum is an error ("incorrect
/// padding"). Unused low bits of the last quantum are not checked.
pub fn python_b64decode(s: &str) -> Option<Vec<u8>> {
    if !s.is_ascii() {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut quad_pos, mut pads, mut left) = (0u8, 0u8, 0u8);
    for &ch in s.as_bytes() {
        if ch == b'=' {
            if quad_pos >= 2 {
                pads += 1;
                if quad_pos + pads >= 4 {
                    return Some(out);
                }
            }
            continue;
        }
        let Some(v) = b64_value(ch) else { continue };
        pads = 0;
        match quad_pos {
            0 => {
                left = v;
                quad_pos = 1;
            }
            1 => {
                out.push((left << 2) | (v >> 4));
                left = v & 0x0f;
                quad_pos = 2;
            }
            2 => {
                out.push((left << 4) | (v >> 2));
                left = v & 0x03;
                quad_pos = 3;
            }
            _ => {
                out.push((left << 6) | v);
                quad_pos = 0;
            }
        }
    }
    (quad_pos == 0).then_some(out)
}

fn b64_value(ch: u8) -> Option<u8> {
    match ch {
        b'A'..=b'Z' => Some(ch - b'A'),
        b'a'..=b'z' => Some(ch - b'a' + 26),
        b'0'..=b'9' => Some(ch - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Exactly 64 lowercase hex digits, as `hexdigest()` writes them.
fn unhex_lower(s: &str) -> Option<Vec<u8>> {
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    if s.len() != 64 {
        return None;
    }
    s.as_bytes()
        .chunks_exact(2)
        .map(|p| Some((nibble(p[0])? << 4) | nibble(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_secrets_decode_like_python() {
        let cases: [(&str, Option<&[u8]>); 9] = [
            ("c2VjcmV0", Some(b"secret")),
            ("my-secret", Some(&[0x9b, 0x2b, 0x1e, 0x72, 0xb7, 0xad])),
            ("", Some(b"")),
            ("abc", None),
            ("a", None),
            ("ab==", Some(&[0x69])),
            ("abc=d", Some(&[0x69, 0xb7])),
            ("a=b=cd", Some(&[0x69, 0xb7, 0x1d])),
            ("노드", None),
        ];
        for (s, want) in cases {
            assert_eq!(python_b64decode(s).as_deref(), want, "{s:?}");
        }
    }

    #[test]
    fn undecodable_secrets_fall_back_to_their_utf8_bytes() {
        assert_eq!(secret_key_bytes("abc"), b"abc");
        assert_eq!(secret_key_bytes("노드"), "노드".as_bytes());
    }

    #[test]
    fn long_keys_are_hashed_like_hmac_does() {
        let long = [7u8; 100];
        let ours = NodeKey::from_bytes(&long).sign_bytes("x");
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&long).unwrap();
        mac.update(b"x");
        assert_eq!(ours, hex(&mac.finalize().into_bytes()));
    }

    #[test]
    fn signed_frames_verify_and_tampered_ones_do_not() {
        let key = NodeKey::from_secret("c2VjcmV0");
        let signed = signed_frame(r#"{"type":"HELLO","node_id":"n1","payload":{}}"#, &key).unwrap();
        assert_eq!(verify(&signed, &key), Ok(()));
        let tampered = signed.replace("n1", "n2");
        assert_eq!(verify(&tampered, &key), Err(SignatureError::Mismatch));
        assert_eq!(
            verify(&signed, &NodeKey::from_secret("other")),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn missing_and_malformed_signatures_are_named() {
        let key = NodeKey::from_secret("k");
        assert_eq!(verify(r#"{"a":1}"#, &key), Err(SignatureError::Missing));
        assert_eq!(verify(r#"{"signature":1}"#, &key), Err(SignatureError::Malformed));
        assert_eq!(verify(r#"{"signature":"abc"}"#, &key), Err(SignatureError::Malformed));
        let upper = sign(r#"{"a":1}"#, &key).unwrap().to_uppercase();
        assert_eq!(
            verify(&format!(r#"{{"a":1,"signature":"{upper}"}}"#), &key),
            Err(SignatureError::Malformed)
        );
        assert!(matches!(verify("[]", &key), Err(SignatureError::Frame(_))));
    }

    #[test]
    fn key_debug_hides_the_key() {
        assert_eq!(format!("{:?}", NodeKey::from_secret("hunter2")), "NodeKey(..)");
    }
}
