//! The adaptive server optimizers of Reddi et al., "Adaptive Federated Optimization" (ICLR
//! 2021, Algorithm 2): the round's mean update `d` is treated as a pseudo-gradient and the
//! server takes an Adam-like step with it. Per parameter:
//!
//! ```text
//! m ← β1·m + (1 − β1)·d
//! v ← β2·v + (1 − β2)·d²                 FedAdam
//! v ← v − (1 − β2)·d²·sign(v − d²)       FedYogi
//! v ← v + d²                             FedAdagrad
//! x ← x + η·m / (√v + τ)
//! ```
//!
//! with `m` starting at 0 and `v` at `τ²` (the paper's `v₋₁ ≥ τ²`), and no bias correction,
//! as in the paper. The state is `(m, v)` for each parameter.

use super::ServerStrategy;

/// How the second moment `v` moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecondMoment {
    Adam,
    Yogi,
    Adagrad,
}

/// An adaptive server optimizer with its settings (checked by the job file: `server_lr` in
/// (0, 10], `beta1` and `beta2` in [0, 1), `tau` in [1e-9, 1]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adaptive {
    pub second_moment: SecondMoment,
    /// η.
    pub server_lr: f32,
    pub beta1: f32,
    /// Unused by FedAdagrad (0 there).
    pub beta2: f32,
    pub tau: f32,
}

impl ServerStrategy for Adaptive {
    fn label(&self) -> &'static str {
        match self.second_moment {
            SecondMoment::Adam => "fedadam",
            SecondMoment::Yogi => "fedyogi",
            SecondMoment::Adagrad => "fedadagrad",
        }
    }

    fn state_per_param(&self) -> usize {
        2
    }

    fn initial_state(&self, dim: usize) -> Vec<f32> {
        let v0 = self.tau * self.tau;
        (0..dim).flat_map(|_| [0.0, v0]).collect()
    }

    fn step(&self, base: &[f32], next: &mut [f32], state: &mut [f32]) {
        // One loop per rule, each without branches, so that the compiler can vectorize it.
        match self.second_moment {
            SecondMoment::Adam => {
                self.step_with(base, next, state, |v, d2, b2| b2 * v + (1.0 - b2) * d2)
            }
            SecondMoment::Yogi => self.step_with(base, next, state, |v, d2, b2| {
                // sign(v − d²), 0 when equal (f32::signum would give 1).
                let sign = (v > d2) as i32 as f32 - (v < d2) as i32 as f32;
                v - (1.0 - b2) * d2 * sign
            }),
            SecondMoment::Adagrad => self.step_with(base, next, state, |v, d2, _| v + d2),
        }
    }
}

