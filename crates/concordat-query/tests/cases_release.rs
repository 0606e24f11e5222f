//! Disclosure control against a statistician: secrets planted in a known cohort, attacked
//! by combining queries the way an analyst with an ordinary PCC account would, and the
//! answers checked to hold nothing that recovers them. Then consistency, and utility:
//! legitimate questions answered within the published bounds of the truth.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type};

use crate::planted::{self, BIG, G3, G9, NO, PERSONS, YES};
use crate::support::*;

const PCC: &str = "pcc-kent";
const PURPOSE: &str = "reducing-reoffending";
const R: &str = "reoffending_cohort";

type Estimate = Box<dyn Fn(&[Option<f64>]) -> Option<f64>>;

/// An attack: queries, how the attacker combines their first cells, and the truth.
struct Attack {
    name: String,
    queries: Vec<String>,
    estimate: Estimate,
    truth: f64,
}

fn attack(
    name: impl Into<String>,
    queries: &[String],
    truth: f64,
    estimate: impl Fn(&[Option<f64>]) -> Option<f64> + 'static,
) -> Attack {
    Attack {
        name: name.into(),
        queries: queries.to_vec(),
        estimate: Box::new(estimate),
        truth,
    }
}

fn first(b: &[RecordBatch]) -> Option<f64> {
    let batch = b.iter().find(|b| b.num_rows() > 0)?;
    let a = arrow::compute::cast(batch.column(0), &DataType::Float64).ok()?;
    let a = a.as_primitive::<Float64Type>();
    a.is_valid(0).then(|| a.value(0))
}

