//! Privacy modes on the coordinator's side (DESIGN.md step 3): all that a job's rounds do
//! differently in `plain` and in `secagg`. That is what an upload's header carries and how its
//! payload is checked and kept, how a round is set up as it opens (a committee and a signed
//! plan, or nothing), how an open round moves on, what work the participants get, how the
//! round's aggregate (the mean update) is computed, and what its close records. What becomes
//! of the aggregate is the job's server strategy's ([`conclave_aggregation::strategy`]), the
//! same in every mode.
//!
//! Each mode is a module implementing [`RoundMode`]; a job holds its mode as [`Mode`], an
//! exhaustive enum built from the job's spec. A new mode is a new module and one arm of
//! [`Mode`]: the compiler then names every `match` that must say what the new mode does, and
//! the trait every method it must implement. Nothing else in the coordinator asks which mode a
//! job is in, and nothing takes the plain path by default.

pub(crate) mod plain;
pub(crate) mod secagg;

use std::collections::HashMap;

use conclave_aggregation::{JobSpec, Privacy};
use conclave_crypto::{Identity, ParticipantId};
use conclave_ledger::verify::OpenRound;
use conclave_proto::v1::{self, work_item::Item};

use crate::CoordinatorError;
use crate::store::{ParticipantRecord, RoundRecord, Store};
use crate::telemetry;
use crate::work::WorkCursor;

/// A job's privacy mode and the coordinator's state for it.
pub(crate) enum Mode {
    Plain(plain::Plain),
    Secagg(secagg::Secure),
}

/// What an upload carries beside its vector, by mode; checked with the signed header.
#[derive(Debug)]
pub enum UploadKind {
    /// Plain f32 parameters with a clear sample count, within the job's clip norm if it has one.
    Plain { clip_norm: Option<f32> },
    /// A masked ring vector with its sealed manifest, and the manifest's hash (what the
    /// participant's contribution signature covers).
    Masked {
        manifest: v1::SealedManifest,
        hash: [u8; 32],
    },
}

impl UploadKind {
    /// The manifest hash the contribution signature and the ledger entry carry (empty for a
    /// plain upload).
    pub fn manifest_hash(&self) -> &[u8] {
        match self {
            UploadKind::Plain { .. } => &[],
            UploadKind::Masked { hash, .. } => hash,
        }
    }
}

/// What a round being opened is set up from.
pub(crate) struct Opening<'a> {
    pub spec: &'a JobSpec,
    pub job_id: &'a str,
    /// Every admitted participant, in admission order.
    pub participants: &'a [ParticipantRecord],
    /// The round before this one, if any (its committee sits this draw out where it can).
    pub previous: Option<&'a RoundRecord>,
    /// The job's draw entropy (all zeros before a draw, which only plain jobs have).
    pub entropy: [u8; 32],
    /// The hash of the model the round starts from.
    pub base_model_hash: Vec<u8>,
    /// The coordinator's identity, which signs what a round's plan says.
    pub coordinator: &'a Identity,
}

/// What one step of an open round looks at.
pub(crate) struct Stepping<'a> {
    pub job_id: &'a str,
    pub round: u32,
    /// The round's collection deadline (unix ms).
    pub deadline: u64,
    /// Whether every update the round will get is in (see `State::collected`).
    pub complete: bool,
    pub now: u64,
    /// Uploads the round has accepted.
    pub uploads: usize,
    pub min_participants: usize,
    /// How long each phase after collection may take (ms).
    pub phase_ms: u64,
    /// Participants with an open work stream, and how many.
    pub connected: &'a HashMap<String, usize>,
    /// Set by the step when the round moved to its next phase (its driver then runs again).
    pub moved: bool,
}

/// What an open round does next.
pub(crate) enum Step {
    /// Stay open until this time (or until woken by a message).
    Wait(u64),
    /// The round fails now, with why.
    Fail(String),
    /// Every update the round uses is in: compute its aggregate ([`RoundMode::aggregate`],
    /// without the job's lock) and close it with the model the strategy makes of it.
    Aggregate,
}

/// What a round collected, as a mode computes it: the sample-weighted mean update
/// `Σ n_i Δ_i / Σ n_i` and `Σ n_i`. It is all the coordinator learns of the round's updates
/// in a secure mode, and all a server strategy is given in every mode.
#[derive(Debug)]
pub(crate) struct Aggregate {
    pub mean: Vec<f32>,
    pub total: u64,
}

