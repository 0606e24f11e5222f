//! Disclosure control: aggregate-only access answers aggregates with small cells
//! withheld, counts rounded, pseudonyms usable only as join keys, and no way to recover a
//! small number by subtraction, an error, or a group's key.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;

use crate::support::*;

const PCC: &str = "pcc-kent";
const PURPOSE: &str = "reducing-reoffending";
const KENT: &str = "pfa_code = 'E23000032'";

/// What an attack query must come to.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// 403 `aggregate_only`, the message holding this text.
    Refused(&'static str),
    /// Refused by the SQL guard (400), before disclosure control.
    NotAllowed,
    /// Runs, and every row it shows is flagged as withheld (or there is none).
    Withheld,
    /// Runs without an error (where an error would have been the leak).
    Runs,
}
use Expect::*;

const ONE_PSEUDONYM: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// At least 40 attacks, each with what it must come to.
fn attacks() -> Vec<(&'static str, String, Expect)> {
    let v = |name: &'static str, sql: &str, e: Expect| (name, sql.to_owned(), e);
    vec![
        // Record-level rows, in every shape.
        v(
            "select star",
            "SELECT * FROM reoffending_cohort",
            Refused("record-level rows"),
        ),
        v(
            "projection",
            "SELECT age_band, sex FROM reoffending_cohort WHERE pfa_code = 'E23000032'",
            Refused("record-level rows"),
        ),
        v(
            "cte",
            "WITH c AS (SELECT * FROM reoffending_cohort) SELECT age_band FROM c",
            Refused("record-level rows"),
        ),
        v(
            "window without aggregate",
            "SELECT age_band, row_number() OVER (ORDER BY days_to_first_reoffence) FROM reoffending_cohort",
            Refused("record-level rows"),
        ),
        v(
            "join to reference",
            "SELECT r.age_band, f.force_name FROM reoffending_cohort r JOIN police_forces f ON r.pfa_code = f.pfa_code",
            Refused("record-level rows"),
        ),
        v(
            "union",
            "SELECT age_band FROM reoffending_cohort UNION ALL SELECT 'x'",
            Refused("record-level rows"),
        ),
        v(
            "limit one",
            "SELECT * FROM court_timeliness LIMIT 1",
            Refused("record-level rows"),
        ),
        v(
            "rows beside an aggregate",
            "SELECT age_band FROM reoffending_cohort WHERE reoffences > (SELECT avg(reoffences) FROM reoffending_cohort)",
            Refused(""),
        ),
        v(
            "two aggregates as a total",
            "SELECT age_band, count(*) FROM reoffending_cohort GROUP BY age_band UNION ALL SELECT 'all', count(*) FROM reoffending_cohort",
            Refused("ROLLUP"),
        ),
        // Order statistics and other single-value aggregates.
        v(
            "max",
            "SELECT max(days_to_first_reoffence) FROM reoffending_cohort",
            Refused("MAX"),
        ),
        v(
            "min by group",
            "SELECT age_band, min(reoffences) FROM reoffending_cohort GROUP BY age_band",
            Refused("MIN"),
        ),
        v(
            "median",
            "SELECT median(days_to_first_reoffence) FROM reoffending_cohort",
            Refused("not released"),
        ),
        v(
            "array_agg",
            "SELECT array_agg(days_to_first_reoffence) FROM reoffending_cohort",
            Refused("not released"),
        ),
        v(
            "string_agg",
            "SELECT string_agg(age_band, ',') FROM reoffending_cohort",
            Refused("not released"),
        ),
        v(
            "first_value",
            "SELECT first_value(days_to_first_reoffence) FROM reoffending_cohort",
            Refused("not released"),
        ),
        v(
            "bool_or",
            "SELECT bool_or(reoffended) FROM reoffending_cohort",
            Refused("not released"),
        ),
        v(
            "max under a sum",
            "SELECT sum(m) FROM (SELECT age_band, max(days_to_first_reoffence) AS m FROM reoffending_cohort GROUP BY age_band) t",
            Refused("MAX"),
        ),
        v(
            "window max spread to every row",
            "SELECT avg(m) FROM (SELECT max(days_to_first_reoffence) OVER () AS m FROM reoffending_cohort) t",
            Refused("window"),
        ),
        v(
            "window rank then filter",
            "SELECT count(*) FROM (SELECT rank() OVER (ORDER BY days_to_first_reoffence) AS k FROM reoffending_cohort) t WHERE k = 1",
            Refused("window"),
        ),
        v(
            "limit under an aggregate",
            "SELECT avg(days_to_first_reoffence) FROM (SELECT days_to_first_reoffence FROM reoffending_cohort ORDER BY days_to_first_reoffence DESC LIMIT 1) t",
            Refused(""),
        ),
        // The pseudonym.
        v(
            "group by pseudonym",
            "SELECT person_id, count(*) FROM reoffending_cohort GROUP BY person_id",
            Refused("pseudonym"),
        ),
        v(
            "count distinct pseudonym",
            "SELECT count(DISTINCT person_id) FROM reoffending_cohort",
            Refused("pseudonym"),
        ),
        v(
            "count pseudonym",
            "SELECT count(person_id) FROM reoffending_cohort",
            Refused("pseudonym"),
        ),
        v(
            "filter on pseudonym",
            &format!("SELECT count(*) FROM reoffending_cohort WHERE person_id = '{ONE_PSEUDONYM}'"),
            Refused("pseudonym"),
        ),
        v(
            "pseudonym prefix",
            "SELECT count(*) FROM reoffending_cohort WHERE person_id LIKE 'a%'",
            Refused("pseudonym"),
        ),
        v(
            "pseudonym substring groups",
            "SELECT substr(person_id, 1, 1) AS p, count(*) FROM reoffending_cohort GROUP BY 1",
            Refused("pseudonym"),
        ),
        v(
            "pseudonym compared in a join",
            "SELECT count(*) FROM reoffending_cohort r JOIN court_timeliness c ON r.person_id < c.person_id",
            Refused("pseudonym"),
        ),
        v(
            "pseudonym measured",
            "SELECT age_band, sum(length(person_id)) FROM reoffending_cohort GROUP BY 1",
            Refused("pseudonym"),
        ),
        v(
            "pseudonym hashed",
            "SELECT count(*) FROM reoffending_cohort WHERE sha256(person_id) = 'x'",
            Refused("pseudonym"),
        ),
        v(
            "pseudonym renamed then filtered",
            &format!(
                "SELECT count(*) FROM (SELECT person_id AS p, age_band FROM reoffending_cohort) t WHERE p = '{ONE_PSEUDONYM}'"
            ),
            Refused("pseudonym"),
        ),
        v(
            "case id grouped",
            "SELECT case_id, count(*) FROM court_timeliness GROUP BY case_id",
            Refused("pseudonym"),
        ),
        v(
            "controlled tables joined on other columns",
            "SELECT count(*) FROM reoffending_cohort r JOIN court_timeliness c ON r.pfa_code = c.pfa_code AND r.cohort_quarter = c.quarter",
            Refused("pseudonyms"),
        ),
        // Errors as oracles: these must run whatever the rows hold.
        v(
            "division by zero when a person matches",
            "SELECT count(*) FROM reoffending_cohort WHERE CASE WHEN age_band = '50+' AND sex = 'female' AND days_to_first_reoffence = 17 THEN 1/0 ELSE 1 END = 1",
            Runs,
        ),
        v(
            "failing cast when a person matches",
            "SELECT count(*) FROM reoffending_cohort WHERE CAST(CASE WHEN days_to_first_reoffence = 17 THEN 'x' ELSE '1' END AS INT) = 1",
            Runs,
        ),
        v(
            "overflow when a person matches",
            "SELECT count(*) FROM reoffending_cohort WHERE CASE WHEN days_to_first_reoffence = 17 THEN reoffences * 9223372036854775807 * 100 ELSE 0 END >= 0",
            Runs,
        ),
        v(
            "failing cast in reference rows",
            "SELECT count(*) FROM reoffending_cohort r JOIN police_forces f ON r.pfa_code = f.pfa_code WHERE CAST(f.force_name AS INT) = 1",
            Runs,
        ),
        v(
            "regular expression that fails",
            "SELECT count(*) FROM reoffending_cohort WHERE regexp_like(age_band, CASE WHEN sex = 'female' THEN '(' ELSE 'a' END)",
            Refused("cannot be used"),
        ),
        v(
            "similar to",
            "SELECT count(*) FROM reoffending_cohort WHERE age_band SIMILAR TO '('",
            Refused("SIMILAR TO"),
        ),
        v(
            "date parse that fails",
            "SELECT count(*) FROM reoffending_cohort WHERE to_date(CASE WHEN sex = 'female' THEN 'bad' ELSE '2020-01-01' END) IS NOT NULL",
            Refused("to_date"),
        ),
        v(
            "arrow_cast",
            "SELECT count(*) FROM reoffending_cohort WHERE arrow_cast(age_band, 'Int32') = 1",
            Withheld,
        ),
        v(
            "date arithmetic overflow",
            "SELECT count(*) FROM court_timeliness WHERE offence_date + INTERVAL '100000 years' > DATE '2020-01-01'",
            Refused("dates"),
        ),
        v(
            "explain",
            "EXPLAIN SELECT count(*) FROM reoffending_cohort",
            NotAllowed,
        ),
        // Small groups and single persons.
        v(
            "small filter",
            "SELECT count(*) FROM reoffending_cohort WHERE age_band = '10-14' AND sex = 'female' AND index_disposal = 'custody_4y_plus'",
            Withheld,
        ),
        v(
            "one person's value as a group key",
            "SELECT days_to_first_reoffence, count(*) FROM reoffending_cohort WHERE age_band = '10-14' AND sex = 'female' GROUP BY 1",
            Withheld,
        ),
        v(
            "average of a handful",
            "SELECT avg(days_to_first_reoffence) FROM reoffending_cohort WHERE age_band = '50+' AND sex = 'unknown'",
            Withheld,
        ),
        v(
            "sum of a handful",
            "SELECT sum(reoffences) FROM reoffending_cohort WHERE index_offence_group = 'sexual' AND age_band = '10-14'",
            Withheld,
        ),
        v(
            "join that isolates a person",
            "SELECT count(*), avg(r.reoffences) FROM reoffending_cohort r JOIN court_timeliness c ON r.person_id = c.person_id WHERE c.offence_date = DATE '2021-03-04' AND c.court_type = 'crown'",
            Withheld,
        ),
        v(
            "filtered cell in a large group",
            "SELECT count(*) FILTER (WHERE days_to_first_reoffence = 17) AS n FROM reoffending_cohort",
            Withheld,
        ),
        v(
            "conditional sum per group",
            "SELECT age_band, sum(CASE WHEN days_to_first_reoffence = 17 THEN reoffences END) AS s FROM reoffending_cohort GROUP BY 1",
            Withheld,
        ),
        v(
            "isolated person's attribute as a key",
            "SELECT index_offence_group, count(*) FROM reoffending_cohort WHERE age_band = '10-14' AND sex = 'female' AND days_to_first_reoffence < 30 GROUP BY 1",
            Withheld,
        ),
    ]
}

