//! Where a token is found, and how to take it out of the request before it goes
//! upstream. Reads a [`Request`]; never mutates it: removals come back as [`HeaderEdit`]s.

use std::borrow::Cow;
use std::rc::Rc;

/// The parts of a request the core looks at. Header names are lowercase.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// `:path`, including any query string.
    pub path: String,
    /// `:authority`.
    pub host: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// Every value of a header, in order.
    pub fn header_values<'a, 'n>(
        &'a self,
        name: &'n str,
    ) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).next()
    }

    /// The path without its query string.
    pub fn path_only(&self) -> &str {
        self.path
            .split_once('?')
            .map_or(self.path.as_str(), |(path, _)| path)
    }
}

/// What of a request the configuration looks at. The host reads exactly these, one
/// host call each, instead of copying every header into the VM on every request.
/// A header is read once: its first value (what Envoy's Wasm ABI returns).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reads {
    pub method: bool,
    pub path: bool,
    pub host: bool,
    /// Lowercase names, each once.
    pub headers: Vec<String>,
}

impl Reads {
    pub fn add_header(&mut self, name: &str) {
        let name = name.to_ascii_lowercase();
        if !self.headers.contains(&name) {
            self.headers.push(name);
        }
    }

    /// Notes what a token source needs to be found and removed.
    pub fn add_source(&mut self, source: &Source) {
        match source {
            Source::Header { name, .. } => self.add_header(name),
            Source::Cookie(_) | Source::SessionCookie(_) => self.add_header("cookie"),
            Source::Query(_) => self.path = true,
        }
    }
}

/// A change to the request on its way upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
/// Names and values are shared (a cached identity's headers, the configuration's
/// names): a cached request's edits copy no strings.
pub enum HeaderEdit {
    Remove(Rc<str>),
    Set(Rc<str>, Rc<str>),
    /// A header for the response to the client (a central policy's
    /// `response_headers_to_add` on allow), added when the response passes.
    AddToResponse(String, String),
}

/// A configured token source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A header, optionally with a scheme prefix such as `Bearer ` (matched
    /// case-insensitively, RFC 9110 §11.1). A header without the prefix is not a token.
    Header {
        name: Rc<str>,
        prefix: Option<String>,
    },
    Cookie(String),
    Query(String),
    /// A browser login's session cookie: `<name>`, or when it was too large for one
    /// cookie, `<name>.0`, `<name>.1`, ... joined.
    SessionCookie(String),
}

/// Where a token was found: enough to remove it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Header(Rc<str>),
    Cookie(String),
    Query(String),
}

/// A token as found. An ambiguous source (the same header, cookie or parameter twice)
/// yields an empty token, which verification refuses as malformed: we never guess
/// which copy the upstream would read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found<'r> {
    /// Borrowed from the request unless it had to be decoded (a query parameter): a
    /// cached request copies nothing.
    pub token: Cow<'r, str>,
    pub location: Location,
}

impl Source {
    pub fn default_bearer() -> Source {
        Source::Header {
            name: "authorization".into(),
            prefix: Some("Bearer ".into()),
        }
    }

    /// The token from this source, if the source is present in the request.
    pub fn find<'r>(&self, request: &'r Request) -> Option<Found<'r>> {
        let (token, location) = match self {
            Source::Header { name, prefix } => {
                let values = request
                    .header_values(name)
                    .filter_map(|value| match prefix {
                        None => Some(Cow::Borrowed(value.trim())),
                        Some(prefix) => {
                            strip_prefix_ignore_case(value, prefix).map(|t| Cow::Borrowed(t.trim()))
                        }
                    });
                (only_one(values)?, Location::Header(name.clone()))
            }
            Source::Cookie(name) => {
                let values = request
                    .header_values("cookie")
                    .flat_map(|h| h.split(';'))
                    .filter_map(|pair| pair.trim().split_once('='))
                    .filter(|(n, _)| n.trim() == name)
                    .map(|(_, v)| Cow::Borrowed(unquote(v.trim())));
                (only_one(values)?, Location::Cookie(name.clone()))
            }
            Source::SessionCookie(name) => {
                let token =
                    crate::login::cookies::read_chunked(request.header_values("cookie"), name)?;
                (Cow::Owned(token), Location::Cookie(name.clone()))
            }
            Source::Query(name) => {
                let (_, query) = request.path.split_once('?')?;
                let values = query
                    .split('&')
                    .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
                    .filter(|(n, _)| percent_decode(n).as_deref() == Some(name.as_str()))
                    // Undecodable values stay as they are and fail verification as malformed.
                    .map(|(_, v)| Cow::Owned(percent_decode(v).unwrap_or_else(|| v.to_owned())));
                (only_one(values)?, Location::Query(name.clone()))
            }
        };
        Some(Found { token, location })
    }
}

