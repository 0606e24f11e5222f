//! Commits, duplicates, replacements, concurrency and time travel.

use concordat_policy::ScopeFilter;
use concordat_store::{Mode, StoreError};

use crate::support::*;

on_both! {
    async fn a_valid_upload_commits_a_version_with_provenance(f) {
    let batches = synth("reoffending_cohort", &["kent", "essex"]);
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let out = upload(
        &f.store,
        "reoffending_cohort",
        Mode::Append,
        "probation",
        ScopeFilter::All,
        parquet_bytes(&batches),
    )
    .await
    .expect("commit");
    assert_eq!(
        (out.version, out.rows as usize, out.duplicate),
        (0, rows, false)
    );
    assert_eq!(out.periods.len(), 28);
    assert_eq!(out.sha256.len(), 64);
    assert_eq!(
        count_rows(&f.store, "reoffending_cohort", None, "").await,
        rows
    );
    assert_eq!(
        count_rows(
            &f.store,
            "reoffending_cohort",
            None,
            "WHERE pfa_code = 'E23000032'"
        )
        .await,
        batches[1].num_rows(),
        "forces come in reference order: Essex, then Kent"
    );
    let versions = f
        .store
        .versions("reoffending_cohort")
        .await
        .expect("versions");
    assert_eq!(versions.len(), 1);
    let v = &versions[0];
    assert_eq!(
        (v.version, v.partner.as_deref(), v.mode.as_deref(), v.rows),
        (0, Some("probation"), Some("append"), Some(rows as u64))
    );
    assert_eq!(v.sha256.as_deref(), Some(out.sha256.as_str()));
    assert_eq!(v.agreements, vec!["test-agreement".to_owned()]);
    assert!(v.committed_at.is_some());
}
}

on_both! {
    async fn the_same_bytes_again_are_a_duplicate_and_add_no_version(f) {
    let bytes = parquet_bytes(&synth("force_performance", &["kent"]));
    let first = upload(
        &f.store,
        "force_performance",
        Mode::Append,
        "force-kent",
        kent(),
        bytes.clone(),
    )
    .await
    .expect("first");
    let again = upload(
        &f.store,
        "force_performance",
        Mode::Append,
        "force-kent",
        kent(),
        bytes,
    )
    .await
    .expect("again");
    assert!(again.duplicate);
    assert_eq!(again.version, first.version);
    assert_eq!(
        f.store
            .latest_version("force_performance")
            .await
            .expect("v"),
        Some(0)
    );
    assert_eq!(
        count_rows(&f.store, "force_performance", None, "").await,
        first.rows as usize
    );
}
}

on_both! {
    async fn a_replacement_of_every_period_a_file_holds_adds_the_workers_files_and_removes_those(f) {
    let kent_rows = kent_and_essex_appended(&f).await;
    let before_files = f.data_files("force_performance").await;
    let essex_before = count_rows(&f.store, "force_performance", None, "WHERE pfa_code = 'E23000028'").await;
    let kent_before = count_rows(&f.store, "force_performance", None, "WHERE pfa_code = 'E23000032'").await;
    // Kent resubmits every period it holds, one row fewer: each of Kent's files is wholly
    // inside the replacement, so no file is rewritten.
    let (out, _) = kent_replaces(&f, &kent_rows[0], |_, r| r != 3).await;
    assert_eq!(out.version, 2);
    assert_eq!(
        count_rows(&f.store, "force_performance", None, "WHERE pfa_code = 'E23000032'").await,
        kent_before - 1
    );
    assert_eq!(
        count_rows(&f.store, "force_performance", None, "WHERE pfa_code = 'E23000028'").await,
        essex_before,
        "Essex untouched"
    );
    assert_eq!(
        count_rows(&f.store, "force_performance", Some(1), "WHERE pfa_code = 'E23000032'").await,
        kent_before,
        "version 1 still reads Kent's old rows"
    );
    let new_files: Vec<String> = f
        .data_files("force_performance")
        .await
        .into_iter()
        .filter(|n| !before_files.contains(n))
        .collect();
    assert!(!new_files.is_empty());
    assert!(
        new_files.iter().all(|n| n.starts_with("u-")),
        "only the worker's files are added, nothing rewritten: {new_files:?}"
    );
}
}