/// Small counts, each recovered (before) through another form of the same question.
fn small_counts(cond: &str, label: &str, persons: f64, rows: f64) -> Vec<Attack> {
    let q = |s: String| s;
    let total = q(format!("SELECT count(*) FROM {R}"));
    let mut v = vec![
        attack(
            format!("{label}: count with WHERE"),
            &[q(format!("SELECT count(*) FROM {R} WHERE {cond}"))],
            rows,
            |x| x[0],
        ),
        attack(
            format!("{label}: count FILTER"),
            &[q(format!("SELECT count(*) FILTER (WHERE {cond}) FROM {R}"))],
            rows,
            |x| x[0],
        ),
        attack(
            format!("{label}: integer CASE sum"),
            &[q(format!(
                "SELECT sum(CASE WHEN {cond} THEN 1 ELSE 0 END) FROM {R}"
            ))],
            rows,
            |x| x[0],
        ),
        attack(
            format!("{label}: float CASE sum"),
            &[q(format!(
                "SELECT sum(CASE WHEN {cond} THEN 1.0 ELSE 0.0 END) FROM {R}"
            ))],
            rows,
            |x| x[0],
        ),
        attack(
            format!("{label}: sum cast to double"),
            &[q(format!(
                "SELECT sum(CAST(CASE WHEN {cond} THEN 1 ELSE 0 END AS DOUBLE)) FROM {R}"
            ))],
            rows,
            |x| x[0],
        ),
        attack(
            format!("{label}: exact average times the total"),
            &[
                q(format!(
                    "SELECT avg(CASE WHEN {cond} THEN 1.0 ELSE 0.0 END) FROM {R}"
                )),
                total.clone(),
            ],
            rows,
            |x| Some(x[0]? * x[1]?),
        ),
        attack(
            format!("{label}: percentage times the total"),
            &[
                q(format!(
                    "SELECT 100.0 * sum(CASE WHEN {cond} THEN 1 ELSE 0 END) / count(*) FROM {R}"
                )),
                total.clone(),
            ],
            rows,
            |x| Some(x[0]? * x[1]? / 100.0),
        ),
        attack(
            format!("{label}: difference of two totals"),
            &[
                total.clone(),
                q(format!("SELECT count(*) FROM {R} WHERE NOT ({cond})")),
            ],
            rows,
            |x| Some(x[0]? - x[1]?),
        ),
        attack(
            format!("{label}: sum of a constant"),
            &[q(format!("SELECT sum(5) FROM {R} WHERE {cond}"))],
            rows,
            |x| Some(x[0]? / 5.0),
        ),
        attack(
            format!("{label}: sum of a shifted constant"),
            &[q(format!("SELECT sum(1000003) FROM {R} WHERE {cond}"))],
            rows,
            |x| Some(x[0]? / 1000003.0),
        ),
        attack(
            format!("{label}: sum of seven"),
            &[q(format!("SELECT sum(7) FROM {R} WHERE {cond}"))],
            rows,
            |x| Some(x[0]? / 7.0),
        ),
        attack(
            format!("{label}: crafted contribution"),
            &[
                q(format!(
                    "SELECT sum(CASE WHEN {cond} THEN 1000 ELSE 1 END) FROM {R}"
                )),
                total.clone(),
            ],
            rows,
            |x| Some((x[0]? - x[1]?) / 999.0),
        ),
        attack(
            format!("{label}: crafted negative contribution"),
            &[
                q(format!(
                    "SELECT sum(CASE WHEN {cond} THEN -1000 ELSE 1 END) FROM {R}"
                )),
                total.clone(),
            ],
            rows,
            |x| Some((x[1]? - x[0]?) / 1001.0),
        ),
        attack(
            format!("{label}: wrapping integer sum"),
            &[
                q(format!(
                    "SELECT sum(CASE WHEN {cond} THEN 4611686018427387904 ELSE 1 END) FROM {R}"
                )),
                total.clone(),
            ],
            rows,
            |x| Some((x[0]? - x[1]?) / 4611686018427387903.0),
        ),
        attack(
            format!("{label}: join that repeats each person three times"),
            &[q(format!(
                "SELECT count(*) FROM {R} r JOIN police_forces f ON r.probation_region_code = f.probation_region_code WHERE {}",
                cond.replace("age_band", "r.age_band")
                    .replace("sex", "r.sex")
                    .replace("index_disposal", "r.index_disposal")
            ))],
            rows,
            |x| Some(x[0]? / 3.0),
        ),
        attack(
            format!("{label}: general tracker"),
            &[
                q(format!(
                    "SELECT count(*) FROM {R} WHERE ({cond}) OR sex = 'male'"
                )),
                q(format!(
                    "SELECT count(*) FROM {R} WHERE ({cond}) OR NOT sex = 'male'"
                )),
                total.clone(),
            ],
            rows,
            |x| Some(x[0]? + x[1]? - x[2]?),
        ),
        attack(
            format!("{label}: persons behind a self-join"),
            &[q(format!(
                "SELECT count(*) FROM (SELECT * FROM {R} WHERE {cond}) a JOIN {R} b ON a.person_id = b.person_id"
            ))],
            rows * rows / persons,
            |x| x[0],
        ),
    ];
    if rows != persons {
        v.push(attack(
            format!("{label}: average rows times persons"),
            &[q(format!(
                "SELECT avg(CASE WHEN {cond} THEN 1.0 ELSE 0.0 END) FROM {R}"
            ))],
            persons,
            |x| Some(x[0]? * PERSONS as f64),
        ));
    }
    v
}

