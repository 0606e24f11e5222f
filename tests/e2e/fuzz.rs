//! A mutation fuzzer over the real upload path: valid files with bytes of their footer,
//! page headers, page index and values changed at random, sent to a real server whose
//! worker decodes them. Bounded in CI (`FUZZ_FILES`, default 2000); set it
//! higher for a longer run.
//!
//! What must hold for every file: the answer is 200, 201 or 422 (never a 500, never a
//! dropped connection); a 422 commits nothing; a 201 commits a version holding exactly
//! the rows a plain Parquet reader gets from the file; the server stays up, and its
//! memory stays flat over thousands of refused files.

use std::time::Duration;

use concordat_e2e::*;

use super::fixtures::parquet;

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutation of a valid file; says what it did.
fn mutate(good: &[u8], rng: &mut Rng) -> (Vec<u8>, &'static str) {
    let mut f = good.to_vec();
    let n = f.len();
    let footer_len = u32::from_le_bytes(f[n - 8..n - 4].try_into().unwrap_or([0; 4])) as usize;
    let footer_start = n.saturating_sub(8 + footer_len);
    let extremes: [u32; 6] = [0, 1, 0x7fff_ffff, 0xffff_ffff, 0x8000_0000, 0x0fff_ffff];
    match rng.below(7) {
        0 => {
            for _ in 0..=rng.below(4) {
                let at = footer_start + rng.below(footer_len);
                f[at] ^= 1 << rng.below(8);
            }
            (f, "footer bits")
        }
        1 => {
            let at = footer_start + rng.below(footer_len.saturating_sub(4));
            let v = extremes[rng.below(extremes.len())];
            f[at..at + 4].copy_from_slice(&v.to_le_bytes());
            (f, "footer integer")
        }
        2 => {
            for _ in 0..=rng.below(8) {
                let at = 4 + rng.below(footer_start.saturating_sub(4));
                f[at] = rng.next() as u8;
            }
            (f, "page bytes")
        }
        3 => {
            let at = 4 + rng.below(footer_start.saturating_sub(8));
            let v = extremes[rng.below(extremes.len())];
            f[at..at + 4].copy_from_slice(&v.to_le_bytes());
            (f, "page header integer")
        }
        4 => {
            let len = rng.below(n);
            f.truncate(len);
            (f, "truncated")
        }
        5 => {
            let v = extremes[rng.below(extremes.len())];
            f[n - 8..n - 4].copy_from_slice(&v.to_le_bytes());
            (f, "footer length")
        }
        _ => {
            // Values only: a byte late in a data page (most likely a value, not a header).
            let at = footer_start.saturating_sub(1 + rng.below(64).min(footer_start - 5));
            f[at] = f[at].wrapping_add(1 + rng.below(250) as u8);
            (f, "value")
        }
    }
}

/// Rows a plain Parquet reader gets from the file, if it reads at all.
fn rows_read(bytes: &[u8]) -> Option<u64> {
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        bytes::Bytes::copy_from_slice(bytes),
    )
    .ok()?
    .build()
    .ok()?;
    let mut rows = 0u64;
    for b in reader {
        rows += b.ok()?.num_rows() as u64;
    }
    Some(rows)
}

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn mutated_files_of_another_force_are_all_refused_and_the_server_stays_flat() {
    // Kent's uploader sends mutations of Essex's file: whatever a mutation does, the
    // answer must be a 422 (the file is broken, or its rows are out of scope), nothing is
    // committed, and the worker, not the server, pays for decoding.
    let files = setting("FUZZ_FILES", 2000) as usize;
    let seed = setting("FUZZ_SEED", 0x5eed_c0de);
    let site = Site::new();
    let server = site.serve();
    let uploader = site.token("force-kent", "uploader,analyst");
    let essex = parquet("force_resources", &["essex"], 0.01);
    let pid = server.child.id();
    let mut rng = Rng(seed);
    let mut peak_after_warmup = 0;
    let mut kinds = std::collections::BTreeMap::new();
    for i in 0..files {
        let (bytes, what) = mutate(&essex, &mut rng);
        let (status, body) = upload(&server, &uploader, "force_resources", "append", bytes);
        assert_eq!(status, 422, "{i} ({what}, seed {seed}): {body}");
        assert_eq!(body["error"]["code"], "validation_failed", "{i}: {body}");
        let rule = body["error"]["details"]["violations"][0]["rule"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        *kinds.entry(rule).or_insert(0u32) += 1;
        if i == files / 20 {
            peak_after_warmup = memory_kib(pid).0;
        }
    }
    let peak = memory_kib(pid).0;
    eprintln!(
        "fuzz: {files} mutated out-of-scope files (seed {seed}), refused by rule {kinds:?}; server peak {peak_after_warmup} -> {peak} KiB"
    );
    assert!(
        peak < peak_after_warmup + 50 * 1024,
        "server memory grew from {peak_after_warmup} KiB to {peak} KiB"
    );
    let (status, body) = get(&server, &uploader, "/v1/datasets/force_resources");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["versions"].as_array().map(Vec::len),
        Some(0),
        "nothing was committed: {body}"
    );
}

