//! The cell key method: every person carries a secret record key, a cell's key derives
//! from the keys of the persons behind it, and a published perturbation table (p-table)
//! maps (persons, cell key) to a small perturbation.
//!
//! The same persons always get the same cell key, so asking again (or asking for the same
//! persons through different SQL) gives the same answer and nothing new; sets that differ
//! by one person get unrelated keys. The record keys come from a keyed hash (SipHash-2-4)
//! of the pseudonym under a gateway secret that is never stored beside the data and never
//! shown; without it nobody can compute a cell key, so nobody can undo a perturbation.

use std::io::Write;
use std::path::Path;

/// Largest perturbation the p-table gives, in persons (or in units of the largest
/// flattened contribution for magnitudes).
pub const MAX_PERTURBATION: i64 = 3;

/// Probability of a perturbation of 0, ±1, ±2, ±3 (each sign) for three or more persons.
/// For one or two persons the support is cut symmetrically to ±1 or ±2 and renormalised,
/// so the perturbation always has mean zero and never makes a count negative.
pub const PTABLE: [f64; 4] = [0.30, 0.20, 0.10, 0.05];

/// The gateway secret behind every record key.
#[derive(Clone)]
pub struct RecordKey {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordKey(secret)")
    }
}

/// Why a record-key secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("record key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file holds too little.
    #[error("record key file {0}: it must hold at least 32 bytes of secret")]
    TooShort(String),
}

impl RecordKey {
    /// A secret drawn now (kept for this process only: tests and tools).
    pub fn random() -> RecordKey {
        let bytes: [u8; 32] = rand::random();
        RecordKey::from_secret(&bytes)
    }

    /// The key derived from secret bytes (at least 32).
    pub fn from_secret(secret: &[u8]) -> RecordKey {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(secret);
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&digest[i..i + 8]);
            u64::from_le_bytes(b)
        };
        RecordKey {
            k0: word(0),
            k1: word(8),
        }
    }

    /// Reads the secret from `path`, or creates it (32 random bytes, readable by the
    /// owner only) when the file does not exist yet.
    pub fn load_or_create(path: &Path) -> Result<RecordKey, KeyError> {
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read(path) {
            Ok(bytes) if bytes.len() >= 32 => Ok(RecordKey::from_secret(&bytes)),
            Ok(_) => Err(KeyError::TooShort(path.display().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(io)?;
                }
                let secret: [u8; 32] = rand::random();
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    options.mode(0o600);
                }
                match options.open(path) {
                    Ok(mut f) => {
                        f.write_all(&secret).map_err(io)?;
                        f.sync_all().map_err(io)?;
                        Ok(RecordKey::from_secret(&secret))
                    }
                    // Another process created it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        RecordKey::load_or_create(path)
                    }
                    Err(e) => Err(io(e)),
                }
            }
            Err(e) => Err(io(e)),
        }
    }

    /// A 256-bit key for another purpose (`label`), derived from this secret so that every
    /// replica sharing the record key shares it too (signing Flight tickets), and no use of
    /// one reveals the other.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"concordat derived key\0");
        h.update(self.k0.to_le_bytes());
        h.update(self.k1.to_le_bytes());
        h.update(label.as_bytes());
        h.finalize().into()
    }

    /// The record key of one pseudonym.
    pub fn of(&self, pseudonym: &[u8]) -> u64 {
        use std::hash::Hasher;
        let mut h = siphasher::sip::SipHasher24::new_with_keys(self.k0, self.k1);
        h.write(pseudonym);
        h.finish()
    }
}

/// The record key of each pseudonym in a text column; no pseudonym, no key.
pub fn record_keys(
    key: &RecordKey,
    pseudonyms: &dyn arrow::array::Array,
) -> Result<arrow::array::UInt64Array, arrow::error::ArrowError> {
    use arrow::array::AsArray;
    use arrow::datatypes::DataType;
    Ok(match pseudonyms.data_type() {
        DataType::Utf8View => pseudonyms
            .as_string_view()
            .iter()
            .map(|p| p.map(|p| key.of(p.as_bytes())))
            .collect(),
        DataType::Utf8 => pseudonyms
            .as_string::<i32>()
            .iter()
            .map(|p| p.map(|p| key.of(p.as_bytes())))
            .collect(),
        _ => {
            let text = arrow::compute::cast(pseudonyms, &DataType::Utf8)?;
            return record_keys(key, text.as_ref());
        }
    })
}

/// `record_key(pseudonym)`: the person's record key as an integer, so that disclosure
/// control groups its per-person aggregate by eight bytes, not by a 64-character text,
/// and computes each key once per row where it is read. Only the gateway's own rewrite
/// calls it; it is never registered under a name a query can use.
#[derive(Debug)]
pub struct RecordKeyFunction {
    key: std::sync::Arc<RecordKey>,
    signature: datafusion::logical_expr::Signature,
}

impl RecordKeyFunction {
    /// The function over `key`.
    pub fn udf(key: std::sync::Arc<RecordKey>) -> datafusion::logical_expr::ScalarUDF {
        datafusion::logical_expr::ScalarUDF::new_from_impl(RecordKeyFunction {
            key,
            signature: datafusion::logical_expr::Signature::string(
                1,
                datafusion::logical_expr::Volatility::Immutable,
            ),
        })
    }
}

