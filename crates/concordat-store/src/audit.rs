//! The audit trail: an append-only log of JSON lines, each event chained to the previous
//! by SHA-256, synced to disk before the append returns, so an event is durable before
//! the response it describes completes. A head file records the last sequence number and
//! hash, so removing events from the end is detected as surely as altering one.
//!
//! On a shared object store (replicas) the trail is one chain for every replica: each
//! group commit is one object, `audit/<first seq>.jsonl`, written only if absent. A
//! replica that loses the race for a sequence number reads the winner's events, chains
//! its own after them and tries the next number, so the chain has no gap, no fork and
//! no duplicate, and an event is acknowledged only once its object is on the store. A
//! local copy of what has been read serves the reading routes.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::StoreError;

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A dataset an event touched, at a version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatasetVersion {
    /// Dataset name.
    pub dataset: String,
    /// Version read or written, if any.
    pub version: Option<u64>,
}

/// What happened, as the caller fills it in.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EventBody {
    /// Token subject, if authenticated.
    pub subject: Option<String>,
    /// Partner, if authenticated.
    pub partner: Option<String>,
    /// Roles of the token.
    pub roles: Vec<String>,
    /// `query`, `upload`, `extract`, `audit_read`.
    pub action: String,
    /// `ok`, `refused`, `failed`, `cancelled`.
    pub outcome: String,
    /// HTTP status answered.
    pub status: u16,
    /// Error code, when not ok.
    pub code: Option<String>,
    /// Datasets and versions read or written.
    pub datasets: Vec<DatasetVersion>,
    /// Agreements applied.
    pub agreements: Vec<String>,
    /// Declared purpose.
    pub purpose: Option<String>,
    /// SQL text.
    pub sql: Option<String>,
    /// SHA-256 of the SQL text.
    pub sql_sha256: Option<String>,
    /// Rows returned or written.
    pub rows: Option<u64>,
    /// Bytes returned or received.
    pub bytes: Option<u64>,
    /// Wall time, milliseconds.
    pub duration_ms: u64,
    /// Action-specific detail (upload mode and hash, disclosure record...).
    pub detail: Option<serde_json::Value>,
    /// The door the request came through, when not HTTP (`pg`, `flight`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub door: Option<String>,
    /// True when the answer was one kept from an identical earlier query over the same
    /// table versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached: Option<bool>,
}

/// One event of the log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEvent {
    /// 1, 2, 3... without gaps.
    pub seq: u64,
    /// RFC 3339 time.
    pub time: String,
    /// What happened.
    #[serde(flatten)]
    pub body: EventBody,
    /// Hash of the previous event (zeros for the first).
    pub prev_hash: String,
    /// SHA-256 over `prev_hash` and this event with `hash` empty.
    pub hash: String,
}

