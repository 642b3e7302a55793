//! Verifying a compact JWS: size cap, strict parse, header checks, claim checks, key
//! selection, signature. `now` is passed in; nothing here reads a clock.
//!
//! Order matters for cost and for key refetches: everything cheap and local (header,
//! issuer, audience, time) is checked before a key is looked up, so a token that would
//! be refused anyway never costs a signature check or a JWKS refetch.

use crate::crypto::alg::Alg;
use crate::crypto::b64;
use crate::error::AuthnError;
use crate::json;
use crate::token::jwks::KeySet;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Tokens without `kid` are tried against at most this many keys.
const MAX_KEYLESS_CANDIDATES: usize = 8;

/// What a provider accepts, independent of where its keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub issuer: String,
    /// Empty: `aud` is not checked.
    pub audiences: Vec<String>,
    pub algorithms: Vec<Alg>,
    /// Normalized (lowercase, no `application/`); `None`: `typ` is not checked.
    pub token_types: Option<Vec<String>>,
    pub clock_skew_secs: u64,
    pub require_exp: bool,
    pub max_token_bytes: usize,
}

/// The token's validity window, kept with cache entries so every hit re-checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    pub exp: Option<i64>,
    pub nbf: Option<i64>,
}

/// A token whose signature and claims passed.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub claims: Map<String, Value>,
    /// The payload segment as it was in the token (base64url of the claims JSON).
    pub payload_segment: String,
    pub lifetime: Lifetime,
    pub alg: Alg,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    // Present with any value at all (even null) means the token is refused.
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

/// Normalizes a `typ` value or a configured token type for comparison (RFC 7515 §4.1.9).
pub fn normalize_token_type(typ: &str) -> String {
    let lower = typ.to_ascii_lowercase();
    match lower.strip_prefix("application/") {
        Some(rest) => rest.to_owned(),
        None => lower,
    }
}

/// A compact JWS split and decoded, nothing checked but its shape.
struct Parts<'t> {
    header: Header,
    header_json: Vec<u8>,
    payload_b64: &'t str,
    payload_json: Vec<u8>,
    claims: Map<String, Value>,
    signature: Vec<u8>,
    signing_input: &'t [u8],
    alg: Alg,
}

/// Size cap, strict parse, allowed algorithm, no `crit`.
fn parse<'t>(
    token: &'t str,
    algorithms: &[Alg],
    max_bytes: usize,
) -> Result<Parts<'t>, AuthnError> {
    if token.len() > max_bytes {
        return Err(AuthnError::TooLong);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthnError::Malformed);
    };
    let header_json = b64::decode(header_b64.as_bytes()).ok_or(AuthnError::Malformed)?;
    let header: Header = serde_json::from_slice(&header_json).map_err(|_| AuthnError::Malformed)?;
    let alg = Alg::from_name(&header.alg).ok_or(AuthnError::AlgNotAllowed)?;
    if !algorithms.contains(&alg) {
        return Err(AuthnError::AlgNotAllowed);
    }
    if header.crit {
        return Err(AuthnError::CritUnsupported);
    }
    let payload_json = b64::decode(payload_b64.as_bytes()).ok_or(AuthnError::Malformed)?;
    let claims: Map<String, Value> =
        serde_json::from_slice(&payload_json).map_err(|_| AuthnError::Malformed)?;
    let signature = b64::decode(signature_b64.as_bytes()).ok_or(AuthnError::Malformed)?;
    let signing_input_len = header_b64.len() + 1 + payload_b64.len();
    let signing_input = token
        .as_bytes()
        .get(..signing_input_len)
        .ok_or(AuthnError::Malformed)?;
    Ok(Parts {
        header,
        header_json,
        payload_b64,
        payload_json,
        claims,
        signature,
        signing_input,
        alg,
    })
}

/// The key and signature checks, then one reading of the signed documents.
fn check_signature(parts: &Parts<'_>, keys: &KeySet) -> Result<(), AuthnError> {
    let alg = parts.alg;
    let mut candidates = keys
        .with_kid(parts.header.kid.as_deref(), alg)
        .take(MAX_KEYLESS_CANDIDATES)
        .peekable();
    if candidates.peek().is_none() {
        return Err(AuthnError::UnknownKid);
    }
    let mut fitting = candidates.filter(|key| key.allows(alg)).peekable();
    if fitting.peek().is_none() {
        // The kid exists but is a different kind of key (e.g. HS256 naming an RSA key).
        return Err(AuthnError::AlgNotAllowed);
    }
    if !fitting.any(|key| key.key.verify(alg, parts.signing_input, &parts.signature)) {
        return Err(AuthnError::BadSignature);
    }
    // One reading of a signed document, or none: a member named twice would read one
    // way here and maybe another upstream (x-jwt-payload). Checked once the signature
    // holds, so unsigned junk never costs the scan.
    if json::has_repeated_member(&parts.header_json)
        || json::has_repeated_member(&parts.payload_json)
    {
        return Err(AuthnError::Malformed);
    }
    Ok(())
}

