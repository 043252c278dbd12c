//! FedAvg's server step (McMahan et al. 2017): the new model is the base plus the round's
//! sample-weighted mean update. It keeps no state.

use super::ServerStrategy;

/// `x ← x + d`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FedAvg;

impl ServerStrategy for FedAvg {
    fn label(&self) -> &'static str {
        "fedavg"
    }

    fn state_per_param(&self) -> usize {
        0
    }

    fn initial_state(&self, _: usize) -> Vec<f32> {
        Vec::new()
    }

    fn step(&self, base: &[f32], next: &mut [f32], _: &mut [f32]) {
        for (n, &x) in next.iter_mut().zip(base) {
            *n += x;
        }
    }
}
