//! Deterministic synthetic data for every partner dataset.
//!
//! Realistic enough that analysis means something: volumes follow force population,
//! quarterly cohorts run 2019Q1 to 2025Q4, proven reoffending sits around 25-30% and
//! varies with age, previous offences and disposal, court durations are long-tailed,
//! performance indicators carry a 2019/20 baseline. Every row is synthetic: no real
//! person, case or figure is in here.
//!
//! Each force is generated from its own random stream (seed, dataset, force), so the
//! output is the same for a seed whatever subset of forces is asked for.

mod forces;
mod persons;
mod profile;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int32Builder, Int64Builder,
    RecordBatch, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema};
use chrono::{Datelike, NaiveDate};
use concordat_core::{Force, Quarter, Reference};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp, LogNormal, Poisson};
use sha2::{Digest, Sha256};

pub use profile::{Settlement, profile};

/// Errors writing synthetic files.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// Writing failed.
    #[error("{path}: {message}")]
    Write { path: String, message: String },
}

/// The partner datasets `synth` writes, in order.
pub const DATASETS: [&str; 5] = [
    "reoffending_cohort",
    "court_timeliness",
    "force_performance",
    "force_resources",
    "force_context",
];

/// First and last cohort quarters.
pub const FIRST_QUARTER: Quarter = Quarter { year: 2019, q: 1 };
/// Last quarter generated.
pub const LAST_QUARTER: Quarter = Quarter { year: 2025, q: 4 };

const AGE_BANDS: [(&str, f64, f64); 10] = [
    ("10-14", 0.02, 1.35),
    ("15-17", 0.05, 1.45),
    ("18-20", 0.10, 1.25),
    ("21-24", 0.13, 1.15),
    ("25-29", 0.15, 1.10),
    ("30-34", 0.14, 1.05),
    ("35-39", 0.12, 0.98),
    ("40-44", 0.10, 0.88),
    ("45-49", 0.08, 0.75),
    ("50+", 0.11, 0.50),
];
const PREVIOUS: [(&str, f64, f64); 5] = [
    ("0", 0.20, 0.35),
    ("1-2", 0.15, 0.70),
    ("3-6", 0.18, 1.00),
    ("7-10", 0.12, 1.30),
    ("11+", 0.35, 1.65),
];
const DISPOSALS: [(&str, f64, f64); 6] = [
    ("caution", 0.15, 0.60),
    ("court_order", 0.50, 1.00),
    ("custody_lt_12m", 0.20, 1.55),
    ("custody_12m_to_lt_2y", 0.07, 1.10),
    ("custody_2y_to_lt_4y", 0.05, 0.90),
    ("custody_4y_plus", 0.03, 0.70),
];
const OFFENCES: [(&str, f64); 13] = [
    ("violence_against_the_person", 0.22),
    ("sexual", 0.03),
    ("robbery", 0.02),
    ("theft", 0.20),
    ("criminal_damage_and_arson", 0.04),
    ("drug", 0.11),
    ("possession_of_weapons", 0.03),
    ("public_order", 0.06),
    ("miscellaneous_crimes_against_society", 0.04),
    ("fraud", 0.02),
    ("summary_non_motoring", 0.13),
    ("summary_motoring", 0.08),
    ("other", 0.02),
];
const SEXES: [(&str, f64); 3] = [("male", 0.84), ("female", 0.15), ("unknown", 0.01)];
const OUTCOMES: [(&str, f64); 5] = [
    ("convicted", 0.78),
    ("acquitted", 0.05),
    ("discontinued", 0.10),
    ("dismissed", 0.03),
    ("other", 0.04),
];

/// Indicators of each measure with a rate per 100,000 residents per quarter (or a percentage).
const INDICATORS: [(&str, &str, f64); 12] = [
    ("homicide", "homicide_offences", 0.3),
    ("serious_violence", "firearm_discharges", 0.5),
    ("serious_violence", "knife_offences", 20.0),
    ("drugs_supply", "county_lines_closed", 0.6),
    ("drugs_supply", "drug_trafficking_offences", 12.0),
    ("neighbourhood_crime", "domestic_burglary", 55.0),
    ("neighbourhood_crime", "theft_from_person", 30.0),
    ("neighbourhood_crime", "robbery_personal", 18.0),
    ("neighbourhood_crime", "vehicle_offences", 95.0),
    ("cyber_crime", "cyber_offences_reported", 40.0),
    ("victim_satisfaction", "victim_satisfaction_pct", 72.0),
    ("victim_satisfaction", "da_victim_satisfaction_pct", 76.0),
];

/// Cases in a court dataset are judged as of this day: later completions are outstanding.
fn as_of() -> NaiveDate {
    NaiveDate::from_ymd_opt(2025, 12, 31).unwrap_or_default()
}

fn epoch_days(d: NaiveDate) -> i32 {
    d.num_days_from_ce() - 719_163
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, table: &[(T, f64)]) -> T {
    let mut u: f64 = rng.random::<f64>() * table.iter().map(|t| t.1).sum::<f64>();
    for (v, w) in table {
        if u < *w {
            return *v;
        }
        u -= w;
    }
    table[table.len() - 1].0
}

