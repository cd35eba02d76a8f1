//! Sealing files under a repository's data key: streaming AES-256-GCM in the STREAM
//! construction (Hoang, Reyhanitabar, Rogaway, Vizár, "Online Authenticated-Encryption and
//! its Nonce-Reuse Misuse-Resistance", CRYPTO 2015), as RustCrypto's `aead::stream`
//! implements it (`EncryptorBE32`/`DecryptorBE32` over `Aes256Gcm`, 7-byte nonce prefix).
//!
//! The format is described byte by byte in `docs/seal-format.md`. In short:
//!
//! ```text
//! header (23 bytes) = "RCSEAL" | version 0x01 | flags 0x00 | segment size u32 BE
//!                     | repo id u32 BE | nonce prefix (7 random bytes)
//! segments          = segment 0 .. segment n-1, each AES-256-GCM(plaintext) | tag (16)
//!                     every segment but the last holds exactly `segment size` plaintext
//!                     bytes; the last holds 0..=segment size and is sealed with the
//!                     STREAM "last" flag
//! nonce of segment i = nonce prefix (7) | i u32 BE | last ? 0x01 : 0x00
//! AAD of every segment = header (23) | repo id u32 BE | tenant length u32 BE | tenant
//! ```
//!
//! Memory is constant: one segment buffer (segment size + 17 bytes) whatever the file size.
//!
//! [`seal`] and [`unseal`] work on any `Read`/`Write`. [`unseal`] writes each segment once
//! it is authenticated, so on failure its `output` holds a prefix that must be thrown
//! away; [`seal_file`] and [`unseal_file`] do that: they write a `*.partial` file beside
//! the output and rename it only on success (and delete it on failure).
//!
//! The CLI side, [`SealArgs`] and [`run`], fetches the data key from the key broker
//! ([`crate::storage_client`]) and then seals or unseals one file.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aes_gcm::aead::stream::{DecryptorBE32, EncryptorBE32, NewStream, StreamBE32, StreamPrimitive};
use aes_gcm::aead::KeyInit;
use aes_gcm::Aes256Gcm;
use rand::RngCore;
use zeroize::Zeroizing;

use crate::domain::{Error, TenantId};
use crate::storage_client::{Credentials, KeyBrokerClient};

/// Magic bytes at the start of every sealed file.
pub const MAGIC: [u8; 6] = *b"RCSEAL";
/// The format version this build writes (and the only one it reads).
pub const FORMAT_VERSION: u8 = 1;
/// Length of the header in bytes.
pub const HEADER_LEN: usize = 23;
/// Length of the random nonce prefix (12-byte GCM nonce less STREAM's 4-byte counter and
/// 1-byte last flag).
pub const NONCE_PREFIX_LEN: usize = 7;
/// Length of the GCM tag that follows each segment's ciphertext.
pub const TAG_LEN: usize = 16;
/// Plaintext bytes per segment unless told otherwise.
pub const DEFAULT_SEGMENT_SIZE: u32 = 64 * 1024;
/// Smallest segment size accepted (written or read).
pub const MIN_SEGMENT_SIZE: u32 = 16;
/// Largest segment size accepted (written or read): bounds the memory a header can ask for.
pub const MAX_SEGMENT_SIZE: u32 = 16 * 1024 * 1024;
/// Length of a data key.
pub const DATA_KEY_LEN: usize = 32;

/// A repository's 32-byte data key. Zeroed when dropped; `Debug` never shows it.
#[derive(Clone)]
pub struct DataKeyBytes(Zeroizing<[u8; DATA_KEY_LEN]>);

impl DataKeyBytes {
    pub fn new(bytes: [u8; DATA_KEY_LEN]) -> Self {
        DataKeyBytes(Zeroizing::new(bytes))
    }

