//! The browser sign-in of the SSO pattern (OIDC authorization code flow with PKCE),
//! without I/O: the redirect to the identity provider, the callback's checks, the token
//! endpoint's request and answer, the session cookies, logout. Time and randomness are
//! passed in; the state lives only in sealed cookies, so any worker of any replica can
//! take the callback.

pub mod cookies;
pub mod pkce;
pub mod seal;

use crate::exchange::callout::{form, Callout, FORM};
use crate::remote::Uri;
use crate::token::extract::{form_value, Request, Source};
use crate::token::jwks::KeySet;
use crate::token::jwt::{self, Policy};
use cookies::CookieAttributes;
use pkce::{LoginSecrets, LoginState, SessionSecrets};
use seal::{CookieKeys, Purpose};
use serde_json::Value;

/// How long a browser has to come back from the identity provider.
pub const LOGIN_STATE_SECS: u64 = 600;
/// A session token this close to its `exp` is refreshed before it is used (when the
/// session holds a refresh token).
pub const REFRESH_AHEAD_SECS: u64 = 30;
/// Bytes of randomness one login start uses: state, nonce and verifier, then the seal's
/// nonce.
pub const START_RANDOM_BYTES: usize = 96 + 24;
/// The session's sealed cookie (ID token, refresh token) lives this long when refresh
/// is on; otherwise as long as the session token.
const REFRESH_SESSION_SECS: u64 = 7 * 24 * 3600;
/// An opaque session token's life when the token endpoint gives no `expires_in`.
const DEFAULT_OPAQUE_SESSION_SECS: u64 = 3600;
/// Larger token endpoint answers are a failure, unread.
pub const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;
/// Larger sealed cookies are refused unread.
const MAX_SEALED_BYTES: usize = 16 * 1024;

/// A provider's `login` section, compiled.
pub struct Login {
    pub issuer: String,
    pub endpoints: EndpointSource,
    pub cluster: String,
    pub timeout_ms: u64,
    pub client_id: String,
    /// `Authorization: Basic ...` for the token endpoint; none for a public client.
    pub basic: Option<String>,
    /// Space-separated, `openid` among them.
    pub scope: String,
    pub redirect_path: String,
    pub logout_path: Option<String>,
    /// A relative path on this host, or an absolute URL.
    pub post_logout_redirect: String,
    pub session_token: SessionToken,
    pub cookie_name: String,
    pub attributes: CookieAttributes,
    pub keys: CookieKeys,
    pub refresh: bool,
}

// The client secret and the cookie keys are in here: never printed.
impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("client_id", &self.client_id)
            .field("redirect_path", &self.redirect_path)
            .field("cookie_name", &self.cookie_name)
            .finish_non_exhaustive()
    }
}

/// Where the identity provider's endpoints come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointSource {
    /// Read from the discovery document (the host fetches it).
    Discovery(Uri),
    Static(Endpoints),
}

/// The identity provider's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// As the browser reaches it.
    pub authorization: String,
    /// Reached through the login's cluster.
    pub token: Uri,
    /// RP-initiated logout, as the browser reaches it.
    pub end_session: Option<String>,
}

/// What the session cookie holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionToken {
    AccessToken,
    IdToken,
}

/// Why a login step failed. Descriptions are fixed strings: no token, code or secret
/// ever reaches a page or a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoginError {
    /// No login cookie for the callback's `state`, or it does not open, or its state
    /// differs: a forged, replayed or expired callback.
    StateMismatch,
    /// The callback's RFC 9207 `iss` is not the provider's issuer (a mix-up attack).
    IssuerMismatch,
    /// The callback carries neither a code nor an error.
    BadCallback,
    /// The identity provider answered the authorization request with an error.
    Refused,
    /// The token endpoint refused the code (replayed, expired, wrong verifier).
    CodeRefused,
    /// The token endpoint could not be reached or answered garbage.
    TokenEndpointFailure,
    /// The ID token failed a check (signature, iss, aud, azp, nonce, exp, iat).
    IdTokenInvalid,
    /// The token meant for the session cookie is not accepted by the provider.
    SessionTokenInvalid,
    /// The identity provider's endpoints or keys are not known yet.
    Unavailable,
    /// The token is too large even for chunked cookies.
    SessionTooLarge,
}