/// One person's value: days to first reoffence (17) and a large count of reoffences (40).
fn values() -> Vec<Attack> {
    let q = |s: String| s;
    vec![
        attack(
            "days: sum over the person",
            &[q(format!(
                "SELECT sum(days_to_first_reoffence) FROM {R} WHERE {YES}"
            ))],
            17.0,
            |x| x[0],
        ),
        attack(
            "days: average over the person",
            &[q(format!(
                "SELECT avg(days_to_first_reoffence) FROM {R} WHERE {YES}"
            ))],
            17.0,
            |x| x[0],
        ),
        attack(
            "days: ratio of two averages",
            &[q(format!(
                "SELECT avg(CASE WHEN {YES} THEN days_to_first_reoffence ELSE 0 END) / avg(CASE WHEN {YES} THEN 1.0 ELSE 0.0 END) FROM {R}"
            ))],
            17.0,
            |x| x[0],
        ),
        attack(
            "days: difference of sums",
            &[
                q(format!("SELECT sum(days_to_first_reoffence) FROM {R}")),
                q(format!(
                    "SELECT sum(days_to_first_reoffence) FROM {R} WHERE NOT ({YES})"
                )),
            ],
            17.0,
            |x| Some(x[0]? - x[1]?),
        ),
        attack(
            "days: crafted contribution",
            &[
                q(format!(
                    "SELECT sum(CASE WHEN {YES} THEN days_to_first_reoffence * 1000 ELSE 1 END) FROM {R}"
                )),
                q(format!("SELECT count(*) FROM {R}")),
            ],
            17.0,
            |x| Some((x[0]? - x[1]? + 1.0) / 1000.0),
        ),
        attack(
            "reoffences: difference of sums",
            &[
                q(format!("SELECT sum(reoffences) FROM {R}")),
                q(format!("SELECT sum(reoffences) FROM {R} WHERE NOT ({BIG})")),
            ],
            40.0,
            |x| Some(x[0]? - x[1]?),
        ),
        attack(
            "reoffences: conditional sum",
            &[q(format!(
                "SELECT sum(CASE WHEN {BIG} THEN reoffences ELSE 0 END) FROM {R}"
            ))],
            40.0,
            |x| x[0],
        ),
        attack(
            "reoffences: the one outlier dominates a large sum",
            &[
                q(format!(
                    "SELECT sum(reoffences) FROM {R} WHERE age_band IN ('10-14', '15-17')"
                )),
                q(format!(
                    "SELECT sum(reoffences) FROM {R} WHERE age_band = '15-17'"
                )),
            ],
            40.0 + 3.0,
            |x| Some(x[0]? - x[1]?),
        ),
        attack(
            "reoffences: average of three boys times three",
            &[q(format!(
                "SELECT avg(reoffences) FROM {R} WHERE age_band = '10-14' AND sex = 'male'"
            ))],
            43.0,
            |x| Some(x[0]? * 3.0),
        ),
        attack(
            "reoffenders among three girls",
            &[q(format!(
                "SELECT sum(CASE WHEN reoffended THEN 1 ELSE 0 END) FROM {R} WHERE {G3}"
            ))],
            2.0,
            |x| x[0],
        ),
        attack(
            "ten-to-fourteens: A - B - C",
            &[
                q(format!("SELECT count(*) FROM {R}")),
                q(format!(
                    "SELECT count(*) FROM {R} WHERE age_band <> '10-14'"
                )),
                q(format!(
                    "SELECT count(*) FROM {R} WHERE age_band = '10-14' AND sex = 'male'"
                )),
            ],
            3.0,
            |x| Some(x[0]? - x[1]? - x[2].unwrap_or(0.0)),
        ),
        attack(
            "ten-to-fourteens: total minus three large groups",
            &[
                q(format!("SELECT count(*) FROM {R}")),
                q(format!(
                    "SELECT count(*) FROM {R} WHERE age_band <> '10-14' AND sex = 'male'"
                )),
                q(format!(
                    "SELECT count(*) FROM {R} WHERE age_band <> '10-14' AND sex = 'female'"
                )),
            ],
            6.0,
            |x| Some(x[0]? - x[1]? - x[2]?),
        ),
    ]
}

/// The record-key secrets the attacks run under. The answers are a deterministic function
/// of the data and the secret, so the test is too; a leak shows under every secret, while
/// an estimate that lands on the truth by chance, once, recovers nothing, because the
/// attacker cannot tell it from its neighbours.
const SECRETS: std::ops::RangeInclusive<u8> = 1..=8;

