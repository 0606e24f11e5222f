//! SQL over HTTP: every answer format read back by a real reader, the status codes, and
//! the audit trail that records it all.

use std::process::Command;

use concordat_e2e::*;

use super::fixtures::parquet;

const KENT_SQL: &str =
    "SELECT pfa_code, quarter, indicator, value FROM force_performance ORDER BY quarter, indicator";

fn loaded(env: &[(&str, &str)]) -> (Site, Server) {
    let site = Site::new();
    let server = site.serve_with(env);
    for force in ["kent", "essex"] {
        let token = site.token(&format!("force-{force}"), "uploader");
        let (status, body) = upload(
            &server,
            &token,
            "force_performance",
            "append",
            parquet("force_performance", &[force], 0.01),
        );
        assert_eq!(status, 201, "{body}");
    }
    let (status, _) = upload(
        &server,
        &site.token("probation", "uploader"),
        "reoffending_cohort",
        "append",
        parquet("reoffending_cohort", &["kent", "essex"], 0.01),
    );
    assert_eq!(status, 201);
    (site, server)
}

fn post_query(
    server: &Server,
    token: &str,
    sql: &str,
    purpose: &str,
    accept: &str,
) -> reqwest::blocking::Response {
    client()
        .post(format!("{}/v1/query", server.url))
        .bearer_auth(token)
        .header("accept", accept)
        .json(&serde_json::json!({"sql": sql, "purpose": purpose}))
        .send()
        .expect("query")
}

#[test]
fn every_format_decodes_with_a_real_reader_and_holds_only_kent_rows() {
    let (site, server) = loaded(&[]);
    let kent = site.token("pcc-kent", "analyst");
    let p = "performance-scrutiny";

    let (status, json_answer) = json(post_query(&server, &kent, KENT_SQL, p, "application/json"));
    assert_eq!(status, 200, "{json_answer}");
    assert_eq!(json_answer["row_count"], 336);
    assert_eq!(json_answer["truncated"], false);
    let names: Vec<&str> = json_answer["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["pfa_code", "quarter", "indicator", "value"]);
    let rows = json_answer["rows"].as_array().expect("rows");
    assert!(rows.iter().all(|r| r[0] == "E23000032"));
    let json_sum: f64 = rows.iter().filter_map(|r| r[3].as_f64()).sum();
    assert!(
        json_answer["disclosure"]["agreements"]
            .as_array()
            .expect("agreements")
            .iter()
            .any(|a| a == "force-performance-pcc")
    );

    let text = post_query(&server, &kent, KENT_SQL, p, "application/x-ndjson")
        .text()
        .expect("ndjson");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 336);
    assert!(lines.iter().all(|l| l["pfa_code"] == "E23000032"));

    let resp = post_query(&server, &kent, KENT_SQL, p, "text/csv");
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .expect("ct")
            .starts_with("text/csv")
    );
    let csv_text = resp.text().expect("csv");
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    assert_eq!(
        reader.headers().expect("header").iter().collect::<Vec<_>>(),
        ["pfa_code", "quarter", "indicator", "value"]
    );
    let records: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("record")).collect();
    assert_eq!(records.len(), 336);
    let csv_sum: f64 = records
        .iter()
        .map(|r| r[3].parse::<f64>().expect("number"))
        .sum();
    assert!((csv_sum - json_sum).abs() < 1e-6);

    let bytes = post_query(
        &server,
        &kent,
        KENT_SQL,
        p,
        "application/vnd.apache.arrow.stream",
    )
    .bytes()
    .expect("arrow");
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes.to_vec()), None)
            .expect("arrow stream");
    let batches: Vec<arrow::array::RecordBatch> = reader.map(|b| b.expect("batch")).collect();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 336);

    let bytes = post_query(
        &server,
        &kent,
        KENT_SQL,
        p,
        "application/vnd.apache.parquet",
    )
    .bytes()
    .expect("parquet");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .expect("parquet")
        .build()
        .expect("reader");
    let batches: Vec<arrow::array::RecordBatch> = reader.map(|b| b.expect("batch")).collect();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 336);
    let values = batches[0]
        .column(3)
        .as_any()
        .downcast_ref::<arrow::array::Float64Array>()
        .expect("f64");
    assert!((values.iter().flatten().sum::<f64>() - json_sum).abs() < 1e-6 || batches.len() > 1);

    let (status, body) = json(post_query(&server, &kent, KENT_SQL, p, "image/png"));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (406, Some("not_acceptable"))
    );
    let empty = post_query(
        &server,
        &kent,
        "SELECT pfa_code FROM force_performance WHERE 1 = 0",
        p,
        "text/csv",
    )
    .text()
    .expect("csv");
    assert_eq!(
        empty.trim(),
        "pfa_code",
        "an empty CSV answer still has its header"
    );
}