impl LoginError {
    pub fn description(self) -> &'static str {
        match self {
            LoginError::StateMismatch => {
                "the sign-in could not be matched to this browser; start again"
            }
            LoginError::IssuerMismatch => "the sign-in came back from another identity provider",
            LoginError::BadCallback => "the sign-in callback is incomplete",
            LoginError::Refused => "the identity provider did not sign you in",
            LoginError::CodeRefused => {
                "the identity provider refused the sign-in code; start again"
            }
            LoginError::TokenEndpointFailure => {
                "the identity provider's token endpoint is unavailable"
            }
            LoginError::IdTokenInvalid => "the identity provider's ID token is invalid",
            LoginError::SessionTokenInvalid => "the identity provider's token is not accepted here",
            LoginError::Unavailable => "sign-in is temporarily unavailable",
            LoginError::SessionTooLarge => "the session token is too large for cookies",
        }
    }

    pub fn status(self) -> u32 {
        match self {
            LoginError::StateMismatch
            | LoginError::IssuerMismatch
            | LoginError::BadCallback
            | LoginError::CodeRefused => 400,
            LoginError::Refused | LoginError::IdTokenInvalid => 401,
            LoginError::SessionTokenInvalid | LoginError::SessionTooLarge => 502,
            LoginError::TokenEndpointFailure | LoginError::Unavailable => 503,
        }
    }

    /// The `tokengate.login.<event>` it counts as.
    pub fn event(self) -> LoginEvent {
        match self {
            LoginError::StateMismatch | LoginError::IssuerMismatch | LoginError::BadCallback => {
                LoginEvent::StateMismatch
            }
            LoginError::IdTokenInvalid | LoginError::SessionTokenInvalid => {
                LoginEvent::IdTokenInvalid
            }
            LoginError::Refused => LoginEvent::Refused,
            LoginError::CodeRefused
            | LoginError::TokenEndpointFailure
            | LoginError::SessionTooLarge => LoginEvent::TokenEndpointFailure,
            LoginError::Unavailable => LoginEvent::Unavailable,
        }
    }
}

/// `tokengate.login.<event>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoginEvent {
    Redirect,
    Success,
    StateMismatch,
    IdTokenInvalid,
    TokenEndpointFailure,
    Refused,
    Unavailable,
    Refresh,
    RefreshFailure,
    Logout,
}

impl LoginEvent {
    pub fn name(self) -> &'static str {
        match self {
            LoginEvent::Redirect => "redirect",
            LoginEvent::Success => "success",
            LoginEvent::StateMismatch => "state_mismatch",
            LoginEvent::IdTokenInvalid => "id_token_invalid",
            LoginEvent::TokenEndpointFailure => "token_endpoint_failure",
            LoginEvent::Refused => "idp_refused",
            LoginEvent::Unavailable => "unavailable",
            LoginEvent::Refresh => "refresh",
            LoginEvent::RefreshFailure => "refresh_failure",
            LoginEvent::Logout => "logout",
        }
    }
}

/// A response of the login's own: a redirect with cookies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub location: String,
    pub set_cookies: Vec<String>,
}

/// A browser's request for a page: GET with `Accept` naming `text/html`.
pub fn is_browser_page_request(request: &Request) -> bool {
    request.method == "GET"
        && request
            .header("accept")
            .is_some_and(|accept| accept.to_ascii_lowercase().contains("text/html"))
}

/// `<scheme>://<host><redirect_path>`.
pub fn redirect_uri(login: &Login, request: &Request) -> String {
    format!("{}{}", origin(request), login.redirect_path)
}

fn origin(request: &Request) -> String {
    let scheme = match request.header(":scheme") {
        Some("http") => "http",
        _ => "https",
    };
    format!("{scheme}://{}", request.host)
}

