//! One job's round close holds up no one: while a plain round is being averaged (here: stuck
//! reading an update file that the test turned into a FIFO), the same job's status, another
//! job's status, a join to another job and a new launch are all answered, and the round still
//! closes on exactly its updates once the file can be read.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use conclave_crypto::Identity;
use conclave_participant::client::download_model;
use conclave_proto::v1::{self, work_item::Item};
use conclave_tests::{TestCoordinator, client, launcher, wdbc_job, wdbc_job_starting_at};
use tokio_stream::StreamExt;

/// Answers within this or the request counts as held up (a deadlock would never answer).
const PATIENCE: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("{what} was held up by the round being averaged"))
}

/// Feeds `bytes` into the FIFO at `path` from a thread: it reports when the coordinator
/// opened the FIFO to read it, then writes once released (or once the test is gone).
fn feed(
    path: PathBuf,
    bytes: Vec<u8>,
) -> (std::sync::mpsc::Receiver<()>, std::sync::mpsc::Sender<()>) {
    let (opened_tx, opened) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        // Blocks until a reader opens the FIFO.
        let mut fifo = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let _ = opened_tx.send(());
        let _ = released.recv();
        fifo.write_all(&bytes).unwrap();
    });
    (opened, release)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_round_being_averaged_holds_up_no_other_request() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = TestCoordinator::start(dir.path()).await;
    // Three hospitals train, two updates are enough: the round closes at its deadline with
    // the two that came.
    let deadline_secs = 8;
    let busy = coordinator
        .launch(&wdbc_job_starting_at(1, 2, 3, deadline_secs))
        .await;
    let other = coordinator.launch(&wdbc_job(1, 1, 600)).await;
    let dim = coordinator.info(&busy).await.dim as usize;
    let mut hospitals = Vec::new();
    for _ in 0..3 {
        let mut c = client(&coordinator, Identity::generate()).await;
        c.join(&busy, false).await.unwrap();
        hospitals.push(c);
    }
    for c in hospitals.iter_mut() {
        let mut work = c.work(&busy).await.unwrap();
        while let Some(Ok(item)) = work.next().await {
            if matches!(item.item, Some(Item::Train(_))) {
                break;
            }
        }
    }
    let deltas = [vec![0.5f32; dim], vec![-0.25f32; dim]];
    hospitals[0].upload(&busy, 1, 30, &deltas[0]).await.unwrap();

    // The first update's durable file becomes a FIFO holding the same bytes.
    let did = hospitals[0].identity().participant_id().to_string();
    let file = dir
        .path()
        .join("jobs")
        .join(&busy)
        .join("rounds")
        .join("1")
        .join(format!("{}.update", did.replace(':', "_")));
    let bytes = std::fs::read(&file).expect("the update is stored where the test expects");
    std::fs::remove_file(&file).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&file)
        .status()
        .unwrap();
    assert!(made.success());
    let (opened, release) = feed(file, bytes);

    // At the deadline the close starts reading the updates, and waits.
    hospitals[1].upload(&busy, 1, 10, &deltas[1]).await.unwrap();
    tokio::task::spawn_blocking(move || {
        opened
            .recv_timeout(PATIENCE + Duration::from_secs(deadline_secs as u64))
            .expect("the close reads the updates")
    })
    .await
    .unwrap();

    // Meanwhile everything else is answered.
    let info = within("GetJob of the closing job", coordinator.info(&busy)).await;
    assert_eq!(
        info.rounds[0].state,
        v1::RoundState::Open as i32,
        "the round is still being averaged"
    );
    assert_eq!(info.model_version, 0);
    within("GetJob of another job", coordinator.info(&other)).await;
    let mut newcomer = client(&coordinator, Identity::generate()).await;
    within("a join to another job", newcomer.join(&other, false))
        .await
        .unwrap();
    within("a launch", coordinator.launch(&wdbc_job(1, 1, 600))).await;
    // The third hospital's update, arriving now, is refused (the round is closing with the
    // updates it has), not acknowledged and then left out.
    let late = within(
        "a late upload",
        hospitals[2].upload(&busy, 1, 10, &deltas[1]),
    )
    .await
    .unwrap_err();
    assert!(late.to_string().contains("closing"), "{late}");

    release.send(()).unwrap();
    let info = coordinator.wait_for_model(&busy, 1).await;
    assert_eq!(info.rounds[0].state, v1::RoundState::Closed as i32);
    assert_eq!(info.rounds[0].uploaded_count, 2);
    let mut rounds = coordinator.rounds().await;
    let v0 = download_model(&mut rounds, Some(launcher()), &busy, 0, None)
        .await
        .unwrap();
    let v1 = download_model(&mut rounds, Some(launcher()), &busy, 1, None)
        .await
        .unwrap();
    for (a, b) in v0.iter().zip(&v1) {
        // (30 * 0.5 + 10 * -0.25) / 40 = 0.3125
        assert!((b - a - 0.3125).abs() < 1e-6);
    }
    coordinator.stop().await;
}
