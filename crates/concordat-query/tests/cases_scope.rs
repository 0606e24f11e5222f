//! Row scope and column rules hold through every SQL construct, and allowed results
//! equal plain DataFusion over the same data with the filter applied by hand.

use concordat_query::QueryLimits;

use crate::support::*;

const KENT_ONLY: &str = "pfa_code = 'E23000032'";

#[tokio::test]
async fn kent_sees_only_kent_rows_whatever_the_sql() {
    let w = world().await;
    let p = "performance-scrutiny";
    // (sql, views the reference engine filters by hand)
    let cases: &[(&str, &[(&str, &str)])] = &[
        (
            "SELECT DISTINCT pfa_code FROM force_performance",
            &[("force_performance", KENT_ONLY)],
        ),
        (
            "SELECT * FROM force_performance",
            &[("force_performance", KENT_ONLY)],
        ),
        (
            "SELECT count(*) FROM force_performance",
            &[("force_performance", KENT_ONLY)],
        ),
        (
            "SELECT * FROM force_performance WHERE pfa_code = 'E23000028'",
            &[("force_performance", KENT_ONLY)],
        ),
        (
            "SELECT fp.pfa_code AS area, count(*) AS n FROM force_performance AS fp GROUP BY fp.pfa_code",
            &[("force_performance", KENT_ONLY)],
        ),
        (
            "SELECT count(*) FROM (SELECT * FROM force_performance) t WHERE t.pfa_code <> 'E23000032'",
            &[("force_performance", KENT_ONLY)],
        ),
        (
            "WITH x AS (SELECT pfa_code, value FROM force_performance) SELECT pfa_code, sum(value) FROM x GROUP BY pfa_code",
            &[("force_performance", KENT_ONLY)],
        ),
        (
            "SELECT p.quarter, r.financial_year, p.value FROM force_performance p JOIN force_resources r ON p.pfa_code = r.pfa_code WHERE p.indicator = 'homicide_offences' AND p.quarter = '2024Q2'",
            &[
                ("force_performance", KENT_ONLY),
                ("force_resources", KENT_ONLY),
            ],
        ),
        (
            "SELECT pfa_code FROM force_performance UNION SELECT pfa_code FROM force_resources",
            &[
                ("force_performance", KENT_ONLY),
                ("force_resources", KENT_ONLY),
            ],
        ),
        (
            "SELECT pfa_code, quarter, rank() OVER (PARTITION BY indicator ORDER BY value DESC) AS r FROM force_performance WHERE indicator = 'knife_offences'",
            &[("force_performance", KENT_ONLY)],
        ),
        (
            "SELECT count(*) FROM force_performance WHERE pfa_code IN (SELECT pfa_code FROM force_resources WHERE pfa_code <> 'E23000032')",
            &[
                ("force_performance", KENT_ONLY),
                ("force_resources", KENT_ONLY),
            ],
        ),
        (
            "SELECT indicator, avg(value) - avg(baseline_value) AS change FROM force_performance GROUP BY indicator",
            &[("force_performance", KENT_ONLY)],
        ),
        (
            "SELECT count(*) FROM force_performance WHERE quarter >= '2024Q1' AND EXISTS (SELECT 1 FROM force_resources r WHERE r.pfa_code = force_performance.pfa_code AND r.pfa_code = 'E23000028')",
            &[
                ("force_performance", KENT_ONLY),
                ("force_resources", KENT_ONLY),
            ],
        ),
    ];
    for (sql, views) in cases {
        let got = w
            .run("pcc-kent", sql, p)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let want = w.direct(sql, views).await;
        assert_eq!(lines(&got), lines(&want), "{sql}");
        for line in lines(&got) {
            assert!(
                !line.contains("E23000028") && !line.contains("E23000035"),
                "{sql}: another force leaked: {line}"
            );
        }
    }
}

