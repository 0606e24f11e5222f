//! Uploads over HTTP: status codes, duplicates, scope, limits, crashes, concurrency.

use std::io::Write;
use std::time::Duration;

use concordat_e2e::*;

use super::fixtures::parquet;

fn versions(server: &Server, token: &str, dataset: &str) -> Vec<u64> {
    let (status, body) = get(server, token, &format!("/v1/datasets/{dataset}"));
    assert_eq!(status, 200, "{body}");
    body["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter_map(|v| v["version"].as_u64())
        .collect()
}

#[test]
fn upload_status_codes_follow_the_contract() {
    let site = Site::new();
    let server = site.serve();
    let kent = site.token("force-kent", "uploader,analyst");
    let kent_file = parquet("force_performance", &["kent"], 0.01);
    let (status, body) = upload(
        &server,
        &kent,
        "force_performance",
        "append",
        kent_file.clone(),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["dataset"], "force_performance");
    assert_eq!(body["version"], 0);
    assert_eq!(body["rows"], 336);
    assert_eq!(body["periods"].as_array().map(Vec::len), Some(28));
    assert_eq!(body["sha256"].as_str().map(str::len), Some(64));
    let (status, again) = upload(
        &server,
        &kent,
        "force_performance",
        "append",
        kent_file.clone(),
    );
    assert_eq!(
        (
            status,
            again["duplicate"].as_bool(),
            again["version"].as_u64()
        ),
        (200, Some(true), Some(0)),
        "{again}"
    );

    let (status, body) = upload(
        &server,
        &kent,
        "force_performance",
        "append",
        parquet("force_performance", &["essex"], 0.01),
    );
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "validation_failed");
    let first = &body["error"]["details"]["violations"][0];
    assert_eq!(
        (
            first["row"].as_u64(),
            first["column"].as_str(),
            first["rule"].as_str()
        ),
        (Some(1), Some("pfa_code"), Some("row_scope"))
    );
    assert_eq!(body["error"]["details"]["violation_count"], 336);
    // The violations at a glance: one line per (column, rule), with the count and the
    // first rows.
    let summary = body["error"]["details"]["summary"]
        .as_array()
        .expect("summary");
    assert_eq!(summary.len(), 1, "{body}");
    assert_eq!(summary[0]["column"], "pfa_code");
    assert_eq!(summary[0]["rule"], "row_scope");
    assert_eq!(summary[0]["count"], 336);
    assert_eq!(summary[0]["rows"][0], 1);
    // A dataset name that is not UTF-8 gets the JSON error, like any bad request.
    for name in ["%FF%FE", "%C3%28"] {
        let (status, body) = upload(&server, &kent, name, "append", kent_file.clone());
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("bad_request")),
            "{name}: {body}"
        );
        let (status, body) = get(&server, &kent, &format!("/v1/datasets/{name}"));
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("bad_request")),
            "{name}: {body}"
        );
    }
    assert_eq!(
        versions(&server, &kent, "force_performance"),
        vec![0],
        "nothing committed"
    );

    // (what, token, dataset, mode, body, expected status)
    type Case<'a> = (&'a str, String, &'a str, &'a str, Vec<u8>, u16);
    let cases: Vec<Case> = vec![
        (
            "analyst without uploader role",
            site.token("force-kent", "analyst"),
            "force_performance",
            "append",
            kent_file.clone(),
            403,
        ),
        (
            "PCC may read but not upload",
            site.token("pcc-kent", "uploader"),
            "force_performance",
            "append",
            kent_file.clone(),
            403,
        ),
        (
            "HMICFRS cannot see reoffending",
            site.token("hmicfrs", "uploader"),
            "reoffending_cohort",
            "append",
            kent_file.clone(),
            404,
        ),
        (
            "unknown dataset",
            kent.clone(),
            "no_such_dataset",
            "append",
            kent_file.clone(),
            404,
        ),
        (
            "bad mode",
            kent.clone(),
            "force_performance",
            "overwrite",
            kent_file.clone(),
            400,
        ),
        (
            "not parquet",
            kent.clone(),
            "force_performance",
            "append",
            b"pfa_code,quarter\n".to_vec(),
            422,
        ),
    ];
    for (what, token, dataset, mode, bytes, want) in cases {
        let (status, body) = upload(&server, &token, dataset, mode, bytes);
        assert_eq!(status, want, "{what}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {body}"
        );
    }
    let (status, body) = upload(
        &server,
        &site.token("pcc-kent", "uploader"),
        "force_performance",
        "append",
        kent_file.clone(),
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("pcc-kent") && m.contains("force_performance")),
        "{status} {body}"
    );
    let (status, body) = json(
        client()
            .post(format!(
                "{}/v1/datasets/force_performance/uploads",
                server.url
            ))
            .bearer_auth(&kent)
            .header("content-type", "text/csv")
            .body(kent_file)
            .send()
            .expect("send"),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );

    let (_, own) = get(&server, &kent, "/v1/datasets/force_performance");
    assert_eq!(own["versions"][0]["partner"], "force-kent");
    assert_eq!(own["versions"][0]["subject"], "dev@force-kent");
    assert_eq!(own["versions"][0]["mode"], "append");
    let (_, theirs) = get(
        &server,
        &site.token("hmicfrs", "inspector"),
        "/v1/datasets/force_performance",
    );
    assert!(
        theirs["versions"][0]["subject"].is_null(),
        "another partner's staff are not named: {theirs}"
    );
}

