//! Identifiers and random tokens.

use rand::RngCore;

/// A new time-ordered identifier (UUID v7), so primary keys index well.
pub fn new_id() -> uuid::Uuid {
    uuid::Uuid::now_v7()
}

/// A new random identifier (UUID v4: 122 random bits, nothing derived from the time), for ids
/// that must not be guessed or dated, e.g. session ids and token ids.
#[expect(
    clippy::disallowed_methods,
    reason = "the one place shipped code makes a random UUID"
)]
pub fn new_random_id() -> uuid::Uuid {
    uuid::Uuid::new_v4()
}

/// `bytes` random bytes from the OS-seeded CSPRNG, hex-encoded (`2 * bytes` characters).
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex_encode(&buf)
}

/// A short reference to a session id for log lines: the first 12 hex digits of its SHA-256.
///
/// Where tokenless sockets may attach by session id, the id is a credential, so logs carry this
/// instead (docs/security.md). The same id always gives the same reference, so one session's
/// lines can still be found together; the id cannot be recovered from it.
pub fn log_reference(id: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(id.as_bytes());
    hex_encode(&digest[..6])
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
    fn random_ids_are_v4_and_differ() {
        let a = new_random_id();
        assert_eq!(a.get_version_num(), 4);
        assert_ne!(a, new_random_id());
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

    #[test]
    fn log_references_are_stable_short_and_do_not_contain_the_id() {
        let id = "3f6c2a9e-8d1b-4c57-9a0e-2b7f5d4c1e88";
        let reference = log_reference(id);
        assert_eq!(reference.len(), 12);
        assert_eq!(reference, log_reference(id));
        assert_ne!(reference, log_reference("another-session"));
        assert!(!id.contains(&reference) && !reference.contains("3f6c2a9e"));
        // SHA-256("abc") starts with ba7816bf8f01.
        assert_eq!(log_reference("abc"), "ba7816bf8f01");
    }
}
