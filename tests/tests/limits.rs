//! The operator's stream bounds, tried over gRPC: a participant that stalls an upload is cut
//! after the idle timeout, one that opens more uploads or work streams than allowed is refused,
//! ledger follow streams are capped; each refusal names its setting, and other participants'
//! uploads go through meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use conclave_coordinator::ServerPolicy;
use conclave_coordinator::limits::StreamLimits;
use conclave_crypto::Identity;
use conclave_participant::client::sign;
use conclave_proto::v1::{
    self, ledger_client::LedgerClient, rounds_client::RoundsClient, upload_chunk::Part,
};
use conclave_tests::{TestCoordinator, client, le_bytes, plain_header, test_policy, wdbc_job};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// Asserts a refusal's code and that its message names `setting`.
fn refused(status: &tonic::Status, code: Code, setting: &str) {
    assert_eq!(status.code(), code, "{}", status.message());
    assert!(status.message().contains(setting), "{}", status.message());
}

fn policy(streams: StreamLimits) -> ServerPolicy {
    ServerPolicy {
        streams,
        ..test_policy()
    }
}

/// A job whose first round is open, with `alice` and `bob` in it; returns the job and its dim.
async fn open_round(
    coordinator: &TestCoordinator,
    alice: &Arc<Identity>,
    bob: &Arc<Identity>,
) -> (String, usize) {
    let job = coordinator.launch(&wdbc_job(1, 2, 600)).await;
    for who in [alice, bob] {
        client(coordinator, Arc::clone(who))
            .await
            .join(&job, false)
            .await
            .unwrap();
    }
    let started = Instant::now();
    while coordinator.info(&job).await.rounds.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no round opened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dim = coordinator.info(&job).await.dim as usize;
    (job, dim)
}

fn upload(header: v1::UploadHeader, values: &[f32]) -> Vec<v1::UploadChunk> {
    vec![
        v1::UploadChunk {
            part: Some(Part::Header(header)),
        },
        v1::UploadChunk {
            part: Some(Part::Data(le_bytes(values))),
        },
    ]
}

/// An upload of `values` by `who` that has sent its header only: the rest goes through the
/// sender, and the call's answer comes from the task.
async fn header_only(
    coordinator: &TestCoordinator,
    who: &Identity,
    job: &str,
    values: &[f32],
) -> (
    tokio::sync::mpsc::Sender<v1::UploadChunk>,
    tokio::task::JoinHandle<Result<tonic::Response<v1::UploadReceipt>, tonic::Status>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(v1::UploadChunk {
        part: Some(Part::Header(plain_header(who, job, 1, 10, values))),
    })
    .await
    .unwrap();
    let mut rounds = coordinator.rounds().await;
    let call = tokio::spawn(async move { rounds.upload_update(ReceiverStream::new(rx)).await });
    (tx, call)
}

