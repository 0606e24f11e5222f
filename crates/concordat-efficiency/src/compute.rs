//! Computing the rows from the inputs: values, most-similar-group and national
//! comparators, differences, ranks and quartiles. Pure; no I/O.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int32Array, RecordBatch, StringArray};
use concordat_core::Reference;

use crate::{DATASET, METRICS, Metric};

/// One force-year's resources.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Resources {
    /// Resident population.
    pub population: f64,
    /// Net revenue expenditure, GBP.
    pub spend: f64,
    /// Officers, FTE.
    pub officers: f64,
    /// Recorded crime.
    pub crimes: f64,
    /// Charges and summonses.
    pub charges: f64,
}

/// A figure drawn from record-level data for one force-year, as the release gave it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Released {
    /// The figure.
    pub value: f64,
    /// Its comparator weight (cases or offenders).
    pub weight: f64,
    /// Distinct persons behind it.
    pub persons: u64,
}

/// Everything the dataset is computed from, keyed by (force, financial year).
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// `force_resources`.
    pub resources: HashMap<(String, String), Resources>,
    /// Neighbourhood crime: the sum over quarters, and the quarters present.
    pub neighbourhood: HashMap<(String, String), (f64, usize)>,
    /// Victim satisfaction: the quarterly values.
    pub satisfaction: HashMap<(String, String), Vec<f64>>,
    /// Court timeliness.
    pub court: HashMap<(String, String), Released>,
    /// Proven reoffending.
    pub reoffending: HashMap<(String, String), Released>,
    /// Each force's MSG peers.
    pub groups: BTreeMap<String, Vec<String>>,
    /// Where the groups came from, for the notes.
    pub groups_source: String,
}

/// One output row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Force area code.
    pub pfa_code: String,
    /// Force name.
    pub force_name: String,
    /// Financial year.
    pub financial_year: String,
    /// Metric name.
    pub metric: &'static str,
    /// The force's value.
    pub value: Option<f64>,
    /// Weighted mean of the MSG peers.
    pub msg_value: Option<f64>,
    /// Weighted mean of all forces.
    pub national_value: Option<f64>,
    /// (value - msg) / msg x 100.
    pub diff_from_msg_pct: Option<f64>,
    /// 1 = best.
    pub rank: Option<i32>,
    /// 1 = best quarter.
    pub quartile: Option<i32>,
    /// Unit of the value.
    pub unit: &'static str,
    /// What the comparators are weighted by.
    pub weighted_by: &'static str,
    /// Why a value or comparator is missing.
    pub note: Option<String>,
}

type Figure = Result<(f64, f64), String>;

fn missing(dataset: &str, fy: &str) -> String {
    format!("missing input: {dataset} has no {fy} figures for this force")
}

