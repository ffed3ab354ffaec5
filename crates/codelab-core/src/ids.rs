//! Identifiers and random tokens.

use rand::RngCore;

/// A new time-ordered identifier (UUID v7), so primary keys index well.
pub fn new_id() -> uuid::Uuid {
    uuid::Uuid::now_v7()
}

/// `bytes` random bytes from the OS-seeded CSPRNG, hex-encoded (`2 * bytes` characters).
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex_encode(&buf)
}

/// Lower-case hex encoding of `bytes`.
pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_v7_and_time_ordered() {
        let a = new_id();
        let b = new_id();
        assert_eq!(a.get_version_num(), 7);
        assert!(b > a);
    }

    #[test]
    fn random_hex_has_twice_the_length_and_differs() {
        let a = random_hex(32);
        assert_eq!(a.len(), 64);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, random_hex(32));
        assert_eq!(random_hex(0), "");
        assert_eq!(hex_encode(&[0x00, 0xff, 0x1a]), "00ff1a");
    }
}
