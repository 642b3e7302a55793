//! Exchanges: an opaque token or a session id turned into an identity by asking an auth
//! service (the gateway-centric and session patterns). No I/O here: what to send
//! ([`callout`]), how to read the answer per mode ([`answer`]), what all workers share
//! about a token ([`record`]) and the per-VM copy ([`cache`]). The host does the callouts.

pub mod answer;
pub mod cache;
pub mod callout;
pub mod record;

use crate::crypto::mint_key::MintKey;
use crate::remote::Uri;
use crate::token::extract::Source;

/// How the auth service is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// RFC 7662 token introspection: a JSON answer, `active: true` or not.
    Introspection,
    /// RFC 9701: the introspection answer as a JWT signed by the provider.
    JwtIntrospection,
    /// RFC 8693 token exchange: the answer's `access_token` is a JWT of the provider.
    TokenExchange,
    /// A session service: `GET` with the session id, a JWT or JSON claims back.
    Session,
}

impl Mode {
    pub fn from_name(name: &str) -> Option<Mode> {
        match name {
            "introspection" => Some(Mode::Introspection),
            "jwt_introspection" => Some(Mode::JwtIntrospection),
            "token_exchange" => Some(Mode::TokenExchange),
            "session" => Some(Mode::Session),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Introspection => "introspection",
            Mode::JwtIntrospection => "jwt_introspection",
            Mode::TokenExchange => "token_exchange",
            Mode::Session => "session",
        }
    }
}

/// The gateway's credentials at the auth service (HTTP Basic).
#[derive(Clone, PartialEq, Eq)]
pub struct Client {
    pub id: String,
    pub secret: String,
    /// The `authorization` header value, computed once.
    pub basic: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({:?}, secret hidden)", self.id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub uri: Uri,
    pub cluster: String,
    pub timeout_ms: u64,
}

/// How long answers are kept, and how many tokens are remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    pub max_secs: u64,
    pub negative_secs: u64,
    /// Slots in shared data (and entries per VM).
    pub max_entries: u64,
}

/// RFC 8693 request parameters beyond the subject token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExchangeParams {
    pub audience: Option<String>,
    pub resource: Option<String>,
    pub scope: Option<String>,
}

/// Where the JWT the exchange produced (or minted) goes upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Lowercase.
    pub header: String,
    pub prefix: String,
}

/// The gateway's own token: signed from the identity, never longer-lived than it.
#[derive(Debug)]
pub struct Mint {
    pub issuer: String,
    pub key: MintKey,
    pub ttl_secs: u64,
    pub audience: Option<String>,
    pub jwks_path: Option<String>,
    /// `{"keys": [the public key]}`, served at `jwks_path`.
    pub public_jwks: String,
}

/// A validated exchange.
#[derive(Debug)]
pub struct Exchange {
    pub name: String,
    pub sources: Vec<Source>,
    pub mode: Mode,
    pub endpoint: Endpoint,
    pub client: Option<Client>,
    /// Index into `Config::providers`: its issuer, keys and forwarding apply.
    pub provider: usize,
    /// Empty: `aud` is not checked.
    pub audiences: Vec<String>,
    pub cache: CachePolicy,
    pub upstream: Option<Upstream>,
    pub params: ExchangeParams,
    pub mint: Option<Mint>,
    /// Opaque tokens longer than this are refused unread.
    pub max_token_bytes: usize,
    /// The key of the token hash: derived from the exchange's configuration, so every
    /// worker computes the same keys and a token is never stored or logged as itself.
    pub hash_key: [u8; 32],
    /// Names this exchange's records in shared data.
    pub shared_prefix: String,
    /// The top-level claims the provider forwards: a minted token carries them.
    pub forwarded_claims: Vec<String>,
}

/// A token as the caches know it: the first 128 bits of HMAC-SHA-256 under the
/// exchange's hash key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenKey(pub u128);