impl PartialEq for RecordKeyFunction {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.key, &other.key)
    }
}

impl Eq for RecordKeyFunction {}

impl std::hash::Hash for RecordKeyFunction {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::ptr::hash(std::sync::Arc::as_ptr(&self.key), state);
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for RecordKeyFunction {
    fn name(&self) -> &str {
        "__concordat_record_key"
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(
        &self,
        _: &[arrow::datatypes::DataType],
    ) -> datafusion::common::Result<arrow::datatypes::DataType> {
        Ok(arrow::datatypes::DataType::UInt64)
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::common::Result<datafusion::logical_expr::ColumnarValue> {
        let arrays = datafusion::logical_expr::ColumnarValue::values_to_arrays(&args.args)?;
        let keys = record_keys(&self.key, arrays[0].as_ref())?;
        Ok(datafusion::logical_expr::ColumnarValue::Array(
            std::sync::Arc::new(keys),
        ))
    }
}

/// The cell key of a set of persons from their record keys: combined with XOR, so it does
/// not depend on the order in which they are met.
pub fn combine(cell: u64, record: u64) -> u64 {
    cell ^ record
}

fn uniform(cell_key: u64) -> f64 {
    // Finalise (splitmix64) so that keys of related sets look unrelated.
    let mut z = cell_key.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// The support and probabilities of the perturbation for `persons` persons.
pub fn distribution(persons: u64) -> Vec<(i64, f64)> {
    if persons == 0 {
        return vec![(0, 1.0)];
    }
    let m = persons.min(MAX_PERTURBATION as u64) as i64;
    let total: f64 = PTABLE[0] + 2.0 * (1..=m).map(|d| PTABLE[d as usize]).sum::<f64>();
    (-m..=m)
        .map(|d| (d, PTABLE[d.unsigned_abs() as usize] / total))
        .collect()
}

/// Variance of the perturbation for `persons` persons.
pub fn variance(persons: u64) -> f64 {
    distribution(persons)
        .iter()
        .map(|(d, p)| (*d * *d) as f64 * p)
        .sum()
}

/// The perturbation the p-table gives to a cell of `persons` persons with this key.
pub fn perturbation(persons: u64, cell_key: u64) -> i64 {
    if persons == 0 {
        return 0;
    }
    let u = uniform(cell_key);
    let mut acc = 0.0;
    let dist = distribution(persons);
    for (d, p) in &dist {
        acc += p;
        if u < acc {
            return *d;
        }
    }
    dist.last().map_or(0, |(d, _)| *d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ptable_has_zero_mean_and_its_published_bounds() {
        for n in 0..50 {
            let dist = distribution(n);
            let total: f64 = dist.iter().map(|(_, p)| p).sum();
            assert!((total - 1.0).abs() < 1e-12, "{n}");
            let mean: f64 = dist.iter().map(|(d, p)| *d as f64 * p).sum();
            assert!(mean.abs() < 1e-12, "{n}: mean {mean}");
            assert!(dist.iter().all(|(d, _)| d.abs() <= MAX_PERTURBATION));
            assert!(dist.iter().all(|(d, _)| n as i64 + d >= 0), "{n}");
        }
        assert!((variance(10) - 2.1).abs() < 1e-12);
    }

    #[test]
    fn perturbations_follow_the_table() {
        let key = RecordKey::from_secret(&[7u8; 32]);
        for n in [1u64, 2, 3, 9, 10, 100] {
            let dist = distribution(n);
            let mut seen = std::collections::HashMap::new();
            let draws = 200_000u64;
            for i in 0..draws {
                let cell = key.of(&i.to_le_bytes());
                *seen.entry(perturbation(n, cell)).or_insert(0u64) += 1;
            }
            for (d, p) in dist {
                let got = seen.get(&d).copied().unwrap_or(0) as f64 / draws as f64;
                assert!((got - p).abs() < 0.005, "n={n} d={d}: {got} vs {p}");
            }
            assert!(seen.keys().all(|d| d.abs() <= MAX_PERTURBATION));
        }
    }

    #[test]
    fn record_keys_depend_on_the_secret() {
        let a = RecordKey::from_secret(&[1u8; 32]);
        let b = RecordKey::from_secret(&[2u8; 32]);
        assert_eq!(a.of(b"p"), a.of(b"p"));
        assert_ne!(a.of(b"p"), b.of(b"p"));
        assert_ne!(a.of(b"p"), a.of(b"q"));
        assert_eq!(format!("{a:?}"), "RecordKey(secret)");
    }

    #[test]
    fn the_secret_file_is_created_once_and_survives() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("keys/record-key.secret");
        let first = RecordKey::load_or_create(&path).expect("create");
        let again = RecordKey::load_or_create(&path).expect("load");
        assert_eq!(first.of(b"x"), again.of(b"x"));
        std::fs::write(&path, b"short").expect("write");
        assert!(RecordKey::load_or_create(&path).is_err());
    }
}
