//! A provider's `login` section (the browser sign-in of the SSO pattern): read (field
//! tables) and compiled into a [`Login`].

use super::exchange::callout_target_parts;
use super::{field_path, optional, required, ConfigError, Field, Kind, Reader, Shape, Slots};
use crate::crypto::b64;
use crate::exchange::callout::basic_authorization;
use crate::login::cookies::{CookieAttributes, SameSite};
use crate::login::seal::CookieKeys;
use crate::login::{EndpointSource, Endpoints, Login, SessionToken};
use crate::remote::Uri;
use serde_json::Value;

pub(super) const LOGIN_FIELDS: &[Field] = &[
    optional(
        "discovery",
        Kind::String,
        "The identity provider's OpenID discovery document: authorization_endpoint, token_endpoint and end_session_endpoint are read from it (fetched through cluster). Required unless authorization_endpoint and token_endpoint are given.",
    ),
    required(
        "cluster",
        Kind::String,
        "The Envoy cluster that reaches the identity provider (discovery and token endpoint).",
    ),
    optional(
        "authorization_endpoint",
        Kind::String,
        "Instead of discovery: the authorization endpoint as the browser reaches it (http:// or https://).",
    ),
    optional(
        "token_endpoint",
        Kind::String,
        "Instead of discovery: the token endpoint, reached through cluster.",
    ),
    optional(
        "end_session_endpoint",
        Kind::String,
        "Instead of discovery: the RP-initiated logout endpoint (optional).",
    ),
    required(
        "client",
        Kind::Object,
        "The gateway's client at the identity provider; the secret goes as HTTP Basic to the token endpoint (a public client without secret sends client_id in the form and relies on PKCE).",
    )
    .nested(Shape::Object(LOGIN_CLIENT_FIELDS)),
    optional(
        "scopes",
        Kind::Strings,
        "Scopes asked for (default [\"openid\"]); must include openid.",
    ),
    optional(
        "redirect_path",
        Kind::String,
        "The callback path the filter answers itself (default /oauth2/callback); redirect_uri is the request's scheme and host plus this path.",
    ),
    optional(
        "logout_path",
        Kind::String,
        "A path the filter answers itself: clears the session cookies and redirects to the end-session endpoint (none by default).",
    ),
    optional(
        "post_logout_redirect",
        Kind::String,
        "Where the identity provider sends the browser after logout: a relative path on this host, or an absolute URL (default /).",
    ),
    optional(
        "session_token",
        Kind::String,
        "What the session cookie holds: the access_token (default) or the id_token; the provider must accept it (its audiences included).",
    )
    .nested(Shape::OneOf(&["access_token", "id_token"])),
    optional(
        "cookie",
        Kind::Object,
        "The session cookie: HttpOnly always; chunked as <name>.0, <name>.1, ... when over 4 KB.",
    )
    .nested(Shape::Object(COOKIE_FIELDS)),
    required(
        "cookie_secret",
        Kind::String,
        "At least 32 random bytes, base64url: the key (through HKDF) that seals the login state and the session's ID and refresh tokens. Same on every replica.",
    ),
    optional(
        "refresh",
        Kind::Bool,
        "Ask for a refresh token (kept only sealed) and use it when the session's token has expired (default false).",
    ),
    optional(
        "timeout_ms",
        Kind::U64,
        "Timeout of the discovery fetch and token endpoint callouts, in milliseconds (default 2000, 1-60000).",
    ),
];
const LOGIN_CLIENT_FIELDS: &[Field] = &[
    required("id", Kind::String, "The client id."),
    optional(
        "secret",
        Kind::String,
        "The client secret (omit for a public client).",
    ),
];
const COOKIE_FIELDS: &[Field] = &[
    optional(
        "name",
        Kind::String,
        "The session cookie's name (default tg_session); login cookies are named after it.",
    ),
    optional(
        "domain",
        Kind::String,
        "The cookies' Domain attribute (default none: this host only).",
    ),
    optional(
        "secure",
        Kind::Bool,
        "The Secure attribute (default true; false only for plain-http development).",
    ),
    optional(
        "same_site",
        Kind::String,
        "The session cookie's SameSite attribute (default Lax; the login state cookie is always Lax, as the callback is a cross-site redirect).",
    )
    .nested(Shape::OneOf(&["Lax", "Strict", "None"])),
];

