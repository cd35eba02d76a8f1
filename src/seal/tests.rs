use std::io::Cursor;

use super::*;

const TENANT: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a0";
const REPO: u32 = 7;

fn key() -> DataKeyBytes {
    DataKeyBytes::new([0x42; 32])
}

/// Deterministic pseudo-random bytes (xorshift64*), so failures reproduce.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut rng = XorShift(seed | 1);
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn seal_bytes(plain: &[u8], segment: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let stats =
        seal_with_segment_size(&key(), TENANT, REPO, segment, plain, &mut out, |_| {}).unwrap();
    assert_eq!(stats.plaintext_bytes, plain.len() as u64);
    assert_eq!(stats.sealed_bytes, out.len() as u64);
    out
}

fn unseal_bytes(sealed: &[u8]) -> Result<Vec<u8>, SealError> {
    unseal_as(sealed, &key(), TENANT, REPO)
}

fn unseal_as(
    sealed: &[u8],
    key: &DataKeyBytes,
    tenant: &str,
    repo: u32,
) -> Result<Vec<u8>, SealError> {
    let mut out = Vec::new();
    unseal(key, tenant, repo, sealed, &mut out, |_| {})?;
    Ok(out)
}

fn segments_of(len: usize, segment: usize) -> u64 {
    len.div_ceil(segment).max(1) as u64
}

#[test]
fn round_trip_boundary_sizes_default_segment() {
    let seg = DEFAULT_SEGMENT_SIZE as usize;
    for (i, len) in [0, 1, seg - 1, seg, seg + 1, 3 * seg, 3 * seg + 7]
        .into_iter()
        .enumerate()
    {
        let plain = bytes(len, i as u64);
        let sealed = seal_bytes(&plain, DEFAULT_SEGMENT_SIZE);
        let segments = segments_of(len, seg);
        assert_eq!(
            sealed.len() as u64,
            HEADER_LEN as u64 + len as u64 + segments * TAG_LEN as u64,
            "size {len}"
        );
        let mut out = Vec::new();
        let stats = unseal(&key(), TENANT, REPO, &sealed[..], &mut out, |_| {}).unwrap();
        assert_eq!(out, plain, "size {len}");
        assert_eq!(stats.segments, segments);
        assert_eq!(stats.plaintext_bytes, len as u64);
    }
}

#[test]
fn round_trip_random_sizes_small_segments() {
    let mut rng = XorShift(0x5eed);
    for round in 0..200 {
        let segment = MIN_SEGMENT_SIZE + (rng.next() % 100) as u32;
        let len = (rng.next() % 2000) as usize;
        let plain = bytes(len, round);
        let sealed = seal_bytes(&plain, segment);
        assert_eq!(
            unseal_bytes(&sealed).unwrap(),
            plain,
            "len {len} seg {segment}"
        );
    }
}

#[test]
fn seal_accepts_short_reads() {
    // A reader that returns one byte at a time still gives full segments.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() || buf.is_empty() {
                return Ok(0);
            }
            buf[0] = self.0[0];
            self.0 = &self.0[1..];
            Ok(1)
        }
    }
    let plain = bytes(1000, 3);
    let mut sealed = Vec::new();
    seal_with_segment_size(
        &key(),
        TENANT,
        REPO,
        64,
        Trickle(&plain),
        &mut sealed,
        |_| {},
    )
    .unwrap();
    // The same segmentation as from a slice reader.
    assert_eq!(sealed.len(), seal_bytes(&plain, 64).len());
    let mut out = Vec::new();
    unseal(&key(), TENANT, REPO, Trickle(&sealed), &mut out, |_| {}).unwrap();
    assert_eq!(out, plain);
}

#[test]
fn each_seal_has_a_fresh_nonce_prefix() {
    let a = seal_bytes(b"same", 64);
    let b = seal_bytes(b"same", 64);
    assert_ne!(a[16..23], b[16..23]);
    assert_ne!(a[HEADER_LEN..], b[HEADER_LEN..]);
}

