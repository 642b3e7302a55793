//! The login's cookies on the wire: `Set-Cookie` values, chunking of values too large for
//! one browser cookie, reading them back, and stripping them before the request goes
//! upstream.
//!
//! Reading follows [`crate::token::extract`]'s cookie parsing (pairs split on `;`, trimmed,
//! split at the first `=`, quotes removed) and its rule for ambiguity: a cookie present
//! twice reads as an empty value, which the caller refuses, rather than a guess.

use std::fmt;

/// The most a browser is sure to keep of one cookie (RFC 6265 §6.1). Every `Set-Cookie`
/// value built here, attributes included, stays within it.
pub const MAX_COOKIE_BYTES: usize = 4096;
/// The most chunks a value is split into (and read back from): 64 KB, beyond any session.
pub const MAX_CHUNKS: usize = 16;

/// The `SameSite` attribute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SameSite {
    /// Sent on top-level navigations from other sites: what the IdP's redirect back needs.
    #[default]
    Lax,
    Strict,
    /// Sent on every cross-site request; browsers require `Secure` with it.
    None,
}

impl SameSite {
    fn as_str(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            SameSite::None => "None",
        }
    }
}

/// Attributes shared by every cookie of a login. `HttpOnly` is not among them: it is
/// always set, so no script reads a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieAttributes {
    pub domain: Option<String>,
    pub secure: bool,
    pub same_site: SameSite,
    pub path: String,
}

impl Default for CookieAttributes {
    fn default() -> Self {
        CookieAttributes {
            domain: None,
            secure: true,
            same_site: SameSite::Lax,
            path: "/".into(),
        }
    }
}

/// Why a value could not be set as cookies.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CookieError {
    /// Would need more than [`MAX_CHUNKS`] cookies.
    TooLarge { chunks: usize },
    /// The name and attributes alone leave no room for a value within [`MAX_COOKIE_BYTES`].
    AttributesTooLong,
    /// The value holds a byte a cookie value may not (RFC 6265 §4.1.1 cookie-octet);
    /// sealed values never do.
    InvalidValue,
}

impl fmt::Display for CookieError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CookieError::TooLarge { chunks } => write!(
                f,
                "cookie value needs {chunks} cookies, more than {MAX_CHUNKS}"
            ),
            CookieError::AttributesTooLong => {
                write!(f, "cookie name and attributes leave no room for a value")
            }
            CookieError::InvalidValue => write!(f, "cookie value has a forbidden character"),
        }
    }
}

/// One `Set-Cookie` header value: `name=value; Path; [Domain]; [Max-Age]; [Secure];
/// HttpOnly; SameSite`. Without `max_age` it is a browser-session cookie.
pub fn set_cookie(
    name: &str,
    value: &str,
    attrs: &CookieAttributes,
    max_age: Option<u64>,
) -> String {
    let mut cookie = format!("{name}={value}; Path={}", attrs.path);
    if let Some(domain) = &attrs.domain {
        cookie.push_str("; Domain=");
        cookie.push_str(domain);
    }
    if let Some(max_age) = max_age {
        cookie.push_str("; Max-Age=");
        cookie.push_str(&max_age.to_string());
    }
    if attrs.secure {
        cookie.push_str("; Secure");
    }
    cookie.push_str("; HttpOnly; SameSite=");
    cookie.push_str(attrs.same_site.as_str());
    cookie
}

/// The `Set-Cookie` value that deletes a cookie: empty, `Max-Age=0`, and the same `Path`
/// and `Domain` it was set with (otherwise the browser keeps it).
pub fn clear_cookie(name: &str, attrs: &CookieAttributes) -> String {
    set_cookie(name, "", attrs, Some(0))
}

/// The name of chunk `index` of the cookie `name`.
pub fn chunk_name(name: &str, index: usize) -> String {
    format!("{name}.{index}")
}

