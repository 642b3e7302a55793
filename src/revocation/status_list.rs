//! Token Status List (draft-ietf-oauth-status-list): a token's reference to its list,
//! the Status List Token's checks, the compressed list's decoding and lookup, and when
//! a list is fetched again. Times in seconds, passed in.

use super::{origin_of, Signer, StatusListPolicy};
use crate::crypto::b64;
use crate::error::AuthnError;
use crate::remote::{Lease, Uri};
use crate::token::jwt::{self, numeric_date_secs};
use serde_json::{Map, Value};
use std::rc::Rc;

/// The `typ` a Status List Token must carry (normalized: no `application/`).
pub const LIST_TOKEN_TYPE: &str = "statuslist+jwt";
/// What the callout asks for.
pub const ACCEPT: &str = "application/statuslist+jwt";

/// A verified token's `status.status_list`, read once at verification and kept with
/// the cached identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRef {
    pub idx: u64,
    /// The list's URI exactly as the token names it (the list token's `sub`).
    pub uri: Rc<str>,
}

/// The status reference of a token's claims: `Ok(None)` without one (then
/// `require_status` decides), refused when malformed or not on an allowed origin.
pub fn reference(
    claims: &Map<String, Value>,
    policy: &StatusListPolicy,
) -> Result<Option<StatusRef>, AuthnError> {
    let Some(status) = claims.get("status") else {
        return Ok(None);
    };
    let status = status.as_object().ok_or(AuthnError::StatusInvalid)?;
    // Another status mechanism only: not ours to judge.
    let Some(list) = status.get("status_list") else {
        return Ok(None);
    };
    let list = list.as_object().ok_or(AuthnError::StatusInvalid)?;
    let idx = list
        .get("idx")
        .and_then(Value::as_u64)
        .ok_or(AuthnError::StatusInvalid)?;
    let uri = list
        .get("uri")
        .and_then(Value::as_str)
        .ok_or(AuthnError::StatusInvalid)?;
    let (origin, _) = origin_of(uri).ok_or(AuthnError::StatusInvalid)?;
    if policy.cluster_for(&origin).is_none() {
        return Err(AuthnError::StatusUriNotAllowed);
    }
    Ok(Some(StatusRef {
        idx,
        uri: Rc::from(uri),
    }))
}

/// Where a list is fetched from: its cluster (by origin) and split URI.
pub fn target<'p>(uri: &str, policy: &'p StatusListPolicy) -> Option<(&'p str, Uri)> {
    let (origin, split) = origin_of(uri)?;
    Some((policy.cluster_for(&origin)?, split))
}

/// The status of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Valid,
    Invalid,
    Suspended,
    /// 3 and up: application-specific, refused here.
    Other(u8),
}

impl Status {
    fn of(value: u8) -> Status {
        match value {
            0 => Status::Valid,
            1 => Status::Invalid,
            2 => Status::Suspended,
            other => Status::Other(other),
        }
    }

    /// What the status means for a request.
    pub fn verdict(self) -> Result<(), AuthnError> {
        match self {
            Status::Valid => Ok(()),
            Status::Invalid => Err(AuthnError::Revoked),
            Status::Suspended => Err(AuthnError::Suspended),
            Status::Other(_) => Err(AuthnError::StatusInvalid),
        }
    }
}

/// A decoded status list: `bits` per entry, least significant bits first in each byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusList {
    bits: u8,
    bytes: Vec<u8>,
    /// When it stops being usable (seconds): its `ttl` (bounded by `max_ttl_secs`), never
    /// past its `exp`.
    pub expires_at: u64,
    /// When it was issued (`iat`), for logs.
    pub issued_at: u64,
}

impl StatusList {
    /// Decodes `lst` (strict base64url of zlib/DEFLATE) into at most `max_bytes`.
    pub fn decode(bits: u64, lst: &str, max_bytes: usize) -> Result<StatusList, ListError> {
        let bits = match bits {
            1 | 2 | 4 | 8 => bits as u8,
            _ => return Err(ListError::Bits),
        };
        // Compressed data bigger than the inflated cap (plus zlib's framing) is not a list
        // this configuration would accept: refused before decoding.
        if lst.len() / 4 * 3 > max_bytes.saturating_add(1024) {
            return Err(ListError::TooLarge);
        }
        let compressed = b64::decode(lst.as_bytes()).ok_or(ListError::Encoding)?;
        let bytes = miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(&compressed, max_bytes)
            .map_err(|e| match e.status {
                miniz_oxide::inflate::TINFLStatus::HasMoreOutput => ListError::TooLarge,
                _ => ListError::Compression,
            })?;
        Ok(StatusList {
            bits,
            bytes,
            expires_at: 0,
            issued_at: 0,
        })
    }

