//! A hospital's own rules for what it takes part in (DESIGN.md, "The participant's own
//! policy"). [`Policy`] states the least it accepts: secure aggregation unless plain mode is
//! explicitly allowed, and at least a committee size, threshold and number of participants
//! per round. At first contact the participant pins the job's spec and the coordinator's key
//! ([`Pin`], kept in its state directory); every later spec, plan or task is compared with the
//! pin and refused, naming what differed, if it does not match.

use conclave_aggregation::{JobSpec, Privacy};
use conclave_crypto::ParticipantId;
use conclave_proto::v1;
use prost::Message;

/// The least a participant accepts of a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Take part in `privacy = "plain"` jobs (updates in the clear). Off unless asked for.
    pub allow_plain: bool,
    /// Smallest committee size accepted (secure jobs).
    pub min_committee: u32,
    /// Smallest threshold accepted (secure jobs; always more than half the committee).
    pub min_threshold: u32,
    /// Smallest `min_participants` accepted: fewer uploads in a sum reveal more of each.
    pub min_participants: u32,
    /// Most failed draw attempts accepted before a secure job's first round. Each retry gives
    /// the coordinator one more committee draw to choose from (at the price of a pool member
    /// that did not reveal, recorded in the ledger), so this bounds how far it can bias the
    /// committee.
    pub max_draw_retries: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            allow_plain: false,
            min_committee: 0,
            min_threshold: 0,
            min_participants: 0,
            max_draw_retries: DEFAULT_MAX_DRAW_RETRIES,
        }
    }
}

/// Failed draw attempts a participant accepts unless told otherwise.
pub const DEFAULT_MAX_DRAW_RETRIES: u32 = 3;

impl Policy {
    /// Whether this policy accepts a job; the error says which rule it breaks.
    pub fn admit(&self, spec: &JobSpec) -> Result<(), String> {
        let mut problems = Vec::new();
        match spec.secagg() {
            None if !self.allow_plain => problems.push(
                "the job is plain (updates in the clear); pass --allow-plain to take part anyway"
                    .to_string(),
            ),
            None => {}
            Some(s) => {
                if s.committee_size < self.min_committee {
                    problems.push(format!(
                        "committee_size {} is below this participant's minimum {}",
                        s.committee_size, self.min_committee
                    ));
                }
                if s.threshold < self.min_threshold {
                    problems.push(format!(
                        "threshold {} is below this participant's minimum {}",
                        s.threshold, self.min_threshold
                    ));
                }
            }
        }
        if spec.min_participants < self.min_participants {
            problems.push(format!(
                "min_participants {} is below this participant's minimum {}",
                spec.min_participants, self.min_participants
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// What a participant pinned of a job at first contact.
#[derive(Clone, Debug, PartialEq)]
pub struct Pin {
    pub job_id: String,
    /// The coordinator's key: it signs round plans and every ledger entry.
    pub coordinator: ParticipantId,
    pub spec: JobSpec,
}

impl Pin {
    /// The spec's wire bytes (as stored).
    pub fn spec_bytes(&self) -> Vec<u8> {
        self.spec.to_proto().encode_to_vec()
    }

    /// Parses a stored pin.
    pub fn from_parts(job_id: &str, coordinator: &str, spec: &[u8]) -> Result<Self, String> {
        let coordinator = ParticipantId::parse(coordinator).map_err(|e| e.to_string())?;
        let wire = v1::JobSpec::decode(spec).map_err(|e| e.to_string())?;
        let spec = JobSpec::from_proto(&wire).map_err(|e| e.to_string())?;
        Ok(Self {
            job_id: job_id.into(),
            coordinator,
            spec,
        })
    }

    /// Refuses a job description that differs from the pin, naming what differed.
    pub fn check(&self, coordinator: &str, spec: &JobSpec) -> Result<(), String> {
        let mut diff = Vec::new();
        if coordinator != self.coordinator.as_str() {
            diff.push(format!(
                "the coordinator key is {coordinator}, pinned {}",
                self.coordinator
            ));
        }
        diff.extend(differences(&self.spec, spec));
        if diff.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "job {} is not the one this participant joined: {}",
                self.job_id,
                diff.join("; ")
            ))
        }
    }
}

/// The job's privacy settings in words, as a participant is shown them when it pins them.
pub fn describe(spec: &JobSpec) -> String {
    let clip = spec.clip_norm.map_or("none".to_string(), |c| c.to_string());
    let admission = if spec.admission.is_empty() {
        "; open admission: anyone may join, so a sum may include identities the coordinator controls".to_string()
    } else {
        format!("; admission list of {}", spec.admission.len())
    };
    let settings = match spec.secagg() {
        Some(s) => format!(
            "privacy secagg, committee {} with threshold {}, at least {} participants per round, clip_norm {clip}, max_samples {}, max_participants {} (fixed-point scale {:.0})",
            s.committee_size,
            s.threshold,
            spec.min_participants,
            s.quant.max_samples(),
            s.quant.max_participants(),
            s.quant.scale()
        ),
        None => format!(
            "privacy plain (updates in the clear), at least {} participants per round, clip_norm {clip}",
            spec.min_participants
        ),
    };
    settings + &admission
}

/// The settings in which two specs differ, by name (privacy settings first).
pub fn differences(pinned: &JobSpec, now: &JobSpec) -> Vec<String> {
    let mut out = Vec::new();
    let mode = |s: &JobSpec| match s.privacy {
        Privacy::Plain => "plain",
        Privacy::Secagg(_) => "secagg",
    };
    let mut field = |name: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{name} is {b}, pinned {a}"));
        }
    };
    field("privacy", mode(pinned).into(), mode(now).into());
    let c = |s: &JobSpec| s.secagg().map(|x| (x.committee_size, x.threshold));
    field(
        "committee_size",
        format!("{:?}", c(pinned).map(|x| x.0)),
        format!("{:?}", c(now).map(|x| x.0)),
    );
    field(
        "threshold",
        format!("{:?}", c(pinned).map(|x| x.1)),
        format!("{:?}", c(now).map(|x| x.1)),
    );
    field(
        "min_participants",
        pinned.min_participants.to_string(),
        now.min_participants.to_string(),
    );
    field(
        "clip_norm",
        format!("{:?}", pinned.clip_norm),
        format!("{:?}", now.clip_norm),
    );
    field(
        "max_samples",
        format!("{:?}", pinned.max_samples),
        format!("{:?}", now.max_samples),
    );
    let q = |s: &JobSpec| s.secagg().map(|x| x.quant.max_participants());
    field(
        "max_participants",
        format!("{:?}", q(pinned)),
        format!("{:?}", q(now)),
    );
    field(
        "strategy",
        format!("{:?}", pinned.strategy),
        format!("{:?}", now.strategy),
    );
    if out.is_empty() && pinned != now {
        out.push("other job settings (model, data, training, rounds or admission)".into());
    }
    out
}

