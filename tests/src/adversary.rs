//! A coordinator built to attack, for the adversary suite. It serves the `Jobs`, `Rounds` and
//! `Ledger` services to real participants ([`conclave_participant::run`]) over loopback gRPC,
//! with a real signing key and a real ledger that it writes itself, and it lets a test script
//! everything a malicious coordinator controls: the job it describes, the ledger entries it
//! signs, the work items it sends (plans, statements, re-sent tasks, draw pools) and so the
//! `(U, A)` it proposes. Everything participants send it is recorded, so a test can check what
//! left the hospital and whether the attacker can open it.
//!
//! It never checks what it receives: it is the adversary.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conclave_aggregation::JobSpec;
use conclave_aggregation::secagg::{RoundConfig, sign_plan};
use conclave_crypto::committee::{DrawChain, draw_committee, draw_entropy, draw_seed, pool_hash};
use conclave_crypto::{Identity, ParticipantId, PublicIdentity};
use conclave_ledger::signed::{admission_digest, draw_reveal_digest};
use conclave_ledger::{Ledger, Payload};
use conclave_proto::v1::{
    self, jobs_server::Jobs, ledger_server::Ledger as LedgerRpc, rounds_server::Rounds,
};
use conclave_proto::{MAX_CHUNK_BYTES, MAX_MESSAGE_BYTES};
use prost::Message;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream, UnboundedReceiverStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// Something a participant sent the malicious coordinator.
#[derive(Clone, Debug)]
pub enum Sent {
    Join(v1::JoinRequest),
    Upload {
        header: v1::UploadHeader,
        payload: Vec<u8>,
    },
    DrawReveal(v1::DrawRevealRequest),
    Check(v1::CheckReport),
    Approval(v1::ApprovalRequest),
    Reveal {
        header: v1::RevealHeader,
        partial: Vec<u8>,
    },
    Metrics(v1::MetricsReport),
}

impl Sent {
    /// The did:key of the participant that sent it.
    pub fn sender(&self) -> String {
        let auth = match self {
            Sent::Join(r) => r.auth.as_ref(),
            Sent::Upload { header, .. } => header.auth.as_ref(),
            Sent::DrawReveal(r) => r.auth.as_ref(),
            Sent::Check(r) => r.auth.as_ref(),
            Sent::Approval(r) => r.auth.as_ref(),
            Sent::Reveal { header, .. } => header.auth.as_ref(),
            Sent::Metrics(r) => r.auth.as_ref(),
        };
        auth.map(|a| a.participant.clone()).unwrap_or_default()
    }
}

/// Where a work stream's items go.
type WorkSender = mpsc::UnboundedSender<Result<v1::WorkItem, Status>>;

struct Inner {
    info: Mutex<v1::JobInfo>,
    /// The latest work stream of each participant, and how many it opened.
    streams: Mutex<HashMap<String, (WorkSender, usize)>>,
    log: Mutex<Vec<Sent>>,
    changed: Notify,
    ledger: Ledger,
    key: Identity,
    model: Vec<u8>,
}