#[test]
fn header_layout() {
    let sealed = seal_bytes(b"x", 4096);
    assert_eq!(&sealed[..6], b"RCSEAL");
    assert_eq!(sealed[6], 1);
    assert_eq!(sealed[7], 0);
    assert_eq!(sealed[8..12], 4096u32.to_be_bytes());
    assert_eq!(sealed[12..16], REPO.to_be_bytes());
    let header = Header::parse(sealed[..HEADER_LEN].try_into().unwrap()).unwrap();
    assert_eq!(header.segment_size, 4096);
    assert_eq!(header.repo_id, REPO);
    assert_eq!(header.to_bytes()[..], sealed[..HEADER_LEN]);
}

#[test]
fn progress_reports_consumed_input() {
    let plain = bytes(1000, 9);
    let mut seen = Vec::new();
    let mut sealed = Vec::new();
    seal_with_segment_size(&key(), TENANT, REPO, 256, &plain[..], &mut sealed, |n| {
        seen.push(n)
    })
    .unwrap();
    assert_eq!(seen, vec![256, 512, 768, 1000]);
    let mut seen = Vec::new();
    unseal(&key(), TENANT, REPO, &sealed[..], io::sink(), |n| {
        seen.push(n)
    })
    .unwrap();
    assert_eq!(seen.last().copied(), Some(sealed.len() as u64));
    assert_eq!(seen.len(), 4);
}

// ---- what must fail -----------------------------------------------------------------

const SEG: u32 = 64;
const CHUNK: usize = SEG as usize + TAG_LEN;

/// Three full segments and a short last one.
fn sample() -> (Vec<u8>, Vec<u8>) {
    let plain = bytes(3 * SEG as usize + 10, 11);
    let sealed = seal_bytes(&plain, SEG);
    assert_eq!(sealed.len(), HEADER_LEN + 3 * CHUNK + 10 + TAG_LEN);
    (plain, sealed)
}

fn segment(sealed: &[u8], i: usize) -> &[u8] {
    let start = HEADER_LEN + i * CHUNK;
    &sealed[start..(start + CHUNK).min(sealed.len())]
}

#[test]
fn every_single_bit_flip_fails() {
    let (_, sealed) = seal_bytes_pair(40);
    for byte in 0..sealed.len() {
        for bit in 0..8 {
            let mut damaged = sealed.clone();
            damaged[byte] ^= 1 << bit;
            assert!(
                unseal_bytes(&damaged).is_err(),
                "flip of bit {bit} of byte {byte} went unnoticed"
            );
        }
    }
}

fn seal_bytes_pair(len: usize) -> (Vec<u8>, Vec<u8>) {
    // Two segments of 16 and a short third, so that the flips cover inner and last
    // segments and the header.
    let plain = bytes(len, 12);
    let sealed = seal_bytes(&plain, 16);
    (plain, sealed)
}

#[test]
fn bit_flip_in_header_fields() {
    let (_, sealed) = sample();
    // Version.
    let mut v = sealed.clone();
    v[6] = 2;
    assert!(matches!(
        unseal_bytes(&v),
        Err(SealError::UnsupportedVersion(2))
    ));
    // Flags.
    let mut f = sealed.clone();
    f[7] = 1;
    assert!(matches!(unseal_bytes(&f), Err(SealError::BadHeader(_))));
    // Segment size, still in range: authentication fails (the header is the AAD).
    let mut s = sealed.clone();
    s[11] ^= 0x01;
    assert!(matches!(
        unseal_bytes(&s),
        Err(SealError::Authentication { index: 0, .. })
    ));
    // Segment size out of range.
    let mut s = sealed.clone();
    s[8] = 0xff;
    assert!(matches!(unseal_bytes(&s), Err(SealError::SegmentSize(_))));
    // Nonce prefix.
    let mut n = sealed.clone();
    n[20] ^= 0x80;
    assert!(matches!(
        unseal_bytes(&n),
        Err(SealError::Authentication { index: 0, .. })
    ));
    // Magic.
    let mut m = sealed.clone();
    m[0] = b'X';
    assert!(matches!(unseal_bytes(&m), Err(SealError::NotSealed)));
}