on_both! {
    async fn replace_periods_replaces_exactly_the_file_periods_within_scope_and_time_travel_keeps_the_past(f) {
    let kent_rows = kent_and_essex_appended(&f).await;
    let before = count_rows(&f.store, "force_performance", None, "").await;
    // Kent resubmits 2024Q1 only, with one indicator fewer.
    let (out, sent) = kent_replaces(&f, &kent_rows[0], |quarter, r| {
        quarter == "2024Q1" && r % 12 != 0
    })
    .await;
    assert_eq!(sent, 11);
    assert_eq!(
        (out.version, out.periods.clone()),
        (2, vec!["2024Q1".to_owned()])
    );
    assert_eq!(
        count_rows(&f.store, "force_performance", None, "").await,
        before - 1
    );
    assert_eq!(
        count_rows(
            &f.store,
            "force_performance",
            None,
            "WHERE pfa_code = 'E23000032' AND quarter = '2024Q1'"
        )
        .await,
        11
    );
    assert_eq!(
        count_rows(
            &f.store,
            "force_performance",
            None,
            "WHERE pfa_code = 'E23000028' AND quarter = '2024Q1'"
        )
        .await,
        12,
        "Essex's 2024Q1 is untouched"
    );
    assert_eq!(
        count_rows(
            &f.store,
            "force_performance",
            None,
            "WHERE pfa_code = 'E23000032' AND quarter = '2023Q4'"
        )
        .await,
        12,
        "other periods untouched"
    );
    assert_eq!(
        count_rows(&f.store, "force_performance", Some(1), "").await,
        before,
        "version 1 is still readable"
    );
    assert_eq!(
        count_rows(&f.store, "force_performance", Some(0), "").await,
        kent_rows[0].num_rows()
    );
    let versions = f
        .store
        .versions("force_performance")
        .await
        .expect("versions");
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![2, 1, 0]
    );
    assert_eq!(versions[0].mode.as_deref(), Some("replace_periods"));
    assert!(matches!(
        f.store.table("force_performance", Some(9)).await,
        Err(StoreError::NotFound(_))
    ));
}
}

on_both! {
    async fn concurrent_uploads_to_one_dataset_all_commit(f) {
    let forces = ["kent", "essex", "surrey", "sussex", "hampshire", "dorset"];
    let store = &f.store;
    let uploads = forces.iter().map(|force| async move {
        let batches = synth("force_performance", &[force]);
        let rows = batches[0].num_rows();
        (
            rows,
            upload(
                store,
                "force_performance",
                Mode::Append,
                force,
                ScopeFilter::All,
                parquet_bytes(&batches),
            )
            .await,
        )
    });
    let results = futures::future::join_all(uploads).await;
    let mut versions: Vec<u64> = Vec::new();
    let mut expected = 0;
    for (rows, r) in results {
        let out = r.expect("every upload commits");
        versions.push(out.version);
        expected += rows;
    }
    versions.sort_unstable();
    assert_eq!(
        versions,
        (0..forces.len() as u64).collect::<Vec<_>>(),
        "one version each, none lost"
    );
    assert_eq!(
        count_rows(&f.store, "force_performance", None, "").await,
        expected
    );
}
}