/// The single value, `None` if there is none, and an empty (so malformed) token if there
/// are several: which copy would the upstream read?
fn only_one<'r>(mut values: impl Iterator<Item = Cow<'r, str>>) -> Option<Cow<'r, str>> {
    let first = values.next()?;
    Some(if values.next().is_some() {
        Cow::Borrowed("")
    } else {
        first
    })
}

impl Location {
    /// The edit that removes the token from the request.
    pub fn removal(&self, request: &Request) -> HeaderEdit {
        match self {
            Location::Header(name) => HeaderEdit::Remove(name.clone()),
            Location::Cookie(name) => {
                let kept: Vec<&str> = request
                    .header_values("cookie")
                    .flat_map(|h| h.split(';'))
                    .map(str::trim)
                    .filter(|pair| !pair.is_empty())
                    .filter(|pair| pair.split_once('=').is_none_or(|(n, _)| n.trim() != name))
                    .collect();
                if kept.is_empty() {
                    HeaderEdit::Remove("cookie".into())
                } else {
                    HeaderEdit::Set("cookie".into(), kept.join("; ").into())
                }
            }
            Location::Query(name) => {
                let (path, query) = request
                    .path
                    .split_once('?')
                    .unwrap_or((request.path.as_str(), ""));
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|pair| !pair.is_empty())
                    .filter(|pair| {
                        let n = pair.split_once('=').map_or(*pair, |(n, _)| n);
                        percent_decode(n).as_deref() != Some(name.as_str())
                    })
                    .collect();
                if kept.is_empty() {
                    HeaderEdit::Set(":path".into(), path.into())
                } else {
                    HeaderEdit::Set(":path".into(), format!("{path}?{}", kept.join("&")).into())
                }
            }
        }
    }
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        value.get(prefix.len()..)
    } else {
        None
    }
}

fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

