//! Every malformed, unauthorised or out-of-turn request is refused with a precise gRPC status
//! and changes nothing the coordinator holds.

use std::sync::Arc;

use conclave_crypto::Identity;
use conclave_participant::client::sign;
use conclave_proto::v1::{self, upload_chunk::Part};
use conclave_proto::{MAX_CHUNK_BYTES, Signed};
use conclave_tests::{
    TestCoordinator, as_launcher, client, join_request, le_bytes, plain_header, resign_header,
    wdbc_job,
};
use tonic::Code;

fn header(identity: &Identity, job: &str, round: u32, values: &[f32]) -> v1::UploadHeader {
    plain_header(identity, job, round, 10, values)
}

fn stream(header: v1::UploadHeader, chunks: Vec<Vec<u8>>) -> Vec<v1::UploadChunk> {
    std::iter::once(v1::UploadChunk {
        part: Some(Part::Header(header)),
    })
    .chain(chunks.into_iter().map(|c| v1::UploadChunk {
        part: Some(Part::Data(c)),
    }))
    .collect()
}

async fn upload_code(coordinator: &TestCoordinator, messages: Vec<v1::UploadChunk>) -> Code {
    match coordinator
        .rounds()
        .await
        .upload_update(tokio_stream::iter(messages))
        .await
    {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_precise_statuses_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = TestCoordinator::start(dir.path()).await;
    let job = coordinator.launch(&wdbc_job(3, 2, 600)).await;
    let dim = coordinator.info(&job).await.dim as usize;
    let (alice, bob, mallory) = (
        Arc::new(Identity::generate()),
        Arc::new(Identity::generate()),
        Identity::generate(),
    );
    let good = vec![0.01f32; dim];

    // Unknown job.
    let mut jobs = coordinator.jobs().await;
    let status = jobs
        .get_job(as_launcher(v1::GetJobRequest {
            job_id: "j-doesnotexist".into(),
            auth: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let mut a = client(&coordinator, Arc::clone(&alice)).await;
    assert_eq!(
        a.join("j-doesnotexist", false).await.unwrap_err().code(),
        Some(Code::NotFound)
    );
    assert_eq!(
        upload_code(
            &coordinator,
            stream(
                header(&alice, "j-doesnotexist", 1, &good),
                vec![le_bytes(&good)]
            )
        )
        .await,
        Code::NotFound
    );

    // A bad job is refused and not created.
    let mut bad_spec = wdbc_job(3, 2, 600).to_proto();
    bad_spec.rounds = 0;
    let status = jobs
        .create_job(as_launcher(v1::CreateJobRequest {
            spec: Some(bad_spec),
            auth: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("rounds"), "{}", status.message());
    assert_eq!(
        jobs.list_jobs(as_launcher(v1::ListJobsRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .jobs
            .len(),
        1
    );

    // Joining: bad sealing keys (short, low-order points), forged signatures (request and
    // admission), a draw commitment in a plain job, a stale signing time, a replayed request.
    let mut rounds = coordinator.rounds().await;
    let key = alice.public().sealing_key.to_vec();
    for bad_key in [vec![1; 31], vec![0; 32], {
        let mut one = vec![0; 32];
        one[0] = 1;
        one
    }] {
        let join = join_request(&alice, &job, bad_key, Vec::new());
        let status = rounds.join(join).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    }
    let mut join = join_request(&mallory, &job, key.clone(), Vec::new());
    join.auth_mut().participant = alice.participant_id().to_string();
    assert_eq!(
        rounds.join(join).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut join = join_request(&alice, &job, key.clone(), Vec::new());
    join.admission_signature = mallory.sign(b"anything").to_vec();
    sign(&alice, &mut join);
    assert_eq!(
        rounds.join(join).await.unwrap_err().code(),
        Code::Unauthenticated,
        "an admission alice did not sign"
    );
    let join = join_request(&alice, &job, key.clone(), vec![7; 32]);
    assert_eq!(
        rounds.join(join).await.unwrap_err().code(),
        Code::InvalidArgument,
        "a plain job takes no draw commitment"
    );
    let mut join = join_request(&alice, &job, key.clone(), Vec::new());
    join.auth_mut().time_unix_ms -= 10 * 60 * 1000;
    join.auth_mut().signature.clear();
    let signature = alice.sign(&join.signing_bytes());
    join.auth_mut().signature = signature.to_vec();
    let status = rounds.join(join).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unauthenticated,
        "signed 10 minutes ago"
    );
    assert!(status.message().contains("clock"), "{}", status.message());
    assert!(coordinator.info(&job).await.participant_count == 0);
    let join = join_request(&alice, &job, key.clone(), Vec::new());
    rounds.join(join.clone()).await.unwrap();
    assert_eq!(
        rounds.join(join).await.unwrap_err().code(),
        Code::Unauthenticated,
        "replayed join"
    );
    assert_eq!(coordinator.info(&job).await.participant_count, 1);
    let mut b = client(&coordinator, Arc::clone(&bob)).await;
    b.join(&job, false).await.unwrap();
    let info = coordinator.info(&job).await;
    assert_eq!(info.rounds.len(), 1, "round 1 opened with two participants");

    let no_uploads = |info: &v1::JobInfo| info.rounds[0].uploaded_count == 0;
    // Upload: wrong length (header and payload agree), short payload, NaN, infinity.
    let short = vec![0.0f32; dim - 1];
    assert_eq!(
        upload_code(
            &coordinator,
            stream(header(&alice, &job, 1, &short), vec![le_bytes(&short)])
        )
        .await,
        Code::InvalidArgument
    );
    let mut h = header(&alice, &job, 1, &good);
    h.payload_hash = blake3::hash(&le_bytes(&short)).as_bytes().to_vec();
    resign_header(&alice, &mut h);
    assert_eq!(
        upload_code(&coordinator, stream(h, vec![le_bytes(&short)])).await,
        Code::InvalidArgument
    );
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut v = good.clone();
        v[dim / 2] = bad;
        assert_eq!(
            upload_code(
                &coordinator,
                stream(header(&alice, &job, 1, &v), vec![le_bytes(&v)])
            )
            .await,
            Code::InvalidArgument
        );
    }
    // Payload that does not match the signed hash.
    let other = vec![0.02f32; dim];
    assert_eq!(
        upload_code(
            &coordinator,
            stream(header(&alice, &job, 1, &good), vec![le_bytes(&other)])
        )
        .await,
        Code::InvalidArgument
    );
    // Bad signatures: a field changed after signing; a contribution signed for other
    // values; mallory signing as alice.
    let mut h = header(&alice, &job, 1, &good);
    h.num_samples = 1_000_000;
    assert_eq!(
        upload_code(&coordinator, stream(h, vec![le_bytes(&good)])).await,
        Code::Unauthenticated
    );
    let mut h = header(&alice, &job, 1, &good);
    h.num_samples = 11;
    sign(&alice, &mut h);
    assert_eq!(
        upload_code(&coordinator, stream(h, vec![le_bytes(&good)])).await,
        Code::Unauthenticated,
        "the contribution signature covers the sample count"
    );
    let mut h = header(&mallory, &job, 1, &good);
    h.auth_mut().participant = alice.participant_id().to_string();
    assert_eq!(
        upload_code(&coordinator, stream(h, vec![le_bytes(&good)])).await,
        Code::Unauthenticated
    );
    let mut h = header(&alice, &job, 1, &good);
    h.auth = None;
    assert_eq!(
        upload_code(&coordinator, stream(h, vec![le_bytes(&good)])).await,
        Code::Unauthenticated
    );
    // Someone who never joined.
    assert_eq!(
        upload_code(
            &coordinator,
            stream(header(&mallory, &job, 1, &good), vec![le_bytes(&good)])
        )
        .await,
        Code::PermissionDenied
    );
    // A round that is not open.
    assert_eq!(
        upload_code(
            &coordinator,
            stream(header(&alice, &job, 2, &good), vec![le_bytes(&good)])
        )
        .await,
        Code::FailedPrecondition
    );
    // An oversized chunk (within the transport limit, over the protocol's chunk bound).
    let mut h = header(&alice, &job, 1, &good);
    h.dim = (MAX_CHUNK_BYTES as u64) * 2;
    resign_header(&alice, &mut h);
    let code = upload_code(
        &coordinator,
        stream(h, vec![vec![0u8; MAX_CHUNK_BYTES + 4]]),
    )
    .await;
    assert_eq!(
        code,
        Code::InvalidArgument,
        "dim mismatch is caught at the header"
    );
    let code = upload_code(
        &coordinator,
        stream(
            header(&alice, &job, 1, &good),
            vec![vec![0u8; MAX_CHUNK_BYTES + 4]],
        ),
    )
    .await;
    assert_eq!(code, Code::ResourceExhausted);
    // Data before the header.
    let messages = vec![v1::UploadChunk {
        part: Some(Part::Data(le_bytes(&good))),
    }];
    assert_eq!(
        upload_code(&coordinator, messages).await,
        Code::InvalidArgument
    );
    // A replayed header (same nonce) is refused even with a valid payload.
    let h = header(&alice, &job, 1, &good);
    let replay = stream(h.clone(), vec![le_bytes(&good)]);
    let _ = upload_code(&coordinator, stream(h, vec![le_bytes(&short)])).await;
    assert_eq!(
        upload_code(&coordinator, replay).await,
        Code::Unauthenticated
    );
    assert!(
        no_uploads(&coordinator.info(&job).await),
        "no refused upload changed the round"
    );

    // A good upload, then a duplicate.
    a.upload(&job, 1, 10, &good).await.unwrap();
    assert_eq!(
        a.upload(&job, 1, 10, &good).await.unwrap_err().code(),
        Some(Code::AlreadyExists)
    );
    assert_eq!(coordinator.info(&job).await.rounds[0].uploaded_count, 1);
    // Bob's upload completes round 1; a late upload for it is refused.
    b.upload(&job, 1, 30, &good).await.unwrap();
    let info = coordinator.wait_for_model(&job, 1).await;
    assert_eq!(info.model_version, 1);
    assert_eq!(
        a.upload(&job, 1, 10, &good).await.unwrap_err().code(),
        Some(Code::FailedPrecondition)
    );

    // Metrics: bad values, a version that does not exist, duplicates.
    let metrics = |loss, accuracy, n| conclave_participant::Metrics {
        loss,
        accuracy,
        num_examples: n,
    };
    assert_eq!(
        a.report(&job, 1, &metrics(f64::NAN, 0.5, 10))
            .await
            .unwrap_err()
            .code(),
        Some(Code::InvalidArgument)
    );
    assert_eq!(
        a.report(&job, 1, &metrics(0.1, 1.5, 10))
            .await
            .unwrap_err()
            .code(),
        Some(Code::InvalidArgument)
    );
    assert_eq!(
        a.report(&job, 1, &metrics(0.1, 0.5, 0))
            .await
            .unwrap_err()
            .code(),
        Some(Code::InvalidArgument)
    );
    assert_eq!(
        a.report(&job, 9, &metrics(0.1, 0.5, 10))
            .await
            .unwrap_err()
            .code(),
        Some(Code::NotFound)
    );
    a.report(&job, 1, &metrics(0.1, 0.5, 10)).await.unwrap();
    assert_eq!(
        a.report(&job, 1, &metrics(0.1, 0.5, 10))
            .await
            .unwrap_err()
            .code(),
        Some(Code::AlreadyExists)
    );
    let info = coordinator.info(&job).await;
    let eval = info
        .evaluations
        .iter()
        .find(|e| e.model_version == 1)
        .unwrap();
    assert_eq!((eval.reports, eval.num_examples), (1, 10));

    // A model version that does not exist.
    let status = coordinator
        .rounds()
        .await
        .download_model(as_launcher(v1::DownloadModelRequest {
            job_id: job.clone(),
            model_version: 7,
            auth: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_list_keeps_others_out() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = TestCoordinator::start(dir.path()).await;
    let member = Identity::generate();
    let mut spec = wdbc_job(1, 1, 60);
    spec.admission = vec![member.participant_id()];
    let job = coordinator.launch(&spec).await;
    let mut outsider = client(&coordinator, Identity::generate()).await;
    assert_eq!(
        outsider.join(&job, false).await.unwrap_err().code(),
        Some(Code::PermissionDenied)
    );
    assert!(coordinator.info(&job).await.participant_count == 0);
    client(&coordinator, member)
        .await
        .join(&job, false)
        .await
        .unwrap();
    assert_eq!(coordinator.info(&job).await.participant_count, 1);
    coordinator.stop().await;
}

/// Plain mode bounds one participant too: an update above the job's clip norm or a sample
/// count above its max_samples is refused (InvalidArgument) and changes nothing; updates that
/// are each finite but whose mean overflows the model fail their round once, with the reason
/// in the ledger, and the next round runs; the ledger verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_bounds_refuse_one_participant_and_an_overflow_fails_one_round() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = TestCoordinator::start(dir.path()).await;
    let mut clipped = wdbc_job(2, 2, 600);
    clipped.clip_norm = Some(1.0);
    clipped.max_samples = Some(100);
    let job = coordinator.launch(&clipped).await;
    let dim = coordinator.info(&job).await.dim as usize;
    let mut a = client(&coordinator, Identity::generate()).await;
    let mut b = client(&coordinator, Identity::generate()).await;
    a.join(&job, false).await.unwrap();
    b.join(&job, false).await.unwrap();
    let over = vec![1.0f32; dim];
    let status = a.upload(&job, 1, 10, &over).await.unwrap_err();
    assert_eq!(status.code(), Some(Code::InvalidArgument));
    assert!(status.to_string().contains("clip_norm"), "{status}");
    let small = vec![0.01f32; dim];
    let status = a.upload(&job, 1, 101, &small).await.unwrap_err();
    assert_eq!(status.code(), Some(Code::InvalidArgument));
    assert!(status.to_string().contains("max_samples"), "{status}");
    assert!(coordinator.info(&job).await.rounds[0].uploaded_count == 0);
    a.upload(&job, 1, 100, &small).await.unwrap();
    b.upload(&job, 1, 1, &small).await.unwrap();
    coordinator.wait_for_model(&job, 1).await;

    // No clip: each update finite, but the model they move reaches beyond f32 in round 2.
    let job = coordinator.launch(&wdbc_job(3, 2, 600)).await;
    let mut a = client(&coordinator, Identity::generate()).await;
    let mut b = client(&coordinator, Identity::generate()).await;
    a.join(&job, false).await.unwrap();
    b.join(&job, false).await.unwrap();
    let huge = vec![f32::MAX; dim];
    for round in 1..=2 {
        a.upload(&job, round, 10, &huge).await.unwrap();
        b.upload(&job, round, 10, &huge).await.unwrap();
        let started = std::time::Instant::now();
        while coordinator.info(&job).await.rounds.len() <= round as usize {
            assert!(started.elapsed() < std::time::Duration::from_secs(20));
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let info = coordinator.info(&job).await;
    assert_eq!(info.rounds[0].state, v1::RoundState::Closed as i32);
    assert_eq!(info.rounds[1].state, v1::RoundState::Failed as i32);
    assert_eq!(info.model_version, 1);
    a.upload(&job, 3, 10, &small).await.unwrap();
    b.upload(&job, 3, 10, &small).await.unwrap();
    let info = coordinator.wait_for_model(&job, 2).await;
    assert_eq!(info.rounds[2].state, v1::RoundState::Closed as i32);
    let ledger = coordinator.state.ledger();
    let mut failures = Vec::new();
    ledger
        .for_each(|e| {
            if let conclave_ledger::Payload::RoundClosed(c) = e.payload()
                && c.job_id == job
                && !c.success
            {
                failures.push(c.failure.clone());
            }
        })
        .unwrap();
    assert_eq!(
        failures.len(),
        1,
        "the overflowing round failed once: {failures:?}"
    );
    assert!(failures[0].contains("overflows"), "{}", failures[0]);
    let report = conclave_ledger::verify::verify_ledger(ledger, None).unwrap();
    assert_eq!(report.problem, None);
    coordinator.stop().await;
}

/// A third party's client meets precise errors: bytes that are not the message a call takes
/// are INVALID_ARGUMENT naming the expected type (not INTERNAL), a job spec past the size
/// limit is INVALID_ARGUMENT, and neither changes anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_messages_are_invalid_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = TestCoordinator::start(dir.path()).await;
    let job = coordinator.launch(&wdbc_job(2, 2, 600)).await;

    // A LedgerRequest's field 1 is a varint; GetJob's field 1 is a string: sent to GetJob,
    // the bytes do not decode.
    let channel = conclave_participant::client::connect(&coordinator.url)
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<v1::LedgerRequest, v1::JobInfo>::default();
    let path = "/conclave.v1.Jobs/GetJob".parse().unwrap();
    let wrong = v1::LedgerRequest {
        from_index: 7,
        ..Default::default()
    };
    let status = grpc
        .unary(tonic::Request::new(wrong), path, codec)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(
        status
            .message()
            .contains("malformed conclave.v1.GetJobRequest"),
        "{}",
        status.message()
    );

    // A spec over MAX_SPEC_BYTES (a name of 300 KiB) is refused before anything is built.
    let mut spec = wdbc_job(2, 2, 600).to_proto();
    spec.name = "x".repeat(conclave_proto::MAX_SPEC_BYTES + 1);
    let status = coordinator
        .jobs()
        .await
        .create_job(as_launcher(v1::CreateJobRequest {
            spec: Some(spec),
            auth: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(
        status.message().contains("job spec is"),
        "{}",
        status.message()
    );
    let listed = coordinator
        .jobs()
        .await
        .list_jobs(as_launcher(v1::ListJobsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.jobs.len(), 1);
    assert_eq!(listed.jobs[0].job_id, job);
}