impl AuditEvent {
    fn compute_hash(&self) -> String {
        let mut unhashed = self.clone();
        unhashed.hash = String::new();
        let json = serde_json::to_string(&unhashed).unwrap_or_default();
        let mut h = Sha256::new();
        h.update(self.prev_hash.as_bytes());
        h.update(b"\n");
        h.update(json.as_bytes());
        hex::encode(h.finalize())
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Head {
    seq: u64,
    hash: String,
}

struct Tail {
    file: File,
    seq: u64,
    hash: String,
    /// The local head file, open for writing in place; `None` on a shared store, and
    /// when the head named an event the log no longer holds (kept as evidence).
    head: Option<File>,
}

/// A local head is one record of fixed length, rewritten in place.
const HEAD_LEN: usize = 160;

fn head_record(seq: u64, hash: &str) -> Vec<u8> {
    let mut out = serde_json::to_vec(&Head {
        seq,
        hash: hash.to_owned(),
    })
    .unwrap_or_default();
    out.resize(HEAD_LEN - 1, b' ');
    out.push(b'\n');
    out
}

/// Opens the local head of a log that ends at event `seq`. A head behind the log (a
/// crash before it reached the disk) is brought up to date; a head ahead of it means
/// events were removed from the end while the gateway was stopped, so it is left as it
/// is, never rewritten, for `verify` to report.
fn open_head(path: &Path, seq: u64, hash: &str) -> Result<Option<File>, StoreError> {
    use std::os::unix::fs::FileExt;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(head_path(path))
        .map_err(StoreError::internal)?;
    let text = std::fs::read(head_path(path)).map_err(StoreError::internal)?;
    if let Ok(h) = serde_json::from_slice::<Head>(&text)
        && (h.seq > seq || (h.seq == seq && h.hash != hash))
    {
        tracing::error!(
            path = %path.display(),
            log_ends_at = seq,
            head = h.seq,
            "the audit log ends before the event its head names: events were removed from the end"
        );
        return Ok(None);
    }
    file.set_len(HEAD_LEN as u64)
        .map_err(StoreError::internal)?;
    file.write_all_at(&head_record(seq, hash), 0)
        .map_err(StoreError::internal)?;
    file.sync_data().map_err(StoreError::internal)?;
    Ok(Some(file))
}

/// An event waiting to be written, and where its outcome goes.
struct Waiting {
    body: EventBody,
    reply: std::sync::mpsc::SyncSender<Result<AuditEvent, String>>,
}

/// The log, open for appending.
pub struct AuditLog {
    /// The log (or, on a shared store, the local copy of what has been read of it).
    path: PathBuf,
    /// The end of the chain: for a local log its file; on a shared store the local copy,
    /// and the last event this replica knows of.
    tail: Mutex<Tail>,
    /// Events waiting for the next group commit, and whether a writer is at work.
    queue: Mutex<(Vec<Waiting>, bool)>,
    /// The shared store holding the trail, and the last event copied locally.
    shared: Option<(crate::shared::Shared, Mutex<u64>)>,
}

/// The object holding the events from `first` on.
fn segment_key(first: u64) -> String {
    format!("audit/{first:020}.jsonl")
}

/// The object recording the last event written (for detecting removal from the end).
const SHARED_HEAD: &str = "audit-head.json";

/// The last event of a segment's text.
fn last_event(text: &[u8]) -> Option<AuditEvent> {
    text.split(|b| *b == b'\n')
        .rev()
        .find_map(|l| serde_json::from_slice::<AuditEvent>(l).ok())
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish()
    }
}

fn head_path(path: &Path) -> PathBuf {
    path.with_extension("head")
}

/// Appends `lines` and syncs them: the events are durable when this returns. The head
/// is then rewritten in place, not synced: it follows the log to disk within the
/// kernel's writeback, so after a crash it may lag behind the log but never lead it.
fn write_durably(
    file: &mut File,
    head: Option<&File>,
    lines: &[u8],
    seq: u64,
    hash: &str,
) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let e = |e: std::io::Error| e.to_string();
    file.write_all(lines).map_err(e)?;
    file.sync_data().map_err(e)?;
    if let Some(head) = head {
        head.write_all_at(&head_record(seq, hash), 0).map_err(e)?;
    }
    Ok(())
}

