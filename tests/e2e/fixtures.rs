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
