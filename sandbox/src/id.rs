//! Object ids: 32 random bytes as 64 lowercase hex digits, like containerd and CRI-O.

use rand::RngCore;

/// Length of a full object id in hex digits.
pub const ID_LEN: usize = 64;

/// A new random 64-hex-digit id.
pub fn new_id() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let mut s = String::with_capacity(ID_LEN);
    for b in bytes {
        s.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        s.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
    s
}

/// Whether `s` could be (a prefix of) an id: non-empty lowercase hex, at most [`ID_LEN`] long.
pub fn is_id_prefix(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_64_hex_and_distinct() {
        let a = new_id();
        let b = new_id();
        assert_eq!(a.len(), ID_LEN);
        assert!(is_id_prefix(&a));
        assert_ne!(a, b);
    }

    #[test]
    fn prefix_rules() {
        assert!(is_id_prefix("abc123"));
        assert!(!is_id_prefix(""));
        assert!(!is_id_prefix("ABC"));
        assert!(!is_id_prefix("xyz"));
        assert!(!is_id_prefix(&"a".repeat(65)));
    }
}
