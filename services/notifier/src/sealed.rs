//! Webhook signing secrets at rest: AES-256-GCM under a key-encryption key (KEK) from a Secret,
//! never in the clear in the database. A stored value is `v1:<key id>:<base64(nonce ‖ ciphertext)>`,
//! with the merchant id as associated data, so a ciphertext copied onto another merchant's row
//! does not open. Several keys may be configured (`id=key,…`, the first seals, any opens), so the
//! KEK rotates without downtime: add the new key first, `posflow-notifier merchants reseal`,
//! then drop the old (docs/notifier.md).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use clap::Args;
use posflow_runtime::{ConfigErrors, Secret};

/// The KEK setting, shared by the service and its `merchants` commands.
#[derive(Debug, Clone, Args)]
pub struct SealArgs {
    /// Keys that encrypt webhook secrets at rest, `id=base64(32 bytes)[,id=…]`: the first
    /// encrypts, every one decrypts. From a Secret; never logged.
    #[arg(
        long,
        env = "POSFLOW_SECRETS_KEYS",
        hide_env_values = true,
        default_value = ""
    )]
    pub secrets_keys: Secret,
}

impl SealArgs {
    pub fn check(&self, e: &mut ConfigErrors) {
        if let Err(errors) = Keys::parse(&self.secrets_keys) {
            for m in errors {
                e.push(format!("--secrets-keys (POSFLOW_SECRETS_KEYS): {m}"));
            }
        }
    }

    pub fn keys(&self) -> anyhow::Result<Keys> {
        Keys::parse(&self.secrets_keys).map_err(|e| anyhow::anyhow!(e.join("; ")))
    }
}

/// The configured KEKs.
#[derive(Clone)]
pub struct Keys(Vec<(String, Aes256Gcm)>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("stored in the clear (written before encryption at rest): run `posflow-notifier merchants reseal`")]
    Clear,
    #[error("sealed under key {0:?}, which is not configured")]
    UnknownKey(String),
    #[error("does not open: corrupted, or copied from another merchant's row")]
    Corrupt,
}

impl Keys {
    pub fn parse(text: &Secret) -> Result<Self, Vec<String>> {
        let mut keys = Vec::new();
        let mut errors = Vec::new();
        for (i, item) in text
            .expose()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .enumerate()
        {
            let Some((id, b64)) = item.split_once('=') else {
                errors.push(format!("key {}: not id=base64", i + 1));
                continue;
            };
            if id.is_empty()
                || id.len() > 32
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            {
                errors.push(format!(
                    "key {}: its id must be 1-32 of [A-Za-z0-9_.-]",
                    i + 1
                ));
                continue;
            }
            match STANDARD.decode(b64) {
                Ok(bytes) if bytes.len() == 32 => keys.push((
                    id.to_string(),
                    Aes256Gcm::new_from_slice(&bytes).expect("32 bytes"),
                )),
                _ => errors.push(format!(
                    "key {id}: must be 32 bytes, base64 (head -c 32 /dev/urandom | base64)"
                )),
            }
        }
        if keys.is_empty() && errors.is_empty() {
            errors.push("must be set: webhook secrets are never stored in the clear".into());
        }
        let mut ids: Vec<&str> = keys.iter().map(|(id, _)| id.as_str()).collect();
        ids.sort();
        ids.dedup();
        if ids.len() != keys.len() {
            errors.push("key ids must differ".into());
        }
        if errors.is_empty() {
            Ok(Keys(keys))
        } else {
            Err(errors)
        }
    }

    /// The id of the key that seals.
    pub fn current(&self) -> &str {
        &self.0[0].0
    }

    /// Seals `secret` for `merchant_id`'s row under the current key.
    pub fn seal(&self, merchant_id: &str, secret: &str) -> String {
        let (id, cipher) = &self.0[0];
        let nonce: [u8; 12] = rand::random();
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: merchant_id.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of a short secret");
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&sealed);
        format!("v1:{id}:{}", STANDARD.encode(blob))
    }

    /// Opens a stored value of `merchant_id`'s row.
    pub fn open(&self, merchant_id: &str, stored: &str) -> Result<Secret, OpenError> {
        let Some(rest) = stored.strip_prefix("v1:") else {
            return Err(OpenError::Clear);
        };
        let (id, b64) = rest.split_once(':').ok_or(OpenError::Corrupt)?;
        let (_, cipher) = self
            .0
            .iter()
            .find(|(k, _)| k == id)
            .ok_or_else(|| OpenError::UnknownKey(id.to_string()))?;
        let blob = STANDARD.decode(b64).map_err(|_| OpenError::Corrupt)?;
        if blob.len() < 12 + 16 {
            return Err(OpenError::Corrupt);
        }
        let (nonce, sealed) = blob.split_at(12);
        let plain = cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: merchant_id.as_bytes(),
                },
            )
            .map_err(|_| OpenError::Corrupt)?;
        String::from_utf8(plain)
            .map(Secret::new)
            .map_err(|_| OpenError::Corrupt)
    }

    /// Whether `stored` is sealed under the current key (else `reseal` rewrites it).
    pub fn is_current(&self, stored: &str) -> bool {
        stored
            .strip_prefix("v1:")
            .and_then(|r| r.split_once(':'))
            .is_some_and(|(id, _)| id == self.current())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> Keys {
        Keys::parse(&Secret::new(text)).unwrap_or_else(|e| panic!("{e:?}"))
    }
    const K1: &str = "k1=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const K2: &str = "k2=HxweHRwbGhkYFxYVFBMSERAPDg0MCwoJCAcGBQQDAgE=";

    #[test]
    fn a_sealed_secret_opens_only_for_its_merchant_and_never_shows() {
        let k = keys(K1);
        let stored = k.seal("M001", "whsec-0123456789abcdef");
        assert!(stored.starts_with("v1:k1:"), "{stored}");
        assert!(!stored.contains("whsec"));
        assert_ne!(
            stored,
            k.seal("M001", "whsec-0123456789abcdef"),
            "a fresh nonce each time"
        );
        assert_eq!(
            k.open("M001", &stored).unwrap().expose(),
            "whsec-0123456789abcdef"
        );
        assert_eq!(k.open("M002", &stored).err(), Some(OpenError::Corrupt));
        assert_eq!(k.open("M001", "whsec-plain").err(), Some(OpenError::Clear));
    }

    #[test]
    fn rotation_opens_old_seals_with_the_old_key_and_seals_with_the_new() {
        let old = keys(K1);
        let stored = old.seal("M1", "s3cret-s3cret-s3cret");
        let both = keys(&format!("{K2},{K1}"));
        assert_eq!(
            both.open("M1", &stored).unwrap().expose(),
            "s3cret-s3cret-s3cret"
        );
        assert!(!both.is_current(&stored));
        assert!(both.is_current(&both.seal("M1", "x")));
        assert_eq!(
            keys(K2).open("M1", &stored).err(),
            Some(OpenError::UnknownKey("k1".into()))
        );
    }

    #[test]
    fn bad_keys_are_listed() {
        let e = Keys::parse(&Secret::new("k1=short,=AAAA,nokey"))
            .err()
            .unwrap();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(Keys::parse(&Secret::new("")).is_err());
        assert!(Keys::parse(&Secret::new(format!("{K1},{K1}"))).is_err());
    }
}
