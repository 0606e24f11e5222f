//! Enum columns as dictionaries or as DataFusion's default string views, on the queries
//! that group by them: the same rows written twice with the same writer settings, once
//! with the schema's text columns of few values typed `Dictionary(Int32, Utf8)` (so
//! DataFusion reads them as dictionaries) and once as plain text (read as `Utf8View`, the
//! default), each query timed on both in this process.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use arrow::datatypes::{DataType, Field, Schema};
use concordat_core::schema::{ColumnSchema, Schemas};
use datafusion::prelude::SessionContext;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::file::properties::WriterProperties;

use crate::median;
use crate::queries::BenchQuery;

/// The datasets the group-by queries read.
const DATASETS: [&str; 2] = ["reoffending_cohort", "court_timeliness"];

/// Writes `input` again to `output`, with the enum columns as dictionaries or not.
fn rewrite(input: &Path, output: &Path, dataset: &str, dictionary: bool) -> anyhow::Result<()> {
    let schema = Schemas::builtin()
        .get(dataset)
        .with_context(|| format!("no schema {dataset}"))?;
    let file = std::fs::File::open(input)?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file.try_clone()?)?;
    let fields: Vec<Field> = builder
        .schema()
        .fields()
        .iter()
        .map(|f| {
            let coded = schema
                .column(f.name())
                .is_some_and(ColumnSchema::is_coded_text);
            if dictionary && coded && f.data_type() == &DataType::Utf8 {
                let t = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
                f.as_ref().clone().with_data_type(t)
            } else {
                f.as_ref().clone()
            }
        })
        .collect();
    let hinted = Arc::new(Schema::new(fields));
    let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(
        file,
        ArrowReaderOptions::new().with_schema(hinted.clone()),
    )?
    .with_batch_size(65_536)
    .build()?;
    let props = WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_max_row_group_row_count(Some(1 << 20))
        .build();
    let mut writer = ArrowWriter::try_new(std::fs::File::create(output)?, hinted, Some(props))?;
    for batch in reader {
        writer.write(&batch?)?;
    }
    writer.close()?;
    Ok(())
}

/// Times `queries` (those reading only [`DATASETS`]) on both layouts and prints a table;
/// returns it as JSON.
pub(crate) async fn compare(
    data: &Path,
    queries: &[BenchQuery],
    runs: usize,
) -> anyhow::Result<serde_json::Value> {
    let dir = data.join("enum-types");
    std::fs::create_dir_all(&dir)?;
    let (plain, dict) = (SessionContext::new(), SessionContext::new());
    for d in DATASETS {
        let input = data.join(format!("{d}.parquet"));
        for (ctx, dictionary) in [(&plain, false), (&dict, true)] {
            let out: PathBuf = dir.join(format!("{d}-{}.parquet", u8::from(dictionary)));
            if !out.exists() {
                let partial = out.with_extension("partial");
                rewrite(&input, &partial, d, dictionary)?;
                std::fs::rename(&partial, &out)?;
            }
            let path = out.to_str().context("path")?;
            ctx.register_parquet(d, path, Default::default()).await?;
        }
    }
    let reads_only_these = |sql: &str| {
        ["force_", "most_similar"]
            .iter()
            .all(|other| !sql.contains(other))
    };
    println!(
        "\n## Enum columns: DataFusion's default (string views) against dictionaries (median of {runs} runs, milliseconds, in process)\n"
    );
    println!("| # | query | string views | dictionaries | dictionaries/views |");
    println!("| ---: | --- | ---: | ---: | ---: |");
    let mut rows = Vec::new();
    let mut ratios = Vec::new();
    for (i, q) in queries.iter().enumerate() {
        if !reads_only_these(q.sql) {
            continue;
        }
        let mut times = [Vec::new(), Vec::new()];
        let mut counts = [0usize; 2];
        for round in 0..=runs {
            for k in 0..2 {
                let which = (k + round) % 2;
                let ctx = if which == 0 { &plain } else { &dict };
                let started = Instant::now();
                let batches = ctx.sql(q.sql).await?.collect().await?;
                counts[which] = batches.iter().map(|b| b.num_rows()).sum();
                if round > 0 {
                    times[which].push(started.elapsed().as_secs_f64() * 1000.0);
                }
            }
        }
        if counts[0] != counts[1] {
            anyhow::bail!(
                "{}: {} rows as views, {} as dictionaries",
                q.name,
                counts[0],
                counts[1]
            );
        }
        let [v, d] = times.map(median);
        ratios.push(d / v);
        println!(
            "| {} | {} | {v:.1} | {d:.1} | {:.2} |",
            i + 1,
            q.name,
            d / v
        );
        rows.push(serde_json::json!({"query": q.name, "views_ms": v, "dictionaries_ms": d}));
    }
    let g = crate::geomean(&ratios);
    println!("\nGeometric mean, dictionaries/views: {g:.2}");
    Ok(serde_json::json!({"queries": rows, "geomean_dictionaries_over_views": g}))
}
