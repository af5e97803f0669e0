"""Recast's SDK for plugins written in Python (built with componentize-py).

`recast plugin build` puts this module on the plugin's Python path; the `wit_world`
package it imports is generated from `wit/` when the component is built. It gives the
same conveniences as the Rust SDK: parameters parsed from TOML or JSON with unknown keys
refused, `info` records, errors the host shows as the plugin's own, f32 rounding where a
policy must agree bit for bit with one written in Rust, and the host's `log` and
`metric`, and the seeded generator (`Rng`) whose streams equal the Rust SDK's.
Init schemes build their plans with `recast_init_scheme`, beside this module.

    from wit_world import exports
    from recast_sdk import Params, info, fail, one_instance, ROUTER

    @one_instance
    class Router(exports.Router):
        def info(self):
            return info("my-router", "0.1.0", ROUTER, "What it does")
        def configure(self, params, context):
            self.p = Params.parse(params, top_k=2, gamma=1e-3)
"""

import json
import math
import struct
import tomllib

from componentize_py_types import Err
from wit_world.imports import host, types

ROUTER = types.PluginKind.ROUTER
AUX_SCHEDULE = types.PluginKind.AUX_SCHEDULE
INIT_SCHEME = types.PluginKind.INIT_SCHEME
SAMPLER = types.PluginKind.SAMPLER


def one_instance(cls):
    """Make every instantiation of `cls` return the same object. componentize-py
    creates an object of the exported class per exported function, so state kept on
    `self` by `configure` would be missing in `spec`; with this decorator it is not.
    `__init__` runs once, for the first object."""
    original_init = cls.__init__
    made = []

    def new(klass, *args, **kwargs):
        if not made:
            obj = object.__new__(klass)
            original_init(obj)
            made.append(obj)
        return made[0]

    cls.__new__ = staticmethod(new)
    cls.__init__ = lambda self, *args, **kwargs: None
    return cls


def info(name: str, version: str, kind: types.PluginKind, description: str) -> types.PluginInfo:
    """The record `info` returns."""
    return types.PluginInfo(name=name, version=version, kind=kind, description=description)


def fail(message: str):
    """Refuse the call with `message`: the host shows it as the plugin's error (a
    rejected config in `configure`, a refusal elsewhere)."""
    raise Err(message)


class Params(dict):
    """A plugin's parameters: defaults overridden by the run config's values."""

    @classmethod
    def parse(cls, text: str, **defaults) -> "Params":
        """Parse `text` (TOML, or JSON when it starts with `{`; empty means no values)
        over `defaults`. Unknown keys and values of the wrong type are refused, so a
        typo in a run config is never ignored. A default of None accepts any value."""
        text = text.strip()
        try:
            given = json.loads(text) if text.startswith("{") else tomllib.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as e:
            fail(f"invalid parameters: {e}")
        unknown = sorted(set(given) - set(defaults))
        if len(unknown) == 1:
            fail(f"unknown parameter `{unknown[0]}`")
        if unknown:
            fail("unknown parameters " + ", ".join(f"`{k}`" for k in unknown))
        out = cls(defaults)
        for key, value in given.items():
            default = defaults[key]
            if default is not None and not _same_type(default, value):
                fail(f"parameter `{key}` must be a {type(default).__name__}, not {value!r}")
            out[key] = float(value) if isinstance(default, float) else value
        return out

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _same_type(default, value) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def f32(x: float) -> float:
    """`x` rounded to the nearest f32, as Rust's `as f32` does. One f64 operation on
    f32 values rounded this way equals the same f32 operation in Rust."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def log(level: types.LogLevel, message: str):
    """A line in the run's log, tagged with the plugin's name."""
    host.log(level, message)


def metric(name: str, value: float):
    """A named scalar for the current step."""
    host.metric(name, value)


_MASK = (1 << 64) - 1


def _rotl(x: int, k: int) -> int:
    return ((x << k) | (x >> (64 - k))) & _MASK


def _splitmix64_state(x: int) -> list:
    """Four SplitMix64 outputs from `x`: a xoshiro256** state."""
    out = []
    for _ in range(4):
        x = (x + 0x9E3779B97F4A7C15) & _MASK
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        out.append(z ^ (z >> 31))
    return out


class Rng:
    """The Rust SDK's `recast_sdk::Rng` (xoshiro256** seeded through SplitMix64), bit
    for bit: the same seed gives the same stream in either language, so a Python plugin
    can derive the same per-layer seeds (`Rng(seed).fork(layer).next_u64()`) or sample
    the same indices as its Rust twin. Plugins have no system randomness: every random
    choice comes from the seed `configure` receives. `normal` uses this interpreter's
    `math.log`/`math.cos`, which may differ from Rust's in the last bit."""

    def __init__(self, seed: int):
        self.state = _splitmix64_state(seed & _MASK)

    def fork(self, stream: int) -> "Rng":
        """An independent generator for sub-stream `stream`, derived from this one's
        seed material without advancing it."""
        s = self.state
        child = Rng(0)
        child.state = _splitmix64_state(s[0] ^ _rotl(s[2], 17) ^ ((stream * 0xD1B54A32D192ED03) & _MASK))
        return child

    def next_u64(self) -> int:
        """The next 64 random bits."""
        s = self.state
        result = (_rotl((s[1] * 5) & _MASK, 7) * 9) & _MASK
        t = (s[1] << 17) & _MASK
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = _rotl(s[3], 45)
        return result

    def next_f64(self) -> float:
        """Uniform in [0, 1) with 53 random bits."""
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))

    def below(self, n: int) -> int:
        """Uniform integer in `range(n)` without modulo bias (Lemire's method); n > 0."""
        if n <= 0:
            raise ValueError(f"Rng.below({n})")
        threshold = ((1 << 64) - n) % n
        while True:
            m = self.next_u64() * n
            if m & _MASK >= threshold:
                return m >> 64

    def normal(self, mean: float, std: float) -> float:
        """A draw from N(mean, std^2) (Box-Muller; one draw per two uniforms)."""
        u1 = 1.0 - self.next_f64()
        u2 = self.next_f64()
        return mean + std * math.sqrt(-2.0 * math.log(u1)) * math.cos(math.tau * u2)

    def shuffle(self, items: list):
        """Shuffle `items` in place (Fisher-Yates)."""
        for i in range(len(items) - 1, 0, -1):
            j = self.below(i + 1)
            items[i], items[j] = items[j], items[i]

    def sample_indices(self, n: int, k: int) -> list:
        """`k` distinct indices from `range(n)`, uniformly without replacement, in draw order."""
        if k > n:
            raise ValueError(f"cannot sample {k} of {n}")
        pool = list(range(n))
        for i in range(k):
            j = i + self.below(n - i)
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:k]
