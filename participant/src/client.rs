//! `Client`: a participant's connection to the coordinator. Signs every request that acts for
//! the participant, streams models down and updates up in bounded chunks, and checks what it
//! downloads against the hash the coordinator announced.

use std::sync::Arc;

use conclave_crypto::Identity;
use conclave_ledger::signed::{admission_digest, contribution_digest, export_digest};
use conclave_proto::v1::{
    self, jobs_client::JobsClient, rounds_client::RoundsClient, upload_chunk::Part,
};
use conclave_proto::{MAX_CHUNK_BYTES, MAX_MESSAGE_BYTES, NONCE_LEN, Signed};
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

use crate::ParticipantError;
use crate::retry::{Backoff, Retry, retrying};

/// Opens a gRPC channel to a coordinator URL such as `http://127.0.0.1:50051`, or
/// `https://coordinator.example:50051` over TLS (trusting what [`crate::tls`] says).
pub async fn connect(url: &str) -> Result<Channel, ParticipantError> {
    connect_to(url, false).await
}

async fn connect_to(url: &str, patient: bool) -> Result<Channel, ParticipantError> {
    let err = |e: &dyn std::error::Error| ParticipantError::Connect {
        url: url.into(),
        message: conclave_proto::error_chain(e),
    };
    let mut endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| err(&e))?;
    match endpoint.uri().scheme_str() {
        Some("http") if crate::tls::ca_given() && !is_loopback(endpoint.uri().host()) => {
            return Err(ParticipantError::Connect {
                url: url.into(),
                message: "--tls-ca is set but the URL is http://: use https:// (plaintext is \
                          only allowed to a loopback address)"
                    .into(),
            });
        }
        Some("http") => {}
        Some("https") => {
            endpoint = endpoint
                .tls_config(crate::tls::client_config())
                .map_err(|e| err(&e))?
        }
        _ => {
            return Err(ParticipantError::Connect {
                url: url.into(),
                message: "the URL must start with http:// or https://".into(),
            });
        }
    }
    let endpoint = endpoint
        .connect_timeout(std::time::Duration::from_secs(10))
        .tcp_nodelay(true)
        // A coordinator whose host vanished (no reset ever comes) is noticed within a minute,
        // so the stream breaks and is retried instead of waiting forever.
        .http2_keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_timeout(std::time::Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .tcp_keepalive(Some(std::time::Duration::from_secs(60)));
    if !patient {
        return endpoint.connect().await.map_err(|e| err(&e));
    }
    let started = std::time::Instant::now();
    let mut wait = std::time::Duration::from_millis(250);
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(e)
                if nobody_listening(&e) && started.elapsed() + wait < crate::retry::patience() =>
            {
                tracing::info!(url, error = %conclave_proto::error_chain(&e), "coordinator not reachable yet; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(5));
            }
            Err(e) => return Err(err(&e)),
        }
    }
}

/// Connects to `url`, waiting up to [`crate::retry::patience`] for a coordinator that is not
/// listening yet (starting, or restarting after a crash); a TLS or address problem is
/// reported at once.
pub async fn connect_patiently(url: &str) -> Result<Channel, ParticipantError> {
    connect_to(url, true).await
}

/// Whether a connection failed because nothing answered at the address (refused, reset or
/// timed out), rather than for a reason that trying again cannot fix.
fn nobody_listening(e: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::*;
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ConnectionRefused | ConnectionReset | ConnectionAborted | TimedOut
            );
        }
        source = s.source();
    }
    false
}