impl Inputs {
    fn figure(&self, metric: &Metric, force: &str, fy: &str, min_count: u64) -> Figure {
        let key = (force.to_owned(), fy.to_owned());
        let resources = self.resources.get(&key);
        let need = || {
            resources
                .copied()
                .ok_or_else(|| missing("force_resources", fy))
        };
        let ratio = |num: f64, den: f64, scale: f64, weight: f64| -> Figure {
            if den > 0.0 {
                Ok((num / den * scale, weight))
            } else {
                Err("not computable: the denominator is zero".into())
            }
        };
        let controlled = |m: Option<&Released>, dataset: &str| -> Figure {
            match m {
                None => Err(missing(dataset, fy)),
                Some(c) if c.persons < min_count => Err(format!(
                    "suppressed: fewer than {min_count} distinct persons behind the figure (disclosure control)"
                )),
                Some(c) => Ok((c.value, c.weight)),
            }
        };
        match metric.name {
            "spend_per_head" => {
                need().and_then(|r| ratio(r.spend, r.population, 1.0, r.population))
            }
            "officers_per_1000_population" => {
                need().and_then(|r| ratio(r.officers, r.population, 1000.0, r.population))
            }
            "crimes_per_1000_population" => {
                need().and_then(|r| ratio(r.crimes, r.population, 1000.0, r.population))
            }
            "cost_per_crime" => need().and_then(|r| ratio(r.spend, r.crimes, 1.0, r.crimes)),
            "charge_summons_rate_pct" => {
                need().and_then(|r| ratio(r.charges, r.crimes, 100.0, r.crimes))
            }
            "neighbourhood_crime_per_1000_population" => {
                let (sum, quarters) = self
                    .neighbourhood
                    .get(&key)
                    .copied()
                    .ok_or_else(|| missing("force_performance", fy))?;
                if quarters < 4 {
                    return Err(format!(
                        "incomplete input: force_performance has {quarters} of the 4 quarters of {fy}"
                    ));
                }
                let r = need()?;
                ratio(sum, r.population, 1000.0, r.population)
            }
            "victim_satisfaction_pct" => {
                let values = self
                    .satisfaction
                    .get(&key)
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| missing("force_performance", fy))?;
                let r = need()?;
                Ok((
                    values.iter().sum::<f64>() / values.len() as f64,
                    r.population,
                ))
            }
            "median_days_offence_to_completion" => {
                controlled(self.court.get(&key), "court_timeliness")
            }
            "proportion_reoffending_pct" => {
                controlled(self.reoffending.get(&key), "reoffending_cohort")
            }
            _ => Err("unknown metric".into()),
        }
    }
}

fn weighted_mean<'a>(figures: impl Iterator<Item = &'a (f64, f64)>) -> Option<f64> {
    let (num, den) = figures.fold((0.0, 0.0), |(n, d), (v, w)| (n + v * w, d + w));
    (den > 0.0).then(|| num / den)
}

/// Computes every row for the given financial years, all 43 forces and all metrics.
pub fn compute(inputs: &Inputs, years: &[String], min_count: u64) -> Vec<Row> {
    let forces = Reference::builtin().forces();
    let mut rows = Vec::with_capacity(forces.len() * years.len() * METRICS.len());
    for fy in years {
        for metric in &METRICS {
            let figures: BTreeMap<String, Figure> = forces
                .iter()
                .map(|f| {
                    let code = f.pfa_code.to_string();
                    let fig = inputs.figure(metric, &code, fy, min_count);
                    (code, fig)
                })
                .collect();
            let known: Vec<(&String, &(f64, f64))> = figures
                .iter()
                .filter_map(|(k, v)| v.as_ref().ok().map(|v| (k, v)))
                .collect();
            let national = weighted_mean(known.iter().map(|(_, v)| *v));
            let mut order: Vec<f64> = known.iter().map(|(_, v)| v.0).collect();
            order.sort_by(|a, b| {
                if metric.higher_is_better {
                    b.total_cmp(a)
                } else {
                    a.total_cmp(b)
                }
            });
            let n = order.len();
            for f in forces {
                let code = f.pfa_code.to_string();
                let fig = &figures[&code];
                let peers = inputs.groups.get(&code);
                let msg = peers.and_then(|p| {
                    weighted_mean(
                        p.iter()
                            .filter_map(|peer| figures.get(peer).and_then(|x| x.as_ref().ok())),
                    )
                });
                let (value, mut note) = match fig {
                    Ok((v, _)) => (Some(*v), None),
                    Err(why) => (None, Some(why.clone())),
                };
                if value.is_some() && msg.is_none() {
                    note = Some(match peers {
                        None => format!(
                            "no most similar group for this force ({})",
                            inputs.groups_source
                        ),
                        Some(_) => "no peer in the most similar group has this figure".into(),
                    });
                }
                let rank = value.map(|v| {
                    // Competition ranking: ties share the better rank.
                    let better = order
                        .iter()
                        .filter(|o| {
                            if metric.higher_is_better {
                                **o > v
                            } else {
                                **o < v
                            }
                        })
                        .count();
                    better as i32 + 1
                });
                let quartile = rank.map(|r| ((r as usize - 1) * 4 / n.max(1)) as i32 + 1);
                let diff = match (value, msg) {
                    (Some(v), Some(m)) if m != 0.0 => Some((v - m) / m * 100.0),
                    _ => None,
                };
                rows.push(Row {
                    pfa_code: code.clone(),
                    force_name: f.force_name.clone(),
                    financial_year: fy.clone(),
                    metric: metric.name,
                    value,
                    msg_value: msg,
                    national_value: national,
                    diff_from_msg_pct: diff,
                    rank,
                    quartile,
                    unit: metric.unit,
                    weighted_by: metric.weighted_by,
                    note,
                });
            }
        }
    }
    rows
}