impl AuditLog {
    /// Opens (creating) the log. A torn last line, from a crash during an append that was
    /// therefore never acknowledged, is cut off.
    pub fn open(path: &Path) -> Result<AuditLog, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(StoreError::internal)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(StoreError::internal)?;
        let len = file.metadata().map_err(StoreError::internal)?.len();
        let mut good_len = 0u64;
        let (mut seq, mut hash) = (0u64, GENESIS.to_owned());
        {
            let mut reader = BufReader::new(&file);
            reader
                .seek(SeekFrom::Start(0))
                .map_err(StoreError::internal)?;
            let mut line = String::new();
            loop {
                line.clear();
                let n = reader.read_line(&mut line).map_err(StoreError::internal)?;
                if n == 0 || !line.ends_with('\n') {
                    break;
                }
                good_len += n as u64;
                if let Ok(ev) = serde_json::from_str::<AuditEvent>(line.trim_end()) {
                    seq = ev.seq;
                    hash = ev.hash;
                }
            }
        }
        if good_len < len {
            file.set_len(good_len).map_err(StoreError::internal)?;
            tracing::warn!(path = %path.display(), "cut a torn audit record left by a crash");
        }
        file.seek(SeekFrom::End(0)).map_err(StoreError::internal)?;
        let head = open_head(path, seq, &hash)?;
        Ok(AuditLog {
            path: path.to_owned(),
            tail: Mutex::new(Tail {
                file,
                seq,
                hash,
                head,
            }),
            queue: Mutex::new((Vec::new(), false)),
            shared: None,
        })
    }

    /// Opens the trail on a shared store, keeping the local copy for reading at `copy`
    /// (emptied now, filled as events are read).
    pub fn open_shared(shared: crate::shared::Shared, copy: &Path) -> Result<AuditLog, StoreError> {
        if let Some(dir) = copy.parent() {
            std::fs::create_dir_all(dir).map_err(StoreError::internal)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(true)
            .open(copy)
            .map_err(StoreError::internal)?;
        let last = shared.block_on(|store| async move {
            let listed = store.list("audit", None).await?;
            match listed.last() {
                Some((key, _)) => {
                    Ok::<_, StoreError>(store.get(key).await?.as_deref().and_then(last_event))
                }
                None => Ok(None),
            }
        })?;
        let (seq, hash) = last.map_or((0, GENESIS.to_owned()), |e| (e.seq, e.hash));
        Ok(AuditLog {
            path: copy.to_owned(),
            tail: Mutex::new(Tail {
                file,
                seq,
                hash,
                head: None,
            }),
            queue: Mutex::new((Vec::new(), false)),
            shared: Some((shared, Mutex::new(0))),
        })
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends an event and syncs it to disk before returning it.
    ///
    /// Group commit: events appended at the same time share one write and one sync. The
    /// first caller to find no writer at work becomes the writer and commits every event
    /// queued until the queue is empty; the others wait for their event's outcome. No
    /// call returns before its event is durable.
    pub fn append(&self, body: EventBody) -> Result<AuditEvent, StoreError> {
        let (reply, outcome) = std::sync::mpsc::sync_channel(1);
        let lead = {
            let mut q = self
                .queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            q.0.push(Waiting { body, reply });
            !std::mem::replace(&mut q.1, true)
        };
        if lead {
            loop {
                let batch = {
                    let mut q = self
                        .queue
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if q.0.is_empty() {
                        q.1 = false;
                        break;
                    }
                    std::mem::take(&mut q.0)
                };
                self.commit(batch);
            }
        }
        match outcome.recv() {
            Ok(r) => r.map_err(StoreError::Internal),
            Err(_) => Err(StoreError::Internal("the audit writer went away".into())),
        }
    }

    /// Writes a batch of events with one write and one sync (on a shared store, one
    /// object), then tells each its outcome.
    fn commit(&self, batch: Vec<Waiting>) {
        let mut tail = self
            .tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (bodies, replies): (Vec<EventBody>, Vec<_>) =
            batch.into_iter().map(|w| (w.body, w.reply)).unzip();
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let written = match &self.shared {
            None => chain(&bodies, tail.seq, &tail.hash, &time).and_then(|(lines, events)| {
                let (seq, hash) = events
                    .last()
                    .map_or((tail.seq, tail.hash.clone()), |e| (e.seq, e.hash.clone()));
                let tail = &mut *tail;
                write_durably(&mut tail.file, tail.head.as_ref(), &lines, seq, &hash)?;
                Ok(events)
            }),
            Some((shared, _)) => Self::write_shared(shared, &mut tail, &bodies, &time),
        };
        match written {
            Ok(events) => {
                if let Some(last) = events.last() {
                    tail.seq = last.seq;
                    tail.hash = last.hash.clone();
                }
                for (reply, e) in replies.into_iter().zip(events) {
                    let _ = reply.send(Ok(e));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Writes a batch as the next object of the shared chain: if another replica took
    /// that sequence number first, its events are read, the batch is chained after them,
    /// and the next number is tried.
    fn write_shared(
        shared: &crate::shared::Shared,
        tail: &mut Tail,
        bodies: &[EventBody],
        time: &str,
    ) -> Result<Vec<AuditEvent>, String> {
        for _ in 0..1000 {
            let (lines, events) = chain(bodies, tail.seq, &tail.hash, time)?;
            let key = segment_key(tail.seq + 1);
            let k = key.clone();
            let created = shared
                .block_on(|store| async move { store.put_new(&k, lines.into()).await })
                .map_err(|e| e.to_string())?;
            if created {
                if let Some(last) = events.last() {
                    // Best effort, not waited for: the head only helps detect removal of
                    // the newest objects.
                    let head = serde_json::to_vec(&Head {
                        seq: last.seq,
                        hash: last.hash.clone(),
                    })
                    .unwrap_or_default();
                    shared.spawn(|store| async move {
                        let _ = store.put(SHARED_HEAD, head.into()).await;
                    });
                }
                return Ok(events);
            }
            let k = key.clone();
            let theirs = shared
                .block_on(|store| async move { store.get(&k).await })
                .map_err(|e| e.to_string())?
                .as_deref()
                .and_then(last_event)
                .ok_or_else(|| format!("{key} on the shared store holds no event"))?;
            tail.seq = theirs.seq;
            tail.hash = theirs.hash;
        }
        Err("the shared audit trail is too busy: no free sequence number after 1000 tries".into())
    }

    /// Events with `seq > after`, up to `limit`, that `keep` accepts.
    pub fn read(
        &self,
        after: u64,
        limit: usize,
        keep: &dyn Fn(&AuditEvent) -> bool,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let mut out = Vec::new();
        self.scan(&mut |ev| {
            if ev.seq > after && keep(&ev) {
                out.push(ev);
            }
            out.len() < limit
        })?;
        Ok(out)
    }

    /// Events with `seq < before` that `keep` accepts, newest first, up to `limit`.
    pub fn read_newest(
        &self,
        before: u64,
        limit: usize,
        keep: &dyn Fn(&AuditEvent) -> bool,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let mut last = std::collections::VecDeque::with_capacity(limit.min(1024));
        self.scan(&mut |ev| {
            if ev.seq >= before {
                return false;
            }
            if keep(&ev) {
                if last.len() == limit {
                    last.pop_front();
                }
                last.push_back(ev);
            }
            true
        })?;
        Ok(last.into_iter().rev().collect())
    }

    /// Every event of the log, oldest first, until `each` says stop (no append meanwhile).
    fn scan(&self, each: &mut dyn FnMut(AuditEvent) -> bool) -> Result<(), StoreError> {
        if let Some((shared, copied)) = &self.shared {
            let mut copied = copied
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *copied = self.copy_from_shared(shared, *copied)?;
            drop(copied);
            return self.scan_file(each);
        }
        let _tail = self
            .tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.scan_file(each)
    }

    /// Appends to the local copy every event of the shared trail after `copied`, one
    /// object at a time; returns the last event copied.
    fn copy_from_shared(
        &self,
        shared: &crate::shared::Shared,
        copied: u64,
    ) -> Result<u64, StoreError> {
        let keys = shared.block_on(|store| async move {
            store.list("audit", Some(&segment_key(copied))).await
        })?;
        let mut last = copied;
        for (key, _) in keys {
            let Some(seg) = shared.block_on(|store| async move { store.get(&key).await })? else {
                continue;
            };
            let mut lines = Vec::with_capacity(seg.len());
            for line in seg.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let Ok(ev) = serde_json::from_slice::<AuditEvent>(line) else {
                    continue;
                };
                if ev.seq <= last {
                    continue;
                }
                last = ev.seq;
                lines.extend_from_slice(line);
                lines.push(b'\n');
            }
            if !lines.is_empty() {
                let mut f = OpenOptions::new()
                    .append(true)
                    .open(&self.path)
                    .map_err(StoreError::internal)?;
                f.write_all(&lines).map_err(StoreError::internal)?;
            }
        }
        Ok(last)
    }

    /// Every event of the file, oldest first, until `each` says stop.
    fn scan_file(&self, each: &mut dyn FnMut(AuditEvent) -> bool) -> Result<(), StoreError> {
        let file = File::open(&self.path).map_err(StoreError::internal)?;
        for line in BufReader::new(file).lines() {
            let line = line.map_err(StoreError::internal)?;
            let Ok(ev) = serde_json::from_str::<AuditEvent>(&line) else {
                continue;
            };
            if !each(ev) {
                break;
            }
        }
        Ok(())
    }
}

/// The result of checking a log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Events read.
    pub events: u64,
    /// The first broken link: line number (1-based) and what is wrong.
    pub broken: Option<(u64, String)>,
}

/// Follows the chain event by event; the first broken link is kept.
struct Checker {
    prev: String,
    seq: u64,
    events: u64,
}

impl Checker {
    fn new() -> Checker {
        Checker {
            prev: GENESIS.to_owned(),
            seq: 0,
            events: 0,
        }
    }

    /// Checks the next line; what is wrong with it, if anything.
    fn line(&mut self, line: &[u8]) -> Option<String> {
        let ev: AuditEvent = match serde_json::from_slice(line) {
            Ok(ev) => ev,
            Err(_) => return Some("the line is not an audit event".into()),
        };
        if ev.seq != self.seq + 1 {
            return Some(format!(
                "sequence {} follows {}: events were removed or reordered",
                ev.seq, self.seq
            ));
        }
        if ev.prev_hash != self.prev {
            return Some(format!(
                "event {} does not chain to the event before it: an event was removed, reordered or altered",
                ev.seq
            ));
        }
        if ev.compute_hash() != ev.hash {
            return Some(format!("event {} was altered after it was written", ev.seq));
        }
        self.prev = ev.hash;
        self.seq = ev.seq;
        self.events += 1;
        None
    }

    /// The verdict, given the recorded head (if any).
    fn finish(self, head: Option<Head>) -> Verification {
        let broken = head.filter(|h| h.seq > self.seq || (h.seq == self.seq && h.hash != self.prev)).map(|h| {
            (
                self.events + 1,
                format!(
                    "the log ends at event {} but event {} was written: events were removed from the end",
                    self.seq, h.seq
                ),
            )
        });
        Verification {
            events: self.events,
            broken,
        }
    }

    fn broken(&self, why: String) -> Verification {
        Verification {
            events: self.events,
            broken: Some((self.events + 1, why)),
        }
    }
}

/// Checks every link of a log and its head: the first altered, removed or reordered
/// event is reported.
pub fn verify(path: &Path) -> Result<Verification, StoreError> {
    let file =
        File::open(path).map_err(|e| StoreError::NotFound(format!("{}: {e}", path.display())))?;
    // The head follows the log to disk, so after a crash it may lag behind the log's
    // end, but the event it names must be in the log, as it was written.
    let head = std::fs::read(head_path(path))
        .ok()
        .and_then(|text| serde_json::from_slice::<Head>(&text).ok());
    let mut check = Checker::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(StoreError::internal)?;
        if let Some(why) = check.line(line.as_bytes()) {
            return Ok(check.broken(why));
        }
        if let Some(h) = &head
            && h.seq == check.seq
            && h.hash != check.prev
        {
            return Ok(Verification {
                events: check.events - 1,
                broken: Some((
                    check.events,
                    format!("event {} is not the event the head names", h.seq),
                )),
            });
        }
    }
    Ok(check.finish(head))
}

/// Checks the whole shared trail, every replica's events, object by object: each object
/// must start where its name says and continue the chain.
pub async fn verify_shared(shared: &crate::shared::Shared) -> Result<Verification, StoreError> {
    let mut check = Checker::new();
    for (key, _) in shared.list("audit", None).await? {
        let Some(text) = shared.get(&key).await? else {
            continue;
        };
        if key != segment_key(check.seq + 1) {
            let why = format!(
                "{key} does not follow event {}: the trail was altered",
                check.seq
            );
            return Ok(check.broken(why));
        }
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if let Some(why) = check.line(line) {
                return Ok(check.broken(why));
            }
        }
    }
    // The shared head is written after the events, so it may lag but never lead.
    let head = shared
        .get(SHARED_HEAD)
        .await?
        .and_then(|b| serde_json::from_slice::<Head>(&b).ok());
    Ok(check.finish(head))
}

impl AuditLog {
    /// Checks the whole trail (`concordat audit verify`).
    pub async fn verify(self: &std::sync::Arc<Self>) -> Result<Verification, StoreError> {
        if let Some((shared, _)) = &self.shared {
            return verify_shared(shared).await;
        }
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || verify(&path))
            .await
            .map_err(StoreError::internal)?
    }
}

