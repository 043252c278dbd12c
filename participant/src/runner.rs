//! Running a participant through a job: join, then do what the work stream says (evaluate a
//! model version, train a round and upload the update) until the job is done.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use conclave_aggregation::{JobSpec, Normalization, Privacy};
use conclave_crypto::{Identity, ParticipantId};
use conclave_datasets::{Table, TableSchema, load_table};
use conclave_proto::v1::work_item::Item;
use tch::Device;
use tokio::sync::mpsc::UnboundedSender;
use tonic::Code;

use crate::ParticipantError;
use crate::client::Client;
use crate::duty::{SecaggDuties, blocking};
use crate::memory::{Memory, PinRecord};
use crate::mode::{Duties, ParticipantMode, Plain, commits_to_draw};
use crate::policy::{Pin, Policy, describe};
use crate::trainer::{self, Metrics};
use conclave_proto::v1;

/// How long a participant keeps re-opening a lost work stream (the coordinator restarting,
/// the network away) before it gives up: each try waits a little longer, up to 5 s.
const RECONNECT_FOR: Duration = Duration::from_secs(600);

/// Where a participant connects, what it trains on, what it accepts and where it remembers.
#[derive(Clone, Debug)]
pub struct ParticipantConfig {
    /// Coordinator URL, e.g. `http://127.0.0.1:50051`.
    pub coordinator: String,
    pub job_id: String,
    /// Local training data (CSV or Parquet).
    pub data: PathBuf,
    /// Local held-out data; when absent, `data.eval_fraction` of `data` is held out.
    pub eval_data: Option<PathBuf>,
    pub device: Device,
    /// The least this participant accepts of a job.
    pub policy: Policy,
    /// Where it keeps its pin, the round plans and statements it acted on, and its ledger
    /// replica ([`crate::memory`]).
    pub state_dir: PathBuf,
}

/// Something a participant did; sent to the optional event channel of [`run`].
#[derive(Clone, Debug)]
pub enum Event {
    /// Pinned the job's settings and the coordinator's key at first contact (or found them
    /// unchanged since): what it agreed to.
    Pinned {
        settings: String,
        first_contact: bool,
    },
    /// Refused a round's task or plan (it broke this participant's pin, policy or the
    /// protocol); the participant stays connected for the next round.
    Refused { round: u32, reason: String },
    /// Checked every upload's box as a committee member, complaining about this many.
    CommitteeChecked { round: u32, complaints: usize },
    /// Revealed its draw-chain link for a draw attempt.
    DrawRevealed { attempt: u32 },
    /// Refused to reveal for a draw attempt.
    DrawRefused { attempt: u32, reason: String },
    /// Signed a secure-aggregation round's statement as a committee member.
    CommitteeSigned { round: u32 },
    /// Revealed its partial sum and shares as a committee member.
    CommitteeRevealed { round: u32 },
    /// Refused to sign or reveal (the statement or approvals did not pass its checks).
    CommitteeRefused { round: u32, reason: String },
    /// Joined the job with this many training and evaluation rows.
    Joined { train_rows: usize, eval_rows: usize },
    /// Trained a round; `delta` is exactly what was uploaded.
    Trained {
        round: u32,
        num_samples: u64,
        delta: Vec<f32>,
    },
    /// The coordinator refused or missed the upload (e.g. the round closed first).
    UploadRefused { round: u32, reason: String },
    /// Evaluated and reported a model version.
    Evaluated {
        model_version: u32,
        metrics: Metrics,
    },
    /// The job finished.
    Done { final_model_version: u32 },
}

/// Parses a `--device` value: `cpu`, `cuda`, `cuda:N`, or `auto` (CUDA when present).
pub fn parse_device(text: &str) -> Result<Device, ParticipantError> {
    match text {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available()),
        "cuda" => cuda(0, text),
        _ => match text
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => cuda(n, text),
            None => Err(ParticipantError::Config(format!(
                "unknown device {text:?}; expected cpu, cuda, cuda:N or auto"
            ))),
        },
    }
}

fn cuda(n: usize, text: &str) -> Result<Device, ParticipantError> {
    if tch::Cuda::is_available() && (n as i64) < tch::Cuda::device_count() {
        Ok(Device::Cuda(n))
    } else {
        Err(ParticipantError::DeviceUnavailable(text.into()))
    }
}

