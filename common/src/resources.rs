//! Resource accounting: what the node has, what is free, and which GPU instances a task
//! holds.
//!
//! Amounts are fractional. GPUs are also instances: a task that asks for GPUs gets IDs
//! (whole GPUs, or a share of one GPU for a fraction below 1), so that its worker can set
//! `CUDA_VISIBLE_DEVICES` to exactly them.

use std::collections::{BTreeMap, HashMap};

use crate::proto::raylet::v1 as pb;

/// Amounts below this count as zero (sums of fractions drift).
const EPSILON: f64 = 1e-9;

/// Whether `have` covers every amount of `request` (amounts below [`EPSILON`] ask for
/// nothing).
pub fn covers(have: &Amounts, request: &Amounts) -> bool {
    request.iter().all(|(name, amount)| {
        *amount <= EPSILON || have.get(name).copied().unwrap_or(0.0) + EPSILON >= *amount
    })
}

/// Resource name -> amount.
pub type Amounts = BTreeMap<String, f64>;

/// What a task holds while it runs.
#[derive(Debug, Clone, Default)]
pub struct Held {
    pub amounts: Amounts,
    /// GPU index -> fraction held.
    pub gpus: Vec<(u32, f64)>,
}

impl Held {
    /// The GPU IDs for the worker.
    pub fn resource_ids(&self) -> HashMap<String, pb::ResourceIds> {
        let mut ids = HashMap::new();
        if !self.gpus.is_empty() {
            ids.insert(
                "GPU".to_string(),
                pb::ResourceIds {
                    ids: self.gpus.iter().map(|(i, _)| *i).collect(),
                    fractions: self.gpus.iter().map(|(_, f)| *f).collect(),
                },
            );
        }
        ids
    }
}

/// The node's resources.
#[derive(Debug, Clone)]
pub struct Resources {
    total: Amounts,
    available: Amounts,
    /// Free share of each GPU instance.
    gpu_free: Vec<f64>,
}

impl Resources {
    pub fn new(total: Amounts) -> Self {
        let gpus = total.get("GPU").copied().unwrap_or(0.0).floor() as usize;
        Self {
            available: total.clone(),
            total,
            gpu_free: vec![1.0; gpus],
        }
    }

    pub fn total(&self) -> &Amounts {
        &self.total
    }

    pub fn available(&self) -> &Amounts {
        &self.available
    }

    /// Whether the node could ever run a task asking for `request`.
    pub fn feasible(&self, request: &Amounts) -> bool {
        covers(&self.total, request)
    }

    /// Whether `request` fits what is free now.
    pub fn fits(&self, request: &Amounts) -> bool {
        covers(&self.available, request)
            && self
                .gpu_instances(request.get("GPU").copied().unwrap_or(0.0))
                .is_some()
    }

    /// Which GPU instances would serve `amount`: whole free GPUs, or one GPU with enough
    /// free share for a fraction.
    fn gpu_instances(&self, amount: f64) -> Option<Vec<(u32, f64)>> {
        if amount <= EPSILON || self.gpu_free.is_empty() {
            return Some(Vec::new());
        }
        if amount < 1.0 {
            // Pack fractions onto the fullest GPU that still has room.
            return self
                .gpu_free
                .iter()
                .enumerate()
                .filter(|(_, free)| **free + EPSILON >= amount)
                .min_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| vec![(i as u32, amount)]);
        }
        let whole: Vec<(u32, f64)> = self
            .gpu_free
            .iter()
            .enumerate()
            .filter(|(_, free)| **free >= 1.0 - EPSILON)
            .map(|(i, _)| (i as u32, 1.0))
            .take(amount.round() as usize)
            .collect();
        (whole.len() as f64 + EPSILON >= amount).then_some(whole)
    }

    /// Takes `request` (which must fit).
    pub fn acquire(&mut self, request: &Amounts) -> Held {
        let gpus = self
            .gpu_instances(request.get("GPU").copied().unwrap_or(0.0))
            .unwrap_or_default();
        for (i, share) in &gpus {
            self.gpu_free[*i as usize] -= share;
        }
        for (name, amount) in request {
            *self.available.entry(name.clone()).or_insert(0.0) -= amount;
        }
        Held {
            amounts: request.clone(),
            gpus,
        }
    }

    /// Gives back what a task held.
    pub fn release(&mut self, held: &Held) {
        for (i, share) in &held.gpus {
            if let Some(free) = self.gpu_free.get_mut(*i as usize) {
                *free = (*free + share).min(1.0);
            }
        }
        for (name, amount) in &held.amounts {
            *self.available.entry(name.clone()).or_insert(0.0) += amount;
        }
    }

    /// Lends or takes back CPUs of a blocked worker (may go below zero: a resumed worker
    /// runs even when others took its CPUs meanwhile).
    pub fn adjust(&mut self, name: &str, delta: f64) {
        *self.available.entry(name.to_string()).or_insert(0.0) += delta;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amounts(pairs: &[(&str, f64)]) -> Amounts {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn cpu_accounting_bounds_what_fits() {
        let mut r = Resources::new(amounts(&[("CPU", 4.0)]));
        let two = amounts(&[("CPU", 2.0)]);
        let a = r.acquire(&two);
        let _b = r.acquire(&two);
        assert!(!r.fits(&two));
        assert!(r.feasible(&two));
        assert!(!r.feasible(&amounts(&[("CPU", 5.0)])));
        assert!(!r.feasible(&amounts(&[("Custom", 1.0)])));
        r.release(&a);
        assert!(r.fits(&two));
        assert!(r.fits(&amounts(&[("CPU", 0.0)])));
    }

    #[test]
    fn gpus_are_handed_out_as_ids_and_fractions() {
        let mut r = Resources::new(amounts(&[("CPU", 8.0), ("GPU", 2.0)]));
        let half = amounts(&[("GPU", 0.5)]);
        let a = r.acquire(&half);
        let b = r.acquire(&half);
        assert_eq!(a.gpus, vec![(0, 0.5)]);
        assert_eq!(b.gpus, vec![(0, 0.5)], "fractions pack onto one GPU");
        let whole = r.acquire(&amounts(&[("GPU", 1.0)]));
        assert_eq!(whole.gpus, vec![(1, 1.0)]);
        assert!(!r.fits(&half));
        r.release(&a);
        assert!(r.fits(&half));
        assert!(!r.fits(&amounts(&[("GPU", 1.0)])));
        assert_eq!(whole.resource_ids()["GPU"].ids, vec![1]);
    }
}
