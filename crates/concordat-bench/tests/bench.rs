//! A smoke run of the benchmark: tiny data, one run, a second of concurrency. It proves
//! the bench works end to end (upload, rebuild, every query on the gateway and on
//! DataFusion, concurrent analysts with no errors); the numbers live in BENCHMARKS.md.

use std::process::Command;

#[test]
fn the_benchmark_runs_end_to_end_at_a_tiny_scale() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_concordat-bench"));
    let concordat = exe.parent().expect("target dir").join("concordat");
    let json = dir.path().join("bench.json");
    let out = Command::new(exe)
        .args([
            "--scale",
            "0.02",
            "--runs",
            "1",
            "--clients",
            "4",
            "--seconds",
            "1",
            "--no-duckdb",
            "--enum-types",
        ])
        .arg("--data")
        .arg(dir.path())
        .arg("--json")
        .arg(&json)
        .arg("--concordat")
        .arg(&concordat)
        .output()
        .expect("run the bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("parse");
    let queries = report["queries"].as_array().expect("queries");
    assert!(queries.len() >= 12, "{report}");
    for q in queries {
        assert!(q["gateway_ms"].as_f64().is_some_and(|t| t > 0.0), "{q}");
        assert!(q["datafusion_ms"].as_f64().is_some_and(|t| t > 0.0), "{q}");
    }
    assert!(
        report["geomean_gateway_over_datafusion"]
            .as_f64()
            .is_some_and(f64::is_finite)
    );
    assert!(
        report["ingest"]["upload_rows_per_s"]
            .as_f64()
            .is_some_and(|r| r > 0.0)
    );
    // The door comparison ran every query through Postgres wire and Flight SQL (CI
    // installs their clients).
    let doors = report["doors"].as_array().expect("the door comparison ran");
    assert_eq!(doors.len(), queries.len());
    for d in doors {
        for door in ["http_ms", "pg_ms", "flight_ms"] {
            assert!(d[door].as_f64().is_some_and(|t| t > 0.0), "{d}");
        }
    }
    // Concurrency cold and warm; the warm path and the fixed cost are reported.
    let levels = report["concurrency"].as_array().expect("levels");
    assert_eq!(levels.len(), 2, "{report}");
    for (level, path) in levels.iter().zip(["cold", "warm"]) {
        assert_eq!(level["path"], path, "{level}");
        assert_eq!(level["errors"], 0, "{report}");
        assert!(level["queries"].as_u64().is_some_and(|n| n > 0));
    }
    let warm = report["warm"].as_array().expect("warm path");
    assert_eq!(warm.len(), queries.len());
    for w in warm {
        assert!(w["warm_ms"].as_f64().is_some_and(|t| t > 0.0), "{w}");
    }
    assert!(
        report["fixed_overhead"]["p50_ms"]
            .as_f64()
            .is_some_and(f64::is_finite),
        "{report}"
    );
    assert_eq!(
        report["fixed_overhead"]["queries"].as_array().map(Vec::len),
        Some(4)
    );
    assert!(stdout.contains("Geometric mean"), "{stdout}");
    // The enum-type comparison timed the ten queries on the two tables it rewrote, and
    // its dictionary copy really holds dictionaries (its plain copy does not).
    let compared = report["enum_types"]["queries"]
        .as_array()
        .expect("enum types");
    assert_eq!(compared.len(), 10, "{report}");
    for q in compared {
        for k in ["views_ms", "dictionaries_ms"] {
            assert!(q[k].as_f64().is_some_and(|t| t > 0.0), "{q}");
        }
    }
    let rewritten = |n: u8| {
        let path = std::fs::read_dir(dir.path())
            .expect("data dir")
            .map(|e| e.expect("entry").path().join("enum-types"))
            .find(|p| p.is_dir())
            .expect("enum-types dir")
            .join(format!("reoffending_cohort-{n}.parquet"));
        let file = std::fs::File::open(path).expect("rewritten file");
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .expect("parquet");
        reader
            .schema()
            .field_with_name("age_band")
            .expect("age_band")
            .data_type()
            .clone()
    };
    assert!(
        matches!(rewritten(1), arrow::datatypes::DataType::Dictionary(..)),
        "{:?}",
        rewritten(1)
    );
    assert!(!matches!(
        rewritten(0),
        arrow::datatypes::DataType::Dictionary(..)
    ));
}
