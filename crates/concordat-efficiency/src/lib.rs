//! The police efficiency dataset (`force_efficiency`), derived by the gateway.
//!
//! For each force, financial year and metric: the force's value, the weighted mean of its
//! most similar group (MSG) of peers and of all forces, its difference from the MSG, its
//! rank (1 = best) and quartile. Inputs are the latest versions of `force_resources`,
//! `force_performance`, `court_timeliness`, `reoffending_cohort`, `force_context` (from
//! which MSGs are derived) and `most_similar_groups` (an uploaded MSG table that
//! overrides the derivation). Figures drawn from record-level data pass the same release
//! as any aggregate query ([`concordat_query::sdc`]: cell key perturbation, flattening, rounding,
//! the threshold on perturbed persons), so no route gives a figure another perturbs; a
//! force-year the release withholds has no value, and says why. A missing input gives a null with a note and is left out of the
//! comparators, never counted as zero. The whole dataset is rewritten as one new version
//! that records the input versions it was built from.
//!
//! Layout: the metrics and the error here; [`compute`] turns inputs into rows (pure, unit
//! tested); [`inputs`] reads the inputs through the query crate's session and the
//! disclosure release; [`rebuild`] writes a new version when an input changed, and the
//! [`Rebuilder`] the server spawns runs it after commits and at start.

pub mod compute;
pub mod inputs;
pub mod rebuild;

use concordat_core::ErrorKind;
use concordat_store::StoreError;

pub use compute::{Inputs, Released, Resources, Row, compute, to_batch};
pub use inputs::{Release, read_inputs};
pub use rebuild::{Rebuilder, built_from, rebuild};

/// The derived dataset.
pub const DATASET: &str = "force_efficiency";
/// Datasets it is built from; a commit to any of them triggers a rebuild.
pub const INPUTS: [&str; 6] = [
    "force_resources",
    "force_performance",
    "court_timeliness",
    "reoffending_cohort",
    "force_context",
    "most_similar_groups",
];

/// One metric: its name, unit, direction and comparator weight.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// Name in the `metric` column.
    pub name: &'static str,
    /// Unit of `value`.
    pub unit: &'static str,
    /// Whether a higher value ranks better.
    pub higher_is_better: bool,
    /// What MSG and national means are weighted by.
    pub weighted_by: &'static str,
    /// How the value is computed.
    pub definition: &'static str,
}

/// The metrics, in output order.
pub const METRICS: [Metric; 9] = [
    Metric {
        name: "spend_per_head",
        unit: "GBP per resident",
        higher_is_better: false,
        weighted_by: "population",
        definition: "net revenue expenditure / population (force_resources)",
    },
    Metric {
        name: "officers_per_1000_population",
        unit: "FTE officers per 1,000 residents",
        higher_is_better: true,
        weighted_by: "population",
        definition: "officers_fte / population x 1,000 (force_resources)",
    },
    Metric {
        name: "crimes_per_1000_population",
        unit: "recorded crimes per 1,000 residents",
        higher_is_better: false,
        weighted_by: "population",
        definition: "recorded_crime / population x 1,000 (force_resources)",
    },
    Metric {
        name: "cost_per_crime",
        unit: "GBP per recorded crime",
        higher_is_better: false,
        weighted_by: "recorded crime",
        definition: "net revenue expenditure / recorded_crime (force_resources)",
    },
    Metric {
        name: "charge_summons_rate_pct",
        unit: "% of recorded crimes",
        higher_is_better: true,
        weighted_by: "recorded crime",
        definition: "charges_summonses / recorded_crime x 100 (force_resources)",
    },
    Metric {
        name: "neighbourhood_crime_per_1000_population",
        unit: "offences per 1,000 residents",
        higher_is_better: false,
        weighted_by: "population",
        definition: "domestic burglary + theft from the person + personal robbery + vehicle offences over the four quarters of the year (force_performance) / population x 1,000",
    },
    Metric {
        name: "victim_satisfaction_pct",
        unit: "% satisfied",
        higher_is_better: true,
        weighted_by: "population",
        definition: "mean of the quarterly victim_satisfaction_pct of the year (force_performance)",
    },
    Metric {
        name: "median_days_offence_to_completion",
        unit: "days",
        higher_is_better: false,
        weighted_by: "completed cases",
        definition: "median days from offence to completion of cases completed in the year's quarters (court_timeliness), where the defendants' perturbed count reaches min_count (the cell key release every query gets)",
    },
    Metric {
        name: "proportion_reoffending_pct",
        unit: "% of offenders",
        higher_is_better: false,
        weighted_by: "offenders in cohort",
        definition: "released reoffenders / released offenders x 100 over the year's four quarterly cohorts (reoffending_cohort), through the cell key release every query gets (perturbed, rounded to round_to, withheld under min_count perturbed persons)",
    },
];

pub(crate) const NEIGHBOURHOOD: [&str; 4] = [
    "domestic_burglary",
    "theft_from_person",
    "robbery_personal",
    "vehicle_offences",
];

/// Financial year (`YYYY-YY`, April to March) of a calendar quarter (`YYYYQn`).
pub fn financial_year_of(quarter: &str) -> Option<String> {
    let (y, q) = quarter.split_once('Q')?;
    let year: i32 = y.parse().ok()?;
    let q: u32 = q.parse().ok()?;
    let start = match q {
        1 => year - 1,
        2..=4 => year,
        _ => return None,
    };
    Some(format!("{start}-{:02}", (start + 1) % 100))
}

/// Why a rebuild failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Reading an input or writing the result.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Computing over the inputs.
    #[error("query: {0}")]
    Query(String),
}

pub(crate) fn q(e: impl std::fmt::Display) -> BuildError {
    BuildError::Query(e.to_string())
}

impl BuildError {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            BuildError::Store(e) => e.kind(),
            BuildError::Query(_) => ErrorKind::Internal,
        }
    }
}