impl Adaptive {
    #[inline(always)]
    fn step_with(
        &self,
        base: &[f32],
        next: &mut [f32],
        state: &mut [f32],
        second_moment: impl Fn(f32, f32, f32) -> f32,
    ) {
        let (b1, b2, lr, tau) = (self.beta1, self.beta2, self.server_lr, self.tau);
        for ((n, &x), mv) in next.iter_mut().zip(base).zip(state.chunks_exact_mut(2)) {
            let d = *n;
            let m = b1 * mv[0] + (1.0 - b1) * d;
            let v = second_moment(mv[1], d * d, b2);
            mv[0] = m;
            mv[1] = v;
            *n = x + lr * m / (v.sqrt() + tau);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paper's update rule written out again in f64, one round at a time, for the tests
    /// to hold the strategy to.
    fn reference(
        rule: SecondMoment,
        (lr, b1, b2, tau): (f64, f64, f64, f64),
        x0: &[f64],
        rounds: &[Vec<f64>],
    ) -> Vec<f64> {
        let mut x = x0.to_vec();
        let mut m = vec![0.0; x.len()];
        let mut v = vec![tau * tau; x.len()];
        for d in rounds {
            for i in 0..x.len() {
                m[i] = b1 * m[i] + (1.0 - b1) * d[i];
                let d2 = d[i] * d[i];
                v[i] = match rule {
                    SecondMoment::Adam => b2 * v[i] + (1.0 - b2) * d2,
                    SecondMoment::Yogi => {
                        let sign = match v[i].partial_cmp(&d2) {
                            Some(std::cmp::Ordering::Greater) => 1.0,
                            Some(std::cmp::Ordering::Less) => -1.0,
                            _ => 0.0,
                        };
                        v[i] - (1.0 - b2) * d2 * sign
                    }
                    SecondMoment::Adagrad => v[i] + d2,
                };
                x[i] += lr * m[i] / (v[i].sqrt() + tau);
            }
        }
        x
    }

    #[test]
    fn each_adaptive_rule_matches_the_papers_update_over_several_rounds() {
        let x0 = [0.5f32, -1.25, 2.0, 0.0];
        let rounds: Vec<Vec<f32>> = vec![
            vec![0.1, -0.2, 0.0, 1.5],
            vec![-0.3, -0.1, 0.05, 1.0],
            vec![0.2, 0.4, -0.6, -2.0],
            // Small after large: v > d², where Yogi's v shrinks.
            vec![0.01, -0.02, 0.01, 0.05],
        ];
        for (rule, b2) in [
            // β2 far from 1, so that each rule's second moment moves the model visibly.
            (SecondMoment::Adam, 0.5),
            (SecondMoment::Yogi, 0.5),
            (SecondMoment::Adagrad, 0.0),
        ] {
            let s = Adaptive {
                second_moment: rule,
                server_lr: 0.05,
                beta1: 0.9,
                beta2: b2,
                tau: 1e-2,
            };
            let mut x = x0.to_vec();
            let mut state = s.initial_state(x.len());
            for d in &rounds {
                let mut next = d.clone();
                s.step(&x, &mut next, &mut state);
                x = next;
            }
            let want = reference(
                rule,
                (0.05, 0.9, b2 as f64, 1e-2),
                &x0.map(f64::from),
                &rounds
                    .iter()
                    .map(|d| d.iter().map(|&v| v as f64).collect())
                    .collect::<Vec<_>>(),
            );
            for (i, (&got, &want)) in x.iter().zip(&want).enumerate() {
                assert!(
                    (got as f64 - want).abs() <= 2e-6 * (1.0 + want.abs()),
                    "{rule:?}, parameter {i}: {got} vs the paper's {want}"
                );
            }
            // Every rule moved the model.
            assert_ne!(x, x0.to_vec());
        }
    }

    #[test]
    fn the_three_rules_give_three_models_and_the_first_step_is_about_lr() {
        let x0 = [0.0f32; 3];
        let d = [0.5f32, -0.5, 0.0];
        let mut results = Vec::new();
        for rule in [
            SecondMoment::Adam,
            SecondMoment::Yogi,
            SecondMoment::Adagrad,
        ] {
            let s = Adaptive {
                second_moment: rule,
                server_lr: 0.1,
                beta1: 0.9,
                beta2: 0.99,
                tau: 1e-3,
            };
            let mut next = d.to_vec();
            let mut state = s.initial_state(3);
            s.step(&x0, &mut next, &mut state);
            // A parameter whose update is 0 stays where it was.
            assert_eq!(next[2], 0.0);
            assert!(next[0] > 0.0 && next[1] < 0.0 && next[0] == -next[1]);
            results.push(next[0]);
        }
        // m = 0.05. Adam and Yogi take 1 − β2 of d² into v (√v ≈ 0.05), so they step about
        // η; Adagrad takes all of it (√v ≈ 0.5) and steps about η/10.
        assert!((0.095..0.1).contains(&results[0]), "{results:?}");
        assert!((0.095..0.1).contains(&results[1]), "{results:?}");
        assert!((0.0095..0.01).contains(&results[2]), "{results:?}");
    }
}