/// Chains `bodies` after event `seq` (hash `hash`): their lines and the events.
fn chain(
    bodies: &[EventBody],
    mut seq: u64,
    hash: &str,
    time: &str,
) -> Result<(Vec<u8>, Vec<AuditEvent>), String> {
    let mut hash = hash.to_owned();
    let mut lines = Vec::new();
    let mut events = Vec::with_capacity(bodies.len());
    for body in bodies {
        let mut event = AuditEvent {
            seq: seq + 1,
            time: time.to_owned(),
            body: body.clone(),
            prev_hash: hash.clone(),
            hash: String::new(),
        };
        event.hash = event.compute_hash();
        let line = serde_json::to_vec(&event).map_err(|e| e.to_string())?;
        lines.extend_from_slice(&line);
        lines.push(b'\n');
        seq = event.seq;
        hash = event.hash.clone();
        events.push(event);
    }
    Ok((lines, events))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(action: &str) -> EventBody {
        EventBody {
            action: action.into(),
            outcome: "ok".into(),
            status: 200,
            partner: Some("pcc-kent".into()),
            ..EventBody::default()
        }
    }

    fn log_with(n: usize) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit/audit.log");
        let log = AuditLog::open(&path).expect("open");
        for i in 0..n {
            log.append(body(&format!("query{i}"))).expect("append");
        }
        (dir, path)
    }

    #[test]
    fn concurrent_appends_share_syncs_and_keep_one_unbroken_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit/audit.log");
        let log = std::sync::Arc::new(AuditLog::open(&path).expect("open"));
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    (0..50)
                        .map(|i| log.append(body(&format!("q{t}-{i}"))).expect("append").seq)
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        let mut seqs: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().expect("thread"))
            .collect();
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (1..=800).collect::<Vec<u64>>(),
            "every event once, no gaps"
        );
        let v = verify(&path).expect("verify");
        assert_eq!((v.events, v.broken), (800, None));
        // Reopened, the chain continues where it ended.
        drop(log);
        let log = AuditLog::open(&path).expect("reopen");
        assert_eq!(log.append(body("after")).expect("append").seq, 801);
        assert!(verify(&path).expect("verify").broken.is_none());
    }

    fn rewrite(path: &Path, f: impl FnOnce(&mut Vec<String>)) {
        let mut lines: Vec<String> = std::fs::read_to_string(path)
            .expect("read")
            .lines()
            .map(str::to_owned)
            .collect();
        f(&mut lines);
        std::fs::write(path, lines.join("\n") + "\n").expect("write");
    }

    #[test]
    fn an_intact_log_verifies_and_reopening_continues_the_chain() {
        let (_d, path) = log_with(5);
        assert_eq!(
            verify(&path).expect("verify"),
            Verification {
                events: 5,
                broken: None
            }
        );
        let log = AuditLog::open(&path).expect("reopen");
        assert_eq!(log.append(body("more")).expect("append").seq, 6);
        assert_eq!(verify(&path).expect("verify").broken, None);
        assert_eq!(
            log.read(4, 10, &|_| true)
                .expect("read")
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>(),
            vec![5, 6]
        );
    }

    #[test]
    fn altered_removed_reordered_and_truncated_events_are_reported_at_the_first_broken_line() {
        let (_d, path) = log_with(6);
        rewrite(&path, |l| l[2] = l[2].replace("query2", "query9"));
        assert_eq!(
            verify(&path).expect("v").broken.map(|b| b.0),
            Some(3),
            "altered"
        );
        let (_d, path) = log_with(6);
        rewrite(&path, |l| {
            l.remove(3);
        });
        assert_eq!(
            verify(&path).expect("v").broken.map(|b| b.0),
            Some(4),
            "removed"
        );
        let (_d, path) = log_with(6);
        rewrite(&path, |l| l.swap(1, 2));
        assert_eq!(
            verify(&path).expect("v").broken.map(|b| b.0),
            Some(2),
            "reordered"
        );
        let (_d, path) = log_with(6);
        rewrite(&path, |l| l.truncate(4));
        let v = verify(&path).expect("v");
        assert!(
            v.broken
                .as_ref()
                .is_some_and(|b| b.1.contains("removed from the end")),
            "{v:?}"
        );
        let (_d, path) = log_with(3);
        let mut text = std::fs::read_to_string(&path).expect("read");
        let mut ev: AuditEvent =
            serde_json::from_str(text.lines().nth(1).expect("line")).expect("event");
        ev.body.rows = Some(1);
        ev.hash = ev.compute_hash();
        let forged = serde_json::to_string(&ev).expect("json");
        text = text.replacen(text.lines().nth(1).expect("line"), &forged, 1);
        std::fs::write(&path, text).expect("write");
        assert_eq!(
            verify(&path).expect("v").broken.map(|b| b.0),
            Some(3),
            "a re-hashed forgery breaks the next link"
        );
    }

    #[test]
    fn a_head_may_lag_after_a_crash_but_a_removal_while_stopped_stays_reported() {
        // A head behind the log (it had not reached the disk) is not a removal, and
        // reopening brings it up to date.
        let (_d, path) = log_with(5);
        let lines: Vec<String> = std::fs::read_to_string(&path)
            .expect("read")
            .lines()
            .map(str::to_owned)
            .collect();
        let third: AuditEvent = serde_json::from_str(&lines[2]).expect("event");
        std::fs::write(head_path(&path), head_record(3, &third.hash)).expect("head");
        assert_eq!(verify(&path).expect("verify").broken, None);
        drop(AuditLog::open(&path).expect("reopen"));
        let head: Head =
            serde_json::from_slice(&std::fs::read(head_path(&path)).expect("head")).expect("parse");
        assert_eq!(head.seq, 5);
        // A lagging head must still name an event as it was written.
        std::fs::write(head_path(&path), head_record(3, GENESIS)).expect("head");
        assert_eq!(verify(&path).expect("verify").broken.map(|b| b.0), Some(3));
        // Events removed from the end while stopped: appending afterwards does not
        // hide it, because the head is left as evidence.
        let (_d, path) = log_with(6);
        rewrite(&path, |l| l.truncate(4));
        let log = AuditLog::open(&path).expect("reopen");
        assert_eq!(log.append(body("after")).expect("append").seq, 5);
        drop(log);
        assert!(verify(&path).expect("verify").broken.is_some());
    }

    #[test]
    fn a_torn_last_line_is_cut_at_open() {
        let (_d, path) = log_with(2);
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"seq\":3,\"ti").expect("torn");
        let log = AuditLog::open(&path).expect("reopen");
        assert_eq!(log.append(body("after")).expect("append").seq, 3);
        assert_eq!(
            verify(&path).expect("v"),
            Verification {
                events: 3,
                broken: None
            }
        );
    }
}
