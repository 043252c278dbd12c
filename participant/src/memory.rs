//! What a participant must remember across re-sent tasks, reconnects and restarts of its own
//! process, kept in its state directory and durable (written, synced and renamed into place)
//! before anything that depends on it leaves the process:
//!
//! ```text
//! STATE_DIR/jobs/<job>/pin.json             the job spec and coordinator key pinned at first contact
//! STATE_DIR/jobs/<job>/rounds/<round>.json  the round plan acted on, and the one statement signed
//! STATE_DIR/jobs/<job>/draw.json            the pool each draw attempt's link was revealed for
//! STATE_DIR/ledger-<coordinator>.db         the verified replica of the coordinator's ledger
//! ```
//!
//! A round plan is remembered before the participant masks under it, and a statement before
//! its approval is sent: a coordinator that re-sends a task with another plan, or asks for a
//! second statement, is refused even if the participant restarted in between (DESIGN.md, "A
//! round", step 5: each member signs at most one statement per `(job, round)`, ever).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ParticipantError;

/// A participant's state directory for one job.
pub struct Memory {
    dir: PathBuf,
}

/// What was pinned at first contact.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PinRecord {
    pub coordinator: String,
    /// The protobuf-encoded job spec (hex).
    pub spec: String,
}

/// What a participant did in one round.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RoundRecord {
    /// The digest of the plan it acted on (hex), and the plan (protobuf, hex).
    pub plan_hash: String,
    pub plan: String,
    /// As a committee member: the hash of the one statement it signed (hex).
    #[serde(default)]
    pub statement: Option<String>,
    /// Whether the coordinator acknowledged this participant's upload for the round.
    #[serde(default)]
    pub uploaded: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
struct DrawRecord {
    /// attempt → hash of the pool its link was revealed for (hex).
    reveals: BTreeMap<u32, String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ParticipantError + '_ {
    move |e| ParticipantError::State(format!("{}: {e}", path.display()))
}

/// Writes `bytes` to `path` so that a crash leaves the old or the new content, durably.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ParticipantError> {
    let dir = path.parent().expect("state files live in a directory");
    fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, ParticipantError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ParticipantError::State(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), ParticipantError> {
    let bytes = serde_json::to_vec_pretty(value).expect("state records serialise");
    write_atomic(path, &bytes)
}

/// Checks that a job id is safe to use as a directory name (the coordinator's ids are
/// `j-` and hex; anything with a path separator or `..` is refused).
pub fn check_job_id(job_id: &str) -> Result<(), ParticipantError> {
    let ok = !job_id.is_empty()
        && job_id.len() <= 64
        && job_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ParticipantError::Config(format!(
            "job id {job_id:?} must be 1-64 letters, digits, '-' or '_'"
        )))
    }
}

impl Memory {
    /// The memory of `job_id` under `state_dir` (created if needed).
    pub fn open(state_dir: &Path, job_id: &str) -> Result<Self, ParticipantError> {
        check_job_id(job_id)?;
        let dir = state_dir.join("jobs").join(job_id);
        fs::create_dir_all(dir.join("rounds")).map_err(io(&dir))?;
        Ok(Self { dir })
    }

    /// Where the verified ledger replica of the coordinator with this key lives.
    pub fn replica_path(state_dir: &Path, coordinator: &str) -> PathBuf {
        let tag = &blake3::hash(coordinator.as_bytes()).to_hex()[..16];
        state_dir.join(format!("ledger-{tag}.db"))
    }

    /// The pin of this job, if it was pinned before.
    pub fn pin(&self) -> Result<Option<PinRecord>, ParticipantError> {
        read_json(&self.dir.join("pin.json"))
    }

    /// Pins the job (first contact only).
    pub fn save_pin(&self, pin: &PinRecord) -> Result<(), ParticipantError> {
        write_json(&self.dir.join("pin.json"), pin)
    }

    fn round_path(&self, round: u32) -> PathBuf {
        self.dir.join("rounds").join(format!("{round}.json"))
    }

    /// What this participant did in a round, if anything.
    pub fn round(&self, round: u32) -> Result<Option<RoundRecord>, ParticipantError> {
        read_json(&self.round_path(round))
    }

