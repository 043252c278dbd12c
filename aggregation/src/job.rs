//! `JobSpec`: a federated job, checked. Built from a researcher's TOML job file or from the
//! wire (`v1::JobSpec`); both paths meet in [`JobSpec::from_proto`], so one set of rules
//! decides what a valid job is, and every problem is reported with its key path.

use std::collections::HashSet;
use std::fmt;

use conclave_crypto::ParticipantId;
use conclave_proto::v1;

use crate::model::{ModelArch, ModelLayout};
use crate::quantize::QuantParams;
use crate::strategy::{Adaptive, FedAvg, SecondMoment, Strategy};

/// Largest model a job may declare, in parameters.
pub const MAX_MODEL_PARAMS: u64 = 500_000_000;

/// Largest sample count one participant may claim for one update or evaluation.
pub const MAX_SAMPLES: u64 = 1 << 40;

/// How a round protects updates (DESIGN.md, "A round", step 3).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Privacy {
    /// Updates in the clear: for baselines and debugging.
    Plain,
    /// Masked, secret-shared updates unmasked only as a sum by a committee.
    Secagg(SecaggSettings),
}

/// The settings of a secure-aggregation job.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SecaggSettings {
    /// Committee size `c`.
    pub committee_size: u32,
    /// Threshold `t > c/2`: shares to rebuild a seed, signatures to act.
    pub threshold: u32,
    /// The fixed-point encoding, from clip_norm, max_samples and max_participants.
    pub quant: QuantParams,
}

impl SecaggSettings {
    /// The most participants a launch may allow with this committee: a committee member's
    /// check task holds one view of every upload (its box and the digests of all c boxes,
    /// ~256 + 68·c bytes) in one message. Checked when a job is launched, not when a stored
    /// spec is read back, so a job launched before this bound still loads and verifies.
    pub fn most_listed_participants(&self) -> u64 {
        let per_upload = 256 + 68 * u64::from(self.committee_size);
        (conclave_proto::MAX_MESSAGE_BYTES as u64 - 64 * 1024) / per_upload
    }
}

/// Defaults of the secure-aggregation settings a job file may leave out.
const DEFAULT_COMMITTEE: u32 = 10;
const DEFAULT_MAX_PARTICIPANTS: u32 = 100;

/// How a round's reward pool is split among those who earned it (DESIGN.md, "Ledger").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RewardPolicy {
    /// Whole tokens paid for each round that produces a model.
    pub pool_per_round: u64,
    /// Part of the pool for committee members who completed their duty, in basis points.
    pub committee_share_bps: u32,
    /// How the contributors' part is split.
    pub split: RewardSplit,
}

impl RewardPolicy {
    /// The default policy: 1000 tokens a round, 10% to the committee, contributors by sample
    /// count, or equally where counts are secret (secagg).
    pub fn default_for(secagg: bool) -> Self {
        Self {
            pool_per_round: DEFAULT_REWARD_POOL,
            committee_share_bps: DEFAULT_COMMITTEE_SHARE_BPS,
            split: if secagg {
                RewardSplit::Equal
            } else {
                RewardSplit::Samples
            },
        }
    }
}

/// How contributors share their part of a round's pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RewardSplit {
    /// In proportion to accepted sample counts (plain rounds, where counts are known).
    Samples,
    /// Equally (secure aggregation, where each participant's count is secret).
    Equal,
}

/// Default reward pool per round, in tokens, and the committee's default share (10%).
pub const DEFAULT_REWARD_POOL: u64 = 1000;
pub const DEFAULT_COMMITTEE_SHARE_BPS: u32 = 1000;
/// Largest reward pool per round: keeps every balance far from u64 overflow.
pub const MAX_REWARD_POOL: u64 = 1_000_000_000_000;

/// Local optimizer used by participants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Optimizer {
    Sgd,
    Adam,
}

/// Feature scaling applied by each participant before training and evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Normalization {
    None,
    /// Standardise with the mean and deviation of the participant's own training rows.
    LocalZScore,
}

/// Which columns of a participant's table are used, and how.
#[derive(Clone, Debug, PartialEq)]
pub struct DataSchema {
    pub features: Vec<String>,
    pub label: String,
    pub num_classes: u32,
    pub normalize: Normalization,
    /// Fraction of local rows held out for evaluation when no evaluation file is given.
    pub eval_fraction: f32,
}

/// Local training settings, the same for every participant.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainingConfig {
    pub local_epochs: u32,
    pub batch_size: u32,
    pub learning_rate: f32,
    pub optimizer: Optimizer,
}