/// The `Set-Cookie` values that store `value` under `name`: one cookie when it fits in
/// [`MAX_COOKIE_BYTES`], else chunks `name.0`, `name.1`, … each within it. Also clears
/// what the request carried and would otherwise be left over (`previous_chunks`, from
/// [`count_chunks`]): the chunks when one cookie now suffices; the single cookie and
/// surplus chunks when chunked.
pub fn set_chunked(
    name: &str,
    value: &str,
    attrs: &CookieAttributes,
    max_age: Option<u64>,
    previous_chunks: usize,
) -> Result<Vec<String>, CookieError> {
    if !value.bytes().all(is_cookie_octet) {
        return Err(CookieError::InvalidValue);
    }
    let previous_chunks = previous_chunks.min(MAX_CHUNKS);
    let single = set_cookie(name, value, attrs, max_age);
    if single.len() <= MAX_COOKIE_BYTES {
        let mut cookies = vec![single];
        cookies.extend((0..previous_chunks).map(|i| clear_cookie(&chunk_name(name, i), attrs)));
        return Ok(cookies);
    }
    // Room for a value once the longest chunk name and the attributes are written.
    let overhead = set_cookie(&chunk_name(name, MAX_CHUNKS - 1), "", attrs, max_age).len();
    let room = MAX_COOKIE_BYTES
        .checked_sub(overhead)
        .filter(|room| *room > 0)
        .ok_or(CookieError::AttributesTooLong)?;
    let chunks = value.len().div_ceil(room);
    if chunks > MAX_CHUNKS {
        return Err(CookieError::TooLarge { chunks });
    }
    // Cookie octets are ASCII, so every byte boundary is a character boundary.
    let mut cookies: Vec<String> = value
        .as_bytes()
        .chunks(room)
        .map(String::from_utf8_lossy)
        .enumerate()
        .map(|(i, part)| set_cookie(&chunk_name(name, i), &part, attrs, max_age))
        .collect();
    cookies.push(clear_cookie(name, attrs));
    cookies.extend((chunks..previous_chunks).map(|i| clear_cookie(&chunk_name(name, i), attrs)));
    Ok(cookies)
}

/// The `Set-Cookie` values that delete a value stored by [`set_chunked`]: the single
/// cookie and the `previous_chunks` chunks the request carried.
pub fn clear_chunked(name: &str, attrs: &CookieAttributes, previous_chunks: usize) -> Vec<String> {
    std::iter::once(clear_cookie(name, attrs))
        .chain(
            (0..previous_chunks.min(MAX_CHUNKS)).map(|i| clear_cookie(&chunk_name(name, i), attrs)),
        )
        .collect()
}

/// RFC 6265 §4.1.1: visible ASCII but `"`, `,`, `;` and `\`.
fn is_cookie_octet(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'"' | b',' | b';' | b'\\')
}

/// Every `name=value` pair of the `Cookie` header values, as [`crate::token::extract`]
/// reads them.
fn pairs<'a>(cookie_headers: impl IntoIterator<Item = &'a str>) -> Vec<(&'a str, &'a str)> {
    cookie_headers
        .into_iter()
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .map(|(n, v)| (n.trim(), unquote(v.trim())))
        .collect()
}

fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

/// The value of `name`, `None` if absent, empty if present more than once.
fn only_one(pairs: &[(&str, &str)], name: &str) -> Option<String> {
    let mut values = pairs.iter().filter(|(n, _)| *n == name).map(|(_, v)| *v);
    let first = values.next()?;
    Some(if values.next().is_some() {
        String::new()
    } else {
        first.to_owned()
    })
}