/// The rows as one batch, in the dataset's column order.
pub fn to_batch(rows: &[Row]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let schema = Arc::new(concordat_store::arrow_schema(
        concordat_core::Schemas::builtin()
            .get(DATASET)
            .ok_or_else(|| {
                arrow::error::ArrowError::SchemaError("no force_efficiency schema".into())
            })?,
    ));
    let text = |f: &dyn Fn(&Row) -> Option<String>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<StringArray>())
    };
    let num = |f: &dyn Fn(&Row) -> Option<f64>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<Float64Array>())
    };
    let int = |f: &dyn Fn(&Row) -> Option<i32>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<Int32Array>())
    };
    let mut columns = Vec::new();
    for field in schema.fields() {
        columns.push(match field.name().as_str() {
            "pfa_code" => text(&|r| Some(r.pfa_code.clone())),
            "force_name" => text(&|r| Some(r.force_name.clone())),
            "financial_year" => text(&|r| Some(r.financial_year.clone())),
            "metric" => text(&|r| Some(r.metric.to_owned())),
            "value" => num(&|r| r.value),
            "msg_value" => num(&|r| r.msg_value),
            "national_value" => num(&|r| r.national_value),
            "diff_from_msg_pct" => num(&|r| r.diff_from_msg_pct),
            "rank" => int(&|r| r.rank),
            "quartile" => int(&|r| r.quartile),
            "unit" => text(&|r| Some(r.unit.to_owned())),
            "weighted_by" => text(&|r| Some(r.weighted_by.to_owned())),
            "note" => text(&|r| r.note.clone()),
            other => {
                return Err(arrow::error::ArrowError::SchemaError(format!(
                    "force_efficiency has no builder for column {other}"
                )));
            }
        });
    }
    RecordBatch::try_new(schema, columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::financial_year_of;

    const A: &str = "E23000032"; // Kent
    const B: &str = "E23000028"; // Essex
    const C: &str = "E23000031"; // Surrey

    fn fy() -> String {
        "2023-24".into()
    }

    fn inputs() -> Inputs {
        let mut i = Inputs::default();
        let k = |f: &str| (f.to_owned(), fy());
        i.resources.insert(
            k(A),
            Resources {
                population: 1_000_000.0,
                spend: 200_000_000.0,
                officers: 2_000.0,
                crimes: 100_000.0,
                charges: 8_000.0,
            },
        );
        i.resources.insert(
            k(B),
            Resources {
                population: 3_000_000.0,
                spend: 450_000_000.0,
                officers: 4_500.0,
                crimes: 150_000.0,
                charges: 15_000.0,
            },
        );
        // Surrey has not uploaded its resources for the year.
        i.reoffending.insert(
            k(A),
            Released {
                value: 30.0,
                weight: 1000.0,
                persons: 900,
            },
        );
        i.reoffending.insert(
            k(B),
            Released {
                value: 20.0,
                weight: 3000.0,
                persons: 2500,
            },
        );
        i.reoffending.insert(
            k(C),
            Released {
                value: 50.0,
                weight: 8.0,
                persons: 8,
            },
        );
        i.groups.insert(A.into(), vec![B.into(), C.into()]);
        i.groups.insert(B.into(), vec![A.into()]);
        i.groups.insert(C.into(), vec![A.into(), B.into()]);
        i.groups_source = "test".into();
        i
    }

    fn row<'a>(rows: &'a [Row], force: &str, metric: &str) -> &'a Row {
        rows.iter()
            .find(|r| r.pfa_code == force && r.metric == metric)
            .expect("row")
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn metric_arithmetic_matches_hand_computed_values() {
        let rows = compute(&inputs(), &[fy()], 10);
        assert_eq!(rows.len(), 43 * METRICS.len());
        let spend = row(&rows, A, "spend_per_head");
        assert!(close(spend.value, 200.0));
        // MSG of Kent = Essex only (Surrey has no figure): 450m / 3m = 150.
        assert!(close(spend.msg_value, 150.0));
        // National, weighted by population: (200m + 450m) / 4m = 162.5.
        assert!(close(spend.national_value, 162.5));
        assert!(close(
            spend.diff_from_msg_pct,
            (200.0 - 150.0) / 150.0 * 100.0
        ));
        // Lower spend is better: Essex 1st, Kent 2nd of 2; quartiles 1 and 3.
        assert_eq!(spend.rank, Some(2));
        assert_eq!(spend.quartile, Some(3));
        assert_eq!(row(&rows, B, "spend_per_head").rank, Some(1));
        assert!(close(
            row(&rows, A, "officers_per_1000_population").value,
            2.0
        ));
        assert!(close(
            row(&rows, A, "crimes_per_1000_population").value,
            100.0
        ));
        assert!(close(row(&rows, A, "cost_per_crime").value, 2000.0));
        let charge = row(&rows, B, "charge_summons_rate_pct");
        assert!(close(charge.value, 10.0));
        // Higher charge rate is better: Essex 10% beats Kent 8%.
        assert_eq!(charge.rank, Some(1));
        // National charge rate is weighted by recorded crime: 23k / 250k.
        assert!(close(charge.national_value, 23_000.0 / 250_000.0 * 100.0));
    }

    #[test]
    fn weighted_means_are_used_not_plain_means() {
        let rows = compute(&inputs(), &[fy()], 10);
        let r = row(&rows, A, "proportion_reoffending_pct");
        // Plain mean of Kent and Essex: 25; weighted by offenders: (30x1000 + 20x3000) / 4000.
        let weighted = (30.0 * 1000.0 + 20.0 * 3000.0) / 4000.0;
        assert!(close(r.national_value, weighted));
        assert!((weighted - 25.0).abs() > 1.0);
    }

    #[test]
    fn missing_and_suppressed_inputs_give_nulls_with_reasons_and_stay_out_of_comparators() {
        let rows = compute(&inputs(), &[fy()], 10);
        let surrey = row(&rows, C, "spend_per_head");
        assert_eq!(surrey.value, None);
        assert_eq!(surrey.rank, None);
        assert!(
            surrey
                .note
                .as_deref()
                .is_some_and(|n| n.contains("missing input: force_resources"))
        );
        // Surrey's MSG still has a value from its peers.
        assert!(close(surrey.msg_value, 650.0 / 4.0));
        let reo = row(&rows, C, "proportion_reoffending_pct");
        assert_eq!(reo.value, None);
        assert!(
            reo.note
                .as_deref()
                .is_some_and(|n| n.starts_with("suppressed")),
            "{reo:?}"
        );
        // Surrey's 50% (8 persons) is not in Kent's MSG or the national figure.
        assert!(close(
            row(&rows, A, "proportion_reoffending_pct").msg_value,
            20.0
        ));
        // A force with nothing at all: null, noted, unranked.
        let other = rows
            .iter()
            .find(|r| r.pfa_code == "E23000001" && r.metric == "cost_per_crime")
            .expect("met");
        assert_eq!((other.value, other.rank), (None, None));
        assert!(other.note.is_some());
    }

    #[test]
    fn financial_years_run_april_to_march() {
        assert_eq!(financial_year_of("2024Q1").as_deref(), Some("2023-24"));
        assert_eq!(financial_year_of("2024Q2").as_deref(), Some("2024-25"));
        assert_eq!(financial_year_of("1999Q4").as_deref(), Some("1999-00"));
        assert_eq!(financial_year_of("2024Q5"), None);
    }
}
