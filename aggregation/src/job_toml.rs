//! Reading a TOML job file into the wire form of a job, reporting unknown keys and values of
//! the wrong type with their key paths. The rules about values live in `job.rs`.

use conclave_proto::v1;
use toml::{Table, Value};

use crate::job::{DEFAULT_COMMITTEE_SHARE_BPS, DEFAULT_REWARD_POOL};

/// A sink for problems: (key path, message).
type Report<'a> = dyn FnMut(&str, String) + 'a;

/// Defaults for keys a job file may leave out.
const DEFAULT_DEADLINE_SECS: u32 = 300;
const DEFAULT_MIN_PARTICIPANTS: u32 = 2;
const DEFAULT_EVAL_FRACTION: f32 = 0.2;
// The adaptive strategies' defaults (`[strategy]`): η, β1, β2, τ.
const DEFAULT_SERVER_LR: f32 = 0.1;
const DEFAULT_BETA1: f32 = 0.9;
const DEFAULT_BETA2: f32 = 0.99;
const DEFAULT_TAU: f32 = 1e-3;

struct Reader<'t, 'r, 'a> {
    table: &'t Table,
    prefix: &'static str,
    report: &'r mut Report<'a>,
}

impl<'t> Reader<'t, '_, '_> {
    fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    fn check_keys(&mut self, known: &[&str]) {
        for key in self.table.keys() {
            if !known.contains(&key.as_str()) {
                let path = self.path(key);
                (self.report)(
                    &path,
                    format!("unknown key (expected one of: {})", known.join(", ")),
                );
            }
        }
    }