/// The malicious coordinator.
pub struct Evil {
    pub url: String,
    pub job_id: String,
    pub spec: JobSpec,
    inner: Arc<Inner>,
    _dir: tempfile::TempDir,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Evil {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Evil {
    /// Starts serving one job with this spec (its `job_created` entry signed by a fresh key).
    pub async fn start(spec: JobSpec) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("evil.db")).unwrap();
        let key = Identity::generate();
        let job_id = format!("j-{}", hex::encode(conclave_crypto::random_bytes::<8>()));
        let model: Vec<u8> = vec![0; spec.layout().dim() * 4];
        let info = v1::JobInfo {
            job_id: job_id.clone(),
            spec: Some(spec.to_proto()),
            state: v1::JobState::Waiting.into(),
            dim: spec.layout().dim() as u64,
            coordinator: key.participant_id().to_string(),
            ..Default::default()
        };
        let inner = Arc::new(Inner {
            info: Mutex::new(info),
            streams: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            changed: Notify::new(),
            ledger,
            key,
            model,
        });
        let evil = Service(Arc::clone(&inner));
        evil.append(vec![Payload::JobCreated(v1::JobCreated {
            job_id: job_id.clone(),
            spec: Some(spec.to_proto()),
            model_hash: blake3::hash(&inner.model).as_bytes().to_vec(),
        })]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let incoming = TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(
                    v1::jobs_server::JobsServer::new(evil.clone())
                        .max_decoding_message_size(MAX_MESSAGE_BYTES),
                )
                .add_service(
                    v1::rounds_server::RoundsServer::new(evil.clone())
                        .max_decoding_message_size(MAX_MESSAGE_BYTES),
                )
                .add_service(v1::ledger_server::LedgerServer::new(evil))
                .serve_with_incoming(incoming)
                .await;
        });
        Self {
            url,
            job_id,
            spec,
            inner,
            _dir: dir,
            server,
        }
    }

    /// The coordinator's key (it signs plans and ledger entries).
    pub fn key(&self) -> &Identity {
        &self.inner.key
    }

    /// Signs and appends ledger entries.
    pub fn append(&self, payloads: Vec<Payload>) {
        Service(Arc::clone(&self.inner)).append(payloads)
    }

    /// Changes what the job's description says (GetJob and Join answer with it).
    pub fn set_info(&self, edit: impl FnOnce(&mut v1::JobInfo)) {
        edit(&mut self.inner.info.lock().unwrap());
    }

    /// Everything participants sent so far.
    pub fn sent(&self) -> Vec<Sent> {
        self.inner.log.lock().unwrap().clone()
    }

    /// Waits (up to 30 s) until a participant sent something that `pick` accepts.
    pub async fn wait_for<T>(&self, mut pick: impl FnMut(&Sent) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let notified = self.inner.changed.notified();
            if let Some(t) = self.inner.log.lock().unwrap().iter().find_map(&mut pick) {
                return t;
            }
            tokio::time::timeout_at(deadline, notified)
                .await
                .expect("the participant never sent what the test waits for");
        }
    }

    /// Sends a work item to a participant, once it has a work stream open.
    pub async fn send(&self, did: &ParticipantId, item: v1::work_item::Item) {
        let tx = self.wait_stream(did).await;
        let _ = tx.send(Ok(v1::WorkItem { item: Some(item) }));
    }

    async fn wait_stream(&self, did: &ParticipantId) -> WorkSender {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let notified = self.inner.changed.notified();
            if let Some((tx, _)) = self.inner.streams.lock().unwrap().get(did.as_str()) {
                return tx.clone();
            }
            tokio::time::timeout_at(deadline, notified)
                .await
                .expect("the participant never opened its work stream");
        }
    }

    /// How many work streams a participant has opened so far.
    pub fn streams_opened(&self, did: &ParticipantId) -> usize {
        self.inner
            .streams
            .lock()
            .unwrap()
            .get(did.as_str())
            .map_or(0, |(_, n)| *n)
    }

    /// Waits (up to 30 s) until a participant has opened more than `n` work streams.
    pub async fn wait_streams(&self, did: &ParticipantId, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let notified = self.inner.changed.notified();
            if self.streams_opened(did) > n {
                return;
            }
            tokio::time::timeout_at(deadline, notified)
                .await
                .expect("the participant never opened another work stream");
        }
    }

    /// The model every round trains from (version 0, all zeros), and its hash.
    pub fn model_hash(&self) -> Vec<u8> {
        blake3::hash(&self.inner.model).as_bytes().to_vec()
    }

    /// Admits identities the test holds (other "hospitals"), each signing its admission as an
    /// honest participant would.
    pub fn admit(&self, people: &[&Identity]) {
        let payloads = people
            .iter()
            .map(|p| {
                let key = p.public().sealing_key.to_vec();
                let commitment = DrawChain::for_job(p, &self.job_id).commitment().to_vec();
                let digest = admission_digest(&self.job_id, &p.participant_id(), &key, &commitment);
                Payload::ParticipantAdmitted(v1::ParticipantAdmitted {
                    job_id: self.job_id.clone(),
                    participant: p.participant_id().to_string(),
                    sealing_key: key,
                    draw_commitment: commitment,
                    signature: p.sign(&digest).to_vec(),
                })
            })
            .collect();
        self.append(payloads);
    }

    /// Every participant admitted so far, in admission order, with its public keys.
    pub fn admitted(&self) -> Vec<PublicIdentity> {
        let mut out = Vec::new();
        self.inner
            .ledger
            .for_each(|e| {
                if let Payload::ParticipantAdmitted(a) = e.payload() {
                    out.push(PublicIdentity {
                        id: ParticipantId::parse(&a.participant).unwrap(),
                        sealing_key: a.sealing_key.as_slice().try_into().unwrap(),
                    });
                }
            })
            .unwrap();
        out
    }

    /// Runs the job's draw as an honest coordinator would: a pool of every admitted
    /// participant, the real participants (`real`) asked for their links over their work
    /// streams, the others' (`held`, identities the test holds) computed here. Returns the
    /// job's draw entropy.
    pub async fn draw(&self, real: &[ParticipantId], held: &[&Identity]) -> [u8; 32] {
        let mut pool: Vec<ParticipantId> = self.admitted().into_iter().map(|p| p.id).collect();
        pool.sort();
        self.append(vec![Payload::DrawPool(v1::DrawPool {
            job_id: self.job_id.clone(),
            attempt: 0,
            participants: pool.iter().map(|p| p.to_string()).collect(),
        })]);
        let task = v1::DrawTask {
            attempt: 0,
            pool: pool.iter().map(|p| p.to_string()).collect(),
        };
        for did in real {
            self.send(did, v1::work_item::Item::Draw(task.clone()))
                .await;
        }
        let hash = pool_hash(&self.job_id, 0, &pool);
        let mut reveals = Vec::new();
        let mut links = Vec::new();
        for member in &pool {
            let (value, signature) =
                if let Some(p) = held.iter().find(|p| p.participant_id() == *member) {
                    let value = DrawChain::for_job(p, &self.job_id).value(1);
                    let digest = draw_reveal_digest(&self.job_id, 0, &hash, member, &value);
                    (value.to_vec(), p.sign(&digest).to_vec())
                } else {
                    let did = member.to_string();
                    self.wait_for(|s| match s {
                        Sent::DrawReveal(r) if s.sender() == did => {
                            Some((r.value.clone(), r.signature.clone()))
                        }
                        _ => None,
                    })
                    .await
                };
            links.push(<[u8; 32]>::try_from(value.as_slice()).unwrap());
            reveals.push(v1::DrawValue {
                participant: member.to_string(),
                value,
                signature,
            });
        }
        self.append(vec![Payload::DrawReveals(v1::DrawReveals {
            job_id: self.job_id.clone(),
            attempt: 0,
            reveals,
            complete: true,
            pool_hash: hash.to_vec(),
        })]);
        draw_entropy(&hash, &links)
    }

    /// The honest plan of round `round`: every admitted participant, the committee the draw
    /// gives, signed. Returns the plan and its configuration.
    pub fn honest_plan(&self, round: u32, entropy: &[u8; 32]) -> (v1::SecaggPlan, RoundConfig) {
        let settings = self.spec.secagg().expect("a secure job");
        let participants = self.admitted();
        let ids: Vec<ParticipantId> = participants.iter().map(|p| p.id.clone()).collect();
        let seed = draw_seed(&self.job_id, round, entropy);
        let committee = draw_committee(&seed, &ids, &[], settings.committee_size as usize).unwrap();
        let config = RoundConfig {
            job_id: self.job_id.clone(),
            round,
            committee: committee
                .iter()
                .map(|m| participants.iter().find(|p| p.id == *m).unwrap().clone())
                .collect(),
            participants,
            threshold: settings.threshold as usize,
            min_participants: self.spec.min_participants as usize,
            len: self.spec.layout().dim() + 1,
            plan_hash: [0; 32],
        };
        let mut plan = config.to_plan(seed);
        plan.base_version = 0;
        plan.base_model_hash = self.model_hash();
        sign_plan(&mut plan, &self.job_id, round, self.key());
        let config = RoundConfig::from_plan(&self.job_id, round, &plan).unwrap();
        (plan, config)
    }

    /// Records round `round` as opened with `plan` (its committee, seed and digest).
    pub fn open_round(&self, round: u32, plan: &v1::SecaggPlan, config: &RoundConfig) {
        self.append(vec![Payload::RoundOpened(v1::RoundOpened {
            job_id: self.job_id.clone(),
            round,
            base_version: 0,
            base_model_hash: self.model_hash(),
            participants: config
                .participants
                .iter()
                .map(|p| p.id.to_string())
                .collect(),
            committee: config.committee.iter().map(|p| p.id.to_string()).collect(),
            draw_seed: plan.draw_seed.clone(),
            deadline_unix_ms: 0,
            plan_hash: config.plan_hash.to_vec(),
        })]);
    }

    /// A training task for round `round` with this plan (or none).
    pub fn train_task(&self, round: u32, plan: Option<v1::SecaggPlan>) -> v1::work_item::Item {
        v1::work_item::Item::Train(v1::TrainTask {
            round,
            model_version: 0,
            model_hash: self.model_hash(),
            deadline_unix_ms: u64::MAX / 2,
            secagg: plan,
        })
    }
}