#[tokio::test]
async fn a_failing_expression_over_hidden_rows_is_no_oracle() {
    let w = world().await;
    let sql = "SELECT count(*) FROM force_performance WHERE CASE WHEN pfa_code <> 'E23000032' THEN 1 / (CAST(value AS BIGINT) - CAST(value AS BIGINT)) ELSE 1 END = 1";
    let got = w
        .run("pcc-kent", sql, "performance-scrutiny")
        .await
        .expect("no error: only Kent rows are ever evaluated");
    let want = w
        .direct(
            "SELECT count(*) FROM force_performance",
            &[("force_performance", KENT_ONLY)],
        )
        .await;
    assert_eq!(single_i64(&got), single_i64(&want));
    // The same expression over a national caller's rows does fail, and names no value.
    let err = w
        .run("hmicfrs", sql, "inspection")
        .await
        .expect_err("division by zero");
    assert_eq!(err.code(), "query_failed");
    assert_eq!(
        err.to_string(),
        "the query failed while evaluating data: division by zero"
    );
}

#[tokio::test]
async fn national_readers_see_every_force_and_the_reference_table_is_open_to_all() {
    let w = world().await;
    let got = w
        .run(
            "hmicfrs",
            "SELECT count(DISTINCT pfa_code) FROM force_performance",
            "inspection",
        )
        .await
        .expect("hmicfrs");
    assert_eq!(single_i64(&got), 3);
    let got = w
        .run(
            "pcc-essex",
            "SELECT count(*) FROM police_forces WHERE country = 'Wales'",
            "efficiency-comparison",
        )
        .await
        .expect("reference");
    assert_eq!(single_i64(&got), 4);
    let got = w.run("probation", "SELECT count(*) FROM reoffending_cohort r JOIN police_forces f ON r.pfa_code = f.pfa_code WHERE f.force_slug = 'kent'", "reducing-reoffending").await.expect("join");
    let want = w
        .direct(
            "SELECT count(*) FROM reoffending_cohort",
            &[("reoffending_cohort", KENT_ONLY)],
        )
        .await;
    assert_eq!(single_i64(&got), single_i64(&want));
}

#[tokio::test]
async fn hidden_columns_are_unknown_and_masked_columns_are_coarsened_through_every_construct() {
    let w = world().await;
    let p = "inspection";
    let unknown = w
        .run(
            "home-office",
            "SELECT no_such_column FROM court_timeliness",
            p,
        )
        .await
        .expect_err("unknown");
    let unknown_text = unknown.to_string().replace("no_such_column", "X");
    for sql in [
        "SELECT person_id FROM court_timeliness",
        "SELECT count(*) FROM court_timeliness WHERE person_id IS NOT NULL",
        "SELECT t.person_id FROM (SELECT * FROM court_timeliness) t",
        "WITH c AS (SELECT * FROM court_timeliness) SELECT count(DISTINCT person_id) FROM c",
        "SELECT count(*) FROM court_timeliness a JOIN court_timeliness b ON a.person_id = b.person_id",
        "SELECT quarter FROM court_timeliness GROUP BY quarter HAVING count(DISTINCT case_id) > 1",
        "SELECT row_number() OVER (PARTITION BY person_id) FROM court_timeliness",
        "SELECT quarter FROM court_timeliness UNION SELECT person_id FROM court_timeliness",
    ] {
        let err = w.run("home-office", sql, p).await.expect_err(sql);
        assert_eq!(err.code(), "sql", "{sql}");
        let text = err
            .to_string()
            .replace("person_id", "X")
            .replace("case_id", "X");
        assert!(
            text.contains("No field named") || text.contains("not found"),
            "{sql}: {err}"
        );
        assert_eq!(
            text.contains("No field named"),
            unknown_text.contains("No field named"),
            "{sql}: same error as a column that does not exist"
        );
        let suggested = err
            .to_string()
            .split("Valid fields are")
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        assert!(
            !suggested.contains("person_id") && !suggested.contains("case_id"),
            "{sql}: hidden names are not suggested: {err}"
        );
    }
    let all = w
        .run("home-office", "SELECT * FROM court_timeliness LIMIT 5", p)
        .await
        .expect("select *");
    let names: Vec<String> = all[0]
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert!(
        !names.contains(&"person_id".to_owned()) && !names.contains(&"case_id".to_owned()),
        "{names:?}"
    );
    assert!(names.contains(&"offence_date".to_owned()));
    for sql in [
        "SELECT offence_date FROM court_timeliness",
        "SELECT d FROM (SELECT offence_date AS d FROM court_timeliness) s",
        "SELECT min(offence_date) FROM court_timeliness GROUP BY quarter",
    ] {
        let got = w.run("home-office", sql, p).await.expect(sql);
        let dates = texts(&got, 0);
        assert!(!dates.is_empty());
        assert!(
            dates.iter().all(|d| d.ends_with("-01")),
            "{sql}: every date is the first of its month"
        );
    }
    let got = w
        .run(
            "home-office",
            "SELECT count(*) FROM court_timeliness WHERE offence_date = DATE '2023-05-17'",
            p,
        )
        .await
        .expect("filter");
    assert_eq!(single_i64(&got), 0, "filters see only the coarsened value");
    let got = w
        .run(
            "cps",
            "SELECT count(*) FROM court_timeliness WHERE extract(day FROM offence_date) <> 1",
            "performance-scrutiny",
        )
        .await
        .expect("cps");
    assert!(single_i64(&got) > 0, "the depositor sees exact dates");
}

