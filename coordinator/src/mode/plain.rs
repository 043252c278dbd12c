//! The `plain` privacy mode: participants upload their f32 updates with a clear sample count,
//! the coordinator checks each one (finite, within the clip norm) and keeps it on disk, and a
//! round's aggregate is the sample-weighted mean of its updates read back from their files one
//! block at a time. No committee, no draw.

use conclave_aggregation::fedavg::StreamingMean;
use conclave_aggregation::job::MAX_SAMPLES;
use conclave_aggregation::quantize::CLIP_SLACK;
use conclave_aggregation::{AggregationError, JobSpec};
use conclave_crypto::ParticipantId;
use conclave_ledger::verify::OpenRound;
use conclave_proto::v1::{self, work_item::Item};

use super::{Aggregate, Closing, Opening, RoundMode, Step, Stepping, UploadKind};
use crate::job::each_finite_f32;
use crate::state::UploadTicket;
use crate::store::{RoundRecord, Store, UploadPart, UploadRecord};
use crate::telemetry;
use crate::work::WorkCursor;
use crate::{CoordinatorError, State};

/// The plain mode: it keeps no state of its own between steps.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Plain;

impl RoundMode for Plain {
    fn label(&self) -> &'static str {
        "plain"
    }

    fn needs_draw(&self) -> bool {
        false
    }

    fn check_join(&self, draw_commitment: &[u8]) -> Result<(), CoordinatorError> {
        if draw_commitment.is_empty() {
            Ok(())
        } else {
            Err(CoordinatorError::InvalidRequest(
                "a plain job takes no draw commitment".into(),
            ))
        }
    }

    fn check_room(&self, _: &str, _: usize) -> Result<(), CoordinatorError> {
        Ok(())
    }

    fn upload_dim(&self, model_dim: usize) -> u64 {
        model_dim as u64
    }

    fn check_header(
        &self,
        spec: &JobSpec,
        _: &ParticipantId,
        header: &v1::UploadHeader,
    ) -> Result<UploadKind, CoordinatorError> {
        if header.manifest.is_some() {
            return Err(CoordinatorError::InvalidRequest(
                "this job takes plain updates, not a manifest".into(),
            ));
        }
        if header.num_samples == 0 || header.num_samples > MAX_SAMPLES {
            return Err(CoordinatorError::InvalidRequest(format!(
                "num_samples must be between 1 and {MAX_SAMPLES}"
            )));
        }
        if let Some(max) = spec.max_samples
            && header.num_samples > max
        {
            return Err(CoordinatorError::TooManySamples {
                got: header.num_samples,
                max,
            });
        }
        Ok(UploadKind::Plain {
            clip_norm: spec.clip_norm,
        })
    }

    fn open_round(&mut self, _: &Opening<'_>, _: &mut RoundRecord) -> Vec<u8> {
        Vec::new()
    }

    fn resume_round(
        &mut self,
        _: &JobSpec,
        _: &str,
        _: &RoundRecord,
        _: &Store,
        _: Option<&OpenRound>,
    ) -> Result<(), CoordinatorError> {
        // A plain round's uploads are its record's and their files: nothing to rebuild.
        Ok(())
    }

    fn forget_round(&mut self) {}

    fn phase(&self, _: u32) -> telemetry::Phase {
        telemetry::Phase::Collect
    }

    fn epoch(&self) -> Option<(u32, super::secagg::Phase, bool)> {
        None
    }

    fn step(&mut self, s: &mut Stepping<'_>) -> Step {
        if !s.complete && s.now < s.deadline {
            return Step::Wait(s.deadline);
        }
        if s.uploads < s.min_participants || s.uploads == 0 {
            return Step::Fail(format!(
                "{} uploads, fewer than min_participants ({})",
                s.uploads, s.min_participants
            ));
        }
        // Averaged without the job's lock: uploads to the round are refused from here on, so
        // the updates averaged are the round's.
        Step::Aggregate
    }

    fn aggregate(&self, c: &Closing<'_>) -> Result<Result<Aggregate, String>, CoordinatorError> {
        plain_mean(c.job_id, c.dim, c.store, c.round)
    }

    fn record_close(&self, round: &RoundRecord, entry: &mut v1::RoundClosed) -> Vec<String> {
        entry.contributors = round
            .uploads
            .iter()
            .map(|u| v1::Contribution {
                participant: u.did.clone(),
                num_samples: u.num_samples,
            })
            .collect();
        Vec::new()
    }

    fn committee_dropouts(&self, _: &RoundRecord, _: &[String]) -> u64 {
        0
    }

    fn train_plan(&self, _: u32) -> Option<Option<v1::SecaggPlan>> {
        Some(None)
    }

    fn member_work(
        &self,
        _: &ParticipantId,
        _: &mut WorkCursor,
        _: &mut Vec<Item>,
    ) -> Result<(), CoordinatorError> {
        Ok(())
    }
}