on_both! {
    async fn a_second_store_on_the_same_directory_sees_commits_and_conflicts_are_retried_or_reported(f) {
    let other = f.replica();
    let a = upload(
        &f.store,
        "force_performance",
        Mode::Append,
        "a",
        ScopeFilter::All,
        parquet_bytes(&synth("force_performance", &["kent"])),
    );
    let b = upload(
        &other,
        "force_performance",
        Mode::Append,
        "b",
        ScopeFilter::All,
        parquet_bytes(&synth("force_performance", &["essex"])),
    );
    let (a, b) = tokio::join!(a, b);
    for r in [&a, &b] {
        assert!(
            matches!(r, Ok(_) | Err(StoreError::Conflict { .. })),
            "{r:?}"
        );
    }
    let committed = [&a, &b].iter().filter(|r| r.is_ok()).count();
    assert!(committed >= 1);
    assert_eq!(
        f.store
            .latest_version("force_performance")
            .await
            .expect("v"),
        Some(committed as u64 - 1)
    );
}
}

on_both! {
    async fn retention_removes_old_versions_and_keeps_the_latest(f) {
    let kent_rows = synth("force_performance", &["kent"]);
    upload(
        &f.store,
        "force_performance",
        Mode::Append,
        "force-kent",
        kent(),
        parquet_bytes(&kent_rows),
    )
    .await
    .expect("v0");
    upload(
        &f.store,
        "force_performance",
        Mode::ReplacePeriods,
        "force-kent",
        kent(),
        parquet_bytes(&synth_other_seed()),
    )
    .await
    .expect("v1");
    assert_eq!(
        count_rows(&f.store, "force_performance", Some(0), "").await,
        336,
        "before retention, v0 is readable"
    );
    let week = std::time::Duration::from_secs(7 * 86_400);
    assert_eq!(
        f.store
            .vacuum("force_performance", week, false)
            .await
            .expect("vacuum"),
        0,
        "nothing is older than a week"
    );
    assert_eq!(
        f.store
            .vacuum("force_performance", std::time::Duration::ZERO, true)
            .await
            .expect("dry run"),
        1
    );
    assert_eq!(
        count_rows(&f.store, "force_performance", Some(0), "").await,
        336,
        "a dry run removes nothing"
    );
    assert_eq!(
        f.store
            .vacuum("force_performance", std::time::Duration::ZERO, false)
            .await
            .expect("vacuum"),
        1
    );
    assert_eq!(
        count_rows(&f.store, "force_performance", None, "").await,
        336,
        "the latest version is intact"
    );
    let table = f
        .store
        .table("force_performance", Some(0))
        .await
        .expect("the log still names v0");
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_table("t", table.table_provider().await.expect("provider"))
        .expect("register");
    let read = async { ctx.sql("SELECT sum(value) FROM t").await?.collect().await };
    assert!(read.await.is_err(), "v0's data files are gone");
}
}

fn synth_other_seed() -> Vec<arrow::array::RecordBatch> {
    concordat_synth::Synth::new(0.01, 99)
        .only(&["kent"])
        .batches("force_performance")
}

