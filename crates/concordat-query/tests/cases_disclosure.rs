//! Disclosure control, the structural part: aggregate-only access answers aggregates
//! only, pseudonyms are join keys only, single-value statistics and error oracles are
//! refused or made harmless. (`cases_release` plants known truth and attacks it.)

use arrow::array::{Array, AsArray, RecordBatch};

use crate::support::*;

const PCC: &str = "pcc-kent";
const PURPOSE: &str = "reducing-reoffending";

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
    let run = w
        .start(
            "probation",
            "SELECT person_id FROM reoffending_cohort LIMIT 3",
            PURPOSE,
        )
        .await
        .expect("record access");
    assert!(run.disclosure.is_none());
}
