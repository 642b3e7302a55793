//! Revocable JWTs, no I/O: a token's status in a Token Status List
//! (draft-ietf-oauth-status-list), and OpenID Connect Back-Channel Logout 1.0 (the
//! logout token, and the denylist it feeds). The host fetches lists, stores the
//! denylist in shared data and answers the logout endpoint; everything it decides is
//! here.

pub mod denylist;
pub mod logout;
pub mod status_list;

use crate::crypto::alg::Alg;
use crate::error::AuthnError;
use crate::remote::Uri;
use crate::token::jwks::KeySet;
use crate::token::jwt::Policy;
use serde_json::{Map, Value};

/// Whose signature a list token or a logout token must carry: the provider's issuer,
/// algorithms, keys and clock skew (its access-token rules don't apply).
#[derive(Clone, Copy)]
pub struct Signer<'a> {
    pub issuer: &'a str,
    pub algorithms: &'a [Alg],
    pub keys: &'a KeySet,
    pub clock_skew_secs: u64,
}

impl<'a> Signer<'a> {
    pub fn of(policy: &'a Policy, keys: &'a KeySet) -> Signer<'a> {
        Signer {
            issuer: &policy.issuer,
            algorithms: &policy.algorithms,
            keys,
            clock_skew_secs: policy.clock_skew_secs,
        }
    }
}

/// What a verified token shows revocation checks, kept with its cached identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocable {
    /// `status.status_list`, when the provider checks status lists and the token has one.
    pub status: Option<status_list::StatusRef>,
    /// `sub`, `sid`, `iat`, when the provider takes back-channel logouts.
    pub subject: denylist::Subject,
}

impl Revocable {
    /// Reads a verified token's claims once; a malformed or unlisted status reference
    /// refuses the token.
    pub fn read(
        claims: &Map<String, Value>,
        revocation: &Revocation,
    ) -> Result<Revocable, AuthnError> {
        let status = match &revocation.status_list {
            Some(policy) => status_list::reference(claims, policy)?,
            None => None,
        };
        let subject = match &revocation.backchannel {
            Some(_) => {
                let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
                denylist::Subject {
                    sub: text("sub"),
                    sid: text("sid"),
                    iat: crate::token::jwt::numeric_date_secs(claims.get("iat")),
                }
            }
            None => denylist::Subject::default(),
        };
        Ok(Revocable { status, subject })
    }
}

/// A provider's `revocation` object, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub status_list: Option<StatusListPolicy>,
    pub backchannel: Option<Backchannel>,
}

/// `revocation.status_list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusListPolicy {
    /// (origin `scheme://host[:port]`, lowercase, Envoy cluster): the only places a
    /// list is fetched from.
    pub origins: Vec<(String, String)>,
    pub max_ttl_secs: u64,
    pub timeout_ms: u64,
    /// The inflated list's size cap; a bigger one (a bomb) is a failed fetch.
    pub max_list_bytes: usize,
    /// `on_unavailable: allow`.
    pub allow_unavailable: bool,
    pub require_status: bool,
}

impl StatusListPolicy {
    /// The cluster of an allowed origin.
    pub fn cluster_for(&self, origin: &str) -> Option<&str> {
        self.origins
            .iter()
            .find(|(allowed, _)| allowed == origin)
            .map(|(_, cluster)| cluster.as_str())
    }

    /// The biggest list token accepted: base64url of a compressed list no bigger than
    /// the inflated cap, plus room for the rest of the JWT.
    pub fn max_token_bytes(&self) -> usize {
        self.max_list_bytes
            .saturating_mul(2)
            .saturating_add(16 * 1024)
    }
}

/// `revocation.backchannel_logout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backchannel {
    pub path: String,
    pub client_id: String,
    pub max_token_lifetime_secs: u64,
}

/// The origin of an `http(s)` URI (`scheme://host[:port]`, lowercase) and its split
/// form for a callout; `None` for anything else (userinfo, fragment, bad characters).
pub fn origin_of(uri: &str) -> Option<(String, Uri)> {
    let scheme = if uri.starts_with("https://") {
        "https"
    } else if uri.starts_with("http://") {
        "http"
    } else {
        return None;
    };
    let split = Uri::parse(uri)?;
    let origin = format!("{scheme}://{}", split.authority.to_ascii_lowercase());
    Some((origin, split))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::extract::form_value;

    #[test]
    fn origin_is_scheme_and_lowercase_authority() {
        let (origin, uri) = origin_of("https://IdP.example.com:8443/lists/1?x=y").unwrap();
        assert_eq!(origin, "https://idp.example.com:8443");
        assert_eq!(uri.path, "/lists/1?x=y");
        assert_eq!(origin_of("http://h/").unwrap().0, "http://h");
        assert!(origin_of("ftp://h/x").is_none());
        assert!(origin_of("https://user@h/x").is_none());
        assert!(origin_of("https://h/x#frag").is_none());
    }

    #[test]
    fn form_value_decodes_and_refuses_repeats() {
        assert_eq!(
            form_value(b"a=1&logout_token=x%2Ey+z", "logout_token").as_deref(),
            Some("x.y z")
        );
        assert_eq!(form_value(b"a=1", "logout_token"), None);
        assert_eq!(
            form_value(b"logout_token=a&logout_token=b", "logout_token"),
            None
        );
        assert_eq!(form_value(b"logout_token=%zz", "logout_token"), None);
    }
}