    /// How many entries the list holds.
    pub fn len(&self) -> u64 {
        (self.bytes.len() as u64).saturating_mul(8) / u64::from(self.bits)
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The status at `idx`; `None` outside the list.
    pub fn get(&self, idx: u64) -> Option<Status> {
        let bits = u64::from(self.bits);
        let per_byte = 8 / bits;
        let byte = usize::try_from(idx / per_byte).ok()?;
        let shift = (idx % per_byte) * bits;
        let value = self.bytes.get(byte)? >> shift;
        let mask = u8::MAX >> (8 - self.bits);
        Some(Status::of(value & mask))
    }

    /// A token's verdict by this list: an index outside it is an invalid status.
    pub fn check(&self, idx: u64) -> Result<(), AuthnError> {
        self.get(idx).ok_or(AuthnError::StatusInvalid)?.verdict()
    }

    pub fn is_fresh(&self, now: u64) -> bool {
        now < self.expires_at
    }
}

/// Why a fetched list is not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListError {
    /// The signature, the algorithm, the key or the JWS's shape.
    Token(AuthnError),
    /// `typ` is not `statuslist+jwt`.
    Type,
    /// `sub` is not the URI the list was fetched for.
    Subject,
    /// `iat` missing or not a date, or in the future.
    IssuedAt,
    Expired,
    /// `ttl` not a positive integer.
    Ttl,
    /// `status_list` missing, or `bits`/`lst` of the wrong type.
    Shape,
    Bits,
    /// `lst` not strict base64url.
    Encoding,
    /// `lst` not zlib, or corrupt.
    Compression,
    /// Bigger than `max_list_bytes` once inflated (or obviously so before).
    TooLarge,
}

impl ListError {
    pub fn describe(self) -> &'static str {
        match self {
            ListError::Token(_) => "list token does not verify with the provider's keys",
            ListError::Type => "list token typ is not statuslist+jwt",
            ListError::Subject => "list token sub is not the list's URI",
            ListError::IssuedAt => "list token iat missing or in the future",
            ListError::Expired => "list token expired",
            ListError::Ttl => "list token ttl is not a positive integer",
            ListError::Shape => "list token has no usable status_list",
            ListError::Bits => "status_list.bits is not 1, 2, 4 or 8",
            ListError::Encoding => "status_list.lst is not base64url",
            ListError::Compression => "status_list.lst is not valid zlib data",
            ListError::TooLarge => "status list larger than max_list_bytes",
        }
    }
}

/// What a list token is checked with: the URI it was fetched for, the provider's
/// signature, the `status_list` settings.
pub struct ListCheck<'a> {
    pub uri: &'a str,
    pub signer: Signer<'a>,
    pub policy: &'a StatusListPolicy,
}

/// Verifies a Status List Token fetched for `check.uri` and decodes its list. The
/// provider's access-token rules (`audiences`, `token_types`, `require_exp`) don't apply:
/// `typ` must be `statuslist+jwt`, `sub` the URI exactly, `iat` present and not in the
/// future, `exp` (if any) not passed, `iss` (if any) the provider's issuer.
pub fn verify_list_token(
    token: &str,
    check: &ListCheck<'_>,
    now: u64,
) -> Result<StatusList, ListError> {
    let max = check.policy.max_token_bytes();
    let signer = check.signer;
    let signed =
        jwt::verify_signed(token, signer.algorithms, signer.keys, max).map_err(ListError::Token)?;
    if signed.typ.as_deref() != Some(LIST_TOKEN_TYPE) {
        return Err(ListError::Type);
    }
    let claims = &signed.claims;
    if claims.get("sub").and_then(Value::as_str) != Some(check.uri) {
        return Err(ListError::Subject);
    }
    if let Some(iss) = claims.get("iss") {
        if iss.as_str() != Some(signer.issuer) {
            return Err(ListError::Token(AuthnError::IssuerNotAllowed));
        }
    }
    let skew = signer.clock_skew_secs;
    let iat = numeric_date_secs(claims.get("iat")).ok_or(ListError::IssuedAt)?;
    if iat > now.saturating_add(skew) {
        return Err(ListError::IssuedAt);
    }
    let exp = match claims.get("exp") {
        None => None,
        Some(value) => Some(numeric_date_secs(Some(value)).ok_or(ListError::Expired)?),
    };
    if exp.is_some_and(|exp| now >= exp.saturating_add(skew)) {
        return Err(ListError::Expired);
    }
    let ttl = match claims.get("ttl") {
        None => None,
        Some(value) => Some(value.as_u64().filter(|t| *t > 0).ok_or(ListError::Ttl)?),
    };
    let list = claims
        .get("status_list")
        .and_then(Value::as_object)
        .ok_or(ListError::Shape)?;
    let bits = list
        .get("bits")
        .and_then(Value::as_u64)
        .ok_or(ListError::Shape)?;
    let lst = list
        .get("lst")
        .and_then(Value::as_str)
        .ok_or(ListError::Shape)?;
    let mut decoded = StatusList::decode(bits, lst, check.policy.max_list_bytes)?;
    decoded.issued_at = iat;
    decoded.expires_at = expires_at(now, ttl, exp, check.policy.max_ttl_secs);
    Ok(decoded)
}