on_both! {
    async fn compaction_merges_small_files_sorted_by_force_area_without_changing_a_row(f) {
    // One upload of three force areas (stored as one file per force area), then one more
    // upload each for two of them: five small files, two areas with two each.
    let seeded = |seed: u64, forces: &[&str]| {
        parquet_bytes(&concordat_synth::Synth::new(0.01, seed).only(forces).batches("force_performance"))
    };
    let uploads = [
        (1, vec!["kent", "essex", "surrey"]),
        (2, vec!["kent"]),
        (3, vec!["essex"]),
    ];
    let mut total = 0;
    for (seed, forces) in &uploads {
        let out = upload(
            &f.store,
            "force_performance",
            Mode::Append,
            "force-uploader",
            ScopeFilter::All,
            seeded(*seed, forces),
        )
        .await
        .expect("upload");
        total += out.rows as usize;
    }
    let forces_of = |t: &deltalake::DeltaTable| -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = t
            .snapshot()
            .expect("snapshot")
            .log_data()
            .iter()
            .map(|file| {
                let stats: serde_json::Value =
                    serde_json::from_str(&file.stats().expect("stats")).expect("json");
                (
                    stats["minValues"]["pfa_code"].as_str().expect("min").to_owned(),
                    stats["maxValues"]["pfa_code"].as_str().expect("max").to_owned(),
                )
            })
            .collect();
        out.sort();
        out
    };
    let before = f.store.table("force_performance", None).await.expect("table");
    let before_files = forces_of(&before);
    assert_eq!(before_files.len(), 5);
    assert!(before_files.iter().all(|(lo, hi)| lo == hi), "one force per file: {before_files:?}");
    let kent = "WHERE pfa_code = 'E23000032'";
    let kent_rows = count_rows(&f.store, "force_performance", None, kent).await;
    assert_eq!(
        f.store
            .compact("force_performance", 6)
            .await
            .expect("compact"),
        None,
        "under the threshold nothing happens"
    );
    let (version, removed) = f
        .store
        .compact("force_performance", 5)
        .await
        .expect("compact")
        .expect("compacted");
    // Each force area holds under 1 MiB: the five files become one, sorted by force
    // area.
    assert_eq!((version, removed), (3, 5));
    let after = f
        .store
        .table("force_performance", None)
        .await
        .expect("table");
    let after_files = forces_of(&after);
    assert_eq!(after_files.len(), 1, "{after_files:?}");
    let path = after
        .snapshot()
        .expect("snapshot")
        .log_data()
        .iter()
        .next()
        .expect("file")
        .object_store_path();
    let bytes = object_store::ObjectStoreExt::get(&after.log_store().object_store(None), &path)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("bytes");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .expect("reader")
        .build()
        .expect("build");
    let mut areas: Vec<String> = Vec::new();
    for b in reader {
        let b = b.expect("batch");
        let c = arrow::compute::cast(
            b.column_by_name("pfa_code").expect("pfa_code"),
            &arrow::datatypes::DataType::Utf8,
        )
        .expect("text");
        areas.extend(
            arrow::array::AsArray::as_string::<i32>(&c)
                .iter()
                .map(|v| v.expect("code").to_owned()),
        );
    }
    assert!(areas.windows(2).all(|w| w[0] <= w[1]), "rows sorted by force area");
    areas.dedup();
    assert_eq!(areas.len(), 3);
    assert_eq!(count_rows(&f.store, "force_performance", None, "").await, total);
    assert_eq!(count_rows(&f.store, "force_performance", None, kent).await, kent_rows);
    assert_eq!(
        f.store.compact("force_performance", 1).await.expect("compact"),
        None,
        "nothing left to merge"
    );
    // The uploads' provenance is still there, and the compaction is its own version.
    let versions = f
        .store
        .versions("force_performance")
        .await
        .expect("versions");
    assert_eq!(versions.len(), 4);
    assert_eq!(versions[0].operation.as_deref(), Some("OPTIMIZE"));
    assert_eq!(versions[1].partner.as_deref(), Some("force-uploader"));
}
}

