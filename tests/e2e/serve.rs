//! Starting, stopping, identity and the demo.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use concordat_e2e::*;

#[test]
fn health_readiness_and_metrics_answer_without_a_token() {
    let site = Site::new();
    let server = site.serve();
    let c = client();
    assert_eq!(
        c.get(format!("{}/healthz", server.url))
            .send()
            .expect("healthz")
            .status(),
        200
    );
    let (status, body) = json(
        c.get(format!("{}/readyz", server.url))
            .send()
            .expect("readyz"),
    );
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")));
    let metrics = c
        .get(format!("{}/metrics", server.url))
        .send()
        .expect("metrics")
        .text()
        .expect("text");
    assert!(
        metrics.contains("concordat_uploads_committed_total 0"),
        "{metrics}"
    );
}

#[test]
fn me_answers_from_partners_toml_and_bad_tokens_get_401() {
    let site = Site::new();
    let server = site.serve();
    let (status, me) = get(&server, &site.token("pcc-kent", "analyst"), "/v1/me");
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["partner"], "pcc-kent");
    assert_eq!(me["kind"], "pcc");
    assert_eq!(me["force_area"]["pfa_code"], "E23000032");
    assert_eq!(me["roles"], serde_json::json!(["analyst"]));
    let ids: Vec<&str> = me["agreements"]
        .as_array()
        .expect("agreements")
        .iter()
        .filter_map(|a| a["id"].as_str())
        .collect();
    assert!(ids.contains(&"probation-pcc-reoffending-mou"), "{ids:?}");
    let c = client();
    let (status, body) = json(
        c.get(format!("{}/v1/me", server.url))
            .send()
            .expect("no token"),
    );
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    for bad in [
        "garbage",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
        &site.token("pcc-kent", "analyst").replace('.', ".x"),
    ] {
        let (status, _) = get(&server, bad, "/v1/me");
        assert_eq!(status, 401, "{bad}");
    }
    let other = Site::new();
    let (status, _) = get(&server, &other.token("pcc-kent", "analyst"), "/v1/me");
    assert_eq!(status, 401, "a token signed with another secret");
    let (status, body) = get(
        &server,
        &site.token("pcc-kent", "analyst"),
        "/v1/nothing-here",
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
}

#[test]
fn an_invalid_policy_file_stops_the_server_at_start_naming_file_and_field() {
    let site = Site::new();
    let bad = site
        .dir
        .path()
        .join("policies/probation-pcc-reoffending-mou.toml");
    let text = std::fs::read_to_string(&bad)
        .expect("read")
        .replace("min_count = 10", "min_count = \"ten\"");
    std::fs::write(&bad, text).expect("write");
    let out = Command::new(binary())
        .args(["serve", "--config"])
        .arg(site.config())
        .output()
        .expect("serve");
    assert!(!out.status.success(), "the server must not start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("probation-pcc-reoffending-mou.toml") && err.contains("min_count"),
        "{err}"
    );
}