fn pick3<'a>(rng: &mut ChaCha8Rng, table: &'a [(&'a str, f64, f64)]) -> (&'a str, f64) {
    let i = pick(
        rng,
        &table
            .iter()
            .enumerate()
            .map(|(i, t)| (i, t.1))
            .collect::<Vec<_>>(),
    );
    (table[i].0, table[i].2)
}

/// A keyed pseudonym: 64 hex characters.
pub fn pseudonym(seed: u64, space: &str, force: &str, n: u64) -> String {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(space.as_bytes());
    h.update(force.as_bytes());
    h.update(n.to_le_bytes());
    hex::encode(h.finalize())
}

/// The generator.
#[derive(Debug, Clone)]
pub struct Synth {
    /// 1.0 gives about a million rows each of reoffending_cohort and court_timeliness.
    pub scale: f64,
    /// Same seed, same bytes.
    pub seed: u64,
    /// Only these forces (slugs); all when empty.
    pub forces: Vec<String>,
}

impl Synth {
    /// All forces at a scale and seed.
    pub fn new(scale: f64, seed: u64) -> Synth {
        Synth {
            scale,
            seed,
            forces: Vec::new(),
        }
    }

    /// Restricts output to some forces.
    pub fn only(mut self, slugs: &[&str]) -> Synth {
        self.forces = slugs.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    fn forces(&self) -> impl Iterator<Item = (usize, &'static Force)> + '_ {
        Reference::builtin()
            .forces()
            .iter()
            .enumerate()
            .filter(|(_, f)| self.forces.is_empty() || self.forces.contains(&f.force_slug))
    }

    fn rng(&self, dataset: &str, force: usize) -> ChaCha8Rng {
        let mut h = Sha256::new();
        h.update(self.seed.to_le_bytes());
        h.update(dataset.as_bytes());
        h.update((force as u64).to_le_bytes());
        let d = h.finalize();
        let mut key = [0u8; 32];
        key.copy_from_slice(&d);
        ChaCha8Rng::from_seed(key)
    }

    fn rows_for(&self, total: f64, slug: &str) -> usize {
        let (pop, _) = profile(slug);
        (total * self.scale * f64::from(pop) / f64::from(profile::total_population())).round()
            as usize
    }

    fn quarters() -> Vec<Quarter> {
        let mut out = vec![FIRST_QUARTER];
        while let Some(&q) = out.last() {
            if q == LAST_QUARTER {
                break;
            }
            out.push(q.next());
        }
        out
    }

    /// Batches of a dataset, one or more per force, in force order.
    pub fn batches(&self, dataset: &str) -> Vec<RecordBatch> {
        let mut out = Vec::new();
        self.each(dataset, &mut |b| {
            out.push(b);
            Ok(())
        })
        .unwrap_or_default();
        out
    }

    /// Calls `sink` with each batch of a dataset.
    pub fn each(
        &self,
        dataset: &str,
        sink: &mut dyn FnMut(RecordBatch) -> Result<(), SynthError>,
    ) -> Result<(), SynthError> {
        for (i, force) in self.forces() {
            let batch = match dataset {
                "reoffending_cohort" => self.reoffending(i, force),
                "court_timeliness" => self.court(i, force),
                "force_performance" => self.performance(i, force),
                "force_resources" => self.resources(i, force),
                "force_context" => self.context(i, force),
                _ => continue,
            };
            if batch.num_rows() > 0 {
                sink(batch)?;
            }
        }
        Ok(())
    }

    /// Writes `DIR/<dataset>.parquet` for the named partner datasets (all when empty);
    /// returns paths and rows.
    pub fn write_all(
        &self,
        dir: &Path,
        only: &[&str],
    ) -> Result<Vec<(PathBuf, usize)>, SynthError> {
        std::fs::create_dir_all(dir).map_err(|e| SynthError::Write {
            path: dir.display().to_string(),
            message: e.to_string(),
        })?;
        DATASETS
            .iter()
            .filter(|d| only.is_empty() || only.contains(d))
            .map(|d| {
                let path = dir.join(format!("{d}.parquet"));
                let rows = self.write(d, &path)?;
                Ok((path, rows))
            })
            .collect()
    }

    /// Writes one dataset to a Parquet file; returns its rows.
    pub fn write(&self, dataset: &str, path: &Path) -> Result<usize, SynthError> {
        let err = |e: &dyn std::fmt::Display| SynthError::Write {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let file = std::fs::File::create(path).map_err(|e| err(&e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(256 * 1024))
            .build();
        let mut writer: Option<ArrowWriter<std::fs::File>> = None;
        let mut file = Some(file);
        let mut rows = 0;
        self.each(dataset, &mut |batch| {
            if writer.is_none()
                && let Some(f) = file.take()
            {
                writer = Some(
                    ArrowWriter::try_new(f, batch.schema(), Some(props.clone()))
                        .map_err(|e| err(&e))?,
                );
            }
            rows += batch.num_rows();
            match writer.as_mut() {
                Some(w) => w.write(&batch).map_err(|e| err(&e)),
                None => Ok(()),
            }
        })?;
        match writer {
            Some(w) => {
                w.close().map_err(|e| err(&e))?;
            }
            None => return Err(err(&"no rows for the chosen forces")),
        }
        Ok(rows)
    }
}

/// Batches as the bytes of one Parquet file, written with default settings, as a
/// partner's tool would; for tests and fixtures.
pub fn parquet_bytes(batches: &[RecordBatch]) -> Result<Vec<u8>, SynthError> {
    let err = |e: &dyn std::fmt::Display| SynthError::Write {
        path: "<memory>".into(),
        message: e.to_string(),
    };
    let first = batches.first().ok_or_else(|| err(&"no batches"))?;
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, first.schema(), None).map_err(|e| err(&e))?;
    for b in batches {
        w.write(b).map_err(|e| err(&e))?;
    }
    w.close().map_err(|e| err(&e))?;
    Ok(out)
}

struct RowBuilders {
    s: Vec<StringBuilder>,
    b: BooleanBuilder,
    i: Vec<Int32Builder>,
}

impl RowBuilders {
    fn new(n: usize) -> Self {
        RowBuilders {
            s: (0..10)
                .map(|k| StringBuilder::with_capacity(n, n * if k == 0 { 64 } else { 10 }))
                .collect(),
            b: BooleanBuilder::with_capacity(n),
            i: (0..2).map(|_| Int32Builder::with_capacity(n)).collect(),
        }
    }
}

trait FinishArc {
    fn finish_arc(&mut self) -> ArrayRef;
}

impl FinishArc for StringBuilder {
    fn finish_arc(&mut self) -> ArrayRef {
        Arc::new(self.finish())
    }
}

fn batch(fields: &[(&str, DataType, bool)], cols: Vec<ArrayRef>) -> RecordBatch {
    let schema = Schema::new(
        fields
            .iter()
            .map(|(n, t, null)| Field::new(*n, t.clone(), *null))
            .collect::<Vec<_>>(),
    );
    // Columns and fields are built together above; a mismatch is a bug in this file.
    RecordBatch::try_new(Arc::new(schema), cols).unwrap_or_else(|e| panic!("synthetic batch: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, BooleanArray};

    #[test]
    fn the_same_seed_gives_the_same_rows_and_a_subset_matches_the_whole() {
        let a = Synth::new(0.01, 7).batches("reoffending_cohort");
        let b = Synth::new(0.01, 7).batches("reoffending_cohort");
        assert_eq!(a, b);
        let kent_all: Vec<_> = a
            .iter()
            .filter(|b| b.column(2).as_string::<i32>().value(0) == "E23000032")
            .cloned()
            .collect();
        assert_eq!(
            kent_all,
            Synth::new(0.01, 7)
                .only(&["kent"])
                .batches("reoffending_cohort")
        );
        assert_ne!(a, Synth::new(0.01, 8).batches("reoffending_cohort"));
    }

    #[test]
    fn volumes_follow_population_and_reoffending_is_realistic() {
        let s = Synth::new(0.05, 1);
        let batches = s.batches("reoffending_cohort");
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        assert!((45_000..=55_000).contains(&rows), "{rows}");
        let met = batches[0].num_rows();
        let kent = batches
            .iter()
            .find(|b| b.column(2).as_string::<i32>().value(0) == "E23000032")
            .map(RecordBatch::num_rows)
            .unwrap_or(0);
        assert!(met > 4 * kent, "Met {met} vs Kent {kent}");
        let (mut yes, mut young_yes, mut young, mut old_yes, mut old) =
            (0usize, 0usize, 0usize, 0usize, 0usize);
        for b in &batches {
            let r: &BooleanArray = b.column(10).as_boolean();
            let age = b.column(6).as_string::<i32>();
            for i in 0..b.num_rows() {
                let v = r.value(i);
                yes += usize::from(v);
                if age.value(i) == "18-20" {
                    young += 1;
                    young_yes += usize::from(v);
                }
                if age.value(i) == "50+" {
                    old += 1;
                    old_yes += usize::from(v);
                }
            }
        }
        let rate = yes as f64 / rows as f64;
        assert!((0.24..=0.31).contains(&rate), "overall rate {rate}");
        assert!(young_yes as f64 / young as f64 > 1.5 * old_yes as f64 / old as f64);
    }

    #[test]
    fn every_quarter_from_2019q1_to_2025q4_is_present() {
        let b = Synth::new(0.01, 1)
            .only(&["kent"])
            .batches("reoffending_cohort");
        let quarters: std::collections::BTreeSet<_> = b[0]
            .column(1)
            .as_string::<i32>()
            .iter()
            .flatten()
            .map(str::to_owned)
            .collect();
        assert_eq!(quarters.len(), 28);
        assert_eq!(quarters.first().map(String::as_str), Some("2019Q1"));
        assert_eq!(quarters.last().map(String::as_str), Some("2025Q4"));
    }
}
