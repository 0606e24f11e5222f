//! Answers reused when nothing changed: never across partners, never after a commit to
//! an input, never for what differs between runs, and every reuse audited.

use concordat_e2e::*;

use super::fixtures::{ask, loaded};

/// The newest events of the trail (operator's view), newest first.
fn newest(site: &Site, server: &Server, n: usize) -> Vec<serde_json::Value> {
    let (status, page) = get(
        server,
        &site.token("operator", "auditor"),
        &format!("/v1/audit?order=newest&action=query&limit={n}"),
    );
    assert_eq!(status, 200, "{page}");
    page["events"].as_array().expect("events").clone()
}

fn cached(event: &serde_json::Value) -> bool {
    event["cached"] == serde_json::json!(true)
}

/// Kent's force commits the same periods with other values (another seed).
fn replace_kent_figures(site: &Site, server: &Server) {
    let (status, body) = upload(
        server,
        &site.token("force-kent", "uploader"),
        "force_performance",
        "replace_periods",
        concordat_synth::parquet_bytes(
            &concordat_synth::Synth::new(0.01, 12)
                .only(&["kent"])
                .batches("force_performance"),
        )
        .expect("parquet"),
    );
    assert_eq!(status, 201, "{body}");
}

#[test]
fn a_kept_answer_is_the_callers_own_fresh_and_audited() {
    let site = Site::new();
    let server = loaded(&site, &[]);
    let kent = site.token("pcc-kent", "analyst");
    let essex = site.token("pcc-essex", "analyst");
    let q = "SELECT pfa_code, count(*) AS n, sum(value) AS total FROM force_performance GROUP BY pfa_code";

    // Asked twice: the same answer, the second one reused and audited as such.
    let (status, first) = ask(&server, &kent, "performance-scrutiny", q);
    assert_eq!(status, 200, "{first}");
    let (_, again) = ask(&server, &kent, "performance-scrutiny", q);
    assert_eq!(first["rows"], again["rows"]);
    let events = newest(&site, &server, 2);
    assert!(cached(&events[0]) && !cached(&events[1]), "{events:?}");
    assert_eq!(events[0]["partner"], "pcc-kent");
    assert_eq!(events[0]["sql"], q, "the event holds the SQL as asked");
    assert_eq!(events[0]["rows"], 1);

    // `Cache-Control: no-cache` computes afresh.
    let (status, fresh) = ask_fresh(&server, &kent, "performance-scrutiny", q);
    assert_eq!((status, &fresh["rows"]), (200, &first["rows"]));
    assert!(!cached(&newest(&site, &server, 1)[0]));

    // Spacing and keyword case do not matter; a literal does.
    let respaced = "select pfa_code,   count(*) as n, sum(value) as total\n from force_performance group by pfa_code";
    let (_, same) = ask(&server, &kent, "performance-scrutiny", respaced);
    assert_eq!(same["rows"], first["rows"]);
    assert!(cached(&newest(&site, &server, 1)[0]));
    let (_, none) = ask(
        &server,
        &kent,
        "performance-scrutiny",
        "SELECT pfa_code, count(*) AS n, sum(value) AS total FROM force_performance WHERE indicator = 'KNIFE_OFFENCES' GROUP BY pfa_code",
    );
    assert_eq!(none["rows"], serde_json::json!([]), "{none}");
    assert!(!cached(&newest(&site, &server, 1)[0]));

    // Another partner asking the same words gets its own rows, never Kent's answer.
    let (status, theirs) = ask(&server, &essex, "performance-scrutiny", q);
    assert_eq!(status, 200, "{theirs}");
    assert_eq!(theirs["rows"][0][0], "E23000028", "{theirs}");
    assert_ne!(theirs["rows"], first["rows"]);
    assert!(!cached(&newest(&site, &server, 1)[0]));
    // And a refusal stays a refusal for the partner it applies to, whatever was kept.
    let (status, _) = ask(
        &server,
        &site.token("panel-kent", "analyst"),
        "performance-scrutiny",
        q,
    );
    assert!(
        status >= 400,
        "the panel has no force performance agreement"
    );

    // A commit to the input: the next answer is computed afresh over the new version.
    replace_kent_figures(&site, &server);
    let (_, after) = ask(&server, &kent, "performance-scrutiny", q);
    assert!(
        !cached(&newest(&site, &server, 1)[0]),
        "a commit makes it stale"
    );
    assert_ne!(
        after["rows"], first["rows"],
        "the new version's figures: {after}"
    );
    let (status, direct) = ask(
        &server,
        &kent,
        "performance-scrutiny",
        "SELECT 'E23000032' AS pfa_code, count(*) AS n, sum(value) AS total FROM force_performance",
    );
    assert_eq!(status, 200, "{direct}");
    assert_eq!(after["rows"], direct["rows"], "fresh, not stale");

    // What differs between runs is never kept.
    for sql in [
        "SELECT count(*) AS n, now() AS at FROM force_performance",
        "SELECT count(*) AS n, random() AS r FROM force_performance",
    ] {
        ask(&server, &kent, "performance-scrutiny", sql);
        let (status, body) = ask(&server, &kent, "performance-scrutiny", sql);
        assert_eq!(status, 200, "{body}");
        assert!(!cached(&newest(&site, &server, 1)[0]), "{sql}");
    }
}