#[derive(Clone)]
struct Service(Arc<Inner>);

impl Service {
    fn append(&self, payloads: Vec<Payload>) {
        let now = conclave_coordinator::state::now_ms();
        let mut batch = self.0.ledger.batch(&self.0.key, now);
        for p in payloads {
            batch.push(p);
        }
        self.0.ledger.commit(batch, &[]).unwrap();
    }

    fn record(&self, sent: Sent) {
        self.0.log.lock().unwrap().push(sent);
        self.0.changed.notify_waiters();
    }

    fn info(&self) -> v1::JobInfo {
        self.0.info.lock().unwrap().clone()
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Jobs for Service {
    async fn create_job(
        &self,
        _: Request<v1::CreateJobRequest>,
    ) -> Result<Response<v1::CreateJobResponse>, Status> {
        Err(Status::unimplemented("not here"))
    }

    async fn get_job(
        &self,
        _: Request<v1::GetJobRequest>,
    ) -> Result<Response<v1::JobInfo>, Status> {
        Ok(Response::new(self.info()))
    }

    async fn list_jobs(
        &self,
        _: Request<v1::ListJobsRequest>,
    ) -> Result<Response<v1::ListJobsResponse>, Status> {
        Ok(Response::new(v1::ListJobsResponse {
            jobs: vec![self.info()],
            next_after: String::new(),
        }))
    }

    async fn list_rounds(
        &self,
        _: Request<v1::ListRoundsRequest>,
    ) -> Result<Response<v1::ListRoundsResponse>, Status> {
        Ok(Response::new(v1::ListRoundsResponse {
            rounds: self.info().rounds,
            ..Default::default()
        }))
    }

    async fn record_export(
        &self,
        _: Request<v1::RecordExportRequest>,
    ) -> Result<Response<v1::RecordExportResponse>, Status> {
        Err(Status::unimplemented("not here"))
    }
}

#[tonic::async_trait]
impl Rounds for Service {
    async fn join(
        &self,
        request: Request<v1::JoinRequest>,
    ) -> Result<Response<v1::JoinResponse>, Status> {
        let req = request.into_inner();
        let did = req.auth.clone().unwrap_or_default().participant;
        // Admitted as an honest coordinator would (once), so the ledger stays one a replica
        // accepts.
        let already = {
            let mut found = false;
            self.0
                .ledger
                .for_each(|e| {
                    if let Payload::ParticipantAdmitted(a) = e.payload() {
                        found |= a.participant == did;
                    }
                })
                .unwrap();
            found
        };
        if !already {
            self.append(vec![Payload::ParticipantAdmitted(
                v1::ParticipantAdmitted {
                    job_id: req.job_id.clone(),
                    participant: did,
                    sealing_key: req.x25519_public.clone(),
                    draw_commitment: req.draw_commitment.clone(),
                    signature: req.admission_signature.clone(),
                },
            )]);
        }
        self.record(Sent::Join(req));
        Ok(Response::new(v1::JoinResponse {
            job: Some(self.info()),
        }))
    }

    type WorkStream = BoxStream<v1::WorkItem>;

    async fn work(
        &self,
        request: Request<v1::WorkRequest>,
    ) -> Result<Response<Self::WorkStream>, Status> {
        let did = request.into_inner().auth.unwrap_or_default().participant;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut streams = self.0.streams.lock().unwrap();
        let opened = streams.get(&did).map_or(0, |(_, n)| *n) + 1;
        streams.insert(did, (tx, opened));
        drop(streams);
        self.0.changed.notify_waiters();
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }

    type DownloadModelStream = BoxStream<v1::ModelChunk>;

    async fn download_model(
        &self,
        _: Request<v1::DownloadModelRequest>,
    ) -> Result<Response<Self::DownloadModelStream>, Status> {
        let model = self.0.model.clone();
        let hash = blake3::hash(&model).as_bytes().to_vec();
        let total = model.len() as u64;
        let chunks: Vec<Result<v1::ModelChunk, Status>> = model
            .chunks(MAX_CHUNK_BYTES)
            .enumerate()
            .map(|(i, c)| {
                Ok(v1::ModelChunk {
                    offset: (i * MAX_CHUNK_BYTES) as u64,
                    data: c.to_vec(),
                    total_bytes: if i == 0 { total } else { 0 },
                    model_hash: if i == 0 { hash.clone() } else { Vec::new() },
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn upload_update(
        &self,
        request: Request<Streaming<v1::UploadChunk>>,
    ) -> Result<Response<v1::UploadReceipt>, Status> {
        let mut stream = request.into_inner();
        let mut header = None;
        let mut payload = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk?.part {
                Some(v1::upload_chunk::Part::Header(h)) => header = Some(h),
                Some(v1::upload_chunk::Part::Data(d)) => payload.extend_from_slice(&d),
                None => {}
            }
        }
        let header = header.ok_or_else(|| Status::invalid_argument("no header"))?;
        let round = header.round;
        self.record(Sent::Upload { header, payload });
        Ok(Response::new(v1::UploadReceipt {
            round,
            payload_hash: Vec::new(),
        }))
    }

    async fn report_metrics(
        &self,
        request: Request<v1::MetricsReport>,
    ) -> Result<Response<v1::MetricsReceipt>, Status> {
        self.record(Sent::Metrics(request.into_inner()));
        Ok(Response::new(v1::MetricsReceipt {}))
    }

    async fn submit_check(
        &self,
        request: Request<v1::CheckReport>,
    ) -> Result<Response<v1::CheckReceipt>, Status> {
        self.record(Sent::Check(request.into_inner()));
        Ok(Response::new(v1::CheckReceipt {}))
    }

    async fn submit_draw_reveal(
        &self,
        request: Request<v1::DrawRevealRequest>,
    ) -> Result<Response<v1::DrawRevealReceipt>, Status> {
        self.record(Sent::DrawReveal(request.into_inner()));
        Ok(Response::new(v1::DrawRevealReceipt {}))
    }

    async fn submit_approval(
        &self,
        request: Request<v1::ApprovalRequest>,
    ) -> Result<Response<v1::ApprovalReceipt>, Status> {
        self.record(Sent::Approval(request.into_inner()));
        Ok(Response::new(v1::ApprovalReceipt {}))
    }

    async fn submit_reveal(
        &self,
        request: Request<Streaming<v1::RevealChunk>>,
    ) -> Result<Response<v1::RevealReceipt>, Status> {
        let mut stream = request.into_inner();
        let mut header = None;
        let mut partial = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk?.part {
                Some(v1::reveal_chunk::Part::Header(h)) => header = Some(h),
                Some(v1::reveal_chunk::Part::Data(d)) => partial.extend_from_slice(&d),
                None => {}
            }
        }
        let header = header.ok_or_else(|| Status::invalid_argument("no header"))?;
        self.record(Sent::Reveal { header, partial });
        Ok(Response::new(v1::RevealReceipt {}))
    }
}

#[tonic::async_trait]
impl LedgerRpc for Service {
    type EntriesStream = BoxStream<v1::LedgerEntry>;

    async fn entries(
        &self,
        request: Request<v1::LedgerRequest>,
    ) -> Result<Response<Self::EntriesStream>, Status> {
        let from = request.into_inner().from_index;
        let entries = self
            .0
            .ledger
            .read(from, 100_000)
            .map_err(|e| Status::internal(e.to_string()))?;
        let (tx, rx) = mpsc::channel(entries.len().max(1));
        for e in entries {
            let _ = tx.try_send(Ok(e.to_wire()));
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Whether the attacker, holding the keys of `held` members (its own identities), can open
/// enough of `manifest`'s boxes to rebuild every mask seed of the upload: all `c` seeds, from
/// the members' own boxes or `t` shares. If it can, the update is in the clear to it.
pub fn attacker_unmasks(
    config: &RoundConfig,
    participant: &ParticipantId,
    manifest: &v1::SealedManifest,
    held: &[&Identity],
) -> bool {
    let c = config.committee.len();
    let mut seeds = vec![false; c];
    let mut shares = vec![0usize; c];
    for (k, member) in config.committee.iter().enumerate() {
        let Some(id) = held.iter().find(|h| h.participant_id() == member.id) else {
            continue;
        };
        let info = format!(
            "conclave/secagg/box/{}/{}/{participant}/{k}",
            config.job_id, config.round
        );
        let Some(sealed) = manifest.sealed_boxes.get(k) else {
            continue;
        };
        if let Ok(plain) = conclave_crypto::seal::open(id, info.as_bytes(), b"", sealed) {
            seeds[k] = true;
            // A share of every other member's seed.
            for (j, s) in shares.iter_mut().enumerate() {
                if j != k && plain.len() >= 32 {
                    *s += 1;
                }
            }
        }
    }
    (0..c).all(|k| seeds[k] || shares[k] >= config.threshold)
}

/// The wire encoding of a plan (for storing or comparing).
pub fn plan_bytes(plan: &v1::SecaggPlan) -> Vec<u8> {
    plan.encode_to_vec()
}