async fn send(
    coordinator: &TestCoordinator,
    messages: Vec<v1::UploadChunk>,
) -> Result<(), tonic::Status> {
    coordinator
        .rounds()
        .await
        .upload_update(tokio_stream::iter(messages))
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_is_cut_and_a_second_one_refused_while_others_upload() {
    let dir = tempfile::tempdir().unwrap();
    let limits = StreamLimits {
        uploads_per_participant: 1,
        upload_idle: Duration::from_secs(2),
        ..StreamLimits::default()
    };
    let coordinator = TestCoordinator::start_with(dir.path(), policy(limits)).await;
    let (alice, bob) = (
        Arc::new(Identity::generate()),
        Arc::new(Identity::generate()),
    );
    let (job, dim) = open_round(&coordinator, &alice, &bob).await;
    let values = vec![0.01f32; dim];

    // Alice sends a header and then nothing.
    let opened = Instant::now();
    let (tx, stalled) = header_only(&coordinator, &alice, &job, &values).await;
    // Her header is checked and her place taken before anything else is tried.
    let did = alice.participant_id();
    while coordinator.state.open_uploads(&job, &did) == 0 {
        assert!(!stalled.is_finished(), "the stalled upload ended early");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A second upload of hers is refused while the first holds her place ...
    let status = send(
        &coordinator,
        upload(plain_header(&alice, &job, 1, 10, &values), &values),
    )
    .await
    .unwrap_err();
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("--max-uploads-per-participant")
            && status
                .message()
                .contains(&alice.participant_id().to_string()),
        "{}",
        status.message()
    );
    // ... while Bob's goes through.
    send(
        &coordinator,
        upload(plain_header(&bob, &job, 1, 10, &values), &values),
    )
    .await
    .unwrap();

    // The stalled stream is cut after the idle timeout, though its sender is still there.
    let status = tokio::time::timeout(Duration::from_secs(60), stalled)
        .await
        .expect("the stalled upload was never cut")
        .unwrap()
        .unwrap_err();
    refused(&status, Code::DeadlineExceeded, "--upload-idle-secs");
    let waited = opened.elapsed();
    assert!(waited >= Duration::from_secs(2), "cut after {waited:?}");
    drop(tx);
    // Her place is free again: her upload now completes the round.
    send(
        &coordinator,
        upload(plain_header(&alice, &job, 1, 10, &values), &values),
    )
    .await
    .unwrap();
    coordinator.wait_for_model(&job, 1).await;
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_and_ledger_streams_are_capped_and_places_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let limits = StreamLimits {
        work_streams_per_participant: 2,
        ledger_streams: 1,
        upload_idle: Duration::from_secs(1),
        ..StreamLimits::default()
    };
    let coordinator = TestCoordinator::start_with(dir.path(), policy(limits)).await;
    let (alice, bob) = (
        Arc::new(Identity::generate()),
        Arc::new(Identity::generate()),
    );
    let (job, _) = open_round(&coordinator, &alice, &bob).await;

    let mut a = client(&coordinator, Arc::clone(&alice)).await;
    let first = a.work(&job).await.unwrap();
    let _second = a.work(&job).await.unwrap();
    let err = a.work(&job).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
    assert!(
        err.to_string()
            .contains("--max-work-streams-per-participant"),
        "{err}"
    );
    // Bob's own place is untouched.
    let _bob = client(&coordinator, Arc::clone(&bob))
        .await
        .work(&job)
        .await
        .unwrap();
    // A closed stream gives its place back (once the server sees it gone).
    drop(first);
    let started = Instant::now();
    while let Err(e) = a.work(&job).await {
        assert_eq!(e.code(), Some(Code::ResourceExhausted), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the place never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // One ledger stream in all: a second one, following or not, is refused.
    let follow = |who: &Identity, follow: bool| {
        let mut req = v1::LedgerRequest {
            from_index: 0,
            follow,
            auth: None,
        };
        sign(who, &mut req);
        req
    };
    let channel = conclave_participant::client::connect(&coordinator.url)
        .await
        .unwrap();
    let mut ledger = LedgerClient::new(channel);
    let held = ledger.entries(follow(&alice, true)).await.unwrap();
    let status = ledger.entries(follow(&bob, true)).await.unwrap_err();
    refused(&status, Code::ResourceExhausted, "--max-ledger-streams");
    let status = ledger.entries(follow(&bob, false)).await.unwrap_err();
    refused(&status, Code::ResourceExhausted, "--max-ledger-streams");
    drop(held);
    let started = Instant::now();
    while let Err(status) = ledger.entries(follow(&bob, true)).await {
        assert_eq!(
            status.code(),
            Code::ResourceExhausted,
            "{}",
            status.message()
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the follow place never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reader_holds_few_ledger_streams_and_a_headerless_stream_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let limits = StreamLimits {
        upload_idle: Duration::from_secs(2),
        ..StreamLimits::default()
    };
    let coordinator = TestCoordinator::start_with(dir.path(), policy(limits)).await;
    let (alice, bob) = (
        Arc::new(Identity::generate()),
        Arc::new(Identity::generate()),
    );
    let (job, dim) = open_round(&coordinator, &alice, &bob).await;

    // A reader's own share of ledger streams; another reader still gets one.
    let channel = conclave_participant::client::connect(&coordinator.url)
        .await
        .unwrap();
    let mut ledger = LedgerClient::new(channel);
    let follow = |who: &Identity| {
        let mut req = v1::LedgerRequest {
            from_index: 0,
            follow: true,
            auth: None,
        };
        sign(who, &mut req);
        req
    };
    let mut held = Vec::new();
    for _ in 0..conclave_coordinator::limits::STREAMS_PER_READER {
        held.push(ledger.entries(follow(&alice)).await.unwrap());
    }
    let status = ledger.entries(follow(&alice)).await.unwrap_err();
    refused(
        &status,
        Code::ResourceExhausted,
        "4 ledger streams per reader",
    );
    assert!(
        status
            .message()
            .contains(&alice.participant_id().to_string())
    );
    let _bob = ledger.entries(follow(&bob)).await.unwrap();

    // A stream that never sends its header is cut after one idle period.
    let (_tx, rx) = tokio::sync::mpsc::channel::<v1::UploadChunk>(1);
    let mut rounds = coordinator.rounds().await;
    let headerless =
        tokio::spawn(async move { rounds.upload_update(ReceiverStream::new(rx)).await });
    let status = tokio::time::timeout(Duration::from_secs(60), headerless)
        .await
        .expect("the headerless stream was never cut")
        .unwrap()
        .unwrap_err();
    refused(&status, Code::DeadlineExceeded, "--upload-idle-secs");
    assert!(
        status.message().starts_with("no message for 2"),
        "{}",
        status.message()
    );

    // An empty data chunk is refused; a real upload then goes through.
    let values = vec![0.01f32; dim];
    let empty = vec![
        v1::UploadChunk {
            part: Some(Part::Header(plain_header(&alice, &job, 1, 10, &values))),
        },
        v1::UploadChunk {
            part: Some(Part::Data(Vec::new())),
        },
    ];
    let status = send(&coordinator, empty).await.unwrap_err();
    refused(&status, Code::InvalidArgument, "empty data chunk");
    send(
        &coordinator,
        upload(plain_header(&alice, &job, 1, 10, &values), &values),
    )
    .await
    .unwrap();
    coordinator.stop().await;
}

/// A job whose model spans many download chunks (an MLP of about 4.3M parameters, 17 MB).
fn large_job() -> conclave_aggregation::JobSpec {
    let mut spec = wdbc_job(1, 2, 600);
    spec.model = conclave_aggregation::ModelArch::Mlp {
        hidden: vec![4096, 1024],
    };
    spec
}

fn download(job: &str, who: &Identity) -> v1::DownloadModelRequest {
    let mut req = v1::DownloadModelRequest {
        job_id: job.into(),
        model_version: 0,
        auth: None,
    };
    sign(who, &mut req);
    req
}

async fn rounds_of(coordinator: &TestCoordinator) -> RoundsClient<tonic::transport::Channel> {
    conclave_participant::client::rounds_client(
        conclave_participant::client::connect(&coordinator.url)
            .await
            .unwrap(),
    )
}

/// A download of `job`'s initial model by `who`, on a connection of its own (a reader that
/// does not read holds its connection's flow-control window).
async fn open_download(
    coordinator: &TestCoordinator,
    job: &str,
    who: &Identity,
) -> tonic::Streaming<v1::ModelChunk> {
    rounds_of(coordinator)
        .await
        .download_model(download(job, who))
        .await
        .unwrap()
        .into_inner()
}

async fn read_all(mut stream: tonic::Streaming<v1::ModelChunk>) -> usize {
    let mut bytes = 0;
    while let Some(chunk) = stream.message().await.unwrap() {
        bytes += chunk.data.len();
    }
    bytes
}

/// Polls `done` every 10 ms for up to 60 s.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(60), "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A coordinator with one download place and a job with a large model; its dim.
async fn one_download_place(
    dir: &std::path::Path,
    idle: Duration,
) -> (TestCoordinator, String, usize) {
    let limits = StreamLimits {
        downloads: 1,
        upload_idle: idle,
        ..StreamLimits::default()
    };
    let coordinator = TestCoordinator::start_with(dir, policy(limits)).await;
    let job = coordinator.launch(&large_job()).await;
    let dim = coordinator.info(&job).await.dim as usize;
    assert!(dim * 4 >= 8 * conclave_proto::MAX_CHUNK_BYTES, "{dim}");
    (coordinator, job, dim)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_waits_for_the_servers_place_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let (coordinator, job, dim) = one_download_place(dir.path(), Duration::from_secs(20)).await;
    let (alice, bob) = (Identity::generate(), Identity::generate());
    // Alice holds the one place; Bob (on a connection of his own: Alice's unread data holds
    // hers) waits for it, and gets it when her download ends.
    let mut first = open_download(&coordinator, &job, &alice).await;
    first.message().await.unwrap().unwrap();
    let mut bobs = rounds_of(&coordinator).await;
    let req = download(&job, &bob);
    let waiting = tokio::spawn(async move { bobs.download_model(req).await });
    until("Bob waits", || coordinator.state.download_load() == (1, 1)).await;
    assert!(read_all(first).await > 0);
    let bobs = waiting
        .await
        .unwrap()
        .expect("Bob waited for the place and got it");
    assert_eq!(read_all(bobs.into_inner()).await, dim * 4);
    until("the place is back", || {
        coordinator.state.download_load() == (0, 0)
    })
    .await;
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_is_cut_and_told_so() {
    let dir = tempfile::tempdir().unwrap();
    let (coordinator, job, dim) = one_download_place(dir.path(), Duration::from_secs(2)).await;
    let (alice, bob) = (Identity::generate(), Identity::generate());
    // Alice reads one chunk and stops reading: once the server gives up on her, its place is
    // back, and her stream, read again, ends with DEADLINE_EXCEEDED, not as if complete.
    let mut stalled = open_download(&coordinator, &job, &alice).await;
    stalled.message().await.unwrap().unwrap();
    until("Alice is cut", || {
        coordinator.state.download_load() == (0, 0)
    })
    .await;
    let status = loop {
        match stalled.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("a cut download looked complete"),
            Err(status) => break status,
        }
    };
    refused(&status, Code::DeadlineExceeded, "the reader took nothing");
    let stream = open_download(&coordinator, &job, &bob).await;
    assert_eq!(read_all(stream).await, dim * 4);
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_beyond_the_upload_buffer_wait_unread_and_then_go_through() {
    let dir = tempfile::tempdir().unwrap();
    // Room for one small update's data at a time.
    let limits = StreamLimits {
        upload_buffer: 1,
        ..StreamLimits::default()
    };
    let coordinator = TestCoordinator::start_with(dir.path(), policy(limits)).await;
    let (alice, bob) = (
        Arc::new(Identity::generate()),
        Arc::new(Identity::generate()),
    );
    let (job, dim) = open_round(&coordinator, &alice, &bob).await;
    let values = vec![0.01f32; dim];

    // Alice's upload takes the room and holds it: her header is in, her data not yet.
    let (tx, first) = header_only(&coordinator, &alice, &job, &values).await;
    until("alice's upload holds the buffer", || {
        coordinator.state.upload_buffer_load().0 > 0
    })
    .await;

    // Bob's whole upload is sent, and waits for room instead of being read.
    let second = {
        let messages = upload(plain_header(&bob, &job, 1, 10, &values), &values);
        let mut rounds = coordinator.rounds().await;
        tokio::spawn(async move { rounds.upload_update(tokio_stream::iter(messages)).await })
    };
    until("bob's upload waits for room", || {
        coordinator.state.upload_buffer_load().1 == 1
    })
    .await;
    assert!(!second.is_finished());
    assert_eq!(coordinator.info(&job).await.rounds[0].uploaded_count, 0);

    // Alice's data arrives: her update is stored, the room passes to Bob's, and both count.
    tx.send(v1::UploadChunk {
        part: Some(Part::Data(le_bytes(&values))),
    })
    .await
    .unwrap();
    drop(tx);
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    coordinator.wait_for_model(&job, 1).await;
    assert_eq!(coordinator.state.upload_buffer_load(), (0, 0));
    coordinator.stop().await;
}

/// Exports are kept with the job, so one participant may record only so many formats of one
/// version: the one past the bound is refused, saying so, and the ledger is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_participant_records_a_bounded_number_of_exports_of_a_version() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = TestCoordinator::start_with(dir.path(), test_policy()).await;
    let (alice, bob) = (
        Arc::new(Identity::generate()),
        Arc::new(Identity::generate()),
    );
    let (job, _) = open_round(&coordinator, &alice, &bob).await;
    let mut rounds = rounds_of(&coordinator).await;
    let model =
        conclave_participant::client::download_model(&mut rounds, Some(&alice), &job, 0, None)
            .await
            .unwrap();
    let hash = blake3::hash(&le_bytes(&model)).as_bytes().to_vec();
    let mut a = client(&coordinator, Arc::clone(&alice)).await;
    for i in 0..16 {
        a.record_export(&job, 0, &hash, &format!("f{i}"))
            .await
            .unwrap();
    }
    let before = coordinator.state.ledger().head();
    let err = a.record_export(&job, 0, &hash, "f16").await.unwrap_err();
    assert!(
        err.to_string()
            .contains("the most one participant may record"),
        "{err}"
    );
    assert_eq!(coordinator.state.ledger().head(), before);
    // Another participant, or another version, has bounds of its own.
    let mut b = client(&coordinator, Arc::clone(&bob)).await;
    b.record_export(&job, 0, &hash, "f0").await.unwrap();
    coordinator.stop().await;
}