impl TokenKey {
    pub fn of(exchange: &Exchange, token: &str) -> TokenKey {
        let mac = hmac_sha256::HMAC::mac(token.as_bytes(), exchange.hash_key);
        let mut bytes = [0u8; 16];
        for (to, from) in bytes.iter_mut().zip(mac.iter()) {
            *to = *from;
        }
        TokenKey(u128::from_be_bytes(bytes))
    }

    pub fn hex(self) -> String {
        format!("{:016x}{:016x}", (self.0 >> 64) as u64, self.0 as u64)
    }

    pub fn from_hex(text: &str) -> Option<TokenKey> {
        let (high, low) = (text.get(..16)?, text.get(16..)?);
        if low.len() != 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let high = u64::from_str_radix(high, 16).ok()?;
        let low = u64::from_str_radix(low, 16).ok()?;
        Some(TokenKey(u128::from(high) << 64 | u128::from(low)))
    }

    /// The shared-data slot: shared data never evicts, so a fixed set of slots keeps
    /// it bounded; a token whose slot holds another token's record simply misses.
    pub fn slot(self, slots: u64) -> u64 {
        // The low 64 bits of a keyed hash are as uniform as all 128.
        (self.0 as u64) % slots.max(1)
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    //! A compiled exchange for the exchange modules' tests.
    use crate::config::Config;
    use crate::testutil::{public_jwks, ISSUER};
    use serde_json::{json, Value};

    pub fn config_with(exchange: Value) -> Config {
        let doc = json!({
            "realm": "api",
            "providers": { "corp": {
                "issuer": ISSUER,
                "jwks": { "inline": public_jwks() },
                "forward": { "claims": { "sub": "x-user-id" } }
            } },
            "exchanges": { "opaque": exchange }
        });
        Config::from_json(doc.to_string().as_bytes()).unwrap()
    }

    pub fn exchange_json(mode: &str) -> Value {
        let uri = if mode == "session" {
            "http://auth:9000/sessions/{token}"
        } else {
            "http://auth:9000/oauth2/introspect"
        };
        json!({
            "mode": mode,
            "endpoint": { "uri": uri, "cluster": "auth", "timeout_ms": 500 },
            "client": { "id": "gateway", "secret": "s3cr:et" },
            "provider": "corp",
            "cache": { "max_secs": 300, "negative_secs": 5, "max_entries": 100 },
            "upstream": { "header": "authorization", "prefix": "Bearer " }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::*;
    use super::*;

    #[test]
    fn token_keys_are_keyed_hashes_that_differ_per_token() {
        let config = config_with(exchange_json("introspection"));
        let exchange = &config.exchanges[0];
        let a = TokenKey::of(exchange, "token-a");
        assert_eq!(a, TokenKey::of(exchange, "token-a"));
        assert_ne!(a, TokenKey::of(exchange, "token-b"));
        assert_eq!(TokenKey::from_hex(&a.hex()), Some(a));
        assert!(!a.hex().contains("token"));
        assert!(a.slot(100) < 100);
    }

    #[test]
    fn the_hash_key_changes_with_anything_that_shapes_a_stored_answer() {
        let base = config_with(exchange_json("introspection"));
        let changes: [fn(&mut serde_json::Value); 5] = [
            |e| e["client"]["secret"] = "another".into(),
            |e| e["audiences"] = serde_json::json!(["some-other-api"]),
            |e| e["cache"]["max_secs"] = 10.into(),
            |e| e["upstream"]["prefix"] = "".into(),
            |e| {
                e["mint"] = serde_json::json!({"issuer": "https://gw", "alg": "EdDSA",
                                               "key": crate::testutil::private_jwk("eddsa")})
            },
        ];
        for change in changes {
            let mut doc = exchange_json("introspection");
            change(&mut doc);
            let other = config_with(doc);
            assert_ne!(base.exchanges[0].hash_key, other.exchanges[0].hash_key);
            assert_ne!(
                base.exchanges[0].shared_prefix,
                other.exchanges[0].shared_prefix
            );
        }
        let again = config_with(exchange_json("introspection"));
        assert_eq!(base.exchanges[0].hash_key, again.exchanges[0].hash_key);
    }
}