#[tokio::test]
async fn planted_secrets_cannot_be_recovered_by_combining_answers() {
    let w = planted::world().await;
    let mut attacks = small_counts(G3, "three girls", 3.0, 3.0);
    attacks.extend(small_counts(G9, "nine long sentences", 9.0, 27.0));
    attacks.extend(values());
    assert!(attacks.len() >= 45, "{} attacks", attacks.len());
    let services: Vec<_> = SECRETS
        .map(|s| {
            w.service_with(concordat_query::sdc::cellkey::RecordKey::from_secret(
                &[s; 32],
            ))
        })
        .collect();
    let mut hits = vec![Vec::new(); attacks.len()];
    for service in &services {
        for (a, hit) in attacks.iter().zip(&mut hits) {
            let mut cells = Vec::new();
            for sql in &a.queries {
                // A refusal is an answer too: it must not depend on the data, which the
                // yes/no test checks; here it simply gives the attacker nothing.
                let answer = w.run_on_service(service, PCC, sql, PURPOSE).await;
                cells.push(answer.ok().and_then(|b| first(&b)));
            }
            if let Some(e) = (a.estimate)(&cells)
                && (e - a.truth).abs() < 0.5
            {
                hit.push(format!("{e} from {cells:?}"));
            }
        }
    }
    // Under a secret, an attack lands on the truth by chance about as often as on any
    // other value its noise can reach; twice in eight secrets is a pattern, not chance.
    let recovered: Vec<_> = attacks
        .iter()
        .zip(&hits)
        .filter(|(_, h)| h.len() >= 2)
        .map(|(a, h)| {
            format!(
                "{}: under {} of {} secrets: {}",
                a.name,
                h.len(),
                services.len(),
                h.join("; ")
            )
        })
        .collect();
    assert!(recovered.is_empty(), "recovered:\n{}", recovered.join("\n"));
    // And chance stays chance: over all attacks and secrets, few land on the truth.
    let landed: usize = hits.iter().map(Vec::len).sum();
    assert!(
        landed * 20 <= attacks.len() * services.len(),
        "{landed} estimates landed on the truth"
    );
}

/// Everything an answer shows: its rows (or error) and its disclosure record.
async fn shown(w: &World, sql: &str) -> String {
    match w.start(PCC, sql, PURPOSE).await {
        Err(e) => format!("error {} {e}", e.code()),
        Ok(mut run) => {
            let mut b = Vec::new();
            while let Some(x) = run.batches.recv().await {
                match x {
                    Ok(x) => b.push(x),
                    Err(e) => return format!("error {} {e}", e.code()),
                }
            }
            // The record names each released aggregate by its SQL text, which differs
            // between the two questions by the condition only; everything else counts.
            let mut record = serde_json::to_value(&run.disclosure).expect("record");
            if let Some(r) = record.as_object_mut() {
                r.remove("rounded_columns");
            }
            format!("{}\n{record}", lines(&b).join("\n"))
        }
    }
}

