//! Reading the auth service's answer, per mode, into an identity or a refusal. Anything
//! that is not a clear answer about the token (a status we don't expect, garbage, an
//! oversized body, a signed answer that fails its checks, the service refusing the
//! gateway's own credentials) is an [`AnswerError`]: the request gets 503 and nothing is
//! cached. Never a pass-through, never a cached allow.

use super::callout::TOKEN_TYPE_JWT;
use super::{Exchange, Mode};
use crate::config::Provider;
use crate::error::AuthnError;
use crate::token::jwks::KeySet;
use crate::token::jwt::{self, Policy};
use serde_json::{Map, Value};

/// Answers larger than this are refused unread.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The answer as the host read it.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    /// `None`: the callout failed (no response at all).
    pub status: Option<u32>,
    pub content_type: Option<&'a str>,
    /// The response's `authorization` header (a session service may put the JWT there).
    pub authorization: Option<&'a str>,
    pub body: &'a [u8],
    /// The body's length as announced, checked before the body is read.
    pub body_size: usize,
}

/// What the auth service said about the token.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolved {
    Active {
        claims: Map<String, Value>,
        /// The JWT the exchange produced (token exchange, session), for upstream.
        jwt: Option<String>,
        exp: Option<i64>,
    },
    /// Not a valid token here: inactive, unknown, revoked, or an identity this exchange
    /// does not accept (issuer, audience, expired).
    Refused(AuthnError),
}

/// Why an answer could not be used. Every one is a 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AnswerError {
    /// No answer: the cluster is unknown or down, or the callout failed.
    Transport,
    /// A status this mode does not expect (a timeout is a 504 from Envoy).
    Status(u32),
    /// 401/403, or RFC 6749 `invalid_client`: the gateway's own credentials are refused.
    ClientRejected,
    TooLarge,
    /// Not the JSON (or JWT) the mode expects.
    Garbage,
    /// A signed answer (RFC 9701, or the JWT of an exchange or session) failed its checks.
    SignedAnswer(AuthnError),
    /// The provider has no keys to check a signed answer with.
    KeysUnavailable,
}

impl AnswerError {
    pub fn describe(self) -> String {
        match self {
            AnswerError::Transport => "callout failed".into(),
            AnswerError::Status(status) => format!("unexpected HTTP status {status}"),
            AnswerError::ClientRejected => {
                "the auth service refused the gateway's client credentials".into()
            }
            AnswerError::TooLarge => "answer larger than the size cap".into(),
            AnswerError::Garbage => "answer is not what the mode expects".into(),
            AnswerError::SignedAnswer(e) => format!("signed answer refused: {}", e.description()),
            AnswerError::KeysUnavailable => "no keys to check the signed answer with".into(),
        }
    }
}