/// The value stored by [`set_chunked`]: the cookie `name` when present, else the chunks
/// `name.0`, `name.1`, … joined, up to the first missing one (at most [`MAX_CHUNKS`]).
/// `None` when neither is there. A cookie present twice (the single one or any chunk)
/// reads as an empty value: ambiguous, so refused by whoever opens it.
pub fn read_chunked<'a>(
    cookie_headers: impl IntoIterator<Item = &'a str>,
    name: &str,
) -> Option<String> {
    let pairs = pairs(cookie_headers);
    if let Some(value) = only_one(&pairs, name) {
        return Some(value);
    }
    let mut joined: Option<String> = None;
    for i in 0..MAX_CHUNKS {
        let Some(part) = only_one(&pairs, &chunk_name(name, i)) else {
            break;
        };
        if part.is_empty() {
            // Ambiguous, or an emptied chunk: either way nothing to trust.
            return Some(String::new());
        }
        joined.get_or_insert_with(String::new).push_str(&part);
    }
    joined
}

/// How many chunks of `name` the request carries, counted as one past the highest index
/// present (below [`MAX_CHUNKS`]): what [`set_chunked`] and [`clear_chunked`] must clear,
/// gaps included.
pub fn count_chunks<'a>(cookie_headers: impl IntoIterator<Item = &'a str>, name: &str) -> usize {
    pairs(cookie_headers)
        .iter()
        .filter_map(|(n, _)| chunk_index(n.strip_prefix(name)?))
        .filter(|i| *i < MAX_CHUNKS)
        .map(|i| i + 1)
        .max()
        .unwrap_or(0)
}

