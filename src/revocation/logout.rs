//! OpenID Connect Back-Channel Logout 1.0, §2.4 and §2.6: reading and validating a
//! logout token. What it logs out goes to the [`super::denylist`].

use super::Signer;
use crate::error::AuthnError;
use crate::token::jwt::{self, audience_matches, numeric_date_secs};
use serde_json::Value;

/// The `events` member a logout token must carry.
pub const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// The `typ` a logout token should carry (§2.4). Absent and the generic `JWT` are
/// accepted too (§2.4 only recommends explicit typing, and IdPs such as Keycloak send
/// `JWT`); any other type (an access token's `at+jwt`, a list's) is refused.
pub const LOGOUT_TOKEN_TYPE: &str = "logout+jwt";
/// A logout token older than this (plus the clock skew) is refused: it is fresh or it is
/// a replay whose `jti` may have been forgotten.
pub const MAX_AGE_SECS: u64 = 300;
/// Logout tokens are small; a form body bigger than this is refused unread (413).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// What a valid logout token asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logout {
    pub sub: Option<String>,
    pub sid: Option<String>,
    pub jti: String,
    pub iat: u64,
}

/// Why a logout request is refused (400 `invalid_request`, or 413).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogoutError {
    /// The body is bigger than [`MAX_BODY_BYTES`].
    BodyTooLarge,
    /// No `logout_token` form parameter (or it is given twice).
    MissingToken,
    /// Not a JWS signed by the provider's keys with an allowed algorithm.
    Signature(AuthnError),
    /// `typ` present and not `logout+jwt`.
    Type,
    Issuer,
    Audience,
    /// `iat` missing, in the future, or older than [`MAX_AGE_SECS`].
    IssuedAt,
    Expired,
    /// `events` without the back-channel logout member as a JSON object.
    Events,
    /// Neither `sub` nor `sid` (or one that is not a string).
    NoSubject,
    /// A `nonce` is there: an ID token, not a logout token (§2.4).
    Nonce,
    /// No `jti`.
    NoJti,
    /// This `jti` was seen before.
    Replayed,
    /// The denylist could not be updated (shared data contention): try again.
    Busy,
}

impl LogoutError {
    /// The `error_description` of the 400 answer: fixed text, never a claim.
    pub fn description(self) -> &'static str {
        match self {
            LogoutError::BodyTooLarge => "request body too large",
            LogoutError::MissingToken => "logout_token parameter required",
            LogoutError::Signature(_) => "logout token signature invalid",
            LogoutError::Type => "logout token typ is not logout+jwt or JWT",
            LogoutError::Issuer => "logout token issuer not allowed",
            LogoutError::Audience => "logout token audience not allowed",
            LogoutError::IssuedAt => "logout token iat missing or not fresh",
            LogoutError::Expired => "logout token expired",
            LogoutError::Events => "logout token has no back-channel logout event",
            LogoutError::NoSubject => "logout token has neither sub nor sid",
            LogoutError::Nonce => "logout token must not contain a nonce",
            LogoutError::NoJti => "logout token has no jti",
            LogoutError::Replayed => "logout token already used",
            LogoutError::Busy => "logout could not be recorded, try again",
        }
    }
}

/// What a logout token is checked with: the provider's signature, the client id.
pub struct LogoutCheck<'a> {
    pub signer: Signer<'a>,
    pub client_id: &'a str,
}

