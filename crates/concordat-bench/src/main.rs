//! `concordat-bench`: how fast the gateway answers analysts, and what its safety costs.
//!
//! On synthetic data at a chosen scale it
//! 1. times a validated upload against only decoding the same Parquet file, and reads
//!    the server's peak memory (a separate `concordat serve` process);
//! 2. runs a fixed set of analyst queries three ways, interleaved: through the gateway
//!    over HTTP with agreements enforced, with DataFusion in this process on the same
//!    Parquet files and no policy, and with DuckDB on the same files when the `duckdb`
//!    Python package is installed; it prints the median of several runs of each and the
//!    ratios, with their geometric means;
//! 3. runs N concurrent analysts (one PCC each) on a small-query mix for a fixed time and
//!    prints throughput, latency percentiles and errors.
//!
//! Build it in release: `cargo run --release -p concordat-bench -- --scale 5`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use concordat_e2e::{Server, Site};
use datafusion::prelude::SessionContext;

mod enums;
mod gateway;
mod queries;

use gateway::*;
use queries::*;

#[derive(Parser, Debug)]
#[command(
    name = "concordat-bench",
    about = "Benchmarks the gateway against DataFusion and DuckDB"
)]
struct Args {
    /// Synthetic data scale (1 = about a million rows each of reoffending and court data).
    #[arg(long, default_value_t = 5.0)]
    scale: f64,
    /// Seed of the synthetic data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the synthetic files are kept (reused when the scale and seed match).
    #[arg(long, default_value = "target/bench-data")]
    data: PathBuf,
    /// Timed runs of each query on each engine (after one warm-up).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Concurrent analysts, comma-separated.
    #[arg(long, default_value = "16,64,256", value_delimiter = ',')]
    clients: Vec<usize>,
    /// Seconds each concurrency level runs.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Also upload a reoffending file synthesised at this scale and report the server's
    /// peak memory (scale 19 is about 1.25 GB).
    #[arg(long)]
    big_upload_scale: Option<f64>,
    /// The `concordat` binary (default: beside this one).
    #[arg(long, env = "CONCORDAT_BIN")]
    concordat: Option<PathBuf>,
    /// Also time the group-by queries in DataFusion with the enum columns read as
    /// dictionaries against its default (string views), on copies of the same files.
    #[arg(long)]
    enum_types: bool,
    /// Skip DuckDB even when it is installed.
    #[arg(long)]
    no_duckdb: bool,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Measure only ingest (and the big upload, with the efficiency rebuild after it).
    #[arg(long)]
    ingest_only: bool,
    /// Keep the gateway's tables and state on an S3-compatible store: moto's server on
    /// loopback, started here (`pip install 'moto[server]'`). Loopback is not a network.
    #[arg(long)]
    s3: bool,
    /// Gateway replicas on the shared store (with `--s3`); the concurrent analysts are
    /// spread over them.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

fn concordat_binary(args: &Args) -> anyhow::Result<PathBuf> {
    let bin = match &args.concordat {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow!("no directory for this executable"))?
            .join("concordat"),
    };
    if !bin.exists() {
        bail!(
            "{} not found: build it (cargo build --release -p concordat-cli) or pass --concordat",
            bin.display()
        );
    }
    Ok(bin)
}