/// The redirect to the authorization endpoint, with the login state sealed in a cookie
/// named after `state` (several tabs may sign in at once).
pub fn start(
    login: &Login,
    provider: &str,
    endpoints: &Endpoints,
    request: &Request,
    random: &[u8; START_RANDOM_BYTES],
    now: u64,
) -> Redirect {
    let (secret_bytes, seal_nonce) = random.split_at(96);
    let mut secret_random = [0u8; 96];
    secret_random
        .iter_mut()
        .zip(secret_bytes)
        .for_each(|(n, r)| *n = *r);
    let secrets = LoginSecrets::from_random(&secret_random);
    let mut nonce = [0u8; 24];
    nonce.iter_mut().zip(seal_nonce).for_each(|(n, r)| *n = *r);
    let return_to = pkce::safe_return_to(&request.path)
        .unwrap_or("/")
        .to_owned();
    let redirect_uri = redirect_uri(login, request);
    let state = LoginState {
        state: secrets.state.clone(),
        nonce: secrets.nonce.clone(),
        verifier: secrets.verifier.clone(),
        return_to,
        provider: provider.to_owned(),
    };
    let cookie_name = cookies::state_cookie_name(&login.cookie_name, &secrets.state);
    let sealed = seal::seal(
        &login.keys,
        Purpose::LoginState,
        &cookie_name,
        &state.encode(),
        now.saturating_add(LOGIN_STATE_SECS),
        nonce,
    );
    let challenge = pkce::challenge_s256(&secrets.verifier);
    let query = String::from_utf8(form(&[
        ("response_type", "code"),
        ("client_id", &login.client_id),
        ("redirect_uri", &redirect_uri),
        ("scope", &login.scope),
        ("state", &secrets.state),
        ("nonce", &secrets.nonce),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
    ]))
    .unwrap_or_default();
    let separator = if endpoints.authorization.contains('?') {
        '&'
    } else {
        '?'
    };
    Redirect {
        location: format!("{}{separator}{query}", endpoints.authorization),
        set_cookies: vec![cookies::set_cookie(
            &cookie_name,
            &sealed,
            &state_cookie_attributes(login),
            Some(LOGIN_STATE_SECS),
        )],
    }
}

/// The login state cookie goes only to the callback, and always `SameSite=Lax`: the
/// callback is a top-level cross-site navigation from the identity provider.
fn state_cookie_attributes(login: &Login) -> CookieAttributes {
    CookieAttributes {
        domain: login.attributes.domain.clone(),
        secure: login.attributes.secure,
        same_site: cookies::SameSite::Lax,
        path: login.redirect_path.clone(),
    }
}

/// A callback that passed its checks: the code's redemption to make.
#[derive(Debug)]
pub struct Redeem {
    pub callout: Callout,
    pub state: LoginState,
    /// The login cookie to clear once done.
    pub state_cookie: String,
}

/// A query parameter of a callback; none when absent, given twice or not decodable.
fn query_param(request: &Request, name: &str) -> Option<String> {
    let (_, query) = request.path.split_once('?')?;
    form_value(query.as_bytes(), name)
}

/// The callback's checks: the login cookie for its `state` opens and holds that state,
/// the identity provider is the one asked (RFC 9207 `iss`, when sent), a code is there.
pub fn callback(
    login: &Login,
    endpoints: &Endpoints,
    request: &Request,
    now: u64,
) -> Result<Redeem, LoginError> {
    let state_param = query_param(request, "state").ok_or(LoginError::StateMismatch)?;
    let state_cookie = cookies::state_cookie_name(&login.cookie_name, &state_param);
    let sealed = Source::Cookie(state_cookie.clone())
        .find(request)
        .ok_or(LoginError::StateMismatch)?;
    let opened = seal::open(
        &login.keys,
        Purpose::LoginState,
        &state_cookie,
        &sealed.token,
        now,
        MAX_SEALED_BYTES,
    )
    .map_err(|_| LoginError::StateMismatch)?;
    let state = LoginState::decode(&opened).ok_or(LoginError::StateMismatch)?;
    if !pkce::constant_time_eq(state.state.as_bytes(), state_param.as_bytes()) {
        return Err(LoginError::StateMismatch);
    }
    if let Some(iss) = query_param(request, "iss") {
        if iss != login.issuer {
            return Err(LoginError::IssuerMismatch);
        }
    }
    if query_param(request, "error").is_some() {
        return Err(LoginError::Refused);
    }
    let code = query_param(request, "code").ok_or(LoginError::BadCallback)?;
    let redirect_uri = redirect_uri(login, request);
    let mut fields = vec![
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", redirect_uri.as_str()),
        ("code_verifier", state.verifier.as_str()),
    ];
    if login.basic.is_none() {
        fields.push(("client_id", login.client_id.as_str()));
    }
    Ok(Redeem {
        callout: token_callout(login, endpoints, &fields),
        state,
        state_cookie,
    })
}