impl State {
    /// Stores a complete plain upload whose header was checked: its hash, every element
    /// finite, its norm within the job's clip norm; durable before it returns.
    pub(crate) fn accept_plain(
        &self,
        ticket: &UploadTicket,
        clip_norm: Option<f32>,
        payload: &[u8],
    ) -> Result<(), CoordinatorError> {
        if blake3::hash(payload).as_bytes() != &ticket.payload_hash {
            return Err(CoordinatorError::HashMismatch);
        }
        // Checked in place: no second copy of the update.
        let mut squares = 0f64;
        each_finite_f32(payload, |x| squares += x as f64 * x as f64)?;
        if let Some(clip) = clip_norm {
            let norm = squares.sqrt();
            // The participant clips in f32, which can overshoot by an ulp or so.
            if norm > clip as f64 * (1.0 + CLIP_SLACK) {
                return Err(CoordinatorError::NotClipped { norm, clip });
            }
        }
        let store = self.store();
        let staged = store.stage_update(
            &ticket.job,
            ticket.round,
            ticket.did.as_str(),
            UploadPart::Payload,
            payload,
        )?;
        let result = self.with_job(&ticket.job, |job, store| {
            ticket.check(job)?;
            store.commit_update(
                &staged,
                &ticket.job,
                ticket.round,
                ticket.did.as_str(),
                UploadPart::Payload,
            )?;
            ticket.record(job, store)?;
            job.bump();
            Ok(())
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&staged);
        }
        result
    }
}

/// Bytes of an update file read at a time when averaging (4 MiB).
const READ_BLOCK: usize = 4 << 20;

/// Fills `buf` from `file` as far as it goes; returns the bytes read (fewer only at the end).
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// A plain round's aggregate: the sample-weighted mean of its uploads, read from their
/// durable files one block at a time (only the mean and one block of one update are in
/// memory, however many uploaded), in the order of the uploaders' did:keys so that the result
/// does not depend on the order they arrived in. `Err` inside: the round fails, with why.
fn plain_mean(
    job_id: &str,
    dim: usize,
    store: &Store,
    round: &RoundRecord,
) -> Result<Result<Aggregate, String>, CoordinatorError> {
    let mut uploads: Vec<&UploadRecord> = round.uploads.iter().collect();
    uploads.sort_by(|a, b| a.did.cmp(&b.did));
    // What cannot be fixed by trying again fails the round (with why) instead of stalling it.
    let Some(total) = uploads
        .iter()
        .try_fold(0u64, |t, u| t.checked_add(u.num_samples))
    else {
        return Ok(Err("the round's sample counts overflow".into()));
    };
    let mut sum = vec![0f32; dim];
    let mut mean = match StreamingMean::new(&mut sum, total) {
        Ok(mean) => mean,
        Err(e) => return Ok(Err(e.to_string())),
    };
    // Each update is read in blocks: one block of it is in memory, not the whole update.
    let mut block = vec![0u8; READ_BLOCK];
    let mut part = Vec::with_capacity(READ_BLOCK / 4);
    for u in uploads {
        let added = (|| -> Result<(), String> {
            let mut file = store
                .open_update(job_id, round.round, &u.did, UploadPart::Payload)
                .map_err(|e| e.to_string())?;
            let mut parts = mean.add_parts(u.num_samples).map_err(|e| e.to_string())?;
            let mut read = 0usize;
            loop {
                let n = read_full(&mut file, &mut block).map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                if !n.is_multiple_of(4) {
                    return Err("its file is not whole f32s".into());
                }
                part.clear();
                each_finite_f32(&block[..n], |v| part.push(v)).map_err(|e| match e {
                    CoordinatorError::NonFinite { index } => {
                        format!("element {} is NaN or infinite", read / 4 + index)
                    }
                    other => other.to_string(),
                })?;
                parts.add(&part).map_err(|e| e.to_string())?;
                read += n;
            }
            parts.finish().map_err(|e| e.to_string())
        })();
        if let Err(e) = added {
            return Ok(Err(format!("the update of {} cannot be used: {e}", u.did)));
        }
    }
    match mean.finish() {
        Ok(()) => Ok(Ok(Aggregate { mean: sum, total })),
        Err(AggregationError::NonFinite { index }) => Ok(Err(format!(
            "the aggregate overflows: parameter {index} of the mean update is not finite"
        ))),
        Err(e) => Ok(Err(e.to_string())),
    }
}