fn flagged(batches: &[RecordBatch]) -> bool {
    batches.iter().all(|b| {
        let i = b
            .schema()
            .index_of(concordat_query::MARKER)
            .expect("marker column");
        let m = b.column(i).as_boolean();
        m.null_count() == 0 && m.true_count() == m.len()
    })
}

#[tokio::test]
async fn every_attack_is_refused_or_withheld() {
    let w = world().await;
    let cases = attacks();
    assert!(cases.len() >= 40, "{} attacks", cases.len());
    let mut failures = Vec::new();
    for (name, sql, expect) in &cases {
        let got = w.run(PCC, sql, PURPOSE).await;
        let ok = match (expect, &got) {
            (Refused(text), Err(e)) => {
                e.code() == "aggregate_only"
                    && e.kind() == concordat_core::ErrorKind::Forbidden
                    && e.to_string().contains(text)
            }
            (NotAllowed, Err(e)) => e.code() == "not_allowed",
            (Withheld, Ok(b)) => flagged(b),
            (Runs, Ok(_)) => true,
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "{name}: expected {expect:?}, got {}",
                match &got {
                    Ok(b) => format!(
                        "rows\n{}",
                        arrow::util::pretty::pretty_format_batches(b).expect("fmt")
                    ),
                    Err(e) => format!("{} {e}", e.code()),
                }
            ));
        }
        // No refusal message ever carries a value from the data.
        if let Err(e) = &got {
            let m = e.to_string();
            assert!(
                !m.contains("E23000032") || sql.contains("E23000032"),
                "{name}: {m}"
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[tokio::test]
async fn an_error_oracle_answers_the_same_whether_or_not_anyone_matches() {
    let w = world().await;
    // One condition matches people in Kent, the other cannot match anyone.
    let template = "SELECT count(*) AS n FROM reoffending_cohort WHERE CASE WHEN {} THEN 1/(reoffences - reoffences) ELSE 1 END = 1";
    let some = w
        .run(PCC, &template.replace("{}", "age_band = '50+'"), PURPOSE)
        .await
        .expect("runs when people match");
    let none = w
        .run(PCC, &template.replace("{}", "age_band = 'nobody'"), PURPOSE)
        .await
        .expect("runs when no one matches");
    assert_eq!(count(&some), 1);
    assert_eq!(count(&none), 1);
}

/// Values of a column as optional integers (rounded counts).
fn ints(batches: &[RecordBatch], name: &str) -> Vec<Option<i64>> {
    batches
        .iter()
        .flat_map(|b| {
            let i = b.schema().index_of(name).expect("column");
            let a = arrow::compute::cast(b.column(i), &DataType::Int64).expect("cast");
            let a = a.as_primitive::<arrow::datatypes::Int64Type>().clone();
            (0..a.len())
                .map(|r| a.is_valid(r).then(|| a.value(r)))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn round5(v: i64) -> i64 {
    (v + 2) / 5 * 5
}

/// Reoffending by a breakdown column, computed directly on Kent's raw rows with the
/// rules applied by hand: persons per group, withheld under 10, counts rounded to 5.
async fn by_hand(w: &World, column: &str, padded: Option<&[&str]>) -> Vec<String> {
    let sql = format!(
        "SELECT CAST({column} AS VARCHAR) AS k, count(*) AS n, count(DISTINCT person_id) AS persons, \
         sum(CASE WHEN reoffended THEN 1 ELSE 0 END) AS reoffenders, \
         count(DISTINCT person_id) FILTER (WHERE reoffended) AS reoffender_persons, \
         avg(CASE WHEN reoffended THEN 100.0 ELSE 0.0 END) AS pct \
         FROM reoffending_cohort GROUP BY 1"
    );
    let raw = w.direct(&sql, &[("reoffending_cohort", KENT)]).await;
    let keys = texts(&raw, 0);
    let n = ints(&raw, "n");
    let persons = ints(&raw, "persons");
    let reo = ints(&raw, "reoffenders");
    let reo_persons = ints(&raw, "reoffender_persons");
    let pct = texts(&raw, 5);
    let mut out = Vec::new();
    for i in 0..keys.len() {
        let p = persons[i].expect("persons");
        if p < 10 {
            if padded.is_some() {
                out.push(format!("{}|NULL|NULL|NULL|true", keys[i]));
            }
            continue;
        }
        let reoffenders = if reo_persons[i].expect("rp") < 10 {
            "NULL".to_owned()
        } else {
            round5(reo[i].expect("reo")).to_string()
        };
        out.push(format!(
            "{}|{}|{}|{}|{}",
            keys[i],
            round5(n[i].expect("n")),
            reoffenders,
            pct[i],
            reoffenders == "NULL"
        ));
    }
    if let Some(all) = padded {
        for k in all {
            if !keys.iter().any(|x| x == k) {
                out.push(format!("{k}|NULL|NULL|NULL|true"));
            }
        }
    }
    out.sort();
    out
}

async fn via_gateway(w: &World, column: &str) -> (Vec<String>, concordat_query::Disclosure) {
    let sql = format!(
        "SELECT CAST({column} AS VARCHAR) AS k, count(*) AS n, \
         sum(CASE WHEN reoffended THEN 1 ELSE 0 END) AS reoffenders, \
         avg(CASE WHEN reoffended THEN 100.0 ELSE 0.0 END) AS pct \
         FROM reoffending_cohort GROUP BY {column}"
    );
    let partner = w.policies.partners().get(PCC).expect("partner").clone();
    let mut run = w
        .service
        .query(&partner, &sql, PURPOSE, today())
        .await
        .expect("query");
    let disclosure = run.disclosure.clone().expect("a disclosure record");
    let mut batches = Vec::new();
    while let Some(b) = run.batches.recv().await {
        batches.push(b.expect("batch"));
    }
    let cols: Vec<Vec<String>> = (0..5).map(|c| texts(&batches, c)).collect();
    let mut rows: Vec<String> = (0..cols[0].len())
        .map(|r| {
            cols.iter()
                .map(|c| c[r].clone())
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect();
    rows.sort();
    (rows, disclosure)
}

#[tokio::test]
async fn analyst_breakdowns_match_the_rules_applied_by_hand() {
    let w = world().await;
    let ages = [
        "10-14", "15-17", "18-20", "21-24", "25-29", "30-34", "35-39", "40-44", "45-49", "50+",
    ];
    let disposals = [
        "custody_lt_12m",
        "custody_12m_to_lt_2y",
        "custody_2y_to_lt_4y",
        "custody_4y_plus",
        "court_order",
        "caution",
    ];
    for (column, padded) in [
        ("age_band", Some(&ages[..])),
        ("index_disposal", Some(&disposals[..])),
        ("cohort_quarter", None),
    ] {
        let (got, disclosure) = via_gateway(&w, column).await;
        let want = by_hand(&w, column, padded).await;
        assert_eq!(got, want, "reoffending by {column}");
        assert_eq!(disclosure.suppressed.differencing, 0, "{column}");
        assert_eq!(disclosure.min_count, 10);
        assert_eq!(disclosure.round_to, 5);
        assert_eq!(
            disclosure.agreements,
            vec!["probation-pcc-reoffending-mou".to_owned()]
        );
        assert!(got.len() >= 5, "{column}: {got:?}");
    }
}

#[tokio::test]
async fn reoffending_joined_with_court_timeliness_matches_by_hand() {
    let w = world().await;
    let sql = "SELECT c.court_type, count(*) AS cases, avg(c.first_listing_date - c.charge_date) AS mean_days \
               FROM reoffending_cohort r JOIN court_timeliness c ON r.person_id = c.person_id \
               WHERE r.reoffended GROUP BY c.court_type ORDER BY c.court_type";
    let got = w.run(PCC, sql, "reducing-reoffending").await.expect("join");
    let direct = w
        .direct(
            "SELECT c.court_type, count(*) AS cases, count(DISTINCT r.person_id) AS persons, \
             avg(c.first_listing_date - c.charge_date) AS mean_days \
             FROM reoffending_cohort r JOIN court_timeliness c ON r.person_id = c.person_id \
             WHERE r.reoffended GROUP BY c.court_type ORDER BY c.court_type",
            &[("reoffending_cohort", KENT), ("court_timeliness", KENT)],
        )
        .await;
    let persons = ints(&direct, "persons");
    let cases = ints(&direct, "cases");
    let mean = texts(&direct, 3);
    let mut want = Vec::new();
    for i in 0..persons.len() {
        if persons[i].expect("persons") >= 10 {
            want.push(format!(
                "{}|{}|{}",
                texts(&direct, 0)[i],
                round5(cases[i].expect("n")),
                mean[i]
            ));
        }
    }
    let got: Vec<String> = (0..count(&got))
        .map(|r| {
            format!(
                "{}|{}|{}",
                texts(&got, 0)[r],
                texts(&got, 1)[r],
                texts(&got, 2)[r]
            )
        })
        .collect();
    assert!(!want.is_empty(), "the fixture joins some people");
    assert_eq!(got, want);
}

#[tokio::test]
async fn differencing_two_answers_does_not_reveal_a_small_group() {
    let w = world().await;
    // Kent has fewer than 10 people of unknown sex: a total with and without them would
    // reveal how many, and each of their values.
    let all = w
        .run(PCC, "SELECT count(*) AS n FROM reoffending_cohort", PURPOSE)
        .await
        .expect("total");
    assert!(ints(&all, "n")[0].is_some(), "the first total is released");
    let partner = w.policies.partners().get(PCC).expect("partner").clone();
    for sql in [
        "SELECT count(*) AS n FROM reoffending_cohort WHERE sex <> 'unknown'",
        "SELECT count(*) AS n FROM reoffending_cohort WHERE sex IN ('female', 'male')",
        "SELECT avg(reoffences) AS n FROM reoffending_cohort WHERE sex <> 'unknown'",
    ] {
        let mut run = w
            .service
            .query(&partner, sql, PURPOSE, today())
            .await
            .expect(sql);
        let d = run.disclosure.clone().expect("disclosure");
        let mut b = Vec::new();
        while let Some(x) = run.batches.recv().await {
            b.push(x.expect("batch"));
        }
        assert_eq!(ints(&b, "n"), vec![None], "{sql}");
        assert_eq!(d.suppressed.differencing, 1, "{sql}");
    }
    // The same total again is the same persons: released as before.
    let again = w
        .run(PCC, "SELECT count(*) AS n FROM reoffending_cohort", PURPOSE)
        .await
        .expect("again");
    assert_eq!(ints(&again, "n"), ints(&all, "n"));
    // Another partner has its own ledger (and its own scope).
    let essex = w
        .run(
            "pcc-essex",
            "SELECT count(*) AS n FROM reoffending_cohort WHERE sex <> 'unknown'",
            PURPOSE,
        )
        .await
        .expect("essex");
    assert!(ints(&essex, "n")[0].is_some());
}

#[tokio::test]
async fn a_difference_inside_one_answer_is_withheld_too() {
    let w = world().await;
    let got = w
        .run(
            PCC,
            "SELECT count(*) AS everyone, count(*) FILTER (WHERE sex <> 'unknown') AS known FROM reoffending_cohort",
            PURPOSE,
        )
        .await
        .expect("query");
    assert!(ints(&got, "everyone")[0].is_some());
    assert_eq!(ints(&got, "known"), vec![None]);
    assert!(flagged(&got));
}

#[tokio::test]
async fn a_rollup_total_cannot_recover_a_withheld_cell() {
    let w = world().await;
    let got = w
        .run(
            PCC,
            "SELECT sex, count(*) AS n FROM reoffending_cohort GROUP BY ROLLUP(sex) ORDER BY sex NULLS LAST",
            PURPOSE,
        )
        .await
        .expect("rollup");
    let keys = texts(&got, 0);
    let n = ints(&got, "n");
    let total = n[keys.iter().position(|k| k == "NULL").expect("total row")];
    assert!(total.is_some(), "the total is released");
    // `unknown` is too small: left out or withheld. Then at least one more of the
    // categories must be withheld, or total - female - male gives it back.
    let withheld = ["female", "male", "unknown"]
        .iter()
        .filter(|k| match keys.iter().position(|x| x == *k) {
            None => true,
            Some(i) => n[i].is_none(),
        })
        .count();
    assert!(withheld >= 2, "{keys:?} {n:?}");
    // Every released count is a multiple of 5 and at least 10.
    for v in n.into_iter().flatten() {
        assert!(v % 5 == 0 && v >= 10, "{v}");
    }
}

#[tokio::test]
async fn suppressed_percentages_stay_suppressed_and_having_sees_released_values_only() {
    let w = world().await;
    let got = w
        .run(
            PCC,
            "SELECT age_band, 100.0 * sum(CASE WHEN reoffended THEN 1 ELSE 0 END) / count(*) AS pct \
             FROM reoffending_cohort WHERE sex = 'female' GROUP BY age_band HAVING count(*) < 10",
            PURPOSE,
        )
        .await
        .expect("query");
    // Counts under 10 are never released, so HAVING count(*) < 10 keeps nothing.
    assert_eq!(count(&got), 0);
    let got = w
        .run(
            PCC,
            "SELECT age_band, 100.0 * sum(CASE WHEN reoffended THEN 1 ELSE 0 END) / count(*) AS pct \
             FROM reoffending_cohort WHERE sex = 'female' GROUP BY age_band",
            PURPOSE,
        )
        .await
        .expect("query");
    let pct = texts(&got, 1);
    let marker = texts(&got, 2);
    for (p, m) in pct.iter().zip(&marker) {
        if m == "true" {
            assert_eq!(p, "NULL", "a percentage from a withheld cell is withheld");
        }
    }
    assert!(
        marker.iter().any(|m| m == "true"),
        "some female age bands are small"
    );
}

#[tokio::test]
async fn record_access_is_unchanged_by_disclosure_control() {
    let w = world().await;
    let partner = w
        .policies
        .partners()
        .get("probation")
        .expect("partner")
        .clone();
    let run = w
        .service
        .query(
            &partner,
            "SELECT person_id FROM reoffending_cohort LIMIT 3",
            PURPOSE,
            today(),
        )
        .await
        .expect("record access");
    assert!(run.disclosure.is_none());
}
