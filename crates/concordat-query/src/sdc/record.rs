//! The disclosure record: what disclosure control did to an answer, in the JSON answer,
//! the `concordat-disclosure` header and the audit event.
//!
//! It holds only what the answer itself shows (rows shown, cells withheld among them) and
//! the published rules: nothing that differs between an empty group and a small one.

use serde::Serialize;

use super::cellkey::{MAX_PERTURBATION, PTABLE, variance};

/// Cells withheld, by reason.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Suppressed {
    /// Fewer than `min_count` persons behind the cell after perturbation.
    pub threshold: usize,
}

/// One row of the published perturbation table.
#[derive(Debug, Clone, Serialize)]
pub struct PtableRow {
    /// The perturbation, in persons (or in largest contributions, for magnitudes).
    pub perturbation: i64,
    /// Its probability for a cell of three or more persons.
    pub probability: f64,
}

/// The published perturbation: how far a released figure can be from the truth.
#[derive(Debug, Clone, Serialize)]
pub struct Perturbation {
    /// The method.
    pub method: &'static str,
    /// The p-table for three or more persons (for one or two, cut to ±1 or ±2 and
    /// renormalised).
    pub ptable: Vec<PtableRow>,
    /// Largest perturbation.
    pub max_abs: i64,
    /// Variance of the perturbation (three or more persons).
    pub variance: f64,
    /// Largest distance of a released count of one row per person from the truth.
    pub count_bound: f64,
    /// How magnitudes are bounded and perturbed.
    pub magnitudes: String,
}

impl Perturbation {
    /// The published table for these terms.
    pub fn published(min_count: u64, round_to: u64) -> Perturbation {
        Perturbation {
            method: "cell key (ONS/ABS): the same persons always give the same perturbation",
            ptable: (-MAX_PERTURBATION..=MAX_PERTURBATION)
                .map(|d| PtableRow {
                    perturbation: d,
                    probability: PTABLE[d.unsigned_abs() as usize],
                })
                .collect(),
            max_abs: MAX_PERTURBATION,
            variance: variance(u64::MAX),
            count_bound: bound(round_to),
            magnitudes: format!(
                "each person's contribution is held between the {min_count}th smallest and the {min_count}th largest of the cell (the median of all when fewer than {} persons contribute); the perturbation times the largest such contribution is added; then rounded to {round_to}",
                2 * min_count - 1
            ),
        }
    }
}

/// Largest distance of a released count of one row per person from the truth.
pub fn bound(round_to: u64) -> f64 {
    MAX_PERTURBATION as f64 + (round_to / 2) as f64
}

/// What disclosure control did to an answer.
#[derive(Debug, Clone, Serialize)]
pub struct Disclosure {
    /// Always `aggregate`.
    pub access: &'static str,
    /// Aggregate-only datasets read.
    pub datasets: Vec<String>,
    /// Agreements whose rules were applied.
    pub agreements: Vec<String>,
    /// Perturbed persons a released cell needs.
    pub min_count: u64,
    /// Released values are rounded to a multiple of this.
    pub round_to: u64,
    /// Groups shown.
    pub groups: usize,
    /// Cells shown (groups × aggregate columns).
    pub cells: usize,
    /// Cells shown as withheld (null).
    pub suppressed_cells: usize,
    /// Withheld cells by reason.
    pub suppressed: Suppressed,
    /// Cells released (every released value is perturbed, then rounded).
    pub rounded_cells: usize,
    /// Aggregate columns that were perturbed and rounded.
    pub rounded_columns: Vec<String>,
    /// The column marking rows with a withheld value, when the answer has one.
    pub marker_column: Option<String>,
    /// The published perturbation.
    pub perturbation: Perturbation,
    /// The rules, in words.
    pub rules: Vec<String>,
}

/// The rules, in words.
pub fn rules(min_count: u64, round_to: u64) -> Vec<String> {
    vec![
        format!(
            "every count, sum and average is perturbed by the cell key method: the same persons always give the same answer, at most {} (counts of one row per person) from the truth",
            bound(round_to)
        ),
        format!(
            "a cell (and a group) needs at least {min_count} persons after perturbation, or it is withheld; an empty group and a small one look the same"
        ),
        format!(
            "each person's contribution to a cell is bounded by the {min_count}th largest and smallest, so no few persons dominate a figure"
        ),
        format!("released values are rounded to the nearest multiple of {round_to}; averages are released sums over released counts"),
        "MIN, MAX and other single-value statistics are not released; pseudonyms are join keys only".into(),
    ]
}