#[test]
fn truncation_at_every_length_fails() {
    let (_, sealed) = sample();
    for len in 0..sealed.len() {
        let err = unseal_bytes(&sealed[..len]).unwrap_err();
        match len {
            0 => assert!(matches!(err, SealError::Empty)),
            n if n < HEADER_LEN => assert!(matches!(err, SealError::TruncatedHeader(_)), "{n}"),
            _ => {}
        }
    }
}

#[test]
fn missing_last_segment_is_named() {
    let (_, sealed) = sample();
    // Cut exactly after segment 2 (the third full one): the short last one is missing.
    let cut = &sealed[..HEADER_LEN + 3 * CHUNK];
    let err = unseal_bytes(cut).unwrap_err();
    assert!(
        matches!(err, SealError::MissingLastSegment { last_present: 2 }),
        "{err}"
    );
    assert!(err.to_string().contains("truncated"));
    // Exactly N segments, the last full: cutting off the whole last segment.
    let plain = bytes(3 * SEG as usize, 13);
    let sealed = seal_bytes(&plain, SEG);
    assert_eq!(sealed.len(), HEADER_LEN + 3 * CHUNK);
    assert_eq!(unseal_bytes(&sealed).unwrap(), plain);
    let err = unseal_bytes(&sealed[..HEADER_LEN + 2 * CHUNK]).unwrap_err();
    assert!(matches!(
        err,
        SealError::MissingLastSegment { last_present: 1 }
    ));
    // Only the header left.
    assert!(matches!(
        unseal_bytes(&sealed[..HEADER_LEN]).unwrap_err(),
        SealError::Truncated { index: 0 }
    ));
}

#[test]
fn reordered_segments_fail() {
    let (_, sealed) = sample();
    let mut swapped = sealed[..HEADER_LEN].to_vec();
    swapped.extend_from_slice(segment(&sealed, 1));
    swapped.extend_from_slice(segment(&sealed, 0));
    swapped.extend_from_slice(segment(&sealed, 2));
    swapped.extend_from_slice(segment(&sealed, 3));
    assert_eq!(swapped.len(), sealed.len());
    assert!(matches!(
        unseal_bytes(&swapped),
        Err(SealError::Authentication { index: 0, .. })
    ));
}

#[test]
fn duplicated_segment_fails() {
    let (_, sealed) = sample();
    let mut dup = sealed[..HEADER_LEN].to_vec();
    dup.extend_from_slice(segment(&sealed, 0));
    dup.extend_from_slice(segment(&sealed, 1));
    dup.extend_from_slice(segment(&sealed, 1));
    dup.extend_from_slice(segment(&sealed, 2));
    dup.extend_from_slice(segment(&sealed, 3));
    assert!(matches!(
        unseal_bytes(&dup),
        Err(SealError::Authentication { index: 2, .. })
    ));
    // A segment dropped from the middle.
    let mut dropped = sealed[..HEADER_LEN].to_vec();
    dropped.extend_from_slice(segment(&sealed, 0));
    dropped.extend_from_slice(segment(&sealed, 2));
    dropped.extend_from_slice(segment(&sealed, 3));
    assert!(matches!(
        unseal_bytes(&dropped),
        Err(SealError::Authentication { index: 1, .. })
    ));
}

#[test]
fn trailing_garbage_fails() {
    let (_, sealed) = sample();
    for extra in [1usize, 15, 16, 17, CHUNK, CHUNK + 1, 1000] {
        let mut long = sealed.clone();
        long.extend(std::iter::repeat_n(0u8, extra));
        assert!(
            unseal_bytes(&long).is_err(),
            "{extra} trailing bytes accepted"
        );
    }
    // A full-segment file followed by garbage, and one followed by a copy of itself.
    let plain = bytes(2 * SEG as usize, 14);
    let sealed = seal_bytes(&plain, SEG);
    let mut long = sealed.clone();
    long.push(0);
    assert!(unseal_bytes(&long).is_err());
    let mut twice = sealed.clone();
    twice.extend_from_slice(&sealed[HEADER_LEN..]);
    assert!(unseal_bytes(&twice).is_err());
    // An empty file's single (empty, last) segment, repeated.
    let empty = seal_bytes(b"", SEG);
    assert_eq!(empty.len(), HEADER_LEN + TAG_LEN);
    assert_eq!(unseal_bytes(&empty).unwrap(), b"");
    let mut again = empty.clone();
    again.extend_from_slice(&empty[HEADER_LEN..]);
    assert!(unseal_bytes(&again).is_err());
}

