//! Sealed cookie values: encrypted and integrity-protected, so the login flow keeps its
//! state in the browser and any worker or replica holding the cookie secret can read it.
//!
//! A sealed value is base64url (no padding) of `version || nonce || ciphertext || tag`,
//! XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`, never our own AEAD). The sealed
//! plaintext is `expires_at` (u64, big-endian) followed by the payload, so an old cookie
//! replayed past its lifetime is refused even if the browser kept it. The additional data
//! binds the version, the purpose and the cookie's name: a value can't be moved to
//! another cookie or opened for another purpose.
//!
//! Pure: the time and the nonce (24 random bytes, from WASI `random_get` in the host)
//! are passed in.

use std::fmt;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};

use crate::crypto::b64;

/// The format's version, first byte of every sealed value and part of the additional
/// data: a later format can be told apart instead of failing as a forgery.
const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const EXPIRY_LEN: usize = 8;
const TAG_LEN: usize = 16;
/// Version, nonce, the expiry and the tag: a value shorter than this was cut.
const MIN_SEALED_LEN: usize = 1 + NONCE_LEN + EXPIRY_LEN + TAG_LEN;

/// HKDF salt: fixes the derivation to this use, should the same secret serve elsewhere.
const HKDF_SALT: &[u8] = b"tokengate cookie keys v1";

/// What a sealed value is for. Each purpose has its own key and its own additional data,
/// so a login-state cookie can't be presented as a session, nor the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The short-lived cookie carrying `state`, `nonce`, the PKCE verifier and the return URL.
    LoginState,
    /// The session cookies (the token the provider verifies, and the sealed ID and
    /// refresh tokens).
    Session,
}

impl Purpose {
    /// HKDF `info` and additional-data label; distinct per purpose.
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::LoginState => b"tokengate login-state",
            Purpose::Session => b"tokengate session",
        }
    }
}

/// The keys derived from the configured `cookie_secret`, one per [`Purpose`]. Derived once
/// when the configuration is compiled.
#[derive(Clone)]
pub struct CookieKeys {
    login_state: [u8; 32],
    session: [u8; 32],
}

impl CookieKeys {
    /// HKDF-SHA-256 of the secret (at least 32 bytes: the configuration checks), with a
    /// distinct `info` per purpose.
    pub fn derive(secret: &[u8]) -> CookieKeys {
        let prk = hmac_sha256::HKDF::extract(HKDF_SALT, secret);
        let expand = |purpose: Purpose| {
            let mut key = [0u8; 32];
            hmac_sha256::HKDF::expand(&mut key, prk, purpose.label());
            key
        };
        CookieKeys {
            login_state: expand(Purpose::LoginState),
            session: expand(Purpose::Session),
        }
    }

    fn cipher(&self, purpose: Purpose) -> XChaCha20Poly1305 {
        let key = match purpose {
            Purpose::LoginState => &self.login_state,
            Purpose::Session => &self.session,
        };
        XChaCha20Poly1305::new(&Key::from(*key))
    }
}

// Keys never reach a log, even through `{:?}` of a configuration.
impl fmt::Debug for CookieKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CookieKeys { .. }")
    }
}

/// Why a sealed value was refused. Carries nothing of the value itself.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealError {
    /// Longer than the caller's cap; nothing was decoded.
    TooLong { max: usize },
    /// Not strict base64url, or too short to hold a sealed value.
    Malformed,
    /// Sealed by another version of this format.
    UnknownVersion,
    /// The AEAD check failed: tampered, another secret, another purpose or another
    /// cookie name.
    Forged,
    /// Authentic, but its lifetime is over.
    Expired,
}

impl SealError {
    /// A short reason for logs and stats.
    pub fn reason(&self) -> &'static str {
        match self {
            SealError::TooLong { .. } => "too long",
            SealError::Malformed => "malformed",
            SealError::UnknownVersion => "unknown version",
            SealError::Forged => "forged",
            SealError::Expired => "expired",
        }
    }
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SealError::TooLong { max } => write!(f, "sealed cookie longer than {max} bytes"),
            _ => write!(f, "sealed cookie {}", self.reason()),
        }
    }
}

/// The additional data: version, purpose and cookie name, each bound to the ciphertext.
/// The purpose label ends with a NUL so no name can extend one label into another.
fn additional_data(purpose: Purpose, name: &str) -> Vec<u8> {
    let label = purpose.label();
    let mut aad = Vec::with_capacity(2 + label.len() + name.len());
    aad.push(VERSION);
    aad.extend_from_slice(label);
    aad.push(0);
    aad.extend_from_slice(name.as_bytes());
    aad
}

