#![allow(clippy::unwrap_used)] // a generated case that cannot be set up should fail the test

//! Every frame parser takes whatever a client sends: arbitrary text (and
//! text made from arbitrary bytes) is parsed or refused, never a panic. The
//! node signer and verifier round-trip on generated JSON objects.

use proptest::prelude::*;
use relaymesh_wire::node::{CanonicalFrame, Envelope, NodeKey, signature};
use relaymesh_wire::{copilot, livechat, signal};
use serde_json::{Map, Value};

/// Text a client could send: arbitrary strings, lossily decoded arbitrary
/// bytes, and JSON-looking text (braces, quotes, escapes, numbers).
fn frame_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        proptest::collection::vec(any::<u8>(), 0..256).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        r#"[{}\[\]":,0-9a-z\\ .eE+-]{0,64}"#,
        json_value(3).prop_map(|v| v.to_string()),
    ]
}

/// Arbitrary JSON, nested up to `depth`.
fn json_value(depth: u32) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(depth, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A node frame as a client would build it: the seed's envelope keys with
/// arbitrary values and an arbitrary payload, plus arbitrary extra keys.
fn node_frame() -> impl Strategy<Value = Map<String, Value>> {
    (
        any::<String>(),
        any::<String>(),
        json_value(3),
        proptest::collection::btree_map("[a-z_]{1,12}", json_value(2), 0..4),
    )
        .prop_map(|(message_id, node_id, payload, extra)| {
            let mut m: Map<String, Value> = extra.into_iter().collect();
            m.insert("version".into(), "1.0".into());
            m.insert("type".into(), "HEARTBEAT".into());
            m.insert("message_id".into(), message_id.into());
            m.insert("node_id".into(), node_id.into());
            m.insert("payload".into(), payload);
            m.remove("signature");
            m
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn livechat_parse_never_panics(text in frame_text()) {
        let _ = livechat::parse(&text);
        let _ = livechat::nonce_of(&text);
    }

    #[test]
    fn copilot_parse_never_panics(text in frame_text()) {
        if let Err(refusal) = copilot::parse(&text) {
            let _ = copilot::render(&refusal);
        }
    }

    #[test]
    fn signal_parse_never_panics(text in frame_text()) {
        let _ = signal::parse(&text);
    }

    #[test]
    fn signal_msgpack_parse_never_panics(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..256),
            json_value(3).prop_map(|v| rmp_serde::to_vec_named(&v).unwrap_or_default()),
        ]
    ) {
        let _ = signal::parse_msgpack(&bytes);
    }

    #[test]
    fn node_envelope_parse_never_panics(text in frame_text()) {
        let _ = Envelope::parse(&text);
    }

    #[test]
    fn node_canonical_parse_sign_and_verify_never_panic(text in frame_text(), secret in any::<String>()) {
        let key = NodeKey::from_secret(&secret);
        if let Ok(frame) = CanonicalFrame::parse(&text) {
            let _ = frame.signature();
            let _ = frame.str_field("node_id");
        }
        let _ = signature::sign(&text, &key);
        let _ = signature::verify(&text, &key);
        let _ = signature::signed_frame(&text, &key);
    }

    #[test]
    fn a_signed_frame_verifies_and_a_changed_one_does_not(frame in node_frame(), secret in any::<String>()) {
        let key = NodeKey::from_secret(&secret);
        let text = Value::Object(frame.clone()).to_string();
        let signed = signature::signed_frame(&text, &key).unwrap();
        prop_assert!(signature::verify(&signed, &key).is_ok(), "{signed}");
        // Signing again ignores the signature already there.
        prop_assert_eq!(signature::sign(&signed, &key).unwrap(), signature::sign(&text, &key).unwrap());

        // The same signature on a frame with another message id is refused.
        let mut changed = frame;
        let id = format!("{}x", changed["message_id"].as_str().unwrap());
        changed.insert("message_id".into(), Value::String(id));
        changed.insert("signature".into(), Value::String(signature::sign(&text, &key).unwrap()));
        let forged = Value::Object(changed).to_string();
        prop_assert!(signature::verify(&forged, &key).is_err(), "{forged}");
    }
}