/// The `Cookie` header without the cookies `is_internal` names, others kept in order;
/// `None` when nothing is left (the header is then removed). Pairs without `=` are kept,
/// as [`crate::token::extract`] keeps them.
pub fn strip(cookie_header: &str, is_internal: impl Fn(&str) -> bool) -> Option<String> {
    let kept: Vec<&str> = cookie_header
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            pair.split_once('=')
                .is_none_or(|(n, _)| !is_internal(n.trim()))
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

/// The session cookie itself: `session_name` or one of its chunks (`session_name.N`).
pub fn is_session_cookie(session_name: &str, cookie_name: &str) -> bool {
    cookie_name
        .strip_prefix(session_name)
        .is_some_and(|rest| rest.is_empty() || is_chunk_suffix(rest))
}

/// Whether `cookie_name` is one of the login's own cookies for the session cookie
/// `session_name`: the session itself and its chunks (`name`, `name.N`), the sealed
/// tokens beside it (`name.aux`, `name.aux.N`), and login states (`name.login.…`). None
/// of them may reach the upstream.
pub fn is_login_cookie(session_name: &str, cookie_name: &str) -> bool {
    if is_session_cookie(session_name, cookie_name) {
        return true;
    }
    let Some(rest) = cookie_name.strip_prefix(session_name) else {
        return false;
    };
    if let Some(aux) = rest.strip_prefix(".aux") {
        return aux.is_empty() || is_chunk_suffix(aux);
    }
    rest.starts_with(".login.")
}

/// `.N` with N one or more digits.
fn is_chunk_suffix(rest: &str) -> bool {
    rest.strip_prefix('.')
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// N of a `.N` suffix as [`chunk_name`] writes it: digits only (`parse` alone would take
/// `+1`), no leading zero.
fn chunk_index(rest: &str) -> Option<usize> {
    let digits = rest.strip_prefix('.')?;
    let canonical =
        digits.bytes().all(|b| b.is_ascii_digit()) && (digits == "0" || !digits.starts_with('0'));
    canonical.then(|| digits.parse().ok()).flatten()
}

/// The login-state cookie of one login attempt: `<session_name>.login.<first 8 chars of
/// state>`, so logins started in several tabs don't overwrite each other's state.
pub fn state_cookie_name(session_name: &str, state: &str) -> String {
    let short: String = state.chars().take(8).collect();
    format!("{session_name}.login.{short}")
}

/// The cookie holding the sealed [`super::pkce::SessionSecrets`]: `<session_name>.aux`.
pub fn aux_cookie_name(session_name: &str) -> String {
    format!("{session_name}.aux")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs() -> CookieAttributes {
        CookieAttributes::default()
    }

    /// A request's `Cookie` header as the browser would send the cookies set.
    fn request_header(set_cookies: &[String]) -> String {
        set_cookies
            .iter()
            .filter(|c| !c.contains("Max-Age=0"))
            .map(|c| c.split(';').next().unwrap())
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn value(len: usize) -> String {
        (0..len)
            .map(|i| (b'A' + (i % 26) as u8) as char)
            .collect::<String>()
    }

    #[test]
    fn set_cookie_carries_every_attribute() {
        let attrs = CookieAttributes {
            domain: Some("example.com".into()),
            secure: true,
            same_site: SameSite::Strict,
            path: "/app".into(),
        };
        assert_eq!(
            set_cookie("tg", "v", &attrs, Some(300)),
            "tg=v; Path=/app; Domain=example.com; Max-Age=300; Secure; HttpOnly; SameSite=Strict"
        );
    }

    #[test]
    fn defaults_are_secure_http_only_lax_on_root() {
        assert_eq!(
            set_cookie("tg", "v", &attrs(), None),
            "tg=v; Path=/; Secure; HttpOnly; SameSite=Lax"
        );
    }

    #[test]
    fn http_only_is_set_even_without_secure() {
        let attrs = CookieAttributes {
            secure: false,
            same_site: SameSite::None,
            ..attrs()
        };
        let cookie = set_cookie("tg", "v", &attrs, None);
        assert!(cookie.contains("; HttpOnly"));
        assert!(!cookie.contains("Secure"));
        assert!(cookie.ends_with("; SameSite=None"));
    }

    #[test]
    fn clearing_empties_the_value_with_max_age_zero_and_same_scope() {
        let attrs = CookieAttributes {
            domain: Some("example.com".into()),
            ..attrs()
        };
        assert_eq!(
            clear_cookie("tg", &attrs),
            "tg=; Path=/; Domain=example.com; Max-Age=0; Secure; HttpOnly; SameSite=Lax"
        );
    }

    #[test]
    fn small_value_is_one_cookie() {
        let cookies = set_chunked("tg", "abc", &attrs(), Some(60), 0).unwrap();
        assert_eq!(cookies, vec![set_cookie("tg", "abc", &attrs(), Some(60))]);
    }

    #[test]
    fn value_of_10_kb_is_chunked_within_4_kb_and_reads_back_equal() {
        let value = value(10 * 1024);
        let cookies = set_chunked("tg", &value, &attrs(), Some(3600), 0).unwrap();
        let set: Vec<&String> = cookies
            .iter()
            .filter(|c| !c.contains("Max-Age=0"))
            .collect();
        assert_eq!(set.len(), 3);
        for (i, cookie) in set.iter().enumerate() {
            assert!(cookie.len() <= MAX_COOKIE_BYTES, "{}", cookie.len());
            assert!(cookie.starts_with(&format!("tg.{i}=")));
        }
        // The plain cookie an earlier, smaller session left is cleared.
        assert!(cookies.contains(&clear_cookie("tg", &attrs())));
        let header = request_header(&cookies);
        assert_eq!(read_chunked([header.as_str()], "tg"), Some(value));
        assert_eq!(count_chunks([header.as_str()], "tg"), 3);
    }

    #[test]
    fn chunks_fit_with_long_attributes() {
        let attrs = CookieAttributes {
            domain: Some(format!("{}.example.com", "sub".repeat(50))),
            path: "/a/long/path".into(),
            ..attrs()
        };
        let value = value(20 * 1024);
        let cookies = set_chunked("tokengate_session", &value, &attrs, Some(u64::MAX), 0).unwrap();
        assert!(cookies.iter().all(|c| c.len() <= MAX_COOKIE_BYTES));
        let header = request_header(&cookies);
        assert_eq!(
            read_chunked([header.as_str()], "tokengate_session"),
            Some(value)
        );
    }

    #[test]
    fn value_fitting_exactly_is_not_chunked() {
        let overhead = set_cookie("tg", "", &attrs(), None).len();
        let value = value(MAX_COOKIE_BYTES - overhead);
        let cookies = set_chunked("tg", &value, &attrs(), None, 0).unwrap();
        assert_eq!(cookies.len(), 1);
        assert_eq!(cookies[0].len(), MAX_COOKIE_BYTES);
        let cookies = set_chunked("tg", &format!("{value}x"), &attrs(), None, 0).unwrap();
        assert!(cookies[0].starts_with("tg.0="));
    }

    #[test]
    fn small_value_after_a_chunked_one_clears_the_old_chunks() {
        let cookies = set_chunked("tg", "small", &attrs(), None, 3).unwrap();
        assert_eq!(
            cookies,
            vec![
                set_cookie("tg", "small", &attrs(), None),
                clear_cookie("tg.0", &attrs()),
                clear_cookie("tg.1", &attrs()),
                clear_cookie("tg.2", &attrs()),
            ]
        );
    }

    #[test]
    fn fewer_chunks_than_before_clear_the_surplus() {
        let cookies = set_chunked("tg", &value(5000), &attrs(), None, 4).unwrap();
        let cleared: Vec<&String> = cookies.iter().filter(|c| c.contains("Max-Age=0")).collect();
        assert_eq!(
            cleared,
            vec![
                &clear_cookie("tg", &attrs()),
                &clear_cookie("tg.2", &attrs()),
                &clear_cookie("tg.3", &attrs()),
            ]
        );
    }

    #[test]
    fn value_needing_more_than_max_chunks_is_refused() {
        let result = set_chunked(
            "tg",
            &value(MAX_CHUNKS * MAX_COOKIE_BYTES),
            &attrs(),
            None,
            0,
        );
        assert!(matches!(result, Err(CookieError::TooLarge { chunks }) if chunks > MAX_CHUNKS));
    }

    #[test]
    fn attributes_leaving_no_room_are_refused() {
        let attrs = CookieAttributes {
            path: format!("/{}", "p".repeat(MAX_COOKIE_BYTES)),
            ..attrs()
        };
        assert_eq!(
            set_chunked("tg", "v", &attrs, None, 0),
            Err(CookieError::AttributesTooLong)
        );
    }

    #[test]
    fn value_with_forbidden_characters_is_refused() {
        for value in ["a;b", "a b", "a\"b", "a,b", "a\\b", "é"] {
            assert_eq!(
                set_chunked("tg", value, &attrs(), None, 0),
                Err(CookieError::InvalidValue),
                "{value:?}"
            );
        }
    }

    #[test]
    fn reading_prefers_the_single_cookie_and_parses_like_extract() {
        let headers = ["theme=dark; tg=\"abc\"", "tg.0=zzz"];
        assert_eq!(read_chunked(headers, "tg"), Some("abc".into()));
        assert_eq!(
            read_chunked([";; =x; tg2=no; tg = spaced ;"], "tg"),
            Some("spaced".into())
        );
        assert_eq!(read_chunked(["other=1"], "tg"), None);
        assert_eq!(read_chunked(std::iter::empty(), "tg"), None);
    }

    #[test]
    fn chunks_across_cookie_headers_and_out_of_order_are_joined_in_index_order() {
        let headers = ["tg.1=def; a=1", "tg.0=abc"];
        assert_eq!(read_chunked(headers, "tg"), Some("abcdef".into()));
    }

    #[test]
    fn a_gap_stops_reading() {
        assert_eq!(
            read_chunked(["tg.0=a; tg.1=b; tg.3=d"], "tg"),
            Some("ab".into())
        );
        assert_eq!(read_chunked(["tg.1=b; tg.2=c"], "tg"), None);
    }

    #[test]
    fn reading_stops_at_max_chunks() {
        let header: Vec<String> = (0..=MAX_CHUNKS).map(|i| format!("tg.{i}=x")).collect();
        let header = header.join("; ");
        assert_eq!(
            read_chunked([header.as_str()], "tg"),
            Some("x".repeat(MAX_CHUNKS))
        );
        assert_eq!(count_chunks([header.as_str()], "tg"), MAX_CHUNKS);
    }

    #[test]
    fn duplicated_cookie_reads_as_empty() {
        assert_eq!(read_chunked(["tg=a; tg=b"], "tg"), Some(String::new()));
        assert_eq!(read_chunked(["tg=a", "tg=a"], "tg"), Some(String::new()));
        assert_eq!(
            read_chunked(["tg.0=a; tg.1=b; tg.1=c"], "tg"),
            Some(String::new())
        );
        assert_eq!(read_chunked(["tg.0=a; tg.1="], "tg"), Some(String::new()));
    }

    #[test]
    fn counting_chunks_covers_gaps_and_ignores_other_names() {
        assert_eq!(count_chunks(["tg.0=a; tg.2=c"], "tg"), 3);
        assert_eq!(
            count_chunks(["tg=a; tg.aux=b; tg.aux.0=c; tgx.0=d; tg.x=e"], "tg"),
            0
        );
        assert_eq!(count_chunks(["tg.99=a"], "tg"), 0);
        assert_eq!(count_chunks(["tg.+1=a; tg.01=b; tg.=c"], "tg"), 0);
    }

    #[test]
    fn clearing_a_chunked_value_clears_the_single_cookie_and_every_chunk() {
        assert_eq!(
            clear_chunked("tg", &attrs(), 2),
            vec![
                clear_cookie("tg", &attrs()),
                clear_cookie("tg.0", &attrs()),
                clear_cookie("tg.1", &attrs()),
            ]
        );
    }

    #[test]
    fn strip_leaves_other_cookies_in_order() {
        let internal = |n: &str| is_login_cookie("tg", n);
        assert_eq!(
            strip(
                "a=1; tg.0=x; b=2;tg.login.abcdefgh=s ; tg.aux=y; flag; c=\"3\"",
                internal
            ),
            Some("a=1; b=2; flag; c=\"3\"".into())
        );
        assert_eq!(strip("tg=x; tg.1=y", internal), None);
        assert_eq!(strip("", internal), None);
        assert_eq!(strip("tg2=keep", internal), Some("tg2=keep".into()));
    }

    #[test]
    fn login_cookies_are_recognised_and_lookalikes_are_not() {
        for name in [
            "tg",
            "tg.0",
            "tg.15",
            "tg.123",
            "tg.aux",
            "tg.aux.0",
            "tg.aux.7",
            "tg.login.abcdefgh",
            "tg.login.",
            "tg.login.x.y",
        ] {
            assert!(is_login_cookie("tg", name), "{name}");
        }
        for name in [
            "tg2",
            "t",
            "tg.",
            "tg.x",
            "tg.0a",
            "tg.auxx",
            "tg.aux.",
            "tg.aux.x",
            "tg.login",
            "tg.loginx",
            "xtg",
            "TG",
            "",
        ] {
            assert!(!is_login_cookie("tg", name), "{name}");
        }
    }

    #[test]
    fn state_cookie_is_named_by_the_first_8_chars_of_state() {
        assert_eq!(
            state_cookie_name("tg", "abcdefghijklmnop"),
            "tg.login.abcdefgh"
        );
        assert_eq!(state_cookie_name("tg", "abc"), "tg.login.abc");
        assert!(is_login_cookie(
            "tg",
            &state_cookie_name("tg", "Zz-_0123456")
        ));
        assert_eq!(aux_cookie_name("tg"), "tg.aux");
        assert!(is_login_cookie("tg", &aux_cookie_name("tg")));
    }
}