fn token_callout(login: &Login, endpoints: &Endpoints, fields: &[(&str, &str)]) -> Callout {
    let mut headers = vec![
        (":method".to_owned(), "POST".to_owned()),
        (":path".to_owned(), endpoints.token.path.clone()),
        (":authority".to_owned(), endpoints.token.authority.clone()),
        ("content-type".to_owned(), FORM.to_owned()),
        ("accept".to_owned(), "application/json".to_owned()),
    ];
    if let Some(basic) = &login.basic {
        headers.push(("authorization".to_owned(), basic.clone()));
    }
    Callout {
        cluster: login.cluster.clone(),
        headers,
        body: form(fields),
        timeout_ms: login.timeout_ms,
    }
}

/// The token endpoint's answer, read.
struct Tokens {
    access_token: Option<String>,
    id_token: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<u64>,
}

fn read_tokens(status: u32, body: &[u8]) -> Result<Tokens, LoginError> {
    if body.len() > MAX_TOKEN_RESPONSE_BYTES {
        return Err(LoginError::TokenEndpointFailure);
    }
    let document: Option<Value> = serde_json::from_slice(body).ok();
    if status != 200 {
        // RFC 6749 §5.2: a refused grant is the browser's to retry; anything else is
        // the endpoint's fault.
        let refused = matches!(status, 400 | 401)
            && document
                .as_ref()
                .and_then(|d| d.get("error"))
                .and_then(Value::as_str)
                .is_some_and(|e| e == "invalid_grant");
        return Err(if refused {
            LoginError::CodeRefused
        } else {
            LoginError::TokenEndpointFailure
        });
    }
    let document = document
        .filter(|_| !crate::json::has_repeated_member(body))
        .ok_or(LoginError::TokenEndpointFailure)?;
    let text = |name: &str| {
        document
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    if let Some(kind) = text("token_type") {
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(LoginError::TokenEndpointFailure);
        }
    }
    Ok(Tokens {
        access_token: text("access_token"),
        id_token: text("id_token"),
        refresh_token: text("refresh_token"),
        expires_in: document.get("expires_in").and_then(Value::as_u64),
    })
}

/// What checks a login's tokens: the login, its provider's token rules and keys.
#[derive(Clone, Copy)]
pub struct Trust<'a> {
    pub login: &'a Login,
    pub policy: &'a Policy,
    pub keys: &'a KeySet,
}

/// OIDC Core §3.1.3.7: the ID token's signature (the provider's keys), `iss`, `aud` =
/// client id, `azp` (required when `aud` names others), `exp`, `iat`, and the `nonce`
/// this browser's login sent.
pub fn check_id_token(
    trust: Trust<'_>,
    id_token: &str,
    nonce: &str,
    now: u64,
) -> Result<(), LoginError> {
    let Trust {
        login,
        policy: provider,
        keys,
    } = trust;
    let policy = Policy {
        issuer: provider.issuer.clone(),
        audiences: vec![login.client_id.clone()],
        algorithms: provider.algorithms.clone(),
        token_types: None,
        clock_skew_secs: provider.clock_skew_secs,
        require_exp: true,
        max_token_bytes: provider.max_token_bytes,
    };
    let verified =
        jwt::verify(id_token, &policy, keys, now).map_err(|_| LoginError::IdTokenInvalid)?;
    let claims = &verified.claims;
    let audiences = match claims.get("aud") {
        Some(Value::Array(items)) => items.len(),
        _ => 1,
    };
    match claims.get("azp") {
        Some(Value::String(azp)) if *azp == login.client_id => {}
        None if audiences == 1 => {}
        _ => return Err(LoginError::IdTokenInvalid),
    }
    let iat_ok = claims
        .get("iat")
        .and_then(Value::as_u64)
        .is_some_and(|iat| iat <= now.saturating_add(provider.clock_skew_secs));
    if !iat_ok {
        return Err(LoginError::IdTokenInvalid);
    }
    let nonce_ok = claims
        .get("nonce")
        .and_then(Value::as_str)
        .is_some_and(|n| pkce::constant_time_eq(n.as_bytes(), nonce.as_bytes()));
    if !nonce_ok {
        return Err(LoginError::IdTokenInvalid);
    }
    Ok(())
}

