//! Remote key sets (JWKS by HTTP callout, OIDC discovery): everything about fetching
//! that is not I/O. What to request, how to read the answer, when to refresh, how long
//! to back off, and the records workers share. Times are milliseconds since the epoch,
//! passed in.

use crate::token::jwks::{JwksError, KeySet, Parsed, MAX_JWKS_BYTES};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Bounds on a key set's time to live: `Cache-Control: max-age` is honoured inside them.
pub const MIN_TTL_SECS: u64 = 30;
pub const DEFAULT_CACHE_SECS: u64 = 600;
pub const DEFAULT_TIMEOUT_MS: u64 = 2000;
pub const DEFAULT_UNKNOWN_KID_REFETCH_SECS: u64 = 30;
/// Discovery documents are small; anything bigger is refused unread.
pub const MAX_DISCOVERY_BYTES: usize = 64 * 1024;
/// Backoff caps: short while a provider has no keys at all (every request waits on it),
/// longer while stale keys still serve.
const COLD_BACKOFF_CAP_MS: u64 = 10_000;
const WARM_BACKOFF_CAP_MS: u64 = 300_000;

/// An `http(s)://authority/path` URI, split the way `dispatch_http_call` needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uri {
    pub authority: String,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Uri {
    pub fn parse(text: &str) -> Option<Uri> {
        let rest = text
            .strip_prefix("http://")
            .or_else(|| text.strip_prefix("https://"))?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (rest.get(..i)?, rest.get(i..)?),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        let valid_authority = !authority.is_empty()
            && !authority.contains('@')
            && authority
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b));
        let valid_path = path.bytes().all(|b| b > 0x20 && b != 0x7f && b != b'#');
        (valid_authority && valid_path).then(|| Uri {
            authority: authority.to_owned(),
            path,
        })
    }
}

/// Where a remote provider's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Jwks(Uri),
    /// An OIDC discovery document whose `jwks_uri` gives the key set.
    Discovery(Uri),
}

/// A remote key set's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSpec {
    pub location: Location,
    pub cluster: String,
    pub cache_secs: u64,
    pub timeout_ms: u64,
    pub unknown_kid_refetch_secs: u64,
    /// The provider's issuer: a discovery document must name exactly this one.
    pub issuer: String,
    /// Names this key set in shared data: provider name and location, so two filter
    /// configurations never mix their keys.
    pub shared_key: String,
}

/// A GET for `dispatch_http_call`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub timeout_ms: u64,
}

pub fn fetch_request(spec: &RemoteSpec, uri: &Uri) -> FetchRequest {
    FetchRequest {
        cluster: spec.cluster.clone(),
        headers: vec![
            (":method".into(), "GET".into()),
            (":path".into(), uri.path.clone()),
            (":authority".into(), uri.authority.clone()),
            ("accept".into(), "application/json".into()),
            ("user-agent".into(), format!("tokengate/{}", crate::VERSION)),
        ],
        timeout_ms: spec.timeout_ms,
    }
}

/// Why a fetch did not give a usable key set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// Not 200 (a timeout arrives from Envoy as a synthesized 504).
    Status(u32),
    /// The callout could not be made or its answer was lost.
    Transport,
    TooLarge,
    Jwks(JwksError),
    DiscoveryNotJson,
    DiscoveryNoJwksUri,
    /// The discovery document names another issuer: never accepted.
    DiscoveryIssuerMismatch,
}

impl FetchError {
    pub fn describe(&self) -> String {
        match self {
            FetchError::Status(status) => format!("HTTP status {status}"),
            FetchError::Transport => "callout failed".into(),
            FetchError::TooLarge => "response larger than the size cap".into(),
            FetchError::Jwks(e) => e.to_string(),
            FetchError::DiscoveryNotJson => "discovery document is not a JSON object".into(),
            FetchError::DiscoveryNoJwksUri => {
                "discovery document has no usable \"jwks_uri\"".into()
            }
            FetchError::DiscoveryIssuerMismatch => {
                "discovery document names a different issuer".into()
            }
        }
    }
}

/// Reads a JWKS response. The body length is checked by the caller before the body is
/// read at all; it is checked again here.
pub fn read_jwks(status: u32, body: &[u8]) -> Result<Parsed, FetchError> {
    if status != 200 {
        return Err(FetchError::Status(status));
    }
    if body.len() > MAX_JWKS_BYTES {
        return Err(FetchError::TooLarge);
    }
    KeySet::parse(body).map_err(FetchError::Jwks)
}