/// A checked federated job.
#[derive(Clone, Debug, PartialEq)]
pub struct JobSpec {
    pub name: String,
    pub model: ModelArch,
    pub data: DataSchema,
    pub training: TrainingConfig,
    pub rounds: u32,
    /// Fewest updates a round needs to produce a model.
    pub min_participants: u32,
    /// Participants that must have joined before the first round opens (>= min_participants).
    pub start_participants: u32,
    pub round_deadline_secs: u32,
    pub privacy: Privacy,
    /// L2 bound on each participant's update; `None` leaves updates unclipped (plain only).
    /// The coordinator refuses plain uploads above it.
    pub clip_norm: Option<f32>,
    /// The most samples one participant's update may count for: plain uploads claiming more
    /// are refused; in secagg it is also the weight cap of the encoding (required there).
    pub max_samples: Option<u64>,
    pub seed: u64,
    /// Identities allowed to join; empty means open admission.
    pub admission: Vec<ParticipantId>,
    pub rewards: RewardPolicy,
    /// How each round's aggregate becomes the next global model.
    pub strategy: Strategy,
}

/// One problem in a job definition, with the key path it is at (e.g. `training.batch_size`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobProblem {
    pub path: String,
    pub message: String,
}

/// Every problem found in a job definition.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct JobError {
    pub problems: Vec<JobProblem>,
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid job ({} problem{}):",
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {}: {}", p.path, p.message)?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Problems(Vec<JobProblem>);

impl Problems {
    fn add(&mut self, path: &str, message: impl Into<String>) {
        self.0.push(JobProblem {
            path: path.into(),
            message: message.into(),
        });
    }
    fn range<T: PartialOrd + fmt::Display + Copy>(&mut self, path: &str, v: T, lo: T, hi: T) {
        if !(v >= lo && v <= hi) {
            self.add(path, format!("must be between {lo} and {hi}, got {v}"));
        }
    }
}