/// Whether a URL host is this machine (`localhost`, 127.0.0.0/8, `[::1]`).
fn is_loopback(host: Option<&str>) -> bool {
    match host {
        Some("localhost") => true,
        Some(h) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// A `Jobs` client with the project's message-size limits.
pub fn jobs_client(channel: Channel) -> JobsClient<Channel> {
    JobsClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// A `Rounds` client with the project's message-size limits.
pub fn rounds_client(channel: Channel) -> RoundsClient<Channel> {
    RoundsClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Fills in `request.auth`: this identity, a fresh nonce, the time, and the signature.
pub fn sign<T: Signed>(identity: &Identity, request: &mut T) {
    let auth = request.auth_mut();
    auth.participant = identity.participant_id().to_string();
    auth.nonce = conclave_crypto::random_bytes::<NONCE_LEN>().to_vec();
    auth.time_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    auth.signature.clear();
    let signature = identity.sign(&request.signing_bytes());
    request.auth_mut().signature = signature.to_vec();
}

/// Signs `request` with `reader` when one is given; a coordinator that serves reads publicly
/// takes them unsigned.
pub fn sign_read<T: Signed>(reader: Option<&Identity>, request: &mut T) {
    if let Some(identity) = reader {
        sign(identity, request)
    }
}

/// Downloads a model version's flat parameters, checking offsets, length, hash and that
/// every value is finite. `expected_hash`, when given, must match too. The request is signed
/// by `reader` when given (see [`sign_read`]).
pub async fn download_model(
    rounds: &mut RoundsClient<Channel>,
    reader: Option<&Identity>,
    job_id: &str,
    version: u32,
    expected_hash: Option<&[u8]>,
) -> Result<Vec<f32>, ParticipantError> {
    // A download the connection broke (or the coordinator cut) starts again from the start,
    // through a coordinator restart; a refusal or a bad model ends it.
    let mut backoff = Backoff::new(Retry::Stream);
    loop {
        match download_once(rounds, reader, job_id, version, expected_hash).await {
            Err(ParticipantError::Rpc { status, .. })
                if backoff.again("DownloadModel", &status).await => {}
            other => return other,
        }
    }
}

async fn download_once(
    rounds: &mut RoundsClient<Channel>,
    reader: Option<&Identity>,
    job_id: &str,
    version: u32,
    expected_hash: Option<&[u8]>,
) -> Result<Vec<f32>, ParticipantError> {
    let mut request = v1::DownloadModelRequest {
        job_id: job_id.into(),
        model_version: version,
        auth: None,
    };
    sign_read(reader, &mut request);
    let mut stream = rounds
        .download_model(request)
        .await
        .map_err(ParticipantError::rpc("DownloadModel"))?
        .into_inner();
    let mut bytes = Vec::new();
    let mut total = None;
    let mut hash = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(ParticipantError::rpc("DownloadModel"))?;
        if chunk.offset != bytes.len() as u64 || chunk.data.len() > MAX_CHUNK_BYTES {
            return Err(ParticipantError::BadModel(format!(
                "chunk at offset {} out of order or too large",
                chunk.offset
            )));
        }
        if chunk.offset == 0 {
            total = Some(chunk.total_bytes);
            hash = chunk.model_hash;
            if chunk.total_bytes % 4 != 0
                || chunk.total_bytes > 4 * conclave_aggregation::job::MAX_MODEL_PARAMS
            {
                return Err(ParticipantError::BadModel(format!(
                    "bad model size {}",
                    chunk.total_bytes
                )));
            }
            bytes.reserve(chunk.total_bytes as usize);
        }
        bytes.extend_from_slice(&chunk.data);
        if total.is_some_and(|t| bytes.len() as u64 > t) {
            return Err(ParticipantError::BadModel(
                "more bytes than announced".into(),
            ));
        }
    }
    if total != Some(bytes.len() as u64) {
        return Err(ParticipantError::BadModel(
            "model stream ended early".into(),
        ));
    }
    if blake3::hash(&bytes).as_bytes().as_slice() != hash.as_slice()
        || expected_hash.is_some_and(|h| h != hash.as_slice())
    {
        return Err(ParticipantError::BadModel(format!(
            "model version {version} does not match its announced hash"
        )));
    }
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if values.iter().any(|v| !v.is_finite()) {
        return Err(ParticipantError::BadModel(
            "model has NaN or infinite values".into(),
        ));
    }
    Ok(values)
}

/// The update upload stream: a signed header, then the payload in chunks of at most
/// [`MAX_CHUNK_BYTES`].
pub fn upload_messages(
    identity: &Identity,
    job_id: &str,
    round: u32,
    num_samples: u64,
    delta: &[f32],
) -> Vec<v1::UploadChunk> {
    upload_stream(
        identity,
        job_id,
        round,
        num_samples,
        delta.len(),
        &le_words(delta),
        None,
    )
}

/// The upload stream of a masked ring vector with its manifest (and the manifest's hash):
/// the sample count travels inside the vector, so the header's is 0.
pub fn masked_upload_messages(
    identity: &Identity,
    job_id: &str,
    round: u32,
    masked: &[u32],
    manifest: v1::SealedManifest,
    manifest_hash: [u8; 32],
) -> Vec<v1::UploadChunk> {
    upload_stream(
        identity,
        job_id,
        round,
        0,
        masked.len(),
        &le_words(masked),
        Some((manifest, manifest_hash)),
    )
}

/// The little-endian bytes of 4-byte words (`f32` updates, `u32` ring vectors) as uploaded:
/// borrowed on a little-endian machine, converted on a big-endian one.
fn le_words<T: bytemuck::Pod>(words: &[T]) -> std::borrow::Cow<'_, [u8]> {
    let words: &[u32] = bytemuck::cast_slice(words);
    if cfg!(target_endian = "little") {
        bytemuck::cast_slice(words).into()
    } else {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }
}

/// Header and data chunks of an upload. The payload (little-endian words) is borrowed and
/// copied once, into the chunks.
fn upload_stream(
    identity: &Identity,
    job_id: &str,
    round: u32,
    num_samples: u64,
    dim: usize,
    payload: &[u8],
    manifest: Option<(v1::SealedManifest, [u8; 32])>,
) -> Vec<v1::UploadChunk> {
    // A masked vector's hash is already in its signed manifest: hashed once, not twice.
    let payload_hash = match &manifest {
        Some((m, _)) => m.vector_hash.clone(),
        None => blake3::hash(payload).as_bytes().to_vec(),
    };
    let manifest_hash = manifest.as_ref().map_or(&[][..], |(_, h)| &h[..]);
    let digest = contribution_digest(
        job_id,
        round,
        &identity.participant_id(),
        num_samples,
        &payload_hash,
        manifest_hash,
    );
    let mut header = v1::UploadHeader {
        job_id: job_id.into(),
        round,
        num_samples,
        dim: dim as u64,
        payload_hash,
        manifest: manifest.map(|(m, _)| m),
        contribution_signature: identity.sign(&digest).to_vec(),
        auth: None,
    };
    sign(identity, &mut header);
    std::iter::once(v1::UploadChunk {
        part: Some(Part::Header(header)),
    })
    .chain(payload.chunks(MAX_CHUNK_BYTES).map(|c| v1::UploadChunk {
        part: Some(Part::Data(c.to_vec())),
    }))
    .collect()
}

/// Reads a job's description and state, signed by `reader` when given (see [`sign_read`]).
pub async fn get_job(
    jobs: &JobsClient<Channel>,
    reader: Option<&Identity>,
    job_id: &str,
) -> Result<v1::JobInfo, ParticipantError> {
    Ok(retrying("GetJob", Retry::Call, || {
        let mut req = v1::GetJobRequest {
            job_id: job_id.into(),
            auth: None,
        };
        sign_read(reader, &mut req);
        let mut jobs = jobs.clone();
        async move { jobs.get_job(req).await }
    })
    .await
    .map_err(ParticipantError::rpc("GetJob"))?
    .into_inner())
}

/// A job's whole round history, oldest first, with the evaluations of the versions its rounds
/// produced, read a page at a time (`ListRounds`), from round `first`.
pub async fn list_rounds(
    jobs: &JobsClient<Channel>,
    reader: Option<&Identity>,
    job_id: &str,
    first: u32,
) -> Result<(Vec<v1::RoundSummary>, Vec<v1::Evaluation>), ParticipantError> {
    let (mut rounds, mut evaluations) = (Vec::new(), Vec::new());
    let mut next = first.max(1);
    loop {
        let page = retrying("ListRounds", Retry::Call, || {
            let mut req = v1::ListRoundsRequest {
                job_id: job_id.into(),
                first_round: next,
                auth: None,
            };
            sign_read(reader, &mut req);
            let mut jobs = jobs.clone();
            async move { jobs.list_rounds(req).await }
        })
        .await
        .map_err(ParticipantError::rpc("ListRounds"))?
        .into_inner();
        // Only pages that continue the history are followed: an empty page, one that does
        // not start where asked or skips ahead, or more than a job can hold, ends the list
        // (a coordinator cannot keep this loop or its memory going).
        let (Some(first_r), Some(last)) = (page.rounds.first(), page.rounds.last()) else {
            break;
        };
        let continues = first_r.round == next
            && (page.next_round == 0 || page.next_round == last.round + 1)
            && page.evaluations.len() <= page.rounds.len();
        let next_round = page.next_round;
        rounds.extend(page.rounds);
        evaluations.extend(page.evaluations);
        // A job has at most 100,000 rounds.
        if !continues || next_round == 0 || rounds.len() > 100_000 {
            break;
        }
        next = next_round;
    }
    Ok((rounds, evaluations))
}

/// Every job `reader` may read, oldest first, read a page at a time (`ListJobs`).
pub async fn list_jobs(
    jobs: &JobsClient<Channel>,
    reader: Option<&Identity>,
) -> Result<Vec<v1::JobInfo>, ParticipantError> {
    let mut out: Vec<v1::JobInfo> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut after = String::new();
    loop {
        let page = retrying("ListJobs", Retry::Call, || {
            let mut req = v1::ListJobsRequest {
                after_job_id: after.clone(),
                auth: None,
            };
            sign_read(reader, &mut req);
            let mut jobs = jobs.clone();
            async move { jobs.list_jobs(req).await }
        })
        .await
        .map_err(ParticipantError::rpc("ListJobs"))?
        .into_inner();
        // Pages are followed only while they bring jobs not seen yet, up to what a
        // coordinator can keep (its --max-jobs is at most a few thousand in practice).
        let fresh =
            !page.jobs.is_empty() && page.jobs.iter().all(|j| seen.insert(j.job_id.clone()));
        out.extend(page.jobs);
        if !fresh || page.next_after.is_empty() || out.len() > 100_000 {
            break;
        }
        after = page.next_after;
    }
    Ok(out)
}

/// A participant's session with one coordinator.
#[derive(Clone)]
pub struct Client {
    identity: Arc<Identity>,
    jobs: JobsClient<Channel>,
    rounds: RoundsClient<Channel>,
}

impl Client {
    /// Connects to `url` as `identity`.
    pub async fn connect(url: &str, identity: Arc<Identity>) -> Result<Self, ParticipantError> {
        Ok(Self::over(connect(url).await?, identity))
    }

    /// As [`Client::connect`], waiting through a coordinator that is (re)starting (see
    /// [`connect_patiently`]).
    pub async fn connect_patiently(
        url: &str,
        identity: Arc<Identity>,
    ) -> Result<Self, ParticipantError> {
        Ok(Self::over(connect_patiently(url).await?, identity))
    }

    fn over(channel: Channel, identity: Arc<Identity>) -> Self {
        Self {
            identity,
            jobs: jobs_client(channel.clone()),
            rounds: rounds_client(channel),
        }
    }

    /// Reads a job's description and state (a signed read).
    pub async fn job(&mut self, job_id: &str) -> Result<v1::JobInfo, ParticipantError> {
        get_job(&self.jobs, Some(&self.identity), job_id).await
    }

    /// The identity this client signs with.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Joins a job (a secure one with the head of this identity's draw chain for it); returns
    /// the job as the coordinator describes it.
    pub async fn join(
        &mut self,
        job_id: &str,
        secure: bool,
    ) -> Result<v1::JobInfo, ParticipantError> {
        let sealing_key = self.identity.public().sealing_key.to_vec();
        let commitment = if secure {
            conclave_crypto::committee::DrawChain::for_job(&self.identity, job_id)
                .commitment()
                .to_vec()
        } else {
            Vec::new()
        };
        let digest = admission_digest(
            job_id,
            &self.identity.participant_id(),
            &sealing_key,
            &commitment,
        );
        let admission_signature = self.identity.sign(&digest).to_vec();
        let identity = Arc::clone(&self.identity);
        let rounds = self.rounds.clone();
        let resp = retrying("Join", Retry::Call, || {
            let mut req = v1::JoinRequest {
                job_id: job_id.into(),
                x25519_public: sealing_key.clone(),
                draw_commitment: commitment.clone(),
                admission_signature: admission_signature.clone(),
                auth: None,
            };
            sign(&identity, &mut req);
            let mut rounds = rounds.clone();
            async move { rounds.join(req).await }
        })
        .await
        .map_err(ParticipantError::rpc("Join"))?
        .into_inner();
        resp.job
            .ok_or_else(|| ParticipantError::Config("coordinator sent no job description".into()))
    }

    /// Opens the work stream of a job.
    pub async fn work(
        &mut self,
        job_id: &str,
    ) -> Result<tonic::Streaming<v1::WorkItem>, ParticipantError> {
        let identity = Arc::clone(&self.identity);
        let rounds = self.rounds.clone();
        Ok(retrying("Work", Retry::Call, || {
            let mut req = v1::WorkRequest {
                job_id: job_id.into(),
                auth: None,
            };
            sign(&identity, &mut req);
            let mut rounds = rounds.clone();
            async move { rounds.work(req).await }
        })
        .await
        .map_err(ParticipantError::rpc("Work"))?
        .into_inner())
    }

    /// Downloads and checks a model version.
    pub async fn download(
        &mut self,
        job_id: &str,
        version: u32,
        expected_hash: &[u8],
    ) -> Result<Vec<f32>, ParticipantError> {
        download_model(
            &mut self.rounds,
            Some(&self.identity),
            job_id,
            version,
            Some(expected_hash),
        )
        .await
    }

    /// Uploads an update for a round.
    pub async fn upload(
        &mut self,
        job_id: &str,
        round: u32,
        num_samples: u64,
        delta: &[f32],
    ) -> Result<v1::UploadReceipt, ParticipantError> {
        let messages = upload_messages(&self.identity, job_id, round, num_samples, delta);
        Ok(self.send_upload(messages).await?.0)
    }

    /// Sends a prepared upload stream; returns the receipt and the encoded bytes sent.
    pub async fn send_upload(
        &mut self,
        messages: Vec<v1::UploadChunk>,
    ) -> Result<(v1::UploadReceipt, usize), ParticipantError> {
        use prost::Message;
        let bytes = messages.iter().map(|m| m.encoded_len()).sum();
        let identity = Arc::clone(&self.identity);
        let rounds = self.rounds.clone();
        let mut first = true;
        let resent = std::sync::atomic::AtomicBool::new(false);
        let sent = retrying("UploadUpdate", Retry::Stream, || {
            // The same bytes each time; a resend's header is signed afresh (a new nonce),
            // its contribution signature is the same.
            let mut messages = messages.clone();
            if !std::mem::take(&mut first) {
                resent.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            if resent.load(std::sync::atomic::Ordering::Relaxed)
                && let Some(v1::UploadChunk {
                    part: Some(Part::Header(header)),
                }) = messages.first_mut()
            {
                sign(&identity, header);
            }
            let mut rounds = rounds.clone();
            async move { rounds.upload_update(tokio_stream::iter(messages)).await }
        })
        .await;
        let receipt = match sent {
            Ok(receipt) => receipt.into_inner(),
            // A resend the coordinator already holds: the try whose answer was lost stored it.
            Err(status)
                if status.code() == tonic::Code::AlreadyExists
                    && resent.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                v1::UploadReceipt::default()
            }
            Err(status) => return Err(ParticipantError::rpc("UploadUpdate")(status)),
        };
        Ok((receipt, bytes))
    }

    /// Sends this committee member's approval of a round's statement.
    pub async fn submit_approval(
        &mut self,
        job_id: &str,
        round: u32,
        statement_hash: &[u8; 32],
        signature: Vec<u8>,
    ) -> Result<(), ParticipantError> {
        let identity = Arc::clone(&self.identity);
        let rounds = self.rounds.clone();
        retrying("SubmitApproval", Retry::Call, || {
            let mut req = v1::ApprovalRequest {
                job_id: job_id.into(),
                round,
                statement_hash: statement_hash.to_vec(),
                signature: signature.clone(),
                auth: None,
            };
            sign(&identity, &mut req);
            let mut rounds = rounds.clone();
            async move { rounds.submit_approval(req).await }
        })
        .await
        .map_err(ParticipantError::rpc("SubmitApproval"))?;
        Ok(())
    }

    /// Sends this committee member's check of a round's uploads: its signed complaints
    /// about the boxes it cannot use (none: every box opened).
    pub async fn submit_check(
        &mut self,
        job_id: &str,
        round: u32,
        complaints: Vec<v1::Complaint>,
    ) -> Result<(), ParticipantError> {
        let identity = Arc::clone(&self.identity);
        let rounds = self.rounds.clone();
        retrying("SubmitCheck", Retry::Call, || {
            let mut req = v1::CheckReport {
                job_id: job_id.into(),
                round,
                complaints: complaints.clone(),
                auth: None,
            };
            sign(&identity, &mut req);
            let mut rounds = rounds.clone();
            async move { rounds.submit_check(req).await }
        })
        .await
        .map_err(ParticipantError::rpc("SubmitCheck"))?;
        Ok(())
    }

    /// Sends this participant's draw-chain link for a draw attempt.
    pub async fn submit_draw_reveal(
        &mut self,
        job_id: &str,
        attempt: u32,
        pool_hash: &[u8; 32],
        value: &[u8; 32],
        signature: Vec<u8>,
    ) -> Result<(), ParticipantError> {
        let identity = Arc::clone(&self.identity);
        let rounds = self.rounds.clone();
        retrying("SubmitDrawReveal", Retry::Call, || {
            let mut req = v1::DrawRevealRequest {
                job_id: job_id.into(),
                attempt,
                pool_hash: pool_hash.to_vec(),
                value: value.to_vec(),
                signature: signature.clone(),
                auth: None,
            };
            sign(&identity, &mut req);
            let mut rounds = rounds.clone();
            async move { rounds.submit_draw_reveal(req).await }
        })
        .await
        .map_err(ParticipantError::rpc("SubmitDrawReveal"))?;
        Ok(())
    }

    /// Records in the ledger that this participant exported a model version it downloaded
    /// and checked (its hash), with its own signature over the export; returns the entry's
    /// index.
    pub async fn record_export(
        &mut self,
        job_id: &str,
        version: u32,
        model_hash: &[u8],
        format: &str,
    ) -> Result<u64, ParticipantError> {
        let digest = export_digest(
            job_id,
            version,
            model_hash,
            format,
            &self.identity.participant_id(),
        );
        let signature = self.identity.sign(&digest).to_vec();
        let identity = Arc::clone(&self.identity);
        let jobs = self.jobs.clone();
        Ok(retrying("RecordExport", Retry::Call, || {
            let mut req = v1::RecordExportRequest {
                job_id: job_id.into(),
                model_version: version,
                model_hash: model_hash.to_vec(),
                format: format.into(),
                signature: signature.clone(),
                auth: None,
            };
            sign(&identity, &mut req);
            let mut jobs = jobs.clone();
            async move { jobs.record_export(req).await }
        })
        .await
        .map_err(ParticipantError::rpc("RecordExport"))?
        .into_inner()
        .ledger_index)
    }

    /// Sends this committee member's reveal: its partial sum, then shares of absent members' seeds.
    pub async fn submit_reveal(
        &mut self,
        job_id: &str,
        round: u32,
        statement_hash: &[u8; 32],
        partial: &[u32],
        shares: Vec<v1::RevealedShare>,
    ) -> Result<(), ParticipantError> {
        use v1::reveal_chunk::Part as RevealPart;
        let payload: Vec<u8> = partial.iter().flat_map(|v| v.to_le_bytes()).collect();
        let partial_hash = blake3::hash(&payload).as_bytes().to_vec();
        let identity = Arc::clone(&self.identity);
        let rounds = self.rounds.clone();
        retrying("SubmitReveal", Retry::Stream, || {
            let mut header = v1::RevealHeader {
                job_id: job_id.into(),
                round,
                statement_hash: statement_hash.to_vec(),
                shares: shares.clone(),
                len: partial.len() as u64,
                partial_hash: partial_hash.clone(),
                auth: None,
            };
            sign(&identity, &mut header);
            let messages: Vec<v1::RevealChunk> = std::iter::once(v1::RevealChunk {
                part: Some(RevealPart::Header(header)),
            })
            .chain(payload.chunks(MAX_CHUNK_BYTES).map(|c| v1::RevealChunk {
                part: Some(RevealPart::Data(c.to_vec())),
            }))
            .collect();
            let mut rounds = rounds.clone();
            async move { rounds.submit_reveal(tokio_stream::iter(messages)).await }
        })
        .await
        .map_err(ParticipantError::rpc("SubmitReveal"))?;
        Ok(())
    }

    /// Reports an evaluation of a model version.
    pub async fn report(
        &mut self,
        job_id: &str,
        version: u32,
        metrics: &crate::Metrics,
    ) -> Result<(), ParticipantError> {
        let identity = Arc::clone(&self.identity);
        let rounds = self.rounds.clone();
        retrying("ReportMetrics", Retry::Call, || {
            let mut req = v1::MetricsReport {
                job_id: job_id.into(),
                model_version: version,
                loss: metrics.loss,
                accuracy: metrics.accuracy,
                num_examples: metrics.num_examples,
                auth: None,
            };
            sign(&identity, &mut req);
            let mut rounds = rounds.clone();
            async move { rounds.report_metrics(req).await }
        })
        .await
        .map_err(ParticipantError::rpc("ReportMetrics"))?;
        Ok(())
    }
}