const DEFAULT_TIMEOUT_MS: u64 = 2000;
const MIN_SECRET_BYTES: usize = 32;

/// The `login` object as read, before it is checked.
pub struct RawLogin {
    fields: Slots,
    client: Slots,
    cookie: Option<Slots>,
}

impl std::fmt::Debug for RawLogin {
    // Holds the client and cookie secrets: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawLogin")
    }
}

impl Reader {
    pub(super) fn login(&self, value: Value, at: &str) -> Result<RawLogin, ConfigError> {
        let mut fields = self.read(value, at, LOGIN_FIELDS)?;
        let client = fields.value("client").unwrap_or_default();
        let client = self.read(client, &field_path(at, "client"), LOGIN_CLIENT_FIELDS)?;
        let cookie = fields
            .value("cookie")
            .map(|value| self.read(value, &field_path(at, "cookie"), COOKIE_FIELDS))
            .transpose()?;
        Ok(RawLogin {
            fields,
            client,
            cookie,
        })
    }
}

/// A path the filter answers itself: absolute, no query, no dot-segments.
fn own_path(at: String, path: &str) -> Result<String, ConfigError> {
    let clean = path.starts_with('/')
        && !path.contains(['?', '#', '\\'])
        && !path.contains("//")
        && path.split('/').all(|s| s != "." && s != "..")
        && path.bytes().all(|b| b > 0x20 && b < 0x7f);
    if clean {
        Ok(path.to_owned())
    } else {
        Err(ConfigError::new(
            at,
            "must be an absolute path without query, dot-segments or //",
        ))
    }
}

/// An absolute http(s) URL a browser is sent to (query allowed, no fragment).
fn browser_url(at: String, url: &str) -> Result<String, ConfigError> {
    if Uri::parse(url).is_some() {
        Ok(url.to_owned())
    } else {
        Err(ConfigError::new(
            at,
            "must be an http:// or https:// URL with a host",
        ))
    }
}