/// Percent-decodes a query component; `None` if an escape is broken or the result is
/// not UTF-8. `+` is left alone: a token never contains one legitimately.
pub fn percent_decode(input: &str) -> Option<String> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = bytes.get(i + 1).and_then(|c| (*c as char).to_digit(16))?;
            let lo = bytes.get(i + 2).and_then(|c| (*c as char).to_digit(16))?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-decoded value of `name` in `application/x-www-form-urlencoded` text (a form
/// body, a query string). `None` when absent or not decodable; a name given twice is
/// `None` too (which copy was meant?).
pub fn form_value(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let mut found = None;
    for pair in text.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(&key.replace('+', " "))?;
        if key == name {
            if found.is_some() {
                return None;
            }
            found = Some(percent_decode(&value.replace('+', " "))?);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method: "GET".into(),
            path: path.into(),
            host: "example".into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn found(source: &Source, req: &Request) -> Option<String> {
        source.find(req).map(|f| f.token.into_owned())
    }

    #[test]
    fn bearer_prefix_is_matched_case_insensitively() {
        let req = request("/", &[("authorization", "bearer abc.def.ghi")]);
        assert_eq!(
            found(&Source::default_bearer(), &req).as_deref(),
            Some("abc.def.ghi")
        );
    }

    #[test]
    fn header_without_the_prefix_is_not_a_token() {
        let req = request("/", &[("authorization", "Basic dXNlcjpwYXNz")]);
        assert_eq!(found(&Source::default_bearer(), &req), None);
    }

    #[test]
    fn header_without_configured_prefix_is_taken_whole() {
        let source = Source::Header {
            name: "x-token".into(),
            prefix: None,
        };
        let req = request("/", &[("x-token", " a.b.c ")]);
        assert_eq!(found(&source, &req).as_deref(), Some("a.b.c"));
    }

    #[test]
    fn two_bearer_headers_are_ambiguous_and_yield_an_empty_token() {
        let req = request(
            "/",
            &[
                ("authorization", "Bearer a.b.c"),
                ("authorization", "Bearer d.e.f"),
            ],
        );
        assert_eq!(found(&Source::default_bearer(), &req).as_deref(), Some(""));
    }

    #[test]
    fn cookie_is_found_among_others_and_unquoted() {
        let source = Source::Cookie("access_token".into());
        let req = request(
            "/",
            &[("cookie", "theme=dark; access_token=\"a.b.c\"; lang=en")],
        );
        assert_eq!(found(&source, &req).as_deref(), Some("a.b.c"));
    }

    #[test]
    fn malformed_cookie_pairs_are_skipped() {
        let source = Source::Cookie("access_token".into());
        let req = request("/", &[("cookie", ";;garbage; =x; access_token=a.b.c;")]);
        assert_eq!(found(&source, &req).as_deref(), Some("a.b.c"));
        let req = request("/", &[("cookie", "access_token")]);
        assert_eq!(found(&source, &req), None);
    }

    #[test]
    fn cookie_across_two_cookie_headers_is_found() {
        let source = Source::Cookie("access_token".into());
        let req = request("/", &[("cookie", "a=1"), ("cookie", "access_token=x.y.z")]);
        assert_eq!(found(&source, &req).as_deref(), Some("x.y.z"));
    }

    #[test]
    fn duplicate_cookie_is_ambiguous() {
        let source = Source::Cookie("t".into());
        let req = request("/", &[("cookie", "t=a.b.c; t=d.e.f")]);
        assert_eq!(found(&source, &req).as_deref(), Some(""));
    }

    #[test]
    fn cookie_name_prefix_is_not_a_match() {
        let source = Source::Cookie("token".into());
        let req = request("/", &[("cookie", "token2=a.b.c")]);
        assert_eq!(found(&source, &req), None);
    }

    #[test]
    fn query_parameter_is_found_and_decoded() {
        let source = Source::Query("access_token".into());
        let req = request("/x?a=1&access_token=a.b%2Dc&b=2", &[]);
        assert_eq!(found(&source, &req).as_deref(), Some("a.b-c"));
    }

    #[test]
    fn broken_percent_escape_is_kept_raw_and_so_malformed() {
        let source = Source::Query("access_token".into());
        let req = request("/x?access_token=a.b%zz", &[]);
        assert_eq!(found(&source, &req).as_deref(), Some("a.b%zz"));
    }

    #[test]
    fn query_without_the_parameter_has_no_token() {
        let source = Source::Query("access_token".into());
        assert_eq!(found(&source, &request("/x?access_tokens=1&b", &[])), None);
        assert_eq!(found(&source, &request("/x", &[])), None);
        assert_eq!(found(&source, &request("/x?", &[])), None);
    }

    #[test]
    fn query_parameter_without_value_is_an_empty_token() {
        let source = Source::Query("access_token".into());
        assert_eq!(
            found(&source, &request("/x?access_token", &[])).as_deref(),
            Some("")
        );
    }

    #[test]
    fn removing_a_cookie_keeps_the_others() {
        let req = request("/", &[("cookie", "a=1; t=x.y.z; b=2")]);
        assert_eq!(
            Location::Cookie("t".into()).removal(&req),
            HeaderEdit::Set("cookie".into(), "a=1; b=2".into())
        );
        let req = request("/", &[("cookie", "t=x.y.z")]);
        assert_eq!(
            Location::Cookie("t".into()).removal(&req),
            HeaderEdit::Remove("cookie".into())
        );
    }

    #[test]
    fn removing_a_query_parameter_keeps_the_others() {
        let req = request("/p?a=1&t=x.y.z&b=2", &[]);
        assert_eq!(
            Location::Query("t".into()).removal(&req),
            HeaderEdit::Set(":path".into(), "/p?a=1&b=2".into())
        );
        let req = request("/p?t=x.y.z", &[]);
        assert_eq!(
            Location::Query("t".into()).removal(&req),
            HeaderEdit::Set(":path".into(), "/p".into())
        );
    }

    #[test]
    fn percent_decode_refuses_broken_escapes() {
        assert_eq!(percent_decode("a%41").as_deref(), Some("aA"));
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
