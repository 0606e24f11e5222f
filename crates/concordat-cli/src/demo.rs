//! `concordat demo`: a working gateway in one command. Makes a directory with development
//! keys, configuration, the shipped policies and synthetic data for all 43 forces, serves
//! it, loads the data through the real HTTP upload path, and prints tokens to try it with.
//! Run again on the same directory, it reuses what is there.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use concordat_core::{Reference, Role};
use concordat_server::Config;
use concordat_server::auth::{DevSigner, write_dev_keys};
use concordat_synth::Synth;
use futures::StreamExt;

use crate::client;

const LOADED_MARKER: &str = ".demo-loaded";
const TOKEN_TTL: u64 = 8 * 3600;

/// Options of `concordat demo`.
#[derive(Debug, Clone)]
pub struct DemoArgs {
    /// Directory to make or reuse.
    pub dir: PathBuf,
    /// Address to serve on.
    pub addr: SocketAddr,
    /// Address of the Postgres wire door.
    pub pg_addr: SocketAddr,
    /// Address of the Flight SQL door.
    pub flight_addr: SocketAddr,
    /// Synthetic data scale (1.0 is about a million rows per record-level dataset).
    pub scale: f64,
    /// Synthetic data seed.
    pub seed: u64,
}

fn write_config(dir: &Path, addr: SocketAddr, kid: &str) -> anyhow::Result<()> {
    let text = format!(
        r#"# Concordat demo configuration. Development keys only: never use them for real data.
listen = "{addr}"
data_dir = "data"
policies_dir = "policies"

[auth]
issuer = "concordat-demo"
audience = "concordat"
algorithms = ["EdDSA", "HS256"]
jwks_file = "keys/jwks.json"
dev_secret_file = "keys/dev-hs256.secret"
dev_signing_key = "keys/dev-ed25519.pem"
dev_key_id = "{kid}"

[limits]
max_upload_bytes = 2147483648
concurrent_validations = 2
"#
    );
    std::fs::write(dir.join("concordat.toml"), text)?;
    Ok(())
}

/// Makes or reuses the directory, serves, loads data if needed, prints tokens; runs until stopped.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let dir = &args.dir;
    let config_path = dir.join("concordat.toml");
    if !config_path.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let kid = write_dev_keys(&dir.join("keys"))?;
        crate::shipped::write_policies(&dir.join("policies"))?;
        write_config(dir, args.addr, &kid)?;
        eprintln!("made a new demo in {}", dir.display());
    } else {
        eprintln!("reusing the demo in {}", dir.display());
    }
    let mut config = Config::load(&config_path).map_err(|e| anyhow!("{e}"))?;
    config.listen = args.addr;
    // The Postgres door, with a self-signed certificate made once for the demo.
    let keys = dir.join("keys");
    let (cert, key) = (keys.join("door.crt"), keys.join("door.key"));
    if !cert.exists() || !key.exists() {
        concordat_server::tls::write_self_signed(&keys)?;
    }
    config.pg = Some(concordat_server::config::DoorSettings {
        addr: args.pg_addr,
        tls_cert: Some(cert.clone()),
        tls_key: Some(key.clone()),
    });
    // Flight SQL: plaintext gRPC on loopback (what ADBC expects without certificates),
    // TLS with the demo's certificate anywhere else.
    let loopback = args.flight_addr.ip().is_loopback();
    config.flight = Some(concordat_server::config::DoorSettings {
        addr: args.flight_addr,
        tls_cert: (!loopback).then_some(cert),
        tls_key: (!loopback).then_some(key),
    });
    let data_dir = config.data_dir.clone();
    let signer = DevSigner::from_config(&config.auth).map_err(|e| anyhow!(e))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(concordat_server::serve(
        config,
        crate::worker_command(),
        move |a| {
            let _ = tx.send(a);
        },
    ));
    let bound = match rx.await {
        Ok(a) => a,
        Err(_) => {
            return Err(match server.await?.err() {
                Some(e) => anyhow!(e),
                None => anyhow!("the server stopped"),
            });
        }
    };
    let base = format!("http://{}", bound.http);
    if !dir.join(LOADED_MARKER).exists() {
        load(&args, &base, &signer).await?;
        std::fs::write(dir.join(LOADED_MARKER), b"")?;
    }
    let pat = personal_token(&data_dir)?;
    print_welcome(&args, &base, bound, &pat, &signer)?;
    server.await?.map_err(|e| anyhow!(e))
}