/// A JWS that is not an access token (a Status List Token, a logout token), signed by
/// one of `keys` with one of `algorithms`: its normalized `typ` and its claims, for the
/// caller's own rules. No claim is checked here.
#[derive(Debug, Clone, PartialEq)]
pub struct Signed {
    pub typ: Option<String>,
    pub claims: Map<String, Value>,
}

/// Verifies the signature of a JWS that has its own claim rules (not a provider's).
pub fn verify_signed(
    token: &str,
    algorithms: &[Alg],
    keys: &KeySet,
    max_bytes: usize,
) -> Result<Signed, AuthnError> {
    let parts = parse(token, algorithms, max_bytes)?;
    check_signature(&parts, keys)?;
    Ok(Signed {
        typ: parts.header.typ.as_deref().map(normalize_token_type),
        claims: parts.claims,
    })
}

/// Verifies `token` against `policy` and `keys` at time `now` (seconds since the epoch).
pub fn verify(
    token: &str,
    policy: &Policy,
    keys: &KeySet,
    now: u64,
) -> Result<Verified, AuthnError> {
    let parts = parse(token, &policy.algorithms, policy.max_token_bytes)?;
    if let Some(allowed) = &policy.token_types {
        let typ = parts.header.typ.as_deref().map(normalize_token_type);
        if !typ.is_some_and(|typ| allowed.contains(&typ)) {
            return Err(AuthnError::TokenTypeNotAllowed);
        }
    }
    let claims = &parts.claims;
    if claims.get("iss").and_then(Value::as_str) != Some(policy.issuer.as_str()) {
        return Err(AuthnError::IssuerNotAllowed);
    }
    if !policy.audiences.is_empty() && !audience_matches(claims.get("aud"), &policy.audiences) {
        return Err(AuthnError::AudienceNotAllowed);
    }
    let lifetime = Lifetime {
        exp: numeric_date(claims.get("exp"))?,
        nbf: numeric_date(claims.get("nbf"))?,
    };
    check_lifetime(lifetime, policy, now)?;
    check_signature(&parts, keys)?;
    Ok(Verified {
        payload_segment: parts.payload_b64.to_owned(),
        claims: parts.claims,
        lifetime,
        alg: parts.alg,
    })
}

/// Checks `exp` and `nbf` with the provider's clock skew. Called on every cache hit too.
pub fn check_lifetime(lifetime: Lifetime, policy: &Policy, now: u64) -> Result<(), AuthnError> {
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    let skew = i64::try_from(policy.clock_skew_secs).unwrap_or(i64::MAX);
    match lifetime.exp {
        Some(exp) if now >= exp.saturating_add(skew) => return Err(AuthnError::Expired),
        None if policy.require_exp => return Err(AuthnError::MissingExp),
        _ => {}
    }
    match lifetime.nbf {
        Some(nbf) if now.saturating_add(skew) < nbf => Err(AuthnError::NotYetValid),
        _ => Ok(()),
    }
}

/// Whether `aud` (a string or an array) holds one of `allowed`.
pub fn audience_matches(aud: Option<&Value>, allowed: &[String]) -> bool {
    match aud {
        Some(Value::String(one)) => allowed.iter().any(|a| a == one),
        Some(Value::Array(many)) => many
            .iter()
            .filter_map(Value::as_str)
            .any(|one| allowed.iter().any(|a| a == one)),
        _ => false,
    }
}

/// A NumericDate (RFC 7519 §2): a JSON number, possibly fractional. Anything else
/// where a date must be is a malformed token.
pub fn numeric_date(value: Option<&Value>) -> Result<Option<i64>, AuthnError> {
    match value {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i))
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite()) {
                // Saturating float-to-int conversion; fractions round down.
                Ok(Some(f.floor() as i64))
            } else {
                Err(AuthnError::Malformed)
            }
        }
        Some(_) => Err(AuthnError::Malformed),
    }
}

/// A NumericDate that must be there, as whole seconds since the epoch (negative: none).
pub fn numeric_date_secs(value: Option<&Value>) -> Option<u64> {
    numeric_date(value)
        .ok()
        .flatten()
        .and_then(|d| u64::try_from(d).ok())
}