/// What a round's new model is computed from, with no lock held.
pub(crate) struct Closing<'a> {
    pub job_id: &'a str,
    /// The model's parameter count.
    pub dim: usize,
    pub store: &'a Store,
    /// The round as it closes: its uploads are all it will use.
    pub round: &'a RoundRecord,
}

/// The rules one privacy mode gives a job's rounds, on the coordinator's side.
pub(crate) trait RoundMode {
    /// The mode's name in telemetry labels and job info.
    fn label(&self) -> &'static str;

    /// Whether the job's first round waits for a committee draw (DESIGN.md step 1).
    fn needs_draw(&self) -> bool;

    /// Checks what a join brings for this mode: a draw commitment, or none.
    fn check_join(&self, draw_commitment: &[u8]) -> Result<(), CoordinatorError>;

    /// Checks that the job has room for one more participant beside the `joined` ones (the
    /// mode's own bound; the server has one too).
    fn check_room(&self, job_id: &str, joined: usize) -> Result<(), CoordinatorError>;

    /// Elements in an upload's vector, for a model of `model_dim` parameters.
    fn upload_dim(&self, model_dim: usize) -> u64;

    /// Checks the mode's part of an upload header (its sample count, or its manifest) and says
    /// what the upload carries.
    fn check_header(
        &self,
        spec: &JobSpec,
        did: &ParticipantId,
        header: &v1::UploadHeader,
    ) -> Result<UploadKind, CoordinatorError>;