#[tokio::test]
async fn a_person_who_reoffended_and_one_who_did_not_get_the_same_answers() {
    let w = planted::world().await;
    // Each template is asked about the boy who reoffended and about the boy who did not:
    // if any answer, refusal, withheld mark or record differed, it would tell.
    let templates = [
        "SELECT count(*) AS v FROM reoffending_cohort WHERE {T} AND reoffended",
        "SELECT count(*) FILTER (WHERE {T} AND reoffended) AS v FROM reoffending_cohort",
        "SELECT avg(CASE WHEN {T} AND reoffended THEN 1.0 ELSE 0.0 END) AS v FROM reoffending_cohort",
        "SELECT avg(CASE WHEN {T} THEN CAST(reoffended AS INT) END) AS v FROM reoffending_cohort",
        "SELECT sum(CASE WHEN {T} THEN 1 ELSE 0 END * CASE WHEN reoffended THEN 1 ELSE 0 END) AS v FROM reoffending_cohort",
        "SELECT sum(CASE WHEN {T} AND reoffended THEN reoffences END) AS v FROM reoffending_cohort",
        "SELECT avg(CASE WHEN {T} THEN days_to_first_reoffence END) AS v FROM reoffending_cohort",
        "SELECT index_offence_group AS k, count(*) AS v FROM reoffending_cohort WHERE age_band = '10-14' AND sex = 'male' AND reoffended GROUP BY index_offence_group",
        "SELECT days_to_first_reoffence AS k, count(*) AS v FROM reoffending_cohort WHERE {T} GROUP BY days_to_first_reoffence",
        "SELECT reoffences AS k, count(*) AS v FROM reoffending_cohort WHERE {T} GROUP BY reoffences",
        "SELECT reoffended AS k, count(*) AS v FROM reoffending_cohort WHERE {T} GROUP BY reoffended",
        "SELECT sex AS k, count(*) AS v FROM reoffending_cohort WHERE {T} AND reoffended GROUP BY ROLLUP(sex)",
        "SELECT count(*) AS v FROM reoffending_cohort WHERE {T} AND CASE WHEN reoffended THEN 1/(reoffences - reoffences) ELSE 1 END = 1",
        "SELECT count(*) AS v FROM reoffending_cohort WHERE {T} AND CAST(CASE WHEN reoffended THEN 'x' ELSE '1' END AS INT) = 1",
        "SELECT count(*) AS v FROM reoffending_cohort r JOIN police_forces f ON r.probation_region_code = f.probation_region_code WHERE {T} AND reoffended",
        "SELECT count(*) AS v FROM (SELECT * FROM reoffending_cohort WHERE {T} AND reoffended) a JOIN reoffending_cohort b ON a.person_id = b.person_id",
    ];
    let mut leaks = Vec::new();
    for t in templates {
        let yes = shown(&w, &t.replace("{T}", YES)).await;
        let no = shown(&w, &t.replace("{T}", NO)).await;
        if yes != no {
            leaks.push(format!("{t}\n  reoffended: {yes}\n  did not:   {no}"));
        }
    }
    assert!(leaks.is_empty(), "{}", leaks.join("\n\n"));
}

#[tokio::test]
async fn an_empty_group_and_a_small_one_look_the_same_everywhere() {
    let w = planted::world().await;
    // Three 10-14-year-old girls, and no 10-14-year-old of unknown sex.
    for (small, empty) in [
        (
            "SELECT count(*) FROM reoffending_cohort WHERE age_band = '10-14' AND sex = 'female'",
            "SELECT count(*) FROM reoffending_cohort WHERE age_band = '10-14' AND sex = 'unknown'",
        ),
        (
            "SELECT index_offence_group, count(*) FROM reoffending_cohort WHERE age_band = '10-14' AND sex = 'female' GROUP BY index_offence_group",
            "SELECT index_offence_group, count(*) FROM reoffending_cohort WHERE age_band = '10-14' AND sex = 'unknown' GROUP BY index_offence_group",
        ),
        (
            "SELECT cohort_quarter, count(*) FROM reoffending_cohort WHERE age_band = '10-14' AND sex = 'female' GROUP BY cohort_quarter",
            "SELECT cohort_quarter, count(*) FROM reoffending_cohort WHERE age_band = '10-14' AND sex = 'unknown' GROUP BY cohort_quarter",
        ),
        (
            "SELECT avg(days_to_first_reoffence) FROM reoffending_cohort WHERE age_band = '10-14' AND sex = 'female'",
            "SELECT avg(days_to_first_reoffence) FROM reoffending_cohort WHERE age_band = '10-14' AND sex = 'unknown'",
        ),
    ] {
        assert_eq!(shown(&w, small).await, shown(&w, empty).await, "{small}");
    }
}