/// Stored files are clustered by force area: a query scoped to Kent opens Kent's files
/// and no other force's, for record-level and aggregate-only (disclosure-controlled) data.
#[tokio::test]
async fn a_kent_query_opens_only_kents_files() {
    let w = world().await;
    let cases = [
        (
            "performance-scrutiny",
            "SELECT indicator, avg(value) FROM force_performance GROUP BY indicator",
            "force_performance",
        ),
        (
            "reducing-reoffending",
            "SELECT age_band, count(*) FROM reoffending_cohort GROUP BY age_band",
            "reoffending_cohort",
        ),
    ];
    for (purpose, sql, dataset) in cases {
        let service = w.service_with(concordat_query::sdc::cellkey::RecordKey::random());
        let batches = w
            .run_on_service(&service, "pcc-kent", sql, purpose)
            .await
            .expect("query");
        assert!(count(&batches) > 0, "{sql}");
        let opened = service.files_opened();
        assert!(!opened.is_empty(), "{sql}: no file opened");
        let stored = w.store.table(dataset, None).await.expect("table");
        let mut forces_in_table = std::collections::BTreeSet::new();
        let mut kent_files = 0;
        for file in stored.snapshot().expect("snapshot").log_data().iter() {
            let path = file.path().to_string();
            let forces = forces_in(&w, dataset, &path);
            forces_in_table.extend(forces.iter().cloned());
            let opened_it = opened.iter().any(|o| o.ends_with(&path));
            if forces == ["E23000032"] {
                kent_files += 1;
            } else {
                assert!(!opened_it, "{sql}: opened {path}, which holds {forces:?}");
            }
        }
        assert!(forces_in_table.len() > 1, "the table holds other forces");
        assert!(kent_files > 0);
    }
}

/// The force codes one stored data file holds, read from the file itself.
fn forces_in(w: &World, dataset: &str, path: &str) -> Vec<String> {
    let file = std::fs::File::open(w.data_dir().join("tables").join(dataset).join(path))
        .expect("data file");
    let batches: Vec<_> =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .expect("reader")
            .build()
            .expect("build")
            .map(|b| b.expect("batch"))
            .collect();
    let column = batches[0].schema().index_of("pfa_code").expect("pfa_code");
    let forces: std::collections::BTreeSet<String> = texts(&batches, column).into_iter().collect();
    forces.into_iter().collect()
}

