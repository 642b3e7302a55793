//! The only place a refusal becomes an HTTP response: status, `WWW-Authenticate`
//! (RFC 6750 §3) and a JSON body. Descriptions come from fixed strings, never from
//! the request, so a token can't end up in a response.

use crate::error::{AuthnError, Refusal};
use crate::revocation::logout::LogoutError;

/// A response the filter sends instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deny {
    pub status: u32,
    pub www_authenticate: Option<String>,
    pub body: String,
    /// More response headers (a central policy's); `content-type` among them replaces
    /// the JSON one.
    pub headers: Vec<(String, String)>,
}

impl Deny {
    pub fn for_refusal(refusal: Refusal, realm: &str) -> Deny {
        match refusal {
            Refusal::Authn(AuthnError::Missing) => Deny {
                status: 401,
                www_authenticate: Some(format!("Bearer realm=\"{realm}\"")),
                body: body("unauthorized", AuthnError::Missing.description()),
                headers: Vec::new(),
            },
            Refusal::Authn(e) if e.is_unavailable() => Deny {
                status: 503,
                www_authenticate: None,
                body: body("temporarily_unavailable", e.description()),
                headers: Vec::new(),
            },
            Refusal::Authn(e) => Deny {
                status: 401,
                www_authenticate: Some(format!(
                    "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{}\"",
                    e.description()
                )),
                body: body("invalid_token", e.description()),
                headers: Vec::new(),
            },
            Refusal::NoRuleMatched => Deny {
                status: 403,
                www_authenticate: None,
                body: body("forbidden", "no rule matches this request"),
                headers: Vec::new(),
            },
            Refusal::BadPath(e) => Deny {
                status: 400,
                www_authenticate: None,
                body: body("invalid_request", e.description()),
                headers: Vec::new(),
            },
            Refusal::Forbidden | Refusal::CentralDenied => Deny::insufficient_scope(realm, None),
            Refusal::AuthzUnavailable => Deny {
                status: 503,
                www_authenticate: None,
                body: body(
                    "temporarily_unavailable",
                    "authorization service unavailable",
                ),
                headers: Vec::new(),
            },
        }
    }

    /// 403 for a rule whose conditions do not hold, naming the rule (never the claims).
    pub fn insufficient_scope(realm: &str, rule: Option<&str>) -> Deny {
        let description = match rule {
            Some(rule) => format!("rule {} denies this request", sanitize(rule)),
            None => "the policy denies this request".to_owned(),
        };
        Deny {
            status: 403,
            www_authenticate: Some(format!(
                "Bearer realm=\"{realm}\", error=\"insufficient_scope\", error_description=\"{description}\""
            )),
            body: body("insufficient_scope", &description),
            headers: Vec::new(),
        }
    }

    /// The central policy's denial: its status (403 by default), headers and body; a 403
    /// without a body of the policy's own carries the insufficient_scope challenge.
    pub fn central(decision: &crate::policy::central::Decision, realm: &str) -> Deny {
        let status = decision.status.unwrap_or(403);
        let mut deny = match &decision.body {
            None if status == 403 => Deny::insufficient_scope(realm, None),
            None => Deny {
                status,
                www_authenticate: None,
                body: body("forbidden", "the policy denies this request"),
                headers: Vec::new(),
            },
            Some(text) => Deny {
                status,
                www_authenticate: None,
                body: text.clone(),
                headers: Vec::new(),
            },
        };
        deny.headers = decision.response_headers.clone();
        deny
    }
}

impl Deny {
    /// A refused back-channel logout request (OIDC Back-Channel Logout 1.0 §2.8): 400
    /// `invalid_request`, 413 for an oversized body, 503 when the gateway is at fault.
    pub fn logout_refused(error: LogoutError) -> Deny {
        let (status, code) = match error {
            LogoutError::BodyTooLarge => (413, "invalid_request"),
            LogoutError::Busy | LogoutError::Signature(AuthnError::KeysUnavailable) => {
                (503, "temporarily_unavailable")
            }
            _ => (400, "invalid_request"),
        };
        Deny {
            status,
            www_authenticate: None,
            body: body(code, error.description()),
            headers: vec![("cache-control".to_owned(), "no-store".to_owned())],
        }
    }