#[test]
fn uploads_over_the_size_limit_get_413_with_or_without_a_length() {
    let site = Site::new();
    let server = site.serve_with(&[("CONCORDAT_LIMITS__MAX_UPLOAD_BYTES", "2000")]);
    let kent = site.token("force-kent", "uploader");
    let file = parquet("force_performance", &["kent"], 0.01);
    assert!(file.len() > 2000);
    let (status, body) = upload(&server, &kent, "force_performance", "append", file.clone());
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("too_large")),
        "{body}"
    );
    let chunked = reqwest::blocking::Body::new(std::io::Cursor::new(file));
    let (status, _) = json(
        client()
            .post(format!(
                "{}/v1/datasets/force_performance/uploads",
                server.url
            ))
            .bearer_auth(&kent)
            .header("content-type", "application/vnd.apache.parquet")
            .body(chunked)
            .send()
            .expect("send"),
    );
    assert_eq!(status, 413);
    let staged = std::fs::read_dir(site.dir.path().join("data/staging"))
        .expect("staging")
        .count();
    assert_eq!(staged, 0, "nothing left staged");
}

#[test]
fn killing_the_server_during_an_upload_loses_nothing_committed() {
    let site = Site::new();
    let mut server = site.serve();
    let kent = site.token("force-kent", "uploader,analyst");
    let (status, _) = upload(
        &server,
        &kent,
        "force_performance",
        "append",
        parquet("force_performance", &["kent"], 0.01),
    );
    assert_eq!(status, 201);
    let essex = site.token("force-essex", "uploader");
    let big = parquet("force_performance", &["essex"], 0.01);
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut tcp = std::net::TcpStream::connect(&addr).expect("connect");
    write!(
        tcp,
        "POST /v1/datasets/force_performance/uploads HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {essex}\r\nContent-Type: application/vnd.apache.parquet\r\nContent-Length: {}\r\n\r\n",
        big.len()
    )
    .expect("headers");
    tcp.write_all(&big[..big.len() / 2]).expect("half the body");
    tcp.flush().expect("flush");
    let staging = site.dir.path().join("data/staging");
    let mut staged = 0;
    for _ in 0..100 {
        staged = std::fs::read_dir(&staging)
            .expect("staging")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("upload-"))
            .count();
        if staged > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(staged, 1, "the upload is in flight when the server dies");
    server.kill();
    drop(tcp);
    let server = site.serve();
    assert_eq!(
        versions(&server, &kent, "force_performance"),
        vec![0],
        "the committed version is intact"
    );
    assert_eq!(
        std::fs::read_dir(&staging).expect("staging").count(),
        0,
        "the half upload was discarded at start"
    );
    let (status, body) = upload(&server, &essex, "force_performance", "append", big);
    assert_eq!((status, body["version"].as_u64()), (201, Some(1)), "{body}");
}

