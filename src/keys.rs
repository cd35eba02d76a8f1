//! The root secret. One 32-byte key, created by `serve` or `init` in the data directory (mode
//! 0600) or given by `REPOCRYPT_ROOT_KEY`; the local KMS's wrapping key and the token
//! signing key are derived from it with HMAC-SHA256 under distinct labels, so replicas
//! share exactly one secret.

use std::fs;
use std::io::Write;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::Error;

pub const ROOT_KEY_FILE: &str = "root.key";
pub const ROOT_KEY_ENV: &str = "REPOCRYPT_ROOT_KEY";

/// Labels of the derived keys. Changing one invalidates everything made with it.
pub const LABEL_KMS_WRAP: &str = "repocrypt/local-kms/wrap/v1";
pub const LABEL_TOKEN: &str = "repocrypt/token/hmac/v1";
pub const LABEL_CREDENTIAL: &str = "repocrypt/credential/wrap/v1";

#[derive(Clone)]
pub struct RootKey([u8; 32]);

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootKey(<redacted>)")
    }
}

impl RootKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        RootKey(bytes)
    }

    /// Parse the base64 text form (what the file and the environment variable hold).
    pub fn from_base64(text: &str) -> Result<Self, Error> {
        let bytes = B64
            .decode(text.trim())
            .map_err(|_| Error::InvalidArgument("root key is not valid base64".into()))?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| {
            Error::InvalidArgument("root key must be 32 bytes (44 base64 characters)".into())
        })?;
        Ok(RootKey(arr))
    }

    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }

    /// Load the key: the environment's if given, else the data directory's file,
    /// creating it (0600) on first start. Only `serve` and `init` may create it; the
    /// admin commands use [`RootKey::load`], so a mistyped data directory is refused
    /// instead of getting a new key that no server shares.
    pub fn load_or_create(data_dir: &Path, env_value: Option<&str>) -> Result<Self, Error> {
        if let Some(v) = env_value {
            return Self::from_env(v);
        }
        Self::file_or_create(data_dir).map(|(key, _created)| key)
    }

    /// Load the key, the environment's if given, else the data directory's file; a
    /// missing file is an error that names it and says how to make one.
    pub fn load(data_dir: &Path, env_value: Option<&str>) -> Result<Self, Error> {
        if let Some(v) = env_value {
            return Self::from_env(v);
        }
        let path = data_dir.join(ROOT_KEY_FILE);
        Self::read_file(&path)?.ok_or_else(|| {
            Error::InvalidArgument(format!(
                "no root key at {}: run `repocrypt serve` or `repocrypt init` with this \
                 data directory first, or set {ROOT_KEY_ENV}",
                path.display()
            ))
        })
    }

    fn from_env(value: &str) -> Result<Self, Error> {
        Self::from_base64(value).map_err(|e| Error::InvalidArgument(format!("{ROOT_KEY_ENV}: {e}")))
    }

    /// The key in `path`, or None if there is no such file.
    fn read_file(path: &Path) -> Result<Option<Self>, Error> {
        match fs::read_to_string(path) {
            Ok(text) => Self::from_base64(&text)
                .map(Some)
                .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::InvalidArgument(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    /// The data directory's key, created (with the directory) if missing; true if it
    /// was created now.
    pub fn file_or_create(data_dir: &Path) -> Result<(Self, bool), Error> {
        let path = data_dir.join(ROOT_KEY_FILE);
        let io = |what: &str, e: std::io::Error| {
            Error::InvalidArgument(format!("{what} {}: {e}", path.display()))
        };
        if let Some(key) = Self::read_file(&path)? {
            return Ok((key, false));
        }
        create_private_dir(data_dir)?;
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        let key = RootKey(bytes);
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(&path) {
            Ok(mut f) => {
                f.write_all(key.to_base64().as_bytes())
                    .and_then(|_| f.write_all(b"\n"))
                    .and_then(|_| f.sync_all())
                    .map_err(|e| io("cannot write", e))?;
                tracing::info!(path = %path.display(), "created a new root key");
                Ok((key, true))
            }
            // Another process created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = fs::read_to_string(&path).map_err(|e| io("cannot read", e))?;
                Self::from_base64(&text).map(|key| (key, false))
            }
            Err(e) => Err(io("cannot create", e)),
        }
    }

    /// A sub-key for one purpose.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        #[allow(clippy::expect_used)] // HMAC takes keys of any length
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(label.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// AES-256-GCM under a key derived from the root key for one purpose. Sealed blobs are
/// `nonce (12 bytes) || ciphertext+tag`; the associated data binds a blob to its owner
/// (a key id, an access key), so a blob cannot be moved to another row.
pub struct Sealer {
    aead: Aes256Gcm,
}

const NONCE_LEN: usize = 12;

impl Sealer {
    pub fn new(root: &RootKey, label: &str) -> Self {
        Sealer {
            aead: Aes256Gcm::new(&root.derive(label).into()),
        }
    }

    pub fn seal(&self, aad: &str, plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        let ct = self
            .aead
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| Error::Internal("encryption failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(out)
    }

    pub fn open(&self, aad: &str, sealed: &[u8]) -> Result<Vec<u8>, Error> {
        if sealed.len() < NONCE_LEN {
            return Err(Error::Internal("sealed blob is truncated".into()));
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.aead
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| Error::Internal("sealed blob does not decrypt under this root key".into()))
    }
}

/// Create the data directory (0700 on Unix) if it is missing.
pub fn create_private_dir(dir: &Path) -> Result<(), Error> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|e| {
        Error::InvalidArgument(format!(
            "cannot create data directory {}: {e}",
            dir.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_0600_and_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let a = RootKey::load_or_create(&data, None).expect("create");
        let b = RootKey::load_or_create(&data, None).expect("reload");
        assert_eq!(a.0, b.0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(data.join(ROOT_KEY_FILE))
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn load_never_creates_a_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("typo");
        let err = RootKey::load(&data, None)
            .expect_err("no key there")
            .to_string();
        assert!(
            err.contains(&data.join(ROOT_KEY_FILE).display().to_string()),
            "{err}"
        );
        assert!(
            err.contains("repocrypt init") && err.contains(ROOT_KEY_ENV),
            "{err}"
        );
        assert!(!data.exists(), "nothing created");
        let k = RootKey::from_bytes([9; 32]);
        let got = RootKey::load(&data, Some(&k.to_base64())).expect("env key, no file needed");
        assert_eq!(got.0, [9; 32]);
        assert!(!data.exists());
        let (created, fresh) = RootKey::file_or_create(&data).expect("create");
        assert!(fresh);
        assert_eq!(RootKey::load(&data, None).expect("load").0, created.0);
        let (again, fresh) = RootKey::file_or_create(&data).expect("reload");
        assert!(!fresh);
        assert_eq!(again.0, created.0);
    }

    #[test]
    fn env_wins_and_is_validated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let k = RootKey::from_bytes([7; 32]);
        let got = RootKey::load_or_create(dir.path(), Some(&k.to_base64())).expect("env key");
        assert_eq!(got.0, [7; 32]);
        assert!(RootKey::load_or_create(dir.path(), Some("short")).is_err());
        assert!(!dir.path().join(ROOT_KEY_FILE).exists());
    }

    #[test]
    fn sealed_blobs_open_only_with_their_aad_and_root() {
        let root = RootKey::from_bytes([5; 32]);
        let s = Sealer::new(&root, LABEL_CREDENTIAL);
        let blob = s.seal("ak1", b"secret").expect("seal");
        assert!(!blob.windows(6).any(|w| w == b"secret"));
        assert_eq!(s.open("ak1", &blob).expect("open"), b"secret");
        assert!(s.open("ak2", &blob).is_err(), "bound to its AAD");
        assert!(Sealer::new(&root, LABEL_KMS_WRAP)
            .open("ak1", &blob)
            .is_err());
        assert!(Sealer::new(&RootKey::from_bytes([6; 32]), LABEL_CREDENTIAL)
            .open("ak1", &blob)
            .is_err());
        assert!(s.open("ak1", &blob[..5]).is_err());
    }

    #[test]
    fn derived_keys_differ_by_label() {
        let k = RootKey::from_bytes([1; 32]);
        assert_ne!(k.derive(LABEL_TOKEN), k.derive(LABEL_KMS_WRAP));
        assert_eq!(format!("{k:?}"), "RootKey(<redacted>)");
    }
}