/// A kept plan run again gives what planning afresh gives, for the plan nodes that hold
/// state while they run (repartitions, aggregates, sorts, windows, limits, unions, hash
/// joins and top-k sorts, whose dynamic filters each run makes anew), asked one after
/// another and at once. Plans whose copies would share state (a scalar subquery's
/// results, a min/max aggregate's dynamic filter) are planned again every time.
#[tokio::test]
async fn a_kept_plan_run_again_answers_as_planning_afresh() {
    let w = world_with(QueryLimits {
        answer_cache_bytes: 0,
        ..QueryLimits::default()
    })
    .await;
    let afresh = concordat_query::QueryService::new(
        w.store.clone(),
        w.audit.clone(),
        w.policies.clone(),
        QueryLimits {
            answer_cache_bytes: 0,
            plan_cache_bytes: 0,
            ..QueryLimits::default()
        },
    )
    .expect("service");
    let p = "reducing-reoffending";
    // (sql, whether its plan is kept)
    let cases = [
        (
            "SELECT age_band, index_disposal, count(*) AS n, avg(reoffences) AS mean FROM reoffending_cohort GROUP BY age_band, index_disposal ORDER BY 1, 2",
            true,
        ),
        (
            "SELECT age_band, sum(reoffences) OVER (PARTITION BY age_band) AS s, row_number() OVER (PARTITION BY age_band ORDER BY person_id, cohort_quarter) AS k FROM reoffending_cohort ORDER BY 1, 3",
            true,
        ),
        (
            "SELECT pfa_code, count(DISTINCT person_id) AS persons FROM reoffending_cohort GROUP BY pfa_code UNION ALL SELECT 'all', count(*) FROM reoffending_cohort ORDER BY 1",
            true,
        ),
        (
            "SELECT count(*) FROM (SELECT person_id FROM reoffending_cohort WHERE reoffended LIMIT 25) t",
            true,
        ),
        (
            "SELECT r.pfa_code, f.force_slug, count(*) AS n FROM reoffending_cohort r JOIN police_forces f ON r.pfa_code = f.pfa_code GROUP BY r.pfa_code, f.force_slug ORDER BY 1",
            true,
        ),
        (
            "SELECT person_id, reoffences FROM reoffending_cohort ORDER BY reoffences DESC, person_id, cohort_quarter LIMIT 7",
            true,
        ),
        (
            "SELECT a.person_id, a.cohort_quarter, b.reoffences FROM reoffending_cohort a JOIN reoffending_cohort b ON a.person_id = b.person_id AND a.cohort_quarter = b.cohort_quarter WHERE b.reoffences >= 3 ORDER BY b.reoffences DESC, a.person_id, a.cohort_quarter LIMIT 5",
            true,
        ),
        (
            "SELECT max(reoffences), min(cohort_quarter) FROM reoffending_cohort WHERE reoffended",
            false,
        ),
        (
            "SELECT count(*) FROM reoffending_cohort WHERE reoffences > (SELECT avg(reoffences) FROM reoffending_cohort)",
            false,
        ),
    ];
    for (sql, kept) in cases {
        let want = lines(
            &w.run_on_service(&afresh, "probation", sql, p)
                .await
                .expect(sql),
        );
        for n in 0..2 {
            let mut run = w.start("probation", sql, p).await.expect(sql);
            assert_eq!(run.plan_reused, kept && n > 0, "{sql}");
            let mut rows = Vec::new();
            while let Some(b) = run.batches.recv().await {
                rows.push(b.expect(sql));
            }
            assert_eq!(lines(&rows), want, "{sql}");
        }
        // Four at once: copies of the kept plans, made for one partition or for two as
        // the load decides.
        let runs = futures::future::join_all(
            (0..4).map(|_| w.run_on_service(&w.service, "probation", sql, p)),
        )
        .await;
        for run in runs {
            assert_eq!(lines(&run.expect(sql)), want, "{sql}");
        }
    }
    // Beside another running query a question is planned for one partition (a plan of
    // its own, kept in turn); alone again, it runs the plan made for two.
    let sql = "SELECT age_band, count(*) AS n FROM reoffending_cohort GROUP BY age_band ORDER BY 1";
    let want = lines(
        &w.run_on_service(&afresh, "probation", sql, p)
            .await
            .expect(sql),
    );
    for reused in [false, true] {
        let run = w.start("probation", sql, p).await.expect(sql);
        assert_eq!(run.plan_reused, reused, "alone");
    }
    let other = w
        .start("probation", "SELECT count(*) FROM reoffending_cohort", p)
        .await
        .expect("other");
    for reused in [false, true] {
        let mut run = w.start("probation", sql, p).await.expect(sql);
        assert_eq!(run.plan_reused, reused, "beside another query");
        let mut rows = Vec::new();
        while let Some(b) = run.batches.recv().await {
            rows.push(b.expect(sql));
        }
        assert_eq!(lines(&rows), want);
    }
    drop(other);
    let alone = w.start("probation", sql, p).await.expect(sql);
    assert!(alone.plan_reused, "alone again");
}
