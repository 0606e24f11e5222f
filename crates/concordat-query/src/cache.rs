//! Answers reused when nothing changed.
//!
//! Dashboards and report refreshes ask the same questions again and again. An answer is
//! kept under everything that decides it: the partner (whose record and agreements give
//! the effective policy), the credential's roles, the purpose, the day (agreements are in
//! force by date), the dialect, the statement as parsed and printed back (so spacing and
//! keyword case do not matter, string literals do) and the placeholder values. Before a
//! kept answer is given, every table it read must still be at the version it read: any
//! commit to an input, from any process sharing the store, makes it stale.
//!
//! Only answers that cannot differ between two runs over the same versions are kept: no
//! function whose value depends on when it runs (`now()`, `random()`), nothing read from
//! the audit trail, which grows with every request, and nothing from the catalog
//! session. Disclosure-controlled answers are deterministic (the cell key perturbation
//! depends only on the persons behind a cell), so they are kept as released. The cache is
//! bounded in bytes; the least recently used answers go first. Each answer given from it
//! is still audited, as the same query, marked `cached`.
//!
//! Plans are kept the same way, under the same key and checked against the same
//! versions: a question asked again over unchanged tables skips parsing, the agreements'
//! rewriting, optimisation and physical planning, and runs a fresh copy of the plan
//! made the first time (DataFusion's `reset_plan_states`). Its answer is still computed.
//! A disclosure-controlled question keeps its release: the per-person plan, and the plan
//! made over the released cells. Asked again, the per-person plan runs again over the
//! data, the rules run again over its groups, and the kept plan reads the new cells
//! (the same ones, since the same versions give the same release).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::RecordBatch;
use chrono::NaiveDate;

use crate::plan::Planned;
use crate::service::QueryRequest;

/// What decides an answer, apart from the versions of the tables it reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    partner: String,
    roles: Vec<String>,
    purpose: String,
    today: NaiveDate,
    postgres: bool,
    statement: String,
    params: Vec<String>,
    /// The partitions a plan was made for (0 for answers, which do not depend on them).
    partitions: usize,
}

impl Key {
    /// The key of a request, or `None` when its text does not parse as one statement (it
    /// will be refused, and refusals are not kept).
    pub(crate) fn of(req: &QueryRequest<'_>) -> Option<Key> {
        let dialect: Box<dyn datafusion::sql::sqlparser::dialect::Dialect> = match req.dialect {
            crate::Dialect::Standard => {
                Box::new(datafusion::sql::sqlparser::dialect::GenericDialect {})
            }
            crate::Dialect::Postgres => {
                Box::new(datafusion::sql::sqlparser::dialect::PostgreSqlDialect {})
            }
        };
        let mut statements =
            datafusion::sql::parser::DFParser::parse_sql_with_dialect(req.sql, dialect.as_ref())
                .ok()?;
        if statements.len() != 1 {
            return None;
        }
        let statement = statements.pop_front()?.to_string();
        let mut roles: Vec<String> = req
            .caller
            .roles
            .iter()
            .map(|r| r.as_str().to_owned())
            .collect();
        roles.sort();
        Some(Key {
            partner: req.caller.partner.id.as_str().to_owned(),
            roles,
            purpose: req.purpose.to_owned(),
            today: req.today,
            postgres: req.dialect == crate::Dialect::Postgres,
            statement,
            params: req.params.iter().map(|p| format!("{p:?}")).collect(),
            partitions: 0,
        })
    }

    /// The key of the plan of the same question made for `partitions` partitions.
    pub(crate) fn with_partitions(&self, partitions: usize) -> Key {
        Key {
            partitions,
            ..self.clone()
        }
    }
}

/// A kept answer or plan, with what its planning learnt.
pub(crate) struct Entry<V> {
    pub(crate) planned: Planned,
    pub(crate) value: V,
    bytes: usize,
    used: AtomicU64,
}

/// Answers kept: their batches.
pub(crate) type AnswerCache = Kept<Vec<RecordBatch>>;

/// Plans kept: the physical plan as first made, never run again itself (each reuse runs
/// a copy with its state reset); for a disclosure-controlled question, its release too.
pub(crate) type PlanCache = Kept<crate::plan::Reusable>;

/// What a plan is counted as in the plan cache's budget: a plan holds its expressions
/// and the version's file list, not data.
pub(crate) fn plan_bytes(key: &Key) -> usize {
    16 * 1024 + 16 * key.statement.len()
}

/// Answers or plans kept, within a byte budget.
pub(crate) struct Kept<V> {
    budget: usize,
    largest: usize,
    inner: Mutex<Inner<V>>,
    tick: AtomicU64,
}

struct Inner<V> {
    entries: HashMap<Key, std::sync::Arc<Entry<V>>>,
    bytes: usize,
}

impl<V> Kept<V> {
    /// A cache holding at most `budget` bytes, no entry larger than a sixteenth of it; a
    /// budget of 0 keeps nothing.
    pub(crate) fn new(budget: usize) -> Kept<V> {
        Kept {
            budget,
            largest: budget / 16,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                bytes: 0,
            }),
            tick: AtomicU64::new(0),
        }
    }

    /// Whether anything is kept at all.
    pub(crate) fn enabled(&self) -> bool {
        self.budget > 0
    }

    /// The largest entry kept, in bytes.
    pub(crate) fn largest(&self) -> usize {
        self.largest
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<V>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The entry kept under `key`, if any (its versions still to be checked).
    pub(crate) fn get(&self, key: &Key) -> Option<std::sync::Arc<Entry<V>>> {
        let entry = self.lock().entries.get(key).cloned()?;
        entry
            .used
            .store(self.tick.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        Some(entry)
    }

    /// Forgets a stale entry.
    pub(crate) fn remove(&self, key: &Key) {
        let mut inner = self.lock();
        if let Some(e) = inner.entries.remove(key) {
            inner.bytes -= e.bytes;
        }
    }

    /// Keeps `value` counted as `value_bytes`, making room by forgetting the least
    /// recently used.
    pub(crate) fn put(&self, key: Key, planned: Planned, value: V, value_bytes: usize) {
        let bytes = value_bytes + key.statement.len() + 1024;
        if bytes > self.largest {
            return;
        }
        let entry = std::sync::Arc::new(Entry {
            planned,
            value,
            bytes,
            used: AtomicU64::new(self.tick.fetch_add(1, Ordering::Relaxed)),
        });
        let mut inner = self.lock();
        if let Some(old) = inner.entries.insert(key, entry) {
            inner.bytes -= old.bytes;
        }
        inner.bytes += bytes;
        while inner.bytes > self.budget {
            let Some(oldest) = inner
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(e) = inner.entries.remove(&oldest) {
                inner.bytes -= e.bytes;
            }
        }
    }
}
