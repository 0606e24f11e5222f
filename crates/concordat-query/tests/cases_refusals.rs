//! Purposes, dates, refused statements, invisible datasets and limits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use concordat_query::QueryLimits;

use crate::support::*;

#[tokio::test]
async fn purposes_dates_and_visibility_are_enforced() {
    let w = world().await;
    let err = w
        .run(
            "pcc-kent",
            "SELECT count(*) FROM force_performance",
            "inspection",
        )
        .await
        .expect_err("wrong purpose");
    assert_eq!(err.code(), "purpose_not_permitted");
    assert!(
        err.to_string().contains("force-performance-pcc")
            && err.to_string().contains("performance-scrutiny"),
        "{err}"
    );
    let err = w
        .run("pcc-kent", "SELECT 1", "gossip")
        .await
        .expect_err("unknown purpose");
    assert_eq!(err.code(), "purpose");
    for day in [
        NaiveDate::from_ymd_opt(2027, 4, 1),
        NaiveDate::from_ymd_opt(2024, 3, 31),
    ] {
        let err = w
            .run_on(
                "pcc-kent",
                "SELECT count(*) FROM force_performance",
                "performance-scrutiny",
                day.expect("date"),
            )
            .await
            .expect_err("outside dates");
        assert_eq!(err.code(), "agreement_not_in_force");
        assert!(
            err.to_string().contains("2024-04-01") && err.to_string().contains("2027-03-31"),
            "{err}"
        );
    }
    let unknown = w
        .run(
            "pcc-kent",
            "SELECT * FROM no_such_table",
            "performance-scrutiny",
        )
        .await
        .expect_err("unknown")
        .to_string();
    let invisible = w
        .run(
            "pcc-kent",
            "SELECT * FROM force_context",
            "performance-scrutiny",
        )
        .await
        .expect_err("invisible")
        .to_string();
    assert_eq!(
        invisible.replace("force_context", "T"),
        unknown.replace("no_such_table", "T"),
        "an invisible dataset is exactly an unknown one"
    );
    for sql in [
        "SELECT * FROM reoffending_cohort",
        "SELECT * FROM court_timeliness",
    ] {
        let err = w
            .run("pcc-kent", sql, "reducing-reoffending")
            .await
            .expect_err("aggregate only");
        assert_eq!(err.code(), "aggregate_only", "{sql}");
    }
}

#[tokio::test]
async fn only_read_queries_run() {
    let w = world().await;
    let refused = [
        "CREATE TABLE x (a INT)",
        "CREATE TABLE x AS SELECT * FROM force_performance",
        "CREATE VIEW v AS SELECT * FROM force_performance",
        "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/etc/'",
        "INSERT INTO force_performance SELECT * FROM force_performance",
        "DELETE FROM force_performance",
        "UPDATE force_performance SET value = 0",
        "DROP TABLE force_performance",
        "COPY (SELECT 1) TO '/tmp/concordat-copy-test.parquet'",
        "SET datafusion.execution.batch_size = 1",
        "PREPARE q AS SELECT 1",
        "EXPLAIN SELECT * FROM force_performance",
        "EXPLAIN ANALYZE SELECT * FROM force_performance",
        "DESCRIBE force_performance",
        "SHOW TABLES",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r",
        "SELECT 1; SELECT 2",
        "SELECT * FROM generate_series(1, 1000000000)",
        "SELECT * FROM range(10)",
        "SELECT * FROM read_parquet('/etc/passwd')",
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM 'file:///etc/passwd'",
        "SELECT * FROM information_schema.tables",
        "SELECT * FROM information_schema.df_settings",
        "SELECT count(*) FROM force_performance a, force_performance b",
        "SELECT count(*) FROM force_performance a JOIN force_performance b ON a.value < b.value",
    ];
    for sql in refused {
        let err = w
            .run("pcc-kent", sql, "performance-scrutiny")
            .await
            .expect_err(sql);
        assert!(matches!(err.code(), "not_allowed" | "sql"), "{sql}: {err}");
        assert!(
            !err.to_string().contains("/work") && !err.to_string().contains("tables/"),
            "{sql}: no internal paths: {err}"
        );
    }
    assert!(!std::path::Path::new("/tmp/concordat-copy-test.parquet").exists());
    // Nothing a query said changed the next session.
    let got = w
        .run(
            "pcc-kent",
            "SELECT count(*) FROM force_performance",
            "performance-scrutiny",
        )
        .await
        .expect("still works");
    assert_eq!(single_i64(&got), 336);
    // A scalar subquery (a join against one row) is not an unbounded join.
    let got = w.run("pcc-kent", "SELECT indicator, count(*) * 100.0 / (SELECT count(*) FROM force_performance) AS pct FROM force_performance GROUP BY indicator", "performance-scrutiny").await.expect("share of total");
    assert_eq!(count(&got), 12);
}

