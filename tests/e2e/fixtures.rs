//! Parquet files made from synthetic data, and a server loaded with them.

use concordat_e2e::{Server, Site, client, json, upload};

/// One dataset for some forces, as Parquet bytes.
pub fn parquet(dataset: &str, forces: &[&str], scale: f64) -> Vec<u8> {
    let batches = concordat_synth::Synth::new(scale, 11)
        .only(forces)
        .batches(dataset);
    concordat_synth::parquet_bytes(&batches).expect("parquet")
}

/// A server (with the extra environment, e.g. the doors) holding Kent's and Essex's force
/// performance and their reoffending cohorts.
pub fn loaded(site: &Site, env: &[(&str, &str)]) -> Server {
    let server = site.serve_with(env);
    for force in ["kent", "essex"] {
        let (status, body) = upload(
            &server,
            &site.token(&format!("force-{force}"), "uploader"),
            "force_performance",
            "append",
            parquet("force_performance", &[force], 0.01),
        );
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = upload(
        &server,
        &site.token("probation", "uploader"),
        "reoffending_cohort",
        "append",
        parquet("reoffending_cohort", &["kent", "essex"], 0.02),
    );
    assert_eq!(status, 201, "{body}");
    server
}

/// `POST /v1/query` as JSON: status and body.
pub fn ask(server: &Server, token: &str, purpose: &str, sql: &str) -> (u16, serde_json::Value) {
    json(
        client()
            .post(format!("{}/v1/query", server.url))
            .bearer_auth(token)
            .json(&serde_json::json!({"sql": sql, "purpose": purpose}))
            .send()
            .expect("query"),
    )
}

/// The message of a refusal over HTTP.
pub fn refusal(server: &Server, token: &str, purpose: &str, sql: &str) -> String {
    let (status, body) = ask(server, token, purpose, sql);
    assert!(status >= 400, "{sql} was answered over HTTP: {body}");
    body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Runs a Python script (the clients of the other doors) with these environment
/// variables; its standard output, parsed as JSON.
pub fn python(script: &str, vars: &[(&str, &str)]) -> serde_json::Value {
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-c", script]);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("python3 runs");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "JSON from the script ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// One answer cell as text, numbers to six places (each client prints floats its own way).
pub fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "null".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => format!("{:.6}", n.as_f64().unwrap_or(f64::NAN)),
        other => other.to_string(),
    }
}