/// Seals `plaintext` for the cookie `name`, valid until `expires_at` (seconds). `nonce`
/// must be fresh random bytes: 24 of them make a collision negligible.
pub fn seal(
    keys: &CookieKeys,
    purpose: Purpose,
    name: &str,
    plaintext: &[u8],
    expires_at: u64,
    nonce: [u8; NONCE_LEN],
) -> String {
    let mut buffer = Vec::with_capacity(EXPIRY_LEN + plaintext.len() + TAG_LEN);
    buffer.extend_from_slice(&expires_at.to_be_bytes());
    buffer.extend_from_slice(plaintext);
    let nonce = XNonce::from(nonce);
    // The only failure is a message over XChaCha20's 256 GiB block counter, which a
    // cookie can't reach; the empty result would then fail to open, never leak plaintext.
    if keys
        .cipher(purpose)
        .encrypt_in_place(&nonce, &additional_data(purpose, name), &mut buffer)
        .is_err()
    {
        return String::new();
    }
    let mut sealed = Vec::with_capacity(1 + NONCE_LEN + buffer.len());
    sealed.push(VERSION);
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&buffer);
    b64::encode(&sealed)
}

/// Opens a value sealed by [`seal`] for the same purpose and cookie name, and returns its
/// payload. `max_len` caps the value before anything is decoded.
pub fn open(
    keys: &CookieKeys,
    purpose: Purpose,
    name: &str,
    value: &str,
    now: u64,
    max_len: usize,
) -> Result<Vec<u8>, SealError> {
    if value.len() > max_len {
        return Err(SealError::TooLong { max: max_len });
    }
    let sealed = b64::decode(value.as_bytes()).ok_or(SealError::Malformed)?;
    if sealed.len() < MIN_SEALED_LEN {
        return Err(SealError::Malformed);
    }
    let (version, rest) = sealed.split_first().ok_or(SealError::Malformed)?;
    if *version != VERSION {
        return Err(SealError::UnknownVersion);
    }
    let (nonce, ciphertext) = rest
        .split_first_chunk::<NONCE_LEN>()
        .ok_or(SealError::Malformed)?;
    let mut buffer = ciphertext.to_vec();
    keys.cipher(purpose)
        .decrypt_in_place(
            &XNonce::from(*nonce),
            &additional_data(purpose, name),
            &mut buffer,
        )
        .map_err(|_| SealError::Forged)?;
    let (expiry, payload) = buffer
        .split_first_chunk::<EXPIRY_LEN>()
        .ok_or(SealError::Malformed)?;
    if now >= u64::from_be_bytes(*expiry) {
        return Err(SealError::Expired);
    }
    Ok(payload.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_700_000_000;
    const NONCE: [u8; 24] = [7; 24];
    const MAX: usize = 8192;

    fn keys() -> CookieKeys {
        CookieKeys::derive(SECRET)
    }

    fn sealed(payload: &[u8]) -> String {
        seal(&keys(), Purpose::Session, "tg", payload, NOW + 60, NONCE)
    }

    fn opened(value: &str) -> Result<Vec<u8>, SealError> {
        open(&keys(), Purpose::Session, "tg", value, NOW, MAX)
    }

    #[test]
    fn sealed_value_opens_to_its_payload() {
        let value = sealed(b"a.b.c");
        assert_eq!(opened(&value), Ok(b"a.b.c".to_vec()));
        assert_eq!(opened(&sealed(b"")), Ok(Vec::new()));
    }

    #[test]
    fn sealed_value_is_unpadded_base64url_without_the_plaintext() {
        let value = sealed(b"visible-token-text");
        assert!(value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert!(!value.contains("visible"));
        assert_eq!(
            b64::decode(value.as_bytes()).map(|v| v.len()),
            Some(MIN_SEALED_LEN + 18)
        );
    }

    #[test]
    fn fresh_nonces_give_different_values_for_the_same_payload() {
        let a = seal(&keys(), Purpose::Session, "tg", b"x", NOW + 60, [1; 24]);
        let b = seal(&keys(), Purpose::Session, "tg", b"x", NOW + 60, [2; 24]);
        assert_ne!(a, b);
        assert_eq!(opened(&a), opened(&b));
    }

    #[test]
    fn tampered_byte_anywhere_is_refused() {
        let raw = b64::decode(sealed(b"payload").as_bytes()).unwrap();
        for i in 0..raw.len() {
            let mut tampered = raw.clone();
            tampered[i] ^= 0x01;
            let expected = if i == 0 {
                SealError::UnknownVersion
            } else {
                SealError::Forged
            };
            assert_eq!(opened(&b64::encode(&tampered)), Err(expected), "byte {i}");
        }
    }

    #[test]
    fn value_sealed_with_another_secret_is_forged() {
        let other = CookieKeys::derive(b"another secret of at least 32 bytes!");
        let value = seal(&other, Purpose::Session, "tg", b"x", NOW + 60, NONCE);
        assert_eq!(opened(&value), Err(SealError::Forged));
    }

    #[test]
    fn value_sealed_for_another_purpose_is_forged() {
        let value = seal(&keys(), Purpose::LoginState, "tg", b"x", NOW + 60, NONCE);
        assert_eq!(opened(&value), Err(SealError::Forged));
        let value = sealed(b"x");
        assert_eq!(
            open(&keys(), Purpose::LoginState, "tg", &value, NOW, MAX),
            Err(SealError::Forged)
        );
    }

    #[test]
    fn value_moved_to_another_cookie_name_is_forged() {
        let value = sealed(b"x");
        for name in ["tg.0", "tg.aux", "TG", "t", ""] {
            assert_eq!(
                open(&keys(), Purpose::Session, name, &value, NOW, MAX),
                Err(SealError::Forged),
                "{name}"
            );
        }
    }

    #[test]
    fn expired_value_is_refused_from_its_expiry_on() {
        let value = sealed(b"x");
        let at = |now| open(&keys(), Purpose::Session, "tg", &value, now, MAX);
        assert_eq!(at(NOW + 59), Ok(b"x".to_vec()));
        assert_eq!(at(NOW + 60), Err(SealError::Expired));
        assert_eq!(at(u64::MAX), Err(SealError::Expired));
    }

    #[test]
    fn truncated_value_is_refused() {
        let value = sealed(b"payload");
        // Cut bytes, re-encoded: the base64 is valid and the tag fails.
        let raw = b64::decode(value.as_bytes()).unwrap();
        for cut in 1..=raw.len() - MIN_SEALED_LEN {
            let truncated = b64::encode(&raw[..raw.len() - cut]);
            assert_eq!(opened(&truncated), Err(SealError::Forged), "cut {cut}");
        }
        // Cut characters: refused, as broken base64 or as a forgery.
        for cut in 1..value.len() {
            assert!(opened(&value[..value.len() - cut]).is_err(), "cut {cut}");
        }
        let short = b64::encode(&[VERSION; MIN_SEALED_LEN - 1]);
        assert_eq!(opened(&short), Err(SealError::Malformed));
        assert_eq!(opened(""), Err(SealError::Malformed));
    }

    #[test]
    fn garbage_is_malformed() {
        for value in ["not base64!", "a b", "YWI=", "+/+/", "\"quoted\""] {
            assert_eq!(opened(value), Err(SealError::Malformed), "{value}");
        }
    }

    #[test]
    fn oversize_value_is_refused_before_decoding() {
        let value = sealed(&[b'x'; 100]);
        assert_eq!(
            open(
                &keys(),
                Purpose::Session,
                "tg",
                &value,
                NOW,
                value.len() - 1
            ),
            Err(SealError::TooLong {
                max: value.len() - 1
            })
        );
        assert!(open(&keys(), Purpose::Session, "tg", &value, NOW, value.len()).is_ok());
        // Not even decoded: garbage over the cap is TooLong, not Malformed.
        assert_eq!(
            opened(&"!".repeat(MAX + 1)),
            Err(SealError::TooLong { max: MAX })
        );
    }

    #[test]
    fn purposes_get_different_keys() {
        let keys = keys();
        assert_ne!(keys.login_state, keys.session);
        assert_ne!(
            keys.session,
            CookieKeys::derive(b"x".repeat(32).as_slice()).session
        );
    }

    #[test]
    fn debug_output_shows_no_key_bytes() {
        assert_eq!(format!("{:?}", keys()), "CookieKeys { .. }");
    }

    #[test]
    fn errors_name_no_value() {
        let e = SealError::TooLong { max: 10 };
        assert_eq!(e.to_string(), "sealed cookie longer than 10 bytes");
        assert_eq!(SealError::Forged.to_string(), "sealed cookie forged");
    }
}
