//! Decoding, validation and the writing of data files in a child process, so that a
//! hostile file can at worst kill its own worker, never the server, and the server never
//! parses an uploaded byte. Decoding Parquet allocates what page headers declare
//! before checking it (arrow-rs #10734); in the worker that allocation meets an
//! `RLIMIT_DATA` bound and a wall-clock limit, and the upload is refused with 422.
//!
//! The protocol is one JSON request on the worker's stdin and one JSON answer on stdout.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use concordat_core::Schemas;
use concordat_policy::ScopeFilter;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::StoreError;
use crate::check::Checked;
use crate::inspect::FileLimits;
use crate::violation::Violations;

/// How uploads are validated.
#[derive(Debug, Clone, Default)]
pub enum Validator {
    /// In the server process (tests, embedding).
    #[default]
    InProcess,
    /// In a child process: `program args...`, with a data-segment limit and a timeout.
    Worker {
        /// The executable.
        program: PathBuf,
        /// Arguments that make it a worker.
        args: Vec<String>,
        /// `RLIMIT_DATA` of the worker, bytes.
        memory_bytes: u64,
        /// Wall-clock limit.
        timeout: Duration,
    },
}

/// What the worker is asked.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerRequest {
    /// The staged file.
    pub path: PathBuf,
    /// Dataset name.
    pub dataset: String,
    /// Rows the uploader may write.
    pub scope: ScopeFilter,
    /// Agreements granting the upload.
    pub agreements: Vec<String>,
    /// Footer limits.
    pub limits: FileLimits,
    /// Rows per decoded batch.
    pub batch_rows: usize,
    /// `RLIMIT_DATA` the worker sets on itself before reading the file.
    pub memory_bytes: u64,
    /// Where the worker writes the data files of a valid upload.
    pub out_dir: PathBuf,
}

/// What the worker answers.
#[derive(Debug, Serialize, Deserialize)]
pub enum WorkerAnswer {
    /// Every row passed; the data files are written.
    Valid(Checked),
    /// Rules were broken.
    Invalid(Violations),
    /// Something else went wrong.
    Failed(String),
}

/// The worker's main: read a request, limit memory, validate, answer.
pub fn serve_one(input: &mut dyn Read, output: &mut dyn Write) -> std::io::Result<()> {
    let mut text = String::new();
    input.read_to_string(&mut text)?;
    let answer = match serde_json::from_str::<WorkerRequest>(&text) {
        Err(e) => WorkerAnswer::Failed(format!("bad request: {e}")),
        Ok(req) => {
            rlimit::setrlimit(rlimit::Resource::DATA, req.memory_bytes, req.memory_bytes)?;
            match Schemas::builtin().get(&req.dataset) {
                None => WorkerAnswer::Failed(format!("unknown dataset {}", req.dataset)),
                Some(schema) => match crate::check::check_file(
                    &req.path,
                    schema,
                    &req.scope,
                    &req.agreements,
                    &req.limits,
                    req.batch_rows,
                    &req.out_dir,
                ) {
                    Ok(checked) => WorkerAnswer::Valid(checked),
                    Err(StoreError::Validation(v)) => WorkerAnswer::Invalid(v),
                    Err(e) => WorkerAnswer::Failed(format!("{e:?}")),
                },
            }
        }
    };
    serde_json::to_writer(&mut *output, &answer)?;
    output.flush()
}

fn over_limits() -> StoreError {
    StoreError::Validation(Violations::of_file(
        "limits",
        "the file could not be decoded within the validation memory and time limits: it declares pages or values too large to check",
    ))
}

/// Runs one validation in a worker process.
///
/// The worker runs with glibc's default allocator settings, not the server's: it lives
/// for one file and gives everything back as it exits, and mapping and unmapping each
/// buffer of 1 MiB or more cost it a fifth of its time (page faults and zeroing).
/// `RLIMIT_DATA` bounds it either way.
pub async fn validate_in_worker(
    program: &PathBuf,
    args: &[String],
    timeout: Duration,
    request: &WorkerRequest,
) -> Result<Checked, StoreError> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env_remove("MALLOC_ARENA_MAX")
        .env_remove("MALLOC_MMAP_THRESHOLD_")
        .env_remove("MALLOC_TRIM_THRESHOLD_")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| StoreError::Internal(format!("cannot start the validation worker: {e}")))?;
    let body = serde_json::to_vec(request).map_err(StoreError::internal)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&body).await.map_err(StoreError::internal)?;
    }
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(out) => out.map_err(StoreError::internal)?,
        // The child is killed as it is dropped.
        Err(_) => return Err(over_limits()),
    };
    if !output.status.success() {
        tracing::warn!(status = ?output.status, "validation worker died");
        return Err(over_limits());
    }
    match serde_json::from_slice::<WorkerAnswer>(&output.stdout) {
        Ok(WorkerAnswer::Valid(checked)) => Ok(checked),
        Ok(WorkerAnswer::Invalid(v)) => Err(StoreError::Validation(v)),
        Ok(WorkerAnswer::Failed(e)) => Err(StoreError::Internal(e)),
        Err(_) => Err(over_limits()),
    }
}