#[tokio::test]
async fn errors_never_echo_a_data_value() {
    let w = world().await;
    let first = w
        .run(
            "probation",
            "SELECT person_id FROM reoffending_cohort LIMIT 1",
            "reducing-reoffending",
        )
        .await
        .expect("record access");
    let pid = texts(&first, 0)[0].clone();
    for sql in [
        "SELECT CAST(person_id AS INT) FROM reoffending_cohort",
        "SELECT CAST(cohort_quarter AS DATE) FROM reoffending_cohort",
        "SELECT arrow_cast(person_id, 'Int64') FROM reoffending_cohort",
        "SELECT to_timestamp(person_id) FROM reoffending_cohort",
    ] {
        let err = w
            .run("probation", sql, "reducing-reoffending")
            .await
            .expect_err(sql);
        let text = err.to_string();
        assert!(
            !text.contains(&pid[..12]) && !text.contains("2019Q"),
            "{sql}: {text}"
        );
    }
}

#[tokio::test]
async fn limits_hold_with_clear_errors() {
    let w = world_with(QueryLimits {
        timeout: Duration::from_millis(300),
        per_partner: 1,
        queue: 0,
        concurrent: 1,
        max_sql_bytes: 2000,
        ..QueryLimits::default()
    })
    .await;
    let long = format!("SELECT 1 {}", " ".repeat(3000));
    assert_eq!(
        w.run("probation", &long, "reducing-reoffending")
            .await
            .expect_err("long")
            .code(),
        "too_large"
    );
    let started = Instant::now();
    let heavy = "SELECT count(*) FROM reoffending_cohort a JOIN reoffending_cohort b ON a.sex = b.sex JOIN reoffending_cohort c ON b.sex = c.sex";
    let err = w
        .run("probation", heavy, "reducing-reoffending")
        .await
        .expect_err("timeout");
    assert_eq!(err.code(), "timeout");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the work was cancelled, not waited for: {:?}",
        started.elapsed()
    );
    let held = w
        .start(
            "pcc-kent",
            "SELECT * FROM force_performance",
            "performance-scrutiny",
        )
        .await
        .expect("first");
    let err = w
        .run("pcc-kent", "SELECT 1", "performance-scrutiny")
        .await
        .expect_err("busy");
    assert_eq!(err.code(), "too_many_queries");
    let err = w
        .run("probation", "SELECT 1", "reducing-reoffending")
        .await
        .expect_err("queued past its deadline");
    assert_eq!(
        err.code(),
        "timeout",
        "one query at a time across partners: the next waits, within its deadline"
    );
    drop(held);
    assert!(
        w.run("pcc-kent", "SELECT 1", "performance-scrutiny")
            .await
            .is_ok(),
        "the slot is released with the query"
    );
    let tight = world_with(QueryLimits {
        memory_bytes: 64 * 1024,
        spill_bytes: 1,
        ..QueryLimits::default()
    })
    .await;
    let err = tight
        .run(
            "probation",
            "SELECT person_id, count(*) FROM reoffending_cohort GROUP BY person_id ORDER BY 2 DESC",
            "reducing-reoffending",
        )
        .await
        .expect_err("memory");
    assert_eq!(err.code(), "memory_limit", "{err}");
}

/// A burst beyond a partner's running share waits its turn and is answered; only a
/// burst beyond the bounded queue is refused, and a partner's burst does not stop
/// another partner.
#[tokio::test]
async fn a_burst_waits_its_turn_instead_of_failing() {
    let w = Arc::new(
        world_with(QueryLimits {
            per_partner: 2,
            queue: 8,
            concurrent: 3,
            timeout: Duration::from_secs(30),
            ..QueryLimits::default()
        })
        .await,
    );
    let sql = "SELECT pfa_code, count(*) FROM force_performance GROUP BY pfa_code";
    let burst: Vec<_> = (0..10)
        .map(|_| {
            let w = w.clone();
            tokio::spawn(async move { w.run("pcc-kent", sql, "performance-scrutiny").await })
        })
        .collect();
    let other = w.run("probation", "SELECT 1", "reducing-reoffending").await;
    assert!(
        other.is_ok(),
        "another partner is answered during the burst"
    );
    let mut answers = Vec::new();
    for b in burst {
        answers.push(b.await.expect("task"));
    }
    let failed: Vec<String> = answers
        .iter()
        .filter_map(|a| a.as_ref().err().map(|e| e.code().to_owned()))
        .collect();
    assert!(
        failed.is_empty(),
        "2 running + 8 waiting: all answered: {failed:?}"
    );
    let first = lines(answers[0].as_ref().expect("answer"));
    assert!(
        answers
            .iter()
            .all(|a| lines(a.as_ref().expect("answer")) == first)
    );

    // Past the queue: 2 running and 8 waiting, the 11th is refused at once.
    let held: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..2 {
            v.push(
                w.start("pcc-kent", sql, "performance-scrutiny")
                    .await
                    .expect("running"),
            );
        }
        v
    };
    let waiting: Vec<_> = (0..8)
        .map(|_| {
            let w = w.clone();
            tokio::spawn(async move { w.run("pcc-kent", "SELECT 1", "performance-scrutiny").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let err = w
        .run("pcc-kent", "SELECT 1", "performance-scrutiny")
        .await
        .expect_err("queue full");
    assert_eq!(err.code(), "too_many_queries");
    assert_eq!(err.kind(), concordat_core::ErrorKind::Busy);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once"
    );
    drop(held);
    for q in waiting {
        assert!(
            q.await.expect("task").is_ok(),
            "the waiting ones are answered"
        );
    }
}