#[test]
fn splicing_two_files_fails() {
    let (_, a) = sample();
    let (_, b) = sample();
    let mut spliced = a[..HEADER_LEN + CHUNK].to_vec();
    spliced.extend_from_slice(&b[HEADER_LEN + CHUNK..]);
    assert!(matches!(
        unseal_bytes(&spliced),
        Err(SealError::Authentication { index: 1, .. })
    ));
}

#[test]
fn wrong_tenant_repo_or_key_fails() {
    let (_, sealed) = sample();
    let err = unseal_as(&sealed, &key(), "another-tenant", REPO).unwrap_err();
    assert!(matches!(err, SealError::Authentication { index: 0, .. }));
    assert!(err
        .to_string()
        .contains("wrong data key, tenant or repository"));
    // A tenant that is a prefix or extension of the right one.
    assert!(unseal_as(&sealed, &key(), &TENANT[..31], REPO).is_err());
    assert!(unseal_as(&sealed, &key(), &format!("{TENANT}0"), REPO).is_err());
    // Another repository: named from the header.
    let err = unseal_as(&sealed, &key(), TENANT, 8).unwrap_err();
    assert!(matches!(
        err,
        SealError::WrongRepository {
            sealed: 7,
            expected: 8
        }
    ));
    // Another repository with the header's repo id rewritten to match: the AAD binds it.
    let mut forged = sealed.clone();
    forged[12..16].copy_from_slice(&8u32.to_be_bytes());
    assert!(matches!(
        unseal_as(&forged, &key(), TENANT, 8),
        Err(SealError::Authentication { index: 0, .. })
    ));
    // Another key.
    let other = DataKeyBytes::new([0x43; 32]);
    assert!(matches!(
        unseal_as(&sealed, &other, TENANT, REPO),
        Err(SealError::Authentication { index: 0, .. })
    ));
    // Empty input and short non-sealed files.
    assert!(matches!(unseal_bytes(b""), Err(SealError::Empty)));
    assert!(matches!(unseal_bytes(b"hello"), Err(SealError::NotSealed)));
    assert!(matches!(
        unseal_bytes(b"PK\x03\x04 a zip file, not sealed"),
        Err(SealError::NotSealed)
    ));
}

#[test]
fn rejects_bad_parameters() {
    let mut out = Vec::new();
    assert!(matches!(
        seal_with_segment_size(&key(), TENANT, REPO, 15, &b""[..], &mut out, |_| {}),
        Err(SealError::SegmentSize(15))
    ));
    assert!(matches!(
        seal_with_segment_size(
            &key(),
            TENANT,
            REPO,
            MAX_SEGMENT_SIZE + 1,
            &b""[..],
            &mut out,
            |_| {}
        ),
        Err(SealError::SegmentSize(_))
    ));
    assert!(matches!(
        seal(&key(), "", REPO, &b""[..], &mut out, |_| {}),
        Err(SealError::EmptyTenant)
    ));
    assert!(out.is_empty());
}

#[test]
fn key_debug_is_redacted_and_errors_carry_no_key() {
    let key = DataKeyBytes::new([0xAB; 32]);
    let shown = format!("{key:?}");
    assert_eq!(shown, "DataKeyBytes(<redacted>)");
    assert!(!shown.to_lowercase().contains("ab, "));
    let (_, sealed) = sample();
    let err = unseal_as(&sealed, &key, TENANT, REPO).unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains("171") && !text.to_lowercase().contains("abab"));
    assert!(DataKeyBytes::from_slice(&[0; 31]).is_none());
    assert!(DataKeyBytes::from_slice(&[0; 33]).is_none());
    assert_eq!(
        DataKeyBytes::from_slice(&[7; 32]).unwrap().expose(),
        &[7; 32]
    );
}

// ---- files: the partial-output rule ---------------------------------------------------

fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn file_round_trip_leaves_no_partial() {
    let dir = tempfile::tempdir().unwrap();
    let plain = bytes(200_000, 21);
    let input = dir.path().join("repo.tar");
    let sealed = dir.path().join("repo.tar.sealed");
    let back = dir.path().join("repo.tar.back");
    fs::write(&input, &plain).unwrap();
    let s = seal_file(&key(), TENANT, REPO, &input, &sealed, |_| {}).unwrap();
    assert_eq!(s.segments, 4);
    let u = unseal_file(&key(), TENANT, REPO, &sealed, &back, |_| {}).unwrap();
    assert_eq!(u.plaintext_bytes, plain.len() as u64);
    assert_eq!(fs::read(&back).unwrap(), plain);
    assert_eq!(
        dir_names(dir.path()),
        ["repo.tar", "repo.tar.back", "repo.tar.sealed"]
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&back).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn failed_unseal_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let plain = bytes(300_000, 22);
    let input = dir.path().join("in");
    let sealed = dir.path().join("in.sealed");
    fs::write(&input, &plain).unwrap();
    seal_file(&key(), TENANT, REPO, &input, &sealed, |_| {}).unwrap();

    // Damage the last segment: the first four segments are written before the failure.
    let mut bytes = fs::read(&sealed).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&sealed, &bytes).unwrap();
    let out = dir.path().join("out");
    let mut written = 0;
    let err = unseal_file(&key(), TENANT, REPO, &sealed, &out, |n| written = n).unwrap_err();
    assert!(
        matches!(err, SealError::Authentication { index: 4, .. }),
        "{err}"
    );
    assert!(written > 0, "segments were processed before the failure");
    assert!(!out.exists());
    assert_eq!(dir_names(dir.path()), ["in", "in.sealed"]);

    // An existing output is left as it was.
    fs::write(&out, b"previous").unwrap();
    unseal_file(&key(), TENANT, REPO, &sealed, &out, |_| {}).unwrap_err();
    assert_eq!(fs::read(&out).unwrap(), b"previous");
    // Truncated at a segment boundary, and a wrong repository: same.
    fs::write(
        &sealed,
        &bytes[..HEADER_LEN + 2 * (DEFAULT_SEGMENT_SIZE as usize + TAG_LEN)],
    )
    .unwrap();
    let err = unseal_file(&key(), TENANT, REPO, &sealed, &out, |_| {}).unwrap_err();
    assert!(matches!(err, SealError::MissingLastSegment { .. }), "{err}");
    let err = unseal_file(&key(), TENANT, 8, &sealed, &out, |_| {}).unwrap_err();
    assert!(matches!(err, SealError::WrongRepository { .. }));
    assert_eq!(fs::read(&out).unwrap(), b"previous");
    assert_eq!(dir_names(dir.path()), ["in", "in.sealed", "out"]);
}

#[test]
fn file_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    fs::write(&input, b"data").unwrap();
    // Same file in and out.
    let err = seal_file(&key(), TENANT, REPO, &input, &input, |_| {}).unwrap_err();
    assert!(err.to_string().contains("both the input and the output"));
    assert_eq!(fs::read(&input).unwrap(), b"data");
    // Missing input.
    let err = seal_file(
        &key(),
        TENANT,
        REPO,
        &dir.path().join("nope"),
        &dir.path().join("o"),
        |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("cannot open"));
    // Output in a missing directory.
    let err = seal_file(
        &key(),
        TENANT,
        REPO,
        &input,
        &dir.path().join("no/such/o"),
        |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("cannot create"));
    assert_eq!(dir_names(dir.path()), ["in"]);
}

#[test]
fn cancel_removes_the_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    fs::write(&input, bytes(500_000, 23)).unwrap();
    let out = dir.path().join("out");
    let cancel = AtomicBool::new(false);
    let err = process_file(
        Direction::Seal,
        &key(),
        TENANT,
        REPO,
        &input,
        &out,
        &cancel,
        |n| {
            if n >= 2 * u64::from(DEFAULT_SEGMENT_SIZE) {
                cancel.store(true, Ordering::Relaxed);
            }
        },
    )
    .unwrap_err();
    assert!(matches!(err, SealError::Cancelled), "{err}");
    assert_eq!(dir_names(dir.path()), ["in"]);
}