impl JobSpec {
    /// Parses and checks a TOML job file's text.
    pub fn from_toml(text: &str) -> Result<Self, JobError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| JobError {
            problems: vec![JobProblem {
                path: "(file)".into(),
                message: format!("not valid TOML: {}", e.message()),
            }],
        })?;
        let mut problems = Problems::default();
        let wire = crate::job_toml::to_proto(&table, &mut problems_sink(&mut problems));
        let checked = Self::from_proto(&wire);
        match checked {
            Ok(spec) if problems.0.is_empty() => Ok(spec),
            Ok(_) => Err(JobError {
                problems: problems.0,
            }),
            Err(mut e) => {
                // Type and unknown-key problems first, then rule violations, minus duplicates
                // of keys whose value could not be read at all.
                let bad_keys: HashSet<String> = problems.0.iter().map(|p| p.path.clone()).collect();
                e.problems.retain(|p| !bad_keys.contains(&p.path));
                problems.0.extend(e.problems);
                Err(JobError {
                    problems: problems.0,
                })
            }
        }
    }

    /// Checks a job received over the wire.
    pub fn from_proto(wire: &v1::JobSpec) -> Result<Self, JobError> {
        let mut p = Problems::default();
        if wire.name.trim().is_empty() {
            p.add("name", "must not be empty");
        } else if wire.name.chars().count() > 128 {
            p.add("name", "must be at most 128 characters");
        }
        p.range("rounds", wire.rounds, 1, 100_000);
        p.range("min_participants", wire.min_participants, 1, 100_000);
        let start_participants = if wire.start_participants == 0 {
            wire.min_participants
        } else {
            wire.start_participants
        };
        if start_participants < wire.min_participants || start_participants > 100_000 {
            p.add(
                "start_participants",
                format!(
                    "must be between min_participants ({}) and 100000, got {start_participants}",
                    wire.min_participants
                ),
            );
        }
        p.range(
            "round_deadline_secs",
            wire.round_deadline_secs,
            1,
            7 * 24 * 3600,
        );
        let privacy = match v1::Privacy::try_from(wire.privacy) {
            Ok(v1::Privacy::Plain) => Some(Privacy::Plain),
            Ok(v1::Privacy::Secagg) => {
                Self::check_secagg(wire, start_participants, &mut p).map(Privacy::Secagg)
            }
            Ok(v1::Privacy::Fhe) => {
                p.add(
                    "privacy",
                    "\"fhe\" is not available in this release yet; use \"plain\"",
                );
                None
            }
            _ => {
                p.add("privacy", "missing or unknown privacy mode");
                None
            }
        };
        p.range("max_samples", wire.max_samples, 0, MAX_SAMPLES);
        if !wire.clip_norm.is_finite() || wire.clip_norm < 0.0 {
            p.add(
                "clip_norm",
                format!("must be a finite number >= 0, got {}", wire.clip_norm),
            );
        }
        let mut admission = Vec::new();
        let mut seen = HashSet::new();
        for (i, did) in wire.admission.iter().enumerate() {
            match ParticipantId::parse(did) {
                Ok(id) if seen.insert(id.clone()) => admission.push(id),
                Ok(_) => p.add(&format!("admission[{i}]"), "listed twice"),
                Err(e) => p.add(&format!("admission[{i}]"), e.to_string()),
            }
        }

        let rewards = Self::check_rewards(wire, privacy.as_ref(), &mut p);
        let strategy = Self::check_strategy(wire.strategy.as_ref(), &mut p);
        let model = Self::check_model(wire.model.as_ref(), &mut p);
        let data = Self::check_data(wire.data.as_ref(), &mut p);
        let training = Self::check_training(wire.training.as_ref(), &mut p);
        if let (Some(model), Some(data)) = (&model, &data) {
            let layout = ModelLayout::new(model, data.features.len(), data.num_classes as usize);
            if layout.dim() as u64 > MAX_MODEL_PARAMS {
                p.add(
                    "model",
                    format!(
                        "has {} parameters, more than the limit {MAX_MODEL_PARAMS}",
                        layout.dim()
                    ),
                );
            }
        }
        match (privacy, model, data, training, rewards, strategy) {
            (
                Some(privacy),
                Some(model),
                Some(data),
                Some(training),
                Some(rewards),
                Some(strategy),
            ) if p.0.is_empty() => Ok(JobSpec {
                name: wire.name.clone(),
                model,
                data,
                training,
                rounds: wire.rounds,
                min_participants: wire.min_participants,
                start_participants,
                round_deadline_secs: wire.round_deadline_secs,
                privacy,
                clip_norm: (wire.clip_norm > 0.0).then_some(wire.clip_norm),
                max_samples: (wire.max_samples > 0).then_some(wire.max_samples),
                seed: wire.seed,
                admission,
                rewards,
                strategy,
            }),
            _ => Err(JobError { problems: p.0 }),
        }
    }

    fn check_secagg(wire: &v1::JobSpec, start: u32, p: &mut Problems) -> Option<SecaggSettings> {
        let before = p.0.len();
        let c = if wire.committee_size == 0 {
            DEFAULT_COMMITTEE.min(start)
        } else {
            wire.committee_size
        };
        if c == 0 || c > 255 || c > start {
            p.add(
                "committee_size",
                format!(
                    "must be between 1 and start_participants ({start}) and at most 255, got {c}"
                ),
            );
        }
        let t = if wire.threshold == 0 {
            c / 2 + 1
        } else {
            wire.threshold
        };
        if t * 2 <= c || t > c {
            p.add(
                "threshold",
                format!("must be more than half of committee_size ({c}) and at most it, got {t}"),
            );
        }
        if wire.min_participants < 2 {
            p.add("min_participants", "must be at least 2 with secagg: a sum over one participant is that participant's update");
        }
        let max_participants = if wire.max_participants == 0 {
            DEFAULT_MAX_PARTICIPANTS.max(start)
        } else {
            wire.max_participants
        };
        if max_participants < start {
            p.add(
                "max_participants",
                format!("must be at least start_participants ({start}), got {max_participants}"),
            );
        }
        if wire.clip_norm <= 0.0 {
            p.add(
                "clip_norm",
                "is required with secagg: updates are clipped to it so the ring sum cannot wrap",
            );
        }
        if wire.max_samples == 0 {
            p.add(
                "max_samples",
                "is required with secagg: the most samples one participant's update may count for",
            );
        }
        if p.0.len() != before {
            return None;
        }
        match QuantParams::new(wire.clip_norm, wire.max_samples, max_participants) {
            Ok(quant) => Some(SecaggSettings {
                committee_size: c,
                threshold: t,
                quant,
            }),
            Err(e) => {
                p.add("clip_norm", e.to_string());
                None
            }
        }
    }

    fn check_rewards(
        wire: &v1::JobSpec,
        privacy: Option<&Privacy>,
        p: &mut Problems,
    ) -> Option<RewardPolicy> {
        let secagg = matches!(privacy, Some(Privacy::Secagg(_)));
        let Some(r) = &wire.rewards else {
            return Some(RewardPolicy::default_for(secagg));
        };
        let before = p.0.len();
        p.range(
            "rewards.pool_per_round",
            r.pool_per_round,
            0,
            MAX_REWARD_POOL,
        );
        if r.committee_share_bps > 10_000 {
            p.add(
                "rewards.committee_share",
                format!(
                    "must be between 0 and 1, got {}",
                    r.committee_share_bps as f64 / 10_000.0
                ),
            );
        }
        let split = match v1::RewardSplit::try_from(r.split) {
            Ok(v1::RewardSplit::Samples) if secagg => {
                p.add(
                    "rewards.split",
                    "\"samples\" is not possible with secagg: each participant's sample count is secret; use \"equal\"",
                );
                None
            }
            Ok(v1::RewardSplit::Samples) => Some(RewardSplit::Samples),
            Ok(v1::RewardSplit::Equal) => Some(RewardSplit::Equal),
            _ => {
                p.add(
                    "rewards.split",
                    "missing or unknown; expected \"samples\" or \"equal\"",
                );
                None
            }
        };
        (p.0.len() == before).then_some(RewardPolicy {
            pool_per_round: r.pool_per_round,
            committee_share_bps: r.committee_share_bps,
            split: split?,
        })
    }

    fn check_strategy(wire: Option<&v1::ServerStrategy>, p: &mut Problems) -> Option<Strategy> {
        let Some(w) = wire else {
            return Some(Strategy::FedAvg(FedAvg));
        };
        let before = p.0.len();
        let second_moment = match v1::StrategyKind::try_from(w.kind) {
            Ok(v1::StrategyKind::Fedavg) => {
                for (key, value) in [
                    ("server_lr", w.server_lr),
                    ("beta1", w.beta1),
                    ("beta2", w.beta2),
                    ("tau", w.tau),
                ] {
                    if value != 0.0 {
                        p.add(
                            &format!("strategy.{key}"),
                            "is a setting of the adaptive strategies, not of \"fedavg\"",
                        );
                    }
                }
                return (p.0.len() == before).then_some(Strategy::FedAvg(FedAvg));
            }
            Ok(v1::StrategyKind::Fedadam) => SecondMoment::Adam,
            Ok(v1::StrategyKind::Fedyogi) => SecondMoment::Yogi,
            Ok(v1::StrategyKind::Fedadagrad) => SecondMoment::Adagrad,
            _ => {
                p.add(
                    "strategy.kind",
                    "missing or unknown; expected \"fedavg\", \"fedadam\", \"fedyogi\" or \"fedadagrad\"",
                );
                return None;
            }
        };
        let mut in_range = |key: &str, value: f32, ok: bool, range: &str| {
            if !(value.is_finite() && ok) {
                p.add(
                    &format!("strategy.{key}"),
                    format!("must be in {range}, got {value}"),
                );
            }
        };
        in_range(
            "server_lr",
            w.server_lr,
            w.server_lr > 0.0 && w.server_lr <= 10.0,
            "(0, 10]",
        );
        in_range("beta1", w.beta1, (0.0..1.0).contains(&w.beta1), "[0, 1)");
        // τ² (where v starts) must be a normal f32: a smaller τ would start v at 0 or a
        // subnormal, and the first steps could overflow.
        in_range("tau", w.tau, (1e-9..=1.0).contains(&w.tau), "[1e-9, 1]");
        if second_moment == SecondMoment::Adagrad {
            if w.beta2 != 0.0 {
                p.add(
                    "strategy.beta2",
                    "is not a setting of \"fedadagrad\" (its second moment sums d²)",
                );
            }
        } else {
            in_range("beta2", w.beta2, (0.0..1.0).contains(&w.beta2), "[0, 1)");
        }
        (p.0.len() == before).then_some(Strategy::Adaptive(Adaptive {
            second_moment,
            server_lr: w.server_lr,
            beta1: w.beta1,
            beta2: w.beta2,
            tau: w.tau,
        }))
    }

    /// The secure-aggregation settings, when the job uses secagg.
    pub fn secagg(&self) -> Option<&SecaggSettings> {
        match &self.privacy {
            Privacy::Secagg(s) => Some(s),
            Privacy::Plain => None,
        }
    }

    fn check_model(wire: Option<&v1::ModelSpec>, p: &mut Problems) -> Option<ModelArch> {
        let Some(m) = wire else {
            p.add("model", "missing");
            return None;
        };
        match v1::ModelKind::try_from(m.kind) {
            Ok(v1::ModelKind::LogisticRegression) => {
                if !m.hidden.is_empty() {
                    p.add("model.hidden", "logistic_regression has no hidden layers");
                    return None;
                }
                Some(ModelArch::LogisticRegression)
            }
            Ok(v1::ModelKind::Mlp) => {
                if m.hidden.is_empty() {
                    p.add(
                        "model.hidden",
                        "an mlp needs at least one hidden layer width",
                    );
                }
                let before = p.0.len();
                for (i, &w) in m.hidden.iter().enumerate() {
                    p.range(&format!("model.hidden[{i}]"), w, 1, 65_536);
                }
                (p.0.len() == before && !m.hidden.is_empty()).then(|| ModelArch::Mlp {
                    hidden: m.hidden.iter().map(|&w| w as usize).collect(),
                })
            }
            _ => {
                p.add(
                    "model.kind",
                    "missing or unknown; expected \"logistic_regression\" or \"mlp\"",
                );
                None
            }
        }
    }

    fn check_data(wire: Option<&v1::DataSpec>, p: &mut Problems) -> Option<DataSchema> {
        let Some(d) = wire else {
            p.add("data", "missing");
            return None;
        };
        let before = p.0.len();
        if d.features.is_empty() {
            p.add("data.features", "must list at least one column");
        }
        let mut seen = HashSet::new();
        for (i, f) in d.features.iter().enumerate() {
            if f.is_empty() {
                p.add(&format!("data.features[{i}]"), "empty column name");
            } else if !seen.insert(f.as_str()) {
                p.add(
                    &format!("data.features[{i}]"),
                    format!("column {f:?} listed twice"),
                );
            }
        }
        if d.label.is_empty() {
            p.add("data.label", "missing");
        } else if seen.contains(d.label.as_str()) {
            p.add(
                "data.label",
                format!("column {:?} is also a feature", d.label),
            );
        }
        p.range("data.num_classes", d.num_classes, 2, 10_000);
        let normalize = match v1::Normalization::try_from(d.normalize) {
            Ok(v1::Normalization::None) => Normalization::None,
            Ok(v1::Normalization::LocalZscore) => Normalization::LocalZScore,
            _ => {
                p.add(
                    "data.normalize",
                    "missing or unknown; expected \"none\" or \"local_zscore\"",
                );
                Normalization::None
            }
        };
        if !(0.0..=0.9).contains(&d.eval_fraction) {
            p.add(
                "data.eval_fraction",
                format!("must be between 0 and 0.9, got {}", d.eval_fraction),
            );
        }
        (p.0.len() == before).then(|| DataSchema {
            features: d.features.clone(),
            label: d.label.clone(),
            num_classes: d.num_classes,
            normalize,
            eval_fraction: d.eval_fraction,
        })
    }

    fn check_training(wire: Option<&v1::TrainingSpec>, p: &mut Problems) -> Option<TrainingConfig> {
        let Some(t) = wire else {
            p.add("training", "missing");
            return None;
        };
        let before = p.0.len();
        p.range("training.local_epochs", t.local_epochs, 1, 10_000);
        p.range("training.batch_size", t.batch_size, 1, 1 << 20);
        if !(t.learning_rate.is_finite() && t.learning_rate > 0.0 && t.learning_rate <= 100.0) {
            p.add(
                "training.learning_rate",
                format!("must be > 0 and <= 100, got {}", t.learning_rate),
            );
        }
        let optimizer = match v1::Optimizer::try_from(t.optimizer) {
            Ok(v1::Optimizer::Sgd) => Optimizer::Sgd,
            Ok(v1::Optimizer::Adam) => Optimizer::Adam,
            _ => {
                p.add(
                    "training.optimizer",
                    "missing or unknown; expected \"sgd\" or \"adam\"",
                );
                Optimizer::Sgd
            }
        };
        (p.0.len() == before).then_some(TrainingConfig {
            local_epochs: t.local_epochs,
            batch_size: t.batch_size,
            learning_rate: t.learning_rate,
            optimizer,
        })
    }

    /// The wire form of this job.
    pub fn to_proto(&self) -> v1::JobSpec {
        let (kind, hidden) = match &self.model {
            ModelArch::LogisticRegression => (v1::ModelKind::LogisticRegression, vec![]),
            ModelArch::Mlp { hidden } => (
                v1::ModelKind::Mlp,
                hidden.iter().map(|&w| w as u32).collect(),
            ),
        };
        v1::JobSpec {
            name: self.name.clone(),
            model: Some(v1::ModelSpec {
                kind: kind.into(),
                hidden,
            }),
            data: Some(v1::DataSpec {
                features: self.data.features.clone(),
                label: self.data.label.clone(),
                num_classes: self.data.num_classes,
                normalize: match self.data.normalize {
                    Normalization::None => v1::Normalization::None,
                    Normalization::LocalZScore => v1::Normalization::LocalZscore,
                }
                .into(),
                eval_fraction: self.data.eval_fraction,
            }),
            training: Some(v1::TrainingSpec {
                local_epochs: self.training.local_epochs,
                batch_size: self.training.batch_size,
                learning_rate: self.training.learning_rate,
                optimizer: match self.training.optimizer {
                    Optimizer::Sgd => v1::Optimizer::Sgd,
                    Optimizer::Adam => v1::Optimizer::Adam,
                }
                .into(),
            }),
            rounds: self.rounds,
            min_participants: self.min_participants,
            start_participants: self.start_participants,
            round_deadline_secs: self.round_deadline_secs,
            privacy: match self.privacy {
                Privacy::Plain => v1::Privacy::Plain,
                Privacy::Secagg(_) => v1::Privacy::Secagg,
            }
            .into(),
            clip_norm: self.clip_norm.unwrap_or(0.0),
            seed: self.seed,
            admission: self.admission.iter().map(|id| id.to_string()).collect(),
            committee_size: self.secagg().map_or(0, |s| s.committee_size),
            threshold: self.secagg().map_or(0, |s| s.threshold),
            max_samples: self.max_samples.unwrap_or(0),
            max_participants: self.secagg().map_or(0, |s| s.quant.max_participants()),
            rewards: Some(v1::RewardPolicy {
                pool_per_round: self.rewards.pool_per_round,
                committee_share_bps: self.rewards.committee_share_bps,
                split: match self.rewards.split {
                    RewardSplit::Samples => v1::RewardSplit::Samples,
                    RewardSplit::Equal => v1::RewardSplit::Equal,
                }
                .into(),
            }),
            // FedAvg is the absent strategy, so a FedAvg job's wire form is what it was
            // before strategies existed.
            strategy: match &self.strategy {
                Strategy::FedAvg(_) => None,
                Strategy::Adaptive(a) => Some(v1::ServerStrategy {
                    kind: match a.second_moment {
                        SecondMoment::Adam => v1::StrategyKind::Fedadam,
                        SecondMoment::Yogi => v1::StrategyKind::Fedyogi,
                        SecondMoment::Adagrad => v1::StrategyKind::Fedadagrad,
                    }
                    .into(),
                    server_lr: a.server_lr,
                    beta1: a.beta1,
                    beta2: a.beta2,
                    tau: a.tau,
                }),
            },
        }
    }

    /// The parameter layout of this job's model.
    pub fn layout(&self) -> ModelLayout {
        ModelLayout::new(
            &self.model,
            self.data.features.len(),
            self.data.num_classes as usize,
        )
    }
}

