//! Why a request was refused. One variant per reason; `reason()` names the stat,
//! `description()` is the short text clients see. Neither ever holds the token.

pub use crate::policy::paths::PathError;

/// Why authentication failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthnError {
    /// No token in any configured source.
    Missing,
    /// Longer than the provider's `max_token_bytes`; nothing was decoded.
    TooLong,
    /// Not three strict base64url parts, or a part is not the JSON it must be.
    Malformed,
    /// The header names an algorithm that is not allowed (or `none`, or one the key can't use).
    AlgNotAllowed,
    /// The header carries `crit`: no extension is understood, so the token is refused.
    CritUnsupported,
    /// `token_types` is set and the header's `typ` is not in it.
    TokenTypeNotAllowed,
    /// No configured key has the token's `kid` (or, without `kid`, fits the algorithm).
    UnknownKid,
    /// The signature does not verify with the selected key.
    BadSignature,
    /// `exp` has passed (beyond the clock skew).
    Expired,
    /// `nbf` is in the future (beyond the clock skew).
    NotYetValid,
    /// `require_exp` is set and the token has no `exp`.
    MissingExp,
    /// `iss` is missing or is not the provider's issuer.
    IssuerNotAllowed,
    /// `aud` holds none of the configured audiences.
    AudienceNotAllowed,
    /// No usable key set yet (first fetch pending or failed).
    KeysUnavailable,
    /// The auth service says the opaque token or session is not active (unknown,
    /// expired, revoked; RFC 8693 `invalid_grant`).
    Inactive,
    /// A token shaped like a JWT where only exchanges apply: JWTs go to providers.
    UnexpectedJwt,
    /// The auth service could not answer (down, slow, refusing the gateway, garbage).
    ExchangeUnavailable,
    /// The token's status list entry is INVALID (1), or a back-channel logout covers
    /// its `sub`/`sid` and it was issued before the logout.
    Revoked,
    /// The token's status list entry is SUSPENDED (2).
    Suspended,
    /// `require_status` is set and the token has no `status.status_list` claim.
    StatusMissing,
    /// The token's `status.status_list` is malformed, its index is outside the list,
    /// or its entry is a value other than VALID, INVALID or SUSPENDED.
    StatusInvalid,
    /// The token's status list URI is not on an allowed origin: never fetched.
    StatusUriNotAllowed,
    /// The token's status list could not be fetched or verified, and
    /// `on_unavailable` is `deny` (503).
    StatusUnavailable,
}

