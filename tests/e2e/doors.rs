//! One case table through every door: the same caller, SQL and purpose give the same
//! rows, or the same refusal, over HTTP, Postgres wire (psycopg) and Flight SQL (ADBC),
//! and each door's request leaves its audit event naming the door.

use concordat_e2e::*;

use super::fixtures::{ask, cell, loaded, python};

/// (partner, purpose, SQL).
const CASES: [(&str, &str, &str); 10] = [
    (
        "pcc-kent",
        "performance-scrutiny",
        "SELECT DISTINCT pfa_code FROM force_performance ORDER BY 1",
    ),
    (
        "pcc-essex",
        "performance-scrutiny",
        "SELECT pfa_code, count(*) AS n FROM force_performance GROUP BY pfa_code ORDER BY pfa_code",
    ),
    (
        "pcc-kent",
        "reducing-reoffending",
        "SELECT age_band, count(*) AS n FROM reoffending_cohort GROUP BY age_band ORDER BY age_band",
    ),
    (
        "pcc-kent",
        "reducing-reoffending",
        "SELECT count(*) AS n FROM reoffending_cohort WHERE age_band = '18-20' AND sex = 'F'",
    ),
    (
        "pcc-kent",
        "reducing-reoffending",
        "SELECT person_id FROM reoffending_cohort",
    ),
    (
        "pcc-kent",
        "performance-scrutiny",
        "SELECT count(*) FROM reoffending_cohort",
    ),
    (
        "pcc-kent",
        "inspection",
        "SELECT count(*) FROM force_performance",
    ),
    (
        "hmicfrs",
        "inspection",
        "SELECT pfa_code, count(*) AS n FROM force_performance GROUP BY pfa_code ORDER BY pfa_code",
    ),
    (
        "pcc-kent",
        "performance-scrutiny",
        "SELECT count(*) FROM audit_log",
    ),
    (
        "pcc-kent",
        "performance-scrutiny",
        "SELECT 1 / 0 AS x FROM force_performance",
    ),
];

/// Runs every case through one door from Python; each answer is `{"rows": [...]}` or
/// `{"error": "message"}`.
const CLIENTS: &str = r#"
import json, os, sys
cases = json.loads(os.environ["CASES"])
door = os.environ["DOOR"]
out = []
def text(v):
    if v is None: return "null"
    if isinstance(v, bool): return "true" if v else "false"
    if isinstance(v, (int, float)) or type(v).__name__ == "Decimal": return "%.6f" % float(v)
    return str(v)
if door == "pg":
    import psycopg
    host, port = os.environ["PG"].rsplit(":", 1)
    for token, purpose, sql in cases:
        try:
            with psycopg.connect(host=host, port=port, dbname=purpose, user="analyst", password=token,
                                 sslmode="disable", autocommit=True) as conn:
                rows = conn.execute(sql).fetchall()
                out.append({"rows": [[text(c) for c in r] for r in rows]})
        except psycopg.Error as e:
            msg = e.diag.message_primary if e.diag and e.diag.message_primary else str(e)
            out.append({"error": msg})
else:
    import adbc_driver_flightsql.dbapi as flight
    for token, purpose, sql in cases:
        try:
            with flight.connect("grpc://" + os.environ["FLIGHT"], db_kwargs={
                    "adbc.flight.sql.authorization_header": "Bearer " + token,
                    "adbc.flight.sql.rpc.call_header.concordat-purpose": purpose}) as conn:
                cur = conn.cursor()
                cur.execute(sql)
                rows = cur.fetch_arrow_table().to_pylist()
                out.append({"rows": [[text(v) for v in r.values()] for r in rows]})
                cur.close()
        except Exception as e:
            out.append({"error": str(e)})
print(json.dumps(out))
"#;

#[test]
fn every_door_gives_the_same_answer_or_the_same_refusal() {
    let site = Site::new();
    let server = loaded(
        &site,
        &[
            ("CONCORDAT_PG__ADDR", "127.0.0.1:0"),
            ("CONCORDAT_FLIGHT__ADDR", "127.0.0.1:0"),
        ],
    );

    let tokens: std::collections::HashMap<&str, String> = ["pcc-kent", "pcc-essex"]
        .iter()
        .map(|p| (*p, site.token(p, "analyst")))
        .chain(std::iter::once((
            "hmicfrs",
            site.token("hmicfrs", "inspector"),
        )))
        .collect();
    let cases: Vec<(String, &str, &str)> = CASES
        .iter()
        .map(|(p, purpose, sql)| (tokens[p].clone(), *purpose, *sql))
        .collect();

    // HTTP, the reference.
    let mut expected = Vec::new();
    for (token, purpose, sql) in &cases {
        let (status, body) = ask(&server, token, purpose, sql);
        expected.push(if status == 200 {
            let rows: Vec<Vec<String>> = body["rows"]
                .as_array()
                .expect("rows")
                .iter()
                .map(|r| r.as_array().expect("row").iter().map(cell).collect())
                .collect();
            serde_json::json!({ "rows": rows })
        } else {
            serde_json::json!({ "error": body["error"]["message"] })
        });
    }
    let answered = expected.iter().filter(|e| e.get("rows").is_some()).count();
    assert!(
        answered >= 4 && answered < cases.len(),
        "the table holds answers and refusals: {expected:?}"
    );

    for door in ["pg", "flight"] {
        let (pg, flight) = (server.pg.clone(), server.flight.clone());
        let got = python(
            CLIENTS,
            &[
                ("DOOR", door),
                ("PG", &pg.expect("pg")),
                ("FLIGHT", &flight.expect("flight")),
                ("CASES", &serde_json::to_string(&cases).expect("cases")),
            ],
        );
        let got = got.as_array().expect("one answer per case");
        for ((case, want), have) in CASES.iter().zip(&expected).zip(got) {
            match (want.get("rows"), want["error"].as_str()) {
                (Some(rows), _) => assert_eq!(Some(rows), have.get("rows"), "{door} {case:?}"),
                (None, Some(message)) => {
                    let said = have["error"].as_str().unwrap_or_default();
                    assert!(
                        !message.is_empty() && said.contains(message),
                        "{door} {case:?}: said {said:?}, HTTP said {message:?}"
                    );
                }
                (None, None) => panic!("{case:?}: {want}"),
            }
        }
    }

    // Every question left an event naming its door.
    let (status, trail) = get(
        &server,
        &site.token("operator", "auditor"),
        "/v1/audit?limit=5000",
    );
    assert_eq!(status, 200);
    let events = trail["events"].as_array().expect("events");
    for (_, _, sql) in CASES {
        for door in [None, Some("pg"), Some("flight")] {
            let n = events
                .iter()
                .filter(|e| e["sql"] == sql && e["door"].as_str() == door)
                .filter(|e| e["action"] == "query" || e["action"] == "describe")
                .count();
            assert!(n >= 1, "{sql} over {door:?} left no event");
        }
    }
}