#[test]
fn query_status_codes_follow_the_contract() {
    let (site, server) = loaded(&[
        ("CONCORDAT_QUERY__MAX_JSON_ROWS", "100"),
        ("CONCORDAT_QUERY__MAX_SQL_BYTES", "1000"),
    ]);
    let kent = site.token("pcc-kent", "analyst");
    let cases: Vec<(&str, String, &str, &str, u16, &str)> = vec![
        (
            "unknown table",
            kent.clone(),
            "SELECT * FROM nothing_here",
            "performance-scrutiny",
            400,
            "sql",
        ),
        (
            "wrong purpose",
            kent.clone(),
            "SELECT * FROM force_performance",
            "inspection",
            403,
            "purpose_not_permitted",
        ),
        (
            "aggregate only",
            kent.clone(),
            "SELECT person_id FROM reoffending_cohort",
            "reducing-reoffending",
            403,
            "aggregate_only",
        ),
        (
            "DDL",
            kent.clone(),
            "DROP TABLE force_performance",
            "performance-scrutiny",
            400,
            "not_allowed",
        ),
        (
            "unknown purpose",
            kent.clone(),
            "SELECT 1",
            "curiosity",
            400,
            "purpose",
        ),
        (
            "role",
            site.token("pcc-kent", "uploader"),
            "SELECT 1",
            "performance-scrutiny",
            403,
            "forbidden",
        ),
        (
            "too long",
            kent.clone(),
            format!("SELECT 1 -- {}", "x".repeat(2000)).leak(),
            "performance-scrutiny",
            413,
            "too_large",
        ),
    ];
    for (what, token, sql, purpose, status, code) in cases {
        let (got, body) = json(post_query(
            &server,
            &token,
            sql,
            purpose,
            "application/json",
        ));
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{what}: {body}"
        );
    }
    let (status, _) = json(
        client()
            .post(format!("{}/v1/query", server.url))
            .json(&serde_json::json!({"sql": "SELECT 1", "purpose": "audit"}))
            .send()
            .expect("send"),
    );
    assert_eq!(status, 401);
    let (status, body) = json(post_query(
        &server,
        &kent,
        KENT_SQL,
        "performance-scrutiny",
        "application/json",
    ));
    assert_eq!(status, 200);
    assert_eq!(
        (body["row_count"].as_u64(), body["truncated"].as_bool()),
        (Some(100), Some(true)),
        "JSON answers stop at the configured row limit"
    );
    let metrics = client()
        .get(format!("{}/metrics", server.url))
        .send()
        .expect("metrics")
        .text()
        .expect("text");
    assert!(
        metrics.contains("concordat_queries_refused_total 7"),
        "{metrics}"
    );
    assert!(
        metrics.contains("concordat_queries_ok_total 1")
            && metrics.contains("concordat_query_rows_total 100"),
        "{metrics}"
    );
}

