//! The HTTP client side of the CLI: uploads streamed from disk.

use std::path::Path;

use anyhow::{Context, bail};

/// What the server answered.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: serde_json::Value,
}

/// Streams a Parquet file to `POST /v1/datasets/{dataset}/uploads`.
pub async fn upload(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    dataset: &str,
    mode: &str,
    file: &Path,
) -> anyhow::Result<Answer> {
    let f = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("cannot open {}", file.display()))?;
    let len = f.metadata().await?.len();
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(f, 1 << 20));
    let url = format!(
        "{}/v1/datasets/{dataset}/uploads?mode={mode}",
        base.trim_end_matches('/')
    );
    let resp = client
        .post(&url)
        .bearer_auth(token)
        .header("content-type", "application/vnd.apache.parquet")
        .header("content-length", len)
        .body(body)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    Ok(Answer { status, body })
}

/// Fails with the server's error code and message unless the status is a success.
pub fn expect_success(answer: &Answer, what: &str) -> anyhow::Result<()> {
    if (200..300).contains(&answer.status) {
        return Ok(());
    }
    let code = answer.body["error"]["code"].as_str().unwrap_or("error");
    let message = answer.body["error"]["message"]
        .as_str()
        .unwrap_or("no message");
    bail!("{what}: HTTP {} {code}: {message}", answer.status)
}

/// `POST /v1/query`, writing the answer to a file or standard output as it arrives.
pub async fn query(
    base: &str,
    token: &str,
    purpose: &str,
    format: &str,
    sql: &str,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let accept = match format {
        "json" => "application/json",
        "ndjson" => "application/x-ndjson",
        "csv" => "text/csv",
        "arrow" => "application/vnd.apache.arrow.stream",
        "parquet" => "application/vnd.apache.parquet",
        other => bail!("--format {other}: use json, ndjson, csv, arrow or parquet"),
    };
    let url = format!("{}/v1/query", base.trim_end_matches('/'));
    let resp = reqwest::Client::new()
        .post(&url)
        .bearer_auth(token)
        .header("accept", accept)
        .json(&serde_json::json!({"sql": sql, "purpose": purpose}))
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    download(resp, "query", out).await
}

/// Downloads the police efficiency extract for one financial year.
pub async fn extract_efficiency(
    base: &str,
    token: &str,
    financial_year: &str,
    format: &str,
    purpose: Option<&str>,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let url = format!("{}/v1/extracts/efficiency", base.trim_end_matches('/'));
    let mut query = vec![("financial_year", financial_year), ("format", format)];
    if let Some(p) = purpose {
        query.push(("purpose", p));
    }
    let resp = reqwest::Client::new()
        .get(&url)
        .bearer_auth(token)
        .query(&query)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    if let (Some(m), Some(path)) = (resp.headers().get("concordat-manifest"), out) {
        // A CSV's manifest travels in a header; keep it beside the file.
        let manifest = path.with_extension("manifest.json");
        tokio::fs::write(&manifest, m.as_bytes())
            .await
            .with_context(|| format!("cannot write {}", manifest.display()))?;
    }
    download(resp, "extract", out).await
}

async fn download(resp: reqwest::Response, what: &str, out: Option<&Path>) -> anyhow::Result<()> {
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    if !resp.status().is_success() {
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let answer = Answer { status, body };
        return expect_success(&answer, what);
    }
    let mut sink: Box<dyn tokio::io::AsyncWrite + Unpin> = match out {
        Some(p) => Box::new(
            tokio::fs::File::create(p)
                .await
                .with_context(|| format!("cannot create {}", p.display()))?,
        ),
        None => Box::new(tokio::io::stdout()),
    };
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        sink.write_all(&chunk.context("the answer was cut off")?)
            .await?;
    }
    sink.flush().await?;
    Ok(())
}
