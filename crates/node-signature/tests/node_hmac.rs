//! Node frame signatures checked against CPython itself: the vectors in
//! `tests/vectors/` were written by `gen_node_hmac.py`, which runs seed 000's
//! signing snippet verbatim.
#![allow(clippy::unwrap_used)]

use relaymesh_node_signature::canonical::{CanonicalFrame, signed_bytes};
use relaymesh_node_signature::signature::{
    NodeKey, SignatureError, python_b64decode, secret_key_bytes, sign, signed_frame, verify,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Vectors<T> {
    cases: Vec<T>,
}

#[derive(Deserialize)]
struct FrameCase {
    name: String,
    frame: String,
    secret: String,
    key_hex: String,
    canonical: String,
    signature: String,
    python_signed_frame: Option<String>,
}

#[derive(Deserialize)]
struct KeyCase {
    secret: String,
    key_hex: String,
    utf8_fallback: bool,
}

fn frame_cases() -> Vec<FrameCase> {
    let text = include_str!("vectors/node_hmac.json");
    serde_json::from_str::<Vectors<FrameCase>>(text).unwrap().cases
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn vector_files_are_not_empty() {
    assert!(frame_cases().len() >= 40);
}

#[test]
fn canonical_bytes_match_python_for_every_vector() {
    for c in frame_cases() {
        assert_eq!(signed_bytes(&c.frame).unwrap(), c.canonical, "{}", c.name);
    }
}

#[test]
fn signatures_match_python_for_every_vector() {
    for c in frame_cases() {
        assert_eq!(hex(&secret_key_bytes(&c.secret)), c.key_hex, "{}", c.name);
        let key = NodeKey::from_secret(&c.secret);
        assert_eq!(sign(&c.frame, &key).unwrap(), c.signature, "{}", c.name);
    }
}

#[test]
fn frames_signed_by_python_verify() {
    for c in frame_cases() {
        let Some(text) = &c.python_signed_frame else { continue };
        let key = NodeKey::from_secret(&c.secret);
        assert_eq!(verify(text, &key), Ok(()), "{}", c.name);
    }
}

#[test]
fn frames_we_sign_verify_and_carry_pythons_signature() {
    for c in frame_cases() {
        let key = NodeKey::from_secret(&c.secret);
        let signed = signed_frame(&c.frame, &key).unwrap();
        assert_eq!(verify(&signed, &key), Ok(()), "{}", c.name);
        let parsed = CanonicalFrame::parse(&signed).unwrap();
        assert_eq!(parsed.signature(), Some(Some(c.signature.clone())), "{}", c.name);
        assert_eq!(parsed.signed_bytes(), c.canonical, "{}", c.name);
    }
}

/// Every one-character change of the signed content that still parses and
/// means something different must break the signature. Mutating the
/// canonical text (ASCII, one member per field) reaches every key, string,
/// number and literal of the frame.
#[test]
fn any_one_character_change_fails_verification() {
    let mut checked = 0;
    for c in frame_cases() {
        // Infinity in the canonical text is not JSON to re-read; the long
        // random-doubles frame would take minutes in a debug build and adds
        // nothing the short float frames do not already cover.
        if c.python_signed_frame.is_none() || c.canonical.len() > 5000 {
            continue;
        }
        let key = NodeKey::from_secret(&c.secret);
        let signed = signed_frame(&c.canonical, &key).unwrap();
        let sig = CanonicalFrame::parse(&signed).unwrap().signature().unwrap().unwrap();
        let bytes = c.canonical.as_bytes();
        for i in 0..bytes.len() {
            for replacement in [bytes[i].wrapping_add(1), bytes[i].wrapping_sub(1)] {
                if !replacement.is_ascii() {
                    continue;
                }
                let mut m = bytes.to_vec();
                m[i] = replacement;
                let Ok(mutated) = String::from_utf8(m) else { continue };
                let Ok(frame) = CanonicalFrame::parse(&mutated) else {
                    continue;
                };
                if frame.signed_bytes() == c.canonical {
                    continue;
                }
                let forged = frame.with_signature(&sig);
                assert_eq!(
                    verify(&forged, &key),
                    Err(SignatureError::Mismatch),
                    "{}: {mutated}",
                    c.name
                );
                checked += 1;
            }
        }
        // And a one-digit change in the signature itself.
        let first = if sig.starts_with('0') { '1' } else { '0' };
        let flipped: String = std::iter::once(first).chain(sig.chars().skip(1)).collect();
        let forged = CanonicalFrame::parse(&signed).unwrap().with_signature(&flipped);
        assert_eq!(verify(&forged, &key), Err(SignatureError::Mismatch), "{}", c.name);
    }
    assert!(checked > 1000, "only {checked} mutations were checked");
}

#[test]
fn secrets_decode_like_python_b64decode() {
    let text = include_str!("vectors/node_key.json");
    let cases = serde_json::from_str::<Vectors<KeyCase>>(text).unwrap().cases;
    assert!(cases.len() > 300);
    for c in cases {
        assert_eq!(python_b64decode(&c.secret).is_none(), c.utf8_fallback, "{:?}", c.secret);
        assert_eq!(hex(&secret_key_bytes(&c.secret)), c.key_hex, "{:?}", c.secret);
    }
}
