//! Revocation readers on any input: a status list's `lst` (strict base64url, then zlib
//! inflated under a cap) with every `bits` width and lookups at any index, raw bytes
//! straight into the inflater, a Status List Token and a logout token verified with the
//! fixture keys, a shared denylist decoded, a logout form body read.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use tokengate::crypto::alg::Alg;
use tokengate::crypto::b64;
use tokengate::revocation::denylist::{Denylist, Subject};
use tokengate::revocation::logout::{self, LogoutCheck};
use tokengate::revocation::status_list::{verify_list_token, ListCheck, StatusList};
use tokengate::revocation::{form_value, Signer, StatusListPolicy};
use tokengate::token::jwks::KeySet;

thread_local! {
    static KEYS: KeySet = KeySet::from_value(&common::public_jwks()).map(|p| p.set).unwrap_or_default();
}

const CAP: usize = 4096;

fn policy() -> StatusListPolicy {
    StatusListPolicy {
        origins: vec![("https://idp.test".into(), "idp".into())],
        max_ttl_secs: 300,
        timeout_ms: 1000,
        max_list_bytes: CAP,
        allow_unavailable: false,
        require_status: false,
    }
}

fn lookups(list: &StatusList, seed: &[u8]) {
    assert!(list.len() <= (CAP as u64) * 8);
    for idx in [0, 1, list.len().saturating_sub(1), list.len(), u64::MAX] {
        let _ = list.check(idx);
    }
    for byte in seed.iter().take(8) {
        let _ = list.get(u64::from(*byte) * 13);
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for bits in [1, 2, 4, 8, 3] {
        if let Ok(list) = StatusList::decode(bits, &text, CAP) {
            lookups(&list, data);
        }
        if let Ok(list) = StatusList::decode(bits, &b64::encode(data), CAP) {
            lookups(&list, data);
        }
    }
    let policy = policy();
    KEYS.with(|keys| {
        let signer = Signer {
            issuer: "https://idp.test/realms/demo",
            algorithms: &Alg::ALL,
            keys,
            clock_skew_secs: 60,
        };
        let check = ListCheck { uri: "https://idp.test/lists/1", signer, policy: &policy };
        if let Ok(list) = verify_list_token(text.trim(), &check, common::NOW) {
            lookups(&list, data);
        }
        let check = LogoutCheck { signer, client_id: "gateway" };
        if let Ok(logout) = logout::verify(text.trim(), &check, common::NOW) {
            let mut denylist = Denylist::default();
            let _ = denylist.record(&logout, common::NOW, 3600, 60);
        }
    });
    if let Some(denylist) = Denylist::decode(data) {
        let subject = Subject { sub: Some(text.to_string()), sid: None, iat: Some(0) };
        let _ = denylist.revokes(&subject, common::NOW);
        let _ = denylist.encode();
    }
    let _ = form_value(data, "logout_token");
});
