//! The login flow's secrets and what it seals: `state`, `nonce` and the PKCE verifier
//! (RFC 7636, `S256`), the return URL (relative only: no open redirect), and the payloads
//! of the login-state cookie ([`LoginState`]) and the session's sealed tokens
//! ([`SessionSecrets`]).
//!
//! Pure: random bytes come in from the host (WASI `random_get`). Payloads are compact JSON
//! read through `serde_json::Value`, as elsewhere in the crate: no derived deserializers
//! in the .wasm.

use std::fmt;

use serde_json::{Map, Value};

use crate::crypto::b64;

/// Random bytes per secret: 256 bits, 43 base64url characters (within RFC 7636's 43..128
/// verifier length, and its unreserved character set).
pub const SECRET_BYTES: usize = 32;
/// Random bytes [`LoginSecrets::from_random`] takes: one [`SECRET_BYTES`] per secret.
pub const RANDOM_BYTES: usize = 3 * SECRET_BYTES;
/// The longest return URL kept; longer ones return to `/`.
pub const MAX_RETURN_TO: usize = 2048;

/// The three secrets of one login attempt, each base64url of 32 random bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct LoginSecrets {
    /// Sent to the IdP and echoed back to the callback; checked against the cookie (CSRF).
    pub state: String,
    /// Sent to the IdP, must come back in the ID token (replay of an ID token).
    pub nonce: String,
    /// PKCE verifier: only its S256 challenge goes to the IdP; the verifier to the token
    /// endpoint.
    pub verifier: String,
}

impl LoginSecrets {
    /// Splits 96 random bytes into state, nonce and verifier.
    pub fn from_random(random: &[u8; RANDOM_BYTES]) -> LoginSecrets {
        let mut parts = random.chunks_exact(SECRET_BYTES).map(b64::encode);
        LoginSecrets {
            state: parts.next().unwrap_or_default(),
            nonce: parts.next().unwrap_or_default(),
            verifier: parts.next().unwrap_or_default(),
        }
    }

    /// The `code_challenge` for the authorization request.
    pub fn challenge(&self) -> String {
        challenge_s256(&self.verifier)
    }
}

// Secrets never reach a log through `{:?}`.
impl fmt::Debug for LoginSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LoginSecrets { .. }")
    }
}

/// RFC 7636 §4.2 `S256`: base64url (no padding) of SHA-256 of the verifier's ASCII.
pub fn challenge_s256(verifier: &str) -> String {
    b64::encode(&hmac_sha256::Hash::hash(verifier.as_bytes()))
}

/// Equality whose time depends on the lengths only, not on where the bytes differ: for
/// `state` and other secrets an attacker may probe.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The target itself if it is safe to redirect a browser to after login: a relative
/// path starting with exactly one `/`. Refused: empty, over [`MAX_RETURN_TO`] bytes,
/// anything with a scheme or authority (`https:…`, `//host`), a backslash anywhere
/// (browsers read `/\host` as `//host`), and any byte outside visible ASCII (browsers drop
/// tabs and newlines, so `/\t/host` would become `//host`).
pub fn safe_return_to(target: &str) -> Option<&str> {
    if target.is_empty() || target.len() > MAX_RETURN_TO {
        return None;
    }
    let rest = target.strip_prefix('/')?;
    if rest.starts_with('/') {
        return None;
    }
    let visible_and_no_backslash = target.bytes().all(|b| b.is_ascii_graphic() && b != b'\\');
    visible_and_no_backslash.then_some(target)
}

/// The login-state cookie's payload: what the callback needs to finish the login.
#[derive(Clone, PartialEq, Eq)]
pub struct LoginState {
    pub state: String,
    pub nonce: String,
    pub verifier: String,
    /// Where to send the browser after login; checked by [`safe_return_to`] before sealing
    /// and again after opening.
    pub return_to: String,
    /// The provider that started the login, so the callback verifies with its keys.
    pub provider: String,
}