/// True if the string has the shape of a compact JWS (three base64url-alphabet parts).
/// Used to decide whether a token is tried against providers before exchanges.
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = 0;
    for part in token.split('.') {
        parts += 1;
        if part.is_empty() && parts < 3 {
            return false;
        }
        if !part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return false;
        }
    }
    parts == 3
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use serde_json::json;

    fn policy() -> Policy {
        Policy {
            issuer: ISSUER.into(),
            audiences: vec!["orders".into()],
            algorithms: Alg::ALL.to_vec(),
            token_types: None,
            clock_skew_secs: 60,
            require_exp: true,
            max_token_bytes: 8192,
        }
    }

    fn check(token: &str) -> Result<Verified, AuthnError> {
        verify(token, &policy(), &keyset(), NOW)
    }

    fn with(claims: Value, key: &str, change: impl FnOnce(&mut Map<String, Value>)) -> String {
        let mut claims = claims;
        change(claims.as_object_mut().unwrap());
        token(key, &claims)
    }

    /// jwt-simple's verdict on the signature alone (claims checks relaxed), as an oracle.
    fn oracle_accepts(name: &str, token: &str) -> bool {
        use jwt_simple::prelude::*;
        let public = signing_key(name).public_jwk();
        let b =
            |m: &str| crate::crypto::b64::decode(public[m].as_str().unwrap().as_bytes()).unwrap();
        let options = VerificationOptions {
            time_tolerance: Some(Duration::from_hours(24)),
            artificial_time: Some(UnixTimeStamp::from_secs(NOW)),
            ..Default::default()
        };
        let options = Some(options);
        match name {
            "rs256" => RS256PublicKey::from_components(&b("n"), &b("e"))
                .unwrap()
                .verify_token::<JWTClaims<NoCustomClaims>>(token, options)
                .is_ok(),
            "ps256" => PS256PublicKey::from_components(&b("n"), &b("e"))
                .unwrap()
                .verify_token::<NoCustomClaims>(token, options)
                .is_ok(),
            "es256" => {
                let point = [vec![4u8], b("x"), b("y")].concat();
                ES256PublicKey::from_bytes(&point)
                    .unwrap()
                    .verify_token::<NoCustomClaims>(token, options)
                    .is_ok()
            }
            "es384" => {
                let point = [vec![4u8], b("x"), b("y")].concat();
                ES384PublicKey::from_bytes(&point)
                    .unwrap()
                    .verify_token::<NoCustomClaims>(token, options)
                    .is_ok()
            }
            "eddsa" => Ed25519PublicKey::from_bytes(&b("x"))
                .unwrap()
                .verify_token::<NoCustomClaims>(token, options)
                .is_ok(),
            "hs256" => HS256Key::from_bytes(&b("k"))
                .verify_token::<NoCustomClaims>(token, options)
                .is_ok(),
            other => panic!("no oracle for {other}"),
        }
    }

    const FAMILIES: [(&str, Alg); 6] = [
        ("rs256", Alg::RS256),
        ("ps256", Alg::PS256),
        ("es256", Alg::ES256),
        ("es384", Alg::ES384),
        ("eddsa", Alg::EdDSA),
        ("hs256", Alg::HS256),
    ];

    /// A token whose payload is exactly this text, signed with a trusted key.
    fn signed_payload(payload: &str) -> String {
        let key = signing_key("es256");
        let input = format!(
            "{}.{}",
            crate::crypto::b64::encode(br#"{"alg":"ES256","kid":"es256"}"#),
            crate::crypto::b64::encode(payload.as_bytes())
        );
        let signature = key.sign_bytes(input.as_bytes()).unwrap();
        format!("{input}.{}", crate::crypto::b64::encode(&signature))
    }

    #[test]
    fn claims_naming_a_member_twice_are_refused_even_when_signed() {
        let exp = NOW + 600;
        let twice = format!(
            r#"{{"iss":"{ISSUER}","aud":"orders","exp":{exp},"sub":"alice","sub":"admin"}}"#
        );
        assert_eq!(
            verify(&signed_payload(&twice), &policy(), &keyset(), NOW),
            Err(AuthnError::Malformed)
        );
        let nested = format!(
            r#"{{"iss":"{ISSUER}","aud":"orders","exp":{exp},"realm_access":{{"roles":["user"],"roles":["admin"]}}}}"#
        );
        assert_eq!(
            verify(&signed_payload(&nested), &policy(), &keyset(), NOW),
            Err(AuthnError::Malformed)
        );
        let once = format!(r#"{{"iss":"{ISSUER}","aud":"orders","exp":{exp},"sub":"alice"}}"#);
        assert!(verify(&signed_payload(&once), &policy(), &keyset(), NOW).is_ok());
    }

    #[test]
    fn valid_token_of_every_family_is_accepted_and_the_oracle_agrees() {
        for (name, alg) in FAMILIES {
            let token = token(name, &good_claims());
            let verified = check(&token).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert_eq!(verified.alg, alg);
            assert_eq!(verified.claims["sub"], "alice");
            assert!(
                oracle_accepts(name, &token),
                "jwt-simple refused a {name} token we accept"
            );
        }
    }

    #[test]
    fn tampered_signature_or_payload_is_refused_by_both_us_and_the_oracle() {
        for (name, _) in FAMILIES {
            let token = token(name, &good_claims());
            let (input, sig) = token.rsplit_once('.').unwrap();
            let mut sig_bytes = crate::crypto::b64::decode(sig.as_bytes()).unwrap();
            sig_bytes[3] ^= 0x01;
            let flipped = format!("{input}.{}", crate::crypto::b64::encode(&sig_bytes));
            assert_eq!(
                check(&flipped).unwrap_err(),
                AuthnError::BadSignature,
                "{name}"
            );
            assert!(!oracle_accepts(name, &flipped), "{name}");

            let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
            let mut claims = good_claims();
            claims["sub"] = json!("mallory");
            parts[1] = crate::crypto::b64::encode(claims.to_string().as_bytes());
            let swapped = parts.join(".");
            assert_eq!(
                check(&swapped).unwrap_err(),
                AuthnError::BadSignature,
                "{name}"
            );
            assert!(!oracle_accepts(name, &swapped), "{name}");
        }
    }

    #[test]
    fn truncated_or_padded_signature_is_refused() {
        for (name, _) in FAMILIES {
            let token = token(name, &good_claims());
            let (input, sig) = token.rsplit_once('.').unwrap();
            let bytes = crate::crypto::b64::decode(sig.as_bytes()).unwrap();
            let short = format!(
                "{input}.{}",
                crate::crypto::b64::encode(&bytes[..bytes.len() - 1])
            );
            let long = format!(
                "{input}.{}",
                crate::crypto::b64::encode(&[bytes.as_slice(), &[0]].concat())
            );
            assert_eq!(
                check(&short).unwrap_err(),
                AuthnError::BadSignature,
                "{name}"
            );
            assert_eq!(
                check(&long).unwrap_err(),
                AuthnError::BadSignature,
                "{name}"
            );
            assert!(
                !oracle_accepts(name, &short) && !oracle_accepts(name, &long),
                "{name}"
            );
        }
    }

    #[test]
    fn token_signed_by_another_key_with_a_known_kid_has_a_bad_signature() {
        let header = json!({"alg": "RS256", "kid": "rs256"});
        let forged = token_with_header("rs256-other", &header, &good_claims());
        assert_eq!(check(&forged).unwrap_err(), AuthnError::BadSignature);
        assert!(!oracle_accepts("rs256", &forged));
    }

    #[test]
    fn expired_token_is_refused_with_expired() {
        let t = with(good_claims(), "es256", |c| {
            c.insert("exp".into(), json!(NOW - 61));
        });
        assert_eq!(check(&t).unwrap_err(), AuthnError::Expired);
    }

    #[test]
    fn token_expired_within_the_clock_skew_is_accepted() {
        let t = with(good_claims(), "es256", |c| {
            c.insert("exp".into(), json!(NOW - 59));
        });
        assert!(check(&t).is_ok());
    }

    #[test]
    fn fractional_exp_is_a_date() {
        let t = with(good_claims(), "es256", |c| {
            c.insert("exp".into(), json!((NOW - 100) as f64 + 0.5));
        });
        assert_eq!(check(&t).unwrap_err(), AuthnError::Expired);
    }

    #[test]
    fn not_yet_valid_token_is_refused() {
        let t = with(good_claims(), "es256", |c| {
            c.insert("nbf".into(), json!(NOW + 61));
        });
        assert_eq!(check(&t).unwrap_err(), AuthnError::NotYetValid);
        let t = with(good_claims(), "es256", |c| {
            c.insert("nbf".into(), json!(NOW + 59));
        });
        assert!(check(&t).is_ok(), "within the skew");
    }

    #[test]
    fn token_without_exp_is_refused_when_exp_is_required() {
        let t = with(good_claims(), "es256", |c| {
            c.remove("exp");
        });
        assert_eq!(check(&t).unwrap_err(), AuthnError::MissingExp);
        let relaxed = Policy {
            require_exp: false,
            ..policy()
        };
        assert!(verify(&t, &relaxed, &keyset(), NOW).is_ok());
    }

    #[test]
    fn non_numeric_exp_is_malformed() {
        let t = with(good_claims(), "es256", |c| {
            c.insert("exp".into(), json!("tomorrow"));
        });
        assert_eq!(check(&t).unwrap_err(), AuthnError::Malformed);
    }

    #[test]
    fn wrong_or_missing_issuer_is_refused() {
        let t = with(good_claims(), "es256", |c| {
            c.insert("iss".into(), json!("https://evil.test"));
        });
        assert_eq!(check(&t).unwrap_err(), AuthnError::IssuerNotAllowed);
        let t = with(good_claims(), "es256", |c| {
            c.remove("iss");
        });
        assert_eq!(check(&t).unwrap_err(), AuthnError::IssuerNotAllowed);
    }

    #[test]
    fn audience_must_contain_a_configured_one() {
        let t = with(good_claims(), "es256", |c| {
            c.insert("aud".into(), json!(["billing", "orders"]));
        });
        assert!(check(&t).is_ok());
        let t = with(good_claims(), "es256", |c| {
            c.insert("aud".into(), json!("billing"));
        });
        assert_eq!(check(&t).unwrap_err(), AuthnError::AudienceNotAllowed);
        let t = with(good_claims(), "es256", |c| {
            c.remove("aud");
        });
        assert_eq!(check(&t).unwrap_err(), AuthnError::AudienceNotAllowed);
        let any = Policy {
            audiences: vec![],
            ..policy()
        };
        assert!(
            verify(&t, &any, &keyset(), NOW).is_ok(),
            "no audiences configured: aud not checked"
        );
    }

    #[test]
    fn unknown_kid_is_refused() {
        let t = token_with_header(
            "es256",
            &json!({"alg": "ES256", "kid": "nope"}),
            &good_claims(),
        );
        assert_eq!(check(&t).unwrap_err(), AuthnError::UnknownKid);
    }

    #[test]
    fn token_without_kid_is_tried_against_keys_that_fit() {
        let t = token_with_header("eddsa", &json!({"alg": "EdDSA"}), &good_claims());
        assert!(check(&t).is_ok());
    }

    #[test]
    fn alg_none_is_refused_and_the_oracle_agrees() {
        let header = crate::crypto::b64::encode(br#"{"alg":"none","kid":"rs256"}"#);
        let payload = crate::crypto::b64::encode(good_claims().to_string().as_bytes());
        let t = format!("{header}.{payload}.");
        assert_eq!(check(&t).unwrap_err(), AuthnError::AlgNotAllowed);
        assert!(!oracle_accepts("rs256", &t));
    }

    #[test]
    fn hs256_signed_with_the_rsa_public_key_is_refused() {
        let public = signing_key("rs256").public_jwk();
        let header = crate::crypto::b64::encode(br#"{"alg":"HS256","kid":"rs256"}"#);
        let payload = crate::crypto::b64::encode(good_claims().to_string().as_bytes());
        let input = format!("{header}.{payload}");
        for secret in [
            public.to_string().into_bytes(),
            crate::crypto::b64::decode(public["n"].as_str().unwrap().as_bytes()).unwrap(),
        ] {
            let mac = crate::crypto::sign::hmac(
                crate::crypto::alg::Hash::Sha256,
                &secret,
                input.as_bytes(),
            );
            let t = format!("{input}.{}", crate::crypto::b64::encode(&mac));
            assert_eq!(check(&t).unwrap_err(), AuthnError::AlgNotAllowed);
        }
    }

    #[test]
    fn algorithm_outside_the_allow_list_is_refused() {
        let only_rs = Policy {
            algorithms: vec![Alg::RS256],
            ..policy()
        };
        let t = token("es256", &good_claims());
        assert_eq!(
            verify(&t, &only_rs, &keyset(), NOW).unwrap_err(),
            AuthnError::AlgNotAllowed
        );
    }

    #[test]
    fn key_with_its_own_alg_refuses_another_alg_of_the_same_type() {
        // rs256's JWK says alg RS256; a PS256 signature by the same private key is refused.
        let mut jwk = private_jwk("rs256");
        jwk["alg"] = json!("PS256");
        let ps_signer = crate::crypto::sign::SigningKey::from_jwk(&jwk).unwrap();
        let t = ps_signer.sign(&good_claims()).unwrap();
        assert_eq!(check(&t).unwrap_err(), AuthnError::AlgNotAllowed);
    }

    #[test]
    fn crit_header_is_refused_whatever_its_value() {
        for crit in [json!(["exp"]), json!([]), json!(null)] {
            let t = token_with_header(
                "es256",
                &json!({"alg": "ES256", "kid": "es256", "crit": crit}),
                &good_claims(),
            );
            assert_eq!(check(&t).unwrap_err(), AuthnError::CritUnsupported);
        }
    }

    #[test]
    fn embedded_keys_in_the_header_are_ignored() {
        // A jwk header naming the attacker's key must not be used to verify.
        let attacker = signing_key("rs256-other").public_jwk();
        let header = json!({"alg": "RS256", "kid": "rs256", "jwk": attacker, "jku": "http://evil/jwks", "x5u": "http://evil"});
        let t = token_with_header("rs256-other", &header, &good_claims());
        assert_eq!(check(&t).unwrap_err(), AuthnError::BadSignature);
    }

    #[test]
    fn token_over_the_size_cap_is_refused_before_decoding() {
        let small = Policy {
            max_token_bytes: 100,
            ..policy()
        };
        let t = token("es256", &good_claims());
        assert_eq!(
            verify(&t, &small, &keyset(), NOW).unwrap_err(),
            AuthnError::TooLong
        );
        assert_eq!(
            verify(&"x".repeat(101), &small, &keyset(), NOW).unwrap_err(),
            AuthnError::TooLong
        );
    }

    #[test]
    fn non_strict_base64url_is_malformed() {
        let t = token("es256", &good_claims());
        let parts: Vec<&str> = t.split('.').collect();
        let padded = format!("{}=.{}.{}", parts[0], parts[1], parts[2]);
        let spaced = format!("{}. {}.{}", parts[0], parts[1], parts[2]);
        let standard = format!(
            "{}.{}.{}",
            parts[0],
            parts[1].replace('-', "+").replace('_', "/"),
            parts[2]
        );
        for bad in [padded, spaced] {
            assert_eq!(check(&bad).unwrap_err(), AuthnError::Malformed, "{bad}");
        }
        if standard != t {
            assert_eq!(check(&standard).unwrap_err(), AuthnError::Malformed);
        }
    }

    #[test]
    fn wrong_shapes_are_malformed() {
        let t = token("es256", &good_claims());
        for bad in [
            String::new(),
            "abc".to_owned(),
            "a.b".to_owned(),
            format!("{t}.extra"),
            format!(
                "{}.{}.x",
                crate::crypto::b64::encode(b"[1]"),
                crate::crypto::b64::encode(b"{}")
            ),
            format!(
                "{}.{}.x",
                crate::crypto::b64::encode(br#"{"alg":"ES256"}"#),
                crate::crypto::b64::encode(b"[1,2]")
            ),
            format!(
                "{}.{}.x",
                crate::crypto::b64::encode(br#"{"alg":"ES256","kid":5}"#),
                crate::crypto::b64::encode(b"{}")
            ),
        ] {
            assert_eq!(check(&bad).unwrap_err(), AuthnError::Malformed, "{bad}");
        }
    }

    #[test]
    fn duplicate_alg_in_the_header_is_malformed() {
        let header = crate::crypto::b64::encode(br#"{"alg":"HS256","alg":"ES256","kid":"es256"}"#);
        let payload = crate::crypto::b64::encode(good_claims().to_string().as_bytes());
        assert_eq!(
            check(&format!("{header}.{payload}.AAAA")).unwrap_err(),
            AuthnError::Malformed
        );
    }

    #[test]
    fn token_type_is_checked_when_configured() {
        let at = Policy {
            token_types: Some(vec![normalize_token_type("at+jwt")]),
            ..policy()
        };
        let good = token_with_header(
            "es256",
            &json!({"alg": "ES256", "kid": "es256", "typ": "application/AT+JWT"}),
            &good_claims(),
        );
        assert!(verify(&good, &at, &keyset(), NOW).is_ok());
        let id_token = token("es256", &good_claims()); // typ JWT
        assert_eq!(
            verify(&id_token, &at, &keyset(), NOW).unwrap_err(),
            AuthnError::TokenTypeNotAllowed
        );
        let untyped = token_with_header(
            "es256",
            &json!({"alg": "ES256", "kid": "es256"}),
            &good_claims(),
        );
        assert_eq!(
            verify(&untyped, &at, &keyset(), NOW).unwrap_err(),
            AuthnError::TokenTypeNotAllowed
        );
    }

    #[test]
    fn looks_like_jwt_means_three_base64url_parts() {
        assert!(looks_like_jwt("a.b.c"));
        assert!(looks_like_jwt("a.b."));
        assert!(!looks_like_jwt("opaque-token"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt("a+.b.c"));
    }
}

/// The public catalog of JWT attacks, one named test each where the tests above do not
/// already name it: every one must be refused, for the reason given.
#[cfg(test)]
mod attack_catalog {
    use super::*;
    use crate::crypto::b64;
    use crate::testutil::*;
    use serde_json::json;

    fn policy() -> Policy {
        Policy {
            issuer: ISSUER.into(),
            audiences: vec!["orders".into()],
            algorithms: Alg::ALL
                .iter()
                .copied()
                .filter(|a| !a.is_symmetric())
                .collect(),
            token_types: None,
            clock_skew_secs: 60,
            require_exp: true,
            max_token_bytes: 8192,
        }
    }

    fn check(token: &str) -> Result<Verified, AuthnError> {
        verify(token, &policy(), &keyset(), NOW)
    }

    /// A compact JWS of these exact header and payload texts, signed with a fixture key.
    fn signed_texts(key: &str, header: &str, payload: &str) -> String {
        let input = format!(
            "{}.{}",
            b64::encode(header.as_bytes()),
            b64::encode(payload.as_bytes())
        );
        let signature = signing_key(key).sign_bytes(input.as_bytes()).unwrap();
        format!("{input}.{}", b64::encode(&signature))
    }

    #[test]
    fn alg_none_in_every_capitalization_is_refused() {
        let payload = b64::encode(good_claims().to_string().as_bytes());
        for alg in ["none", "None", "NONE", "nOnE", "none "] {
            let header = b64::encode(json!({"alg": alg, "kid": "rs256"}).to_string().as_bytes());
            for signature in ["", "AA"] {
                let t = format!("{header}.{payload}.{signature}");
                assert_eq!(check(&t).unwrap_err(), AuthnError::AlgNotAllowed, "{alg:?}");
            }
        }
    }

    #[test]
    fn hs256_keyed_with_the_public_key_as_pem_der_or_ec_coordinates_is_refused() {
        let header = b64::encode(br#"{"alg":"HS256","kid":"es256"}"#);
        let payload = b64::encode(good_claims().to_string().as_bytes());
        let input = format!("{header}.{payload}");
        let public = signing_key("es256").public_jwk();
        let x = b64::decode(public["x"].as_str().unwrap().as_bytes()).unwrap();
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            public["x"]
        );
        for secret in [pem.into_bytes(), x.clone(), [&[4u8][..], &x].concat()] {
            for hash in [
                crate::crypto::alg::Hash::Sha256,
                crate::crypto::alg::Hash::Sha384,
                crate::crypto::alg::Hash::Sha512,
            ] {
                let mac = crate::crypto::hmac(hash, &secret, input.as_bytes());
                let t = format!("{input}.{}", b64::encode(&mac));
                assert_eq!(check(&t).unwrap_err(), AuthnError::AlgNotAllowed);
            }
        }
    }

    #[test]
    fn kid_with_path_traversal_or_sql_finds_no_key() {
        for kid in [
            "../../../../dev/null",
            "/etc/passwd",
            "' OR '1'='1",
            "rs256' --",
            "rs256\u{0}",
        ] {
            let t = token_with_header(
                "es256",
                &json!({"alg": "ES256", "kid": kid}),
                &good_claims(),
            );
            assert_eq!(check(&t).unwrap_err(), AuthnError::UnknownKid, "{kid:?}");
        }
    }

    #[test]
    fn keys_named_by_jku_x5u_jwk_or_x5c_are_never_used() {
        // Signed with the attacker's key, which each header offers in its own way.
        let attacker = signing_key("rs256-other");
        let jwk = attacker.public_jwk();
        for (member, value) in [
            ("jku", json!("https://evil.example/keys.json")),
            ("x5u", json!("https://evil.example/cert.pem")),
            ("jwk", jwk.clone()),
            (
                "x5c",
                json!(["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]),
            ),
        ] {
            let mut header = json!({"alg": "RS256", "kid": "rs256"});
            header[member] = value;
            let t = attacker.sign_with_header(&header, &good_claims()).unwrap();
            assert_eq!(check(&t).unwrap_err(), AuthnError::BadSignature, "{member}");
        }
    }

    #[test]
    fn ecdsa_signatures_of_zero_or_the_group_order_are_refused() {
        // CVE-2022-21449 ("psychic signatures") and its neighbours.
        const N: [u8; 32] = [
            0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2,
            0xfc, 0x63, 0x25, 0x51,
        ];
        let t = token("es256", &good_claims());
        let input = t.rsplit_once('.').unwrap().0;
        let zero = [0u8; 32];
        let mut one = [0u8; 32];
        one[31] = 1;
        for (r, s) in [(zero, zero), (N, N), (zero, one), (one, N), (N, one)] {
            let forged = format!("{input}.{}", b64::encode(&[r, s].concat()));
            assert_eq!(check(&forged).unwrap_err(), AuthnError::BadSignature);
        }
    }

    #[test]
    fn a_der_encoded_ecdsa_signature_is_refused() {
        let t = token("es256", &good_claims());
        let (input, signature) = t.rsplit_once('.').unwrap();
        let raw = b64::decode(signature.as_bytes()).unwrap();
        let (r, s) = raw.split_at(32);
        let int = |v: &[u8]| {
            let mut out = vec![0x02, 33, 0];
            out.extend_from_slice(v);
            out
        };
        let body = [int(r), int(s)].concat();
        let der = [vec![0x30, body.len() as u8], body].concat();
        let forged = format!("{input}.{}", b64::encode(&der));
        assert_eq!(check(&forged).unwrap_err(), AuthnError::BadSignature);
    }

    #[test]
    fn unencoded_payload_and_nested_jwts_are_not_read() {
        // RFC 7797 b64:false needs crit, which is refused; without crit the signature
        // over the base64url payload still has to hold, and the payload must be claims.
        let claims = good_claims().to_string();
        let b64_false = signed_texts(
            "es256",
            r#"{"alg":"ES256","kid":"es256","b64":false,"crit":["b64"]}"#,
            &claims,
        );
        assert_eq!(check(&b64_false).unwrap_err(), AuthnError::CritUnsupported);
        let inner = token("es256", &good_claims());
        let nested = signed_texts(
            "es256",
            r#"{"alg":"ES256","kid":"es256","cty":"JWT"}"#,
            &format!("\"{inner}\""),
        );
        assert_eq!(check(&nested).unwrap_err(), AuthnError::Malformed);
    }

    #[test]
    fn jwe_and_lenient_base64url_are_malformed() {
        let t = token("es256", &good_claims());
        let parts: Vec<&str> = t.split('.').collect();
        let jwe = format!(
            "{}.{}.{}.{}.{}",
            parts[0], "AAAA", "AAAA", parts[1], parts[2]
        );
        assert_eq!(check(&jwe).unwrap_err(), AuthnError::Malformed);
        for variant in [
            format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
            format!("{}.{} .{}", parts[0], parts[1], parts[2]),
            format!("{}.{}.{}\n", parts[0], parts[1], parts[2]),
            format!(
                "{}.{}.{}",
                parts[0].replace('_', "/"),
                parts[1].replace('-', "+"),
                parts[2]
            ),
        ] {
            if variant != t {
                assert!(check(&variant).is_err(), "{variant}");
            }
        }
    }

    #[test]
    fn payloads_that_are_not_utf8_json_objects_are_malformed() {
        for payload in [
            "[1,2]",
            "\"claims\"",
            "null",
            "42",
            "{\"iss\":\"x\"",
            "\u{feff}{}",
        ] {
            let t = signed_texts("es256", r#"{"alg":"ES256","kid":"es256"}"#, payload);
            assert_eq!(check(&t).unwrap_err(), AuthnError::Malformed, "{payload:?}");
        }
        let input = format!(
            "{}.{}",
            b64::encode(br#"{"alg":"ES256","kid":"es256"}"#),
            b64::encode(&[0x7b, 0xff, 0x7d])
        );
        let signature = signing_key("es256").sign_bytes(input.as_bytes()).unwrap();
        let t = format!("{input}.{}", b64::encode(&signature));
        assert_eq!(check(&t).unwrap_err(), AuthnError::Malformed);
    }

    #[test]
    fn exp_as_a_string_is_malformed_and_beyond_i64_is_far_future() {
        let mut claims = good_claims();
        claims["exp"] = json!(format!("{}", NOW + 600));
        assert_eq!(
            check(&token("es256", &claims)).unwrap_err(),
            AuthnError::Malformed
        );
        claims["exp"] = json!(9_223_372_036_854_775_808u64);
        let verified = check(&token("es256", &claims)).unwrap();
        assert_eq!(verified.lifetime.exp, Some(i64::MAX));
        claims["exp"] = json!(-1);
        assert_eq!(
            check(&token("es256", &claims)).unwrap_err(),
            AuthnError::Expired
        );
    }

    #[test]
    fn an_issuer_differing_by_a_trailing_slash_or_case_is_refused() {
        for iss in [
            format!("{ISSUER}/"),
            ISSUER.to_uppercase(),
            format!(" {ISSUER}"),
        ] {
            let mut claims = good_claims();
            claims["iss"] = json!(iss);
            assert_eq!(
                check(&token("es256", &claims)).unwrap_err(),
                AuthnError::IssuerNotAllowed
            );
        }
    }
}
