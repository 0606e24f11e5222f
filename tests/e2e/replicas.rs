//! Two replicas on one S3-compatible store (moto's server on loopback): uploads through
//! both commit without a lost update, both answer over the latest versions with the same
//! disclosure control, one audit chain holds both replicas' events, a token made on one
//! works (and its revocation holds) on the other, and a replica killed mid-upload loses
//! nothing acknowledged while the other keeps serving.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use concordat_e2e::{S3, Server, Site, binary, client, get, json, upload};

use super::fixtures::{ask, parquet};

const FORCES: [&str; 8] = [
    "kent",
    "essex",
    "surrey",
    "sussex",
    "cumbria",
    "lancashire",
    "merseyside",
    "cheshire",
];

/// Two sites (their own scratch directories) on one store prefix.
fn replicas(s3: &S3, prefix: &str) -> (Site, Site) {
    let a = Site::new();
    a.use_store(s3, prefix);
    let b = Site::replica_of(&a);
    (a, b)
}

/// Versions of a dataset as one replica lists them, newest first.
fn versions(server: &Server, token: &str, dataset: &str) -> Vec<u64> {
    let (status, body) = get(server, token, &format!("/v1/datasets/{dataset}"));
    assert_eq!(status, 200, "{body}");
    body["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| v["version"].as_u64().expect("version"))
        .collect()
}

/// Uploads, retrying on 409 (another replica committed first), as a client would.
fn upload_retrying(server: &Server, token: &str, dataset: &str, bytes: Vec<u8>) -> u64 {
    for _ in 0..20 {
        let (status, body) = upload(server, token, dataset, "append", bytes.clone());
        match status {
            201 => return body["version"].as_u64().expect("version"),
            409 => std::thread::sleep(Duration::from_millis(50)),
            _ => panic!("upload answered {status}: {body}"),
        }
    }
    panic!("the upload never committed");
}

/// Every audit event an auditor can read through one replica, oldest first.
fn all_events(server: &Server, token: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut after = 0u64;
    loop {
        let (status, body) = get(
            server,
            token,
            &format!("/v1/audit?order=oldest&after={after}&limit=1000"),
        );
        assert_eq!(status, 200, "{body}");
        let events = body["events"].as_array().expect("events").clone();
        let full = events.len() == 1000;
        if let Some(last) = events.last() {
            after = last["seq"].as_u64().expect("seq");
        }
        out.extend(events);
        // Each reading is itself audited: a short page is the end.
        if !full {
            return out;
        }
    }
}

/// A body sent slowly (64 KiB every 20 ms), so a kill lands while it is on its way.
struct Slow(std::io::Cursor<Vec<u8>>);

impl std::io::Read for Slow {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::thread::sleep(Duration::from_millis(20));
        let n = buf.len().min(64 * 1024);
        self.0.read(&mut buf[..n])
    }
}

/// The events are numbered 1, 2, 3... without a gap or a repeat.
fn assert_gapless(events: &[serde_json::Value]) {
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "gaps in the chain"
    );
}