impl LoginState {
    /// Compact JSON with one-letter members.
    pub fn encode(&self) -> Vec<u8> {
        let mut object = Map::new();
        object.insert("s".into(), Value::from(self.state.as_str()));
        object.insert("n".into(), Value::from(self.nonce.as_str()));
        object.insert("v".into(), Value::from(self.verifier.as_str()));
        object.insert("r".into(), Value::from(self.return_to.as_str()));
        object.insert("p".into(), Value::from(self.provider.as_str()));
        Value::Object(object).to_string().into_bytes()
    }

    /// The state [`encode`](Self::encode) wrote; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<LoginState> {
        let value: Value = serde_json::from_slice(bytes).ok()?;
        let text = |member: &str| Some(value.get(member)?.as_str()?.to_owned());
        Some(LoginState {
            state: text("s")?,
            nonce: text("n")?,
            verifier: text("v")?,
            return_to: text("r")?,
            provider: text("p")?,
        })
    }
}

impl fmt::Debug for LoginState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginState")
            .field("return_to", &self.return_to)
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

/// The tokens kept sealed beside the session: the ID token (for logout's `id_token_hint`)
/// and the refresh token, each only when there is one.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SessionSecrets {
    pub id_token: Option<String>,
    pub refresh_token: Option<String>,
}

impl SessionSecrets {
    /// Compact JSON; absent tokens are left out.
    pub fn encode(&self) -> Vec<u8> {
        let mut object = Map::new();
        if let Some(token) = &self.id_token {
            object.insert("i".into(), Value::from(token.as_str()));
        }
        if let Some(token) = &self.refresh_token {
            object.insert("r".into(), Value::from(token.as_str()));
        }
        Value::Object(object).to_string().into_bytes()
    }

    /// The secrets [`encode`](Self::encode) wrote; `None` for anything else (a member that
    /// is present but not a string included).
    pub fn decode(bytes: &[u8]) -> Option<SessionSecrets> {
        let value: Value = serde_json::from_slice(bytes).ok()?;
        let object = value.as_object()?;
        let text = |member: &str| match object.get(member) {
            None => Some(None),
            Some(v) => Some(Some(v.as_str()?.to_owned())),
        };
        Some(SessionSecrets {
            id_token: text("i")?,
            refresh_token: text("r")?,
        })
    }
}