#[test]
fn a_crash_in_the_middle_of_a_commit_leaves_the_last_version_intact_and_readable() {
    let site = Site::new();
    let kent = site.token("force-kent", "uploader,analyst");
    {
        let server = site.serve();
        let (status, _) = upload(
            &server,
            &kent,
            "force_performance",
            "append",
            parquet("force_performance", &["kent"], 0.01),
        );
        assert_eq!(status, 201);
    }
    let essex = site.token("force-essex", "uploader");
    let essex_file = parquet("force_performance", &["essex"], 0.01);
    let mut crashing = site.serve_with(&[("CONCORDAT_FAULT", "abort_in_commit")]);
    let result = client()
        .post(format!(
            "{}/v1/datasets/force_performance/uploads",
            crashing.url
        ))
        .bearer_auth(&essex)
        .header("content-type", "application/vnd.apache.parquet")
        .body(essex_file.clone())
        .send();
    assert!(result.is_err(), "the server died before answering");
    let exit = crashing
        .wait_exit(Duration::from_secs(10))
        .expect("the server aborted");
    assert!(!exit.success());
    let log = site
        .dir
        .path()
        .join("data/tables/force_performance/_delta_log");
    let commits: Vec<String> = std::fs::read_dir(&log)
        .expect("log")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json") && !n.starts_with('_') && !n.starts_with('.'))
        .collect();
    assert_eq!(
        commits,
        vec!["00000000000000000000.json".to_owned()],
        "no half-written version is visible"
    );
    let data_files = std::fs::read_dir(site.dir.path().join("data/tables/force_performance"))
        .expect("table")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
        .count();
    assert!(
        data_files >= 2,
        "the crash came after the data files were written, before the log entry"
    );
    let server = site.serve();
    assert_eq!(versions(&server, &kent, "force_performance"), vec![0]);
    let (_, listing) = get(&server, &kent, "/v1/datasets");
    let perf = listing["datasets"]
        .as_array()
        .expect("list")
        .iter()
        .find(|d| d["name"] == "force_performance")
        .cloned()
        .expect("listed");
    assert_eq!(perf["latest_version"], 0);
    let (status, body) = upload(&server, &essex, "force_performance", "append", essex_file);
    assert_eq!(
        (status, body["version"].as_u64()),
        (201, Some(1)),
        "a retry commits: {body}"
    );
    assert_eq!(versions(&server, &kent, "force_performance"), vec![1, 0]);
}

#[test]
fn concurrent_uploads_over_http_all_commit_with_distinct_versions() {
    let site = Site::new();
    let server = site.serve();
    let forces = [
        "kent",
        "essex",
        "surrey",
        "sussex",
        "hampshire",
        "dorset",
        "wiltshire",
        "gwent",
    ];
    let jobs: Vec<_> = forces
        .iter()
        .map(|f| {
            (
                site.token(&format!("force-{f}"), "uploader"),
                parquet("force_resources", &[f], 0.01),
            )
        })
        .collect();
    let server_ref = &server;
    let mut versions_seen: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|(token, bytes)| {
                s.spawn(move || upload(server_ref, &token, "force_resources", "append", bytes))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let (status, body) = h.join().expect("thread");
                assert_eq!(status, 201, "{body}");
                body["version"].as_u64().expect("version")
            })
            .collect()
    });
    versions_seen.sort_unstable();
    assert_eq!(versions_seen, (0..forces.len() as u64).collect::<Vec<_>>());
    let hmicfrs = site.token("hmicfrs", "inspector");
    let (_, ds) = get(&server, &hmicfrs, "/v1/datasets/force_resources");
    let rows: u64 = ds["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter_map(|v| v["rows"].as_u64())
        .sum();
    assert_eq!(
        rows,
        7 * forces.len() as u64,
        "every force's seven years are there"
    );
}

/// One row group with one page per column: decoding must hold a whole ~38 MB page.
fn one_huge_page() -> Vec<u8> {
    use parquet::file::properties::WriterProperties;
    let batches = concordat_synth::Synth::new(0.6, 3).batches("reoffending_cohort");
    let props = WriterProperties::builder()
        .set_dictionary_enabled(false)
        .set_compression(parquet::basic::Compression::UNCOMPRESSED)
        .set_data_page_size_limit(usize::MAX)
        .set_data_page_row_count_limit(usize::MAX)
        .set_max_row_group_row_count(Some(usize::MAX))
        .build();
    let mut out = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, batches[0].schema(), Some(props))
        .expect("writer");
    for b in &batches {
        w.write(b).expect("write");
    }
    w.close().expect("close");
    out
}

#[test]
fn decoding_runs_in_a_memory_limited_worker_so_a_file_too_big_to_check_is_refused_and_the_server_lives()
 {
    let file = one_huge_page();
    let site = Site::new();
    let probation = site.token("probation", "uploader");
    {
        let server = site.serve();
        let (status, body) = upload(
            &server,
            &probation,
            "reoffending_cohort",
            "append",
            file.clone(),
        );
        assert_eq!(
            status, 201,
            "with the default limit the file is accepted: {body}"
        );
    }
    let tight = Site::new();
    let server = tight.serve_with(&[("CONCORDAT_LIMITS__VALIDATION_MEMORY_MB", "16")]);
    let (status, body) = upload(
        &server,
        &tight.token("probation", "uploader"),
        "reoffending_cohort",
        "append",
        file,
    );
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["error"]["details"]["violations"][0]["rule"], "limits",
        "{body}"
    );
    let (status, body) = upload(
        &server,
        &tight.token("force-kent", "uploader"),
        "force_performance",
        "append",
        parquet("force_performance", &["kent"], 0.01),
    );
    assert_eq!(
        status, 201,
        "the server still serves and still validates: {body}"
    );
    let (status, _) = get(
        &server,
        &tight.token("force-kent", "analyst"),
        "/v1/datasets/reoffending_cohort",
    );
    assert_eq!(status, 404, "force-kent cannot see reoffending data");
}