    /// The key from a slice that must be exactly 32 bytes long (the slice is not zeroed).
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let mut key = Zeroizing::new([0u8; DATA_KEY_LEN]);
        if bytes.len() != DATA_KEY_LEN {
            return None;
        }
        key.copy_from_slice(bytes);
        Some(DataKeyBytes(key))
    }

    /// A fresh random key (tests and tools).
    pub fn random() -> Self {
        let mut key = Zeroizing::new([0u8; DATA_KEY_LEN]);
        rand::rngs::OsRng.fill_bytes(key.as_mut_slice());
        DataKeyBytes(key)
    }

    pub fn expose(&self) -> &[u8; DATA_KEY_LEN] {
        &self.0
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(self.0.as_ref().into())
    }
}

impl fmt::Debug for DataKeyBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKeyBytes(<redacted>)")
    }
}

/// Why sealing or unsealing failed. No message contains key or plaintext material.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("the input is empty: not a sealed file")]
    Empty,
    #[error("not a repocrypt sealed file (no RCSEAL magic bytes)")]
    NotSealed,
    #[error("the input ends inside the {HEADER_LEN}-byte header ({0} bytes): truncated")]
    TruncatedHeader(usize),
    #[error("sealed with format version {0}; this build reads version {FORMAT_VERSION} only")]
    UnsupportedVersion(u8),
    #[error("malformed header: {0}")]
    BadHeader(&'static str),
    #[error("segment size {0} is out of range ({MIN_SEGMENT_SIZE}..={MAX_SEGMENT_SIZE} bytes)")]
    SegmentSize(u32),
    #[error("the tenant id must not be empty")]
    EmptyTenant,
    #[error("the file was sealed for repository {sealed}, not for repository {expected}")]
    WrongRepository { sealed: u32, expected: u32 },
    #[error("segment {index} failed authentication: {hint}")]
    Authentication { index: u64, hint: &'static str },
    #[error(
        "the file is truncated: it ends after segment {last_present} without its last segment"
    )]
    MissingLastSegment { last_present: u64 },
    #[error("the file is truncated: it ends inside segment {index}")]
    Truncated { index: u64 },
    #[error("the input is too large for one sealed file (2^32 - 1 segments at most)")]
    TooManySegments,
    #[error("cancelled")]
    Cancelled,
}

impl SealError {
    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> SealError {
        let what = what.into();
        move |source| SealError::Io { what, source }
    }
}

const HINT_FIRST: &str = "wrong data key, tenant or repository, or the file is damaged";
const HINT_LATER: &str =
    "the file is damaged, truncated, reordered, spliced or has bytes after its end";

/// What a [`seal`] or [`unseal`] processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    /// Plaintext bytes (read by `seal`, written by `unseal`).
    pub plaintext_bytes: u64,
    /// Segments (at least one: an empty input is one empty last segment).
    pub segments: u64,
    /// Sealed bytes (written by `seal`, read by `unseal`), header included.
    pub sealed_bytes: u64,
}

/// The parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub segment_size: u32,
    pub repo_id: u32,
    pub nonce_prefix: [u8; NONCE_PREFIX_LEN],
}