fn problems_sink(p: &mut Problems) -> impl FnMut(&str, String) + '_ {
    move |path, message| p.add(path, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "wdbc"
rounds = 5
min_participants = 3
round_deadline_secs = 30
privacy = "plain"

[model]
kind = "mlp"
hidden = [16, 8]

[data]
features = ["a", "b", "c"]
label = "y"
normalize = "local_zscore"

[training]
local_epochs = 2
batch_size = 16
learning_rate = 0.05
optimizer = "adam"
"#;

    fn paths(err: JobError) -> Vec<String> {
        err.problems.into_iter().map(|p| p.path).collect()
    }

    #[test]
    fn good_job_parses_and_round_trips_through_the_wire() {
        let spec = JobSpec::from_toml(GOOD).unwrap();
        assert_eq!(
            spec.model,
            ModelArch::Mlp {
                hidden: vec![16, 8]
            }
        );
        assert_eq!(spec.training.optimizer, Optimizer::Adam);
        assert_eq!(spec.data.normalize, Normalization::LocalZScore);
        assert_eq!(spec.data.num_classes, 2);
        assert_eq!(spec.clip_norm, None);
        assert_eq!(JobSpec::from_proto(&spec.to_proto()).unwrap(), spec);
        assert_eq!(spec.layout().dim(), 3 * 16 + 16 + 16 * 8 + 8 + 8 * 2 + 2);
    }

    #[test]
    fn strategy_defaults_to_fedavg_parses_each_kind_and_refuses_bad_settings() {
        let spec = JobSpec::from_toml(GOOD).unwrap();
        assert_eq!(spec.strategy, Strategy::FedAvg(FedAvg));
        // FedAvg is the absent strategy on the wire, named or not.
        assert_eq!(spec.to_proto().strategy, None);
        let named =
            JobSpec::from_toml(&format!("{GOOD}\n[strategy]\nkind = \"fedavg\"\n")).unwrap();
        assert_eq!(named, spec);

        let adam = JobSpec::from_toml(&format!(
            "{GOOD}\n[strategy]\nkind = \"fedadam\"\nserver_lr = 0.05\nbeta1 = 0\n"
        ))
        .unwrap();
        assert_eq!(
            adam.strategy,
            Strategy::Adaptive(Adaptive {
                second_moment: SecondMoment::Adam,
                server_lr: 0.05,
                beta1: 0.0,
                beta2: 0.99,
                tau: 1e-3,
            })
        );
        assert_eq!(JobSpec::from_proto(&adam.to_proto()).unwrap(), adam);
        for (kind, rule, beta2) in [
            ("fedyogi", SecondMoment::Yogi, 0.99),
            ("fedadagrad", SecondMoment::Adagrad, 0.0),
        ] {
            let spec =
                JobSpec::from_toml(&format!("{GOOD}\n[strategy]\nkind = \"{kind}\"\n")).unwrap();
            let Strategy::Adaptive(a) = &spec.strategy else {
                panic!("{kind} is adaptive");
            };
            assert_eq!((a.second_moment, a.beta2), (rule, beta2));
            assert_eq!(spec.strategy.rules().label(), kind);
            assert_eq!(JobSpec::from_proto(&spec.to_proto()).unwrap(), spec);
        }

        for (table, path) in [
            ("kind = \"fedsgd\"", "strategy.kind"),
            ("server_lr = 0.1", "strategy.kind"),
            ("kind = \"fedavg\"\nserver_lr = 0.1", "strategy.server_lr"),
            ("kind = \"fedadam\"\nserver_lr = 0", "strategy.server_lr"),
            ("kind = \"fedadam\"\nserver_lr = 11", "strategy.server_lr"),
            ("kind = \"fedadam\"\nbeta1 = 1", "strategy.beta1"),
            ("kind = \"fedyogi\"\nbeta2 = -0.1", "strategy.beta2"),
            ("kind = \"fedadagrad\"\nbeta2 = 0.9", "strategy.beta2"),
            ("kind = \"fedadam\"\ntau = 0", "strategy.tau"),
            ("kind = \"fedadam\"\ntau = 1e-40", "strategy.tau"),
            ("kind = \"fedadam\"\ntau = 1e300", "strategy.tau"),
            ("kind = \"fedadam\"\nmomentum = 0.9", "strategy.momentum"),
        ] {
            let err = JobSpec::from_toml(&format!("{GOOD}\n[strategy]\n{table}\n")).unwrap_err();
            assert!(
                paths(err.clone()).contains(&path.to_string()),
                "{table}: {err}"
            );
        }
        // The wire is checked by the same rules.
        let mut wire = adam.to_proto();
        wire.strategy.as_mut().unwrap().beta2 = f32::NAN;
        assert!(paths(JobSpec::from_proto(&wire).unwrap_err()).contains(&"strategy.beta2".into()));
    }

    #[test]
    fn reward_policy_defaults_parses_and_refuses_what_cannot_be_paid() {
        let spec = JobSpec::from_toml(GOOD).unwrap();
        assert_eq!(
            spec.rewards,
            RewardPolicy {
                pool_per_round: 1000,
                committee_share_bps: 1000,
                split: RewardSplit::Samples
            }
        );
        let custom = format!(
            "{GOOD}\n[rewards]\npool_per_round = 250\ncommittee_share = 0.2\nsplit = \"equal\"\n"
        );
        let spec = JobSpec::from_toml(&custom).unwrap();
        assert_eq!(
            spec.rewards,
            RewardPolicy {
                pool_per_round: 250,
                committee_share_bps: 2000,
                split: RewardSplit::Equal
            }
        );
        assert_eq!(JobSpec::from_proto(&spec.to_proto()).unwrap(), spec);
        let secagg = GOOD.replace(
            "privacy = \"plain\"",
            "privacy = \"secagg\"\nclip_norm = 1.0\nmax_samples = 1000",
        );
        assert_eq!(
            JobSpec::from_toml(&secagg).unwrap().rewards.split,
            RewardSplit::Equal,
            "secagg defaults to equal parts"
        );
        let bad = format!(
            "{secagg}\n[rewards]\ncommittee_share = 1.5\nsplit = \"samples\"\ncolour = 1\n"
        );
        let got = paths(JobSpec::from_toml(&bad).unwrap_err());
        for want in ["rewards.committee_share", "rewards.split", "rewards.colour"] {
            assert!(got.contains(&want.to_string()), "{want} not in {got:?}");
        }
    }

    #[test]
    fn every_problem_is_reported_with_its_key_path() {
        let bad = GOOD
            .replace("rounds = 5", "rounds = 0\ncolour = \"red\"")
            .replace("hidden = [16, 8]", "hidden = [16, -1]")
            .replace("label = \"y\"", "label = \"a\"")
            .replace("batch_size = 16", "batch_size = \"big\"")
            .replace("optimizer = \"adam\"", "optimizer = \"lbfgs\"");
        let got = paths(JobSpec::from_toml(&bad).unwrap_err());
        for want in [
            "colour",
            "rounds",
            "model.hidden[1]",
            "data.label",
            "training.batch_size",
            "training.optimizer",
        ] {
            assert!(
                got.contains(&want.to_string()),
                "{want} missing from {got:?}"
            );
        }
    }

    #[test]
    fn missing_sections_and_bad_values_are_named() {
        let got = paths(JobSpec::from_toml("name = \"x\"\nrounds = 1\n").unwrap_err());
        assert_eq!(got, ["model", "data"]);
        let got = paths(
            JobSpec::from_toml(&GOOD.replace("privacy = \"plain\"", "privacy = \"secagg\""))
                .unwrap_err(),
        );
        assert_eq!(
            got,
            ["clip_norm", "max_samples"],
            "secagg needs a clip bound and a sample cap"
        );
        let secagg = GOOD.replace(
            "privacy = \"plain\"",
            "privacy = \"secagg\"\nclip_norm = 1.0\nmax_samples = 1000",
        );
        let spec = JobSpec::from_toml(&secagg).unwrap();
        let s = spec.secagg().unwrap();
        assert_eq!(
            (s.committee_size, s.threshold, s.quant.max_participants()),
            (3, 2, 100)
        );
        assert_eq!(JobSpec::from_proto(&spec.to_proto()).unwrap(), spec);
        let bad = secagg.replace(
            "min_participants = 3",
            "min_participants = 1\nstart_participants = 4\ncommittee_size = 4\nthreshold = 2",
        );
        assert_eq!(
            paths(JobSpec::from_toml(&bad).unwrap_err()),
            ["threshold", "min_participants"]
        );
        // More participants than a committee member's check task can list in one message.
        let crowd = secagg.replace(
            "max_samples = 1000",
            "max_samples = 1000\nmax_participants = 1200\ncommittee_size = 10\nstart_participants = 10",
        );
        // A stored spec beyond the launch bound still reads back (it may predate the bound).
        let s = JobSpec::from_toml(&crowd)
            .unwrap()
            .secagg()
            .cloned()
            .unwrap();
        assert_eq!(s.quant.max_participants(), 1200);
        assert_eq!(s.most_listed_participants(), 1120);

        let wraps = secagg.replace("clip_norm = 1.0", "clip_norm = 1e9");
        assert_eq!(
            paths(JobSpec::from_toml(&wraps).unwrap_err()),
            ["clip_norm"]
        );
        let err = JobSpec::from_toml("rounds = [").unwrap_err();
        assert_eq!(err.problems[0].path, "(file)");
        let got = paths(
            JobSpec::from_toml(&GOOD.replace(
                "features = [\"a\", \"b\", \"c\"]",
                "features = [\"a\", \"a\"]",
            ))
            .unwrap_err(),
        );
        assert_eq!(got, ["data.features[1]"]);
        let got = paths(
            JobSpec::from_toml(&format!("admission = [\"did:key:zBAD\"]\n{GOOD}")).unwrap_err(),
        );
        assert_eq!(got, ["admission[0]"]);
    }

    #[test]
    fn wire_jobs_with_unknown_enums_are_refused() {
        let mut wire = JobSpec::from_toml(GOOD).unwrap().to_proto();
        wire.model.as_mut().unwrap().kind = 99;
        wire.training.as_mut().unwrap().learning_rate = f32::NAN;
        assert_eq!(
            paths(JobSpec::from_proto(&wire).unwrap_err()),
            ["model.kind", "training.learning_rate"]
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// A job spec as it arrives over the wire, with bytes flipped or cut short, is either
        /// refused or accepted as a job that passes every check (what `from_proto` returns is
        /// always re-encodable and valid): never a panic, never a half-checked job.
        #[test]
        fn mutated_wire_job_specs_are_refused_or_fully_valid(
            secagg in proptest::prelude::any::<bool>(),
            edits in proptest::collection::vec(
                (proptest::prelude::any::<proptest::sample::Index>(), 1u8..=255),
                1..6,
            ),
            cut in proptest::option::of(proptest::prelude::any::<proptest::sample::Index>()),
        ) {
            use prost::Message;
            let text = if secagg {
                GOOD.replace(
                    "privacy = \"plain\"",
                    "privacy = \"secagg\"\nclip_norm = 1.0\nmax_samples = 1000",
                )
            } else {
                GOOD.to_string()
            };
            let spec = JobSpec::from_toml(&text).unwrap();
            let mut bytes = spec.to_proto().encode_to_vec();
            for (at, flip) in &edits {
                let i = at.index(bytes.len());
                bytes[i] ^= flip;
            }
            if let Some(at) = cut {
                bytes.truncate(at.index(bytes.len() + 1));
            }
            if let Ok(wire) = v1::JobSpec::decode(&bytes[..])
                && let Ok(job) = JobSpec::from_proto(&wire)
            {
                let again = JobSpec::from_proto(&job.to_proto());
                proptest::prop_assert!(again.is_ok(), "accepted job does not re-validate: {:?}", again.err());
            }
        }
    }
}