    /// 405 for a method one of the filter's own endpoints does not take.
    pub fn method_not_allowed() -> Deny {
        Deny {
            status: 405,
            www_authenticate: None,
            body: body("invalid_request", "method not allowed"),
            headers: Vec::new(),
        }
    }
}

/// A rule name inside a quoted header parameter: no quotes, backslashes or controls.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

fn body(error: &str, description: &str) -> String {
    serde_json::json!({ "error": error, "error_description": description }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_token_challenge_has_no_error_code() {
        let deny = Deny::for_refusal(Refusal::Authn(AuthnError::Missing), "api");
        assert_eq!(deny.status, 401);
        assert_eq!(
            deny.www_authenticate.as_deref(),
            Some("Bearer realm=\"api\"")
        );
    }

    #[test]
    fn audience_mismatch_is_invalid_token() {
        let deny = Deny::for_refusal(Refusal::Authn(AuthnError::AudienceNotAllowed), "api");
        assert_eq!(deny.status, 401);
        assert_eq!(
            deny.www_authenticate.as_deref(),
            Some("Bearer realm=\"api\", error=\"invalid_token\", error_description=\"audience not allowed\"")
        );
        let body: serde_json::Value = serde_json::from_str(&deny.body).unwrap();
        assert_eq!(body["error"], "invalid_token");
        assert_eq!(body["error_description"], "audience not allowed");
    }

    #[test]
    fn keys_unavailable_is_503_without_challenge() {
        let deny = Deny::for_refusal(Refusal::Authn(AuthnError::KeysUnavailable), "api");
        assert_eq!(deny.status, 503);
        assert_eq!(deny.www_authenticate, None);
    }

    #[test]
    fn exchange_unavailable_is_503_and_inactive_is_invalid_token() {
        let deny = Deny::for_refusal(Refusal::Authn(AuthnError::ExchangeUnavailable), "api");
        assert_eq!((deny.status, deny.www_authenticate), (503, None));
        let deny = Deny::for_refusal(Refusal::Authn(AuthnError::Inactive), "api");
        assert_eq!(deny.status, 401);
        assert_eq!(
            deny.www_authenticate.as_deref(),
            Some("Bearer realm=\"api\", error=\"invalid_token\", error_description=\"token inactive or revoked\"")
        );
    }

    #[test]
    fn revoked_is_invalid_token_and_status_unavailable_is_503() {
        let deny = Deny::for_refusal(Refusal::Authn(AuthnError::Revoked), "api");
        assert_eq!(deny.status, 401);
        assert_eq!(
            deny.www_authenticate.as_deref(),
            Some("Bearer realm=\"api\", error=\"invalid_token\", error_description=\"token revoked\"")
        );
        let deny = Deny::for_refusal(Refusal::Authn(AuthnError::Suspended), "api");
        assert_eq!(
            (deny.status, deny.body.contains("token suspended")),
            (401, true)
        );
        let deny = Deny::for_refusal(Refusal::Authn(AuthnError::StatusUnavailable), "api");
        assert_eq!((deny.status, deny.www_authenticate), (503, None));
    }

    #[test]
    fn a_refused_logout_is_400_invalid_request_with_an_oidc_error_body() {
        let deny = Deny::logout_refused(LogoutError::Replayed);
        assert_eq!(deny.status, 400);
        let body: serde_json::Value = serde_json::from_str(&deny.body).unwrap();
        assert_eq!(body["error"], "invalid_request");
        assert_eq!(body["error_description"], "logout token already used");
        assert_eq!(Deny::logout_refused(LogoutError::BodyTooLarge).status, 413);
        assert_eq!(Deny::logout_refused(LogoutError::Busy).status, 503);
        let keyless = LogoutError::Signature(AuthnError::KeysUnavailable);
        assert_eq!(Deny::logout_refused(keyless).status, 503);
    }

    #[test]
    fn no_rule_is_403_without_challenge() {
        let deny = Deny::for_refusal(Refusal::NoRuleMatched, "api");
        assert_eq!(deny.status, 403);
        assert_eq!(deny.www_authenticate, None);
    }
}