    /// Sets up `record`, the round being opened: fills in its committee, draw seed and plan
    /// where the mode has them. Returns the plan hash the `RoundOpened` entry carries. A round
    /// that cannot be set up is opened anyway and fails at its first step (the ledger says why).
    fn open_round(&mut self, opening: &Opening<'_>, record: &mut RoundRecord) -> Vec<u8>;

    /// Rebuilds the state of `round`, open when this coordinator restarted, from the store and
    /// what the ledger holds of it (`ledger`).
    fn resume_round(
        &mut self,
        spec: &JobSpec,
        job_id: &str,
        round: &RoundRecord,
        store: &Store,
        ledger: Option<&OpenRound>,
    ) -> Result<(), CoordinatorError>;

    /// Drops any state of the round in progress (a commit that opened it failed).
    fn forget_round(&mut self);

    /// The phase open round `round` is in, for telemetry.
    fn phase(&self, round: u32) -> telemetry::Phase;

    /// What of the mode's state changes participants' work (see `work::WorkEpoch`): streams
    /// are woken when it changes.
    fn epoch(&self) -> Option<(u32, secagg::Phase, bool)>;

    /// One step of the open round.
    fn step(&mut self, s: &mut Stepping<'_>) -> Step;

    /// The round's aggregate from what it collected (`Err` outside: a fault to retry; inside:
    /// the round fails, with why). Runs on the state [`Mode::take_round`] took out of the job.
    fn aggregate(&self, c: &Closing<'_>) -> Result<Result<Aggregate, String>, CoordinatorError>;

    /// Fills in what a successful close of `round` records of its contributors (and, in a
    /// committee mode, its statement); returns the committee members that completed their part.
    fn record_close(&self, round: &RoundRecord, entry: &mut v1::RoundClosed) -> Vec<String>;

    /// Committee members of `round` that did not finish their part (none without a committee).
    fn committee_dropouts(&self, round: &RoundRecord, completed: &[String]) -> u64;

    /// Whether a participant expected in open round `round` can be asked to train now, and with
    /// which plan: `None` while the round is not ready for uploads.
    fn train_plan(&self, round: u32) -> Option<Option<v1::SecaggPlan>>;

    /// Adds the committee work due to `did` that its stream has not been sent.
    fn member_work(
        &self,
        did: &ParticipantId,
        cursor: &mut WorkCursor,
        items: &mut Vec<Item>,
    ) -> Result<(), CoordinatorError>;
}

impl Mode {
    /// The mode of a job with `spec`, with no round in progress.
    pub fn of(spec: &JobSpec) -> Self {
        match &spec.privacy {
            Privacy::Plain => Mode::Plain(plain::Plain),
            Privacy::Secagg(settings) => Mode::Secagg(secagg::Secure::new(*settings)),
        }
    }

    /// Checks a spec being launched for what its mode needs beyond the spec's own rules.
    pub fn check_spec(spec: &JobSpec) -> Result<(), CoordinatorError> {
        match &spec.privacy {
            Privacy::Plain => Ok(()),
            Privacy::Secagg(settings) => secagg::Secure::check_spec(settings),
        }
    }

    pub fn rules(&self) -> &dyn RoundMode {
        match self {
            Mode::Plain(m) => m,
            Mode::Secagg(m) => m,
        }
    }

    pub fn rules_mut(&mut self) -> &mut dyn RoundMode {
        match self {
            Mode::Plain(m) => m,
            Mode::Secagg(m) => m,
        }
    }

    /// Takes the round in progress out of the job (to aggregate it without the job's lock, or
    /// to keep it while a commit that may fail replaces it), leaving the job with none.
    pub fn take_round(&mut self) -> Mode {
        match self {
            Mode::Plain(_) => Mode::Plain(plain::Plain),
            Mode::Secagg(m) => Mode::Secagg(m.take_round()),
        }
    }

    /// Puts back a round [`Mode::take_round`] took, replacing whatever the job holds now.
    pub fn put_round(&mut self, taken: Mode) {
        match (self, taken) {
            (Mode::Plain(_), Mode::Plain(_)) => {}
            (Mode::Secagg(m), Mode::Secagg(t)) => m.put_round(t),
            (Mode::Plain(_), _) | (Mode::Secagg(_), _) => {
                unreachable!("a job's privacy mode never changes")
            }
        }
    }

    /// The secure round in progress, if this is a secure job with round `round` open.
    pub fn secagg_round(&mut self, round: u32) -> Option<&mut secagg::SecaggRound> {
        match self {
            Mode::Plain(_) => None,
            Mode::Secagg(m) => m.round_mut(round),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_crypto::Identity;
    use conclave_ledger::sim::{PLAIN_JOB, SECAGG_JOB};

    fn spec(toml: &str) -> JobSpec {
        JobSpec::from_toml(toml).expect("the simulator's job files parse")
    }

    fn stepping(connected: &HashMap<String, usize>) -> Stepping<'_> {
        Stepping {
            job_id: "job",
            round: 1,
            deadline: 1_000,
            complete: false,
            now: 10,
            uploads: 3,
            min_participants: 2,
            phase_ms: 500,
            connected,
            moved: false,
        }
    }

    #[test]
    fn each_spec_gets_its_own_mode() {
        let plain = Mode::of(&spec(PLAIN_JOB));
        let secure = Mode::of(&spec(SECAGG_JOB));
        assert!(matches!(plain, Mode::Plain(_)));
        assert!(matches!(secure, Mode::Secagg(_)));
        assert_eq!(plain.rules().label(), "plain");
        assert_eq!(secure.rules().label(), "secagg");
        assert!(!plain.rules().needs_draw());
        assert!(secure.rules().needs_draw());
        // A masked vector carries the sample count after the parameters.
        assert_eq!(plain.rules().upload_dim(7), 7);
        assert_eq!(secure.rules().upload_dim(7), 8);
    }

    #[test]
    fn a_join_brings_what_its_mode_asks_for() {
        let (plain, secure) = (Mode::of(&spec(PLAIN_JOB)), Mode::of(&spec(SECAGG_JOB)));
        assert!(plain.rules().check_join(&[]).is_ok());
        assert!(plain.rules().check_join(&[0; 32]).is_err());
        assert!(secure.rules().check_join(&[0; 32]).is_ok());
        assert!(secure.rules().check_join(&[]).is_err());
        assert!(secure.rules().check_join(&[0; 31]).is_err());
        let max = match &spec(SECAGG_JOB).privacy {
            Privacy::Secagg(s) => s.quant.max_participants() as usize,
            Privacy::Plain => unreachable!(),
        };
        assert!(secure.rules().check_room("job", max - 1).is_ok());
        assert!(matches!(
            secure.rules().check_room("job", max),
            Err(CoordinatorError::JobFull { .. })
        ));
    }

    #[test]
    fn an_upload_header_of_the_other_mode_is_refused() {
        let did = Identity::generate().participant_id();
        let (plain_spec, secure_spec) = (spec(PLAIN_JOB), spec(SECAGG_JOB));
        let (plain, secure) = (Mode::of(&plain_spec), Mode::of(&secure_spec));
        let clear = v1::UploadHeader {
            job_id: "job".into(),
            round: 1,
            num_samples: 10,
            ..Default::default()
        };
        let kind = plain
            .rules()
            .check_header(&plain_spec, &did, &clear)
            .unwrap();
        assert!(matches!(kind, UploadKind::Plain { .. }));
        assert!(kind.manifest_hash().is_empty());
        // A clear sample count in a secure job would make a participant's weight public.
        assert!(
            secure
                .rules()
                .check_header(&secure_spec, &did, &clear)
                .is_err()
        );
        let with_manifest = v1::UploadHeader {
            num_samples: 0,
            manifest: Some(v1::SealedManifest::default()),
            ..clear.clone()
        };
        assert!(
            plain
                .rules()
                .check_header(&plain_spec, &did, &with_manifest)
                .is_err()
        );
        let none = v1::UploadHeader {
            num_samples: 0,
            ..clear
        };
        assert!(
            plain
                .rules()
                .check_header(&plain_spec, &did, &none)
                .is_err()
        );
        assert!(
            secure
                .rules()
                .check_header(&secure_spec, &did, &none)
                .is_err()
        );
    }

    #[test]
    fn a_header_must_fit_its_modes_own_rules() {
        let did = Identity::generate().participant_id();
        let mut plain_spec = spec(PLAIN_JOB);
        plain_spec.max_samples = Some(100);
        let secure_spec = spec(SECAGG_JOB);
        let (plain, secure) = (Mode::of(&plain_spec), Mode::of(&secure_spec));
        let header = |num_samples, manifest| v1::UploadHeader {
            job_id: "job".into(),
            round: 1,
            num_samples,
            manifest,
            ..Default::default()
        };
        // Plain: a count within the job's max_samples, and never past MAX_SAMPLES.
        let rules = plain.rules();
        assert!(
            rules
                .check_header(&plain_spec, &did, &header(100, None))
                .is_ok()
        );
        assert!(matches!(
            rules.check_header(&plain_spec, &did, &header(101, None)),
            Err(CoordinatorError::TooManySamples { got: 101, max: 100 })
        ));
        plain_spec.max_samples = None;
        let past = conclave_aggregation::job::MAX_SAMPLES + 1;
        assert!(
            rules
                .check_header(&plain_spec, &did, &header(past, None))
                .is_err()
        );
        // Secure: a manifest and no clear count, even beside a manifest.
        let manifest = Some(v1::SealedManifest::default());
        let both = header(10, manifest.clone());
        assert!(
            secure
                .rules()
                .check_header(&secure_spec, &did, &both)
                .is_err()
        );
        assert!(
            plain
                .rules()
                .check_header(&plain_spec, &did, &both)
                .is_err()
        );
    }

    /// The plain aggregate is the sample-weighted mean of the round's update files with the
    /// round's Σ n_i (the strategy, not the mode, adds it to the model); an update that cannot
    /// be read fails the round, naming whose it is.
    #[test]
    fn a_plain_aggregate_is_the_weighted_mean_of_the_round_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (a, b) = (Identity::generate(), Identity::generate());
        let mut round = RoundRecord {
            round: 1,
            status: crate::store::RoundStatus::Open,
            base_version: 0,
            result_version: None,
            expected: Vec::new(),
            uploads: Vec::new(),
            deadline_unix_ms: 0,
            committee: Vec::new(),
            draw_seed: String::new(),
            plan: String::new(),
            total_samples: None,
        };
        for (id, n, values) in [(&a, 10, [1.0f32, 2.0, -4.0]), (&b, 30, [-1.0, 2.0, 4.0])] {
            let did = id.participant_id().to_string();
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let staged = store
                .stage_update("job", 1, &did, crate::store::UploadPart::Payload, &bytes)
                .unwrap();
            store
                .commit_update(&staged, "job", 1, &did, crate::store::UploadPart::Payload)
                .unwrap();
            round.uploads.push(crate::store::UploadRecord {
                did,
                num_samples: n,
                payload_hash: String::new(),
            });
        }
        let plain = Mode::of(&spec(PLAIN_JOB));
        let closing = |round: &RoundRecord| {
            plain.rules().aggregate(&Closing {
                job_id: "job",
                dim: 3,
                store: &store,
                round,
            })
        };
        let Aggregate { mean, total } = closing(&round).unwrap().unwrap();
        assert_eq!(total, 40);
        // (10 · a + 30 · b) / 40.
        assert_eq!(mean, vec![-0.5, 2.0, 2.0]);
        let gone = Identity::generate().participant_id().to_string();
        round.uploads.push(crate::store::UploadRecord {
            did: gone.clone(),
            num_samples: 5,
            payload_hash: String::new(),
        });
        let reason = closing(&round).unwrap().unwrap_err();
        assert!(reason.contains(&gone), "{reason}");
    }

    #[test]
    fn a_plain_round_waits_for_its_deadline_or_every_update_then_aggregates() {
        let connected = HashMap::new();
        let mut plain = Mode::of(&spec(PLAIN_JOB));
        let mut s = stepping(&connected);
        assert!(matches!(plain.rules_mut().step(&mut s), Step::Wait(1_000)));
        s.complete = true;
        assert!(matches!(plain.rules_mut().step(&mut s), Step::Aggregate));
        s.uploads = 1;
        assert!(matches!(plain.rules_mut().step(&mut s), Step::Fail(_)));
        s.complete = false;
        s.now = 1_000;
        s.uploads = 2;
        assert!(matches!(plain.rules_mut().step(&mut s), Step::Aggregate));
        assert!(!s.moved);
    }

    #[test]
    fn a_secure_round_with_no_state_fails_and_gives_no_work() {
        let connected = HashMap::new();
        let mut secure = Mode::of(&spec(SECAGG_JOB));
        let mut s = stepping(&connected);
        s.complete = true;
        // Not set up (or not resumed): it fails at its first step instead of averaging.
        assert!(matches!(secure.rules_mut().step(&mut s), Step::Fail(_)));
        // No plan, no training: a secure job never hands out a plain task.
        assert!(secure.rules().train_plan(1).is_none());
        assert_eq!(Mode::of(&spec(PLAIN_JOB)).rules().train_plan(1), Some(None));
        assert!(secure.secagg_round(1).is_none());
    }

    #[test]
    fn a_secure_round_set_up_at_opening_travels_out_and_back_whole() {
        let spec = spec(SECAGG_JOB);
        let coordinator = Identity::generate();
        let participants: Vec<ParticipantRecord> = (0..3)
            .map(|_| {
                let p = Identity::generate().public();
                ParticipantRecord {
                    did: p.id.to_string(),
                    sealing_key: hex::encode(p.sealing_key),
                    draw_commitment: hex::encode([0u8; 32]),
                }
            })
            .collect();
        let mut record = RoundRecord {
            round: 1,
            status: crate::store::RoundStatus::Open,
            base_version: 0,
            result_version: None,
            expected: participants.iter().map(|p| p.did.clone()).collect(),
            uploads: Vec::new(),
            deadline_unix_ms: 1_000,
            committee: Vec::new(),
            draw_seed: String::new(),
            plan: String::new(),
            total_samples: None,
        };
        let mut mode = Mode::of(&spec);
        let opening = Opening {
            spec: &spec,
            job_id: "job",
            participants: &participants,
            previous: None,
            entropy: [7; 32],
            base_model_hash: vec![1; 32],
            coordinator: &coordinator,
        };
        let plan_hash = mode.rules_mut().open_round(&opening, &mut record);
        assert_eq!(plan_hash.len(), 32);
        assert_eq!(record.committee.len(), 3);
        assert!(!record.plan.is_empty() && !record.draw_seed.is_empty());
        // Collecting: participants train under the signed plan.
        let plan = mode
            .rules()
            .train_plan(1)
            .expect("collecting")
            .expect("a plan");
        assert_eq!(plan.base_model_hash, vec![1; 32]);
        assert!(
            mode.rules().train_plan(2).is_none(),
            "no other round's plan"
        );
        // Taken out to aggregate without the lock, the job holds no round; put back, it does.
        let taken = mode.take_round();
        assert!(mode.secagg_round(1).is_none());
        assert!(mode.rules().epoch().is_none());
        mode.put_round(taken);
        assert!(mode.secagg_round(1).is_some());
        // Collected with no upload: fewer than min_participants, the round fails.
        let connected = HashMap::new();
        let mut s = stepping(&connected);
        s.complete = true;
        s.uploads = 0;
        assert!(matches!(mode.rules_mut().step(&mut s), Step::Fail(_)));
        mode.rules_mut().forget_round();
        assert!(mode.secagg_round(1).is_none());
    }
}