#[test]
fn summary_line() {
    let stats = Sealed {
        plaintext_bytes: 2 * 1024 * 1024,
        segments: 32,
        sealed_bytes: 2 * 1024 * 1024 + 32 * 16 + 23,
    };
    let line = summary(Direction::Seal, &stats, Duration::from_secs(2));
    assert_eq!(
        line,
        "sealed 2097152 bytes (2097687 sealed) in 32 segments in 2.00 s (1.0 MiB/s)"
    );
}

// ---- constant memory ----------------------------------------------------------------

/// A reader of `remaining` pseudo-random bytes: the same stream whatever the read sizes.
struct RandomReader {
    rng: XorShift,
    remaining: u64,
    word: [u8; 8],
    used: usize,
}

impl RandomReader {
    fn new(seed: u64, len: u64) -> Self {
        RandomReader {
            rng: XorShift(seed),
            remaining: len,
            word: [0; 8],
            used: 8,
        }
    }
}

impl Read for RandomReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        for byte in &mut buf[..n] {
            if self.used == 8 {
                self.word = self.rng.next().to_le_bytes();
                self.used = 0;
            }
            *byte = self.word[self.used];
            self.used += 1;
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// A writer that checks what it gets against the same pseudo-random stream.
struct Verifier {
    expected: RandomReader,
    checked: u64,
    buf: Vec<u8>,
}

impl Write for Verifier {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.resize(data.len(), 0);
        let n = read_up_to(&mut self.expected, &mut self.buf)?;
        if n != data.len() || self.buf[..n] != *data {
            return Err(io::Error::other(format!(
                "mismatch at byte {}",
                self.checked
            )));
        }
        self.checked += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn random_reader_ignores_read_sizes() {
    let mut a = RandomReader::new(5, 1000);
    let mut whole = Vec::new();
    a.read_to_end(&mut whole).unwrap();
    let mut b = RandomReader::new(5, 1000);
    let mut pieces = Vec::new();
    let mut buf = [0u8; 7];
    loop {
        let n = b.read(&mut buf[..3]).unwrap();
        if n == 0 {
            break;
        }
        pieces.extend_from_slice(&buf[..n]);
    }
    assert_eq!(whole.len(), 1000);
    assert_eq!(whole, pieces);
}

fn vm_hwm_kib() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Seals 1 GiB of generated data to a file in /tmp and unseals it, checking every byte,
/// and prints the time and the peak RSS. Optimised (the dev profile is far too slow):
/// `cargo test -j2 --release --lib seal::tests::one_gib -- --ignored --nocapture`, or,
/// reusing the dev build of the heavy dependencies, `scripts/seal-1gib.sh`.
#[test]
#[ignore]
fn one_gib_in_constant_memory() {
    const SIZE: u64 = 1 << 30;
    const SEED: u64 = 0x1_0000_0001;
    let before = vm_hwm_kib();
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let sealed = dir.path().join("1gib.sealed");
    let started = Instant::now();
    let file = File::create(&sealed).unwrap();
    let source = RandomReader::new(SEED, SIZE);
    let s = seal(
        &key(),
        TENANT,
        REPO,
        source,
        io::BufWriter::new(file),
        |_| {},
    )
    .unwrap();
    let seal_secs = started.elapsed().as_secs_f64();
    assert_eq!(s.plaintext_bytes, SIZE);
    assert_eq!(fs::metadata(&sealed).unwrap().len(), s.sealed_bytes);

    let started = Instant::now();
    let mut verifier = Verifier {
        expected: RandomReader::new(SEED, SIZE),
        checked: 0,
        buf: Vec::new(),
    };
    let u = unseal(
        &key(),
        TENANT,
        REPO,
        io::BufReader::new(File::open(&sealed).unwrap()),
        &mut verifier,
        |_| {},
    )
    .unwrap();
    let unseal_secs = started.elapsed().as_secs_f64();
    assert_eq!(u.plaintext_bytes, SIZE);
    assert_eq!(verifier.checked, SIZE);
    drop(dir);
    let after = vm_hwm_kib();
    println!(
        "1 GiB: seal {seal_secs:.2} s, unseal+verify {unseal_secs:.2} s, {} segments, \
         sealed {} bytes; VmHWM before {before} KiB, after {after} KiB",
        s.segments, s.sealed_bytes
    );
    // Far below the file size: one segment buffer, not the file.
    assert!(after < 64 * 1024, "peak RSS {after} KiB");
}

#[test]
fn cursor_input_works() {
    // `impl Read` by value and by reference.
    let plain = bytes(100, 30);
    let mut sealed = Cursor::new(Vec::new());
    seal(
        &key(),
        TENANT,
        REPO,
        Cursor::new(&plain),
        &mut sealed,
        |_| {},
    )
    .unwrap();
    let sealed = sealed.into_inner();
    let mut reader = &sealed[..];
    let mut out = Vec::new();
    unseal(&key(), TENANT, REPO, &mut reader, &mut out, |_| {}).unwrap();
    assert_eq!(out, plain);
}

// ---- the command line, against a local key broker ------------------------------------

async fn fake_broker() -> String {
    use axum::extract::Path as UrlPath;
    use axum::routing::get;

    async fn answer(UrlPath((_tenant, repo)): UrlPath<(String, u32)>) -> (u16, String) {
        use base64::Engine as _;
        match repo {
            7 => (
                200,
                serde_json::json!({
                    "repo_id": 7,
                    "cmk_key_id": "k-1",
                    "data_key": base64::engine::general_purpose::STANDARD.encode([0x42u8; 32]),
                    "cache_seconds": 60,
                })
                .to_string(),
            ),
            _ => (
                410,
                serde_json::json!({"error_code": "RC.410001", "error_msg": "data key destroyed"})
                    .to_string(),
            ),
        }
    }
    async fn handler(
        path: UrlPath<(String, u32)>,
    ) -> (
        axum::http::StatusCode,
        [(&'static str, &'static str); 1],
        String,
    ) {
        let (status, body) = answer(path).await;
        (
            axum::http::StatusCode::from_u16(status).unwrap(),
            [("content-type", "application/json")],
            body,
        )
    }
    let app = axum::Router::new().route(
        "/v4/tenants/{tenant}/repo-encryption/repositories/{repo_id}/data-key",
        get(handler),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn run_seals_and_unseals_with_the_fetched_key() {
    let endpoint = fake_broker().await;
    let dir = tempfile::tempdir().unwrap();
    let plain = bytes(150_000, 40);
    let input = dir.path().join("pack");
    fs::write(&input, &plain).unwrap();
    let creds = || crate::storage_client::Credentials::Token("t".to_owned().into());
    let args = |input: &Path, output: &Path, repo_id| SealArgs {
        endpoint: endpoint.clone(),
        tenant: TENANT.into(),
        repo_id,
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        ca_file: None,
    };
    let sealed = dir.path().join("pack.sealed");
    let back = dir.path().join("pack.back");
    run_with_credentials(&args(&input, &sealed, 7), false, creds())
        .await
        .unwrap();
    run_with_credentials(&args(&sealed, &back, 7), true, creds())
        .await
        .unwrap();
    assert_eq!(fs::read(&back).unwrap(), plain);
    // The key is the broker's: the library unseals with the same bytes.
    let mut out = Vec::new();
    unseal(
        &key(),
        TENANT,
        7,
        File::open(&sealed).unwrap(),
        &mut out,
        |_| {},
    )
    .unwrap();
    assert_eq!(out, plain);

    // A refusal: the error names it and no output appears.
    let refused = dir.path().join("refused");
    let err = run_with_credentials(&args(&input, &refused, 8), false, creds())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)));
    assert!(
        err.to_string()
            .contains("HTTP 410, RC.410001: data key destroyed"),
        "{err}"
    );
    assert!(!refused.exists());
    // A missing input is refused before any fetch.
    let err = run_with_credentials(&args(&dir.path().join("nope"), &refused, 7), false, creds())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a readable file"), "{err}");
    // A sealed file given to unseal for another repository.
    let err = run_with_credentials(&args(&input, &refused, 7), true, creds())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not a repocrypt sealed file"),
        "{err}"
    );
    assert_eq!(dir_names(dir.path()), ["pack", "pack.back", "pack.sealed"]);
}