/// Synthesises the data and uploads it as each provider would.
async fn load(args: &DemoArgs, base: &str, signer: &DevSigner) -> anyhow::Result<()> {
    let synth_dir = args.dir.join("synth");
    let synth = Synth::new(args.scale, args.seed);
    let started = std::time::Instant::now();
    eprintln!("synthesising data at scale {} ...", args.scale);
    let mut jobs: Vec<(String, String, PathBuf)> = Vec::new();
    for (dataset, partner) in [
        ("reoffending_cohort", "probation"),
        ("court_timeliness", "cps"),
        ("force_context", "home-office"),
    ] {
        let path = synth_dir.join(format!("{dataset}.parquet"));
        std::fs::create_dir_all(&synth_dir)?;
        synth.write(dataset, &path)?;
        jobs.push((partner.into(), dataset.into(), path));
    }
    for force in Reference::builtin().forces() {
        for dataset in ["force_performance", "force_resources"] {
            let path = synth_dir
                .join(dataset)
                .join(format!("{}.parquet", force.force_slug));
            std::fs::create_dir_all(path.parent().unwrap_or(&synth_dir))?;
            synth
                .clone()
                .only(&[force.force_slug.as_str()])
                .write(dataset, &path)?;
            jobs.push((format!("force-{}", force.force_slug), dataset.into(), path));
        }
    }
    eprintln!("uploading {} files through {base} ...", jobs.len());
    let client = reqwest::Client::new();
    let mut results = futures::stream::iter(jobs.into_iter().map(|(partner, dataset, path)| {
        let client = client.clone();
        async move {
            let token = signer
                .issue(
                    &format!("demo-loader@{partner}"),
                    &partner,
                    &[Role::Uploader],
                    600,
                )
                .map_err(|e| anyhow!(e))?;
            let answer =
                client::upload(&client, base, &token, &dataset, "replace_periods", &path).await?;
            client::expect_success(&answer, &format!("{partner} uploading {dataset}"))?;
            anyhow::Ok(answer.body["rows"].as_u64().unwrap_or(0))
        }
    }))
    .buffer_unordered(4);
    let mut rows = 0;
    while let Some(r) = results.next().await {
        rows += r?;
    }
    eprintln!(
        "loaded {rows} rows in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A personal access token for Kent's PCC analyst, as a tool that stores a password
/// (Power BI, an ODBC DSN) would use: 30 days, any purpose.
fn personal_token(data_dir: &Path) -> anyhow::Result<String> {
    let tokens = concordat_store::tokens::Tokens::open(data_dir);
    let (text, _) = tokens
        .create(concordat_store::tokens::NewToken {
            name: "demo: Power BI and Excel".to_owned(),
            partner: "pcc-kent".parse().map_err(|e| anyhow!("{e}"))?,
            created_by: "concordat demo".to_owned(),
            roles: vec![Role::Analyst],
            purposes: Vec::new(),
            days: 30,
        })
        .map_err(|e| anyhow!(e))?;
    Ok(text)
}

fn print_welcome(
    args: &DemoArgs,
    base: &str,
    bound: concordat_server::Bound,
    pat: &str,
    signer: &DevSigner,
) -> anyhow::Result<()> {
    let token = |partner: &str, roles: &[Role]| {
        signer
            .issue(&format!("demo-user@{partner}"), partner, roles, TOKEN_TTL)
            .map_err(|e| anyhow!(e))
    };
    let kent = token("pcc-kent", &[Role::Analyst])?;
    let probation = token("probation", &[Role::Uploader, Role::Analyst])?;
    let hmicfrs = token("hmicfrs", &[Role::Inspector])?;
    let kent_force = token("force-kent", &[Role::Uploader, Role::Analyst])?;
    let auditor = token("operator", &[Role::Auditor])?;
    let dir = args.dir.display();
    let flight_text = match bound.flight {
        None => String::new(),
        Some(at) => {
            let scheme = if at.ip().is_loopback() {
                "grpc"
            } else {
                "grpc+tls"
            };
            format!(
                r#"
Arrow Flight SQL (pandas/polars through ADBC: pip install adbc-driver-flightsql pyarrow pandas):
  import adbc_driver_flightsql.dbapi as flight
  conn = flight.connect("{scheme}://{at}", db_kwargs={{"adbc.flight.sql.authorization_header": "Bearer {pat}",
      "adbc.flight.sql.rpc.call_header.concordat-purpose": "performance-scrutiny"}})
  cur = conn.cursor(); cur.execute("SELECT quarter, indicator, avg(value) AS mean FROM force_performance GROUP BY 1, 2 ORDER BY 1, 2")
  print(cur.fetch_df())
"#
            )
        }
    };
    let pg_text = match bound.pg {
        None => String::new(),
        Some(pg) => {
            let (host, port) = (pg.ip(), pg.port());
            format!(
                r#"
Postgres wire (psql, Power BI, Excel, DBeaver): user any name, password a token, database = purpose.
A personal access token for Kent's PCC analyst (30 days; more: concordat token create --config {dir}/concordat.toml ...):
export KENT_PAT={pat}
  PGPASSWORD="$KENT_PAT" psql "host={host} port={port} dbname=performance-scrutiny user=kent sslmode=require"
  # then: \dt   \d force_performance   SELECT indicator, avg(value) FROM force_performance GROUP BY indicator;
ODBC (Excel: Data > Get Data > From ODBC; needs the PostgreSQL Unicode driver):
  Driver={{PostgreSQL Unicode}};Server={host};Port={port};Database=performance-scrutiny;Uid=kent;Pwd={pat};SSLmode=require
Power BI: Get Data > PostgreSQL database, server {host}:{port}, database performance-scrutiny, Database credentials: any user, the token as password.
psycopg (Python):
  import psycopg
  with psycopg.connect(host="{host}", port={port}, dbname="performance-scrutiny", user="kent", password="{pat}", sslmode="require") as conn:
      rows = conn.execute("SELECT quarter, avg(value) FROM force_performance WHERE indicator = %s GROUP BY quarter ORDER BY quarter", ("knife_offences",)).fetchall()
      print(rows)
"#
            )
        }
    };
    println!(
        r#"
Concordat demo is serving at {base}   (data and keys in {dir})
Web console: {base}/console/   (sign in with one of the tokens below; API description: {base}/v1/openapi.json)

Tokens, valid 8 hours (more: concordat token issue --config {dir}/concordat.toml --partner ID --role ROLE):
export KENT_PCC_TOKEN={kent}
export PROBATION_TOKEN={probation}
export HMICFRS_TOKEN={hmicfrs}
export KENT_FORCE_TOKEN={kent_force}
export AUDITOR_TOKEN={auditor}

Try, in another shell after pasting the exports:
  curl -s -H "Authorization: Bearer $KENT_PCC_TOKEN" {base}/v1/me
  curl -s -H "Authorization: Bearer $KENT_PCC_TOKEN" {base}/v1/datasets
  curl -s -H "Authorization: Bearer $HMICFRS_TOKEN" {base}/v1/datasets/force_performance
  # SQL under your agreements: Kent's analyst sees Kent's rows, whatever the query
  concordat query --url {base} --token "$KENT_PCC_TOKEN" --purpose performance-scrutiny "SELECT indicator, avg(value) AS mean, avg(baseline_value) AS baseline FROM force_performance WHERE quarter >= '2024Q1' GROUP BY indicator ORDER BY indicator"
  # Probation re-sends its file: the same bytes are a duplicate (200, no new version)
  concordat upload --url {base} --token "$PROBATION_TOKEN" --mode replace_periods reoffending_cohort {dir}/synth/reoffending_cohort.parquet
  # Kent Police may upload only Kent rows: Essex's file is refused with 422 and the rows named
  concordat upload --url {base} --token "$KENT_FORCE_TOKEN" force_performance {dir}/synth/force_performance/essex.parquet
  # Reoffending is aggregate-only for a PCC: real SQL, small cells withheld, counts rounded
  concordat query --url {base} --token "$KENT_PCC_TOKEN" --purpose reducing-reoffending "SELECT age_band, count(*) AS offenders, avg(CASE WHEN reoffended THEN 100.0 ELSE 0 END) AS pct_reoffending FROM reoffending_cohort WHERE cohort_quarter LIKE '2023%' GROUP BY age_band ORDER BY age_band"
  # HMICFRS: the efficiency comparison for 2023-24 as a spreadsheet (data + notes sheets)
  concordat extract efficiency --url {base} --token "$HMICFRS_TOKEN" --financial-year 2023-24 --format xlsx --out efficiency-2023-24.xlsx
{pg_text}{flight_text}
Press Ctrl-C to stop.
"#
    );
    use std::io::Write;
    std::io::stdout().flush()?;
    Ok(())
}