/// A list is used for `min(ttl, max_ttl_secs)` (`max_ttl_secs` without `ttl`), never
/// past its `exp`.
pub fn expires_at(now: u64, ttl: Option<u64>, exp: Option<u64>, max_ttl_secs: u64) -> u64 {
    let ttl = ttl.unwrap_or(max_ttl_secs).min(max_ttl_secs).max(1);
    let until = now.saturating_add(ttl);
    exp.map_or(until, |exp| until.min(exp))
}

/// Why a list should be fetched now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// No usable list, and a request wants it.
    Cold,
    /// In use, and three quarters of its life are gone.
    Refresh,
}

/// Whether a list should be fetched now (milliseconds). `fetched`: (fetched at, usable
/// until) of the list all workers share; `used_at_ms`: the last request that read it on
/// this worker (a list nobody uses is left to run out).
pub fn fetch_due(
    fetched: Option<(u64, u64)>,
    lease: &Lease,
    wanted: bool,
    used_at_ms: u64,
    now_ms: u64,
) -> Option<Due> {
    if lease.is_held(now_ms) || now_ms < lease.retry_at_ms {
        return None;
    }
    match fetched {
        Some((_, until_ms)) if now_ms >= until_ms => wanted.then_some(Due::Cold),
        None => wanted.then_some(Due::Cold),
        Some((at_ms, until_ms)) => {
            let refresh_ms = at_ms.saturating_add(until_ms.saturating_sub(at_ms) / 4 * 3);
            (now_ms >= refresh_ms && used_at_ms >= at_ms).then_some(Due::Refresh)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::alg::Alg;
    use crate::testutil::*;
    use miniz_oxide::deflate::compress_to_vec_zlib;
    use serde_json::json;

    const URI: &str = "https://idp.test/statuslists/1";

    fn policy() -> StatusListPolicy {
        StatusListPolicy {
            origins: vec![("https://idp.test".into(), "idp".into())],
            max_ttl_secs: 300,
            timeout_ms: 1000,
            max_list_bytes: 1024,
            allow_unavailable: false,
            require_status: false,
        }
    }

    fn lst(bytes: &[u8]) -> String {
        b64::encode(&compress_to_vec_zlib(bytes, 6))
    }

    /// Packs statuses LSB-first, as the draft's figures do.
    fn pack(bits: u8, statuses: &[u8]) -> Vec<u8> {
        let per_byte = 8 / bits as usize;
        let mut bytes = vec![0u8; statuses.len().div_ceil(per_byte)];
        for (i, s) in statuses.iter().enumerate() {
            bytes[i / per_byte] |= s << ((i % per_byte) * bits as usize);
        }
        bytes
    }

    fn list_claims(bits: u64, lst: &str) -> Value {
        json!({"sub": URI, "iat": NOW - 10, "exp": NOW + 3600, "ttl": 60,
               "status_list": {"bits": bits, "lst": lst}})
    }

    fn list_token(claims: &Value) -> String {
        list_token_with(
            "es256",
            &json!({"alg": "ES256", "kid": "es256", "typ": "statuslist+jwt"}),
            claims,
        )
    }

    fn list_token_with(key: &str, header: &Value, claims: &Value) -> String {
        token_with_header(key, header, claims)
    }

    fn verify(token: &str) -> Result<StatusList, ListError> {
        let policy = policy();
        let keys = keyset();
        let check = ListCheck {
            uri: URI,
            signer: Signer {
                issuer: ISSUER,
                algorithms: &Alg::ALL,
                keys: &keys,
                clock_skew_secs: 60,
            },
            policy: &policy,
        };
        verify_list_token(token, &check, NOW)
    }

    #[test]
    fn the_drafts_one_bit_example_decodes_lsb_first() {
        // draft-ietf-oauth-status-list, "Status List" example: bytes 0xB9 0xA3.
        let list = StatusList::decode(1, "eNrbuRgAAhcBXQ", 1024).unwrap();
        let expect = [1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1];
        for (i, s) in expect.iter().enumerate() {
            assert_eq!(list.get(i as u64), Some(Status::of(*s)), "index {i}");
        }
        assert_eq!(list.get(16), None);
        assert_eq!(list.len(), 16);
    }

    #[test]
    fn the_drafts_two_bit_example_decodes() {
        // The draft's 2-bit example: bytes 0xC9 0x44 0xF9.
        let list = StatusList::decode(2, "eNo76fITAAPfAgc", 1024).unwrap();
        let expect = [1, 2, 0, 3, 0, 1, 0, 1, 1, 2, 3, 3];
        for (i, s) in expect.iter().enumerate() {
            assert_eq!(list.get(i as u64), Some(Status::of(*s)), "index {i}");
        }
        assert_eq!(list.get(12), None);
    }

    #[test]
    fn every_bits_width_round_trips_each_index() {
        for bits in [1u8, 2, 4, 8] {
            let max = if bits == 8 {
                255
            } else {
                (1u16 << bits) as u8 - 1
            };
            let statuses: Vec<u8> = (0..64u32)
                .map(|i| (i * 7 % (max as u32 + 1)) as u8)
                .collect();
            let list = StatusList::decode(bits.into(), &lst(&pack(bits, &statuses)), 1024).unwrap();
            assert_eq!(list.len(), 64);
            for (i, s) in statuses.iter().enumerate() {
                assert_eq!(
                    list.get(i as u64),
                    Some(Status::of(*s)),
                    "bits {bits} index {i}"
                );
            }
            assert_eq!(
                list.get(list.len()),
                None,
                "bits {bits}: first index past the end"
            );
        }
    }

    #[test]
    fn only_bits_1_2_4_8_are_accepted() {
        for bits in [0, 3, 5, 16, 256] {
            assert_eq!(
                StatusList::decode(bits, &lst(&[0]), 1024),
                Err(ListError::Bits)
            );
        }
    }

    #[test]
    fn status_values_map_to_verdicts_and_out_of_range_is_invalid() {
        let list = StatusList::decode(2, &lst(&pack(2, &[0, 1, 2, 3])), 1024).unwrap();
        assert_eq!(list.check(0), Ok(()));
        assert_eq!(list.check(1), Err(AuthnError::Revoked));
        assert_eq!(list.check(2), Err(AuthnError::Suspended));
        assert_eq!(list.check(3), Err(AuthnError::StatusInvalid));
        assert_eq!(list.check(4), Err(AuthnError::StatusInvalid));
        assert_eq!(list.check(u64::MAX), Err(AuthnError::StatusInvalid));
    }

    #[test]
    fn corrupt_or_non_zlib_data_is_refused() {
        assert_eq!(
            StatusList::decode(1, &b64::encode(b"not zlib at all"), 1024),
            Err(ListError::Compression)
        );
        let mut data = compress_to_vec_zlib(&[0u8; 100], 6);
        let last = data.len() - 1;
        data[last] ^= 0xff; // adler32 broken
        assert_eq!(
            StatusList::decode(1, &b64::encode(&data), 1024),
            Err(ListError::Compression)
        );
        assert_eq!(
            StatusList::decode(1, "eNrbuRgAAhcBXQ==", 1024),
            Err(ListError::Encoding)
        );
        assert_eq!(
            StatusList::decode(1, "eNrb+RgAAhcBXQ", 1024),
            Err(ListError::Encoding)
        );
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_cap() {
        // 10 MB of zeros compress to ~10 KB: refused once 1 KB is inflated.
        let bomb = compress_to_vec_zlib(&vec![0u8; 10 * 1024 * 1024], 10);
        assert!(bomb.len() < 20 * 1024);
        assert_eq!(
            StatusList::decode(1, &b64::encode(&bomb), 1024),
            Err(ListError::TooLarge)
        );
        // The same list under a cap it fits is fine.
        assert!(StatusList::decode(1, &lst(&[0u8; 1024]), 1024).is_ok());
        assert_eq!(
            StatusList::decode(1, &lst(&[0u8; 1025]), 1024),
            Err(ListError::TooLarge)
        );
    }

    #[test]
    fn a_good_list_token_verifies_and_lives_its_ttl() {
        let list = verify(&list_token(&list_claims(1, &lst(&[0b10])))).unwrap();
        assert_eq!(list.check(0), Ok(()));
        assert_eq!(list.check(1), Err(AuthnError::Revoked));
        assert_eq!(list.expires_at, NOW + 60);
        assert_eq!(list.issued_at, NOW - 10);
    }

    #[test]
    fn list_token_typ_is_case_insensitive_with_application_prefix() {
        let header = json!({"alg": "ES256", "kid": "es256", "typ": "Application/StatusList+JWT"});
        assert!(verify(&list_token_with(
            "es256",
            &header,
            &list_claims(1, &lst(&[0]))
        ))
        .is_ok());
    }

    #[test]
    fn list_token_with_wrong_or_missing_typ_is_refused() {
        for header in [
            json!({"alg": "ES256", "kid": "es256", "typ": "JWT"}),
            json!({"alg": "ES256", "kid": "es256"}),
        ] {
            let t = list_token_with("es256", &header, &list_claims(1, &lst(&[0])));
            assert_eq!(verify(&t).unwrap_err(), ListError::Type);
        }
    }

    #[test]
    fn list_token_for_another_uri_is_refused() {
        let mut claims = list_claims(1, &lst(&[0]));
        claims["sub"] = json!("https://idp.test/statuslists/2");
        assert_eq!(
            verify(&list_token(&claims)).unwrap_err(),
            ListError::Subject
        );
        claims.as_object_mut().unwrap().remove("sub");
        assert_eq!(
            verify(&list_token(&claims)).unwrap_err(),
            ListError::Subject
        );
    }

    #[test]
    fn list_token_with_a_bad_signature_or_unknown_key_is_refused() {
        let header = json!({"alg": "RS256", "kid": "rs256", "typ": "statuslist+jwt"});
        let forged = list_token_with("rs256-other", &header, &list_claims(1, &lst(&[0])));
        assert_eq!(
            verify(&forged).unwrap_err(),
            ListError::Token(AuthnError::BadSignature)
        );
        let header = json!({"alg": "ES256", "kid": "nope", "typ": "statuslist+jwt"});
        let unknown = list_token_with("es256", &header, &list_claims(1, &lst(&[0])));
        assert_eq!(
            verify(&unknown).unwrap_err(),
            ListError::Token(AuthnError::UnknownKid)
        );
    }

    #[test]
    fn expired_list_token_is_refused() {
        let mut claims = list_claims(1, &lst(&[0]));
        claims["exp"] = json!(NOW - 61);
        assert_eq!(
            verify(&list_token(&claims)).unwrap_err(),
            ListError::Expired
        );
        claims["exp"] = json!("later");
        assert_eq!(
            verify(&list_token(&claims)).unwrap_err(),
            ListError::Expired
        );
    }

    #[test]
    fn list_token_iat_is_required_and_not_in_the_future() {
        let mut claims = list_claims(1, &lst(&[0]));
        claims.as_object_mut().unwrap().remove("iat");
        assert_eq!(
            verify(&list_token(&claims)).unwrap_err(),
            ListError::IssuedAt
        );
        claims["iat"] = json!(NOW + 3600);
        assert_eq!(
            verify(&list_token(&claims)).unwrap_err(),
            ListError::IssuedAt
        );
    }

    #[test]
    fn list_token_from_another_issuer_is_refused_and_without_iss_accepted() {
        let mut claims = list_claims(1, &lst(&[0]));
        claims["iss"] = json!("https://evil.test");
        assert_eq!(
            verify(&list_token(&claims)).unwrap_err(),
            ListError::Token(AuthnError::IssuerNotAllowed)
        );
        claims["iss"] = json!(ISSUER);
        assert!(verify(&list_token(&claims)).is_ok());
    }

    #[test]
    fn list_token_ttl_and_shape_are_checked() {
        let mut claims = list_claims(1, &lst(&[0]));
        claims["ttl"] = json!(0);
        assert_eq!(verify(&list_token(&claims)).unwrap_err(), ListError::Ttl);
        claims["ttl"] = json!(-5);
        assert_eq!(verify(&list_token(&claims)).unwrap_err(), ListError::Ttl);
        let mut claims = list_claims(1, &lst(&[0]));
        claims["status_list"] = json!({"bits": 1});
        assert_eq!(verify(&list_token(&claims)).unwrap_err(), ListError::Shape);
        claims["status_list"] = json!({"bits": 3, "lst": lst(&[0])});
        assert_eq!(verify(&list_token(&claims)).unwrap_err(), ListError::Bits);
    }

    #[test]
    fn list_lifetime_is_the_ttl_bounded_by_config_and_exp() {
        assert_eq!(expires_at(NOW, Some(60), None, 300), NOW + 60);
        assert_eq!(expires_at(NOW, Some(3600), None, 300), NOW + 300);
        assert_eq!(expires_at(NOW, None, None, 300), NOW + 300);
        assert_eq!(expires_at(NOW, Some(60), Some(NOW + 30), 300), NOW + 30);
    }

    #[test]
    fn a_tokens_reference_is_read_and_checked_against_origins() {
        let claims = |status: Value| json!({"status": status}).as_object().unwrap().clone();
        let ok = reference(
            &claims(json!({"status_list": {"idx": 7, "uri": URI}})),
            &policy(),
        );
        assert_eq!(
            ok,
            Ok(Some(StatusRef {
                idx: 7,
                uri: Rc::from(URI)
            }))
        );
        assert_eq!(reference(&Map::new(), &policy()), Ok(None));
        assert_eq!(
            reference(&claims(json!({"other": {}})), &policy()),
            Ok(None)
        );
        for bad in [
            json!("revoked"),
            json!({"status_list": "x"}),
            json!({"status_list": {"idx": -1, "uri": URI}}),
            json!({"status_list": {"idx": 1.5, "uri": URI}}),
            json!({"status_list": {"idx": "1", "uri": URI}}),
            json!({"status_list": {"uri": URI}}),
            json!({"status_list": {"idx": 1}}),
            json!({"status_list": {"idx": 1, "uri": "ftp://idp.test/x"}}),
        ] {
            assert_eq!(
                reference(&claims(bad.clone()), &policy()),
                Err(AuthnError::StatusInvalid),
                "{bad}"
            );
        }
        for elsewhere in [
            "https://evil.test/statuslists/1",
            "http://idp.test/statuslists/1",
            "https://idp.test:444/x",
        ] {
            let status = json!({"status_list": {"idx": 1, "uri": elsewhere}});
            assert_eq!(
                reference(&claims(status), &policy()),
                Err(AuthnError::StatusUriNotAllowed),
                "{elsewhere}"
            );
        }
        let status = json!({"status_list": {"idx": 1, "uri": "https://IDP.test/statuslists/1"}});
        assert!(
            reference(&claims(status), &policy()).unwrap().is_some(),
            "host case-insensitive"
        );
    }

    #[test]
    fn a_list_is_fetched_cold_when_wanted_and_refreshed_at_three_quarters_when_used() {
        let free = Lease::default();
        assert_eq!(fetch_due(None, &free, true, 0, 1000), Some(Due::Cold));
        assert_eq!(fetch_due(None, &free, false, 0, 1000), None);
        let fetched = Some((1000, 61_000));
        assert_eq!(fetch_due(fetched, &free, false, 2000, 40_000), None);
        assert_eq!(
            fetch_due(fetched, &free, false, 2000, 46_000),
            Some(Due::Refresh)
        );
        assert_eq!(
            fetch_due(fetched, &free, false, 500, 46_000),
            None,
            "not used since it was fetched"
        );
        assert_eq!(
            fetch_due(fetched, &free, false, 2000, 61_000),
            None,
            "ran out, nobody asks"
        );
        assert_eq!(
            fetch_due(fetched, &free, true, 2000, 61_000),
            Some(Due::Cold)
        );
        let held = Lease {
            until_ms: 50_000,
            ..Lease::default()
        };
        assert_eq!(fetch_due(None, &held, true, 0, 1000), None);
        let backing_off = Lease {
            retry_at_ms: 5000,
            ..Lease::default()
        };
        assert_eq!(fetch_due(None, &backing_off, true, 0, 1000), None);
        assert_eq!(
            fetch_due(None, &backing_off, true, 0, 5000),
            Some(Due::Cold)
        );
    }
}
