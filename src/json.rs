//! One reading of a document, or none. serde_json keeps the last of a repeated member
//! (`{"sub":"alice","sub":"admin"}` reads as admin), while another parser — the
//! upstream's reading `x-jwt-payload`, a policy engine — may keep the first. Every JSON
//! the filter trusts from outside (token headers and claims, key sets, discovery,
//! exchange and policy answers) is refused when any object in it, at any depth, names a
//! member twice.

use std::borrow::Cow;

/// Whether any object in this JSON text holds a member name twice (names compared after
/// unescaping, so `"a"` and `"\u0061"` are the same). Meant for text the caller parses
/// anyway: on text that is not JSON the answer means nothing, and the parse refuses it.
/// Linear but for sorting each object's names once.
pub fn has_repeated_member(bytes: &[u8]) -> bool {
    // One entry per open container: the names of an object, `None` for an array.
    let mut open: Vec<Option<Vec<Cow<'_, [u8]>>>> = Vec::new();
    let mut expecting_name = false;
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'"' => {
                let end = string_end(bytes, i);
                if expecting_name {
                    if let Some(Some(names)) = open.last_mut() {
                        names.push(name_at(bytes, i, end));
                    }
                    expecting_name = false;
                }
                i = end;
                continue;
            }
            b'{' => {
                open.push(Some(Vec::new()));
                expecting_name = true;
            }
            b'[' => open.push(None),
            b'}' | b']' => {
                if let Some(Some(mut names)) = open.pop() {
                    names.sort_unstable();
                    if names.windows(2).any(|pair| pair.first() == pair.get(1)) {
                        return true;
                    }
                }
            }
            b',' => expecting_name = matches!(open.last(), Some(Some(_))),
            _ => {}
        }
        i += 1;
    }
    false
}

/// The member name whose quoted form spans `start..end`, unescaped when it has escapes.
fn name_at(bytes: &[u8], start: usize, end: usize) -> Cow<'_, [u8]> {
    let quoted = bytes.get(start..end).unwrap_or_default();
    let raw = quoted
        .get(1..quoted.len().saturating_sub(1))
        .unwrap_or_default();
    if !raw.contains(&b'\\') {
        return Cow::Borrowed(raw);
    }
    match serde_json::from_slice::<String>(quoted) {
        Ok(name) => Cow::Owned(name.into_bytes()),
        Err(_) => Cow::Borrowed(raw),
    }
}

/// The index just past the JSON string opening at `start` (its quote), or the end of the
/// input if it never closes.
pub fn string_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_named_twice_is_found_at_any_depth() {
        assert!(has_repeated_member(
            br#"{"sub":"alice","exp":1,"sub":"admin"}"#
        ));
        assert!(has_repeated_member(br#"{"a":{"b":[{"c":1,"c":2}]}}"#));
        assert!(has_repeated_member(br#"[{"x":1},{"y":{"z":0,"z":0}}]"#));
        assert!(has_repeated_member(br#"{"a":1,"\u0061":2}"#));
        assert!(has_repeated_member(br#"{"a\"b":1, "a\"b" :2}"#));
    }

    #[test]
    fn the_same_name_in_different_objects_or_as_a_value_is_fine() {
        assert!(!has_repeated_member(
            br#"{"a":{"a":1},"b":[{"a":2},{"a":3}]}"#
        ));
        assert!(!has_repeated_member(
            br#"{"a":"a","b":["a","a"],"c":"{\"a\":1,\"a\":2}"}"#
        ));
        assert!(!has_repeated_member(
            br#"{"realm_access":{"roles":["x"]},"roles":[]}"#
        ));
        assert!(!has_repeated_member(b"[]"));
        assert!(!has_repeated_member(b""));
    }

    #[test]
    fn many_names_are_checked_in_one_pass() {
        let mut doc = String::from("{");
        for i in 0..5000 {
            doc.push_str(&format!("\"k{i}\":0,"));
        }
        doc.push_str("\"k17\":1}");
        assert!(has_repeated_member(doc.as_bytes()));
    }
}
