//! AES-256-GCM for values at rest: the 32-byte key (kept in [`secrecy`] wrappers, zeroized on
//! drop, never printed), sealing with a fresh random 96-bit nonce per value, and opening. The
//! stored format is the pi-apps relay's (§6.4 of the protocol reference): base64 nonce, base64
//! ciphertext without the tag, base64 16-byte tag, and the key version; unlike that relay,
//! every value is bound to where it belongs by associated data (for a secret, its id), so a
//! ciphertext copied into another row does not open.

use aes_gcm::aead::{Aead, OsRng, Payload};
use aes_gcm::{AeadCore, Aes256Gcm, KeyInit, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use relay_store::SealedValue;
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretBox, SecretString};

use crate::SessionError;

/// Length of an AES-256 key.
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// An AES-256 key. Its bytes are zeroized when it is dropped and `Debug` does not show them.
pub struct EncryptionKey(SecretBox<[u8; KEY_LEN]>);

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncryptionKey([REDACTED])")
    }
}

impl Clone for EncryptionKey {
    fn clone(&self) -> EncryptionKey {
        let bytes = *self.0.expose_secret();
        EncryptionKey(SecretBox::new(Box::new(bytes)))
    }
}

impl EncryptionKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> EncryptionKey {
        let key = Aes256Gcm::generate_key(&mut OsRng);
        let mut bytes = [0u8; KEY_LEN];
        bytes.copy_from_slice(key.as_slice());
        EncryptionKey(SecretBox::new(Box::new(bytes)))
    }

    /// Parses the base64 of exactly 32 bytes (surrounding whitespace ignored). `source` names
    /// where the text came from (`RELAY_ENCRYPTION_KEY`, a file) in the error, which never
    /// contains the text itself.
    pub fn from_base64(text: &str, source: &str) -> Result<EncryptionKey, SessionError> {
        let hint = "expected the base64 of 32 random bytes, e.g. from `openssl rand -base64 32`";
        let decoded =
            Zeroizing::new(B64.decode(text.trim()).map_err(|_| {
                SessionError::Key(format!("{source} is not valid base64 ({hint})"))
            })?);
        if decoded.len() != KEY_LEN {
            return Err(SessionError::Key(format!(
                "{source} decodes to {} bytes, but AES-256 needs exactly {KEY_LEN} ({hint})",
                decoded.len()
            )));
        }
        let mut bytes = [0u8; KEY_LEN];
        bytes.copy_from_slice(&decoded);
        Ok(EncryptionKey(SecretBox::new(Box::new(bytes))))
    }

    /// The key as base64, for a key file or for the operator to copy.
    pub fn to_base64(&self) -> SecretString {
        SecretString::from(B64.encode(self.0.expose_secret()))
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(self.0.expose_secret().into())
    }

    /// Seals `plaintext` bound to `aad` with a fresh random nonce; `key_version` is recorded.
    pub fn seal(&self, key_version: u32, aad: &[u8], plaintext: &[u8]) -> SealedValue {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        // Encryption only fails for inputs longer than GCM's limit (64 GiB); values are capped
        // far below that by validation.
        let mut out = self
            .cipher()
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .unwrap_or_else(|_| unreachable!("AES-GCM input within limits"));
        let tag = out.split_off(out.len() - TAG_LEN);
        SealedValue {
            iv: B64.encode(nonce),
            ciphertext: B64.encode(&out),
            tag: B64.encode(&tag),
            key_version,
        }
    }

    /// Opens a sealed value bound to `aad`. Fails, without saying more, when the key is not
    /// the one that sealed it, `aad` differs, or any stored byte was changed.
    pub fn open(
        &self,
        aad: &[u8],
        sealed: &SealedValue,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoFailure> {
        let iv = B64.decode(&sealed.iv).map_err(|_| CryptoFailure)?;
        let mut data = B64.decode(&sealed.ciphertext).map_err(|_| CryptoFailure)?;
        let tag = B64.decode(&sealed.tag).map_err(|_| CryptoFailure)?;
        if iv.len() != NONCE_LEN || tag.len() != TAG_LEN {
            return Err(CryptoFailure);
        }
        data.extend_from_slice(&tag);
        self.cipher()
            .decrypt(Nonce::from_slice(&iv), Payload { msg: &data, aad })
            .map(Zeroizing::new)
            .map_err(|_| CryptoFailure)
    }
}