pub fn compile_login(at: &str, raw: RawLogin, issuer: &str) -> Result<Login, ConfigError> {
    let RawLogin {
        mut fields,
        mut client,
        cookie,
    } = raw;
    let path = |name: &str| field_path(at, name);
    let (cluster, timeout_ms) = callout_target_parts(at, &mut fields, DEFAULT_TIMEOUT_MS)?;
    let discovery = fields.string("discovery");
    let authorization = fields.string("authorization_endpoint");
    let token = fields.string("token_endpoint");
    let end_session = fields.string("end_session_endpoint");
    let endpoints = match (discovery, authorization, token) {
        (Some(discovery), None, None) => {
            EndpointSource::Discovery(Uri::parse(&discovery).ok_or_else(|| {
                ConfigError::new(
                    path("discovery"),
                    "must be an http:// or https:// URI with a host",
                )
            })?)
        }
        (None, Some(authorization), Some(token)) => {
            let token_uri = Uri::parse(&token).ok_or_else(|| {
                ConfigError::new(
                    path("token_endpoint"),
                    "must be an http:// or https:// URI with a host",
                )
            })?;
            EndpointSource::Static(Endpoints {
                authorization: browser_url(path("authorization_endpoint"), &authorization)?,
                token: token_uri,
                end_session: end_session
                    .map(|url| browser_url(path("end_session_endpoint"), &url))
                    .transpose()?,
            })
        }
        _ => {
            return Err(ConfigError::new(
                at,
                "give either discovery, or authorization_endpoint and token_endpoint",
            ))
        }
    };

    let client_id = client.string("id").unwrap_or_default();
    if client_id.is_empty() {
        return Err(ConfigError::new(path("client.id"), "must be non-empty"));
    }
    let client_secret = client.string("secret");
    let basic = client_secret
        .as_deref()
        .map(|secret| basic_authorization(&client_id, secret));

    let scopes = fields
        .strings("scopes")
        .unwrap_or_else(|| vec!["openid".to_owned()]);
    if !scopes.iter().any(|s| s == "openid") {
        return Err(ConfigError::new(path("scopes"), "must include openid"));
    }
    if scopes
        .iter()
        .any(|s| s.is_empty() || !s.bytes().all(|b| b > 0x20 && b < 0x7f && b != b'"'))
    {
        return Err(ConfigError::new(
            path("scopes"),
            "scopes are non-empty printable ASCII without spaces",
        ));
    }

    let redirect_path = own_path(
        path("redirect_path"),
        &fields
            .string("redirect_path")
            .unwrap_or_else(|| "/oauth2/callback".to_owned()),
    )?;
    let logout_path = fields
        .string("logout_path")
        .map(|p| own_path(path("logout_path"), &p))
        .transpose()?;
    if logout_path.as_deref() == Some(redirect_path.as_str()) {
        return Err(ConfigError::new(
            path("logout_path"),
            "must differ from redirect_path",
        ));
    }
    let post_logout_redirect = fields
        .string("post_logout_redirect")
        .unwrap_or_else(|| "/".to_owned());
    if !post_logout_redirect.starts_with('/') || post_logout_redirect.starts_with("//") {
        browser_url(path("post_logout_redirect"), &post_logout_redirect)?;
    }
    let session_token = match fields.string("session_token").as_deref() {
        None | Some("access_token") => SessionToken::AccessToken,
        Some("id_token") => SessionToken::IdToken,
        Some(_) => {
            return Err(ConfigError::new(
                path("session_token"),
                "must be \"access_token\" or \"id_token\"",
            ))
        }
    };

    let (cookie_name, attributes) = compile_cookie(&path("cookie"), cookie)?;

    let secret_text = fields.string("cookie_secret").unwrap_or_default();
    let secret = b64::decode(secret_text.trim_end_matches('=').as_bytes())
        .ok_or_else(|| ConfigError::new(path("cookie_secret"), "must be base64url"))?;
    if secret.len() < MIN_SECRET_BYTES {
        return Err(ConfigError::new(
            path("cookie_secret"),
            format!("must hold at least {MIN_SECRET_BYTES} bytes"),
        ));
    }
    Ok(Login {
        issuer: issuer.to_owned(),
        endpoints,
        cluster,
        timeout_ms,
        client_id,
        basic,
        scope: scopes.join(" "),
        redirect_path,
        logout_path,
        post_logout_redirect,
        session_token,
        cookie_name,
        attributes,
        keys: CookieKeys::derive(&secret),
        refresh: fields.bool("refresh").unwrap_or(false),
    })
}