#[test]
fn the_audit_trail_records_every_flow_is_scoped_and_detects_tampering() {
    let (site, mut server) = loaded(&[]);
    let kent = site.token("pcc-kent", "analyst");
    let (status, _) = json(post_query(
        &server,
        &kent,
        KENT_SQL,
        "performance-scrutiny",
        "application/json",
    ));
    assert_eq!(status, 200);
    let (status, _) = json(post_query(
        &server,
        &kent,
        "SELECT * FROM force_performance",
        "inspection",
        "application/json",
    ));
    assert_eq!(status, 403);
    let (status, _) = json(post_query(
        &server,
        &site.token("pcc-essex", "analyst"),
        "SELECT count(*) FROM force_performance",
        "performance-scrutiny",
        "application/json",
    ));
    assert_eq!(status, 200);

    let (status, body) = get(
        &server,
        &site.token("operator", "auditor"),
        "/v1/audit?limit=1000",
    );
    assert_eq!(status, 200, "{body}");
    let events = body["events"].as_array().expect("events");
    let uploads = events
        .iter()
        .filter(|e| e["action"] == "upload" && e["outcome"] == "ok")
        .count();
    assert_eq!(uploads, 3);
    let kent_upload = events
        .iter()
        .find(|e| e["action"] == "upload" && e["partner"] == "force-kent")
        .expect("kent upload");
    assert_eq!(
        kent_upload["agreements"],
        serde_json::json!(["force-performance-deposit"]),
        "{kent_upload}"
    );
    assert_eq!(kent_upload["datasets"][0]["version"], 0);
    assert_eq!(kent_upload["detail"]["mode"], "append");
    let query = events
        .iter()
        .find(|e| e["action"] == "query" && e["partner"] == "pcc-kent" && e["outcome"] == "ok")
        .expect("query event");
    assert_eq!(query["sql"], KENT_SQL);
    assert_eq!(query["sql_sha256"].as_str().map(str::len), Some(64));
    assert_eq!(query["rows"], 336);
    assert_eq!(query["purpose"], "performance-scrutiny");
    assert_eq!(query["datasets"][0]["dataset"], "force_performance");
    assert_eq!(query["datasets"][0]["version"], 1);
    assert!(
        query["agreements"]
            .as_array()
            .expect("agreements")
            .iter()
            .any(|a| a == "force-performance-pcc")
    );
    let refusal = events
        .iter()
        .find(|e| e["action"] == "query" && e["status"] == 403)
        .expect("refusal event");
    assert_eq!(refusal["code"], "purpose_not_permitted");
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "gapless: {seqs:?}"
    );

    let (status, panel) = get(
        &server,
        &site.token("panel-kent", "auditor"),
        "/v1/audit?limit=1000",
    );
    assert_eq!(status, 200);
    let partners: std::collections::BTreeSet<&str> = panel["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["partner"].as_str())
        .collect();
    assert_eq!(
        partners.into_iter().collect::<Vec<_>>(),
        ["pcc-kent"],
        "a panel sees only its own PCC"
    );
    let (status, _) = get(&server, &kent, "/v1/audit");
    assert_eq!(status, 403);
    let (status, _) = get(&server, &site.token("pcc-kent", "auditor"), "/v1/audit");
    assert_eq!(
        status, 403,
        "the auditor role alone grants nothing without an agreement"
    );

    let (status, sql) = json(post_query(
        &server,
        &site.token("operator", "analyst,auditor"),
        "SELECT action, count(*) AS n FROM audit_log GROUP BY action ORDER BY action",
        "audit",
        "application/json",
    ));
    assert_eq!(status, 200, "{sql}");
    assert!(
        sql["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .any(|r| r[0] == "upload" && r[1] == 3)
    );

    server.kill();
    let verify = |extra: &[&str]| {
        Command::new(binary())
            .args(["audit", "verify", "--config"])
            .arg(site.config())
            .args(extra)
            .output()
            .expect("verify")
    };
    let out = verify(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("every link intact"));
    let log = site.dir.path().join("data/audit/audit.log");
    let text = std::fs::read_to_string(&log).expect("log");
    let tampered = text.replacen("\"rows\":336", "\"rows\":335", 1);
    assert_ne!(text, tampered);
    std::fs::write(&log, tampered).expect("write");
    let out = verify(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken at line") && err.contains("altered"),
        "{err}"
    );
}

#[test]
fn the_case_table_holds_over_http() {
    let (site, server) = loaded(&[]);
    let kent = site.token("pcc-kent", "analyst");
    let essex = site.token("pcc-essex", "analyst");
    let hmicfrs = site.token("hmicfrs", "inspector");
    let probation = site.token("probation", "analyst");
    let (sp, insp) = ("performance-scrutiny", "inspection");
    enum Want {
        Rows(serde_json::Value),
        Code(u16, &'static str),
    }
    use Want::*;
    use serde_json::json as j;
    let cases: Vec<(&str, &str, &str, Want)> = vec![
        (
            &kent,
            "SELECT DISTINCT pfa_code FROM force_performance",
            sp,
            Rows(j!([["E23000032"]])),
        ),
        (
            &essex,
            "SELECT DISTINCT pfa_code FROM force_performance",
            sp,
            Rows(j!([["E23000028"]])),
        ),
        (
            &kent,
            "SELECT count(*) FROM force_performance",
            sp,
            Rows(j!([[336]])),
        ),
        (
            &kent,
            "SELECT count(*) FROM force_performance WHERE pfa_code = 'E23000028'",
            sp,
            Rows(j!([[0]])),
        ),
        (
            &kent,
            "SELECT count(*) FROM (SELECT * FROM force_performance) t",
            sp,
            Rows(j!([[336]])),
        ),
        (
            &kent,
            "WITH x AS (SELECT pfa_code FROM force_performance) SELECT count(DISTINCT pfa_code) FROM x",
            sp,
            Rows(j!([[1]])),
        ),
        (
            &kent,
            "SELECT count(*) FROM force_performance a JOIN force_performance b ON a.pfa_code = b.pfa_code AND a.quarter = b.quarter AND a.indicator = b.indicator",
            sp,
            Rows(j!([[336]])),
        ),
        (
            &kent,
            "SELECT pfa_code FROM force_performance UNION SELECT pfa_code FROM force_performance",
            sp,
            Rows(j!([["E23000032"]])),
        ),
        (
            &kent,
            "SELECT max(rn) FROM (SELECT row_number() OVER () AS rn FROM force_performance) w",
            sp,
            Rows(j!([[336]])),
        ),
        (
            &kent,
            "SELECT count(*) FROM force_performance WHERE CASE WHEN pfa_code <> 'E23000032' THEN 1 / (CAST(value AS BIGINT) - CAST(value AS BIGINT)) ELSE 1 END = 1",
            sp,
            Rows(j!([[336]])),
        ),
        (
            &hmicfrs,
            "SELECT count(DISTINCT pfa_code) FROM force_performance",
            insp,
            Rows(j!([[2]])),
        ),
        (
            &hmicfrs,
            "SELECT count(*) FROM police_forces",
            insp,
            Rows(j!([[43]])),
        ),
        (
            &probation,
            "SELECT count(DISTINCT pfa_code) FROM reoffending_cohort",
            "reducing-reoffending",
            Rows(j!([[2]])),
        ),
        (
            &kent,
            "SELECT * FROM force_performance",
            insp,
            Code(403, "purpose_not_permitted"),
        ),
        (&kent, "SELECT * FROM force_context", sp, Code(400, "sql")),
        (
            &hmicfrs,
            "SELECT * FROM reoffending_cohort",
            insp,
            Code(400, "sql"),
        ),
        (
            &kent,
            "SELECT * FROM reoffending_cohort",
            "reducing-reoffending",
            Code(403, "aggregate_only"),
        ),
        (
            &kent,
            "EXPLAIN SELECT * FROM force_performance",
            sp,
            Code(400, "not_allowed"),
        ),
        (
            &kent,
            "SELECT * FROM information_schema.tables",
            sp,
            Code(400, "sql"),
        ),
        (
            &kent,
            "COPY (SELECT 1) TO '/tmp/x.csv'",
            sp,
            Code(400, "not_allowed"),
        ),
        (
            &kent,
            "SET datafusion.execution.batch_size = 1",
            sp,
            Code(400, "not_allowed"),
        ),
        (
            &kent,
            "SELECT * FROM generate_series(1, 10)",
            sp,
            Code(400, "sql"),
        ),
    ];
    for (token, sql, purpose, want) in cases {
        let (status, body) = json(post_query(&server, token, sql, purpose, "application/json"));
        match want {
            Rows(rows) => {
                assert_eq!(status, 200, "{sql}: {body}");
                assert_eq!(body["rows"], rows, "{sql}");
            }
            Code(s, code) => assert_eq!(
                (status, body["error"]["code"].as_str()),
                (s, Some(code)),
                "{sql}: {body}"
            ),
        }
    }
}

#[test]
fn aggregate_answers_carry_their_disclosure_record_in_every_format_and_in_the_audit() {
    let (site, server) = loaded(&[]);
    let kent = site.token("pcc-kent", "analyst");
    let sql = "SELECT age_band, count(*) AS offenders FROM reoffending_cohort WHERE sex = 'female' GROUP BY age_band ORDER BY age_band";
    let (status, body) = json(post_query(
        &server,
        &kent,
        sql,
        "reducing-reoffending",
        "application/json",
    ));
    assert_eq!(status, 200, "{body}");
    let d = &body["disclosure"];
    assert_eq!(d["access"], "aggregate");
    assert_eq!(d["min_count"], 10);
    assert_eq!(d["round_to"], 5);
    assert_eq!(d["agreements"][0], "probation-pcc-reoffending-mou");
    assert_eq!(d["marker_column"], "_suppressed");
    let suppressed = d["suppressed_cells"].as_u64().expect("suppressed");
    assert!(suppressed > 0, "{d}");
    // Each of the ten age bands is shown; withheld ones are null and marked.
    let rows = body["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 10, "{body}");
    let mut marked = 0;
    for r in rows {
        let n = &r[1];
        if r[2] == true {
            marked += 1;
            assert!(n.is_null(), "{r}");
        } else {
            let n = n.as_i64().expect("count");
            assert!(n >= 10 && n % 5 == 0, "{r}");
        }
    }
    assert_eq!(marked as u64, suppressed);

    let csv = post_query(&server, &kent, sql, "reducing-reoffending", "text/csv");
    assert_eq!(csv.status().as_u16(), 200);
    let header = csv
        .headers()
        .get("concordat-disclosure")
        .expect("disclosure header")
        .to_str()
        .expect("text")
        .to_owned();
    assert!(
        header.contains(&format!("suppressed_cells={suppressed}")),
        "{header}"
    );
    let text = csv.text().expect("csv");
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(
        reader.headers().expect("header").iter().collect::<Vec<_>>(),
        vec!["age_band", "offenders", "_suppressed"]
    );
    let marked_csv = reader
        .records()
        .map(|r| r.expect("record"))
        .filter(|r| &r[2] == "true")
        .inspect(|r| assert_eq!(&r[1], "", "a withheld count is empty in CSV"))
        .count();
    assert_eq!(marked_csv as u64, suppressed);

    let (status, audit) = get(
        &server,
        &site.token("operator", "auditor"),
        "/v1/audit?limit=1000",
    );
    assert_eq!(status, 200);
    let event = audit["events"]
        .as_array()
        .expect("events")
        .iter()
        .rfind(|e| e["action"] == "query" && e["outcome"] == "ok")
        .expect("query event")
        .clone();
    let recorded = &event["detail"]["disclosure"];
    assert_eq!(recorded["suppressed_cells"], suppressed, "{event}");
    assert_eq!(recorded["agreements"][0], "probation-pcc-reoffending-mou");

    // Record-level rows are still refused, with the agreement named.
    let (status, body) = json(post_query(
        &server,
        &kent,
        "SELECT age_band FROM reoffending_cohort",
        "reducing-reoffending",
        "application/json",
    ));
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "aggregate_only");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("probation-pcc-reoffending-mou"),
        "{body}"
    );
}