/// Loads the participant's training and evaluation tables as the job describes them.
pub fn load_local_data(
    spec: &JobSpec,
    config: &ParticipantConfig,
    seed: u64,
) -> Result<(Table, Table), ParticipantError> {
    let schema = TableSchema {
        features: spec.data.features.clone(),
        label: spec.data.label.clone(),
        num_classes: spec.data.num_classes,
    };
    let table = load_table(&config.data, &schema)?;
    let (mut train, mut eval) = match &config.eval_data {
        Some(path) => (table, load_table(path, &schema)?),
        None => {
            if spec.data.eval_fraction <= 0.0 || table.rows() < 2 {
                return Err(ParticipantError::Config(
                    "no evaluation data: pass an evaluation file or set data.eval_fraction > 0 with at least 2 rows".into(),
                ));
            }
            table.split(spec.data.eval_fraction, seed)
        }
    };
    if eval.rows() == 0 {
        return Err(ParticipantError::Config(
            "the evaluation split is empty".into(),
        ));
    }
    if spec.data.normalize == Normalization::LocalZScore {
        let (mean, std) = train.column_stats();
        train.standardize(&mean, &std);
        eval.standardize(&mean, &std);
    }
    Ok((train, eval))
}

fn emit(events: &Option<UnboundedSender<Event>>, event: Event) {
    if let Some(tx) = events {
        let _ = tx.send(event);
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Reports what a committee or draw duty came to. A refusal is an event; a call that failed
/// (e.g. the coordinator restarted in between) is only logged: the participant keeps its
/// state and waits to be asked again.
fn committee_outcome(
    events: &Option<UnboundedSender<Event>>,
    round: u32,
    duty: &str,
    outcome: Result<Event, ParticipantError>,
) {
    match outcome {
        Ok(event) => {
            if let Event::CommitteeRefused { round, reason } = &event {
                tracing::warn!(round, reason, "committee request refused");
            }
            emit(events, event);
        }
        Err(ParticipantError::Refused(reason)) => {
            tracing::warn!(round, duty, reason, "refused");
            emit(
                events,
                Event::CommitteeRefused {
                    round,
                    reason: reason.clone(),
                },
            );
        }
        Err(e) => {
            tracing::warn!(round, duty, error = %e, "committee call failed; waiting for the coordinator to ask again")
        }
    }
}

/// Pins the job at first contact (after checking it against `policy`), or checks it against
/// the pin a previous run made. Returns the pin and whether it is new.
fn pin_job(
    memory: &Memory,
    policy: &Policy,
    job_id: &str,
    info: &v1::JobInfo,
) -> Result<(Pin, bool), ParticipantError> {
    let spec = JobSpec::from_proto(&info.spec.clone().unwrap_or_default())?;
    if let Some(record) = memory.pin()? {
        let spec_bytes = hex::decode(&record.spec)
            .map_err(|e| ParticipantError::State(format!("pinned spec: {e}")))?;
        let pin = Pin::from_parts(job_id, &record.coordinator, &spec_bytes)
            .map_err(|e| ParticipantError::State(format!("pinned job: {e}")))?;
        pin.check(&info.coordinator, &spec)
            .map_err(ParticipantError::Refused)?;
        return Ok((pin, false));
    }
    policy
        .admit(&spec)
        .map_err(|e| ParticipantError::Refused(format!("job {job_id}: {e}")))?;
    let coordinator = ParticipantId::parse(&info.coordinator).map_err(|e| {
        ParticipantError::Config(format!("the coordinator did not name a valid key: {e}"))
    })?;
    let pin = Pin {
        job_id: job_id.into(),
        coordinator,
        spec,
    };
    memory.save_pin(&PinRecord {
        coordinator: pin.coordinator.to_string(),
        spec: hex::encode(pin.spec_bytes()),
    })?;
    Ok((pin, true))
}

/// Runs a participant until its job finishes. Returns the final model version.
pub async fn run(
    config: ParticipantConfig,
    identity: Arc<Identity>,
    events: Option<UnboundedSender<Event>>,
) -> Result<u32, ParticipantError> {
    let memory = Memory::open(&config.state_dir, &config.job_id)?;
    let mut client = Client::connect_patiently(&config.coordinator, Arc::clone(&identity)).await?;
    // Read the job and check it against this participant's policy (or its pin) and its local
    // data before joining: a hospital whose export is broken should learn it before it is
    // counted in a round.
    let info = client.job(&config.job_id).await?;
    let (pin, first_contact) = pin_job(&memory, &config.policy, &config.job_id, &info)?;
    emit(
        &events,
        Event::Pinned {
            settings: describe(&pin.spec),
            first_contact,
        },
    );
    let spec = Arc::new(pin.spec.clone());
    let seed = spec.seed
        ^ u64::from_le_bytes(
            blake3::hash(client.identity().participant_id().as_str().as_bytes()).as_bytes()[..8]
                .try_into()
                .expect("8 bytes"),
        );
    let (train, eval) = {
        let (spec, config) = (Arc::clone(&spec), config.clone());
        blocking(move || load_local_data(&spec, &config, seed)).await?
    };
    let joined = client.join(&config.job_id, commits_to_draw(&spec)).await?;
    // The job as the coordinator describes it at join must be the pinned one too.
    let joined_spec = JobSpec::from_proto(&joined.spec.unwrap_or_default())?;
    pin.check(&joined.coordinator, &joined_spec)
        .map_err(ParticipantError::Refused)?;
    let mut duties = match &spec.privacy {
        Privacy::Plain => Duties::Plain(Plain {
            job_id: config.job_id.clone(),
        }),
        Privacy::Secagg(_) => Duties::Secagg(Box::new(
            SecaggDuties::open(
                Arc::clone(&identity),
                pin.clone(),
                &config.state_dir,
                &config.coordinator,
            )
            .await?
            .with_max_draw_retries(config.policy.max_draw_retries),
        )),
    };
    emit(
        &events,
        Event::Joined {
            train_rows: train.rows(),
            eval_rows: eval.rows(),
        },
    );
    let (train, eval) = (Arc::new(train), Arc::new(eval));
    let mut cache: Option<(u32, Arc<Vec<f32>>)> = None;
    let mut work = Some(client.work(&config.job_id).await?);
    // Since when the work stream has been lost, and how long to wait before the next try.
    let mut lost: Option<(std::time::Instant, Duration)> = None;
    loop {
        let next = match work.as_mut() {
            Some(stream) => stream.message().await,
            None => Err(tonic::Status::unavailable("no work stream")),
        };
        let item = match next {
            Ok(Some(item)) => {
                lost = None;
                item
            }
            // The coordinator ends a stream itself only after the job's last item: one that
            // ends before, or breaks, is re-opened (the coordinator restarted or the network
            // went away); a refusal ends the participant.
            Ok(None) => {
                work = None;
                reconnect(&mut client, &config.job_id, &mut work, &mut lost, None).await?;
                continue;
            }
            Err(status) if crate::retry::is_transport(&status) => {
                work = None;
                reconnect(
                    &mut client,
                    &config.job_id,
                    &mut work,
                    &mut lost,
                    Some(status),
                )
                .await?;
                continue;
            }
            Err(status) => {
                return Err(ParticipantError::Rpc {
                    call: "Work",
                    status,
                });
            }
        };
        match item.item {
            Some(Item::Train(task)) => {
                let round = task.round;
                // A plain task in a secure job is a downgrade, a plan in a plain job nonsense:
                // refused (by the job's mode), and the participant waits for the next round.
                if let Err(e) = duties.accept_task(&task).await {
                    match e {
                        ParticipantError::Refused(reason) => {
                            refuse(&events, round, reason);
                            continue;
                        }
                        // Its own disk failed: nothing it can vouch for.
                        e @ ParticipantError::State(_) => return Err(e),
                        // The plan could not be checked (the ledger replica could not catch
                        // up): nothing is uploaded this round.
                        other => {
                            refuse(&events, round, format!("plan not checked: {other}"));
                            continue;
                        }
                    }
                }
                if now_ms() >= task.deadline_unix_ms {
                    emit(
                        &events,
                        Event::UploadRefused {
                            round,
                            reason: "deadline passed before training".into(),
                        },
                    );
                    continue;
                }
                let global = match fetch(
                    &mut client,
                    &config.job_id,
                    &mut cache,
                    task.model_version,
                    &task.model_hash,
                )
                .await
                {
                    Ok(global) => global,
                    // The coordinator stayed away: the task comes again on the next stream.
                    Err(e) if e.is_transport() => {
                        tracing::warn!(round, error = %e, "could not download the round's model");
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let (s, t, g) = (Arc::clone(&spec), Arc::clone(&train), Arc::clone(&global));
                let device = config.device;
                let round_seed = seed.wrapping_add(round as u64);
                let delta =
                    blocking(move || trainer::train(&s, &g, &t, device, round_seed)).await?;
                let rows = train.rows() as u64;
                let uploaded = duties.upload(&mut client, &spec, &task, &delta, rows).await;
                match uploaded {
                    Ok(num_samples) => emit(
                        &events,
                        Event::Trained {
                            round,
                            num_samples,
                            delta,
                        },
                    ),
                    Err(ParticipantError::Refused(reason)) => refuse(&events, round, reason),
                    Err(e)
                        if e.is_transport()
                            || matches!(
                                e.code(),
                                Some(
                                    Code::FailedPrecondition
                                        | Code::AlreadyExists
                                        | Code::Aborted
                                        | Code::ResourceExhausted
                                        | Code::DeadlineExceeded
                                )
                            ) =>
                    {
                        tracing::warn!(round, error = %e, "update not accepted");
                        emit(
                            &events,
                            Event::UploadRefused {
                                round,
                                reason: e.to_string(),
                            },
                        );
                    }
                    Err(e) => return Err(e),
                }
            }
            Some(Item::Evaluate(task)) => {
                let params = match fetch(
                    &mut client,
                    &config.job_id,
                    &mut cache,
                    task.model_version,
                    &task.model_hash,
                )
                .await
                {
                    Ok(params) => params,
                    Err(e) if e.is_transport() => {
                        tracing::warn!(version = task.model_version, error = %e, "could not download the model to evaluate");
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let (s, e) = (Arc::clone(&spec), Arc::clone(&eval));
                let device = config.device;
                let metrics = blocking(move || trainer::evaluate(&s, &params, &e, device)).await?;
                match client
                    .report(&config.job_id, task.model_version, &metrics)
                    .await
                {
                    Ok(()) => emit(
                        &events,
                        Event::Evaluated {
                            model_version: task.model_version,
                            metrics,
                        },
                    ),
                    Err(e) if e.code() == Some(Code::AlreadyExists) => {}
                    // The coordinator stayed away: it asks again for a version nobody reported.
                    Err(e) if e.is_transport() => {
                        tracing::warn!(version = task.model_version, error = %e, "metrics not reported")
                    }
                    Err(e) => return Err(e),
                }
            }
            Some(Item::Draw(task)) => {
                let attempt = task.attempt;
                let done = duties.draw(&mut client, task).await;
                committee_outcome(&events, attempt, "draw reveal", done);
            }
            Some(Item::Check(task)) => {
                let round = task.round;
                let done = duties.check(&mut client, task).await;
                committee_outcome(&events, round, "check", done);
            }
            Some(Item::Sign(task)) => {
                let round = task.round;
                let done = duties.sign(&mut client, task).await;
                committee_outcome(&events, round, "approve", done);
            }
            Some(Item::Reveal(task)) => {
                let round = task.round;
                let done = duties.reveal(&mut client, task).await;
                committee_outcome(&events, round, "reveal", done);
            }
            Some(Item::Done(done)) => {
                emit(
                    &events,
                    Event::Done {
                        final_model_version: done.final_model_version,
                    },
                );
                return Ok(done.final_model_version);
            }
            None => {
                return Err(ParticipantError::Config(
                    "coordinator sent an empty work item".into(),
                ));
            }
        }
    }
}

/// Re-opens the work stream after it was lost (with `why`, when it broke rather than ended),
/// waiting a little longer each time; gives up once it has been lost for [`RECONNECT_FOR`].
async fn reconnect(
    client: &mut Client,
    job_id: &str,
    work: &mut Option<tonic::Streaming<v1::WorkItem>>,
    lost: &mut Option<(std::time::Instant, Duration)>,
    why: Option<tonic::Status>,
) -> Result<(), ParticipantError> {
    let (since, wait) = *lost.get_or_insert((std::time::Instant::now(), Duration::ZERO));
    if since.elapsed() > RECONNECT_FOR {
        return Err(match why {
            Some(status) => ParticipantError::Rpc {
                call: "Work",
                status,
            },
            None => ParticipantError::StreamEnded,
        });
    }
    match &why {
        Some(status) => tracing::warn!(%status, "work stream lost; reconnecting"),
        None => tracing::warn!("work stream ended before the job did; reconnecting"),
    }
    tokio::time::sleep(wait).await;
    *lost = Some((
        since,
        (wait * 2).clamp(Duration::from_millis(250), Duration::from_secs(5)),
    ));
    match client.work(job_id).await {
        Ok(stream) => *work = Some(stream),
        // A refusal (this participant no longer admitted, the job gone) ends it.
        Err(e) if !e.is_transport() => return Err(e),
        Err(e) => tracing::warn!(error = %e, "reconnect failed"),
    }
    Ok(())
}

fn refuse(events: &Option<UnboundedSender<Event>>, round: u32, reason: String) {
    tracing::warn!(round, reason, "refused the round's task");
    emit(events, Event::Refused { round, reason });
}

async fn fetch(
    client: &mut Client,
    job_id: &str,
    cache: &mut Option<(u32, Arc<Vec<f32>>)>,
    version: u32,
    hash: &[u8],
) -> Result<Arc<Vec<f32>>, ParticipantError> {
    if let Some((v, params)) = cache.as_ref().filter(|(v, _)| *v == version) {
        debug_assert_eq!(*v, version);
        return Ok(Arc::clone(params));
    }
    let params = Arc::new(client.download(job_id, version, hash).await?);
    *cache = Some((version, Arc::clone(&params)));
    Ok(params)
}