impl AuthnError {
    /// The stat suffix: `tokengate.denied.<reason>`.
    pub fn reason(self) -> &'static str {
        match self {
            AuthnError::Missing => "missing",
            AuthnError::TooLong => "too_long",
            AuthnError::Malformed => "malformed",
            AuthnError::AlgNotAllowed => "alg_not_allowed",
            AuthnError::CritUnsupported => "crit",
            AuthnError::TokenTypeNotAllowed => "token_type",
            AuthnError::UnknownKid => "unknown_kid",
            AuthnError::BadSignature => "bad_signature",
            AuthnError::Expired => "expired",
            AuthnError::NotYetValid => "not_yet_valid",
            AuthnError::MissingExp => "missing_exp",
            AuthnError::IssuerNotAllowed => "issuer",
            AuthnError::AudienceNotAllowed => "audience",
            AuthnError::KeysUnavailable => "keys_unavailable",
            AuthnError::Inactive => "inactive",
            AuthnError::UnexpectedJwt => "unexpected_jwt",
            AuthnError::ExchangeUnavailable => "exchange_unavailable",
            AuthnError::Revoked => "revoked",
            AuthnError::Suspended => "suspended",
            AuthnError::StatusMissing => "status_missing",
            AuthnError::StatusInvalid => "status_invalid",
            AuthnError::StatusUriNotAllowed => "status_uri",
            AuthnError::StatusUnavailable => "status_unavailable",
        }
    }

    /// The `error_description` clients see.
    pub fn description(self) -> &'static str {
        match self {
            AuthnError::Missing => "bearer token required",
            AuthnError::TooLong => "token too long",
            AuthnError::Malformed => "malformed token",
            AuthnError::AlgNotAllowed => "algorithm not allowed",
            AuthnError::CritUnsupported => "critical header not supported",
            AuthnError::TokenTypeNotAllowed => "token type not allowed",
            AuthnError::UnknownKid => "unknown signing key",
            AuthnError::BadSignature => "invalid signature",
            AuthnError::Expired => "token expired",
            AuthnError::NotYetValid => "token not yet valid",
            AuthnError::MissingExp => "token has no expiry",
            AuthnError::IssuerNotAllowed => "issuer not allowed",
            AuthnError::AudienceNotAllowed => "audience not allowed",
            AuthnError::KeysUnavailable => "signing keys unavailable",
            AuthnError::Inactive => "token inactive or revoked",
            AuthnError::UnexpectedJwt => "a JWT is not accepted here",
            AuthnError::ExchangeUnavailable => "authorization service unavailable",
            AuthnError::Revoked => "token revoked",
            AuthnError::Suspended => "token suspended",
            AuthnError::StatusMissing => "token has no status",
            AuthnError::StatusInvalid => "token status invalid",
            AuthnError::StatusUriNotAllowed => "status list not allowed",
            AuthnError::StatusUnavailable => "token status unavailable",
        }
    }

    /// How much a failure says about the token being meant for this provider, used to
    /// pick the error to report when several providers all refuse: a token that got as
    /// far as its signature says more than one whose issuer did not match.
    pub fn specificity(self) -> u8 {
        match self {
            AuthnError::Missing => 0,
            AuthnError::IssuerNotAllowed => 1,
            AuthnError::UnknownKid | AuthnError::AlgNotAllowed => 2,
            AuthnError::KeysUnavailable
            | AuthnError::ExchangeUnavailable
            | AuthnError::StatusUnavailable => 4,
            // The token verified: its own status is the most specific thing to say.
            AuthnError::Revoked
            | AuthnError::Suspended
            | AuthnError::StatusMissing
            | AuthnError::StatusInvalid
            | AuthnError::StatusUriNotAllowed => 5,
            _ => 3,
        }
    }

    /// Every variant, for reading a reason back (shared exchange records store it).
    pub const ALL: [AuthnError; 23] = [
        AuthnError::Missing,
        AuthnError::TooLong,
        AuthnError::Malformed,
        AuthnError::AlgNotAllowed,
        AuthnError::CritUnsupported,
        AuthnError::TokenTypeNotAllowed,
        AuthnError::UnknownKid,
        AuthnError::BadSignature,
        AuthnError::Expired,
        AuthnError::NotYetValid,
        AuthnError::MissingExp,
        AuthnError::IssuerNotAllowed,
        AuthnError::AudienceNotAllowed,
        AuthnError::KeysUnavailable,
        AuthnError::Inactive,
        AuthnError::UnexpectedJwt,
        AuthnError::ExchangeUnavailable,
        AuthnError::Revoked,
        AuthnError::Suspended,
        AuthnError::StatusMissing,
        AuthnError::StatusInvalid,
        AuthnError::StatusUriNotAllowed,
        AuthnError::StatusUnavailable,
    ];

    /// The variant whose `reason()` this is.
    pub fn from_reason(reason: &str) -> Option<AuthnError> {
        AuthnError::ALL.into_iter().find(|e| e.reason() == reason)
    }

    /// Answered with 503, not 401: the fault is the gateway's, not the token's.
    pub fn is_unavailable(self) -> bool {
        matches!(
            self,
            AuthnError::KeysUnavailable
                | AuthnError::ExchangeUnavailable
                | AuthnError::StatusUnavailable
        )
    }
}

/// Why a request was refused after, or instead of, authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// Authentication failed.
    Authn(AuthnError),
    /// No rule matches the request.
    NoRuleMatched,
    /// The path could mean another path upstream than to the rules (400).
    BadPath(PathError),
    /// The rule's `authz` conditions do not hold (403 insufficient_scope).
    Forbidden,
    /// The central policy service denied the request.
    CentralDenied,
    /// The central policy service could not decide, and `on_error` is `deny` (503).
    AuthzUnavailable,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Authn(e) => e.reason(),
            Refusal::NoRuleMatched => "no_rule",
            Refusal::BadPath(_) => "bad_path",
            Refusal::Forbidden => "forbidden",
            Refusal::CentralDenied => "central_denied",
            Refusal::AuthzUnavailable => "authz_unavailable",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_stat_safe_identifiers_and_read_back() {
        for e in AuthnError::ALL {
            assert_eq!(AuthnError::from_reason(e.reason()), Some(e));
            assert!(e
                .reason()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert!(!e.description().contains('"'));
        }
    }
}