/// A small secure job for unit tests: 3 participants, committee 3, threshold 2.
#[cfg(test)]
pub(crate) const TEST_SECAGG_SPEC: &str = r#"
name = "p"
rounds = 3
min_participants = 2
start_participants = 3
privacy = "secagg"
committee_size = 3
threshold = 2
clip_norm = 1.0
max_samples = 100
[model]
kind = "logistic_regression"
[data]
features = ["a"]
label = "y"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_is_refused_unless_allowed_and_minimums_hold() {
        let secure = JobSpec::from_toml(TEST_SECAGG_SPEC).unwrap();
        let plain =
            JobSpec::from_toml(&TEST_SECAGG_SPEC.replace("\"secagg\"", "\"plain\"")).unwrap();
        let policy = Policy::default();
        policy.admit(&secure).unwrap();
        assert!(policy.admit(&plain).unwrap_err().contains("--allow-plain"));
        let open = Policy {
            allow_plain: true,
            ..Policy::default()
        };
        open.admit(&plain).unwrap();
        let strict = Policy {
            min_committee: 5,
            min_threshold: 3,
            ..Policy::default()
        };
        let err = strict.admit(&secure).unwrap_err();
        assert!(
            err.contains("committee_size 3") && err.contains("threshold 2"),
            "{err}"
        );
    }

    #[test]
    fn a_changed_spec_or_coordinator_is_named() {
        let spec = JobSpec::from_toml(TEST_SECAGG_SPEC).unwrap();
        let coordinator = conclave_crypto::Identity::generate().participant_id();
        let pin = Pin {
            job_id: "j".into(),
            coordinator: coordinator.clone(),
            spec: spec.clone(),
        };
        pin.check(coordinator.as_str(), &spec).unwrap();
        let back = Pin::from_parts("j", coordinator.as_str(), &pin.spec_bytes()).unwrap();
        assert_eq!(back, pin);
        let plain =
            JobSpec::from_toml(&TEST_SECAGG_SPEC.replace("\"secagg\"", "\"plain\"")).unwrap();
        let err = pin.check(coordinator.as_str(), &plain).unwrap_err();
        assert!(err.contains("privacy is plain, pinned secagg"), "{err}");
        let weaker =
            JobSpec::from_toml(&TEST_SECAGG_SPEC.replace("threshold = 2", "threshold = 3"))
                .unwrap();
        assert!(
            pin.check(coordinator.as_str(), &weaker)
                .unwrap_err()
                .contains("threshold")
        );
        let other = conclave_crypto::Identity::generate().participant_id();
        assert!(
            pin.check(other.as_str(), &spec)
                .unwrap_err()
                .contains("coordinator key")
        );
        let renamed =
            JobSpec::from_toml(&TEST_SECAGG_SPEC.replace("rounds = 3", "rounds = 4")).unwrap();
        assert!(
            pin.check(coordinator.as_str(), &renamed)
                .unwrap_err()
                .contains("other job settings")
        );
    }
}
