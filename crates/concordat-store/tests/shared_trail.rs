//! The audit trail and token register on a shared store, written by several replicas.

use std::sync::Arc;

use concordat_store::audit::{AuditLog, EventBody, verify_shared};

use crate::support::*;

fn body(action: &str) -> EventBody {
    EventBody {
        action: action.to_owned(),
        outcome: "ok".into(),
        status: 200,
        ..EventBody::default()
    }
}

#[tokio::test]
async fn replicas_append_to_one_gapless_chain_and_tampering_is_found() {
    let f = fixture_on(Backend::S3, |_| {});
    let shared = f.shared.clone().expect("shared");
    let logs: Vec<Arc<AuditLog>> = (0..3)
        .map(|i| {
            Arc::new(
                AuditLog::open_shared(shared.clone(), &f.dir.path().join(format!("copy-{i}.log")))
                    .expect("open"),
            )
        })
        .collect();
    // Three replicas, four writers each, appending at once.
    let mut seqs: Vec<u64> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..12)
            .map(|t| {
                let log = logs[t % 3].clone();
                scope.spawn(move || {
                    (0..10)
                        .map(|i| log.append(body(&format!("q{t}-{i}"))).expect("append").seq)
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("writer"))
            .collect()
    });
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=120).collect::<Vec<u64>>(),
        "a gap or a duplicate"
    );
    let v = verify_shared(&shared).await.expect("verify");
    assert_eq!((v.events, v.broken), (120, None));
    // Every replica reads every event, its own and the others'.
    for log in &logs {
        let log = log.clone();
        let read = tokio::task::spawn_blocking(move || log.read(0, usize::MAX, &|_| true))
            .await
            .expect("join")
            .expect("read");
        assert_eq!(read.len(), 120);
    }
    // A replica opened later continues the chain.
    let late = AuditLog::open_shared(shared.clone(), &f.dir.path().join("late.log")).expect("open");
    assert_eq!(late.append(body("late")).expect("append").seq, 121);

    // Altering an event inside an object breaks the chain at that event.
    let objects = shared.list("audit", None).await.expect("list");
    let (key, _) = &objects[objects.len() / 2];
    let text = shared.get(key).await.expect("get").expect("there");
    let altered = String::from_utf8_lossy(&text).replacen("\"ok\"", "\"refused\"", 1);
    shared
        .put(key, altered.into_bytes().into())
        .await
        .expect("put");
    let v = verify_shared(&shared).await.expect("verify");
    assert!(
        v.broken
            .as_ref()
            .is_some_and(|(_, why)| why.contains("altered")),
        "{v:?}"
    );
    shared.put(key, text).await.expect("restore");
    assert_eq!(verify_shared(&shared).await.expect("verify").broken, None);

    // Removing the newest object is found by the head.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let objects = shared.list("audit", None).await.expect("list");
    let (last, _) = objects.last().expect("last");
    shared.delete(last).await.expect("delete");
    let v = verify_shared(&shared).await.expect("verify");
    assert!(
        v.broken
            .as_ref()
            .is_some_and(|(_, why)| why.contains("removed")),
        "{v:?}"
    );
}
