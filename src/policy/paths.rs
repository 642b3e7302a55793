//! The path rules match: the request path without its query, with percent-escapes of
//! unreserved characters decoded, and refused (400) when it could mean another path to
//! the service behind the filter than to the rules — `/public/../admin` must never match
//! `/public` while the upstream serves `/admin`.
//!
//! Refused: dot-segments (`.`, `..`, also `..;params` and `.;params`, which some servlet
//! containers read as `..`), empty segments (`//`), `\`, encoded `/`, `\` or `.`
//! (`%2F`, `%5C`, `%2E`, any case), broken escapes, and control characters. With
//! `allow_encoded_slashes`, `%2F` passes and is matched as the literal `%2F`.

use std::borrow::Cow;

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathError {
    /// Not starting with `/` (an asterisk-form or absolute-form target).
    NotAbsolute,
    DotSegment,
    EmptySegment,
    Backslash,
    /// `%2F`, `%5C` or `%2E`: a separator or a dot that the upstream may decode.
    EncodedSeparator,
    /// `%` not followed by two hex digits.
    BrokenEscape,
    /// A control character or a space.
    ControlCharacter,
}

impl PathError {
    pub fn description(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "path must start with /",
            PathError::DotSegment => "path holds a dot-segment",
            PathError::EmptySegment => "path holds an empty segment",
            PathError::Backslash => "path holds a backslash",
            PathError::EncodedSeparator => "path holds an encoded slash, backslash or dot",
            PathError::BrokenEscape => "path holds a broken percent-escape",
            PathError::ControlCharacter => "path holds a control character",
        }
    }
}

/// The path as rules see it: `path` is the request's `:path` (query included, which is
/// cut off and not inspected).
pub fn normalize(path: &str, allow_encoded_slashes: bool) -> Result<Cow<'_, str>, PathError> {
    let path = path.split_once('?').map_or(path, |(path, _)| path);
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let bytes = path.as_bytes();
    let mut decoded: Option<String> = None;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'\\' => return Err(PathError::Backslash),
            0..=0x20 | 0x7f => return Err(PathError::ControlCharacter),
            b'%' => {
                let hex = |at: usize| bytes.get(at).and_then(|c| char::from(*c).to_digit(16));
                let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
                    return Err(PathError::BrokenEscape);
                };
                let value = (hi * 16 + lo) as u8;
                match value {
                    b'/' if allow_encoded_slashes => keep(&mut decoded, path, i, "%2F"),
                    b'/' | b'\\' | b'.' => return Err(PathError::EncodedSeparator),
                    c if c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'~' => {
                        let out = decoded.get_or_insert_with(|| prefix(path, i));
                        out.push(char::from(c));
                    }
                    // Anything else stays escaped as it was, hex digits uppercased.
                    _ => {
                        let escape = format!("%{value:02X}");
                        keep(&mut decoded, path, i, &escape);
                    }
                }
                i += 3;
                continue;
            }
            _ => {
                if let Some(out) = decoded.as_mut() {
                    // Multi-byte UTF-8 is copied whole: only ASCII bytes are special.
                    let end = next_boundary(path, i);
                    out.push_str(path.get(i..end).unwrap_or_default());
                    i = end;
                    continue;
                }
            }
        }
        i += 1;
    }
    let normalized = match decoded {
        Some(text) => Cow::Owned(text),
        None => Cow::Borrowed(path),
    };
    check_segments(&normalized)?;
    Ok(normalized)
}

fn prefix(path: &str, end: usize) -> String {
    path.get(..end).unwrap_or_default().to_owned()
}

/// Appends `text` to the decoded copy (started lazily with the path so far).
fn keep(decoded: &mut Option<String>, path: &str, at: usize, text: &str) {
    decoded
        .get_or_insert_with(|| prefix(path, at))
        .push_str(text);
}

fn next_boundary(path: &str, at: usize) -> usize {
    (at + 1..=path.len())
        .find(|end| path.is_char_boundary(*end))
        .unwrap_or(path.len())
}

