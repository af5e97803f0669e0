//! Balanced sampling (UltraFuser; METHODS.md §4.1): every batch holds the same number of
//! sequences from every domain, whatever their sizes. When the batch does not divide
//! evenly, the extra sequences rotate over the domains from step to step.

use recast_sdk::sampler::*;
use serde::Deserialize;

/// Parameters; see README.md.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Params {
    domains: Vec<String>,
}

struct Balanced {
    only: Vec<String>,
}

impl Plugin for Balanced {
    type Config = Params;

    fn new(p: Params, _: &Context) -> Result<Self, String> {
        Ok(Balanced { only: p.domains })
    }
}

impl Sampler for Balanced {
    fn next(&mut self, request: &SampleRequest) -> Result<Mixture, String> {
        let chosen: Vec<usize> = request.domains.iter().enumerate().filter(|(_, d)| d.tokens_available > 0 && (self.only.is_empty() || self.only.contains(&d.name))).map(|(i, _)| i).collect();
        if chosen.is_empty() {
            return Err(format!("none of the domains {:?} has tokens", self.only));
        }
        let n = chosen.len() as u64;
        let batch = request.batch_sequences as u64;
        let mut counts = vec![0u32; request.domains.len()];
        for (j, &d) in chosen.iter().enumerate() {
            // The remainder goes to the domains after the step's offset, in turn.
            let extra = ((j as u64 + n - request.step % n) % n) < batch % n;
            counts[d] = (batch / n + extra as u64) as u32;
        }
        Ok(Mixture::Counts(counts))
    }
}

recast_sdk::export_sampler!(Balanced);