/// Reads an answer. `keys` are the provider's current keys (`None` while it has none);
/// `now` is in seconds.
pub fn read(
    exchange: &Exchange,
    provider: &Provider,
    keys: Option<&KeySet>,
    answer: &Answer<'_>,
    now: u64,
) -> Result<Resolved, AnswerError> {
    let status = answer.status.ok_or(AnswerError::Transport)?;
    if answer.body_size > MAX_ANSWER_BYTES || answer.body.len() > MAX_ANSWER_BYTES {
        return Err(AnswerError::TooLarge);
    }
    let resolved = match exchange.mode {
        Mode::Introspection => {
            expect_ok(status)?;
            introspection(json_object(answer.body)?)
        }
        Mode::JwtIntrospection => {
            expect_ok(status)?;
            let keys = keys.ok_or(AnswerError::KeysUnavailable)?;
            let token = std::str::from_utf8(answer.body)
                .map_err(|_| AnswerError::Garbage)?
                .trim();
            let claims = signed_introspection(exchange, provider, keys, token, now)?;
            match claims.get("token_introspection") {
                Some(Value::Object(inner)) => introspection(inner.clone()),
                _ => return Err(AnswerError::Garbage),
            }
        }
        Mode::TokenExchange => {
            if status == 400 {
                // RFC 6749 §5.2: `invalid_grant` is about the subject token; anything
                // else (invalid_client, invalid_request, …) is about the gateway.
                let error = json_object(answer.body)?;
                return match error.get("error").and_then(Value::as_str) {
                    Some("invalid_grant") => Ok(Resolved::Refused(AuthnError::Inactive)),
                    Some("invalid_client") => Err(AnswerError::ClientRejected),
                    _ => Err(AnswerError::Status(400)),
                };
            }
            expect_ok(status)?;
            let body = json_object(answer.body)?;
            if body
                .get("issued_token_type")
                .is_some_and(|t| t.as_str() != Some(TOKEN_TYPE_JWT))
            {
                return Err(AnswerError::Garbage);
            }
            let token = body
                .get("access_token")
                .and_then(Value::as_str)
                .ok_or(AnswerError::Garbage)?;
            provider_jwt(provider, keys, token, now)?
        }
        Mode::Session => {
            if status == 401 || status == 404 {
                return Ok(Resolved::Refused(AuthnError::Inactive));
            }
            expect_ok(status)?;
            let bearer = answer.authorization.and_then(|value| {
                let head = value.get(..7)?;
                head.eq_ignore_ascii_case("bearer ")
                    .then(|| value.get(7..))
                    .flatten()
            });
            let is_json = answer
                .content_type
                .is_some_and(|t| t.to_ascii_lowercase().contains("json"));
            match bearer {
                Some(token) => provider_jwt(provider, keys, token.trim(), now)?,
                None if is_json => Resolved::Active {
                    claims: json_object(answer.body)?,
                    jwt: None,
                    exp: None,
                },
                None => {
                    let token = std::str::from_utf8(answer.body)
                        .map_err(|_| AnswerError::Garbage)?
                        .trim();
                    provider_jwt(provider, keys, token, now)?
                }
            }
        }
    };
    Ok(accept_identity(exchange, provider, resolved, now))
}

fn expect_ok(status: u32) -> Result<(), AnswerError> {
    match status {
        200 => Ok(()),
        401 | 403 => Err(AnswerError::ClientRejected),
        other => Err(AnswerError::Status(other)),
    }
}

/// A JSON object read once: a member named twice makes it garbage.
fn json_object(body: &[u8]) -> Result<Map<String, Value>, AnswerError> {
    let object = serde_json::from_slice(body).map_err(|_| AnswerError::Garbage)?;
    if crate::json::has_repeated_member(body) {
        return Err(AnswerError::Garbage);
    }
    Ok(object)
}

/// RFC 7662 §2.2: only the JSON boolean `true` means active. The other members are the
/// identity.
fn introspection(members: Map<String, Value>) -> Resolved {
    if members.get("active") != Some(&Value::Bool(true)) {
        return Resolved::Refused(AuthnError::Inactive);
    }
    Resolved::Active {
        claims: members
            .into_iter()
            .filter(|(name, _)| name != "active")
            .collect(),
        jwt: None,
        exp: None,
    }
}

/// RFC 9701 §5: `typ` token-introspection+jwt, the provider's keys and issuer, `aud`
/// the gateway's client id, `iat` within the clock skew. The provider's token rules
/// (`exp` required, its audiences and token types) don't apply to this document.
fn signed_introspection(
    exchange: &Exchange,
    provider: &Provider,
    keys: &KeySet,
    token: &str,
    now: u64,
) -> Result<Map<String, Value>, AnswerError> {
    let policy = Policy {
        issuer: provider.policy.issuer.clone(),
        audiences: exchange
            .client
            .as_ref()
            .map(|c| vec![c.id.clone()])
            .unwrap_or_default(),
        algorithms: provider.policy.algorithms.clone(),
        token_types: Some(vec!["token-introspection+jwt".into()]),
        clock_skew_secs: provider.policy.clock_skew_secs,
        require_exp: false,
        max_token_bytes: MAX_ANSWER_BYTES,
    };
    let verified = jwt::verify(token, &policy, keys, now).map_err(AnswerError::SignedAnswer)?;
    let skew = i64::try_from(policy.clock_skew_secs).unwrap_or(i64::MAX);
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    match verified.claims.get("iat").and_then(Value::as_i64) {
        // At least a second either way: `iat` and `now` are both rounded down.
        Some(iat) if (now - iat).abs() <= skew.max(1) => Ok(verified.claims),
        _ => Err(AnswerError::SignedAnswer(AuthnError::NotYetValid)),
    }
}