fn verify_cli(site: &Site) -> (bool, String) {
    let out = std::process::Command::new(binary())
        .args(["audit", "verify", "--config"])
        .arg(site.config())
        .output()
        .expect("audit verify");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn two_replicas_share_tables_disclosure_audit_and_tokens() {
    let s3 = S3::start();
    let (site_a, site_b) = replicas(&s3, "gateway");
    let a = site_a.serve();
    let b = site_b.serve();
    let hmicfrs = site_a.token("hmicfrs", "inspector");

    // Concurrent uploads through both replicas: every one commits, none is lost, and the
    // versions run without a gap or a duplicate.
    let committed: Vec<u64> = std::thread::scope(|scope| {
        let handles: Vec<_> = FORCES
            .iter()
            .enumerate()
            .map(|(i, force)| {
                let (server, site) = if i % 2 == 0 {
                    (&a, &site_a)
                } else {
                    (&b, &site_b)
                };
                let token = site.token(&format!("force-{force}"), "uploader");
                let bytes = parquet("force_performance", &[force], 0.01);
                scope.spawn(move || upload_retrying(server, &token, "force_performance", bytes))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("upload thread"))
            .collect()
    });
    let distinct: BTreeSet<u64> = committed.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        FORCES.len(),
        "two uploads got one version: {committed:?}"
    );
    for server in [&a, &b] {
        let listed = versions(server, &hmicfrs, "force_performance");
        let want: Vec<u64> = (0..FORCES.len() as u64).rev().collect();
        assert_eq!(listed, want, "versions with a gap or a duplicate");
    }
    // Both replicas answer over every upload within seconds (a replica looks for
    // commits made through others at most a second after it last looked).
    let sql =
        "SELECT pfa_code, count(*) AS n FROM force_performance GROUP BY pfa_code ORDER BY pfa_code";
    let start = Instant::now();
    loop {
        let (sa, answer_a) = ask(&a, &hmicfrs, "inspection", sql);
        let (sb, answer_b) = ask(&b, &hmicfrs, "inspection", sql);
        assert_eq!((sa, sb), (200, 200), "{answer_a} {answer_b}");
        if answer_a["row_count"] == FORCES.len() && answer_a["rows"] == answer_b["rows"] {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{answer_a} {answer_b}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A commit through one replica is answered by the other within seconds.
    let probation = site_b.token("probation", "uploader");
    let (status, body) = upload(
        &b,
        &probation,
        "reoffending_cohort",
        "append",
        parquet("reoffending_cohort", &["kent", "essex"], 0.02),
    );
    assert_eq!(status, 201, "{body}");
    let kent = site_a.token("pcc-kent", "analyst");
    let perturbed = "SELECT age_band, count(*) AS n FROM reoffending_cohort GROUP BY age_band ORDER BY age_band";
    let start = Instant::now();
    let from_a = loop {
        let (status, body) = ask(&a, &kent, "reducing-reoffending", perturbed);
        if status == 200 {
            break body;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{status} {body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // One disclosure state: the same perturbed figures from either replica (the record
    // key secret is shared), so asking both gains an attacker nothing.
    let (status, from_b) = ask(&b, &kent, "reducing-reoffending", perturbed);
    assert_eq!(status, 200, "{from_b}");
    assert_eq!(
        from_a["rows"], from_b["rows"],
        "replicas perturb differently"
    );

    // Background work once: the efficiency dataset is rebuilt over the latest inputs by
    // one replica at a time (a lease), never twice from the same inputs, and both
    // replicas serve the result.
    let start = Instant::now();
    loop {
        let (_, a_view) = get(&a, &hmicfrs, "/v1/datasets/force_efficiency");
        let (_, b_view) = get(&b, &hmicfrs, "/v1/datasets/force_efficiency");
        let newest = &a_view["versions"][0]["sources"];
        if newest["force_performance"] == 7
            && newest["reoffending_cohort"] == 0
            && a_view["versions"] == b_view["versions"]
        {
            let built: Vec<String> = a_view["versions"]
                .as_array()
                .expect("versions")
                .iter()
                .map(|v| v["sources"].to_string())
                .collect();
            let distinct: BTreeSet<&String> = built.iter().collect();
            assert_eq!(
                distinct.len(),
                built.len(),
                "rebuilt twice from the same inputs: {built:?}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "force_efficiency never caught up: {a_view}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // A token made on one replica works on the other; revoked there, it stops on both.
    let mint = json(
        client()
            .post(format!("{}/v1/tokens", a.url))
            .bearer_auth(&kent)
            .json(&serde_json::json!({"name": "power bi", "roles": ["analyst"], "purposes": ["performance-scrutiny"], "days": 7}))
            .send()
            .expect("mint"),
    );
    assert_eq!(mint.0, 201, "{}", mint.1);
    let pat = mint.1["token"].as_str().expect("token").to_owned();
    let id = mint.1["id"].as_str().expect("id").to_owned();
    assert_eq!(
        get(&b, &pat, "/v1/me").0,
        200,
        "a token made on A fails on B"
    );
    let revoked = client()
        .delete(format!("{}/v1/tokens/{id}", b.url))
        .bearer_auth(&kent)
        .send()
        .expect("revoke");
    assert_eq!(revoked.status().as_u16(), 200);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        get(&a, &pat, "/v1/me").0,
        401,
        "revoked on B, still works on A"
    );
    assert_eq!(get(&b, &pat, "/v1/me").0, 401);

    // One audit trail: every replica's events in one gapless chain, readable from
    // either, and verified whole by the CLI.
    let auditor = site_a.token("operator", "auditor");
    let events_a = all_events(&a, &auditor);
    let events_b = all_events(&b, &auditor);
    assert_gapless(&events_a);
    for (x, y) in events_a.iter().zip(&events_b) {
        assert_eq!(x["hash"], y["hash"], "the replicas read different chains");
    }
    assert!(
        events_b.len() > events_a.len(),
        "B does not see A's reading of the trail"
    );
    let uploads = events_a
        .iter()
        .filter(|e| e["action"] == "upload" && e["outcome"] == "ok")
        .count();
    assert_eq!(
        uploads,
        FORCES.len() + 1,
        "an acknowledged upload's event is missing"
    );
    let (ok, text) = verify_cli(&site_a);
    assert!(ok, "{text}");
    let (status, body) = get(&b, &auditor, "/v1/audit/verify");
    assert_eq!(
        (status, &body["verified"]),
        (200, &serde_json::json!(true)),
        "{body}"
    );
}

#[test]
fn a_replica_killed_mid_upload_loses_nothing_acknowledged_and_catches_up() {
    let s3 = S3::start();
    let (site_a, site_b) = replicas(&s3, "crash");
    let mut a = site_a.serve();
    let b = site_b.serve();
    let hmicfrs = site_a.token("hmicfrs", "inspector");
    let kent = site_a.token("force-kent", "uploader");
    let essex = site_b.token("force-essex", "uploader");
    let v0 = upload_retrying(
        &a,
        &kent,
        "force_performance",
        parquet("force_performance", &["kent"], 0.01),
    );
    assert_eq!(v0, 0);

    // A large upload through A, killed while it is on its way.
    let big = parquet("reoffending_cohort", &["kent", "essex", "surrey"], 0.5);
    let probation = site_a.token("probation", "uploader");
    let url = a.url.clone();
    let sender = std::thread::spawn(move || {
        client()
            .post(format!(
                "{url}/v1/datasets/reoffending_cohort/uploads?mode=append"
            ))
            .bearer_auth(probation)
            .header("content-type", "application/vnd.apache.parquet")
            .body(reqwest::blocking::Body::new(Slow(std::io::Cursor::new(
                big,
            ))))
            .send()
            .map(|r| r.status().as_u16())
    });
    std::thread::sleep(Duration::from_millis(400));
    a.kill();
    let sent = sender.join().expect("sender");
    // B serves on, and commits.
    let v1 = upload_retrying(
        &b,
        &essex,
        "force_performance",
        parquet("force_performance", &["essex"], 0.01),
    );
    assert_eq!(v1, 1);
    let (status, body) = ask(
        &b,
        &hmicfrs,
        "inspection",
        "SELECT count(DISTINCT pfa_code) AS n FROM force_performance",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0][0], 2);
    assert!(
        !sent.as_ref().is_ok_and(|s| *s == 201),
        "the upload finished before the kill"
    );
    // The killed upload either committed whole (and was acknowledged) or left nothing.
    let (_, cohort) = get(
        &b,
        &site_b.token("probation", "analyst"),
        "/v1/datasets/reoffending_cohort",
    );
    let cohort_versions = cohort["versions"].as_array().map_or(0, Vec::len);
    if sent.is_ok_and(|s| s == 201) {
        assert_eq!(cohort_versions, 1, "an acknowledged upload was lost");
    } else {
        assert!(cohort_versions <= 1);
    }

    // A restarted replica answers over the latest version at once.
    let a = site_a.serve();
    assert_eq!(versions(&a, &hmicfrs, "force_performance"), vec![1, 0]);
    let (status, body) = ask(
        &a,
        &hmicfrs,
        "inspection",
        "SELECT count(DISTINCT pfa_code) AS n FROM force_performance",
    );
    assert_eq!(
        (status, &body["rows"][0][0]),
        (200, &serde_json::json!(2)),
        "{body}"
    );
    // The chain is whole: every acknowledged upload is in it, and it verifies.
    let auditor = site_b.token("operator", "auditor");
    let events = all_events(&a, &auditor);
    assert_gapless(&events);
    let force_uploads = events
        .iter()
        .filter(|e| e["action"] == "upload" && e["outcome"] == "ok")
        .filter(|e| e["datasets"].to_string().contains("force_performance"))
        .count();
    assert_eq!(force_uploads, 2);
    let (ok, text) = verify_cli(&site_b);
    assert!(ok, "{text}");
    drop(b);
}

#[test]
fn a_crash_in_the_middle_of_a_commit_on_the_shared_store_leaves_the_last_version_intact() {
    let s3 = S3::start();
    let (site, other) = replicas(&s3, "commit-crash");
    let kent = site.token("force-kent", "uploader");
    let essex = site.token("force-essex", "uploader");
    let hmicfrs = site.token("hmicfrs", "inspector");
    let witness = other.serve();
    {
        let server = site.serve();
        let v = upload_retrying(
            &server,
            &kent,
            "force_performance",
            parquet("force_performance", &["kent"], 0.01),
        );
        assert_eq!(v, 0);
    }
    // The process dies at the moment its log entry would reach the store, after the data
    // files are on it.
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
    assert!(
        !crashing
            .wait_exit(Duration::from_secs(10))
            .expect("aborted")
            .success()
    );
    // The other replica never saw a half-written version, and answers over version 0.
    assert_eq!(versions(&witness, &hmicfrs, "force_performance"), vec![0]);
    let (status, body) = ask(
        &witness,
        &hmicfrs,
        "inspection",
        "SELECT count(DISTINCT pfa_code) AS n FROM force_performance",
    );
    assert_eq!(
        (status, &body["rows"][0][0]),
        (200, &serde_json::json!(1)),
        "{body}"
    );
    // Restarted, the crashed replica agrees, and a retry commits.
    let server = site.serve();
    assert_eq!(versions(&server, &hmicfrs, "force_performance"), vec![0]);
    let v = upload_retrying(&server, &essex, "force_performance", essex_file);
    assert_eq!(v, 1);
    assert_eq!(
        versions(&witness, &hmicfrs, "force_performance"),
        vec![1, 0]
    );
}
