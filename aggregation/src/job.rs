//! `JobSpec`: a federated job, checked. Built from a researcher's TOML job file or from the
//! wire (`v1::JobSpec`); both paths meet in [`JobSpec::from_proto`], so one set of rules
//! decides what a valid job is, and every problem is reported with its key path.

use std::collections::HashSet;
use std::fmt;

use conclave_crypto::ParticipantId;
use conclave_proto::v1;

use crate::model::{ModelArch, ModelLayout};

/// Largest model a job may declare, in parameters.
pub const MAX_MODEL_PARAMS: u64 = 500_000_000;

/// How a round protects updates (DESIGN.md, "A round", step 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Privacy {
    /// Updates in the clear: for baselines and debugging.
    Plain,
}

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
    /// L2 bound on each participant's update; `None` leaves updates unclipped.
    pub clip_norm: Option<f32>,
    pub seed: u64,
    /// Identities allowed to join; empty means open admission.
    pub admission: Vec<ParticipantId>,
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
                p.add(
                    "privacy",
                    "\"secagg\" is not available in this release yet; use \"plain\"",
                );
                None
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
        match (privacy, model, data, training) {
            (Some(privacy), Some(model), Some(data), Some(training)) if p.0.is_empty() => {
                Ok(JobSpec {
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
                    seed: wire.seed,
                    admission,
                })
            }
            _ => Err(JobError { problems: p.0 }),
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
            }
            .into(),
            clip_norm: self.clip_norm.unwrap_or(0.0),
            seed: self.seed,
            admission: self.admission.iter().map(|id| id.to_string()).collect(),
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
        assert_eq!(got, ["privacy"]);
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
}