/// The session's cookies for fresh tokens: the session token (chunked when large), the
/// sealed ID token (for logout) and refresh token. `previous_chunks`: how many chunks
/// the request carried, cleared when no longer needed.
fn session_cookies(
    trust: Trust<'_>,
    tokens: Tokens,
    previous: (usize, usize),
    now: u64,
    seal_nonce: [u8; 24],
) -> Result<(String, Vec<String>), LoginError> {
    let Trust {
        login,
        policy: provider,
        keys,
    } = trust;
    let session = match login.session_token {
        SessionToken::AccessToken => tokens.access_token.clone(),
        SessionToken::IdToken => tokens.id_token.clone(),
    }
    .ok_or(LoginError::SessionTokenInvalid)?;
    let lifetime = if jwt::looks_like_jwt(&session) {
        let verified = jwt::verify(&session, provider, keys, now)
            .map_err(|_| LoginError::SessionTokenInvalid)?;
        verified
            .claims
            .get("exp")
            .and_then(Value::as_u64)
            .unwrap_or(now)
            .saturating_sub(now)
    } else {
        // An opaque access token: an exchange reading the session cookie checks it on
        // every request (introspection); it lives as long as the token endpoint said.
        if session.len() > provider.max_token_bytes {
            return Err(LoginError::SessionTokenInvalid);
        }
        tokens.expires_in.unwrap_or(DEFAULT_OPAQUE_SESSION_SECS)
    };
    let (session_age, sealed_until) = if login.refresh {
        (None, now.saturating_add(REFRESH_SESSION_SECS))
    } else {
        (Some(lifetime), now.saturating_add(lifetime))
    };
    let mut set_cookies = cookies::set_chunked(
        &login.cookie_name,
        &session,
        &login.attributes,
        session_age,
        previous.0,
    )
    .map_err(|_| LoginError::SessionTooLarge)?;
    let secrets = SessionSecrets {
        id_token: login.logout_path.as_ref().and(tokens.id_token),
        refresh_token: tokens.refresh_token.filter(|_| login.refresh),
    };
    let aux_name = cookies::aux_cookie_name(&login.cookie_name);
    if secrets.id_token.is_some() || secrets.refresh_token.is_some() {
        let sealed = seal::seal(
            &login.keys,
            Purpose::Session,
            &aux_name,
            &secrets.encode(),
            sealed_until,
            seal_nonce,
        );
        let aux_age = sealed_until.saturating_sub(now);
        set_cookies.extend(
            cookies::set_chunked(
                &aux_name,
                &sealed,
                &login.attributes,
                Some(aux_age),
                previous.1,
            )
            .map_err(|_| LoginError::SessionTooLarge)?,
        );
    }
    Ok((session, set_cookies))
}

/// The token endpoint's answer to a code: checked, then the session's cookies and the
/// way back to the page the browser first asked for.
pub fn redeemed(
    trust: Trust<'_>,
    redeem: &Redeem,
    status: u32,
    body: &[u8],
    now: u64,
    seal_nonce: [u8; 24],
) -> Result<Redirect, LoginError> {
    let tokens = read_tokens(status, body)?;
    let id_token = tokens
        .id_token
        .as_deref()
        .ok_or(LoginError::IdTokenInvalid)?;
    check_id_token(trust, id_token, &redeem.state.nonce, now)?;
    let (_, mut set_cookies) = session_cookies(trust, tokens, (0, 0), now, seal_nonce)?;
    let login = trust.login;
    set_cookies.push(cookies::clear_cookie(
        &redeem.state_cookie,
        &state_cookie_attributes(login),
    ));
    Ok(Redirect {
        location: redeem.state.return_to.clone(),
        set_cookies,
    })
}

/// The session's sealed secrets, if the request carries them and they open.
fn session_secrets(login: &Login, request: &Request, now: u64) -> Option<SessionSecrets> {
    let aux_name = cookies::aux_cookie_name(&login.cookie_name);
    let sealed = cookies::read_chunked(request.header_values("cookie"), &aux_name)?;
    let opened = seal::open(
        &login.keys,
        Purpose::Session,
        &aux_name,
        &sealed,
        now,
        MAX_SEALED_BYTES,
    )
    .ok()?;
    SessionSecrets::decode(&opened)
}

/// The refresh of an expired session: the token endpoint's request, when the session
/// holds a refresh token.
pub fn refresh_callout(
    login: &Login,
    endpoints: &Endpoints,
    request: &Request,
    now: u64,
) -> Option<Callout> {
    if !login.refresh {
        return None;
    }
    let refresh_token = session_secrets(login, request, now)?.refresh_token?;
    let mut fields = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token.as_str()),
    ];
    if login.basic.is_none() {
        fields.push(("client_id", login.client_id.as_str()));
    }
    Some(token_callout(login, endpoints, &fields))
}