impl Header {
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..6].copy_from_slice(&MAGIC);
        out[6] = FORMAT_VERSION;
        out[7] = 0; // flags
        out[8..12].copy_from_slice(&self.segment_size.to_be_bytes());
        out[12..16].copy_from_slice(&self.repo_id.to_be_bytes());
        out[16..23].copy_from_slice(&self.nonce_prefix);
        out
    }

    /// Parses (but cannot authenticate: that is the segments' job) a header.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<Header, SealError> {
        if bytes[..6] != MAGIC {
            return Err(SealError::NotSealed);
        }
        if bytes[6] != FORMAT_VERSION {
            return Err(SealError::UnsupportedVersion(bytes[6]));
        }
        if bytes[7] != 0 {
            return Err(SealError::BadHeader("unknown flags"));
        }
        let segment_size = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        check_segment_size(segment_size)?;
        let repo_id = u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        nonce_prefix.copy_from_slice(&bytes[16..23]);
        Ok(Header {
            segment_size,
            repo_id,
            nonce_prefix,
        })
    }

    /// Reads and parses the header of a sealed stream.
    pub fn read_from(input: &mut impl Read) -> Result<Header, SealError> {
        let mut bytes = [0u8; HEADER_LEN];
        let n = read_up_to(input, &mut bytes).map_err(SealError::io("cannot read the input"))?;
        match n {
            0 => Err(SealError::Empty),
            // The magic is checked first so that a short non-sealed file says so.
            n if bytes[..n.min(MAGIC.len())] != MAGIC[..n.min(MAGIC.len())] => {
                Err(SealError::NotSealed)
            }
            n if n < HEADER_LEN => Err(SealError::TruncatedHeader(n)),
            _ => Header::parse(&bytes),
        }
    }
}

fn check_segment_size(size: u32) -> Result<(), SealError> {
    if (MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&size) {
        Ok(())
    } else {
        Err(SealError::SegmentSize(size))
    }
}