fn compile_cookie(
    at: &str,
    cookie: Option<Slots>,
) -> Result<(String, CookieAttributes), ConfigError> {
    let mut attributes = CookieAttributes {
        domain: None,
        secure: true,
        same_site: SameSite::Lax,
        path: "/".to_owned(),
    };
    let mut name = "tg_session".to_owned();
    let Some(mut cookie) = cookie else {
        return Ok((name, attributes));
    };
    if let Some(given) = cookie.string("name") {
        let token_chars = !given.is_empty()
            && given
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
        if !token_chars {
            return Err(ConfigError::new(
                field_path(at, "name"),
                "must be letters, digits, - or _ (login cookies add .suffixes)",
            ));
        }
        name = given;
    }
    if let Some(domain) = cookie.string("domain") {
        let valid = !domain.is_empty()
            && domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b));
        if !valid {
            return Err(ConfigError::new(
                field_path(at, "domain"),
                "must be a host name",
            ));
        }
        attributes.domain = Some(domain);
    }
    if let Some(secure) = cookie.bool("secure") {
        attributes.secure = secure;
    }
    attributes.same_site = match cookie.string("same_site").as_deref() {
        None | Some("Lax") => SameSite::Lax,
        Some("Strict") => SameSite::Strict,
        Some("None") if attributes.secure => SameSite::None,
        Some("None") => {
            return Err(ConfigError::new(
                field_path(at, "same_site"),
                "None needs secure: browsers refuse SameSite=None without Secure",
            ))
        }
        Some(_) => {
            return Err(ConfigError::new(
                field_path(at, "same_site"),
                "must be \"Lax\", \"Strict\" or \"None\"",
            ))
        }
    };
    Ok((name, attributes))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::testutil::{public_jwks, ISSUER};
    use crate::token::extract::Source;
    use serde_json::{json, Value};

    const SECRET: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY";

    fn login() -> Value {
        json!({
            "discovery": "http://idp:8080/.well-known/openid-configuration",
            "cluster": "idp",
            "client": {"id": "web", "secret": "s3cret"},
            "cookie_secret": SECRET
        })
    }

    fn compile(login: Value) -> Result<Config, (String, String)> {
        let doc = json!({"providers": {"corp": {
            "issuer": ISSUER, "jwks": {"inline": public_jwks()}, "login": login
        }}});
        Config::from_json(doc.to_string().as_bytes()).map_err(|e| (e.path, e.message))
    }

    fn with(change: impl FnOnce(&mut Value)) -> Value {
        let mut login = login();
        change(&mut login);
        login
    }

    #[test]
    fn a_login_makes_its_session_cookie_the_providers_last_source() {
        let config = compile(login()).unwrap();
        let provider = &config.providers[0];
        assert_eq!(
            provider.sources.last(),
            Some(&Source::SessionCookie("tg_session".into()))
        );
        let login = provider.login.as_ref().unwrap();
        assert_eq!(login.redirect_path, "/oauth2/callback");
        assert_eq!(login.scope, "openid");
        assert!(login.attributes.secure);
        assert!(config.reads.headers.contains(&":scheme".to_owned()));
    }

    #[test]
    fn every_login_field_is_checked_with_its_path() {
        let at = "providers.corp.login";
        let cases = [
            (
                with(|l| l["cookie_secret"] = json!("c2hvcnQ")),
                "cookie_secret",
            ),
            (
                with(|l| l["cookie_secret"] = json!("not base64url!")),
                "cookie_secret",
            ),
            (with(|l| l["scopes"] = json!(["profile"])), "scopes"),
            (
                with(|l| l["redirect_path"] = json!("/a/../b")),
                "redirect_path",
            ),
            (
                with(|l| l["redirect_path"] = json!("callback")),
                "redirect_path",
            ),
            (
                with(|l| l["logout_path"] = json!("/oauth2/callback")),
                "logout_path",
            ),
            (
                with(|l| l["post_logout_redirect"] = json!("//evil.test/")),
                "post_logout_redirect",
            ),
            (
                with(|l| l["session_token"] = json!("refresh_token")),
                "session_token",
            ),
            (
                with(|l| l["cookie"] = json!({"same_site": "None", "secure": false})),
                "cookie.same_site",
            ),
            (
                with(|l| l["cookie"] = json!({"name": "a;b"})),
                "cookie.name",
            ),
            (with(|l| l["client"] = json!({"id": ""})), "client.id"),
            (with(|l| l["discovery"] = json!("ftp://idp")), "discovery"),
            (with(|l| l["cluster"] = json!("")), "cluster"),
            (
                with(|l| l["token_endpoint"] = json!("http://idp/token")),
                "",
            ),
            (with(|l| l["surprise"] = json!(1)), "surprise"),
        ];
        for (login, field) in cases {
            let (path, message) = compile(login).unwrap_err();
            let expected = if field.is_empty() {
                at.to_owned()
            } else {
                format!("{at}.{field}")
            };
            assert_eq!(path, expected, "{message}");
            assert!(!message.contains("s3cret") && !message.contains(SECRET));
        }
    }

    #[test]
    fn static_endpoints_need_no_discovery() {
        let login = with(|l| {
            l.as_object_mut().unwrap().remove("discovery");
            l["authorization_endpoint"] = json!("https://idp.test/authorize");
            l["token_endpoint"] = json!("http://idp.test/token");
        });
        assert!(compile(login).is_ok());
    }
}
