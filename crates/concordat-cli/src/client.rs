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
    let progress = Progress::new(len, file);
    let body = reqwest::Body::wrap_stream(futures::StreamExt::inspect(
        tokio_util::io::ReaderStream::with_capacity(f, 1 << 20),
        move |chunk| {
            if let Ok(c) = chunk {
                progress.sent(c.len() as u64);
            }
        },
    ));
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

/// A progress bar on standard error while a file is sent (only when it is a terminal).
struct Progress {
    total: u64,
    sent: std::sync::atomic::AtomicU64,
    shown: std::sync::atomic::AtomicU64,
    name: String,
    on: bool,
}

impl Progress {
    fn new(total: u64, file: &Path) -> Progress {
        use std::io::IsTerminal;
        Progress {
            total: total.max(1),
            sent: 0.into(),
            shown: u64::MAX.into(),
            name: file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            on: std::io::stderr().is_terminal(),
        }
    }

    fn sent(&self, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let sent = self.sent.fetch_add(bytes, Relaxed) + bytes;
        let pct = (sent.min(self.total) * 100) / self.total;
        if !self.on || self.shown.swap(pct, Relaxed) == pct {
            return;
        }
        let width = 30;
        let filled = (pct as usize * width) / 100;
        eprint!(
            "\r{} [{}{}] {pct:>3}% {:.1}/{:.1} MiB{}",
            self.name,
            "#".repeat(filled),
            " ".repeat(width - filled),
            sent as f64 / 1048576.0,
            self.total as f64 / 1048576.0,
            if pct == 100 { "\n" } else { "" }
        );
    }
}

/// The violations of a refused upload as a short table: one line per (column, rule), with
/// how many rows broke it, the first of them, and what the rule requires.
pub fn violation_table(body: &serde_json::Value) -> Option<String> {
    let details = &body["error"]["details"];
    let summary = details["summary"].as_array()?;
    let message = |column: &serde_json::Value, rule: &serde_json::Value| -> String {
        details["violations"]
            .as_array()
            .and_then(|vs| {
                vs.iter()
                    .find(|v| v["column"] == *column && v["rule"] == *rule)
                    .and_then(|v| v["message"].as_str())
            })
            .unwrap_or("")
            .to_owned()
    };
    let rows: Vec<[String; 5]> = summary
        .iter()
        .map(|s| {
            let first: Vec<String> = s["rows"]
                .as_array()
                .map(|r| r.iter().map(|x| x.to_string()).collect())
                .unwrap_or_default();
            let more = s["count"].as_u64().unwrap_or(0) > first.len() as u64;
            [
                s["column"].as_str().unwrap_or("(file)").to_owned(),
                s["rule"].as_str().unwrap_or("").to_owned(),
                s["count"].to_string(),
                if first.is_empty() {
                    "-".into()
                } else {
                    format!("{}{}", first.join(", "), if more { ", ..." } else { "" })
                },
                message(&s["column"], &s["rule"]),
            ]
        })
        .collect();
    let head = ["column", "rule", "rows", "first rows", "the rule"];
    let widths: Vec<usize> = (0..4)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([head[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |r: [&str; 5]| {
        format!(
            "{:<w0$}  {:<w1$}  {:>w2$}  {:<w3$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        )
        .trim_end()
        .to_owned()
    };
    let mut out = vec![
        format!(
            "refused: {} violation(s); nothing was committed",
            details["violation_count"]
        ),
        line(head),
    ];
    out.extend(
        rows.iter()
            .map(|r| line([&r[0], &r[1], &r[2], &r[3], &r[4]])),
    );
    Some(out.join("\n"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_reads_as_one_line_per_column_and_rule() {
        let body = serde_json::json!({"error": {"code": "validation_failed", "details": {
            "violation_count": 338,
            "violations": [
                {"row": 1, "column": "pfa_code", "rule": "row_scope", "message": "your agreements let you upload only your own force area"},
                {"row": 4, "column": "value", "rule": "range", "message": "`value` must be at least 0"}
            ],
            "summary": [
                {"column": "pfa_code", "rule": "row_scope", "count": 336, "rows": [1, 2, 3, 4, 5]},
                {"column": "value", "rule": "range", "count": 2, "rows": [4, 9]}
            ]
        }}});
        let table = violation_table(&body).expect("table");
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].contains("338 violation"));
        assert!(lines[2].starts_with("pfa_code"));
        assert!(lines[2].contains("row_scope"));
        assert!(lines[2].contains("336"));
        assert!(lines[2].contains("1, 2, 3, 4, 5, ..."));
        assert!(lines[2].contains("own force area"));
        assert!(lines[3].contains("4, 9"));
        assert!(!lines[3].contains("..."));
        assert!(violation_table(&serde_json::json!({"dataset": "x"})).is_none());
    }
}