/// The associated data of every segment: the header, then the repo id and the tenant id
/// the caller expects (length-prefixed, so no two (tenant, repo) pairs share an AAD).
fn associated_data(header: &[u8; HEADER_LEN], tenant: &str, repo_id: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(HEADER_LEN + 8 + tenant.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(&repo_id.to_be_bytes());
    // Tenant ids are at most 1000 characters; anything longer than u32 is unrepresentable
    // anyway and is refused by the callers' validation.
    aad.extend_from_slice(&(tenant.len() as u32).to_be_bytes());
    aad.extend_from_slice(tenant.as_bytes());
    aad
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_up_to(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Appends bytes from `input` to `buf` until it holds `target` bytes or the input ends.
fn fill_to(input: &mut impl Read, buf: &mut Vec<u8>, target: usize) -> io::Result<()> {
    let start = buf.len();
    if start >= target {
        return Ok(());
    }
    buf.resize(target, 0);
    match read_up_to(input, &mut buf[start..]) {
        Ok(n) => {
            buf.truncate(start + n);
            Ok(())
        }
        Err(e) => {
            buf.truncate(start);
            Err(e)
        }
    }
}

/// Seals `input` into `output` with the default segment size. `progress` is called after
/// each segment with the input bytes consumed so far. Returns what was processed.
pub fn seal(
    key: &DataKeyBytes,
    tenant: &str,
    repo_id: u32,
    input: impl Read,
    output: impl Write,
    progress: impl FnMut(u64),
) -> Result<Sealed, SealError> {
    seal_with_segment_size(
        key,
        tenant,
        repo_id,
        DEFAULT_SEGMENT_SIZE,
        input,
        output,
        progress,
    )
}

/// [`seal`] with a chosen segment size ([`MIN_SEGMENT_SIZE`]..=[`MAX_SEGMENT_SIZE`]).
pub fn seal_with_segment_size(
    key: &DataKeyBytes,
    tenant: &str,
    repo_id: u32,
    segment_size: u32,
    mut input: impl Read,
    mut output: impl Write,
    mut progress: impl FnMut(u64),
) -> Result<Sealed, SealError> {
    check_segment_size(segment_size)?;
    if tenant.is_empty() {
        return Err(SealError::EmptyTenant);
    }
    let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce_prefix);
    let header = Header {
        segment_size,
        repo_id,
        nonce_prefix,
    }
    .to_bytes();
    let aad = associated_data(&header, tenant, repo_id);
    let mut encryptor = EncryptorBE32::from_aead(key.cipher(), (&nonce_prefix).into());

    output
        .write_all(&header)
        .map_err(SealError::io("cannot write the output"))?;
    let seg = segment_size as usize;
    // One segment, one byte of look-ahead (to know whether this segment is the last), and
    // room for the tag: the only buffer, whatever the input's size.
    let mut buf = Zeroizing::new(Vec::with_capacity(seg + TAG_LEN + 1));
    let mut stats = Sealed {
        plaintext_bytes: 0,
        segments: 0,
        sealed_bytes: HEADER_LEN as u64,
    };
    loop {
        fill_to(&mut input, &mut buf, seg + 1).map_err(SealError::io("cannot read the input"))?;
        if buf.len() <= seg {
            let n = buf.len();
            encryptor
                .encrypt_last_in_place(&aad, &mut *buf)
                .map_err(|_| SealError::TooManySegments)?;
            output
                .write_all(&buf)
                .map_err(SealError::io("cannot write the output"))?;
            output
                .flush()
                .map_err(SealError::io("cannot write the output"))?;
            stats.plaintext_bytes += n as u64;
            stats.segments += 1;
            stats.sealed_bytes += buf.len() as u64;
            progress(stats.plaintext_bytes);
            return Ok(stats);
        }
        // A full segment and at least one more byte: this segment is not the last.
        let carry = buf[seg];
        buf.truncate(seg);
        encryptor
            .encrypt_next_in_place(&aad, &mut *buf)
            .map_err(|_| SealError::TooManySegments)?;
        output
            .write_all(&buf)
            .map_err(SealError::io("cannot write the output"))?;
        stats.plaintext_bytes += seg as u64;
        stats.segments += 1;
        stats.sealed_bytes += buf.len() as u64;
        progress(stats.plaintext_bytes);
        buf.clear();
        buf.push(carry);
    }
}

/// Unseals `input` (sealed for `tenant` and `repo_id` under `key`) into `output`.
///
/// Each segment is written only after it is authenticated, but a failure can come after
/// some segments were written: on `Err`, whatever reached `output` must be discarded
/// ([`unseal_file`] does so). On `Ok`, `output` holds exactly the sealed input.
/// `progress` is called after each segment with the input bytes consumed so far.
pub fn unseal(
    key: &DataKeyBytes,
    tenant: &str,
    repo_id: u32,
    mut input: impl Read,
    mut output: impl Write,
    mut progress: impl FnMut(u64),
) -> Result<Sealed, SealError> {
    if tenant.is_empty() {
        return Err(SealError::EmptyTenant);
    }
    let header = Header::read_from(&mut input)?;
    if header.repo_id != repo_id {
        return Err(SealError::WrongRepository {
            sealed: header.repo_id,
            expected: repo_id,
        });
    }
    let header_bytes = header.to_bytes();
    let aad = associated_data(&header_bytes, tenant, repo_id);
    let nonce = (&header.nonce_prefix).into();
    let mut decryptor = DecryptorBE32::from_aead(key.cipher(), nonce);

    let chunk = header.segment_size as usize + TAG_LEN;
    let mut buf = Zeroizing::new(Vec::with_capacity(chunk + 1));
    let mut stats = Sealed {
        plaintext_bytes: 0,
        segments: 0,
        sealed_bytes: HEADER_LEN as u64,
    };
    let hint = |index: u64| if index == 0 { HINT_FIRST } else { HINT_LATER };
    loop {
        let index = stats.segments;
        fill_to(&mut input, &mut buf, chunk + 1).map_err(SealError::io("cannot read the input"))?;
        if buf.len() <= chunk {
            // The last segment.
            if buf.len() < TAG_LEN {
                return Err(SealError::Truncated { index });
            }
            let sealed_len = buf.len() as u64;
            // A full-length final chunk that is not sealed as the last segment but as an
            // inner one means the real last segment was cut off: keep a copy to tell.
            let copy = (buf.len() == chunk).then(|| Zeroizing::new(buf.to_vec()));
            if decryptor.decrypt_last_in_place(&aad, &mut *buf).is_err() {
                if let Some(mut copy) = copy {
                    let probe = StreamBE32::from_aead(key.cipher(), nonce);
                    let as_inner = u32::try_from(index)
                        .is_ok_and(|i| probe.decrypt_in_place(i, false, &aad, &mut *copy).is_ok());
                    if as_inner {
                        return Err(SealError::MissingLastSegment {
                            last_present: index,
                        });
                    }
                }
                return Err(SealError::Authentication {
                    index,
                    hint: hint(index),
                });
            }
            output
                .write_all(&buf)
                .map_err(SealError::io("cannot write the output"))?;
            output
                .flush()
                .map_err(SealError::io("cannot write the output"))?;
            stats.plaintext_bytes += buf.len() as u64;
            stats.segments += 1;
            stats.sealed_bytes += sealed_len;
            progress(stats.sealed_bytes);
            return Ok(stats);
        }
        let carry = buf[chunk];
        buf.truncate(chunk);
        if index >= u64::from(u32::MAX) {
            return Err(SealError::TooManySegments);
        }
        decryptor
            .decrypt_next_in_place(&aad, &mut *buf)
            .map_err(|_| SealError::Authentication {
                index,
                hint: hint(index),
            })?;
        output
            .write_all(&buf)
            .map_err(SealError::io("cannot write the output"))?;
        stats.plaintext_bytes += buf.len() as u64;
        stats.segments += 1;
        stats.sealed_bytes += chunk as u64;
        progress(stats.sealed_bytes);
        buf.clear();
        buf.push(carry);
    }
}

/// A file being written beside its final path; renamed into place by [`Partial::commit`],
/// removed when dropped uncommitted.
struct Partial {
    file: Option<File>,
    temp: PathBuf,
    target: PathBuf,
}

impl Partial {
    fn create(target: &Path) -> Result<Partial, SealError> {
        let name = target
            .file_name()
            .ok_or_else(|| SealError::Io {
                what: format!("output {}", target.display()),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a file name"),
            })?
            .to_string_lossy()
            .into_owned();
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut tag = [0u8; 4];
        rand::rngs::OsRng.fill_bytes(&mut tag);
        let temp = dir.join(format!("{name}.{}.partial", hex::encode(tag)));
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options
            .open(&temp)
            .map_err(SealError::io(format!("cannot create {}", temp.display())))?;
        Ok(Partial {
            file: Some(file),
            temp,
            target: target.to_path_buf(),
        })
    }

    fn file(&mut self) -> Result<&mut File, SealError> {
        self.file.as_mut().ok_or(SealError::Cancelled)
    }

    fn commit(mut self) -> Result<(), SealError> {
        let file = self.file.take().ok_or(SealError::Cancelled)?;
        file.sync_all().map_err(SealError::io(format!(
            "cannot write {}",
            self.temp.display()
        )))?;
        drop(file);
        fs::rename(&self.temp, &self.target).map_err(SealError::io(format!(
            "cannot rename {} to {}",
            self.temp.display(),
            self.target.display()
        )))?;
        // Committed: nothing left to remove.
        self.temp = PathBuf::new();
        if let Some(dir) = self.target.parent().filter(|p| !p.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        self.file = None;
        if !self.temp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// A reader that fails once `cancel` is set (checked on every read).
struct Cancellable<'a, R> {
    inner: R,
    cancel: &'a AtomicBool,
}

impl<R: Read> Read for Cancellable<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(io::Error::other("cancelled"));
        }
        self.inner.read(buf)
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Which way a file goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Seal,
    Unseal,
}

/// Seals or unseals the file `input` into `output` through `output`'s `*.partial` sibling:
/// `output` appears (or is replaced) only on success, complete and synced; on failure the
/// partial file is removed and an existing `output` is left as it was. Setting `cancel`
/// stops the work at the next read and fails with [`SealError::Cancelled`].
#[allow(clippy::too_many_arguments)]
pub fn process_file(
    direction: Direction,
    key: &DataKeyBytes,
    tenant: &str,
    repo_id: u32,
    input: &Path,
    output: &Path,
    cancel: &AtomicBool,
    progress: impl FnMut(u64),
) -> Result<Sealed, SealError> {
    if same_file(input, output) {
        return Err(SealError::Io {
            what: format!("{} is both the input and the output", input.display()),
            source: io::Error::new(io::ErrorKind::InvalidInput, "choose another output"),
        });
    }
    let reader =
        File::open(input).map_err(SealError::io(format!("cannot open {}", input.display())))?;
    let reader = Cancellable {
        inner: reader,
        cancel,
    };
    let mut partial = Partial::create(output)?;
    let outcome = match direction {
        Direction::Seal => seal(key, tenant, repo_id, reader, partial.file()?, progress),
        Direction::Unseal => unseal(key, tenant, repo_id, reader, partial.file()?, progress),
    };
    match outcome {
        Ok(stats) => {
            partial.commit()?;
            Ok(stats)
        }
        Err(SealError::Io { source, .. }) if cancel.load(Ordering::Relaxed) => {
            drop(source);
            Err(SealError::Cancelled)
        }
        Err(e) => Err(e),
    }
}

/// [`process_file`] sealing `input` into `output`.
pub fn seal_file(
    key: &DataKeyBytes,
    tenant: &str,
    repo_id: u32,
    input: &Path,
    output: &Path,
    progress: impl FnMut(u64),
) -> Result<Sealed, SealError> {
    let never = AtomicBool::new(false);
    process_file(
        Direction::Seal,
        key,
        tenant,
        repo_id,
        input,
        output,
        &never,
        progress,
    )
}

/// [`process_file`] unsealing `input` into `output`.
pub fn unseal_file(
    key: &DataKeyBytes,
    tenant: &str,
    repo_id: u32,
    input: &Path,
    output: &Path,
    progress: impl FnMut(u64),
) -> Result<Sealed, SealError> {
    let never = AtomicBool::new(false);
    process_file(
        Direction::Unseal,
        key,
        tenant,
        repo_id,
        input,
        output,
        &never,
        progress,
    )
}

// ---- the command line ---------------------------------------------------------------

/// `repo seal` / `repo unseal`: fetch the repository's data key from the key broker and
/// seal or unseal one file. Credentials come from the environment: `REPOCRYPT_TOKEN`
/// (sent as `X-Auth-Token`), else `REPOCRYPT_ACCESS_KEY` and `REPOCRYPT_SECRET_KEY`
/// (AK/SK, `SDK-HMAC-SHA256`).
#[derive(Debug, clap::Args)]
pub struct SealArgs {
    /// Base URL of the key broker, e.g. http://127.0.0.1:8080 (https needs --ca-file).
    #[arg(long, value_name = "URL")]
    pub endpoint: String,
    /// Tenant (domain) id the repository belongs to.
    #[arg(long, value_name = "T")]
    pub tenant: String,
    /// Repository id.
    #[arg(long = "repo-id", value_name = "N")]
    pub repo_id: u32,
    /// File to read.
    #[arg(long = "in", value_name = "FILE")]
    pub input: PathBuf,
    /// File to write (replaced only once complete; a `*.partial` sibling is written first).
    #[arg(long = "out", value_name = "FILE")]
    pub output: PathBuf,
    /// PEM file of the CA certificate(s) to trust for an https endpoint.
    #[arg(long = "ca-file", value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
}

impl From<SealError> for Error {
    fn from(e: SealError) -> Error {
        Error::InvalidArgument(e.to_string())
    }
}

/// Runs `repo seal` (`unseal == false`) or `repo unseal`. Prints nothing on stdout; a
/// progress bar on stderr when it is a terminal, and a one-line summary on stderr.
pub async fn run(args: &SealArgs, unseal: bool) -> Result<(), Error> {
    let credentials = Credentials::from_env()?;
    run_with_credentials(args, unseal, credentials).await
}

/// [`run`] with credentials from elsewhere than the environment.
pub async fn run_with_credentials(
    args: &SealArgs,
    unseal: bool,
    credentials: Credentials,
) -> Result<(), Error> {
    use std::io::IsTerminal;

    let tenant = TenantId::parse(args.tenant.clone())?;
    let client = KeyBrokerClient::new(&args.endpoint, args.ca_file.as_deref(), credentials)?;
    if !args.input.is_file() {
        return Err(Error::InvalidArgument(format!(
            "--in {}: not a readable file",
            args.input.display()
        )));
    }
    let input_len = fs::metadata(&args.input).map(|m| m.len()).unwrap_or(0);
    // Follow the revocations first: every change after the stream is open reaches us, and
    // one before it refuses the fetch itself.
    let mut events = match client.open_events().await {
        Ok(stream) => Some(stream),
        Err(e) => {
            eprintln!("warning: not following revocations ({e}); the data key is held until the work ends");
            None
        }
    };
    let fetched = client.fetch_data_key(tenant.as_str(), args.repo_id).await?;
    let cmk_key_id = fetched.cmk_key_id.clone();

    let direction = if unseal {
        Direction::Unseal
    } else {
        Direction::Seal
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(input_len);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(if unseal { "unsealing" } else { "sealing" });
        bar
    });
    let cancel = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let job = {
        let cancel = Arc::clone(&cancel);
        let bar = bar.clone();
        let tenant = tenant.as_str().to_owned();
        let (input, output, repo_id) = (args.input.clone(), args.output.clone(), args.repo_id);
        let key = fetched.key;
        tokio::task::spawn_blocking(move || {
            process_file(
                direction,
                &key,
                &tenant,
                repo_id,
                &input,
                &output,
                &cancel,
                |done| {
                    if let Some(bar) = &bar {
                        bar.set_position(done);
                    }
                },
            )
        })
    };
    tokio::pin!(job);
    let revoked = async {
        let Some(stream) = events.as_mut() else {
            return std::future::pending().await;
        };
        match stream
            .revocation(tenant.as_str(), args.repo_id, &cmk_key_id)
            .await
        {
            Ok(revocation) => revocation,
            Err(e) => {
                eprintln!("warning: no longer following revocations ({e}); the data key is held until the work ends");
                std::future::pending().await
            }
        }
    };
    let joined = tokio::select! {
        joined = &mut job => joined,
        Ok(()) = tokio::signal::ctrl_c() => {
            cancel.store(true, Ordering::Relaxed);
            job.await
        }
        revocation = revoked => {
            // Stop at the next read; the key goes with the task, the partial file with it.
            cancel.store(true, Ordering::Relaxed);
            let _ = job.await;
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            return Err(Error::InvalidArgument(format!(
                "stopped {}: the data key of repository {} was revoked ({revocation}); {} was not written",
                if unseal { "unsealing" } else { "sealing" },
                args.repo_id,
                args.output.display()
            )));
        }
    };
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let stats =
        joined.map_err(|e| Error::Internal(format!("the {direction:?} task failed: {e}")))??;
    let secs = started.elapsed();
    eprintln!("{}", summary(direction, &stats, secs));
    Ok(())
}

fn summary(direction: Direction, stats: &Sealed, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let mib_s = if secs > 0.0 {
        stats.plaintext_bytes as f64 / (1024.0 * 1024.0) / secs
    } else {
        0.0
    };
    let verb = match direction {
        Direction::Seal => "sealed",
        Direction::Unseal => "unsealed",
    };
    format!(
        "{verb} {} bytes ({} sealed) in {} segment{} in {secs:.2} s ({mib_s:.1} MiB/s)",
        stats.plaintext_bytes,
        stats.sealed_bytes,
        stats.segments,
        if stats.segments == 1 { "" } else { "s" },
    )
}

#[cfg(test)]
mod tests;
