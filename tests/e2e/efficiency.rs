//! The police efficiency dataset over HTTP: rebuilt after each input commit as its own
//! version naming the inputs, queryable by every partner its agreements name, and
//! extracted as CSV, Parquet, Excel and JSON with the same numbers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arrow::array::Array;
use concordat_e2e::*;

use super::fixtures::parquet;

const FORCES: [&str; 4] = ["kent", "essex", "surrey", "sussex"];
const FY: &str = "2023-24";

/// Waits until `force_efficiency` has a version built from `input` at `version` or later.
fn built_from(server: &Server, token: &str, input: &str, version: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get(server, token, "/v1/datasets/force_efficiency");
        assert_eq!(status, 200, "{body}");
        if let Some(latest) = body["versions"].as_array().and_then(|v| v.first())
            && latest["sources"][input]
                .as_u64()
                .is_some_and(|v| v >= version)
        {
            return latest.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no rebuild naming {input} v{version}: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn extract(server: &Server, token: &str, format: &str) -> reqwest::blocking::Response {
    client()
        .get(format!(
            "{}/v1/extracts/efficiency?financial_year={FY}&format={format}",
            server.url
        ))
        .bearer_auth(token)
        .send()
        .expect("extract")
}

/// (force, metric) → value, from rows of text cells.
type Values = BTreeMap<(String, String), Option<f64>>;

/// The same keys and, to nine significant figures, the same numbers.
fn same(a: &Values, b: &Values, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: row counts");
    for ((k, x), (k2, y)) in a.iter().zip(b) {
        assert_eq!(k, k2, "{what}");
        let close = match (x, y) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(1.0),
            (None, None) => true,
            _ => false,
        };
        assert!(close, "{what}: {k:?} {x:?} vs {y:?}");
    }
}

#[test]
fn efficiency_is_rebuilt_after_each_input_and_every_extract_format_holds_the_same_numbers() {
    let site = Site::new();
    let server = site.serve();
    let hmicfrs = site.token("hmicfrs", "inspector");
    let (status, body) = upload(
        &server,
        &site.token("home-office", "uploader"),
        "force_context",
        "append",
        parquet("force_context", &[], 0.01),
    );
    assert_eq!(status, 201, "{body}");
    let mut resources_version = 0;
    for force in FORCES {
        let (status, body) = upload(
            &server,
            &site.token(&format!("force-{force}"), "uploader"),
            "force_resources",
            "append",
            parquet("force_resources", &[force], 0.01),
        );
        assert_eq!(status, 201, "{body}");
        resources_version = body["version"].as_u64().expect("version");
    }
    let first = built_from(&server, &hmicfrs, "force_resources", resources_version);
    assert_eq!(first["partner"], "concordat");
    assert!(first["sources"]["force_context"].is_u64(), "{first}");
    assert!(first["sources"]["reoffending_cohort"].is_null(), "{first}");

    // A new input commit: a new version naming the new input version.
    let (status, body) = upload(
        &server,
        &site.token("probation", "uploader"),
        "reoffending_cohort",
        "append",
        parquet("reoffending_cohort", &FORCES, 0.01),
    );
    assert_eq!(status, 201, "{body}");
    let reo_version = body["version"].as_u64().expect("version");
    let second = built_from(&server, &hmicfrs, "reoffending_cohort", reo_version);
    assert!(
        second["version"].as_u64() > first["version"].as_u64(),
        "{first} {second}"
    );

    // Queryable through SQL by a PCC (efficiency comparison) and a panel.
    for (partner, role, purpose) in [
        ("pcc-kent", "analyst", "efficiency-comparison"),
        ("panel-kent", "analyst", "performance-scrutiny"),
    ] {
        let (status, body) = json(
            client()
                .post(format!("{}/v1/query", server.url))
                .bearer_auth(site.token(partner, role))
                .json(&serde_json::json!({
                    "sql": format!("SELECT count(DISTINCT pfa_code) AS forces, count(DISTINCT metric) AS metrics FROM force_efficiency WHERE financial_year = '{FY}'"),
                    "purpose": purpose,
                }))
                .send()
                .expect("query"),
        );
        assert_eq!(status, 200, "{partner}: {body}");
        assert_eq!(body["rows"][0], serde_json::json!([43, 9]), "{partner}");
    }

    // JSON: the reference numbers, and the manifest.
    let (status, doc) = json(extract(&server, &hmicfrs, "json"));
    assert_eq!(status, 200, "{doc}");
    let manifest = &doc["manifest"];
    assert_eq!(manifest["financial_year"], FY);
    assert_eq!(manifest["sources"]["reoffending_cohort"], reo_version);
    assert_eq!(manifest["sources"]["force_resources"], resources_version);
    assert_eq!(manifest["dataset_version"], second["version"]);
    assert!(
        manifest["agreements"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    );
    assert_eq!(manifest["disclosure"]["min_count"], 10);
    assert_eq!(manifest["metrics"].as_array().map(Vec::len), Some(9));
    let columns: Vec<&str> = doc["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| c.as_str().expect("name"))
        .collect();
    let at = |name: &str| columns.iter().position(|c| *c == name).expect("column");
    let mut from_json = Values::new();
    for r in doc["rows"].as_array().expect("rows") {
        from_json.insert(
            (
                r[at("pfa_code")].as_str().expect("pfa").to_owned(),
                r[at("metric")].as_str().expect("metric").to_owned(),
            ),
            r[at("value")].as_f64(),
        );
    }
    assert_eq!(from_json.len(), 43 * 9);
    // The four forces that uploaded have a spend per head; the others are null, with a note.
    let spend: Vec<_> = from_json
        .iter()
        .filter(|((_, m), v)| m == "spend_per_head" && v.is_some())
        .collect();
    assert_eq!(spend.len(), 4, "{spend:?}");
    let note_of = |force: &str, metric: &str| {
        doc["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .find(|r| r[at("pfa_code")] == force && r[at("metric")] == metric)
            .map(|r| r[at("note")].clone())
            .expect("row")
    };
    assert!(
        note_of("E23000001", "spend_per_head")
            .as_str()
            .is_some_and(|n| n.contains("missing input")),
        "a force that has not uploaded says why"
    );

    // CSV, read with a CSV parser; the manifest in a header.
    let resp = extract(&server, &hmicfrs, "csv");
    assert_eq!(resp.status().as_u16(), 200);
    let header: serde_json::Value = serde_json::from_str(
        resp.headers()
            .get("concordat-manifest")
            .expect("manifest header")
            .to_str()
            .expect("text"),
    )
    .expect("manifest json");
    assert_eq!(header["sources"], manifest["sources"]);
    let text = resp.text().expect("csv");
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let h = reader.headers().expect("headers").clone();
    let col = |name: &str| h.iter().position(|c| c == name).expect("csv column");
    let mut from_csv = Values::new();
    for rec in reader.records() {
        let rec = rec.expect("record");
        from_csv.insert(
            (
                rec[col("pfa_code")].to_owned(),
                rec[col("metric")].to_owned(),
            ),
            rec[col("value")].parse::<f64>().ok(),
        );
    }
    same(&from_csv, &from_json, "CSV and JSON hold the same numbers");

    // Parquet, read with the parquet reader; the manifest in its metadata.
    let bytes = extract(&server, &hmicfrs, "parquet")
        .bytes()
        .expect("parquet");
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .expect("parquet file");
    let kv = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == "concordat.manifest").cloned())
        .expect("manifest in metadata");
    let pm: serde_json::Value =
        serde_json::from_str(kv.value.as_deref().expect("value")).expect("json");
    assert_eq!(pm["sources"], manifest["sources"]);
    let mut from_parquet = Values::new();
    for batch in builder.build().expect("reader") {
        let batch = batch.expect("batch");
        let text = |name: &str| {
            let a = arrow::compute::cast(
                batch.column_by_name(name).expect("column"),
                &arrow::datatypes::DataType::Utf8,
            )
            .expect("cast");
            let a = arrow::array::AsArray::as_string::<i32>(&a).clone();
            (0..a.len())
                .map(|i| a.is_valid(i).then(|| a.value(i).to_owned()))
                .collect::<Vec<_>>()
        };
        let (f, m, v) = (text("pfa_code"), text("metric"), text("value"));
        for i in 0..f.len() {
            from_parquet.insert(
                (f[i].clone().expect("pfa"), m[i].clone().expect("metric")),
                v[i].as_deref().and_then(|x| x.parse().ok()),
            );
        }
    }
    same(
        &from_parquet,
        &from_json,
        "Parquet and JSON hold the same numbers",
    );

    // Excel, read with an xlsx reader: a data sheet with numbers, a notes sheet.
    use calamine::Reader;
    let bytes = extract(&server, &hmicfrs, "xlsx").bytes().expect("xlsx");
    let mut book: calamine::Xlsx<_> =
        calamine::open_workbook_from_rs(std::io::Cursor::new(bytes.to_vec())).expect("xlsx file");
    assert_eq!(
        book.sheet_names(),
        vec!["data".to_owned(), "notes".to_owned()]
    );
    let data = book.worksheet_range("data").expect("data sheet");
    let mut rows = data.rows();
    let head: Vec<String> = rows
        .next()
        .expect("header")
        .iter()
        .map(|c| c.to_string())
        .collect();
    let xc = |name: &str| head.iter().position(|c| c == name).expect("xlsx column");
    let mut from_xlsx = Values::new();
    for r in rows {
        let value = match &r[xc("value")] {
            calamine::Data::Float(f) => Some(*f),
            calamine::Data::Int(i) => Some(*i as f64),
            calamine::Data::Empty => None,
            other => panic!("value cell is not a number: {other:?}"),
        };
        from_xlsx.insert(
            (r[xc("pfa_code")].to_string(), r[xc("metric")].to_string()),
            value,
        );
    }
    same(
        &from_xlsx,
        &from_json,
        "Excel and JSON hold the same numbers",
    );
    let notes = book.worksheet_range("notes").expect("notes sheet");
    let text: Vec<String> = notes
        .rows()
        .flat_map(|r| r.iter().map(|c| c.to_string()))
        .collect();
    assert!(text.iter().any(|t| t == "sources"), "{text:?}");
    assert!(text.iter().any(|t| t == "proportion_reoffending_pct"));

    // An uploaded MSG table overrides the derived groups: Kent compared with Essex alone.
    let msg = {
        use std::sync::Arc;
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("pfa_code", arrow::datatypes::DataType::Utf8, false),
            arrow::datatypes::Field::new("peer_pfa_code", arrow::datatypes::DataType::Utf8, false),
        ]));
        let batch = arrow::array::RecordBatch::try_new(
            schema,
            vec![
                Arc::new(arrow::array::StringArray::from(vec!["E23000032"])),
                Arc::new(arrow::array::StringArray::from(vec!["E23000028"])),
            ],
        )
        .expect("batch");
        concordat_synth::parquet_bytes(&[batch]).expect("parquet")
    };
    let (status, body) = upload(
        &server,
        &site.token("hmicfrs", "uploader"),
        "most_similar_groups",
        "replace_periods",
        msg,
    );
    assert_eq!(status, 201, "{body}");
    let msg_version = body["version"].as_u64().expect("version");
    built_from(&server, &hmicfrs, "most_similar_groups", msg_version);
    let (status, body) = json(
        client()
            .post(format!("{}/v1/query", server.url))
            .bearer_auth(&hmicfrs)
            .json(&serde_json::json!({
                "sql": format!("SELECT pfa_code, value, msg_value FROM force_efficiency WHERE financial_year = '{FY}' AND metric = 'spend_per_head' AND pfa_code IN ('E23000032', 'E23000028') ORDER BY pfa_code"),
                "purpose": "inspection",
            }))
            .send()
            .expect("query"),
    );
    assert_eq!(status, 200, "{body}");
    let essex_value = body["rows"][0][1].as_f64().expect("essex");
    let kent_msg = body["rows"][1][2].as_f64().expect("kent msg");
    assert!((essex_value - kent_msg).abs() < 1e-9, "{body}");

    // Audited like a query; a bad year is a clear 400; no role, 403.
    let (status, audit) = get(
        &server,
        &site.token("operator", "auditor"),
        "/v1/audit?limit=1000",
    );
    assert_eq!(status, 200);
    let extracts: Vec<_> = audit["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["action"] == "extract" && e["outcome"] == "ok")
        .collect();
    assert_eq!(extracts.len(), 4);
    assert_eq!(extracts[0]["partner"], "hmicfrs");
    assert_eq!(extracts[0]["datasets"][0]["version"], second["version"]);
    let (status, body) = json(
        client()
            .get(format!(
                "{}/v1/extracts/efficiency?financial_year=2023-25&format=csv",
                server.url
            ))
            .bearer_auth(&hmicfrs)
            .send()
            .expect("bad year"),
    );
    assert_eq!(status, 400, "{body}");
    let (status, _) = json(extract(&server, &site.token("hmicfrs", "uploader"), "csv"));
    assert_eq!(status, 403);
}

#[test]
fn stopping_the_server_during_a_rebuild_is_clean() {
    let site = Site::new();
    let mut server = site.serve();
    let probation = site.token("probation", "uploader");
    let all = [
        "metropolitan",
        "lancashire",
        "merseyside",
        "greater-manchester",
        "west-yorkshire",
        "kent",
        "essex",
    ];
    let (status, body) = upload(
        &server,
        &probation,
        "reoffending_cohort",
        "append",
        parquet("reoffending_cohort", &all, 0.3),
    );
    assert_eq!(status, 201, "{body}");
    // The commit has woken the rebuilder: stop the server while it works.
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(stopped.success());
    let status = server
        .wait_exit(Duration::from_secs(90))
        .expect("the server stops");
    assert!(status.success(), "{status:?}");
    let log = std::fs::read_to_string(&server.log).expect("log");
    assert!(
        !log.contains("panicked") && !log.contains("crashed"),
        "{log}"
    );
    assert!(log.contains("stopped"), "{log}");
}