fn check_segments(path: &str) -> Result<(), PathError> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    if rest.is_empty() {
        return Ok(());
    }
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        // A trailing slash is an empty last segment, and common: allowed.
        if segment.is_empty() && segments.peek().is_some() {
            return Err(PathError::EmptySegment);
        }
        // `;params`, also as `%3B`, which an upstream may decode before it reads `..;`.
        let bare = segment.split_once(';').map_or(segment, |(name, _)| name);
        let bare = match bare.find("%3B") {
            Some(at) => bare.get(..at).unwrap_or(bare),
            None => bare,
        };
        if bare == "." || bare == ".." {
            return Err(PathError::DotSegment);
        }
    }
    Ok(())
}

/// The path's segments (after the leading `/`), as OPA-Envoy's `parsed_path`.
pub fn segments(path: &str) -> Vec<&str> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    if rest.is_empty() {
        return Vec::new();
    }
    rest.split('/').collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(path: &str) -> String {
        normalize(path, false).unwrap().into_owned()
    }

    fn refused(path: &str) -> PathError {
        normalize(path, false).unwrap_err()
    }

    #[test]
    fn plain_paths_pass_unchanged_without_their_query() {
        assert_eq!(ok("/"), "/");
        assert_eq!(ok("/users/42/orders"), "/users/42/orders");
        assert_eq!(ok("/users/42/?q=../x"), "/users/42/");
        assert!(matches!(normalize("/a/b", false), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn dot_segments_are_refused_also_with_parameters() {
        for path in [
            "/public/../admin",
            "/./admin",
            "/a/..",
            "/a/.",
            "/public/..;x=1/admin",
            "/a/.;/b",
        ] {
            assert_eq!(refused(path), PathError::DotSegment, "{path}");
        }
        // Dots inside a segment are just characters.
        assert_eq!(ok("/files/a..b/.well-known"), "/files/a..b/.well-known");
    }

    #[test]
    fn empty_segments_and_backslashes_are_refused() {
        assert_eq!(refused("//admin"), PathError::EmptySegment);
        assert_eq!(refused("/public//admin"), PathError::EmptySegment);
        assert_eq!(refused("/public\\..\\admin"), PathError::Backslash);
        assert_eq!(ok("/trailing/"), "/trailing/");
    }

    #[test]
    fn encoded_slash_backslash_and_dot_are_refused_in_any_case() {
        for path in [
            "/a%2Fb",
            "/a%2fb",
            "/a%5Cb",
            "/a%5cb",
            "/public/%2E%2E/admin",
            "/%2e",
        ] {
            assert_eq!(refused(path), PathError::EncodedSeparator, "{path}");
        }
    }

    #[test]
    fn encoded_slashes_can_be_let_through_as_literals() {
        assert_eq!(normalize("/repos/a%2fb/x", true).unwrap(), "/repos/a%2Fb/x");
        assert_eq!(
            normalize("/a/%2E%2E/b", true).unwrap_err(),
            PathError::EncodedSeparator
        );
    }

    #[test]
    fn only_unreserved_escapes_are_decoded() {
        assert_eq!(ok("/%61dmin"), "/admin");
        assert_eq!(ok("/a%7Eb%5f%2Dc"), "/a~b_-c");
        assert_eq!(ok("/caf%c3%a9/x%20y"), "/caf%C3%A9/x%20y");
        assert_eq!(ok("/café/%61"), "/café/a");
    }

    #[test]
    fn a_decoded_dot_segment_can_not_sneak_in() {
        // %61 decodes to 'a', never to a dot; dots themselves may not be encoded.
        assert_eq!(refused("/%2E./admin"), PathError::EncodedSeparator);
    }

    #[test]
    fn broken_escapes_and_control_characters_are_refused() {
        assert_eq!(refused("/a%2"), PathError::BrokenEscape);
        assert_eq!(refused("/a%zz"), PathError::BrokenEscape);
        assert_eq!(refused("/a b"), PathError::ControlCharacter);
        assert_eq!(refused("/a\u{7f}"), PathError::ControlCharacter);
        assert_eq!(refused("*"), PathError::NotAbsolute);
    }

    #[test]
    fn segments_split_after_the_leading_slash() {
        assert_eq!(segments("/users/42"), vec!["users", "42"]);
        assert!(segments("/").is_empty());
    }
}