on_both! {
    async fn stored_files_are_our_own_writing_and_refusals_leave_nothing_on_disk(f) {
    // The upload carries metadata of its own and a page index; none of it is stored.
    let batches = synth("force_resources", &["kent"]);
    let schema = batches[0].schema();
    let mut meta = std::collections::HashMap::new();
    meta.insert("evil".to_owned(), "x".repeat(1000));
    let tagged = std::sync::Arc::new(schema.as_ref().clone().with_metadata(meta));
    let mut bytes = Vec::new();
    {
        let props = parquet::file::properties::WriterProperties::builder()
            .set_statistics_enabled(parquet::file::properties::EnabledStatistics::Page)
            .set_key_value_metadata(Some(vec![parquet::file::metadata::KeyValue::new(
                "upload".to_owned(),
                Some("carried".to_owned()),
            )]))
            .build();
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut bytes, tagged.clone(), Some(props))
            .expect("writer");
        for b in &batches {
            w.write(&b.clone().with_schema(tagged.clone()).expect("schema"))
                .expect("write");
        }
        w.close().expect("close");
    }
    let out = upload(
        &f.store,
        "force_resources",
        Mode::Append,
        "force-kent",
        kent(),
        bytes,
    )
    .await
    .expect("commit");
    let files = f.data_files("force_resources").await;
    assert!(!files.is_empty());
    let mut rows = 0;
    for name in &files {
        let file = f.read_data_file("force_resources", name).await;
        let reader =
            parquet::file::serialized_reader::SerializedFileReader::new(file).expect("reader");
        let md = parquet::file::reader::FileReader::metadata(&reader);
        assert_eq!(md.file_metadata().created_by(), Some("concordat"));
        let kv = md.file_metadata().key_value_metadata();
        assert!(
            kv.is_none_or(|kv| kv.iter().all(
                |k| k.key != "upload" && k.value.as_deref().is_none_or(|v| !v.contains("xxxx"))
            )),
            "{kv:?}"
        );
        assert!(md.column_index().is_none(), "no page statistics are stored");
        rows += md.file_metadata().num_rows();
    }
    assert_eq!(rows as u64, out.rows);
    assert_eq!(f.staging_entries(), 0, "nothing is left in staging");

    // A refused upload leaves no data file anywhere.
    let mut bad = synth("force_resources", &["essex"]);
    bad.truncate(1);
    let before = f.data_files("force_resources").await;
    let refused = upload(
        &f.store,
        "force_resources",
        Mode::Append,
        "force-kent",
        kent(),
        parquet_bytes(&bad),
    )
    .await;
    assert!(matches!(refused, Err(StoreError::Validation(_))));
    assert_eq!(f.data_files("force_resources").await, before);
    assert_eq!(f.staging_entries(), 0);
}
}

on_both! {
    async fn data_files_of_uploads_that_never_committed_are_swept_at_start(f) {
    upload(
        &f.store,
        "force_resources",
        Mode::Append,
        "force-kent",
        kent(),
        parquet_bytes(&synth("force_resources", &["kent"])),
    )
    .await
    .expect("commit");
    let committed = f.data_files("force_resources").await;
    // A crash between moving an upload's files into the table and committing them.
    let copy = f.read_data_file("force_resources", &committed[0]).await;
    f.put_data_file("force_resources", "u-deadbeef-00000.parquet", copy).await;
    // Files of other origins are not touched.
    f.put_data_file("force_resources", "part-00000-other.parquet", bytes::Bytes::from_static(b"x"))
        .await;
    // On a shared store, a file this young may belong to another replica's upload in
    // flight: it is left alone.
    if f.shared.is_some() {
        f.store.discard_staged().expect("sweep");
        assert!(f.data_files("force_resources").await.contains(&"u-deadbeef-00000.parquet".to_owned()));
    }
    // Once old enough (here: at once), it is swept.
    let started = f.replica_with(|cfg| cfg.orphan_age = std::time::Duration::ZERO);
    started.discard_staged().expect("sweep");
    let after = f.data_files("force_resources").await;
    let mut want = committed.clone();
    want.push("part-00000-other.parquet".to_owned());
    want.sort();
    assert_eq!(after, want);
    assert_eq!(
        count_rows(&f.store, "force_resources", None, "").await,
        synth("force_resources", &["kent"])
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>()
    );
}
}

