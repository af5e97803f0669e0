"""Recast's SDK for plugins written in Python (built with componentize-py).

`recast plugin build` puts this module on the plugin's Python path; the `wit_world`
package it imports is generated from `wit/` when the component is built. It gives the
same conveniences as the Rust SDK: parameters parsed from TOML or JSON with unknown keys
refused, `info` records, errors the host shows as the plugin's own, f32 rounding where a
policy must agree bit for bit with one written in Rust, and the host's `log` and
`metric`.

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