#[test]
fn the_demo_starts_loads_data_and_answers_me_with_a_printed_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let demo = dir.path().join("demo");
    let mut child = Command::new(binary())
        .args(["demo", "--dir"])
        .arg(&demo)
        .args(["--addr", "127.0.0.1:0", "--scale", "0.002"])
        .args(["--pg-addr", "127.0.0.1:0", "--flight-addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("demo");
    let stdout = child.stdout.take().expect("stdout");
    let (mut base, mut token) = (None, None);
    let (mut pat, mut psql_line, mut grpc) = (None, None, None);
    let (mut console, mut auditor) = (None, None);
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix("Web console: ") {
            console = rest.split_whitespace().next().map(str::to_owned);
        }
        if let Some(t) = line.strip_prefix("export AUDITOR_TOKEN=") {
            auditor = Some(t.to_owned());
        }
        if let Some(rest) = line.strip_prefix("Concordat demo is serving at ") {
            base = rest.split_whitespace().next().map(str::to_owned);
        }
        if let Some(t) = line.strip_prefix("export KENT_PCC_TOKEN=") {
            token = Some(t.to_owned());
        }
        if let Some(t) = line.strip_prefix("export KENT_PAT=") {
            pat = Some(t.to_owned());
        }
        if line.contains("psql \"host=") {
            psql_line = line.split('"').nth(3).map(str::to_owned);
        }
        if let Some(at) = line.split("flight.connect(\"").nth(1) {
            grpc = at.split('"').next().map(str::to_owned);
        }
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    let (base, token) = (
        base.expect("address printed"),
        token.expect("token printed"),
    );
    let c = client();
    // The printed console address serves the console; the printed auditor reads the trail.
    let page = c
        .get(console.expect("console address printed"))
        .send()
        .expect("console");
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().expect("html").contains("/console/app.js"));
    let (status, trail) = json(
        c.get(format!("{base}/v1/audit/verify"))
            .bearer_auth(auditor.expect("auditor token printed"))
            .send()
            .expect("verify"),
    );
    assert_eq!(
        (status, &trail["verified"]),
        (200, &serde_json::json!(true)),
        "{trail}"
    );
    let (status, me) = json(
        c.get(format!("{base}/v1/me"))
            .bearer_auth(&token)
            .send()
            .expect("me"),
    );
    assert_eq!(
        (status, me["partner"].as_str()),
        (200, Some("pcc-kent")),
        "{me}"
    );
    let (_, datasets) = json(
        c.get(format!("{base}/v1/datasets"))
            .bearer_auth(&token)
            .send()
            .expect("datasets"),
    );
    let reo = datasets["datasets"]
        .as_array()
        .expect("list")
        .iter()
        .find(|d| d["name"] == "reoffending_cohort")
        .cloned()
        .expect("visible");
    assert_eq!(reo["access"], "aggregate");
    assert!(
        reo["latest_version"].as_u64().is_some(),
        "the demo loaded reoffending data: {reo}"
    );

    // The printed Postgres line works, over TLS, with the printed personal access token;
    // and so does the printed Flight SQL address.
    let pat = pat.expect("a personal access token printed");
    let conninfo = psql_line.expect("a psql line printed");
    assert!(conninfo.contains("sslmode=require"), "{conninfo}");
    let out = Command::new("psql")
        .arg(&conninfo)
        .args([
            "-X",
            "-w",
            "-A",
            "-t",
            "-c",
            "\\conninfo",
            "-c",
            "SELECT count(*) > 0 FROM force_performance",
        ])
        .env("PGPASSWORD", &pat)
        .output()
        .expect("psql");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("SSL connection"), "{said}");
    assert!(said.trim_end().ends_with('t'), "{said}");
    let grpc = grpc.expect("a Flight SQL address printed");
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, adbc_driver_flightsql.dbapi as f\n\
             c = f.connect(os.environ['AT'], db_kwargs={'adbc.flight.sql.authorization_header': 'Bearer ' + os.environ['T'], 'adbc.flight.sql.rpc.call_header.concordat-purpose': 'performance-scrutiny'})\n\
             cur = c.cursor(); cur.execute('SELECT count(*) AS n FROM force_performance'); print(cur.fetchone()[0])",
        ])
        .env("AT", &grpc)
        .env("T", &pat)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u64>()
            .is_ok_and(|n| n > 0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let _ = child.kill();
    let _ = child.wait();
    assert!(demo.join("concordat.toml").exists() && demo.join("keys/jwks.json").exists());
    std::thread::sleep(Duration::from_millis(100));
}

#[test]
fn the_dataset_schema_shows_exactly_the_columns_a_query_can_use() {
    let site = Site::with_agreement(
        "test-court-without-ids.toml",
        "title = \"t\"\npurposes = [\"inspection\"]\nproviders = { partners = [\"cps\"] }\nrecipients = { partners = [\"home-office\"] }\n[read.court_timeliness]\naccess = \"record\"\nscope = \"all\"\nhidden = [\"person_id\", \"case_id\"]\ngeneralise = { offence_date = \"month\" }\n",
    );
    let server = site.serve();
    let (status, body) = get(
        &server,
        &site.token("home-office", "analyst"),
        "/v1/datasets/court_timeliness",
    );
    assert_eq!(status, 200, "{body}");
    let columns = body["columns"].as_array().expect("columns");
    let names: Vec<&str> = columns.iter().filter_map(|c| c["name"].as_str()).collect();
    assert!(
        !names.contains(&"person_id") && !names.contains(&"case_id"),
        "{names:?}"
    );
    let offence = columns
        .iter()
        .find(|c| c["name"] == "offence_date")
        .expect("offence_date");
    assert_eq!(offence["generalised"], "month");
    let (status, _) = get(
        &server,
        &site.token("home-office", "analyst"),
        "/v1/datasets/reoffending_cohort",
    );
    assert_eq!(
        status, 404,
        "no agreement: the dataset does not exist for the Home Office"
    );
}

/// The server's environment, as the kernel holds it for its process id.
fn environ(server: &Server) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{}/environ", server.child.id())).expect("environ");
    raw.split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

#[test]
fn the_server_runs_with_allocator_settings_that_give_memory_back_unless_the_operator_set_them() {
    let site = Site::new();
    let server = site.serve();
    let env = environ(&server);
    for want in [
        "MALLOC_ARENA_MAX=2",
        "MALLOC_MMAP_THRESHOLD_=1048576",
        "MALLOC_TRIM_THRESHOLD_=1048576",
    ] {
        assert!(env.iter().any(|v| v == want), "{want} missing: {env:?}");
    }
    let (status, _) = json(
        client()
            .get(format!("{}/readyz", server.url))
            .send()
            .expect("readyz"),
    );
    assert_eq!(status, 200);
    drop(server);

    let own = site.serve_with(&[("MALLOC_ARENA_MAX", "4")]);
    let env = environ(&own);
    assert!(env.iter().any(|v| v == "MALLOC_ARENA_MAX=4"), "{env:?}");
    assert!(
        !env.iter().any(|v| v.starts_with("MALLOC_MMAP_THRESHOLD_=")),
        "{env:?}"
    );
}