#[tokio::test]
async fn the_same_persons_always_get_the_same_answer() {
    let w = planted::world().await;
    let forms = [
        "SELECT count(*) FROM reoffending_cohort WHERE sex = 'female' AND reoffended",
        "SELECT count(*) FILTER (WHERE sex = 'female' AND reoffended) FROM reoffending_cohort",
        "SELECT sum(CASE WHEN sex = 'female' AND reoffended THEN 1 ELSE 0 END) FROM reoffending_cohort",
        "SELECT count(*) FROM reoffending_cohort WHERE reoffended AND sex IN ('female')",
        "SELECT count(*) FROM reoffending_cohort WHERE NOT (sex <> 'female' OR NOT reoffended)",
    ];
    let mut seen = Vec::new();
    for sql in forms {
        let a = w.run(PCC, sql, PURPOSE).await.expect(sql);
        let b = w.run(PCC, sql, PURPOSE).await.expect(sql);
        assert_eq!(first(&a), first(&b), "{sql} asked twice");
        seen.push(first(&a).expect("released"));
    }
    assert!(seen.windows(2).all(|p| p[0] == p[1]), "{seen:?}");
    // A breakdown's cell equals the same persons asked alone.
    let by_sex = w
        .run(
            PCC,
            "SELECT sex, count(*) FROM reoffending_cohort WHERE reoffended GROUP BY sex ORDER BY sex",
            PURPOSE,
        )
        .await
        .expect("by sex");
    let female = texts(&by_sex, 0)
        .iter()
        .position(|k| k == "female")
        .expect("female row");
    assert_eq!(texts(&by_sex, 1)[female], format!("{}", seen[0] as i64));
}

#[tokio::test]
async fn a_restart_with_the_same_secret_gives_the_same_answers_and_another_secret_does_not() {
    let w = planted::world().await;
    let sql = "SELECT age_band, count(*), sum(reoffences), avg(days_to_first_reoffence) FROM reoffending_cohort GROUP BY age_band";
    let secret = concordat_query::sdc::cellkey::RecordKey::from_secret(&[9u8; 32]);
    let mut answers = Vec::new();
    for key in [
        secret.clone(),
        secret,
        concordat_query::sdc::cellkey::RecordKey::from_secret(&[8u8; 32]),
    ] {
        let s = w.service_with(key);
        let mut run = w
            .start_on(&s, PCC, sql, PURPOSE, today())
            .await
            .expect("run");
        let mut b = Vec::new();
        while let Some(x) = run.batches.recv().await {
            b.push(x.expect("batch"));
        }
        answers.push(lines(&b));
    }
    assert_eq!(answers[0], answers[1]);
    assert_ne!(answers[0], answers[2]);
}

/// One person's contributions per group, from the raw rows: `(key, contributions)`.
async fn contributions(
    w: &World,
    table: &str,
    key: &str,
    contribution: &str,
) -> std::collections::BTreeMap<String, Vec<f64>> {
    let sql = format!(
        "SELECT CAST({key} AS VARCHAR) AS k, CAST({contribution} AS DOUBLE) AS c FROM {table} GROUP BY 1, person_id"
    );
    let raw = w.direct(&sql, &[(table, "pfa_code = 'E23000032'")]).await;
    let keys = texts(&raw, 0);
    let mut out: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    let mut i = 0;
    for b in &raw {
        let c = arrow::compute::cast(b.column(1), &DataType::Float64).expect("cast");
        let c = c.as_primitive::<Float64Type>();
        for r in 0..b.num_rows() {
            let v = if c.is_valid(r) { c.value(r) } else { 0.0 };
            let e = out.entry(keys[i].clone()).or_default();
            if v != 0.0 {
                e.push(v);
            }
            i += 1;
        }
    }
    out
}

/// The truth and the published bound for a released count or sum, from its persons'
/// contributions: flattening shift + 3 × largest flattened contribution + round_to / 2.
fn truth_and_bound(c: &[f64], count: bool) -> (f64, f64, usize) {
    let truth: f64 = c.iter().sum();
    let n = c.len();
    if n == 0 {
        return (0.0, 0.0, 0);
    }
    let mut v = c.to_vec();
    v.sort_by(f64::total_cmp);
    let (flat, level) = if n < 19 {
        let m = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        (m * n as f64, m.abs())
    } else {
        let (lo, hi) = (v[9], v[n - 10]);
        (
            v.iter().map(|x| x.clamp(lo, hi)).sum(),
            lo.abs().max(hi.abs()),
        )
    };
    let level = if count { level.max(1.0) } else { level };
    (truth, (truth - flat).abs() + 3.0 * level + 2.5, n)
}