impl fmt::Debug for SessionSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionSecrets")
            .field("id_token", &self.id_token.as_ref().map(|_| ".."))
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| ".."))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random() -> [u8; RANDOM_BYTES] {
        let mut bytes = [0u8; RANDOM_BYTES];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = i as u8;
        }
        bytes
    }

    #[test]
    fn rfc7636_appendix_b_challenge() {
        assert_eq!(
            challenge_s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn secrets_are_distinct_43_char_verifier_charset_strings() {
        let secrets = LoginSecrets::from_random(&random());
        for s in [&secrets.state, &secrets.nonce, &secrets.verifier] {
            assert_eq!(s.len(), 43);
            // RFC 7636 §4.1: ALPHA / DIGIT / "-" / "." / "_" / "~".
            assert!(s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)));
        }
        assert_ne!(secrets.state, secrets.nonce);
        assert_ne!(secrets.nonce, secrets.verifier);
        assert_eq!(secrets.state, b64::encode(&random()[..32]));
        assert_eq!(secrets.verifier, b64::encode(&random()[64..]));
        assert_eq!(secrets.challenge(), challenge_s256(&secrets.verifier));
    }

    #[test]
    fn secrets_are_not_in_debug_output() {
        let secrets = LoginSecrets::from_random(&random());
        let shown = format!("{secrets:?}");
        assert!(!shown.contains(&secrets.state));
        assert!(!shown.contains(&secrets.verifier));
    }

    #[test]
    fn constant_time_eq_compares_whole_contents() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"xbc"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
    }

    #[test]
    fn relative_paths_are_kept() {
        for target in [
            "/",
            "/a?b=c",
            "/app/x?y=1&z=%2F#frag",
            "/a//b",
            "/https://x",
        ] {
            assert_eq!(safe_return_to(target), Some(target), "{target}");
        }
    }

    #[test]
    fn absolute_and_protocol_relative_targets_are_refused() {
        for target in [
            "https://evil.example/",
            "http:/evil",
            "javascript:alert(1)",
            "//evil.example",
            "///evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "\\/evil.example",
            "evil.example",
            "a/b",
            "",
        ] {
            assert_eq!(safe_return_to(target), None, "{target:?}");
        }
    }

    #[test]
    fn control_characters_whitespace_and_non_ascii_are_refused() {
        for target in [
            "/\t/evil", "/\n/evil", "/a\rb", "/a b", "/a\u{7f}", "/é", " /a",
        ] {
            assert_eq!(safe_return_to(target), None, "{target:?}");
        }
    }

    #[test]
    fn return_url_over_2048_bytes_is_refused() {
        let at_limit = format!("/{}", "a".repeat(MAX_RETURN_TO - 1));
        assert_eq!(safe_return_to(&at_limit), Some(at_limit.as_str()));
        let over = format!("/{}", "a".repeat(MAX_RETURN_TO));
        assert_eq!(safe_return_to(&over), None);
    }

    fn login_state() -> LoginState {
        let secrets = LoginSecrets::from_random(&random());
        LoginState {
            state: secrets.state,
            nonce: secrets.nonce,
            verifier: secrets.verifier,
            return_to: "/app?x=\"1\"".into(),
            provider: "corp".into(),
        }
    }

    #[test]
    fn login_state_round_trips() {
        let state = login_state();
        assert_eq!(LoginState::decode(&state.encode()), Some(state));
    }

    #[test]
    fn login_state_with_a_missing_or_mistyped_member_is_refused() {
        assert_eq!(LoginState::decode(b""), None);
        assert_eq!(LoginState::decode(b"not json"), None);
        assert_eq!(
            LoginState::decode(br#"{"s":"a","n":"b","v":"c","r":"/"}"#),
            None
        );
        assert_eq!(
            LoginState::decode(br#"{"s":"a","n":"b","v":"c","r":"/","p":1}"#),
            None
        );
    }

    #[test]
    fn login_state_debug_hides_secrets() {
        let state = login_state();
        let shown = format!("{state:?}");
        assert!(shown.contains("corp"));
        assert!(!shown.contains(&state.verifier));
        assert!(!shown.contains(&state.state));
    }

    #[test]
    fn session_secrets_round_trip_with_and_without_tokens() {
        for secrets in [
            SessionSecrets::default(),
            SessionSecrets {
                id_token: Some("h.p.s".into()),
                refresh_token: None,
            },
            SessionSecrets {
                id_token: None,
                refresh_token: Some("opaque-refresh".into()),
            },
            SessionSecrets {
                id_token: Some("h.p.s".into()),
                refresh_token: Some("opaque-refresh".into()),
            },
        ] {
            assert_eq!(SessionSecrets::decode(&secrets.encode()), Some(secrets));
        }
        assert_eq!(SessionSecrets::default().encode(), b"{}");
    }

    #[test]
    fn session_secrets_with_a_mistyped_member_are_refused() {
        assert_eq!(SessionSecrets::decode(br#"{"i":1}"#), None);
        assert_eq!(SessionSecrets::decode(br#"[]"#), None);
        assert_eq!(SessionSecrets::decode(b""), None);
    }

    #[test]
    fn session_secrets_debug_hides_tokens() {
        let secrets = SessionSecrets {
            id_token: Some("h.p.s".into()),
            refresh_token: Some("opaque-refresh".into()),
        };
        let shown = format!("{secrets:?}");
        assert!(!shown.contains("h.p.s"));
        assert!(!shown.contains("opaque-refresh"));
    }
}