    /// Remembers the plan of a round before acting on it; refuses another plan for a round
    /// that already has one.
    pub fn remember_plan(
        &self,
        round: u32,
        plan_hash: &[u8; 32],
        plan: &[u8],
    ) -> Result<(), ParticipantError> {
        let hash = hex::encode(plan_hash);
        match self.round(round)? {
            Some(r) if r.plan_hash == hash => Ok(()),
            Some(r) => Err(ParticipantError::Refused(format!(
                "round {round}: the coordinator sent a different plan ({}…) than the one this participant acted on ({}…)",
                &hash[..12],
                &r.plan_hash[..12.min(r.plan_hash.len())]
            ))),
            None => write_json(
                &self.round_path(round),
                &RoundRecord {
                    plan_hash: hash,
                    plan: hex::encode(plan),
                    statement: None,
                    uploaded: false,
                },
            ),
        }
    }

    /// Remembers the statement this member signs in a round, durably, before the approval
    /// leaves; refuses a second, different one.
    pub fn remember_statement(&self, round: u32, hash: &[u8; 32]) -> Result<(), ParticipantError> {
        let mut record = self.round(round)?.ok_or_else(|| {
            ParticipantError::Refused(format!("round {round}: no plan was acted on"))
        })?;
        let hash = hex::encode(hash);
        match &record.statement {
            Some(h) if *h == hash => Ok(()),
            Some(_) => Err(ParticipantError::Refused(format!(
                "round {round}: this member already signed another statement"
            ))),
            None => {
                record.statement = Some(hash);
                write_json(&self.round_path(round), &record)
            }
        }
    }

    /// Remembers that the coordinator acknowledged this participant's upload for a round: a
    /// re-sent training task for it is refused (one upload per round).
    pub fn mark_uploaded(&self, round: u32) -> Result<(), ParticipantError> {
        let mut record = self.round(round)?.ok_or_else(|| {
            ParticipantError::State(format!("round {round}: no plan was acted on"))
        })?;
        record.uploaded = true;
        write_json(&self.round_path(round), &record)
    }

    /// Remembers that the link of draw attempt `attempt` is revealed for the pool with this
    /// hash; refuses a different pool for the same attempt, and an attempt older than one
    /// already revealed.
    pub fn remember_draw(
        &self,
        attempt: u32,
        pool_hash: &[u8; 32],
    ) -> Result<(), ParticipantError> {
        let path = self.dir.join("draw.json");
        let mut record: DrawRecord = read_json(&path)?.unwrap_or_default();
        let hash = hex::encode(pool_hash);
        if let Some(h) = record.reveals.get(&attempt) {
            return if *h == hash {
                Ok(())
            } else {
                Err(ParticipantError::Refused(format!(
                    "draw attempt {attempt}: the coordinator asks again with a different pool"
                )))
            };
        }
        if let Some((&last, _)) = record.reveals.last_key_value()
            && last > attempt
        {
            return Err(ParticipantError::Refused(format!(
                "draw attempt {attempt} comes after attempt {last} was revealed"
            )));
        }
        record.reveals.insert(attempt, hash);
        write_json(&path, &record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_statements_and_draws_are_remembered_once_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let m = Memory::open(dir.path(), "j-1").unwrap();
        m.remember_plan(3, &[1; 32], b"plan").unwrap();
        m.remember_plan(3, &[1; 32], b"plan").unwrap();
        assert!(matches!(
            m.remember_plan(3, &[2; 32], b"other"),
            Err(ParticipantError::Refused(_))
        ));
        m.remember_statement(3, &[5; 32]).unwrap();
        // The process restarts: a fresh handle reads what was written.
        let m = Memory::open(dir.path(), "j-1").unwrap();
        m.remember_statement(3, &[5; 32]).unwrap();
        assert!(matches!(
            m.remember_statement(3, &[6; 32]),
            Err(ParticipantError::Refused(_))
        ));
        assert_eq!(m.round(3).unwrap().unwrap().plan, hex::encode(b"plan"));
        m.remember_draw(1, &[9; 32]).unwrap();
        assert!(m.remember_draw(1, &[8; 32]).is_err());
        assert!(m.remember_draw(0, &[9; 32]).is_err());
        m.remember_draw(2, &[8; 32]).unwrap();
        assert!(check_job_id("../x").is_err());
        assert!(Memory::open(dir.path(), "a/b").is_err());
    }
}
