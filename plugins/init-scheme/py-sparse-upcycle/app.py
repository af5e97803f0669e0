"""Sparse upcycling in Python (Komatsuzaki et al. 2023; METHODS.md §3.1): copy every
dense tensor; in each upcycled layer every expert is an exact copy of the dense SwiGLU
FFN and the router is new. The Rust `sparse-upcycle` scheme, line for line: the same
parameters and the same plan, so `recast upcycle` writes the same bytes with either."""

from wit_world import exports

from recast_init_scheme import plan, router_init, sparse_upcycle
from recast_sdk import INIT_SCHEME, Params, fail, info, one_instance

U32_MAX = 0xFFFF_FFFF


@one_instance
class InitScheme(exports.InitScheme):
    def info(self):
        return info("py-sparse-upcycle", "0.1.0", INIT_SCHEME, "Sparse upcycling (Komatsuzaki et al. 2023) in Python: every expert an exact copy of the dense FFN, a freshly initialised router.")

    def configure(self, params, context):
        p = Params.parse(params, experts=8, top_k=2, every=1, router_init="normal", router_std=0.02)
        if not (1 <= p.top_k <= p.experts <= U32_MAX):
            fail(f"need 1 <= top_k <= experts, got top_k = {p.top_k} and experts = {p.experts}")
        if not 1 <= p.every <= U32_MAX:
            fail("every must be >= 1")
        self.router = router_init(p.router_init, p.router_std)
        self.p, self.seed = p, context.seed

    def save_state(self):
        return b""

    def load_state(self, state):
        pass

    def plan(self, sources):
        if len(sources) != 1:
            fail(f"sparse upcycling takes exactly one dense source, got {len(sources)}")
        src, every = sources[0], self.p.every
        ops, moe_layers = sparse_upcycle(src, self.p.experts, self.p.top_k, lambda layer: (layer + 1) % every == 0, self.router, self.seed)
        return plan(src.shape, moe_layers, ops)
