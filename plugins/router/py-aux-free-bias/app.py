"""Auxiliary-loss-free load balancing in Python: the same policy, parameters and state
bytes as the Rust `aux-free-bias` router, so the two make the same routing decisions
and either can take over the other's state (METHODS.md §1.4)."""

import struct

from wit_world import exports
from wit_world.imports import router_types as rt

from recast_sdk import ROUTER, Params, f32, fail, info, metric, one_instance


def bias_deltas(load, gamma):
    """γ · sign(mean load − load) per expert: 0 for an expert exactly at the mean."""
    mean = sum(load) / max(len(load), 1)
    return [gamma if mean > c else -gamma if mean < c else 0.0 for c in load]


@one_instance
class Router(exports.Router):
    def __init__(self):
        self.bias = {}

    def info(self):
        return info("py-aux-free-bias", "0.1.0", ROUTER, "Auxiliary-loss-free balancing (DeepSeek-V3) in Python: a per-expert selection bias nudged toward balance after every step.")

    def configure(self, params, context):
        p = Params.parse(params, gamma=1e-3, top_k=2, score="sigmoid", renormalize=True, scaling=1.0, update_until=None, max_bias=None)
        if not p.gamma >= 0.0:
            fail(f"gamma must be >= 0, not {p.gamma}")
        if p.max_bias is not None and not p.max_bias > 0.0:
            fail(f"max_bias must be > 0, not {p.max_bias}")
        if not p.scaling > 0.0:
            fail(f"scaling must be > 0, not {p.scaling}")
        scores = {"sigmoid": rt.ScoreFunction.SIGMOID, "softmax": rt.ScoreFunction.SOFTMAX}
        if p.score not in scores:
            fail(f'score must be "sigmoid" or "softmax", not {p.score!r}')
        self.p = p
        self.gamma = f32(p.gamma)
        self.max_bias = None if p.max_bias is None else f32(p.max_bias)
        self.score = scores[p.score]

    def save_state(self):
        out = bytearray()
        for layer in sorted(self.bias):
            values = self.bias[layer]
            out += struct.pack(f"<II{len(values)}f", layer, len(values), *values)
        return bytes(out)

    def load_state(self, state):
        bias, at = {}, 0
        while at < len(state):
            if at + 8 > len(state):
                fail("aux-free-bias state is truncated")
            layer, n = struct.unpack_from("<II", state, at)
            at += 8
            if at + 4 * n > len(state):
                fail("aux-free-bias state is truncated")
            bias[layer] = list(struct.unpack_from(f"<{n}f", state, at))
            at += 4 * n
        self.bias = bias

    def spec(self, layer):
        k = self.p.top_k
        if not 1 <= k <= layer.num_experts:
            fail(f"top_k = {k} must be between 1 and the {layer.num_experts} experts of layer {layer.layer}")
        return rt.RouterSpec(
            score=self.score, logit_norm=rt.LogitNorm_None_(), top_k=k, order=rt.TopkOrder.SOFTMAX_THEN_TOPK,
            renormalize=self.p.renormalize, scaling=self.p.scaling, mode=rt.RoutingMode.TOKEN_CHOICE, capacity=None,
            shared_experts=0, shared_expert_gate=False, selection_bias=rt.SelectionBias.PLUGIN, per_token_route=False,
        )

    def on_step(self, step, stats):
        if self.p.update_until is not None and step >= self.p.update_until:
            return []
        updates, largest = [], 0.0
        for s in stats:
            bias = self.bias.setdefault(s.layer, [])
            bias[:] = (bias + [0.0] * len(s.expert_load))[: len(s.expert_load)]
            delta = bias_deltas(s.expert_load, self.gamma)
            for e, d in enumerate(delta):
                # In f32, as the Rust plugin computes it.
                target = f32(bias[e] + d)
                if self.max_bias is not None:
                    target = min(max(target, -self.max_bias), self.max_bias)
                delta[e] = f32(target - bias[e])
                bias[e] = target
                largest = max(largest, abs(target))
            updates.append(rt.RouterUpdate(layer=s.layer, bias_delta=delta, spec=None))
        metric("bias_abs_max", largest)
        return updates

    def route(self, layer, logits):
        fail("py-aux-free-bias routes natively; it never asks for per-token routing")
