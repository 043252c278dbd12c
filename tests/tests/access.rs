//! Who may do what on a coordinator, tried over gRPC as a stranger on the port would: launching
//! takes a launcher's signature, a launch the operator's limits refuse builds nothing, reads
//! take a signature from a launcher or an identity the job admits (unless the server reads
//! publicly), and a signed request is good once.

use std::sync::Arc;

use conclave_coordinator::ServerPolicy;
use conclave_crypto::Identity;
use conclave_participant::client::{download_model, get_job, sign};
use conclave_participant::ledger_sync;
use conclave_proto::v1::{self, ledger_client::LedgerClient};
use conclave_tests::{TestCoordinator, as_launcher, client, launcher, test_policy, wdbc_job};
use tonic::Code;

fn launch_request(signer: Option<&Identity>) -> v1::CreateJobRequest {
    let mut req = v1::CreateJobRequest {
        spec: Some(wdbc_job(1, 2, 600).to_proto()),
        auth: None,
    };
    if let Some(identity) = signer {
        sign(identity, &mut req);
    }
    req
}

/// The jobs the launcher sees (all of them).
async fn job_count(coordinator: &TestCoordinator) -> usize {
    coordinator
        .jobs()
        .await
        .list_jobs(as_launcher(v1::ListJobsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .jobs
        .len()
}

/// Job directories on disk under the coordinator's data directory.
fn job_dirs(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("jobs")).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_launcher_launches_and_limits_refuse_before_anything_is_built() {
    let dir = tempfile::tempdir().unwrap();
    let spec = wdbc_job(1, 2, 600);
    let dim = spec.layout().dim() as u64;
    let policy = ServerPolicy {
        max_jobs: 2,
        ..test_policy()
    };
    let coordinator = TestCoordinator::start_with(dir.path(), policy).await;
    let mut jobs = coordinator.jobs().await;
    let stranger = Identity::generate();
    let entries = || coordinator.state.ledger().head().len;

    let status = jobs.create_job(launch_request(None)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{}", status.message());
    let status = jobs
        .create_job(launch_request(Some(&stranger)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status
            .message()
            .contains(&stranger.participant_id().to_string())
            && status.message().contains("--launcher"),
        "{}",
        status.message()
    );
    assert_eq!(
        (entries(), job_dirs(dir.path())),
        (0, 0),
        "nothing was built"
    );

    let signed = launch_request(Some(launcher()));
    jobs.create_job(signed.clone()).await.unwrap();
    // The same signed launch again is a replay, not a second job.
    let status = jobs.create_job(signed).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{}", status.message());
    assert_eq!(job_count(&coordinator).await, 1);
    let after_one = entries();

    // A model over the operator's limit is refused, and nothing is stored.
    coordinator.stop().await;
    let small = ServerPolicy {
        max_model_params: dim - 1,
        ..test_policy()
    };
    let coordinator = TestCoordinator::start_with(dir.path(), small).await;
    let mut jobs = coordinator.jobs().await;
    let status = jobs
        .create_job(launch_request(Some(launcher())))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("--max-model-params"),
        "{}",
        status.message()
    );
    assert_eq!(coordinator.state.ledger().head().len, after_one);
    assert_eq!(job_dirs(dir.path()), 1);
    coordinator.stop().await;

    // The job limit counts the jobs the server keeps.
    let coordinator = TestCoordinator::start_with(
        dir.path(),
        ServerPolicy {
            max_jobs: 2,
            ..test_policy()
        },
    )
    .await;
    let mut jobs = coordinator.jobs().await;
    jobs.create_job(launch_request(Some(launcher())))
        .await
        .unwrap();
    let status = jobs
        .create_job(launch_request(Some(launcher())))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("--max-jobs"),
        "{}",
        status.message()
    );
    assert_eq!(
        (job_count(&coordinator).await, job_dirs(dir.path())),
        (2, 2)
    );
    coordinator.stop().await;
}

/// Every read of a job as one identity: GetJob, DownloadModel and Ledger.Entries, and how many
/// jobs its ListJobs shows. `None` reads unsigned.
async fn reads(
    coordinator: &TestCoordinator,
    reader: Option<&Identity>,
    job: &str,
) -> (Result<(), Code>, Result<(), Code>, Result<(), Code>, usize) {
    let channel = conclave_participant::client::connect(&coordinator.url)
        .await
        .unwrap();
    let jobs = conclave_participant::client::jobs_client(channel.clone());
    let code = |e: conclave_participant::ParticipantError| e.code().unwrap_or(Code::Unknown);
    let info = get_job(&jobs, reader, job).await.map(|_| ()).map_err(code);
    // The round history is read by whoever may read the job, and by no one else.
    let history = conclave_participant::client::list_rounds(&jobs, reader, job, 1)
        .await
        .map(|_| ())
        .map_err(code);
    assert_eq!(
        history, info,
        "ListRounds and GetJob disagree on who may read"
    );
    let mut rounds = conclave_participant::client::rounds_client(channel.clone());
    let model = download_model(&mut rounds, reader, job, 0, None)
        .await
        .map(|_| ())
        .map_err(code);
    let replica = tempfile::tempdir().unwrap();
    let ledger = ledger_sync::sync(
        &coordinator.url,
        reader,
        &replica.path().join("r.db"),
        false,
        |_| {},
    )
    .await
    .map(|_| ())
    .map_err(|e| match e {
        ledger_sync::SyncError::Connect(e) => code(e),
        other => panic!("{other}"),
    });
    let mut req = v1::ListJobsRequest::default();
    conclave_participant::client::sign_read(reader, &mut req);
    let listed = match jobs.clone().list_jobs(req).await {
        Ok(r) => r.into_inner().jobs.len(),
        Err(s) => {
            assert_eq!(s.code(), Code::Unauthenticated, "{}", s.message());
            usize::MAX
        }
    };
    (info, model, ledger, listed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_signed_by_a_launcher_or_an_identity_the_job_admits() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = TestCoordinator::start(dir.path()).await;
    let (listed, stranger) = (Identity::generate(), Identity::generate());
    let mut closed = wdbc_job(1, 2, 600);
    closed.admission = vec![listed.participant_id()];
    let job = coordinator.launch(&closed).await;

    let ok = (Ok(()), Ok(()), Ok(()));
    let (a, b, c, n) = reads(&coordinator, Some(launcher()), &job).await;
    assert_eq!(((a, b, c), n), (ok, 1));
    let denied = Err(Code::PermissionDenied);
    // Listed, not yet joined: the job, not yet the ledger (which holds every job's entries).
    let (a, b, c, n) = reads(&coordinator, Some(&listed), &job).await;
    assert_eq!(((a, b, c), n), ((Ok(()), Ok(()), denied), 1), "listed");
    let (a, b, c, n) = reads(&coordinator, Some(&stranger), &job).await;
    assert_eq!(((a, b, c), n), ((denied, denied, denied), 0), "a stranger");
    let unsigned = Err(Code::Unauthenticated);
    let (a, b, c, n) = reads(&coordinator, None, &job).await;
    assert_eq!(
        ((a, b, c), n),
        ((unsigned, unsigned, unsigned), usize::MAX),
        "unsigned"
    );

    // The refusal names who was refused.
    let mut jobs = coordinator.jobs().await;
    let mut req = v1::GetJobRequest {
        job_id: job.clone(),
        auth: None,
    };
    sign(&stranger, &mut req);
    let status = jobs.get_job(req).await.unwrap_err();
    assert!(
        status
            .message()
            .contains(&stranger.participant_id().to_string()),
        "{}",
        status.message()
    );
    // A signed read is good once.
    let mut req = v1::GetJobRequest {
        job_id: job.clone(),
        auth: None,
    };
    sign(&listed, &mut req);
    jobs.get_job(req.clone()).await.unwrap();
    let status = jobs.get_job(req).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{}", status.message());

    // Under open admission anyone who signs could join, so may read that job (and a replay of
    // such a read gets nothing a fresh key would not: it is not refused); the stranger still
    // sees neither the closed job nor, having joined nothing, the ledger.
    let open = coordinator.launch(&wdbc_job(1, 2, 600)).await;
    let (_, _, c, n) = reads(&coordinator, Some(&stranger), &job).await;
    assert_eq!((c, n), (denied, 1));
    let (a, b, _, _) = reads(&coordinator, Some(&stranger), &open).await;
    assert_eq!((a, b), (Ok(()), Ok(())));
    let mut req = v1::GetJobRequest {
        job_id: open.clone(),
        auth: None,
    };
    sign(&stranger, &mut req);
    jobs.get_job(req.clone()).await.unwrap();
    jobs.get_job(req).await.unwrap();

    // A participant that joined reads as itself (its session signs every read), the ledger
    // included.
    let listed = Arc::new(listed);
    let mut hospital = client(&coordinator, Arc::clone(&listed)).await;
    hospital.join(&job, false).await.unwrap();
    assert_eq!(hospital.job(&job).await.unwrap().participant_count, 1);
    let (a, b, c, n) = reads(&coordinator, Some(&listed), &job).await;
    assert_eq!(((a, b, c), n), (ok, 2), "joined");
    let mut follow = v1::LedgerRequest {
        from_index: 0,
        follow: false,
        auth: None,
    };
    sign(&listed, &mut follow);
    let mut ledger = LedgerClient::new(
        conclave_participant::client::connect(&coordinator.url)
            .await
            .unwrap(),
    );
    ledger.entries(follow.clone()).await.unwrap();
    let status = ledger.entries(follow).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{}", status.message());
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_read_server_answers_unsigned_reads_but_still_not_strangers_launches() {
    let dir = tempfile::tempdir().unwrap();
    let policy = ServerPolicy {
        public_read: true,
        ..test_policy()
    };
    let coordinator = TestCoordinator::start_with(dir.path(), policy).await;
    let mut closed = wdbc_job(1, 2, 600);
    closed.admission = vec![Identity::generate().participant_id()];
    let job = coordinator.launch(&closed).await;
    let (a, b, c, n) = reads(&coordinator, None, &job).await;
    assert_eq!(((a, b, c), n), ((Ok(()), Ok(()), Ok(())), 1));
    let status = coordinator
        .jobs()
        .await
        .create_job(launch_request(Some(&Identity::generate())))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    coordinator.stop().await;
}
