//! `concordat`: the gateway's command line. Thin: parse, call a library, report.

mod client;
mod demo;
mod shipped;
mod tokens;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand};
use concordat_policy::Policies;
use concordat_server::Config;
use concordat_synth::Synth;

#[derive(Parser)]
#[command(
    name = "concordat",
    version,
    about = "Criminal-justice data-sharing gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gateway.
    Serve {
        /// Configuration file (TOML); CONCORDAT_* variables override it.
        #[arg(long)]
        config: PathBuf,
    },
    /// Make (or reuse) a demo directory, serve it with synthetic data, print tokens.
    Demo {
        /// Directory for configuration, keys and data.
        #[arg(long, default_value = "demo")]
        dir: PathBuf,
        /// Address to serve on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
        /// Address of the Postgres wire door (psql, Power BI, Excel through ODBC).
        #[arg(long, default_value = "127.0.0.1:5433")]
        pg_addr: SocketAddr,
        /// Address of the Arrow Flight SQL door (ADBC from pandas or polars).
        #[arg(long, default_value = "127.0.0.1:50051")]
        flight_addr: SocketAddr,
        /// Synthetic data scale: 1.0 is about a million rows per record-level dataset.
        #[arg(long, default_value_t = 0.05)]
        scale: f64,
        /// Seed of the synthetic data.
        #[arg(long, default_value_t = 2022)]
        seed: u64,
    },
    /// Write synthetic Parquet for every partner dataset.
    Synth {
        /// Output directory: DIR/<dataset>.parquet.
        #[arg(long)]
        out: PathBuf,
        /// 1.0 is about a million rows each of reoffending_cohort and court_timeliness.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Same seed, same bytes.
        #[arg(long, default_value_t = 2022)]
        seed: u64,
        /// Only these forces (slugs, e.g. kent); all when absent.
        #[arg(long = "force")]
        forces: Vec<String>,
        /// Only these datasets; every partner dataset when absent.
        #[arg(long = "dataset")]
        datasets: Vec<String>,
    },
    /// Development tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Upload a Parquet file to a dataset.
    Upload {
        /// Gateway base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Bearer token.
        #[arg(long, env = "CONCORDAT_TOKEN", hide_env_values = true)]
        token: String,
        /// append, or replace_periods.
        #[arg(long, default_value = "append")]
        mode: String,
        /// Dataset name.
        dataset: String,
        /// Parquet file.
        file: PathBuf,
    },
    /// Policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Run SQL through the gateway under your agreements.
    Query {
        /// Gateway base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Bearer token.
        #[arg(long, env = "CONCORDAT_TOKEN", hide_env_values = true)]
        token: String,
        /// Purpose the query serves (must be permitted by an agreement).
        #[arg(long)]
        purpose: String,
        /// json, ndjson, csv, arrow or parquet.
        #[arg(long, default_value = "csv")]
        format: String,
        /// Write the answer to a file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// The SQL.
        sql: String,
    },
    /// Download an extract (the police efficiency dataset for one financial year).
    Extract {
        /// What to extract.
        #[command(subcommand)]
        what: ExtractCommand,
    },
    /// Validate one upload described on standard input (started by the server).
    #[command(hide = true)]
    ValidateWorker,
    /// Delete the data files of versions older than the retention period.
    Vacuum {
        /// The gateway's configuration (data directory, retention).
        #[arg(long)]
        config: PathBuf,
        /// Only this dataset; every stored dataset when absent.
        #[arg(long)]
        dataset: Option<String>,
        /// Days of versions to keep; the configuration's `store.log_retention_days` when absent.
        #[arg(long)]
        retain_days: Option<u32>,
        /// Say what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum ExtractCommand {
    /// The police efficiency dataset for one financial year, with its manifest (inside
    /// the file for parquet, xlsx and json; beside it as FILE.manifest.json for csv).
    Efficiency {
        /// Gateway base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Bearer token.
        #[arg(long, env = "CONCORDAT_TOKEN", hide_env_values = true)]
        token: String,
        /// Financial year, YYYY-YY.
        #[arg(long)]
        financial_year: String,
        /// csv, parquet, xlsx or json.
        #[arg(long, default_value = "xlsx")]
        format: String,
        /// Purpose (default: the first your agreements permit for this dataset).
        #[arg(long)]
        purpose: Option<String>,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check every link of the hash chain; report the first altered, removed or reordered event.
    Verify {
        /// Configuration of the gateway whose log to check.
        #[arg(long, conflicts_with = "log")]
        config: Option<PathBuf>,
        /// Or the log file itself.
        #[arg(long)]
        log: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a JWT signed with the development key of a configuration.
    Issue {
        /// Configuration naming the development key.
        #[arg(long)]
        config: PathBuf,
        /// Partner id (from partners.toml).
        #[arg(long)]
        partner: String,
        /// Role; repeat or separate with commas.
        #[arg(long = "role", value_delimiter = ',', required = true)]
        roles: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// Subject; defaults to dev@<partner>.
        #[arg(long)]
        subject: Option<String>,
    },
    /// Create a personal access token (`cct_...`), printed once and kept only as a hash.
    Create {
        /// Configuration of the gateway (its data directory holds the register).
        #[arg(long)]
        config: PathBuf,
        /// Partner id (from partners.toml).
        #[arg(long)]
        partner: String,
        /// Role; repeat or separate with commas.
        #[arg(long = "role", value_delimiter = ',', required = true)]
        roles: Vec<String>,
        /// Purpose the token may declare; repeat for several (default: any).
        #[arg(long = "purpose")]
        purposes: Vec<String>,
        /// Days until it expires (1 to 366).
        #[arg(long, default_value_t = 90)]
        days: u32,
        /// A name for lists.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List personal access tokens (never their secrets).
    List {
        /// Configuration of the gateway.
        #[arg(long)]
        config: PathBuf,
        /// Only this partner's.
        #[arg(long)]
        partner: Option<String>,
    },
    /// Revoke a personal access token by id.
    Revoke {
        /// Configuration of the gateway.
        #[arg(long)]
        config: PathBuf,
        /// The token's id (from `token list`).
        id: String,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policies directory; explains the first error.
    Check {
        /// Directory holding partners.toml and the agreements.
        #[arg(long, default_value = "policies")]
        dir: PathBuf,
    },
    /// Say which agreement and rule allow or refuse a partner reading a dataset, and why.
    Explain {
        /// Directory holding partners.toml and the agreements.
        #[arg(long, default_value = "policies")]
        dir: PathBuf,
        /// Partner id.
        #[arg(long)]
        partner: String,
        /// Dataset.
        #[arg(long)]
        dataset: String,
        /// Purpose.
        #[arg(long)]
        purpose: String,
        /// Day to decide for (YYYY-MM-DD); today when absent.
        #[arg(long)]
        on: Option<chrono::NaiveDate>,
    },
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CONCORDAT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The allocator settings a long-running server gets: glibc's malloc otherwise keeps
/// what a large upload or rebuild freed (a per-thread arena for each of its threads and
/// a threshold that grows as large blocks are freed), and the process stays hundreds of
/// MiB above what it uses. Buffers from 1 MiB up are mapped and returned when freed;
/// two arenas. glibc reads these only as a process starts, so the server starts itself
/// again with them (same process id) unless the operator set any of them.
const MALLOC_SETTINGS: [(&str, &str); 3] = [
    ("MALLOC_ARENA_MAX", "2"),
    ("MALLOC_MMAP_THRESHOLD_", "1048576"),
    ("MALLOC_TRIM_THRESHOLD_", "1048576"),
];

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn with_server_malloc_settings(cli: &Cli) {
    use std::os::unix::process::CommandExt;
    let serving = matches!(cli.command, Command::Serve { .. } | Command::Demo { .. });
    if !serving
        || MALLOC_SETTINGS
            .iter()
            .any(|(k, _)| std::env::var_os(k).is_some())
    {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let _ = args.next();
    let err = std::process::Command::new(exe)
        .args(args)
        .envs(MALLOC_SETTINGS)
        .exec();
    // Only reached if the exec failed: go on with the defaults.
    eprintln!("warning: could not restart with the server's allocator settings: {err}");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn with_server_malloc_settings(_: &Cli) {
    let _ = MALLOC_SETTINGS;
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    with_server_malloc_settings(&cli);
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// This binary as the server's validation worker.
pub fn worker_command() -> Option<(PathBuf, Vec<String>)> {
    std::env::current_exe()
        .ok()
        .map(|exe| (exe, vec!["validate-worker".to_owned()]))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::ValidateWorker = cli.command {
        // No runtime, no threads: the worker only decodes one file under its limits.
        concordat_store::worker::serve_one(&mut std::io::stdin(), &mut std::io::stdout())?;
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve { config } => {
            init_logging("info");
            let cfg = Config::load(&config).map_err(|e| anyhow!("{e}"))?;
            runtime
                .block_on(concordat_server::serve(cfg, worker_command(), |bound| {
                    println!("concordat listening on http://{}", bound.http);
                    if let Some(pg) = bound.pg {
                        println!("concordat postgres wire on {pg}");
                    }
                    if let Some(flight) = bound.flight {
                        println!("concordat flight sql on {flight}");
                    }
                    use std::io::Write;
                    let _ = std::io::stdout().flush();
                }))
                .map_err(|e| anyhow!(e))
        }
        Command::Demo {
            dir,
            addr,
            pg_addr,
            flight_addr,
            scale,
            seed,
        } => {
            init_logging("warn");
            runtime.block_on(demo::run(demo::DemoArgs {
                dir,
                addr,
                pg_addr,
                flight_addr,
                scale,
                seed,
            }))
        }
        Command::Synth {
            out,
            scale,
            seed,
            forces,
            datasets,
        } => {
            if !(scale > 0.0 && scale <= 100.0) {
                bail!("--scale must be above 0 and at most 100");
            }
            let slugs: Vec<&str> = forces.iter().map(String::as_str).collect();
            for s in &slugs {
                if concordat_core::Reference::builtin()
                    .force_by_slug(s)
                    .is_none()
                {
                    bail!("--force {s}: not a force slug (see schemas/police_forces.csv)");
                }
            }
            for d in &datasets {
                if !concordat_synth::DATASETS.contains(&d.as_str()) {
                    bail!(
                        "--dataset {d}: not a partner dataset ({})",
                        concordat_synth::DATASETS.join(", ")
                    );
                }
            }
            let started = std::time::Instant::now();
            let only: Vec<&str> = datasets.iter().map(String::as_str).collect();
            for (path, rows) in Synth::new(scale, seed)
                .only(&slugs)
                .write_all(&out, &only)?
            {
                println!("{rows:>10} rows  {}", path.display());
            }
            eprintln!("done in {:.1}s", started.elapsed().as_secs_f64());
            Ok(())
        }
        Command::Token { command } => tokens::run(command),
        Command::Upload {
            url,
            token,
            mode,
            dataset,
            file,
        } => runtime.block_on(async {
            let answer = client::upload(
                &reqwest::Client::new(),
                &url,
                &token,
                &dataset,
                &mode,
                &file,
            )
            .await?;
            match client::violation_table(&answer.body) {
                Some(table) if answer.status == 422 => eprintln!("{table}"),
                _ => println!("{}", serde_json::to_string_pretty(&answer.body)?),
            }
            client::expect_success(&answer, &format!("upload of {}", file.display()))
        }),
        Command::Policy {
            command:
                PolicyCommand::Explain {
                    dir,
                    partner,
                    dataset,
                    purpose,
                    on,
                },
        } => {
            let policies = Policies::load(&dir)
                .with_context(|| format!("policies in {} are not valid", dir.display()))?;
            let e = policies.explain(
                &partner,
                &dataset,
                &purpose,
                on.unwrap_or_else(|| chrono::Utc::now().date_naive()),
            );
            for line in &e.lines {
                println!("{line}");
            }
            if e.allowed {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
        Command::ValidateWorker => Ok(()),
        Command::Vacuum {
            config,
            dataset,
            retain_days,
            dry_run,
        } => {
            let cfg = Config::load(&config).map_err(|e| anyhow!("{e}"))?;
            let days = retain_days.unwrap_or(cfg.store.log_retention_days);
            if days < 1 {
                bail!(
                    "--retain-days must be at least 1: younger files may belong to a commit in flight"
                );
            }
            let location = cfg.location().map_err(|e| anyhow!("{e}"))?;
            let store_cfg = concordat_store::StoreConfig::new(&cfg.data_dir).on(&location);
            let store = concordat_store::Store::open(store_cfg).map_err(|e| anyhow!("{e:?}"))?;
            let names: Vec<String> = match dataset {
                Some(d) => vec![d],
                None => concordat_core::Schemas::builtin()
                    .iter()
                    .map(|s| s.name.to_string())
                    .collect(),
            };
            runtime.block_on(async {
                for name in names {
                    match store
                        .vacuum(
                            &name,
                            std::time::Duration::from_secs(u64::from(days) * 86_400),
                            dry_run,
                        )
                        .await
                    {
                        Ok(n) => println!(
                            "{name}: {n} data files {}",
                            if dry_run {
                                "would be removed"
                            } else {
                                "removed"
                            }
                        ),
                        Err(concordat_store::StoreError::NotFound(_)) => {}
                        Err(e) => bail!("{name}: {e:?}"),
                    }
                }
                Ok(())
            })
        }
        Command::Query {
            url,
            token,
            purpose,
            format,
            out,
            sql,
        } => runtime.block_on(client::query(
            &url,
            &token,
            &purpose,
            &format,
            &sql,
            out.as_deref(),
        )),
        Command::Extract {
            what:
                ExtractCommand::Efficiency {
                    url,
                    token,
                    financial_year,
                    format,
                    purpose,
                    out,
                },
        } => runtime.block_on(client::extract_efficiency(
            &url,
            &token,
            &financial_year,
            &format,
            purpose.as_deref(),
            out.as_deref(),
        )),
        Command::Audit {
            command: AuditCommand::Verify { config, log },
        } => {
            let path = match (config, log) {
                (_, Some(log)) => log,
                (Some(config), None) => {
                    let cfg = Config::load(&config).map_err(|e| anyhow!("{e}"))?;
                    match cfg.location().map_err(|e| anyhow!("{e}"))? {
                        concordat_store::Location::Local(dir) => {
                            dir.join("audit").join("audit.log")
                        }
                        concordat_store::Location::Shared(shared) => {
                            let v = runtime
                                .block_on(concordat_store::audit::verify_shared(&shared))
                                .map_err(|e| anyhow!("{e}"))?;
                            return match v.broken {
                                None => {
                                    println!(
                                        "{}/audit: {} events, every link intact",
                                        shared.url(),
                                        v.events
                                    );
                                    Ok(())
                                }
                                Some((n, why)) => {
                                    bail!("{}/audit: broken at event {n}: {why}", shared.url())
                                }
                            };
                        }
                    }
                }
                (None, None) => bail!("name the gateway's --config or the --log file"),
            };
            let v = concordat_store::audit::verify(&path).map_err(|e| anyhow!("{e}"))?;
            match v.broken {
                None => {
                    println!("{}: {} events, every link intact", path.display(), v.events);
                    Ok(())
                }
                Some((line, why)) => bail!("{}: broken at line {line}: {why}", path.display()),
            }
        }
        Command::Policy {
            command: PolicyCommand::Check { dir },
        } => {
            let policies = Policies::load(&dir)
                .with_context(|| format!("policies in {} are not valid", dir.display()))?;
            println!(
                "{}: {} partners, {} agreements, all valid",
                dir.display(),
                policies.partners().len(),
                policies.agreements().len()
            );
            for a in policies.agreements() {
                println!(
                    "  {:<40} {} to {}  {}",
                    a.id, a.valid_from, a.valid_until, a.title
                );
            }
            Ok(())
        }
    }
}