/// A sealed value did not open: wrong key, wrong associated data, or changed bytes. AES-GCM
/// does not tell which, on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CryptoFailure;

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> EncryptionKey {
        EncryptionKey::generate()
    }

    #[test]
    fn a_sealed_value_opens_with_the_same_key_and_associated_data() {
        let k = key();
        let sealed = k.seal(3, b"row-1", b"sk-live-123");
        assert_eq!(sealed.key_version, 3);
        assert_eq!(&*k.open(b"row-1", &sealed).unwrap(), b"sk-live-123");
    }

    #[test]
    fn the_stored_format_is_base64_nonce_ciphertext_without_tag_and_tag() {
        let sealed = key().seal(1, b"id", b"hello");
        assert_eq!(B64.decode(&sealed.iv).unwrap().len(), 12);
        assert_eq!(B64.decode(&sealed.tag).unwrap().len(), 16);
        assert_eq!(B64.decode(&sealed.ciphertext).unwrap().len(), 5);
    }

    #[test]
    fn every_seal_uses_a_fresh_nonce() {
        let k = key();
        let a = k.seal(1, b"id", b"same value");
        let b = k.seal(1, b"id", b"same value");
        assert_ne!(a.iv, b.iv);
        assert_ne!(a.ciphertext, b.ciphertext);
    }

    #[test]
    fn a_value_copied_to_another_row_does_not_open() {
        let k = key();
        let sealed = k.seal(1, b"secret-a", b"value of a");
        assert_eq!(k.open(b"secret-b", &sealed), Err(CryptoFailure));
    }

    #[test]
    fn a_changed_ciphertext_tag_or_nonce_does_not_open() {
        let k = key();
        let sealed = k.seal(1, b"id", b"value");
        let flip = |s: &str| {
            let mut b = B64.decode(s).unwrap();
            b[0] ^= 1;
            B64.encode(b)
        };
        for tampered in [
            SealedValue {
                ciphertext: flip(&sealed.ciphertext),
                ..sealed.clone()
            },
            SealedValue {
                tag: flip(&sealed.tag),
                ..sealed.clone()
            },
            SealedValue {
                iv: flip(&sealed.iv),
                ..sealed.clone()
            },
            SealedValue {
                tag: "not base64!".into(),
                ..sealed.clone()
            },
            SealedValue {
                iv: B64.encode([0u8; 8]),
                ..sealed.clone()
            },
        ] {
            assert_eq!(k.open(b"id", &tampered), Err(CryptoFailure), "{tampered:?}");
        }
    }

    #[test]
    fn another_key_does_not_open_a_value() {
        let sealed = key().seal(1, b"id", b"value");
        assert_eq!(key().open(b"id", &sealed), Err(CryptoFailure));
    }

    #[test]
    fn a_key_round_trips_through_base64() {
        let k = key();
        let text = k.to_base64();
        let back = EncryptionKey::from_base64(text.expose_secret(), "test").unwrap();
        let sealed = k.seal(1, b"id", b"v");
        assert_eq!(&*back.open(b"id", &sealed).unwrap(), b"v");
        // Surrounding whitespace (a key file's newline) is fine.
        let padded = format!("  {}\n", text.expose_secret());
        assert!(EncryptionKey::from_base64(&padded, "test").is_ok());
    }

    #[test]
    fn keys_of_the_wrong_length_or_not_base64_are_refused_with_their_source_named() {
        let short = B64.encode([7u8; 16]);
        let err = EncryptionKey::from_base64(&short, "RELAY_ENCRYPTION_KEY")
            .unwrap_err()
            .to_string();
        assert!(err.contains("RELAY_ENCRYPTION_KEY"), "{err}");
        assert!(err.contains("16 bytes"), "{err}");
        assert!(
            !err.contains(&short),
            "the error never repeats the key: {err}"
        );
        let err = EncryptionKey::from_base64("not*base64", "RELAY_ENCRYPTION_KEY")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not valid base64"), "{err}");
        assert!(EncryptionKey::from_base64("", "k").is_err());
        assert!(EncryptionKey::from_base64(&B64.encode([1u8; 33]), "k").is_err());
    }

    #[test]
    fn a_key_never_shows_in_debug_output() {
        let k = key();
        let text = k.to_base64();
        let shown = format!("{k:?} {text:?}");
        assert!(!shown.contains(text.expose_secret()), "{shown}");
    }
}