#[test]
fn mutated_files_never_crash_leak_or_commit_what_is_invalid() {
    let files = setting("FUZZ_COMMIT_FILES", 200) as usize;
    let seed = setting("FUZZ_SEED", 0x5eed_c0de);
    let site = Site::new();
    let server = site.serve();
    let uploader = site.token("force-kent", "uploader,analyst");
    let good = parquet("force_resources", &["kent"], 0.01);
    let (status, body) = upload(
        &server,
        &uploader,
        "force_resources",
        "append",
        good.clone(),
    );
    assert_eq!(status, 201, "{body}");
    std::thread::sleep(Duration::from_millis(300));
    let mut rng = Rng(seed.wrapping_add(1));
    let mut refused_sha = std::collections::HashSet::new();
    let mut accepted_rows = std::collections::HashMap::new();
    let (mut accepted, mut refused, mut duplicates) = (0, 0, 0);
    for i in 0..files {
        let (bytes, what) = mutate(&good, &mut rng);
        let (status, body) = upload(
            &server,
            &uploader,
            "force_resources",
            "append",
            bytes.clone(),
        );
        match status {
            201 => {
                accepted += 1;
                assert_eq!(
                    body["rows"].as_u64(),
                    rows_read(&bytes),
                    "{i} ({what}): the rows committed are the rows the file holds"
                );
                accepted_rows.insert(
                    body["version"].as_u64().expect("version"),
                    body["rows"].as_u64(),
                );
            }
            200 => duplicates += 1,
            422 => {
                refused += 1;
                assert_eq!(body["error"]["code"], "validation_failed", "{i}: {body}");
                use sha2::Digest;
                refused_sha.insert(hex::encode(sha2::Sha256::digest(&bytes)));
            }
            other => panic!("{i} ({what}, seed {seed}): HTTP {other} {body}"),
        }
    }
    // Every version is the first upload, an accepted file (with its rows), or a
    // compaction; none holds a refused file.
    let (status, body) = get(&server, &uploader, "/v1/datasets/force_resources");
    assert_eq!(status, 200, "{body}");
    for v in body["versions"].as_array().expect("versions") {
        let sha = v["sha256"].as_str().unwrap_or("");
        assert!(
            !refused_sha.contains(sha),
            "a refused file was committed: {v}"
        );
        let n = v["version"].as_u64().expect("version");
        match accepted_rows.get(&n) {
            Some(rows) => assert_eq!(v["rows"].as_u64(), *rows, "{v}"),
            None => assert!(
                n == 0 || v["operation"] == "OPTIMIZE",
                "a version nobody was told of: {v}"
            ),
        }
    }
    eprintln!(
        "fuzz: {files} mutated files (seed {seed}): {accepted} accepted, {refused} refused, {duplicates} duplicates"
    );
    assert!(refused > files / 2, "most mutations break the file");
    let (status, _) = get(&server, &uploader, "/v1/me");
    assert_eq!(status, 200, "the server still serves");
}