#[tokio::test]
async fn background_work_leases_are_held_by_one_replica_at_a_time_and_expire_with_their_holder() {
    let f = fixture_on(Backend::S3, |_| {});
    let (a, b) = (&f.store, f.replica());
    let ttl = std::time::Duration::from_secs(30);
    let held = a
        .lease("rebuild", ttl)
        .await
        .expect("lease")
        .expect("taken");
    assert!(
        b.lease("rebuild", ttl).await.expect("lease").is_none(),
        "two holders"
    );
    // Renewal keeps it held past its first term.
    let short = std::time::Duration::from_millis(600);
    let renewed = a
        .lease("compact", short)
        .await
        .expect("lease")
        .expect("taken");
    tokio::time::sleep(short * 2).await;
    assert!(
        b.lease("compact", short).await.expect("lease").is_none(),
        "renewal failed"
    );
    drop(renewed);
    // Given up when dropped: the other replica takes it.
    drop(held);
    let start = std::time::Instant::now();
    while b.lease("rebuild", ttl).await.expect("lease").is_none() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "never given up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // A holder that dies (its runtime gone: no renewal, no release) loses it at expiry.
    let dying = f.replica();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let lease = rt
            .block_on(dying.lease("vacuum", short))
            .expect("lease")
            .expect("taken");
        std::mem::forget(lease);
    })
    .join()
    .expect("holder");
    assert!(b.lease("vacuum", short).await.expect("lease").is_none());
    tokio::time::sleep(short * 2).await;
    assert!(
        b.lease("vacuum", short).await.expect("lease").is_some(),
        "never expired"
    );
}

#[tokio::test]
async fn a_commit_by_another_process_on_the_same_directory_is_read_at_once() {
    // The first store keeps its snapshot while the log directory is unchanged; a commit
    // through the second, straight after a read through the first (often within the
    // same clock tick of file times), must be seen by the very next read.
    let f = fixture();
    let other = f.replica();
    let forces = ["kent", "essex", "surrey", "sussex", "hampshire", "dorset"];
    for (i, force) in forces.iter().enumerate() {
        if i > 0 {
            assert_eq!(
                f.store
                    .latest_version("force_performance")
                    .await
                    .expect("v"),
                Some(i as u64 - 1)
            );
        }
        upload(
            &other,
            "force_performance",
            Mode::Append,
            force,
            ScopeFilter::All,
            parquet_bytes(&synth("force_performance", &[force])),
        )
        .await
        .expect("commit");
        assert_eq!(
            f.store
                .latest_version("force_performance")
                .await
                .expect("v"),
            Some(i as u64),
            "a commit by another process was not seen"
        );
    }
}

/// Kent's and Essex's force performance appended (versions 0 and 1); Kent's rows.
async fn kent_and_essex_appended(f: &Fixture) -> Vec<arrow::array::RecordBatch> {
    let kent_rows = synth("force_performance", &["kent"]);
    let essex_rows = synth("force_performance", &["essex"]);
    upload(
        &f.store,
        "force_performance",
        Mode::Append,
        "force-kent",
        kent(),
        parquet_bytes(&kent_rows),
    )
    .await
    .expect("kent");
    let essex = ScopeFilter::Forces(["E23000028".to_owned()].into());
    upload(
        &f.store,
        "force_performance",
        Mode::Append,
        "force-essex",
        essex,
        parquet_bytes(&essex_rows),
    )
    .await
    .expect("essex");
    kent_rows
}

/// Kent replaces the periods of the rows of `b` it keeps (by quarter and row); the
/// outcome and the rows sent.
async fn kent_replaces(
    f: &Fixture,
    b: &arrow::array::RecordBatch,
    keep: impl Fn(&str, usize) -> bool,
) -> (concordat_store::UploadOutcome, usize) {
    let quarter = arrow::array::AsArray::as_string::<i32>(b.column(1));
    let kept: arrow::array::BooleanArray = (0..b.num_rows())
        .map(|r| Some(keep(quarter.value(r), r)))
        .collect();
    let rows = arrow::compute::filter_record_batch(b, &kept).expect("filter");
    let sent = rows.num_rows();
    let out = upload(
        &f.store,
        "force_performance",
        Mode::ReplacePeriods,
        "force-kent",
        kent(),
        parquet_bytes(&[rows]),
    )
    .await
    .expect("replace");
    (out, sent)
}
