//! Interop: status lists built by an independent implementation (`@sd-jwt/jwt-status-list`,
//! driven by tests/interop/status_list.mjs under Node) are read by tokengate entry by
//! entry, for every `bits` width. `make interop` installs the npm package first
//! (`npm ci --prefix tests/interop`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use tokengate::crypto::alg::Alg;
use tokengate::revocation::status_list::{verify_list_token, ListCheck, Status};
use tokengate::revocation::{Signer, StatusListPolicy};
use tokengate::token::jwks::KeySet;

fn vectors() -> Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    assert!(
        dir.join("node_modules/@sd-jwt/jwt-status-list").is_dir(),
        "@sd-jwt/jwt-status-list is not installed: run `make interop` (npm ci --prefix tests/interop)"
    );
    let output = Command::new("node")
        .arg("status_list.mjs")
        .current_dir(&dir)
        .output()
        .expect("running node (Node 20 or later is needed)");
    assert!(
        output.status.success(),
        "status_list.mjs failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the script prints JSON")
}

#[test]
fn lists_built_by_sd_jwt_js_are_read_entry_by_entry_for_every_bits_width() {
    let vectors = vectors();
    let keys = KeySet::from_value(&json!({"keys": [vectors["jwk"].clone()]}))
        .expect("the script's JWK")
        .set;
    let policy = StatusListPolicy {
        origins: vec![("https://issuer.example".into(), "issuer".into())],
        max_ttl_secs: 600,
        timeout_ms: 1000,
        max_list_bytes: 1 << 20,
        allow_unavailable: false,
        require_status: false,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let lists = vectors["lists"].as_array().unwrap();
    let mut widths = std::collections::BTreeSet::new();
    for list in lists {
        let uri = list["uri"].as_str().unwrap();
        let check = ListCheck {
            uri,
            signer: Signer {
                issuer: "https://issuer.example",
                algorithms: &[Alg::ES256],
                keys: &keys,
                clock_skew_secs: 60,
            },
            policy: &policy,
        };
        let decoded = verify_list_token(list["token"].as_str().unwrap(), &check, now)
            .unwrap_or_else(|e| panic!("{uri}: {}", e.describe()));
        assert_eq!(decoded.expires_at, now + 300, "{uri}: its ttl");
        let statuses = list["statuses"].as_array().unwrap();
        for (idx, expected) in statuses.iter().enumerate() {
            let expected = match expected.as_u64().unwrap() {
                0 => Status::Valid,
                1 => Status::Invalid,
                2 => Status::Suspended,
                other => Status::Other(other as u8),
            };
            assert_eq!(decoded.get(idx as u64), Some(expected), "{uri} index {idx}");
        }
        // Past the entries the library wrote, only the padding of the last byte is left.
        let bits = list["bits"].as_u64().unwrap();
        let padded = (statuses.len() as u64 * bits).div_ceil(8) * 8 / bits;
        assert_eq!(
            decoded.get(padded),
            None,
            "{uri}: nothing past the last byte"
        );
        widths.insert(bits);
    }
    assert_eq!(widths.into_iter().collect::<Vec<_>>(), vec![1, 2, 4, 8]);
}