/// Synthesises the files (once per scale and seed): whole datasets for the baselines, and
/// each force's own rows for its uploads.
fn prepare(args: &Args) -> anyhow::Result<PathBuf> {
    let dir = args
        .data
        .join(format!("scale-{}-seed-{}", args.scale, args.seed));
    let done = dir.join(".complete");
    if done.exists() {
        eprintln!("reusing synthetic data in {}", dir.display());
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir)?;
    let started = Instant::now();
    let synth = concordat_synth::Synth::new(args.scale, args.seed);
    for ds in RECORD_DATASETS {
        synth.write(ds, &dir.join(format!("{ds}.parquet")))?;
    }
    for force in concordat_core::Reference::builtin().forces() {
        for ds in ["force_performance", "force_resources"] {
            let path = dir.join(ds).join(format!("{}.parquet", force.force_slug));
            std::fs::create_dir_all(path.parent().unwrap_or(&dir))?;
            synth
                .clone()
                .only(&[force.force_slug.as_str()])
                .write(ds, &path)?;
        }
    }
    std::fs::write(&done, "")?;
    eprintln!(
        "synthesised scale {} in {:.1}s into {}",
        args.scale,
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(dir)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The gateway's settings for the benchmark (every replica the same).
const SERVER_ENV: &[(&str, &str)] = &[
    // A plain log, so its fields can be read back (the upload's stage times).
    ("NO_COLOR", "1"),
    ("CONCORDAT_LIMITS__MAX_UPLOAD_BYTES", "4000000000"),
    ("CONCORDAT_QUERY__MAX_JSON_ROWS", "1000000"),
    ("CONCORDAT_QUERY__TIMEOUT_SECONDS", "300"),
    // The in-process baseline has no memory limit; the joins of two 5-million-row
    // tables build hash tables of a few GB, past the gateway's default of 512 MB.
    ("CONCORDAT_QUERY__MEMORY_MB", "8192"),
    // The other doors, for the door comparison.
    ("CONCORDAT_PG__ADDR", "127.0.0.1:0"),
    ("CONCORDAT_FLIGHT__ADDR", "127.0.0.1:0"),
];

fn geomean(v: &[f64]) -> f64 {
    let logs: Vec<f64> = v
        .iter()
        .filter(|x| x.is_finite() && **x > 0.0)
        .map(|x| x.ln())
        .collect();
    if logs.is_empty() {
        return f64::NAN;
    }
    (logs.iter().sum::<f64>() / logs.len() as f64).exp()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(args: Args) -> anyhow::Result<()> {
    let bin = concordat_binary(&args)?;
    concordat_e2e::set_binary(&bin);
    let data = prepare(&args)?;
    let mut report = serde_json::Map::new();
    report.insert("scale".into(), serde_json::json!(args.scale));

    if args.replicas > 1 && !args.s3 {
        bail!("--replicas needs --s3: replicas share an object store");
    }
    // The S3 server's start is blocking (it makes the bucket): off the runtime.
    let s3 = match args.s3 {
        true => Some(
            tokio::task::spawn_blocking(concordat_e2e::S3::start)
                .await
                .map_err(|e| anyhow!("the S3 server did not start: {e}"))?,
        ),
        false => None,
    };
    report.insert(
        "store".into(),
        serde_json::json!(if args.s3 {
            "s3 (moto, loopback)"
        } else {
            "local"
        }),
    );
    report.insert("replicas".into(), serde_json::json!(args.replicas.max(1)));
    let site = Site::with_agreement("bench-probation-court.toml", BENCH_AGREEMENT);
    if let Some(s3) = &s3 {
        site.use_store(s3, "bench");
    }
    let server = site.serve_with(SERVER_ENV);
    let replicas: Vec<(Site, Server)> = (1..args.replicas.max(1))
        .map(|_| {
            let replica = Site::replica_of(&site);
            let server = replica.serve_with(SERVER_ENV);
            (replica, server)
        })
        .collect();
    let pid = server.child.id();
    let idle = peak_rss_mib(pid);
    let mut gw = Gateway {
        site,
        server,
        client: reqwest::Client::new(),
        tokens: BTreeMap::new(),
    };

    // 1. Ingest: a validated upload against decoding the same file.
    let reo = data.join("reoffending_cohort.parquet");
    let reo_bytes = std::fs::metadata(&reo)?.len() as f64;
    let (decode_time, decode_rows) = decode_only(&reo)?;
    // The token is issued (a process of its own) before the clock starts.
    gw.token("probation", "uploader");
    let started = Instant::now();
    let (first_version, up_rows) = gw.upload("probation", "reoffending_cohort", &reo).await?;
    let upload_time = started.elapsed();
    let mib = reo_bytes / (1 << 20) as f64;
    // Where the upload's time went, as the server logged it.
    let stages: Vec<String> = std::fs::read_to_string(&gw.server.log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("upload received") || l.contains("upload validated and written"))
        .map(|l| {
            l.split_whitespace()
                .filter(|w| {
                    ["receive_ms=", "validate_ms=", "write_ms="]
                        .iter()
                        .any(|k| w.starts_with(k))
                })
                .map(str::to_owned)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let ingest = serde_json::json!({
        "file_mib": mib,
        "rows": up_rows,
        "decode_seconds": decode_time.as_secs_f64(),
        "decode_rows_per_s": decode_rows as f64 / decode_time.as_secs_f64(),
        "decode_mib_per_s": mib / decode_time.as_secs_f64(),
        "upload_seconds": upload_time.as_secs_f64(),
        "upload_rows_per_s": up_rows as f64 / upload_time.as_secs_f64(),
        "upload_mib_per_s": mib / upload_time.as_secs_f64(),
        "upload_over_decode": decode_time.as_secs_f64() / upload_time.as_secs_f64(),
        "server_idle_mib": idle,
        "server_peak_mib": peak_rss_mib(pid),
        "server_stages": stages.join(" "),
    });
    println!("\n## Ingest (reoffending_cohort, {mib:.0} MiB, {up_rows} rows)\n");
    println!("| | seconds | rows/s | MiB/s |\n| --- | ---: | ---: | ---: |");
    println!(
        "| decode only (parquet-rs, this process) | {:.2} | {:.0} | {:.1} |",
        decode_time.as_secs_f64(),
        decode_rows as f64 / decode_time.as_secs_f64(),
        mib / decode_time.as_secs_f64()
    );
    println!(
        "| validated upload over HTTP (committed) | {:.2} | {:.0} | {:.1} |",
        upload_time.as_secs_f64(),
        up_rows as f64 / upload_time.as_secs_f64(),
        mib / upload_time.as_secs_f64()
    );
    println!(
        "\nUpload throughput is {:.0}% of decode-only. Server peak RSS so far: {:.0} MiB (idle {:.0} MiB).",
        100.0 * decode_time.as_secs_f64() / upload_time.as_secs_f64(),
        peak_rss_mib(pid).unwrap_or(f64::NAN),
        idle.unwrap_or(f64::NAN)
    );
    println!("The server's own times for it: {}.", stages.join(", "));
    report.insert("ingest".into(), ingest);
    if let Some(big) = args.big_upload_scale {
        let path = args.data.join(format!("big-reoffending-{big}.parquet"));
        if !path.exists() {
            concordat_synth::Synth::new(big, args.seed + 1).write("reoffending_cohort", &path)?;
        }
        let bytes = std::fs::metadata(&path)?.len() as f64 / (1 << 20) as f64;
        // Let the rebuild after the first upload finish, so each peak below is its own.
        gw.efficiency_after("reoffending_cohort", first_version)
            .await;
        gateway::reset_peak_rss(pid);
        let started = Instant::now();
        let (big_version, rows) = gw.upload("probation", "reoffending_cohort", &path).await?;
        let secs = started.elapsed().as_secs_f64();
        let peak = peak_rss_mib(pid);
        println!(
            "\nBig upload: {bytes:.0} MiB, {rows} rows in {secs:.1}s ({:.1} MiB/s); server peak RSS {:.0} MiB.",
            bytes / secs,
            peak.unwrap_or(f64::NAN)
        );
        // The commit wakes the efficiency rebuild, which reads the whole new input.
        gateway::reset_peak_rss(pid);
        let before_rebuild = rss_mib(pid);
        let rebuilt = gw.efficiency_after("reoffending_cohort", big_version).await;
        let rebuild_peak = peak_rss_mib(pid);
        println!(
            "Efficiency rebuild after it: {}; server peak RSS {:.0} MiB (RSS {:.0} MiB as it started).",
            match rebuilt {
                Some(s) => format!("done in {s:.1}s"),
                None => "not seen within the wait".into(),
            },
            rebuild_peak.unwrap_or(f64::NAN),
            before_rebuild.unwrap_or(f64::NAN)
        );
        report.insert(
            "big_upload".into(),
            serde_json::json!({"mib": bytes, "rows": rows, "seconds": secs, "server_peak_mib": peak,
                "rebuild_seconds": rebuilt, "server_peak_after_rebuild_mib": rebuild_peak}),
        );
        // Back to the benchmark's own cohort file, so the engines read the same rows.
        gw.upload("probation", "reoffending_cohort", &reo)
            .await
            .ok();
    }

    if args.ingest_only {
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        }
        return Ok(());
    }

    // The other inputs, each from its provider.
    let mut resources_version = 0;
    gw.upload(
        "cps",
        "court_timeliness",
        &data.join("court_timeliness.parquet"),
    )
    .await?;
    gw.upload(
        "home-office",
        "force_context",
        &data.join("force_context.parquet"),
    )
    .await?;
    for force in concordat_core::Reference::builtin().forces() {
        let partner = format!("force-{}", force.force_slug);
        gw.upload(
            &partner,
            "force_performance",
            &data
                .join("force_performance")
                .join(format!("{}.parquet", force.force_slug)),
        )
        .await?;
        resources_version = gw
            .upload(
                &partner,
                "force_resources",
                &data
                    .join("force_resources")
                    .join(format!("{}.parquet", force.force_slug)),
            )
            .await?
            .0;
    }
    // Wait for the efficiency dataset built from the last resources upload.
    let inspector = gw.token("hmicfrs", "inspector");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let v: serde_json::Value = gw
            .client
            .get(format!("{}/v1/datasets/force_efficiency", gw.server.url))
            .bearer_auth(&inspector)
            .send()
            .await?
            .json()
            .await?;
        let built = v["versions"][0]["sources"]["force_resources"].as_u64();
        if built.is_some_and(|b| b >= resources_version) {
            break;
        }
        if Instant::now() > deadline {
            bail!("force_efficiency was not rebuilt");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let extract = gw
        .client
        .get(format!(
            "{}/v1/extracts/efficiency?financial_year=2023-24&format=parquet",
            gw.server.url
        ))
        .bearer_auth(&inspector)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    let efficiency = data.join("force_efficiency-2023-24.parquet");
    std::fs::write(&efficiency, &extract)?;

    // 2. Queries, three ways.
    let mut tables: BTreeMap<String, PathBuf> = RECORD_DATASETS
        .iter()
        .map(|d| ((*d).to_owned(), data.join(format!("{d}.parquet"))))
        .collect();
    tables.insert("force_efficiency".into(), efficiency);
    let ctx = SessionContext::new();
    for (name, path) in &tables {
        ctx.register_parquet(
            name.as_str(),
            path.to_str().context("path")?,
            Default::default(),
        )
        .await?;
    }
    let mut duck = if args.no_duckdb {
        None
    } else {
        duckdb(&tables)
    };
    match &duck {
        Some((_, v)) => eprintln!("DuckDB {v} found"),
        None => {
            eprintln!("DuckDB not available (pip install duckdb); comparing with DataFusion only")
        }
    }
    let qs = queries();
    let mut times: Vec<[Vec<f64>; 3]> = qs.iter().map(|_| [vec![], vec![], vec![]]).collect();
    let mut rows: Vec<[usize; 3]> = vec![[0; 3]; qs.len()];
    for round in 0..=args.runs {
        for (i, q) in qs.iter().enumerate() {
            let token = gw.token(q.partner, q.role);
            // Rotate the order so no engine always runs first (warm caches).
            for k in 0..3 {
                let engine = (k + round + i) % 3;
                let measured: Option<(Duration, usize)> = match engine {
                    0 => Some(
                        Gateway::query(&gw.client, &gw.server.url, &token, q.purpose, q.sql, true)
                            .await
                            .with_context(|| format!("gateway: {}", q.name))?,
                    ),
                    1 => {
                        let started = Instant::now();
                        let batches = ctx.sql(q.sql).await?.collect().await?;
                        Some((
                            started.elapsed(),
                            batches.iter().map(|b| b.num_rows()).sum(),
                        ))
                    }
                    _ => match &mut duck {
                        Some((d, _)) => Some(
                            d.run(&serde_json::json!({"sql": q.sql}))
                                .with_context(|| format!("duckdb: {}", q.name))?,
                        ),
                        None => None,
                    },
                };
                if let Some((t, n)) = measured {
                    rows[i][engine] = n;
                    if round > 0 {
                        times[i][engine].push(t.as_secs_f64() * 1000.0);
                    }
                }
            }
        }
    }
    println!(
        "\n## Queries, cold path (median of {} runs, milliseconds; every gateway answer computed, `Cache-Control: no-cache`)\n",
        args.runs
    );
    println!("| # | query | rows | gateway (a) | DataFusion (b) | DuckDB (c) | a/b | a/c |");
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let (mut ab, mut ac) = (Vec::new(), Vec::new());
    let mut per_query = Vec::new();
    for (i, q) in qs.iter().enumerate() {
        let [a, b, c] = [0, 1, 2].map(|e| median(times[i][e].clone()));
        let (rab, rac) = (a / b, a / c);
        ab.push(rab);
        if c.is_finite() {
            ac.push(rac);
        }
        if rows[i][0] != rows[i][1] {
            eprintln!(
                "warning: {}: gateway returned {} rows, DataFusion {}",
                q.name, rows[i][0], rows[i][1]
            );
        }
        let cell = |x: f64| {
            if x.is_finite() {
                format!("{x:.1}")
            } else {
                "-".into()
            }
        };
        let ratio = |x: f64| {
            if x.is_finite() {
                format!("{x:.2}")
            } else {
                "-".into()
            }
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            i + 1,
            q.name,
            rows[i][0],
            cell(a),
            cell(b),
            cell(c),
            ratio(rab),
            ratio(rac)
        );
        per_query.push(serde_json::json!({"query": q.name, "rows": rows[i][0], "gateway_ms": a, "datafusion_ms": b, "duckdb_ms": if c.is_finite() { Some(c) } else { None }}));
    }
    let (gab, gac) = (geomean(&ab), geomean(&ac));
    println!(
        "\nGeometric mean: gateway/DataFusion {gab:.2}{}",
        if gac.is_finite() {
            format!(", gateway/DuckDB {gac:.2}")
        } else {
            String::new()
        }
    );
    report.insert("queries".into(), serde_json::json!(per_query));
    report.insert(
        "geomean_gateway_over_datafusion".into(),
        serde_json::json!(gab),
    );
    report.insert(
        "geomean_gateway_over_duckdb".into(),
        serde_json::json!(if gac.is_finite() { Some(gac) } else { None }),
    );
    drop(duck);
    if args.enum_types {
        let compared = enums::compare(&data, &qs, args.runs).await?;
        report.insert("enum_types".into(), compared);
    }

    // 2a. The fixed cost of a query: gateway minus in-process DataFusion, run by run, on
    // the four queries DataFusion answers fastest.
    let mut smallest: Vec<usize> = (0..qs.len()).collect();
    smallest.sort_by(|&x, &y| median(times[x][1].clone()).total_cmp(&median(times[y][1].clone())));
    smallest.truncate(4);
    let mut overheads = Vec::new();
    println!(
        "\n## Fixed cost per query (gateway minus DataFusion, cold path, the four smallest)\n"
    );
    println!(
        "| query | DataFusion ms | gateway ms | overhead p50 ms |\n| --- | ---: | ---: | ---: |"
    );
    let mut per_small = Vec::new();
    for &i in &smallest {
        let diffs: Vec<f64> = times[i][0]
            .iter()
            .zip(&times[i][1])
            .map(|(a, b)| a - b)
            .collect();
        overheads.extend(diffs.iter().copied());
        let (a, b, d) = (
            median(times[i][0].clone()),
            median(times[i][1].clone()),
            median(diffs),
        );
        println!("| {} | {b:.1} | {a:.1} | {d:.1} |", qs[i].name);
        per_small.push(serde_json::json!({"query": qs[i].name, "datafusion_ms": b, "gateway_ms": a, "overhead_ms": d}));
    }
    let overhead = median(overheads);
    println!("\nFixed overhead per query, p50 over those runs: {overhead:.1} ms.");
    report.insert(
        "fixed_overhead".into(),
        serde_json::json!({"p50_ms": overhead, "queries": per_small}),
    );

    // 2b'. Warm: the same questions asked again while no input changed (a dashboard's
    // refresh): the answer kept from the first asking, still checked and audited.
    let mut warm_times: Vec<Vec<f64>> = qs.iter().map(|_| Vec::new()).collect();
    for round in 0..=args.runs {
        for (i, q) in qs.iter().enumerate() {
            let token = gw.token(q.partner, q.role);
            let (t, _) =
                Gateway::query(&gw.client, &gw.server.url, &token, q.purpose, q.sql, false)
                    .await
                    .with_context(|| format!("gateway (warm): {}", q.name))?;
            if round > 0 {
                warm_times[i].push(t.as_secs_f64() * 1000.0);
            }
        }
    }
    println!(
        "\n## Queries, warm path (answer kept, median of {} runs, milliseconds)\n",
        args.runs
    );
    println!(
        "| # | query | gateway cold | gateway warm | DataFusion | warm/DataFusion |\n| ---: | --- | ---: | ---: | ---: | ---: |"
    );
    let mut warm_ratio = Vec::new();
    let mut per_warm = Vec::new();
    for (i, q) in qs.iter().enumerate() {
        let (a, w, b) = (
            median(times[i][0].clone()),
            median(warm_times[i].clone()),
            median(times[i][1].clone()),
        );
        warm_ratio.push(w / b);
        println!(
            "| {} | {} | {a:.1} | {w:.1} | {b:.1} | {:.2} |",
            i + 1,
            q.name,
            w / b
        );
        per_warm.push(
            serde_json::json!({"query": q.name, "cold_ms": a, "warm_ms": w, "datafusion_ms": b}),
        );
    }
    let gw_warm = geomean(&warm_ratio);
    println!("\nGeometric mean, warm: gateway/DataFusion {gw_warm:.2}");
    report.insert("warm".into(), serde_json::json!(per_warm));
    report.insert(
        "geomean_warm_over_datafusion".into(),
        serde_json::json!(gw_warm),
    );

    // 2b. The same queries through each door, as analysts' tools ask them.
    let doors = match (&gw.server.pg, &gw.server.flight) {
        (Some(pg), Some(flight)) => {
            Worker::start(DOORS_WORKER, &[pg.clone(), flight.clone()]).map(|(w, _)| w)
        }
        _ => None,
    };
    match doors {
        None => eprintln!(
            "door comparison skipped: pip install psycopg[binary] adbc-driver-flightsql pyarrow"
        ),
        Some(mut doors) => {
            let mut door_times: Vec<[Vec<f64>; 3]> =
                qs.iter().map(|_| [vec![], vec![], vec![]]).collect();
            for round in 0..=args.runs {
                for (i, q) in qs.iter().enumerate() {
                    let token = gw.token(q.partner, q.role);
                    for k in 0..3 {
                        let door = (k + round + i) % 3;
                        let (t, _) = match door {
                            0 => Gateway::query(
                                &gw.client,
                                &gw.server.url,
                                &token,
                                q.purpose,
                                q.sql,
                                false,
                            )
                            .await
                            .with_context(|| format!("http: {}", q.name))?,
                            door => {
                                let name = if door == 1 { "pg" } else { "flight" };
                                let ask = serde_json::json!({"door": name, "token": token, "purpose": q.purpose, "sql": q.sql});
                                doors
                                    .run(&ask)
                                    .with_context(|| format!("{name}: {}", q.name))?
                            }
                        };
                        if round > 0 {
                            door_times[i][door].push(t.as_secs_f64() * 1000.0);
                        }
                    }
                }
            }
            println!(
                "\n## Doors (median of {} runs, milliseconds, client side: HTTP Arrow stream, psycopg text rows, ADBC Arrow; answers kept after the warm-up round, so this is each door's own cost)\n",
                args.runs
            );
            println!(
                "| # | query | rows | HTTP | Postgres wire | Flight SQL | pg/HTTP | Flight/HTTP |"
            );
            println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
            let (mut pg_ratio, mut fl_ratio) = (Vec::new(), Vec::new());
            let mut per_door = Vec::new();
            for (i, q) in qs.iter().enumerate() {
                let [h, p, f] = [0, 1, 2].map(|d| median(door_times[i][d].clone()));
                pg_ratio.push(p / h);
                fl_ratio.push(f / h);
                println!(
                    "| {} | {} | {} | {h:.1} | {p:.1} | {f:.1} | {:.2} | {:.2} |",
                    i + 1,
                    q.name,
                    rows[i][0],
                    p / h,
                    f / h
                );
                per_door.push(
                    serde_json::json!({"query": q.name, "http_ms": h, "pg_ms": p, "flight_ms": f}),
                );
            }
            let (gp, gf) = (geomean(&pg_ratio), geomean(&fl_ratio));
            println!("\nGeometric mean: Postgres wire/HTTP {gp:.2}, Flight SQL/HTTP {gf:.2}");
            report.insert("doors".into(), serde_json::json!(per_door));
            report.insert("geomean_pg_over_http".into(), serde_json::json!(gp));
            report.insert("geomean_flight_over_http".into(), serde_json::json!(gf));
        }
    }

    // 3. Concurrent analysts.
    let forces: Vec<String> = concordat_core::Reference::builtin()
        .forces()
        .iter()
        .map(|f| f.force_slug.clone())
        .collect();
    let mut pcc_tokens = Vec::new();
    for slug in &forces {
        pcc_tokens.push(gw.token(&format!("pcc-{slug}"), "analyst"));
    }
    let urls: Vec<String> = std::iter::once(gw.server.url.clone())
        .chain(replicas.iter().map(|(_, s)| s.url.clone()))
        .collect();
    println!(
        "\n## Concurrent analysts ({}s each, one PCC per analyst, small-query mix, {} replica(s), {} store)\n",
        args.seconds,
        urls.len(),
        if args.s3 { "S3" } else { "local" }
    );
    println!(
        "| analysts | path | queries | queries/s | p50 ms | p95 ms | p99 ms | errors |\n| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let mut levels = Vec::new();
    let runs: Vec<(usize, bool)> = args
        .clients
        .iter()
        .flat_map(|&n| [(n, true), (n, false)])
        .collect();
    for (n, fresh) in runs {
        let path = if fresh { "cold" } else { "warm" };
        let until = Instant::now() + Duration::from_secs(args.seconds);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..n {
            let client = gw.client.clone();
            let url = urls[c % urls.len()].clone();
            let token = pcc_tokens[c % pcc_tokens.len()].clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = Vec::new();
                let mut k = c;
                while Instant::now() < until {
                    let (purpose, sql) = MIX[k % MIX.len()];
                    k += 1;
                    let t = Instant::now();
                    match Gateway::query(&client, &url, &token, purpose, sql, fresh).await {
                        Ok(_) => lat.push(t.elapsed().as_secs_f64() * 1000.0),
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                (lat, errors)
            }));
        }
        let mut lat = Vec::new();
        let mut errors = Vec::new();
        for t in tasks {
            let (l, e) = t.await?;
            lat.extend(l);
            errors.extend(e);
        }
        let wall = started.elapsed().as_secs_f64();
        lat.sort_by(f64::total_cmp);
        let (p50, p95, p99) = (
            percentile(&lat, 50.0),
            percentile(&lat, 95.0),
            percentile(&lat, 99.0),
        );
        println!(
            "| {n} | {path} | {} | {:.1} | {p50:.0} | {p95:.0} | {p99:.0} | {} |",
            lat.len(),
            lat.len() as f64 / wall,
            errors.len()
        );
        if let Some(e) = errors.first() {
            eprintln!("first error at {n} analysts: {e}");
        }
        levels.push(serde_json::json!({"analysts": n, "path": path, "queries": lat.len(), "qps": lat.len() as f64 / wall, "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "errors": errors.len()}));
    }
    report.insert("concurrency".into(), serde_json::json!(levels));
    drop(replicas);
    report.insert(
        "server_peak_mib".into(),
        serde_json::json!(peak_rss_mib(pid)),
    );
    if let Some(path) = &args.json {
        std::fs::write(
            path,
            serde_json::to_vec_pretty(&serde_json::Value::Object(report))?,
        )?;
    }
    Ok(())
}