    fn get(&mut self, key: &str, expected: &str) -> Option<&'t Value> {
        let value = self.table.get(key)?;
        if !type_matches(value, expected) {
            let path = self.path(key);
            (self.report)(
                &path,
                format!("expected {expected}, got {}", value.type_str()),
            );
            return None;
        }
        Some(value)
    }

    fn string(&mut self, key: &str) -> Option<String> {
        self.get(key, "a string")
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    fn uint(&mut self, key: &str, max: u64) -> Option<u64> {
        let v = self.get(key, "an integer")?.as_integer()?;
        if v < 0 || v as u64 > max {
            let path = self.path(key);
            (self.report)(&path, format!("must be between 0 and {max}, got {v}"));
            return None;
        }
        Some(v as u64)
    }

    fn u32(&mut self, key: &str) -> Option<u32> {
        self.uint(key, u32::MAX as u64).map(|v| v as u32)
    }

    fn float(&mut self, key: &str) -> Option<f32> {
        let v = self.get(key, "a number")?;
        v.as_float()
            .or_else(|| v.as_integer().map(|i| i as f64))
            .map(|f| f as f32)
    }

    fn strings(&mut self, key: &str) -> Option<Vec<String>> {
        let array = self.get(key, "an array")?.as_array()?;
        let mut out = Vec::with_capacity(array.len());
        for (i, v) in array.iter().enumerate() {
            match v.as_str() {
                Some(s) => out.push(s.to_owned()),
                None => {
                    let path = format!("{}[{i}]", self.path(key));
                    (self.report)(&path, format!("expected a string, got {}", v.type_str()));
                }
            }
        }
        Some(out)
    }

    fn u32s(&mut self, key: &str) -> Option<Vec<u32>> {
        let array = self.get(key, "an array")?.as_array()?;
        let mut out = Vec::with_capacity(array.len());
        for (i, v) in array.iter().enumerate() {
            match v.as_integer().and_then(|n| u32::try_from(n).ok()) {
                Some(n) => out.push(n),
                None => {
                    let path = format!("{}[{i}]", self.path(key));
                    (self.report)(&path, format!("expected a non-negative integer, got {v}"));
                }
            }
        }
        Some(out)
    }

    fn table(&mut self, key: &'static str) -> Option<&'t Table> {
        self.get(key, "a table").and_then(Value::as_table)
    }

    fn choice<T: Copy>(&mut self, key: &str, options: &[(&str, T)]) -> Option<T> {
        let s = self.string(key)?;
        let found = options.iter().find(|(name, _)| *name == s).map(|(_, v)| *v);
        if found.is_none() {
            let names: Vec<String> = options.iter().map(|(n, _)| format!("{n:?}")).collect();
            let path = self.path(key);
            (self.report)(
                &path,
                format!("unknown value {s:?}; expected one of {}", names.join(", ")),
            );
        }
        found
    }
}

fn type_matches(value: &Value, expected: &str) -> bool {
    match expected {
        "a string" => value.is_str(),
        "an integer" => value.is_integer(),
        "a number" => value.is_integer() || value.is_float(),
        "an array" => value.is_array(),
        "a table" => value.is_table(),
        _ => false,
    }
}

/// Converts a parsed job file to the wire form, reporting key-level problems to `report`.
/// Missing optional keys take their documented defaults; missing required keys are left at
/// the wire's zero value, which `JobSpec::from_proto` then names.
pub(crate) fn to_proto(table: &Table, report: &mut Report<'_>) -> v1::JobSpec {
    let mut top = Reader {
        table,
        prefix: "",
        report,
    };
    top.check_keys(&[
        "name",
        "rounds",
        "min_participants",
        "start_participants",
        "round_deadline_secs",
        "committee_size",
        "threshold",
        "max_samples",
        "max_participants",
        "privacy",
        "clip_norm",
        "seed",
        "admission",
        "model",
        "data",
        "training",
        "rewards",
        "strategy",
    ]);
    let mut spec = v1::JobSpec {
        name: top.string("name").unwrap_or_default(),
        rounds: top.u32("rounds").unwrap_or(0),
        min_participants: top
            .u32("min_participants")
            .unwrap_or(DEFAULT_MIN_PARTICIPANTS),
        start_participants: top.u32("start_participants").unwrap_or(0),
        committee_size: top.u32("committee_size").unwrap_or(0),
        threshold: top.u32("threshold").unwrap_or(0),
        max_samples: top.uint("max_samples", u32::MAX as u64).unwrap_or(0),
        max_participants: top.u32("max_participants").unwrap_or(0),
        round_deadline_secs: top
            .u32("round_deadline_secs")
            .unwrap_or(DEFAULT_DEADLINE_SECS),
        privacy: top
            .choice(
                "privacy",
                &[
                    ("plain", v1::Privacy::Plain),
                    ("secagg", v1::Privacy::Secagg),
                    ("fhe", v1::Privacy::Fhe),
                ],
            )
            .unwrap_or(if table.contains_key("privacy") {
                v1::Privacy::Unspecified
            } else {
                v1::Privacy::Plain
            })
            .into(),
        clip_norm: top.float("clip_norm").unwrap_or(0.0),
        seed: top.uint("seed", u64::MAX).unwrap_or(0),
        admission: top.strings("admission").unwrap_or_default(),
        ..Default::default()
    };
    let model = top.table("model");
    let data = top.table("data");
    let training = top.table("training");
    let rewards = top.table("rewards");
    let strategy = top.table("strategy");
    let report = top.report;

    if let Some(table) = strategy {
        let mut r = Reader {
            table,
            prefix: "strategy",
            report: &mut *report,
        };
        r.check_keys(&["kind", "server_lr", "beta1", "beta2", "tau"]);
        let kind = r
            .choice(
                "kind",
                &[
                    ("fedavg", v1::StrategyKind::Fedavg),
                    ("fedadam", v1::StrategyKind::Fedadam),
                    ("fedyogi", v1::StrategyKind::Fedyogi),
                    ("fedadagrad", v1::StrategyKind::Fedadagrad),
                ],
            )
            .unwrap_or(v1::StrategyKind::Unspecified);
        // FedAvg has no settings: a setting given for it is passed on, for the rules to name.
        let (lr, b1, b2, tau) = match kind {
            v1::StrategyKind::Fedavg | v1::StrategyKind::Unspecified => (0.0, 0.0, 0.0, 0.0),
            v1::StrategyKind::Fedadagrad => (DEFAULT_SERVER_LR, DEFAULT_BETA1, 0.0, DEFAULT_TAU),
            _ => (DEFAULT_SERVER_LR, DEFAULT_BETA1, DEFAULT_BETA2, DEFAULT_TAU),
        };
        spec.strategy = Some(v1::ServerStrategy {
            kind: kind.into(),
            server_lr: r.float("server_lr").unwrap_or(lr),
            beta1: r.float("beta1").unwrap_or(b1),
            beta2: r.float("beta2").unwrap_or(b2),
            tau: r.float("tau").unwrap_or(tau),
        });
    }

    if let Some(table) = rewards {
        let mut r = Reader {
            table,
            prefix: "rewards",
            report: &mut *report,
        };
        r.check_keys(&["pool_per_round", "committee_share", "split"]);
        let secagg = spec.privacy == i32::from(v1::Privacy::Secagg);
        let share = r.float("committee_share").map(f64::from);
        let bps = match share {
            None => DEFAULT_COMMITTEE_SHARE_BPS,
            Some(x) if (0.0..=1.0).contains(&x) => (x * 10_000.0).round() as u32,
            // Out of range: passed on so the rule's message names the value.
            Some(x) if x > 1.0 => (x.min(4e5) * 10_000.0) as u32,
            Some(_) => u32::MAX,
        };
        spec.rewards = Some(v1::RewardPolicy {
            pool_per_round: r
                .uint("pool_per_round", u64::MAX >> 1)
                .unwrap_or(DEFAULT_REWARD_POOL),
            committee_share_bps: bps,
            split: r
                .choice(
                    "split",
                    &[
                        ("samples", v1::RewardSplit::Samples),
                        ("equal", v1::RewardSplit::Equal),
                    ],
                )
                .unwrap_or(if table.contains_key("split") {
                    v1::RewardSplit::Unspecified
                } else if secagg {
                    v1::RewardSplit::Equal
                } else {
                    v1::RewardSplit::Samples
                })
                .into(),
        });
    }

    if let Some(table) = model {
        let mut r = Reader {
            table,
            prefix: "model",
            report: &mut *report,
        };
        r.check_keys(&["kind", "hidden"]);
        spec.model = Some(v1::ModelSpec {
            kind: r
                .choice(
                    "kind",
                    &[
                        ("logistic_regression", v1::ModelKind::LogisticRegression),
                        ("mlp", v1::ModelKind::Mlp),
                    ],
                )
                .unwrap_or(v1::ModelKind::Unspecified)
                .into(),
            hidden: r.u32s("hidden").unwrap_or_default(),
        });
    }
    if let Some(table) = data {
        let mut r = Reader {
            table,
            prefix: "data",
            report: &mut *report,
        };
        r.check_keys(&[
            "features",
            "label",
            "num_classes",
            "normalize",
            "eval_fraction",
        ]);
        spec.data = Some(v1::DataSpec {
            features: r.strings("features").unwrap_or_default(),
            label: r.string("label").unwrap_or_default(),
            num_classes: r.u32("num_classes").unwrap_or(2),
            normalize: r
                .choice(
                    "normalize",
                    &[
                        ("none", v1::Normalization::None),
                        ("local_zscore", v1::Normalization::LocalZscore),
                    ],
                )
                .unwrap_or(if table.contains_key("normalize") {
                    v1::Normalization::Unspecified
                } else {
                    v1::Normalization::None
                })
                .into(),
            eval_fraction: r.float("eval_fraction").unwrap_or(DEFAULT_EVAL_FRACTION),
        });
    }
    let training_defaults = v1::TrainingSpec {
        local_epochs: 1,
        batch_size: 32,
        learning_rate: 0.01,
        optimizer: v1::Optimizer::Sgd.into(),
    };
    spec.training = Some(match training {
        None => training_defaults,
        Some(table) => {
            let mut r = Reader {
                table,
                prefix: "training",
                report: &mut *report,
            };
            r.check_keys(&["local_epochs", "batch_size", "learning_rate", "optimizer"]);
            v1::TrainingSpec {
                local_epochs: r
                    .u32("local_epochs")
                    .unwrap_or(training_defaults.local_epochs),
                batch_size: r.u32("batch_size").unwrap_or(training_defaults.batch_size),
                learning_rate: r
                    .float("learning_rate")
                    .unwrap_or(training_defaults.learning_rate),
                optimizer: r
                    .choice(
                        "optimizer",
                        &[("sgd", v1::Optimizer::Sgd), ("adam", v1::Optimizer::Adam)],
                    )
                    .map(i32::from)
                    .unwrap_or(if table.contains_key("optimizer") {
                        0
                    } else {
                        training_defaults.optimizer
                    }),
            }
        }
    });
    spec
}