/// The token endpoint's answer to a refresh: the new session token (checked by the
/// provider's rules, as at sign-in) and the cookies that carry it and the new refresh
/// token. A new ID token is kept sealed only as logout's `id_token_hint`: it is not
/// checked here and never becomes an identity.
pub fn refreshed(
    trust: Trust<'_>,
    request: &Request,
    status: u32,
    body: &[u8],
    now: u64,
    seal_nonce: [u8; 24],
) -> Result<(String, Vec<String>), LoginError> {
    let login = trust.login;
    let mut tokens = read_tokens(status, body)?;
    let previous = session_secrets(login, request, now);
    // OIDC Core §12.2: the refreshed answer may omit the ID token and the refresh token;
    // the ones the session had are kept.
    if tokens.id_token.is_none() {
        tokens.id_token = previous.as_ref().and_then(|p| p.id_token.clone());
    }
    if tokens.refresh_token.is_none() {
        tokens.refresh_token = previous.and_then(|p| p.refresh_token);
    }
    let chunks = (
        cookies::count_chunks(request.header_values("cookie"), &login.cookie_name),
        cookies::count_chunks(
            request.header_values("cookie"),
            &cookies::aux_cookie_name(&login.cookie_name),
        ),
    );
    session_cookies(trust, tokens, chunks, now, seal_nonce)
}

/// Logout: the session's cookies cleared, the browser sent to the end-session endpoint
/// with the ID token as hint (RP-Initiated Logout 1.0), or straight to
/// `post_logout_redirect` when the provider has none.
pub fn logout(
    login: &Login,
    endpoints: Option<&Endpoints>,
    request: &Request,
    now: u64,
) -> Redirect {
    let after = if login.post_logout_redirect.starts_with('/')
        && !login.post_logout_redirect.starts_with("//")
    {
        format!("{}{}", origin(request), login.post_logout_redirect)
    } else {
        login.post_logout_redirect.clone()
    };
    let location = match endpoints.and_then(|e| e.end_session.as_deref()) {
        Some(end_session) => {
            let hint = session_secrets(login, request, now).and_then(|s| s.id_token);
            let mut fields = vec![
                ("post_logout_redirect_uri", after.as_str()),
                ("client_id", login.client_id.as_str()),
            ];
            if let Some(hint) = hint.as_deref() {
                fields.insert(0, ("id_token_hint", hint));
            }
            let query = String::from_utf8(form(&fields)).unwrap_or_default();
            let separator = if end_session.contains('?') { '&' } else { '?' };
            format!("{end_session}{separator}{query}")
        }
        None => after,
    };
    let mut set_cookies = Vec::new();
    for name in [
        login.cookie_name.clone(),
        cookies::aux_cookie_name(&login.cookie_name),
    ] {
        let chunks = cookies::count_chunks(request.header_values("cookie"), &name);
        set_cookies.extend(cookies::clear_chunked(&name, &login.attributes, chunks));
    }
    Redirect {
        location,
        set_cookies,
    }
}

/// The endpoints from a discovery document: `issuer` must be the provider's.
pub fn read_discovery(status: u32, body: &[u8], issuer: &str) -> Option<Endpoints> {
    if status != 200 || body.len() > MAX_TOKEN_RESPONSE_BYTES {
        return None;
    }
    if crate::json::has_repeated_member(body) {
        return None;
    }
    let document: Value = serde_json::from_slice(body).ok()?;
    let text = |name: &str| document.get(name).and_then(Value::as_str);
    if text("issuer")? != issuer {
        return None;
    }
    let authorization = text("authorization_endpoint")?;
    Uri::parse(authorization)?;
    let token = Uri::parse(text("token_endpoint")?)?;
    let end_session = text("end_session_endpoint")
        .filter(|url| Uri::parse(url).is_some())
        .map(str::to_owned);
    Some(Endpoints {
        authorization: authorization.to_owned(),
        token,
        end_session,
    })
}

/// The request's `Cookie` header without the login's cookies (session, chunks, sealed
/// secrets, login state): none of them reaches the upstream.
pub fn strip_cookies<'a>(
    cookie_header: &str,
    session_names: impl Iterator<Item = &'a str> + Clone,
) -> Option<String> {
    cookies::strip(cookie_header, |name| {
        session_names
            .clone()
            .any(|session| cookies::is_login_cookie(session, name))
    })
}
