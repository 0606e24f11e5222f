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

    fn reoffending(&self, i: usize, force: &Force) -> RecordBatch {
        let mut rng = self.rng("reoffending_cohort", i);
        let n = self.rows_for(1_000_000.0, &force.force_slug);
        let quarters = Self::quarters();
        let pool = (n as u64 * 2 / 5).max(1);
        // Normalise so the expected proportion reoffending is about 27%.
        let mean = |t: &[(&str, f64, f64)]| {
            t.iter().map(|x| x.1 * x.2).sum::<f64>() / t.iter().map(|x| x.1).sum::<f64>()
        };
        let base = 0.27 / (mean(&AGE_BANDS) * mean(&PREVIOUS) * mean(&DISPOSALS));
        let (_, settlement) = profile(&force.force_slug);
        let local = match settlement {
            Settlement::Metropolitan => 1.06,
            Settlement::Mixed => 1.0,
            Settlement::Rural => 0.93,
        } * (0.95 + 0.1 * rng.random::<f64>());
        let mut b = RowBuilders::new(n);
        let days = Exp::new(1.0 / 110.0).ok();
        for k in 0..n {
            let q = quarters[k * quarters.len() / n.max(1)];
            let person = pseudonym(
                self.seed,
                "person",
                &force.force_slug,
                rng.random_range(0..pool),
            );
            let (age, fa) = pick3(&mut rng, &AGE_BANDS);
            let (prev, fp) = pick3(&mut rng, &PREVIOUS);
            let (disp, fd) = pick3(&mut rng, &DISPOSALS);
            let trend = 1.0 - 0.01 * f64::from(q.year - 2019);
            let p = (base * fa * fp * fd * local * trend).min(0.95);
            let reoffended = rng.random::<f64>() < p;
            let reoffences = if reoffended {
                1 + Poisson::new(0.6 + 1.2 * fp)
                    .map(|d| d.sample(&mut rng) as i32)
                    .unwrap_or(0)
            } else {
                0
            };
            b.s[0].append_value(&person);
            b.s[1].append_value(q.to_string());
            b.s[2].append_value(force.pfa_code.as_str());
            b.s[3].append_value(&force.probation_region_code);
            b.s[4].append_value(if matches!(age, "10-14" | "15-17") {
                "juvenile"
            } else {
                "adult"
            });
            b.s[5].append_value(pick(&mut rng, &SEXES));
            b.s[6].append_value(age);
            b.s[7].append_value(pick(&mut rng, &OFFENCES));
            b.s[8].append_value(disp);
            b.s[9].append_value(prev);
            b.b.append_value(reoffended);
            b.i[0].append_value(reoffences);
            if reoffended {
                let d: f64 = days
                    .map_or(100.0, |d: Exp<f64>| d.sample(&mut rng))
                    .min(365.0);
                b.i[1].append_value(d as i32);
            } else {
                b.i[1].append_null();
            }
        }
        let cols: Vec<ArrayRef> = vec![
            b.s[0].finish_arc(),
            b.s[1].finish_arc(),
            b.s[2].finish_arc(),
            b.s[3].finish_arc(),
            b.s[4].finish_arc(),
            b.s[5].finish_arc(),
            b.s[6].finish_arc(),
            b.s[7].finish_arc(),
            b.s[8].finish_arc(),
            b.s[9].finish_arc(),
            Arc::new(b.b.finish()),
            Arc::new(b.i[0].finish()),
            Arc::new(b.i[1].finish()),
        ];
        batch(
            &[
                ("person_id", DataType::Utf8, false),
                ("cohort_quarter", DataType::Utf8, false),
                ("pfa_code", DataType::Utf8, false),
                ("probation_region_code", DataType::Utf8, false),
                ("adult_juvenile", DataType::Utf8, false),
                ("sex", DataType::Utf8, false),
                ("age_band", DataType::Utf8, false),
                ("index_offence_group", DataType::Utf8, false),
                ("index_disposal", DataType::Utf8, false),
                ("previous_offences_band", DataType::Utf8, false),
                ("reoffended", DataType::Boolean, false),
                ("reoffences", DataType::Int32, false),
                ("days_to_first_reoffence", DataType::Int32, true),
            ],
            cols,
        )
    }

    fn court(&self, i: usize, force: &Force) -> RecordBatch {
        let mut rng = self.rng("court_timeliness", i);
        let n = self.rows_for(1_000_000.0, &force.force_slug);
        let quarters = Self::quarters();
        // Persons drawn from the same pool as the reoffending cohorts, so the two join.
        let pool = (self.rows_for(1_000_000.0, &force.force_slug) as u64 * 2 / 5).max(1);
        let (_, settlement) = profile(&force.force_slug);
        let slow = match settlement {
            Settlement::Metropolitan => 1.2,
            Settlement::Mixed => 1.0,
            Settlement::Rural => 0.9,
        } * (0.85 + 0.3 * rng.random::<f64>());
        let ln = |median: f64, sigma: f64| LogNormal::new(median.ln(), sigma).ok();
        let (to_charge_m, to_charge_c) = (ln(25.0 * slow, 1.3), ln(80.0 * slow, 1.1));
        let to_listing = ln(21.0 * slow, 0.6);
        let (to_complete_m, to_complete_c) = (ln(45.0 * slow, 0.9), ln(260.0 * slow, 0.7));
        let draw = |d: &Option<LogNormal<f64>>, rng: &mut ChaCha8Rng| {
            d.as_ref().map_or(30.0, |d| d.sample(rng)).min(3000.0) as i32
        };
        let cut = epoch_days(as_of());
        let mut s: Vec<StringBuilder> = (0..8)
            .map(|_| StringBuilder::with_capacity(n, n * 16))
            .collect();
        let mut d: Vec<Date32Builder> = (0..4).map(|_| Date32Builder::with_capacity(n)).collect();
        for k in 0..n {
            let q = quarters[k * quarters.len() / n.max(1)];
            let start = NaiveDate::from_ymd_opt(q.year, q.first_month(), 1)
                .map(epoch_days)
                .unwrap_or(0);
            let listing = start + rng.random_range(0..90);
            let crown = rng.random::<f64>() < 0.15;
            let charge = listing - draw(&to_listing, &mut rng);
            let offence = charge - draw(if crown { &to_charge_c } else { &to_charge_m }, &mut rng);
            let guilty_early = !crown && rng.random::<f64>() < 0.4;
            let completion = listing
                + if guilty_early {
                    0
                } else {
                    draw(
                        if crown {
                            &to_complete_c
                        } else {
                            &to_complete_m
                        },
                        &mut rng,
                    )
                };
            let outstanding = completion > cut;
            let outcome = if outstanding {
                "outstanding"
            } else if guilty_early {
                "convicted"
            } else {
                pick(&mut rng, &OUTCOMES)
            };
            let plea = match outcome {
                "convicted" if guilty_early || rng.random::<f64>() < 0.7 => "guilty",
                "convicted" | "acquitted" | "outstanding" => "not_guilty",
                _ => "none",
            };
            s[0].append_value(pseudonym(self.seed, "case", &force.force_slug, k as u64));
            s[1].append_value(pseudonym(
                self.seed,
                "person",
                &force.force_slug,
                rng.random_range(0..pool),
            ));
            s[2].append_value(q.to_string());
            s[3].append_value(force.pfa_code.as_str());
            s[4].append_value(if crown { "crown" } else { "magistrates" });
            s[5].append_value(pick(&mut rng, &OFFENCES));
            s[6].append_value(outcome);
            s[7].append_value(plea);
            d[0].append_value(offence);
            d[1].append_value(charge);
            d[2].append_value(listing);
            if outstanding {
                d[3].append_null();
            } else {
                d[3].append_value(completion);
            }
        }
        let cols: Vec<ArrayRef> = vec![
            s[0].finish_arc(),
            s[1].finish_arc(),
            s[2].finish_arc(),
            s[3].finish_arc(),
            s[4].finish_arc(),
            s[5].finish_arc(),
            Arc::new(d[0].finish()),
            Arc::new(d[1].finish()),
            Arc::new(d[2].finish()),
            Arc::new(d[3].finish()),
            s[6].finish_arc(),
            s[7].finish_arc(),
        ];
        batch(
            &[
                ("case_id", DataType::Utf8, false),
                ("person_id", DataType::Utf8, false),
                ("quarter", DataType::Utf8, false),
                ("pfa_code", DataType::Utf8, false),
                ("court_type", DataType::Utf8, false),
                ("offence_group", DataType::Utf8, false),
                ("offence_date", DataType::Date32, false),
                ("charge_date", DataType::Date32, false),
                ("first_listing_date", DataType::Date32, false),
                ("completion_date", DataType::Date32, true),
                ("outcome", DataType::Utf8, false),
                ("plea", DataType::Utf8, false),
            ],
            cols,
        )
    }

    fn performance(&self, i: usize, force: &Force) -> RecordBatch {
        let mut rng = self.rng("force_performance", i);
        let (pop, settlement) = profile(&force.force_slug);
        let urban = match settlement {
            Settlement::Metropolitan => 1.5,
            Settlement::Mixed => 1.0,
            Settlement::Rural => 0.6,
        };
        let level: Vec<f64> = INDICATORS
            .iter()
            .map(|_| 0.8 + 0.4 * rng.random::<f64>())
            .collect();
        let mut s: Vec<StringBuilder> = (0..4).map(|_| StringBuilder::new()).collect();
        let (mut value, mut baseline) = (Float64Builder::new(), Float64Builder::new());
        for q in Self::quarters() {
            let seasonal = [1.0, 0.97, 1.04, 0.99][usize::from(q.q - 1)];
            for (k, (measure, indicator, rate)) in INDICATORS.iter().enumerate() {
                let pct = indicator.ends_with("_pct");
                let years = f64::from(q.year - 2019) + f64::from(q.q) / 4.0;
                let base = if pct {
                    (rate * level[k].sqrt()).min(95.0)
                } else {
                    rate * f64::from(pop) / 100.0 * urban * level[k] * seasonal
                };
                let drift = if pct {
                    1.0 - 0.004 * years
                } else {
                    1.0 - 0.02 * years
                };
                let noise = 0.92 + 0.16 * rng.random::<f64>();
                let v = if pct {
                    (base * drift * (0.97 + 0.06 * rng.random::<f64>())).clamp(0.0, 100.0)
                } else {
                    (base * drift * noise).round().max(0.0)
                };
                s[0].append_value(force.pfa_code.as_str());
                s[1].append_value(q.to_string());
                s[2].append_value(measure);
                s[3].append_value(indicator);
                value.append_value((v * 10.0).round() / 10.0);
                baseline.append_value((base * 10.0).round() / 10.0);
            }
        }
        let cols: Vec<ArrayRef> = vec![
            s[0].finish_arc(),
            s[1].finish_arc(),
            s[2].finish_arc(),
            s[3].finish_arc(),
            Arc::new(value.finish()),
            Arc::new(baseline.finish()),
        ];
        batch(
            &[
                ("pfa_code", DataType::Utf8, false),
                ("quarter", DataType::Utf8, false),
                ("measure", DataType::Utf8, false),
                ("indicator", DataType::Utf8, false),
                ("value", DataType::Float64, false),
                ("baseline_value", DataType::Float64, true),
            ],
            cols,
        )
    }

    fn resources(&self, i: usize, force: &Force) -> RecordBatch {
        let mut rng = self.rng("force_resources", i);
        let (pop, settlement) = profile(&force.force_slug);
        let (spend, officers, crime) = match settlement {
            Settlement::Metropolitan => (290.0, 3.2, 105.0),
            Settlement::Mixed => (215.0, 2.1, 82.0),
            Settlement::Rural => (205.0, 2.0, 62.0),
        };
        let own = 0.9 + 0.2 * rng.random::<f64>();
        let charge_rate = 0.055 + 0.03 * rng.random::<f64>();
        let mut s: Vec<StringBuilder> = (0..2).map(|_| StringBuilder::new()).collect();
        let (mut p, mut rc, mut ch) = (
            Int64Builder::new(),
            Int64Builder::new(),
            Int64Builder::new(),
        );
        let mut f: Vec<Float64Builder> = (0..4).map(|_| Float64Builder::new()).collect();
        for year in 2019..=2025 {
            let y = f64::from(year - 2019);
            let population = (f64::from(pop) * 1000.0 * (1.0 + 0.005 * y)).round();
            s[0].append_value(force.pfa_code.as_str());
            s[1].append_value(format!("{year}-{:02}", (year + 1) % 100));
            p.append_value(population as i64);
            f[0].append_value((population * spend * own * (1.0 + 0.04 * y)).round());
            f[1].append_value(
                (population / 1000.0 * officers * own * (1.0 + 0.025 * y) * 10.0).round() / 10.0,
            );
            f[2].append_value((population / 1000.0 * 1.6 * own * 10.0).round() / 10.0);
            f[3].append_value(
                (population / 1000.0 * 0.18 * (1.0 - 0.03 * y) * 10.0).round() / 10.0,
            );
            let crimes = (population / 1000.0 * crime * (0.95 + 0.1 * rng.random::<f64>())).round();
            rc.append_value(crimes as i64);
            ch.append_value(
                (crimes * charge_rate * (0.9 + 0.2 * rng.random::<f64>())).round() as i64,
            );
        }
        let cols: Vec<ArrayRef> = vec![
            s[0].finish_arc(),
            s[1].finish_arc(),
            Arc::new(p.finish()),
            Arc::new(f[0].finish()),
            Arc::new(f[1].finish()),
            Arc::new(f[2].finish()),
            Arc::new(f[3].finish()),
            Arc::new(rc.finish()),
            Arc::new(ch.finish()),
        ];
        batch(
            &[
                ("pfa_code", DataType::Utf8, false),
                ("financial_year", DataType::Utf8, false),
                ("population", DataType::Int64, false),
                ("net_revenue_expenditure_gbp", DataType::Float64, false),
                ("officers_fte", DataType::Float64, false),
                ("staff_fte", DataType::Float64, false),
                ("pcso_fte", DataType::Float64, false),
                ("recorded_crime", DataType::Int64, false),
                ("charges_summonses", DataType::Int64, false),
            ],
            cols,
        )
    }

    fn context(&self, i: usize, force: &Force) -> RecordBatch {
        let mut rng = self.rng("force_context", i);
        let (pop, settlement) = profile(&force.force_slug);
        let population = f64::from(pop) * 1000.0;
        let u = |rng: &mut ChaCha8Rng, lo: f64, hi: f64| lo + (hi - lo) * rng.random::<f64>();
        let (density, urban, depr, young, single, night) = match settlement {
            Settlement::Metropolitan => (
                u(&mut rng, 1500.0, 5500.0),
                u(&mut rng, 95.0, 99.5),
                u(&mut rng, 24.0, 34.0),
                u(&mut rng, 11.0, 15.0),
                u(&mut rng, 31.0, 38.0),
                u(&mut rng, 2.0, 4.5),
            ),
            Settlement::Mixed => (
                u(&mut rng, 300.0, 900.0),
                u(&mut rng, 72.0, 92.0),
                u(&mut rng, 15.0, 26.0),
                u(&mut rng, 9.5, 12.5),
                u(&mut rng, 27.0, 32.0),
                u(&mut rng, 1.4, 2.6),
            ),
            Settlement::Rural => (
                u(&mut rng, 25.0, 250.0),
                u(&mut rng, 40.0, 70.0),
                u(&mut rng, 13.0, 22.0),
                u(&mut rng, 8.5, 11.0),
                u(&mut rng, 27.0, 31.0),
                u(&mut rng, 1.2, 2.2),
            ),
        };
        let r1 = |v: f64| (v * 10.0).round() / 10.0;
        let mut f: Vec<Float64Builder> = (0..7).map(|_| Float64Builder::new()).collect();
        for (b, v) in f.iter_mut().zip([
            r1(population / density),
            r1(density),
            r1(urban),
            r1(depr),
            r1(young),
            r1(single),
            (night * 100.0).round() / 100.0,
        ]) {
            b.append_value(v);
        }
        let mut s = StringBuilder::new();
        s.append_value(force.pfa_code.as_str());
        let mut p = Int64Builder::new();
        p.append_value(population as i64);
        let mut cols: Vec<ArrayRef> = vec![s.finish_arc(), Arc::new(p.finish())];
        cols.extend(f.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        batch(
            &[
                ("pfa_code", DataType::Utf8, false),
                ("population", DataType::Int64, false),
                ("area_km2", DataType::Float64, false),
                ("density_per_km2", DataType::Float64, false),
                ("urban_pct", DataType::Float64, false),
                ("deprivation_score", DataType::Float64, false),
                ("young_adults_pct", DataType::Float64, false),
                ("single_person_households_pct", DataType::Float64, false),
                ("night_time_economy_index", DataType::Float64, false),
            ],
            cols,
        )
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