/// Reads a discovery response: the `jwks_uri`, if `issuer` is exactly ours.
pub fn read_discovery(status: u32, body: &[u8], issuer: &str) -> Result<Uri, FetchError> {
    if status != 200 {
        return Err(FetchError::Status(status));
    }
    if body.len() > MAX_DISCOVERY_BYTES {
        return Err(FetchError::TooLarge);
    }
    let doc: Value = serde_json::from_slice(body).map_err(|_| FetchError::DiscoveryNotJson)?;
    if crate::json::has_repeated_member(body) {
        return Err(FetchError::DiscoveryNotJson);
    }
    let doc = doc.as_object().ok_or(FetchError::DiscoveryNotJson)?;
    if doc.get("issuer").and_then(Value::as_str) != Some(issuer) {
        return Err(FetchError::DiscoveryIssuerMismatch);
    }
    doc.get("jwks_uri")
        .and_then(Value::as_str)
        .and_then(Uri::parse)
        .ok_or(FetchError::DiscoveryNoJwksUri)
}

/// The key set's time to live: `max-age` when the server gives one, kept between
/// [`MIN_TTL_SECS`] and the configured `cache_secs` (the server may shorten our cache,
/// not lengthen it); `no-store`/`no-cache` mean the minimum.
pub fn ttl_secs(cache_control: Option<&str>, cache_secs: u64) -> u64 {
    let floor = MIN_TTL_SECS.min(cache_secs);
    let Some(header) = cache_control else {
        return cache_secs;
    };
    let mut ttl = cache_secs;
    for directive in header.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return floor;
        }
        if let Some(age) = lower
            .strip_prefix("max-age=")
            .and_then(|v| v.trim_matches('"').parse::<u64>().ok())
        {
            ttl = age;
        }
    }
    ttl.clamp(floor, cache_secs)
}

/// When to refresh a key set fetched at `fetched_at_ms`: at 80% of its life, so the
/// refresh (and a retry or two) lands before it runs out.
pub fn refresh_at_ms(fetched_at_ms: u64, ttl_secs: u64) -> u64 {
    fetched_at_ms.saturating_add(ttl_secs.saturating_mul(800))
}

/// Exponential backoff after `failures` consecutive failures, with jitter in
/// [50%, 100%] of the step so workers and replicas spread out. `jitter` is in [0, 1).
pub fn backoff_ms(failures: u32, have_keys: bool, jitter: f64) -> u64 {
    let cap = if have_keys {
        WARM_BACKOFF_CAP_MS
    } else {
        COLD_BACKOFF_CAP_MS
    };
    let step = 1000u64
        .saturating_mul(1u64 << failures.saturating_sub(1).min(20))
        .min(cap);
    let factor = 0.5 + jitter.clamp(0.0, 1.0) / 2.0;
    // Float-to-int conversion saturates; the product is at most `cap`.
    ((step as f64) * factor) as u64
}

/// Whether a key set fetched at `fetched_at_ms` is past its time to live.
pub fn is_stale(fetched_at_ms: u64, ttl_secs: u64, now_ms: u64) -> bool {
    now_ms >= fetched_at_ms.saturating_add(ttl_secs.saturating_mul(1000))
}

/// The key set all workers share, stored in proxy-wasm shared data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedKeys {
    /// Increases on every successful fetch; workers reload when it moves.
    pub generation: u64,
    pub fetched_at_ms: u64,
    pub ttl_secs: u64,
    /// The JWKS as fetched (re-parsed by each worker: parsed keys can't be shared).
    pub jwks: String,
}

impl SharedKeys {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<SharedKeys> {
        serde_json::from_slice(bytes).ok()
    }

    pub fn refresh_at_ms(&self) -> u64 {
        refresh_at_ms(self.fetched_at_ms, self.ttl_secs)
    }

    /// Past its time to live: still served when refreshes fail, but counted as stale.
    pub fn is_stale(&self, now_ms: u64) -> bool {
        is_stale(self.fetched_at_ms, self.ttl_secs, now_ms)
    }
}

/// Who may fetch, and when: one lease per key set, taken with compare-and-swap so that
/// N workers make one fetch. A lease runs out on its own (`until_ms`), so a worker that
/// dies mid-fetch can't block refreshes for ever.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub holder: u64,
    pub until_ms: u64,
    /// Consecutive failed fetches.
    pub failures: u32,
    /// No fetch before this (backoff).
    pub retry_at_ms: u64,
    /// The last refetch for an unknown `kid` (rate limit).
    pub unknown_kid_at_ms: u64,
}

impl Lease {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Lease> {
        serde_json::from_slice(bytes).ok()
    }

    pub fn is_held(&self, now_ms: u64) -> bool {
        self.until_ms > now_ms
    }

    /// How long a fetch may hold the lease: discovery plus JWKS, plus slack.
    pub fn duration_ms(spec: &RemoteSpec) -> u64 {
        spec.timeout_ms.saturating_mul(2).saturating_add(1000)
    }