#[test]
fn released_aggregates_are_reused_as_released_and_the_audit_trail_never_is() {
    let site = Site::new();
    let server = loaded(&site, &[]);
    let kent = site.token("pcc-kent", "analyst");
    let q = "SELECT sex, age_band, count(*) AS n, avg(reoffences) AS mean FROM reoffending_cohort GROUP BY sex, age_band ORDER BY sex, age_band";
    let (status, first) = ask(&server, &kent, "reducing-reoffending", q);
    assert_eq!(status, 200, "{first}");
    let (_, again) = ask(&server, &kent, "reducing-reoffending", q);
    assert_eq!(first["rows"], again["rows"]);
    assert_eq!(first["disclosure"], again["disclosure"], "the same record");
    assert!(cached(&newest(&site, &server, 1)[0]));

    // An auditor's query of the trail sees the newest events every time.
    let auditor = site.token("operator", "auditor,analyst");
    let trail = "SELECT count(*) AS n FROM audit_log";
    let (status, one) = ask(&server, &auditor, "audit", trail);
    assert_eq!(status, 200, "{one}");
    let (_, two) = ask(&server, &auditor, "audit", trail);
    assert!(
        two["rows"][0][0].as_u64() > one["rows"][0][0].as_u64(),
        "{one} {two}"
    );
    assert!(!cached(&newest(&site, &server, 1)[0]));
}

const FLIGHT_TWICE: &str = r#"
import json, os
import adbc_driver_flightsql.dbapi as flight
out = []
for _ in range(2):
    with flight.connect("grpc://" + os.environ["FLIGHT"], db_kwargs={
            "adbc.flight.sql.authorization_header": "Bearer " + os.environ["TOKEN"],
            "adbc.flight.sql.rpc.call_header.concordat-purpose": "performance-scrutiny"}) as conn:
        cur = conn.cursor()
        cur.execute(os.environ["SQL"])
        out.append([list(r.values()) for r in cur.fetch_arrow_table().to_pylist()])
        cur.close()
print(json.dumps(out))
"#;

#[test]
fn a_flight_client_asking_again_is_described_and_answered_from_the_kept_answer() {
    let site = Site::new();
    let server = loaded(&site, &[("CONCORDAT_FLIGHT__ADDR", "127.0.0.1:0")]);
    let kent = site.token("pcc-kent", "analyst");
    let sql = "SELECT pfa_code, count(*) AS n FROM force_performance GROUP BY pfa_code";
    let at = server.flight.clone().expect("flight door");
    let out = super::fixtures::python(
        FLIGHT_TWICE,
        &[("FLIGHT", &at), ("TOKEN", &kent), ("SQL", sql)],
    );
    assert_eq!(out[0], out[1], "{out}");
    assert_eq!(out[0][0][0], "E23000032", "{out}");
    let (status, page) = get(
        &server,
        &site.token("operator", "auditor"),
        "/v1/audit?order=newest&partner=pcc-kent&limit=20",
    );
    assert_eq!(status, 200, "{page}");
    let events: Vec<(String, bool)> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["door"] == "flight" && e["sql"] == sql)
        .map(|e| {
            (
                e["action"].as_str().unwrap_or_default().to_owned(),
                cached(e),
            )
        })
        .collect();
    // Newest first: the second asking's run and describe were reused, the first's were not.
    let reused: Vec<&(String, bool)> = events.iter().filter(|(_, c)| *c).collect();
    assert!(
        reused.iter().any(|(a, _)| a == "describe") && reused.iter().any(|(a, _)| a == "query"),
        "{events:?}"
    );
    assert!(
        events.iter().any(|(a, c)| a == "describe" && !c)
            && events.iter().any(|(a, c)| a == "query" && !c),
        "the first asking was computed: {events:?}"
    );
}

/// A counter of the gateway's metrics.
fn counter(server: &Server, name: &str) -> u64 {
    let text = client()
        .get(format!("{}/metrics", server.url))
        .send()
        .expect("metrics")
        .text()
        .expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in {text}"))
}

/// A question computed afresh (`Cache-Control: no-cache`): never a kept answer.
fn ask_fresh(server: &Server, token: &str, purpose: &str, sql: &str) -> (u16, serde_json::Value) {
    json(
        client()
            .post(format!("{}/v1/query", server.url))
            .bearer_auth(token)
            .header("cache-control", "no-cache")
            .json(&serde_json::json!({"sql": sql, "purpose": purpose}))
            .send()
            .expect("query"),
    )
}

