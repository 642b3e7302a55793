//! What all workers share about one token, in one shared-data slot: a callout in flight
//! (the single-flight lease), an identity, a refusal, or a failed callout. Times in
//! records: milliseconds for the lease, whole seconds for answers (compared with the
//! request's clock in seconds, rounded down so an entry never outlives its bound).
//!
//! The encoding is a line of space-separated fields, then (for identities) the upstream
//! JWT and the claims JSON on lines of their own: a slot is read on every miss in a VM.

use super::answer::Resolved;
use super::{Exchange, TokenKey};
use crate::error::AuthnError;
use serde_json::{json, Map, Value};

#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// A worker is asking the auth service; others wait for its answer.
    Pending {
        holder: u64,
        until_ms: u64,
    },
    Active {
        /// Valid while `now < until`, in seconds.
        until: u64,
        claims: Map<String, Value>,
        /// The JWT for upstream (exchanged or minted).
        jwt: Option<String>,
    },
    Refused {
        until: u64,
        reason: AuthnError,
    },
    /// The last callout failed; a fresh request asks again. Waiters get 503.
    Failed,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub key: TokenKey,
    pub state: State,
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        let key = self.key.hex();
        let text = match &self.state {
            State::Pending { holder, until_ms } => format!("P {key} {holder} {until_ms}"),
            State::Active { until, claims, jwt } => format!(
                "A {key} {until}\n{}\n{}",
                jwt.as_deref().unwrap_or(""),
                Value::Object(claims.clone())
            ),
            State::Refused { until, reason } => format!("R {key} {until} {}", reason.reason()),
            State::Failed => format!("F {key}"),
        };
        text.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Option<Record> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (head, rest) = text.split_once('\n').unwrap_or((text, ""));
        let mut fields = head.split(' ');
        let kind = fields.next()?;
        let key = TokenKey::from_hex(fields.next()?)?;
        let mut number = || fields.next()?.parse::<u64>().ok();
        let state = match kind {
            "P" => State::Pending {
                holder: number()?,
                until_ms: number()?,
            },
            "A" => {
                let until = number()?;
                let (jwt, claims) = rest.split_once('\n')?;
                State::Active {
                    until,
                    claims: serde_json::from_slice(claims.as_bytes()).ok()?,
                    jwt: (!jwt.is_empty()).then(|| jwt.to_owned()),
                }
            }
            "R" => State::Refused {
                until: number()?,
                reason: AuthnError::from_reason(fields.next()?)?,
            },
            "F" => State::Failed,
            _ => return None,
        };
        Some(Record { key, state })
    }
}

/// The record for a resolved answer at `now` (seconds): an identity lives at most
/// `max_secs` and never past its `exp` (nor past the minted token's); a refusal lives
/// `negative_secs`. The minted token is signed here, once per answer: it lives
/// `ttl_secs`, never past the identity's `exp`.
pub fn resolved_record(exchange: &Exchange, key: TokenKey, resolved: Resolved, now: u64) -> Record {
    let state = match resolved {
        Resolved::Refused(reason) => State::Refused {
            until: now.saturating_add(exchange.cache.negative_secs),
            reason,
        },
        Resolved::Active { claims, jwt, exp } => {
            let exp = exp.and_then(|e| u64::try_from(e).ok());
            let mut until = now.saturating_add(exchange.cache.max_secs);
            if let Some(exp) = exp {
                until = until.min(exp);
            }
            let jwt = match &exchange.mint {
                Some(mint) => {
                    // The minted token may outlive the cache entry (so a hit never sends
                    // one about to expire), never `ttl_secs` nor the identity's `exp`.
                    let mut minted_exp = now.saturating_add(mint.ttl_secs);
                    if let Some(exp) = exp {
                        minted_exp = minted_exp.min(exp);
                    }
                    until = until.min(minted_exp);
                    let minted = minted_claims(exchange, &claims, now, minted_exp);
                    Some(mint.key.sign_jwt(&minted))
                }
                None => jwt,
            };
            State::Active { until, claims, jwt }
        }
    };
    Record { key, state }
}