/// A JWT the auth service handed out, verified with the provider like any token.
fn provider_jwt(
    provider: &Provider,
    keys: Option<&KeySet>,
    token: &str,
    now: u64,
) -> Result<Resolved, AnswerError> {
    let keys = keys.ok_or(AnswerError::KeysUnavailable)?;
    let verified =
        jwt::verify(token, &provider.policy, keys, now).map_err(AnswerError::SignedAnswer)?;
    Ok(Resolved::Active {
        claims: verified.claims,
        jwt: Some(token.to_owned()),
        exp: verified.lifetime.exp,
    })
}

/// The exchange's checks on any identity: `iss`, when present, is the provider's;
/// `aud` holds one of the exchange's audiences, when it lists some; `exp`, when
/// present, is a number still in the future.
fn accept_identity(
    exchange: &Exchange,
    provider: &Provider,
    resolved: Resolved,
    now: u64,
) -> Resolved {
    let Resolved::Active { claims, jwt, exp } = resolved else {
        return resolved;
    };
    if claims
        .get("iss")
        .is_some_and(|iss| iss.as_str() != Some(provider.policy.issuer.as_str()))
    {
        return Resolved::Refused(AuthnError::IssuerNotAllowed);
    }
    if !exchange.audiences.is_empty()
        && !jwt::audience_matches(claims.get("aud"), &exchange.audiences)
    {
        return Resolved::Refused(AuthnError::AudienceNotAllowed);
    }
    let exp = match (exp, claims.get("exp")) {
        (Some(exp), _) => Some(exp),
        (None, None) => None,
        (None, Some(value)) => match value.as_i64() {
            Some(exp) => Some(exp),
            None => return Resolved::Refused(AuthnError::Malformed),
        },
    };
    if exp.is_some_and(|exp| exp <= i64::try_from(now).unwrap_or(i64::MAX)) {
        return Resolved::Refused(AuthnError::Expired);
    }
    Resolved::Active { claims, jwt, exp }
}

#[cfg(test)]
mod tests {
    use super::super::tests_support::*;
    use super::*;
    use crate::config::Config;
    use crate::testutil::*;
    use serde_json::json;