#[test]
fn a_kept_plan_is_the_callers_own_computes_afresh_and_a_commit_replans() {
    let site = Site::new();
    let server = loaded(&site, &[]);
    let kent = site.token("pcc-kent", "analyst");
    let essex = site.token("pcc-essex", "analyst");
    let reused = || counter(&server, "concordat_query_plans_reused_total");
    let q = "SELECT pfa_code, count(*) AS n, sum(value) AS total FROM force_performance GROUP BY pfa_code";

    let (status, first) = ask_fresh(&server, &kent, "performance-scrutiny", q);
    assert_eq!(status, 200, "{first}");
    assert_eq!(reused(), 0);
    let (_, again) = ask_fresh(&server, &kent, "performance-scrutiny", q);
    assert_eq!(again["rows"], first["rows"]);
    assert_eq!(reused(), 1, "the second asking runs the kept plan");
    assert!(
        !cached(&newest(&site, &server, 1)[0]),
        "and computes its answer"
    );

    // Another partner asking the same words plans for itself and sees only its force.
    let (status, theirs) = ask_fresh(&server, &essex, "performance-scrutiny", q);
    assert_eq!(status, 200, "{theirs}");
    assert_eq!(theirs["rows"][0][0], "E23000028", "{theirs}");
    assert_eq!(theirs["rows"].as_array().map(Vec::len), Some(1), "{theirs}");
    assert_eq!(reused(), 1, "Kent's plan is not Essex's");
    let (_, theirs_again) = ask_fresh(&server, &essex, "performance-scrutiny", q);
    assert_eq!(theirs_again["rows"], theirs["rows"]);
    assert_eq!(reused(), 2);
    // A partner without an agreement is refused, whatever plan was kept.
    let (status, _) = ask_fresh(
        &server,
        &site.token("panel-kent", "analyst"),
        "performance-scrutiny",
        q,
    );
    assert!(
        status >= 400,
        "the panel has no force performance agreement"
    );
    assert_eq!(reused(), 2);

    // A commit to the input: planned again over the new version, and its figures.
    replace_kent_figures(&site, &server);
    let (_, after) = ask_fresh(&server, &kent, "performance-scrutiny", q);
    assert_eq!(reused(), 2, "a commit makes the kept plan stale");
    assert_ne!(after["rows"], first["rows"], "{after}");
    let (_, direct) = ask_fresh(
        &server,
        &kent,
        "performance-scrutiny",
        "SELECT 'E23000032' AS pfa_code, count(*) AS n, sum(value) AS total FROM force_performance",
    );
    assert_eq!(after["rows"], direct["rows"], "the new version's figures");
    let (_, after_again) = ask_fresh(&server, &kent, "performance-scrutiny", q);
    assert_eq!(after_again["rows"], after["rows"]);
    assert_eq!(reused(), 3, "the new plan is kept in turn");

    // A disclosure-controlled question keeps its release: asked again, it runs again
    // and gives the same released cells.
    let sdc = "SELECT age_band, count(*) AS n FROM reoffending_cohort GROUP BY age_band";
    let (status, released) = ask_fresh(&server, &kent, "reducing-reoffending", sdc);
    assert_eq!(status, 200, "{released}");
    assert_eq!(reused(), 3, "{sql}", sql = sdc);
    let (_, released_again) = ask_fresh(&server, &kent, "reducing-reoffending", sdc);
    assert_eq!(released_again["rows"], released["rows"]);
    assert_eq!(released_again["disclosure"], released["disclosure"]);
    assert!(released["disclosure"].is_object(), "{released}");
    assert_eq!(reused(), 4, "{sql}", sql = sdc);
    assert!(
        !cached(&newest(&site, &server, 1)[0]),
        "and computes its answer"
    );
    // Kent's release is not Essex's: Essex's first asking plans its own.
    let (status, essex_released) = ask_fresh(&server, &essex, "reducing-reoffending", sdc);
    assert_eq!(status, 200, "{essex_released}");
    assert_eq!(reused(), 4, "Kent's release is not Essex's");
    let (_, essex_again) = ask_fresh(&server, &essex, "reducing-reoffending", sdc);
    assert_eq!(essex_again["rows"], essex_released["rows"]);
    assert_eq!(reused(), 5, "Essex's own release is kept in turn");

    // What varies between runs is never kept.
    let sql = "SELECT count(*) AS n, random() AS r FROM force_performance";
    for _ in 0..2 {
        let (status, body) = ask_fresh(&server, &kent, "performance-scrutiny", sql);
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(reused(), 5, "{sql}");
}
