//! The release ledger: for each partner, a sketch of the persons behind every cell the
//! gateway has released to it. A new cell whose persons differ from a released cell's by
//! between 1 and `min_count - 1` persons would let the two answers be subtracted to
//! reveal a small group, so it is withheld. The ledger is one append-only file per
//! partner under `data/ledger/`, written and synced before the answer is released, and
//! holds sketches only, never a pseudonym.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::persons::{Persons, SKETCH_BYTES};

/// All partners' ledgers.
#[derive(Debug)]
pub struct Ledger {
    dir: PathBuf,
    partners: Mutex<HashMap<String, Arc<Mutex<PartnerLedger>>>>,
}

/// One partner's released cells, indexed by their number of persons.
#[derive(Debug)]
pub struct PartnerLedger {
    path: PathBuf,
    by_count: BTreeMap<u64, Vec<Persons>>,
    cells: usize,
}

impl Ledger {
    /// The ledgers kept under a directory.
    pub fn open(dir: &Path) -> std::io::Result<Ledger> {
        std::fs::create_dir_all(dir)?;
        Ok(Ledger {
            dir: dir.to_path_buf(),
            partners: Mutex::new(HashMap::new()),
        })
    }

    /// A partner's ledger, loaded on first use. Lock it for the whole of a release, so
    /// two answers of one partner are checked against each other too.
    pub fn partner(&self, partner: &str) -> std::io::Result<Arc<Mutex<PartnerLedger>>> {
        let mut partners = self
            .partners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(p) = partners.get(partner) {
            return Ok(p.clone());
        }
        let safe: String = partner
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let loaded = Arc::new(Mutex::new(PartnerLedger::load(
            self.dir.join(format!("{safe}.ledger")),
        )?));
        partners.insert(partner.to_owned(), loaded.clone());
        Ok(loaded)
    }
}

impl PartnerLedger {
    fn load(path: PathBuf) -> std::io::Result<PartnerLedger> {
        let mut ledger = PartnerLedger {
            path,
            by_count: BTreeMap::new(),
            cells: 0,
        };
        let mut bytes = Vec::new();
        match File::open(&ledger.path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // A torn last record (a crash mid-append) was never acknowledged: its answer was
        // not released, so dropping it loses nothing.
        for record in bytes.chunks_exact(SKETCH_BYTES) {
            if let Some(p) = Persons::from_bytes(record) {
                ledger.insert(p);
            }
        }
        Ok(ledger)
    }

    fn insert(&mut self, p: Persons) -> bool {
        let same = self.by_count.entry(p.count).or_default();
        if same.contains(&p) {
            return false;
        }
        same.push(p);
        self.cells += 1;
        true
    }

    /// Cells released so far.
    pub fn len(&self) -> usize {
        self.cells
    }

    /// Whether nothing has been released yet.
    pub fn is_empty(&self) -> bool {
        self.cells == 0
    }

    /// Whether a cell over these persons would differ from a released one by between 1
    /// and `min_count - 1` persons.
    pub fn conflicts(&self, p: &Persons, min_count: u64) -> bool {
        let span = min_count.saturating_sub(1);
        // Two sets whose sizes differ by `min_count` or more differ by at least as many.
        self.by_count
            .range(p.count.saturating_sub(span)..=p.count.saturating_add(span))
            .flat_map(|(_, cells)| cells)
            .any(|q| matches!(p.difference(q), Some(d) if d > 0 && d < min_count))
    }

    /// Records released cells durably (written and synced) before they are shown.
    pub fn record(&mut self, cells: impl IntoIterator<Item = Persons>) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        for p in cells {
            let b = p.to_bytes();
            if self.insert(p) {
                bytes.extend_from_slice(&b);
            }
        }
        if bytes.is_empty() {
            return Ok(());
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        // Keep records aligned even if an earlier append was torn by a crash.
        let len = f.metadata()?.len();
        let torn = len % SKETCH_BYTES as u64;
        if torn != 0 {
            f.set_len(len - torn)?;
        }
        f.write_all(&bytes)?;
        f.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::super::persons::key_of;
    use super::*;

    fn persons(range: std::ops::Range<u64>) -> Persons {
        Persons::of_keys(range.map(|i| key_of(format!("{i:064x}").as_bytes())))
    }

    #[test]
    fn a_cell_a_few_persons_away_from_a_released_one_conflicts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = Ledger::open(dir.path()).expect("open");
        let p = ledger.partner("pcc-kent").expect("partner");
        let mut p = p.lock().expect("lock");
        p.record([persons(0..500)]).expect("record");
        assert!(p.conflicts(&persons(0..497), 10), "3 persons fewer");
        assert!(p.conflicts(&persons(0..509), 10), "9 persons more");
        assert!(
            !p.conflicts(&persons(0..510), 10),
            "10 persons more is allowed"
        );
        assert!(!p.conflicts(&persons(0..500), 10), "the same persons again");
        assert!(!p.conflicts(&persons(1000..1500), 10), "other persons");
    }

    #[test]
    fn the_ledger_survives_a_restart_and_a_torn_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let ledger = Ledger::open(dir.path()).expect("open");
            let p = ledger.partner("pcc-kent").expect("partner");
            let mut p = p.lock().expect("lock");
            p.record([persons(0..500), persons(0..500), persons(0..40)])
                .expect("record");
            assert_eq!(p.len(), 2, "the same cell is kept once");
        }
        let file = dir.path().join("pcc-kent.ledger");
        let mut f = OpenOptions::new().append(true).open(&file).expect("open");
        f.write_all(&[1, 2, 3]).expect("torn write");
        drop(f);
        let ledger = Ledger::open(dir.path()).expect("reopen");
        let p = ledger.partner("pcc-kent").expect("partner");
        let mut p = p.lock().expect("lock");
        assert_eq!(p.len(), 2);
        assert!(p.conflicts(&persons(0..495), 10));
        p.record([persons(0..100)]).expect("record after torn");
        assert_eq!(
            std::fs::metadata(&file).expect("meta").len(),
            3 * SKETCH_BYTES as u64
        );
    }
}