/// Validates a logout token per §2.6 (the `jti` replay check is the denylist's).
pub fn verify(token: &str, check: &LogoutCheck<'_>, now: u64) -> Result<Logout, LogoutError> {
    let signer = check.signer;
    let signed = jwt::verify_signed(token, signer.algorithms, signer.keys, MAX_TOKEN_BYTES)
        .map_err(LogoutError::Signature)?;
    if signed
        .typ
        .as_deref()
        .is_some_and(|typ| typ != LOGOUT_TOKEN_TYPE && typ != "jwt")
    {
        return Err(LogoutError::Type);
    }
    let claims = &signed.claims;
    if claims.get("iss").and_then(Value::as_str) != Some(signer.issuer) {
        return Err(LogoutError::Issuer);
    }
    if !audience_matches(claims.get("aud"), &[check.client_id.to_owned()]) {
        return Err(LogoutError::Audience);
    }
    let skew = signer.clock_skew_secs;
    let iat = numeric_date_secs(claims.get("iat")).ok_or(LogoutError::IssuedAt)?;
    if iat > now.saturating_add(skew) || now > iat.saturating_add(MAX_AGE_SECS + skew) {
        return Err(LogoutError::IssuedAt);
    }
    if let Some(exp) = claims.get("exp") {
        let exp = numeric_date_secs(Some(exp)).ok_or(LogoutError::Expired)?;
        if now >= exp.saturating_add(skew) {
            return Err(LogoutError::Expired);
        }
    }
    let event = claims
        .get("events")
        .and_then(Value::as_object)
        .and_then(|events| events.get(EVENT));
    if !event.is_some_and(Value::is_object) {
        return Err(LogoutError::Events);
    }
    let text = |name: &str| -> Result<Option<String>, LogoutError> {
        match claims.get(name) {
            None => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(LogoutError::NoSubject),
        }
    };
    let (sub, sid) = (text("sub")?, text("sid")?);
    if sub.is_none() && sid.is_none() {
        return Err(LogoutError::NoSubject);
    }
    if claims.contains_key("nonce") {
        return Err(LogoutError::Nonce);
    }
    let jti = match claims.get("jti") {
        Some(Value::String(jti)) if !jti.is_empty() => jti.clone(),
        _ => return Err(LogoutError::NoJti),
    };
    Ok(Logout { sub, sid, jti, iat })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::alg::Alg;
    use crate::testutil::*;
    use serde_json::json;

    fn claims() -> Value {
        json!({
            "iss": ISSUER, "aud": "gateway", "iat": NOW - 5, "jti": "j-1",
            "sub": "alice", "sid": "s-1",
            "events": {EVENT: {}}
        })
    }

    fn signed(claims: &Value) -> String {
        let header = json!({"alg": "ES256", "kid": "es256", "typ": "logout+jwt"});
        token_with_header("es256", &header, claims)
    }

    fn check(token: &str) -> Result<Logout, LogoutError> {
        let keys = keyset();
        let check = LogoutCheck {
            signer: Signer {
                issuer: ISSUER,
                algorithms: &Alg::ALL,
                keys: &keys,
                clock_skew_secs: 60,
            },
            client_id: "gateway",
        };
        verify(token, &check, NOW)
    }

    fn without(name: &str) -> Value {
        let mut c = claims();
        c.as_object_mut().unwrap().remove(name);
        c
    }

    fn with(name: &str, value: Value) -> Value {
        let mut c = claims();
        c[name] = value;
        c
    }

    #[test]
    fn a_valid_logout_token_names_its_subject_session_and_jti() {
        let logout = check(&signed(&claims())).unwrap();
        assert_eq!(logout.sub.as_deref(), Some("alice"));
        assert_eq!(logout.sid.as_deref(), Some("s-1"));
        assert_eq!(logout.jti, "j-1");
        assert_eq!(logout.iat, NOW - 5);
        // sub alone, sid alone, aud as an array, no typ: all fine.
        assert!(check(&signed(&without("sid"))).is_ok());
        assert!(check(&signed(&without("sub"))).is_ok());
        assert!(check(&signed(&with("aud", json!(["other", "gateway"])))).is_ok());
        let untyped =
            token_with_header("es256", &json!({"alg": "ES256", "kid": "es256"}), &claims());
        assert!(check(&untyped).is_ok());
    }

    #[test]
    fn a_forged_signature_is_refused() {
        let header = json!({"alg": "RS256", "kid": "rs256"});
        let forged = token_with_header("rs256-other", &header, &claims());
        assert_eq!(
            check(&forged),
            Err(LogoutError::Signature(AuthnError::BadSignature))
        );
        assert_eq!(
            check("not.a.jwt"),
            Err(LogoutError::Signature(AuthnError::Malformed))
        );
    }

    #[test]
    fn another_typ_is_refused_and_the_generic_jwt_accepted() {
        for typ in ["at+jwt", "statuslist+jwt"] {
            let header = json!({"alg": "ES256", "kid": "es256", "typ": typ});
            assert_eq!(
                check(&token_with_header("es256", &header, &claims())),
                Err(LogoutError::Type)
            );
        }
        assert!(check(&token("es256", &claims())).is_ok(), "typ JWT");
    }

    #[test]
    fn issuer_and_audience_must_be_ours() {
        assert_eq!(
            check(&signed(&with("iss", json!("https://evil.test")))),
            Err(LogoutError::Issuer)
        );
        assert_eq!(check(&signed(&without("iss"))), Err(LogoutError::Issuer));
        assert_eq!(
            check(&signed(&with("aud", json!("web")))),
            Err(LogoutError::Audience)
        );
        assert_eq!(check(&signed(&without("aud"))), Err(LogoutError::Audience));
    }

    #[test]
    fn iat_must_be_present_and_fresh() {
        assert_eq!(check(&signed(&without("iat"))), Err(LogoutError::IssuedAt));
        assert_eq!(
            check(&signed(&with("iat", json!(NOW + 61)))),
            Err(LogoutError::IssuedAt)
        );
        assert_eq!(
            check(&signed(&with("iat", json!(NOW - 361)))),
            Err(LogoutError::IssuedAt)
        );
        assert!(check(&signed(&with("iat", json!(NOW - 359)))).is_ok());
    }

    #[test]
    fn an_expired_logout_token_is_refused() {
        assert_eq!(
            check(&signed(&with("exp", json!(NOW - 61)))),
            Err(LogoutError::Expired)
        );
        assert!(check(&signed(&with("exp", json!(NOW + 60)))).is_ok());
    }

    #[test]
    fn the_backchannel_event_must_be_an_object() {
        assert_eq!(check(&signed(&without("events"))), Err(LogoutError::Events));
        assert_eq!(
            check(&signed(&with("events", json!({EVENT: "yes"})))),
            Err(LogoutError::Events)
        );
        assert_eq!(
            check(&signed(&with("events", json!({"other": {}})))),
            Err(LogoutError::Events)
        );
        assert_eq!(
            check(&signed(&with("events", json!([EVENT])))),
            Err(LogoutError::Events)
        );
    }

    #[test]
    fn sub_or_sid_is_required() {
        let mut c = claims();
        c.as_object_mut().unwrap().remove("sub");
        c.as_object_mut().unwrap().remove("sid");
        assert_eq!(check(&signed(&c)), Err(LogoutError::NoSubject));
        assert_eq!(
            check(&signed(&with("sub", json!(42)))),
            Err(LogoutError::NoSubject)
        );
    }

    #[test]
    fn a_nonce_is_refused() {
        assert_eq!(
            check(&signed(&with("nonce", json!("n")))),
            Err(LogoutError::Nonce)
        );
    }

    #[test]
    fn jti_is_required() {
        assert_eq!(check(&signed(&without("jti"))), Err(LogoutError::NoJti));
        assert_eq!(
            check(&signed(&with("jti", json!("")))),
            Err(LogoutError::NoJti)
        );
    }

    #[test]
    fn descriptions_never_hold_quotes() {
        for e in [
            LogoutError::Replayed,
            LogoutError::Nonce,
            LogoutError::Signature(AuthnError::Malformed),
        ] {
            assert!(!e.description().contains('"'));
        }
    }
}
