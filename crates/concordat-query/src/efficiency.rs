//! The police efficiency dataset (`force_efficiency`), derived by the gateway.
//!
//! For each force, financial year and metric: the force's value, the weighted mean of its
//! most similar group (MSG) of peers and of all forces, its difference from the MSG, its
//! rank (1 = best) and quartile. Inputs are the latest versions of `force_resources`,
//! `force_performance`, `court_timeliness`, `reoffending_cohort`, `force_context` (from
//! which MSGs are derived) and `most_similar_groups` (an uploaded MSG table that
//! overrides the derivation). Figures drawn from record-level data pass the same release
//! as any aggregate query ([`crate::sdc`]: cell key perturbation, flattening, rounding,
//! the threshold on perturbed persons), so no route gives a figure another perturbs; a
//! force-year the release withholds has no value, and says why. A missing input gives a null with a note and is left out of the
//! comparators, never counted as zero. The whole dataset is rewritten as one new version
//! that records the input versions it was built from.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::sdc::cellkey::RecordKey;
use crate::sdc::contributions::{Gatherer, Group, Part};
use crate::sdc::rules::{self, Terms};
use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Float64Type};
use concordat_core::Reference;
use concordat_core::msg::{
    CHARACTERISTICS, Characteristics, DEFAULT_GROUP_SIZE, most_similar_groups,
};
use concordat_store::{Store, StoreError};
use datafusion::prelude::SessionContext;

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

