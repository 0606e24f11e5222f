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

/// Fails with the server's error message unless the status is a success.
pub fn expect_success(answer: &Answer, what: &str) -> anyhow::Result<()> {
    if (200..300).contains(&answer.status) {
        return Ok(());
    }
    let message = answer.body["error"]["message"]
        .as_str()
        .unwrap_or("no message");
    bail!(
        "{what}: HTTP {}: {message}\n{}",
        answer.status,
        serde_json::to_string_pretty(&answer.body).unwrap_or_default()
    )
}