    fn answer(status: u32, body: &[u8]) -> Answer<'_> {
        Answer {
            status: Some(status),
            content_type: Some("application/json"),
            authorization: None,
            body,
            body_size: body.len(),
        }
    }

    fn read_with(config: &Config, answer: &Answer<'_>) -> Result<Resolved, AnswerError> {
        let exchange = &config.exchanges[0];
        let provider = &config.providers[exchange.provider];
        read(exchange, provider, Some(&keyset()), answer, NOW)
    }

    fn active_claims(resolved: Result<Resolved, AnswerError>) -> Map<String, Value> {
        match resolved {
            Ok(Resolved::Active { claims, .. }) => claims,
            other => panic!("not active: {other:?}"),
        }
    }

    #[test]
    fn introspection_active_true_gives_the_members_as_claims() {
        let config = config_with(exchange_json("introspection"));
        let body = json!({"active": true, "sub": "alice", "iss": ISSUER, "exp": NOW + 60});
        let claims = active_claims(read_with(
            &config,
            &answer(200, body.to_string().as_bytes()),
        ));
        assert_eq!(claims["sub"], "alice");
        assert!(!claims.contains_key("active"));
    }

    #[test]
    fn an_answer_naming_a_member_twice_is_garbage() {
        let config = config_with(exchange_json("introspection"));
        let body = br#"{"active":true,"sub":"alice","sub":"admin"}"#;
        assert_eq!(
            read_with(&config, &answer(200, body)),
            Err(AnswerError::Garbage)
        );
        let flipped = br#"{"active":false,"active":true}"#;
        assert_eq!(
            read_with(&config, &answer(200, flipped)),
            Err(AnswerError::Garbage)
        );
    }

    #[test]
    fn introspection_anything_but_boolean_true_is_inactive() {
        let config = config_with(exchange_json("introspection"));
        for body in [
            json!({"active": false, "sub": "alice"}),
            json!({"active": "true", "sub": "alice"}),
            json!({"active": 1}),
            json!({"sub": "alice"}),
        ] {
            assert_eq!(
                read_with(&config, &answer(200, body.to_string().as_bytes())),
                Ok(Resolved::Refused(AuthnError::Inactive)),
                "{body}"
            );
        }
    }

    #[test]
    fn faults_are_answer_errors_never_identities() {
        let config = config_with(exchange_json("introspection"));
        let ok = json!({"active": true}).to_string();
        assert_eq!(
            read_with(&config, &answer(500, ok.as_bytes())),
            Err(AnswerError::Status(500))
        );
        assert_eq!(
            read_with(&config, &answer(504, b"timeout")),
            Err(AnswerError::Status(504))
        );
        assert_eq!(
            read_with(&config, &answer(401, b"")),
            Err(AnswerError::ClientRejected)
        );
        assert_eq!(
            read_with(&config, &answer(200, b"<html>")),
            Err(AnswerError::Garbage)
        );
        assert_eq!(
            read_with(&config, &answer(200, b"[true]")),
            Err(AnswerError::Garbage)
        );
        let mut huge = answer(200, ok.as_bytes());
        huge.body_size = 10 * 1024 * 1024;
        assert_eq!(read_with(&config, &huge), Err(AnswerError::TooLarge));
        let mut lost = answer(200, ok.as_bytes());
        lost.status = None;
        assert_eq!(read_with(&config, &lost), Err(AnswerError::Transport));
    }

    #[test]
    fn identity_from_another_issuer_or_audience_or_past_exp_is_refused() {
        let mut exchange = exchange_json("introspection");
        exchange["audiences"] = json!(["orders"]);
        let config = config_with(exchange);
        let cases = [
            (
                json!({"active": true, "aud": "orders", "iss": "https://evil"}),
                AuthnError::IssuerNotAllowed,
            ),
            (
                json!({"active": true, "aud": "billing"}),
                AuthnError::AudienceNotAllowed,
            ),
            (json!({"active": true}), AuthnError::AudienceNotAllowed),
            (
                json!({"active": true, "aud": ["x", "orders"], "exp": NOW}),
                AuthnError::Expired,
            ),
        ];
        for (body, error) in cases {
            assert_eq!(
                read_with(&config, &answer(200, body.to_string().as_bytes())),
                Ok(Resolved::Refused(error)),
                "{body}"
            );
        }
        let ok = json!({"active": true, "aud": ["x", "orders"], "exp": NOW + 1});
        assert!(matches!(
            read_with(&config, &answer(200, ok.to_string().as_bytes())),
            Ok(Resolved::Active { exp: Some(_), .. })
        ));
    }

    fn introspection_jwt(typ: &str, aud: &str, key: &str, iat: u64) -> String {
        let claims = json!({
            "iss": ISSUER, "aud": aud, "iat": iat,
            "token_introspection": {"active": true, "sub": "alice", "scope": "read"}
        });
        let header = json!({"alg": signing_key(key).alg.name(), "kid": key, "typ": typ});
        signing_key(key).sign_with_header(&header, &claims).unwrap()
    }

    #[test]
    fn signed_introspection_gives_the_token_introspection_member() {
        let config = config_with(exchange_json("jwt_introspection"));
        let body = introspection_jwt("token-introspection+jwt", "gateway", "es256", NOW);
        let claims = active_claims(read_with(&config, &answer(200, body.as_bytes())));
        assert_eq!(claims["sub"], "alice");
        assert!(!claims.contains_key("iat") && !claims.contains_key("token_introspection"));
    }

    #[test]
    fn signed_introspection_with_wrong_typ_aud_key_or_iat_is_refused() {
        let config = config_with(exchange_json("jwt_introspection"));
        let cases = [
            introspection_jwt("JWT", "gateway", "es256", NOW),
            introspection_jwt("token-introspection+jwt", "other-client", "es256", NOW),
            introspection_jwt("token-introspection+jwt", "gateway", "rs256-other", NOW),
            introspection_jwt("token-introspection+jwt", "gateway", "es256", NOW - 3600),
        ];
        for body in cases {
            assert!(matches!(
                read_with(&config, &answer(200, body.as_bytes())),
                Err(AnswerError::SignedAnswer(_))
            ));
        }
        // An unsigned JSON answer is not accepted in this mode.
        let plain = json!({"active": true, "sub": "alice"}).to_string();
        assert_eq!(
            read_with(&config, &answer(200, plain.as_bytes())),
            Err(AnswerError::SignedAnswer(AuthnError::Malformed))
        );
    }

    #[test]
    fn token_exchange_verifies_the_issued_jwt_with_the_provider() {
        let config = config_with(exchange_json("token_exchange"));
        let jwt = token("es256", &good_claims());
        let body =
            json!({"access_token": jwt, "issued_token_type": TOKEN_TYPE_JWT, "token_type": "N_A"});
        match read_with(&config, &answer(200, body.to_string().as_bytes())) {
            Ok(Resolved::Active {
                jwt: Some(issued),
                claims,
                exp,
            }) => {
                assert_eq!(issued, jwt);
                assert_eq!(claims["sub"], "alice");
                assert!(exp.is_some());
            }
            other => panic!("{other:?}"),
        }
        let forged = json!({"access_token": token("rs256-other", &good_claims())});
        assert!(matches!(
            read_with(&config, &answer(200, forged.to_string().as_bytes())),
            Err(AnswerError::SignedAnswer(_))
        ));
    }

    #[test]
    fn token_exchange_invalid_grant_is_inactive_and_invalid_client_is_a_fault() {
        let config = config_with(exchange_json("token_exchange"));
        let grant = json!({"error": "invalid_grant"}).to_string();
        assert_eq!(
            read_with(&config, &answer(400, grant.as_bytes())),
            Ok(Resolved::Refused(AuthnError::Inactive))
        );
        let client = json!({"error": "invalid_client"}).to_string();
        assert_eq!(
            read_with(&config, &answer(400, client.as_bytes())),
            Err(AnswerError::ClientRejected)
        );
        assert_eq!(
            read_with(&config, &answer(401, client.as_bytes())),
            Err(AnswerError::ClientRejected)
        );
    }

    #[test]
    fn session_reads_a_jwt_body_a_bearer_header_or_json_claims() {
        let config = config_with(exchange_json("session"));
        let jwt = token("eddsa", &good_claims());
        let mut body = answer(200, jwt.as_bytes());
        body.content_type = Some("application/jwt");
        assert!(matches!(
            read_with(&config, &body),
            Ok(Resolved::Active { jwt: Some(_), .. })
        ));
        let header = format!("Bearer {jwt}");
        let mut in_header = answer(200, b"");
        in_header.content_type = None;
        in_header.authorization = Some(&header);
        assert!(matches!(
            read_with(&config, &in_header),
            Ok(Resolved::Active { jwt: Some(_), .. })
        ));
        let claims = json!({"sub": "bob"}).to_string();
        assert_eq!(
            active_claims(read_with(&config, &answer(200, claims.as_bytes())))["sub"],
            "bob"
        );
        for status in [401, 404] {
            assert_eq!(
                read_with(&config, &answer(status, b"")),
                Ok(Resolved::Refused(AuthnError::Inactive))
            );
        }
        assert_eq!(
            read_with(&config, &answer(500, b"")),
            Err(AnswerError::Status(500))
        );
    }
}