const NEIGHBOURHOOD: [&str; 4] = [
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

/// A figure drawn from record-level data for one force-year.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Controlled {
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
    pub court: HashMap<(String, String), Controlled>,
    /// Proven reoffending.
    pub reoffending: HashMap<(String, String), Controlled>,
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
        let controlled = |m: Option<&Controlled>, dataset: &str| -> Figure {
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

fn q(e: impl std::fmt::Display) -> BuildError {
    BuildError::Query(e.to_string())
}

/// SQL for the financial year of a `YYYYQn` column.
fn fy_sql(column: &str) -> String {
    format!(
        "CASE WHEN substr({column}, 6, 1) = '1' \
         THEN concat(CAST(CAST(substr({column}, 1, 4) AS INT) - 1 AS VARCHAR), '-', substr({column}, 3, 2)) \
         ELSE concat(substr({column}, 1, 4), '-', lpad(CAST((CAST(substr({column}, 3, 2) AS INT) + 1) % 100 AS VARCHAR), 2, '0')) END"
    )
}

struct Columns(RecordBatch);

impl Columns {
    fn text(&self, i: usize) -> Result<Vec<String>, BuildError> {
        let a = arrow::compute::cast(self.0.column(i), &DataType::Utf8).map_err(q)?;
        let a = a.as_string::<i32>();
        Ok((0..a.len()).map(|r| a.value(r).to_owned()).collect())
    }
    fn num(&self, i: usize) -> Result<Vec<Option<f64>>, BuildError> {
        let a = arrow::compute::cast(self.0.column(i), &DataType::Float64).map_err(q)?;
        let a = a.as_primitive::<Float64Type>();
        Ok((0..a.len())
            .map(|r| a.is_valid(r).then(|| a.value(r)))
            .collect())
    }
}

async fn rows(ctx: &SessionContext, sql: &str) -> Result<Columns, BuildError> {
    let df = ctx.sql(sql).await.map_err(q)?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await.map_err(q)?;
    Ok(Columns(
        arrow::compute::concat_batches(&schema, &batches).map_err(q)?,
    ))
}

/// How record-level inputs are released: the same terms and record keys as any query.
#[derive(Debug, Clone, Copy)]
pub struct Release<'a> {
    /// The strictest terms of any aggregate-only agreement.
    pub terms: Terms,
    /// The gateway's record-key secret.
    pub key: &'a RecordKey,
}

/// Runs a per-(force, year, person) query (force, year, person, then one contribution
/// per part) and gathers each (force, year)'s persons and contributions.
async fn released(
    ctx: &SessionContext,
    sql: &str,
    parts: &[Part],
    release: Release<'_>,
) -> Result<HashMap<(String, String), Group>, BuildError> {
    let df = ctx.sql(sql).await.map_err(q)?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let mut gatherer = Gatherer::new(
        &schema,
        vec![0, 1],
        2,
        parts.iter().enumerate().map(|(i, p)| (3 + i, *p)).collect(),
        release.terms.min_count as usize,
        usize::MAX,
    )
    .map_err(q)?;
    let mut stream = df.execute_stream().await.map_err(q)?;
    while let Some(b) = futures::StreamExt::next(&mut stream).await {
        gatherer.push(&b.map_err(q)?, release.key).map_err(q)?;
    }
    let (keys, groups) = gatherer.finish().map_err(q)?;
    let text = |i: usize| -> Result<Vec<String>, BuildError> {
        let a = arrow::compute::cast(&keys[i], &DataType::Utf8).map_err(q)?;
        let a = a.as_string::<i32>();
        Ok((0..a.len()).map(|r| a.value(r).to_owned()).collect())
    };
    let (f, y) = (text(0)?, text(1)?);
    Ok(groups
        .into_iter()
        .enumerate()
        .map(|(i, g)| ((f[i].clone(), y[i].clone()), g))
        .collect())
}

/// Reads the inputs at their latest versions; returns them with those versions.
pub async fn read_inputs(
    store: &Store,
    release: Release<'_>,
) -> Result<(Inputs, Vec<String>, BTreeMap<String, Option<u64>>), BuildError> {
    // Bounded memory: counting distinct persons over tens of millions of rows spills to
    // disk instead of holding every pseudonym.
    let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(
            datafusion::execution::memory_pool::GreedyMemoryPool::new(256 << 20),
        ))
        .with_disk_manager_builder(
            datafusion::execution::disk_manager::DiskManagerBuilder::default().with_mode(
                datafusion::execution::disk_manager::DiskManagerMode::Directories(vec![
                    store.config().data_dir.join("spill-efficiency"),
                ]),
            ),
        )
        .build_arc()
        .map_err(q)?;
    std::fs::create_dir_all(store.config().data_dir.join("spill-efficiency")).map_err(q)?;
    let ctx = SessionContext::new_with_config_rt(
        datafusion::prelude::SessionConfig::new().with_target_partitions(2),
        runtime,
    );
    let mut versions = BTreeMap::new();
    for name in INPUTS {
        let schema = concordat_core::Schemas::builtin()
            .get(name)
            .ok_or_else(|| q(format!("no schema for {name}")))?;
        let provider: Arc<dyn datafusion::datasource::TableProvider> =
            match store.table(name, None).await {
                Ok(table) => {
                    versions.insert(name.to_owned(), table.version());
                    table.update_datafusion_session(&ctx.state()).map_err(q)?;
                    table.table_provider().await.map_err(q)?
                }
                Err(StoreError::NotFound(_)) => {
                    versions.insert(name.to_owned(), None);
                    Arc::new(
                        datafusion::datasource::MemTable::try_new(
                            Arc::new(concordat_store::arrow_schema(schema)),
                            vec![vec![]],
                        )
                        .map_err(q)?,
                    )
                }
                Err(e) => return Err(e.into()),
            };
        ctx.register_table(name, provider).map_err(q)?;
    }
    let mut inputs = Inputs::default();
    let mut years = std::collections::BTreeSet::new();
    let key = |f: &str, y: &str| (f.to_owned(), y.to_owned());

    let r = rows(&ctx, "SELECT pfa_code, financial_year, avg(population), avg(net_revenue_expenditure_gbp), avg(officers_fte), avg(recorded_crime), avg(charges_summonses) FROM force_resources GROUP BY pfa_code, financial_year").await?;
    let (f, y) = (r.text(0)?, r.text(1)?);
    let cols: Vec<Vec<Option<f64>>> = (2..7).map(|i| r.num(i)).collect::<Result<_, _>>()?;
    for i in 0..f.len() {
        years.insert(y[i].clone());
        inputs.resources.insert(
            key(&f[i], &y[i]),
            Resources {
                population: cols[0][i].unwrap_or(0.0),
                spend: cols[1][i].unwrap_or(0.0),
                officers: cols[2][i].unwrap_or(0.0),
                crimes: cols[3][i].unwrap_or(0.0),
                charges: cols[4][i].unwrap_or(0.0),
            },
        );
    }

    let wanted: Vec<String> = NEIGHBOURHOOD
        .iter()
        .chain(["victim_satisfaction_pct"].iter())
        .map(|i| format!("'{i}'"))
        .collect();
    let r = rows(
        &ctx,
        &format!(
            "SELECT pfa_code, quarter, indicator, avg(value) FROM force_performance WHERE indicator IN ({}) GROUP BY pfa_code, quarter, indicator",
            wanted.join(", ")
        ),
    )
    .await?;
    let (f, quarter, indicator, value) = (r.text(0)?, r.text(1)?, r.text(2)?, r.num(3)?);
    let mut per_quarter: HashMap<(String, String, String), f64> = HashMap::new();
    for i in 0..f.len() {
        let Some(fy) = financial_year_of(&quarter[i]) else {
            continue;
        };
        let Some(v) = value[i] else { continue };
        if indicator[i] == "victim_satisfaction_pct" {
            inputs
                .satisfaction
                .entry(key(&f[i], &fy))
                .or_default()
                .push(v);
        } else {
            *per_quarter
                .entry((f[i].clone(), fy, quarter[i].clone()))
                .or_default() += v;
        }
    }
    for ((force, fy, _), v) in per_quarter {
        let e = inputs.neighbourhood.entry(key(&force, &fy)).or_default();
        e.0 += v;
        e.1 += 1;
    }

    // Court timeliness: the median stands only where the cases' defendants pass the same
    // release an analyst's count of them would (perturbed persons at least min_count),
    // and it is weighted by the released count of cases.
    let r = rows(
        &ctx,
        &format!(
            "SELECT pfa_code, {fy} AS fy, median(CAST(completion_date AS BIGINT) - CAST(offence_date AS BIGINT)) \
             FROM court_timeliness WHERE completion_date IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2",
            fy = fy_sql("quarter")
        ),
    )
    .await?;
    let (f, y, days) = (r.text(0)?, r.text(1)?, r.num(2)?);
    let cases = released(
        &ctx,
        &format!(
            "SELECT pfa_code, {fy} AS fy, person_id, count(1) FROM court_timeliness \
             WHERE completion_date IS NOT NULL GROUP BY 1, 2, 3",
            fy = fy_sql("quarter")
        ),
        &[Part::Count],
        release,
    )
    .await?;
    for i in 0..f.len() {
        if let Some(d) = days[i] {
            let k = key(&f[i], &y[i]);
            let (weight, persons) = match cases.get(&k) {
                Some(g) => match rules::value(&g.parts[0], true, release.terms) {
                    Some(n) => (n, rules::perturbed_persons(&g.parts[0]).max(0) as u64),
                    None => (0.0, 0),
                },
                None => (0.0, 0),
            };
            inputs.court.insert(
                k,
                Controlled {
                    value: d,
                    weight,
                    persons,
                },
            );
        }
    }

    // Proven reoffending: offenders and reoffenders released exactly as an analyst's
    // `count(*)` and `sum(CASE WHEN reoffended THEN 1 ELSE 0 END)` over the same persons
    // would be, so every route gives the same figure.
    let groups = released(
        &ctx,
        &format!(
            "SELECT pfa_code, {fy} AS fy, person_id, count(1), \
             sum(TRY_CAST(CASE WHEN reoffended THEN 1 ELSE 0 END AS DOUBLE)) \
             FROM reoffending_cohort GROUP BY 1, 2, 3",
            fy = fy_sql("cohort_quarter")
        ),
        &[Part::Count, Part::Sum],
        release,
    )
    .await?;
    for (k, g) in groups {
        let offenders = rules::value(&g.parts[0], true, release.terms);
        let reoffenders = rules::value(&g.parts[1], false, release.terms);
        let figure = match (offenders, reoffenders) {
            (Some(n), Some(r)) if n > 0.0 => Controlled {
                value: r / n * 100.0,
                weight: n,
                persons: rules::perturbed_persons(&g.parts[0]).max(0) as u64,
            },
            _ => Controlled {
                value: 0.0,
                weight: offenders.unwrap_or(0.0),
                persons: 0,
            },
        };
        inputs.reoffending.insert(k, figure);
    }

    let names: Vec<&str> = CHARACTERISTICS.iter().map(|(n, _)| *n).collect();
    let r = rows(
        &ctx,
        &format!(
            "SELECT pfa_code, {} FROM force_context GROUP BY pfa_code",
            names
                .iter()
                .map(|n| format!("avg({n})"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
    .await?;
    let f = r.text(0)?;
    let values: Vec<Vec<Option<f64>>> = (1..=names.len())
        .map(|i| r.num(i))
        .collect::<Result<_, _>>()?;
    let forces: Vec<Characteristics> = (0..f.len())
        .map(|i| Characteristics {
            pfa_code: f[i].clone(),
            values: values.iter().map(|c| c[i].unwrap_or(f64::NAN)).collect(),
        })
        .collect();
    let transforms: Vec<_> = CHARACTERISTICS.iter().map(|(_, t)| *t).collect();
    inputs.groups = most_similar_groups(&forces, &transforms, DEFAULT_GROUP_SIZE)
        .into_iter()
        .map(|(k, peers)| (k, peers.into_iter().map(|p| p.pfa_code).collect()))
        .collect();
    inputs.groups_source = match versions.get("force_context") {
        Some(Some(v)) => format!("derived from force_context version {v}"),
        _ => "force_context has not been uploaded".into(),
    };
    let r = rows(
        &ctx,
        "SELECT DISTINCT pfa_code, peer_pfa_code FROM most_similar_groups ORDER BY pfa_code, peer_pfa_code",
    )
    .await?;
    let (f, peer) = (r.text(0)?, r.text(1)?);
    let mut uploaded: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0..f.len() {
        if f[i] != peer[i] {
            uploaded
                .entry(f[i].clone())
                .or_default()
                .push(peer[i].clone());
        }
    }
    if !uploaded.is_empty() {
        inputs.groups_source = format!(
            "{}; uploaded most_similar_groups version {} overrides it for {} forces",
            inputs.groups_source,
            versions
                .get("most_similar_groups")
                .copied()
                .flatten()
                .map_or("?".into(), |v| v.to_string()),
            uploaded.len()
        );
        inputs.groups.extend(uploaded);
    }
    Ok((inputs, years.into_iter().collect(), versions))
}

/// The input versions the latest `force_efficiency` was built from, if any.
pub async fn built_from(
    store: &Store,
) -> Result<Option<BTreeMap<String, Option<u64>>>, BuildError> {
    let versions = store.versions(DATASET).await?;
    Ok(versions.first().map(|v| v.sources.clone()))
}

/// Rebuilds `force_efficiency` if an input has changed since the last build. Returns the
/// new version, or `None` when it was already up to date (or there is nothing to build).
pub async fn rebuild(store: &Store, release: Release<'_>) -> Result<Option<u64>, BuildError> {
    let min_count = release.terms.min_count;
    // Compare versions before reading any rows: at start, and after a commit that a
    // coalesced rebuild already covered, the inputs are not scanned at all.
    let mut current = BTreeMap::new();
    for name in INPUTS {
        current.insert(name.to_owned(), store.latest_version(name).await?);
    }
    if current.values().all(Option::is_none) || built_from(store).await?.as_ref() == Some(&current)
    {
        return Ok(None);
    }
    let (inputs, years, versions) = read_inputs(store, release).await?;
    // Years come from every input with a financial year in it.
    let mut years: Vec<String> = years
        .into_iter()
        .chain(inputs.neighbourhood.keys().map(|(_, y)| y.clone()))
        .chain(inputs.satisfaction.keys().map(|(_, y)| y.clone()))
        .chain(inputs.court.keys().map(|(_, y)| y.clone()))
        .chain(inputs.reoffending.keys().map(|(_, y)| y.clone()))
        .collect();
    years.sort();
    years.dedup();
    let rows = compute(&inputs, &years, min_count);
    let batch = to_batch(&rows).map_err(q)?;
    let version = store.write_derived(DATASET, vec![batch], versions).await?;
    tracing::info!(version, rows = rows.len(), "force_efficiency rebuilt");
    Ok(Some(version))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            Controlled {
                value: 30.0,
                weight: 1000.0,
                persons: 900,
            },
        );
        i.reoffending.insert(
            k(B),
            Controlled {
                value: 20.0,
                weight: 3000.0,
                persons: 2500,
            },
        );
        i.reoffending.insert(
            k(C),
            Controlled {
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
