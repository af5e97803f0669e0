"""Balanced sampling in Python (UltraFuser; METHODS.md §4.1): the same number of
sequences from each chosen domain in every batch, the leftover ones rotating over the
domains from step to step. The `balanced` sampler, line for line."""

from wit_world import exports
from wit_world.imports import sampler_types as st

from recast_sdk import SAMPLER, Params, fail, info, one_instance


@one_instance
class Sampler(exports.Sampler):
    def info(self):
        return info("py-balanced", "0.1.0", SAMPLER, "Balanced sampling (UltraFuser) in Python: equal sequences per domain in every batch.")

    def configure(self, params, context):
        self.only = Params.parse(params, domains=[]).domains

    def save_state(self):
        return b""

    def load_state(self, state):
        pass

    def next(self, request):
        chosen = [i for i, d in enumerate(request.domains) if d.tokens_available > 0 and (not self.only or d.name in self.only)]
        if not chosen:
            fail(f"none of the domains {self.only} has tokens")
        n, batch = len(chosen), request.batch_sequences
        counts = [0] * len(request.domains)
        for j, d in enumerate(chosen):
            extra = (j + n - request.step % n) % n < batch % n
            counts[d] = batch // n + int(extra)
        return st.Mixture_Counts(counts)
