//! What the filter sends to the auth service for a token, per mode. The host hands this
//! to `dispatch_http_call` as it is.

use super::{Exchange, Mode};
use crate::crypto::b64;

pub const FORM: &str = "application/x-www-form-urlencoded";
pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const INTROSPECTION_JWT: &str = "application/token-introspection+jwt";

/// One HTTP request to the auth service.
#[derive(Clone, PartialEq, Eq)]
pub struct Callout {
    pub cluster: String,
    /// Pseudo-headers first: `dispatch_http_call` needs `:method`, `:path`, `:authority`.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout_ms: u64,
}

// The token and the client secret are in the request: never print it.
impl std::fmt::Debug for Callout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Callout(cluster {:?})", self.cluster)
    }
}

pub fn callout(exchange: &Exchange, token: &str) -> Callout {
    let endpoint = &exchange.endpoint;
    let (method, path, body, accept) = match exchange.mode {
        Mode::Introspection | Mode::JwtIntrospection => {
            let body = form(&[("token", token), ("token_type_hint", "access_token")]);
            let accept = if exchange.mode == Mode::JwtIntrospection {
                INTROSPECTION_JWT
            } else {
                "application/json"
            };
            ("POST", endpoint.uri.path.clone(), body, accept)
        }
        Mode::TokenExchange => {
            let mut fields = vec![
                ("grant_type", GRANT_TOKEN_EXCHANGE),
                ("subject_token", token),
                ("subject_token_type", TOKEN_TYPE_ACCESS_TOKEN),
                ("requested_token_type", TOKEN_TYPE_JWT),
            ];
            let params = &exchange.params;
            for (name, value) in [
                ("audience", &params.audience),
                ("resource", &params.resource),
                ("scope", &params.scope),
            ] {
                if let Some(value) = value {
                    fields.push((name, value));
                }
            }
            (
                "POST",
                endpoint.uri.path.clone(),
                form(&fields),
                "application/json",
            )
        }
        Mode::Session => {
            let path = endpoint.uri.path.replace("{token}", &percent_encode(token));
            ("GET", path, Vec::new(), "application/jwt, application/json")
        }
    };
    let mut headers = vec![
        (":method".to_owned(), method.to_owned()),
        (":path".to_owned(), path),
        (":authority".to_owned(), endpoint.uri.authority.clone()),
        ("accept".to_owned(), accept.to_owned()),
        (
            "user-agent".to_owned(),
            format!("tokengate/{}", crate::VERSION),
        ),
    ];
    if !body.is_empty() {
        headers.push(("content-type".to_owned(), FORM.to_owned()));
    }
    if let Some(client) = &exchange.client {
        headers.push(("authorization".to_owned(), client.basic.clone()));
    }
    Callout {
        cluster: endpoint.cluster.clone(),
        headers,
        body,
        timeout_ms: endpoint.timeout_ms,
    }
}

/// RFC 6749 §2.3.1: the client id and secret are each form-urlencoded, then joined
/// with `:` and base64-encoded (so a `:` in an id can't move the split).
pub fn basic_authorization(id: &str, secret: &str) -> String {
    let pair = format!("{}:{}", percent_encode(id), percent_encode(secret));
    // Standard base64 with padding, from the module's one base64url engine.
    let mut encoded: String = b64::encode(pair.as_bytes())
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            other => other,
        })
        .collect();
    while encoded.len() % 4 != 0 {
        encoded.push('=');
    }
    format!("Basic {encoded}")
}

/// `application/x-www-form-urlencoded` of the fields, in order.
pub fn form(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut body = String::new();
    for (name, value) in fields {
        if !body.is_empty() {
            body.push('&');
        }
        body.push_str(&percent_encode(name));
        body.push('=');
        body.push_str(&percent_encode(value));
    }
    body.into_bytes()
}

/// Percent-encodes every byte but the unreserved ones (RFC 3986 §2.3): safe in a form,
/// a path segment and a query alike.
pub fn percent_encode(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push('%');
            for nibble in [byte >> 4, byte & 15] {
                let digit = HEX.get(usize::from(nibble)).copied().unwrap_or(b'0');
                out.push(char::from(digit));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests_support::*;
    use super::*;
    use serde_json::json;

    fn header<'a>(callout: &'a Callout, name: &str) -> Option<&'a str> {
        callout
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn introspection_posts_the_token_with_basic_client_authentication() {
        let config = config_with(exchange_json("introspection"));
        let callout = callout(&config.exchanges[0], "op/aque+token");
        assert_eq!(callout.cluster, "auth");
        assert_eq!(header(&callout, ":method"), Some("POST"));
        assert_eq!(header(&callout, ":path"), Some("/oauth2/introspect"));
        assert_eq!(header(&callout, ":authority"), Some("auth:9000"));
        assert_eq!(header(&callout, "content-type"), Some(FORM));
        assert_eq!(header(&callout, "accept"), Some("application/json"));
        assert_eq!(
            String::from_utf8(callout.body.clone()).unwrap(),
            "token=op%2Faque%2Btoken&token_type_hint=access_token"
        );
        // "gateway:s3cr%3Aet": the ':' in the secret is encoded before Basic.
        assert_eq!(
            header(&callout, "authorization"),
            Some("Basic Z2F0ZXdheTpzM2NyJTNBZXQ=")
        );
    }

    #[test]
    fn jwt_introspection_asks_for_the_signed_answer() {
        let config = config_with(exchange_json("jwt_introspection"));
        let callout = callout(&config.exchanges[0], "t");
        assert_eq!(
            header(&callout, "accept"),
            Some("application/token-introspection+jwt")
        );
    }

    #[test]
    fn token_exchange_sends_rfc_8693_parameters_and_the_configured_extras() {
        let mut exchange = exchange_json("token_exchange");
        exchange["token_exchange"] = json!({"audience": "orders", "scope": "read write"});
        let config = config_with(exchange);
        let callout = callout(&config.exchanges[0], "abc");
        assert_eq!(
            String::from_utf8(callout.body.clone()).unwrap(),
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange\
             &subject_token=abc\
             &subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token\
             &requested_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt\
             &audience=orders&scope=read%20write"
        );
    }

    #[test]
    fn session_gets_the_endpoint_with_the_id_percent_encoded() {
        let mut exchange = exchange_json("session");
        exchange["endpoint"]["uri"] = json!("http://sessions:8080/sessions/{token}?full=1");
        exchange.as_object_mut().unwrap().remove("client").unwrap();
        let config = config_with(exchange);
        let callout = callout(&config.exchanges[0], "a/b?c d");
        assert_eq!(header(&callout, ":method"), Some("GET"));
        assert_eq!(
            header(&callout, ":path"),
            Some("/sessions/a%2Fb%3Fc%20d?full=1")
        );
        assert!(callout.body.is_empty());
        assert_eq!(header(&callout, "authorization"), None);
        assert_eq!(header(&callout, "content-type"), None);
    }

    #[test]
    fn a_callout_never_prints_its_token() {
        let config = config_with(exchange_json("introspection"));
        let shown = format!("{:?}", callout(&config.exchanges[0], "secret-token"));
        assert!(!shown.contains("secret-token") && !shown.contains("s3cr"));
    }
}