    /// Whether a refetch for an unknown `kid` may start now.
    pub fn unknown_kid_refetch_allowed(&self, spec: &RemoteSpec, now_ms: u64) -> bool {
        self.unknown_kid_at_ms == 0
            || now_ms
                >= self
                    .unknown_kid_at_ms
                    .saturating_add(spec.unknown_kid_refetch_secs.saturating_mul(1000))
    }
}

/// Why a worker wants to fetch now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchReason {
    /// No key set has ever been fetched.
    Cold,
    /// The shared key set is due for refresh.
    Refresh,
    /// A request carries a `kid` the set doesn't have.
    UnknownKid,
}

/// Decides whether a fetch is due, given the shared key set and lease.
pub fn fetch_due(
    shared: Option<&SharedKeys>,
    lease: &Lease,
    unknown_kid_wanted: bool,
    now_ms: u64,
) -> Option<FetchReason> {
    if lease.is_held(now_ms) {
        return None;
    }
    if unknown_kid_wanted {
        return Some(FetchReason::UnknownKid);
    }
    if now_ms < lease.retry_at_ms {
        return None;
    }
    match shared {
        None => Some(FetchReason::Cold),
        Some(keys) if now_ms >= keys.refresh_at_ms() => Some(FetchReason::Refresh),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RemoteSpec {
        RemoteSpec {
            location: Location::Jwks(Uri::parse("http://idp:8080/certs").unwrap()),
            cluster: "idp".into(),
            cache_secs: 600,
            timeout_ms: 2000,
            unknown_kid_refetch_secs: 30,
            issuer: "https://idp".into(),
            shared_key: "tokengate.jwks.corp".into(),
        }
    }

    #[test]
    fn uri_splits_into_authority_and_path() {
        assert_eq!(
            Uri::parse("http://idp:8080/realms/demo/certs?x=1"),
            Some(Uri {
                authority: "idp:8080".into(),
                path: "/realms/demo/certs?x=1".into()
            })
        );
        assert_eq!(
            Uri::parse("https://idp.example.com"),
            Some(Uri {
                authority: "idp.example.com".into(),
                path: "/".into()
            })
        );
        assert_eq!(
            Uri::parse("https://idp?x").map(|u| u.path),
            Some("/?x".into())
        );
    }

    #[test]
    fn uri_refuses_other_schemes_userinfo_and_spaces() {
        assert_eq!(Uri::parse("ftp://idp/certs"), None);
        assert_eq!(Uri::parse("http://user@idp/certs"), None);
        assert_eq!(Uri::parse("http:///certs"), None);
        assert_eq!(Uri::parse("http://idp/ce rts"), None);
        assert_eq!(Uri::parse("idp/certs"), None);
    }

    #[test]
    fn fetch_request_carries_method_path_and_authority() {
        let uri = Uri::parse("http://idp:8080/certs").unwrap();
        let request = fetch_request(&spec(), &uri);
        assert_eq!(request.cluster, "idp");
        assert!(request.headers.contains(&(":method".into(), "GET".into())));
        assert!(request.headers.contains(&(":path".into(), "/certs".into())));
        assert!(request
            .headers
            .contains(&(":authority".into(), "idp:8080".into())));
    }

    #[test]
    fn non_200_jwks_is_a_failed_fetch() {
        assert_eq!(read_jwks(500, b"{}").unwrap_err(), FetchError::Status(500));
        assert_eq!(
            read_jwks(504, b"upstream request timeout").unwrap_err(),
            FetchError::Status(504)
        );
    }

    #[test]
    fn garbage_or_empty_jwks_is_a_failed_fetch() {
        assert_eq!(
            read_jwks(200, b"<html>").unwrap_err(),
            FetchError::Jwks(JwksError::NotJson)
        );
        assert_eq!(
            read_jwks(200, br#"{"keys":[]}"#).unwrap_err(),
            FetchError::Jwks(JwksError::NoUsableKey)
        );
        assert_eq!(
            read_jwks(200, br#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#).unwrap_err(),
            FetchError::Jwks(JwksError::NoUsableKey)
        );
    }

    #[test]
    fn a_key_set_or_discovery_naming_a_member_twice_is_refused() {
        let jwks = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","x":"AAAA"}]}"#;
        assert_eq!(
            read_jwks(200, jwks).unwrap_err(),
            FetchError::Jwks(JwksError::RepeatedMember)
        );
        let doc =
            br#"{"issuer":"https://idp","jwks_uri":"http://idp/a","jwks_uri":"http://evil/b"}"#;
        assert_eq!(
            read_discovery(200, doc, "https://idp").unwrap_err(),
            FetchError::DiscoveryNotJson
        );
    }

    #[test]
    fn oversized_jwks_is_refused() {
        let big = vec![b' '; MAX_JWKS_BYTES + 1];
        assert_eq!(read_jwks(200, &big).unwrap_err(), FetchError::TooLarge);
    }

    #[test]
    fn discovery_gives_jwks_uri_only_for_our_issuer() {
        let doc = br#"{"issuer":"https://idp","jwks_uri":"http://idp:8080/keys"}"#;
        assert_eq!(
            read_discovery(200, doc, "https://idp").unwrap().path,
            "/keys"
        );
        assert_eq!(
            read_discovery(200, doc, "https://other").unwrap_err(),
            FetchError::DiscoveryIssuerMismatch
        );
        let no_uri = br#"{"issuer":"https://idp"}"#;
        assert_eq!(
            read_discovery(200, no_uri, "https://idp").unwrap_err(),
            FetchError::DiscoveryNoJwksUri
        );
        assert_eq!(
            read_discovery(200, b"[]", "https://idp").unwrap_err(),
            FetchError::DiscoveryNotJson
        );
    }

    #[test]
    fn max_age_can_shorten_but_not_lengthen_the_cache() {
        assert_eq!(ttl_secs(None, 600), 600);
        assert_eq!(ttl_secs(Some("public, max-age=120"), 600), 120);
        assert_eq!(ttl_secs(Some("max-age=86400"), 600), 600);
        assert_eq!(ttl_secs(Some("max-age=1"), 600), MIN_TTL_SECS);
        assert_eq!(ttl_secs(Some("no-store"), 600), MIN_TTL_SECS);
        assert_eq!(ttl_secs(Some("max-age=banana"), 600), 600);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        assert_eq!(backoff_ms(1, false, 0.999_999), 999);
        assert_eq!(backoff_ms(1, false, 0.0), 500);
        assert_eq!(backoff_ms(3, true, 0.0), 2000);
        assert!(backoff_ms(30, false, 0.999) <= COLD_BACKOFF_CAP_MS);
        assert!(backoff_ms(30, true, 0.999) <= WARM_BACKOFF_CAP_MS);
        assert!(backoff_ms(30, true, 0.999) > COLD_BACKOFF_CAP_MS);
    }

    #[test]
    fn records_round_trip() {
        let keys = SharedKeys {
            generation: 3,
            fetched_at_ms: 10,
            ttl_secs: 600,
            jwks: "{\"keys\":[]}".into(),
        };
        assert_eq!(SharedKeys::decode(&keys.encode()), Some(keys));
        let lease = Lease {
            holder: 7,
            until_ms: 5,
            failures: 2,
            retry_at_ms: 9,
            unknown_kid_at_ms: 1,
        };
        assert_eq!(Lease::decode(&lease.encode()), Some(lease));
        assert_eq!(Lease::decode(b"garbage"), None);
    }

    #[test]
    fn fetch_is_due_when_cold_or_at_refresh_time_and_not_while_leased_or_backing_off() {
        let keys = SharedKeys {
            generation: 1,
            fetched_at_ms: 0,
            ttl_secs: 100,
            jwks: String::new(),
        };
        let free = Lease::default();
        assert_eq!(fetch_due(None, &free, false, 1), Some(FetchReason::Cold));
        assert_eq!(fetch_due(Some(&keys), &free, false, 79_999), None);
        assert_eq!(
            fetch_due(Some(&keys), &free, false, 80_000),
            Some(FetchReason::Refresh)
        );
        let held = Lease {
            until_ms: 90_000,
            ..Lease::default()
        };
        assert_eq!(fetch_due(Some(&keys), &held, true, 80_000), None);
        let backing_off = Lease {
            retry_at_ms: 85_000,
            ..Lease::default()
        };
        assert_eq!(fetch_due(Some(&keys), &backing_off, false, 80_000), None);
        assert_eq!(
            fetch_due(Some(&keys), &backing_off, true, 80_000),
            Some(FetchReason::UnknownKid)
        );
    }

    #[test]
    fn unknown_kid_refetches_are_rate_limited() {
        let spec = spec();
        let lease = Lease {
            unknown_kid_at_ms: 100_000,
            ..Lease::default()
        };
        assert!(!lease.unknown_kid_refetch_allowed(&spec, 129_999));
        assert!(lease.unknown_kid_refetch_allowed(&spec, 130_000));
        assert!(Lease::default().unknown_kid_refetch_allowed(&spec, 1));
    }

    #[test]
    fn stale_means_past_the_time_to_live() {
        let keys = SharedKeys {
            generation: 1,
            fetched_at_ms: 1000,
            ttl_secs: 10,
            jwks: String::new(),
        };
        assert!(!keys.is_stale(10_999));
        assert!(keys.is_stale(11_000));
    }
}