/// A valid file written with a page index, whose footer then points every column's page
/// index at `offset` with lengths of 2^31 - 1.
fn lying_page_index(good: &[arrow::array::RecordBatch], offset: Option<i64>) -> Vec<u8> {
    use parquet::file::metadata::{ParquetMetaDataReader, ParquetMetaDataWriter};
    let mut bytes = Vec::new();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_statistics_enabled(parquet::file::properties::EnabledStatistics::Page)
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut bytes, good[0].schema(), Some(props))
        .expect("writer");
    for b in good {
        w.write(b).expect("write");
    }
    w.close().expect("close");
    let md = ParquetMetaDataReader::new()
        .parse_and_finish(&bytes::Bytes::copy_from_slice(&bytes))
        .expect("footer");
    let at = offset.unwrap_or(bytes.len() as i64 + 1000);
    let groups = md
        .row_groups()
        .iter()
        .map(|rg| {
            let columns = rg
                .columns()
                .iter()
                .map(|c| {
                    c.clone()
                        .into_builder()
                        .set_offset_index_offset(Some(at))
                        .set_offset_index_length(Some(i32::MAX))
                        .set_column_index_offset(Some(at))
                        .set_column_index_length(Some(i32::MAX))
                        .build()
                        .expect("column")
                })
                .collect();
            rg.clone()
                .into_builder()
                .set_column_metadata(columns)
                .build()
                .expect("row group")
        })
        .collect();
    let lying = md.into_builder().set_row_groups(groups).build();
    let footer_len = u32::from_le_bytes(
        bytes[bytes.len() - 8..bytes.len() - 4]
            .try_into()
            .expect("4"),
    );
    let mut out = bytes[..bytes.len() - 8 - footer_len as usize].to_vec();
    ParquetMetaDataWriter::new(&mut out, &lying)
        .finish()
        .expect("footer");
    // The lie is in the footer as written.
    let check = ParquetMetaDataReader::new()
        .parse_and_finish(&bytes::Bytes::copy_from_slice(&out))
        .expect("lying footer");
    assert_eq!(
        check.row_groups()[0].columns()[0].offset_index_length(),
        Some(i32::MAX)
    );
    out
}

#[test]
fn hostile_page_indexes_never_reach_the_server_process() {
    let site = Site::new();
    let server = site.serve();
    let token = site.token("force-kent", "uploader");
    let pid = server.child.id();
    let synth = |scale| {
        concordat_synth::Synth::new(scale, 7)
            .only(&["kent"])
            .batches("force_resources")
    };
    // Warm up with as many ordinary uploads as hostile ones follow (each wakes the
    // efficiency rebuild and may compact), so that what follows measures hostile input.
    for scale in [0.01, 0.02, 0.03, 0.04, 0.05, 0.06] {
        let (status, body) = upload(
            &server,
            &token,
            "force_resources",
            "append",
            parquet("force_resources", &["kent"], scale),
        );
        assert!(status == 201 || status == 200, "{body}");
    }
    std::thread::sleep(Duration::from_millis(500));
    let (peak_before, _) = memory_kib(pid);
    for (i, offset) in [None, Some(4), None, Some(4), None, Some(4)]
        .into_iter()
        .enumerate()
    {
        let (status, body) = upload(
            &server,
            &token,
            "force_resources",
            "append",
            lying_page_index(&synth(0.01 * (i + 1) as f64), offset),
        );
        // The page index is never read: the rows are decoded, checked and written again
        // by our own writer, or the file is refused. Never a 500.
        assert!(
            status == 201 || status == 200 || status == 422,
            "{i}: {status} {body}"
        );
    }
    let (peak_after, rss_after) = memory_kib(pid);
    assert!(
        peak_after < peak_before + 50 * 1024,
        "server peak grew from {peak_before} KiB to {peak_after} KiB (now {rss_after} KiB)"
    );
    let (status, _) = get(&server, &site.token("force-kent", "analyst"), "/v1/me");
    assert_eq!(status, 200);
}
