//! Reading the inputs at their latest versions, in the query crate's session, with
//! figures drawn from record-level data released exactly as any aggregate query's.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type};
use concordat_core::msg::{
    CHARACTERISTICS, Characteristics, DEFAULT_GROUP_SIZE, most_similar_groups,
};
use concordat_query::sdc::cellkey::{RecordKey, record_keys};
use concordat_query::sdc::contributions::{Gatherer, Group, Part};
use concordat_query::sdc::rules::{self, Terms};
use concordat_store::{Store, StoreError};
use datafusion::prelude::SessionContext;

use crate::compute::{Inputs, Released, Resources};
use crate::{BuildError, INPUTS, NEIGHBOURHOOD, financial_year_of, q};

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

/// How record-level inputs are read and released: in a session with a query's limits,
/// under the same terms and record keys as any query.
#[derive(Clone, Copy)]
pub struct Release<'a> {
    /// A session from the query service ([`concordat_query::QueryService::session`]).
    pub session: &'a SessionContext,
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
    // The gatherer reads each person by their record key.
    let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
    fields[2] = Arc::new(arrow::datatypes::Field::new(
        fields[2].name(),
        DataType::UInt64,
        true,
    ));
    let keyed = Arc::new(arrow::datatypes::Schema::new(fields));
    let mut stream = df.execute_stream().await.map_err(q)?;
    while let Some(b) = futures::StreamExt::next(&mut stream).await {
        let mut columns = b.map_err(q)?.columns().to_vec();
        columns[2] = Arc::new(record_keys(release.key, columns[2].as_ref()).map_err(q)?);
        let b = arrow::record_batch::RecordBatch::try_new(keyed.clone(), columns).map_err(q)?;
        gatherer.push(&b).map_err(q)?;
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
    // Bounded memory: the query limits make counting distinct persons over tens of
    // millions of rows spill to disk instead of holding every pseudonym.
    let ctx = release.session;
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

    let r = rows(ctx, "SELECT pfa_code, financial_year, avg(population), avg(net_revenue_expenditure_gbp), avg(officers_fte), avg(recorded_crime), avg(charges_summonses) FROM force_resources GROUP BY pfa_code, financial_year").await?;
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
        ctx,
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
        ctx,
        &format!(
            "SELECT pfa_code, {fy} AS fy, median(CAST(completion_date AS BIGINT) - CAST(offence_date AS BIGINT)) \
             FROM court_timeliness WHERE completion_date IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2",
            fy = fy_sql("quarter")
        ),
    )
    .await?;
    let (f, y, days) = (r.text(0)?, r.text(1)?, r.num(2)?);
    let cases = released(
        ctx,
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
                Released {
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
        ctx,
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
            (Some(n), Some(r)) if n > 0.0 => Released {
                value: r / n * 100.0,
                weight: n,
                persons: rules::perturbed_persons(&g.parts[0]).max(0) as u64,
            },
            _ => Released {
                value: 0.0,
                weight: offenders.unwrap_or(0.0),
                persons: 0,
            },
        };
        inputs.reoffending.insert(k, figure);
    }

    let names: Vec<&str> = CHARACTERISTICS.iter().map(|(n, _)| *n).collect();
    let r = rows(
        ctx,
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
        ctx,
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