/// The minted token's claims: the gateway as `iss`, its `aud`, `iat`/`exp`, the
/// identity's `sub`, and the top-level claims the provider forwards.
fn minted_claims(
    exchange: &Exchange,
    identity: &Map<String, Value>,
    now: u64,
    exp: u64,
) -> Map<String, Value> {
    let mut claims = Map::new();
    if let Some(sub) = identity.get("sub") {
        claims.insert("sub".into(), sub.clone());
    }
    for name in &exchange.forwarded_claims {
        if let Some(value) = identity.get(name) {
            claims.insert(name.clone(), value.clone());
        }
    }
    if let Some(mint) = &exchange.mint {
        claims.insert("iss".into(), json!(mint.issuer));
        if let Some(audience) = &mint.audience {
            claims.insert("aud".into(), json!(audience));
        }
    }
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(exp));
    claims
}

#[cfg(test)]
mod tests {
    use super::super::tests_support::*;
    use super::*;
    use crate::crypto::alg::Alg;
    use crate::testutil::*;
    use crate::token::jwks::KeySet;
    use crate::token::jwt::{verify, Policy};

    fn key() -> TokenKey {
        TokenKey(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef)
    }

    #[test]
    fn records_round_trip() {
        let mut claims = Map::new();
        claims.insert("sub".into(), json!("alice\nbob"));
        for state in [
            State::Pending {
                holder: 7,
                until_ms: 1_800_000_000_500,
            },
            State::Active {
                until: 5,
                claims: claims.clone(),
                jwt: Some("a.b.c".into()),
            },
            State::Active {
                until: 5,
                claims,
                jwt: None,
            },
            State::Refused {
                until: 9,
                reason: AuthnError::Inactive,
            },
            State::Failed,
        ] {
            let record = Record { key: key(), state };
            assert_eq!(Record::decode(&record.encode()), Some(record));
        }
        assert_eq!(Record::decode(b"garbage"), None);
        assert_eq!(Record::decode(b""), None);
    }

    #[test]
    fn an_identity_lives_at_most_max_secs_and_never_past_exp() {
        let config = config_with(exchange_json("introspection"));
        let exchange = &config.exchanges[0];
        let active = |exp| Resolved::Active {
            claims: Map::new(),
            jwt: None,
            exp,
        };
        let until = |record: Record| match record.state {
            State::Active { until, .. } | State::Refused { until, .. } => until,
            _ => panic!(),
        };
        assert_eq!(
            until(resolved_record(exchange, key(), active(None), NOW)),
            NOW + 300
        );
        assert_eq!(
            until(resolved_record(
                exchange,
                key(),
                active(Some(NOW as i64 + 10)),
                NOW
            )),
            NOW + 10
        );
        assert_eq!(
            until(resolved_record(
                exchange,
                key(),
                Resolved::Refused(AuthnError::Inactive),
                NOW
            )),
            NOW + 5
        );
    }

    #[test]
    fn minted_tokens_verify_with_the_served_jwks_and_live_no_longer_than_the_identity() {
        let mut doc = exchange_json("introspection");
        doc["mint"] = json!({
            "issuer": "https://gateway.internal", "alg": "EdDSA", "key": private_jwk("eddsa"),
            "ttl_secs": 120, "audience": "internal", "jwks_path": "/.well-known/tokengate/jwks.json"
        });
        let config = config_with(doc);
        let exchange = &config.exchanges[0];
        let mut claims = Map::new();
        claims.insert("sub".into(), json!("alice"));
        claims.insert("secret_member".into(), json!("not forwarded"));
        let record = resolved_record(
            exchange,
            key(),
            Resolved::Active {
                claims,
                jwt: None,
                exp: Some(NOW as i64 + 60),
            },
            NOW,
        );
        let State::Active {
            until,
            jwt: Some(jwt),
            ..
        } = record.state
        else {
            panic!()
        };
        assert_eq!(until, NOW + 60);
        let jwks: Value =
            serde_json::from_str(&exchange.mint.as_ref().unwrap().public_jwks).unwrap();
        let keys = KeySet::from_value(&jwks).unwrap().set;
        let policy = Policy {
            issuer: "https://gateway.internal".into(),
            audiences: vec!["internal".into()],
            algorithms: vec![Alg::EdDSA],
            token_types: None,
            clock_skew_secs: 0,
            require_exp: true,
            max_token_bytes: 8192,
        };
        let verified = verify(&jwt, &policy, &keys, NOW).unwrap();
        assert_eq!(verified.claims["sub"], "alice");
        assert_eq!(verified.claims["exp"], json!(NOW + 60));
        assert!(!verified.claims.contains_key("secret_member"));
    }
}
