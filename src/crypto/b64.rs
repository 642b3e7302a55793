//! Strict base64url (RFC 7515 §2): no padding, no whitespace, canonical trailing bits.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// Decodes strict unpadded base64url; `None` for anything else.
pub fn decode(input: &[u8]) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(input).ok()
}

/// Encodes as unpadded base64url.
pub fn encode(input: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_whitespace_and_standard_alphabet_are_refused() {
        assert_eq!(decode(b"YWI"), Some(b"ab".to_vec()));
        assert_eq!(decode(b"YWI="), None);
        assert_eq!(decode(b"YW I"), None);
        assert_eq!(decode(b"YWI\n"), None);
        assert_eq!(decode(b"+/8"), None);
        assert_eq!(decode(b"-_8"), Some(vec![0xfb, 0xff]));
    }

    #[test]
    fn non_canonical_trailing_bits_are_refused() {
        // "YWJ" would carry set bits beyond the last byte of "ab".
        assert_eq!(decode(b"YWJ"), None);
    }
}