#[tokio::test]
async fn legitimate_questions_are_answered_within_the_published_bounds() {
    let w = world().await;
    // (table, breakdown, gateway aggregate, per-person contribution, count?)
    let mut corpus: Vec<(&str, &str, &str, &str, bool)> = Vec::new();
    for key in [
        "age_band",
        "sex",
        "index_disposal",
        "index_offence_group",
        "previous_offences_band",
        "cohort_quarter",
        "adult_juvenile",
    ] {
        corpus.push((R, key, "count(*)", "count(*)", true));
        corpus.push((
            R,
            key,
            "sum(CASE WHEN reoffended THEN 1 ELSE 0 END)",
            "sum(CASE WHEN reoffended THEN 1 ELSE 0 END)",
            false,
        ));
        corpus.push((R, key, "sum(reoffences)", "sum(reoffences)", false));
        corpus.push((
            R,
            key,
            "sum(days_to_first_reoffence)",
            "sum(days_to_first_reoffence)",
            false,
        ));
    }
    for key in ["court_type", "offence_group", "outcome", "plea", "quarter"] {
        corpus.push(("court_timeliness", key, "count(*)", "count(*)", true));
        corpus.push((
            "court_timeliness",
            key,
            "sum(first_listing_date - charge_date)",
            "sum(first_listing_date - charge_date)",
            false,
        ));
        corpus.push((
            "court_timeliness",
            key,
            "sum(CASE WHEN plea = 'guilty' THEN 1 ELSE 0 END)",
            "sum(CASE WHEN plea = 'guilty' THEN 1 ELSE 0 END)",
            false,
        ));
    }
    assert!(corpus.len() >= 40, "{}", corpus.len());
    let (mut cells, mut within, mut withheld) = (0usize, 0usize, 0usize);
    let mut failures = Vec::new();
    for (table, key, agg, contribution, count) in &corpus {
        let sql =
            format!("SELECT CAST({key} AS VARCHAR) AS k, {agg} AS v FROM {table} GROUP BY {key}");
        let purpose = "reducing-reoffending";
        let got = w.run(PCC, &sql, purpose).await.expect(&sql);
        let keys = texts(&got, 0);
        let values = texts(&got, 1);
        let truth = contributions(&w, table, key, contribution).await;
        for (k, persons) in &truth {
            let (t, bound, n) = truth_and_bound(persons, *count);
            let released = keys
                .iter()
                .position(|x| x == k)
                .and_then(|i| values[i].parse::<f64>().ok());
            cells += 1;
            match released {
                Some(r) if (r - t).abs() <= bound + 1e-6 => within += 1,
                Some(r) => failures.push(format!("{sql} [{k}]: {r} vs truth {t} ± {bound}")),
                // Withheld only where the perturbed persons can fall under 10.
                None if n < 13 => withheld += 1,
                None => failures.push(format!("{sql} [{k}]: withheld with {n} persons")),
            }
        }
    }
    eprintln!(
        "utility: {within} of {} released cells within bounds, {withheld} small cells withheld, {} queries",
        cells - withheld,
        corpus.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(within > 200, "{within}");
}

/// A disclosure-controlled question asked again runs its kept release: the per-person
/// plan again over the data, the rules again over its groups, and the plan kept over the
/// released cells reads the new ones. Answers and records are those of planning afresh,
/// one after another and four at once; a commit to the input plans it again.
#[tokio::test]
async fn a_kept_release_run_again_answers_as_planning_afresh() {
    let w = planted::world().await;
    let service = |plan_cache_bytes| {
        concordat_query::QueryService::new(
            w.store.clone(),
            w.audit.clone(),
            w.policies.clone(),
            concordat_query::QueryLimits {
                answer_cache_bytes: 0,
                plan_cache_bytes,
                ..concordat_query::QueryLimits::default()
            },
        )
        .expect("service")
        .with_record_key(std::sync::Arc::new(
            concordat_query::sdc::cellkey::RecordKey::from_secret(&[3u8; 32]),
        ))
    };
    let (kept, afresh) = (service(64 << 20), service(0));
    let answer = |run: Result<Vec<RecordBatch>, _>, record: serde_json::Value, sql: &str| {
        format!("{}\n{record}", lines(&run.expect(sql)).join("\n"))
    };
    async fn asked(w: &World, s: &concordat_query::QueryService, sql: &str) -> (String, bool) {
        let mut run = w.start_on(s, PCC, sql, PURPOSE, today()).await.expect(sql);
        let mut b = Vec::new();
        while let Some(x) = run.batches.recv().await {
            b.push(x.expect(sql));
        }
        let record = serde_json::to_value(&run.disclosure).expect("record");
        (
            format!("{}\n{record}", lines(&b).join("\n")),
            run.plan_reused,
        )
    }
    // (sql, whether its plans are kept)
    let cases = [
        (
            "SELECT age_band, sex, count(*) AS n, sum(reoffences) AS s, avg(days_to_first_reoffence) AS d FROM reoffending_cohort GROUP BY age_band, sex ORDER BY 1, 2",
            true,
        ),
        (
            "SELECT sex, count(*) AS n FROM reoffending_cohort GROUP BY ROLLUP(sex) ORDER BY 1",
            true,
        ),
        (
            "SELECT index_offence_group, 100.0 * sum(CASE WHEN reoffended THEN 1 ELSE 0 END) / count(*) AS rate FROM reoffending_cohort GROUP BY index_offence_group HAVING count(*) > 20 ORDER BY rate DESC, 1",
            true,
        ),
        (
            "SELECT count(*) AS groups FROM (SELECT age_band, count(*) AS n FROM reoffending_cohort GROUP BY age_band) t",
            false,
        ),
        (
            "SELECT count(*), avg(reoffences) FROM reoffending_cohort WHERE reoffended",
            true,
        ),
        (
            "SELECT index_disposal, count(*) AS n FROM reoffending_cohort GROUP BY index_disposal ORDER BY n DESC, 1 LIMIT 2",
            true,
        ),
        (
            "SELECT f.force_slug, count(*) AS n FROM reoffending_cohort r JOIN police_forces f ON r.pfa_code = f.pfa_code GROUP BY f.force_slug",
            true,
        ),
    ];
    for (sql, keeps) in cases {
        let run = w.run_on_service(&afresh, PCC, sql, PURPOSE).await;
        let record = {
            let r = w.start_on(&afresh, PCC, sql, PURPOSE, today()).await;
            serde_json::to_value(&r.expect(sql).disclosure).expect("record")
        };
        let want = answer(run, record, sql);
        let mut reused = Vec::new();
        for _ in 0..3 {
            let (got, r) = asked(&w, &kept, sql).await;
            assert_eq!(got, want, "{sql}");
            reused.push(r);
        }
        assert!(!reused[0], "{sql}: the first asking plans");
        assert_eq!(reused[1..], [keeps, keeps], "{sql}");
        let runs = futures::future::join_all((0..4).map(|_| asked(&w, &kept, sql))).await;
        for (got, _) in runs {
            assert_eq!(got, want, "{sql}: four at once");
        }
    }
    // A commit to the input: the kept release is stale, and the answer is the new data's.
    let sql = cases[0].0;
    let before = asked(&w, &kept, sql).await;
    assert!(before.1, "kept before the commit");
    crate::support::load_batches(&w.store, R, &[planted::batch().slice(0, 200)]).await;
    let after = asked(&w, &kept, sql).await;
    let want = asked(&w, &afresh, sql).await;
    assert!(!after.1, "a commit makes the kept release stale");
    assert_eq!(after.0, want.0);
    assert_ne!(after.0, before.0, "the new version's answer");
}
