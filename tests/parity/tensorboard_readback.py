"""Reads a run's TensorBoard event files with the tensorboard package's own reader and
checks every scalar against the run's metrics.jsonl (flattened here independently of
Recast's writer): the same tags, the same steps, the same values to f32 precision.

    python tests/parity/tensorboard_readback.py RUN_DIR
"""
import json
import math
import struct
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def expected_scalars(record):
    out = {}
    for key, value in record.items():
        if key in ("step", "unix_ms", "layout", "eval_gates"):
            continue
        if key == "layers":
            for layer in value:
                l = layer["layer"]
                for name, v in layer.items():
                    if name != "layer" and isinstance(v, (int, float)) and not isinstance(v, bool):
                        out[f"layer{l}/{name}"] = float(v)
                load = layer.get("expert_load") or []
                total = sum(load)
                for e, c in enumerate(load):
                    out[f"layer{l}/load_share/expert{e}"] = c / total if total else 0.0
        elif isinstance(value, dict):
            for sub, v in value.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[f"{key}/{sub}"] = float(v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def main(run_dir):
    run_dir = Path(run_dir)
    expected = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for tag, value in expected_scalars(record).items():
            expected.setdefault(tag, {})[record["step"]] = value
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert tags == set(expected), f"tags differ: only in TensorBoard {sorted(tags - set(expected))}, only in metrics {sorted(set(expected) - tags)}"
    checked = 0
    for tag in sorted(tags):
        got = {s.step: s.value for s in events.Scalars(tag)}
        assert set(got) == set(expected[tag]), f"{tag}: steps {sorted(got)} in TensorBoard, {sorted(expected[tag])} in metrics.jsonl"
        for step, value in expected[tag].items():
            # TensorBoard keeps f32: compare with the value rounded to f32.
            want = struct.unpack("f", struct.pack("f", value))[0] if math.isfinite(value) else value
            assert got[step] == want or abs(got[step] - want) <= 1e-6 * max(1.0, abs(want)), f"{tag} at step {step}: {got[step]} in TensorBoard, {value} in metrics.jsonl"
            checked += 1
    print(f"tensorboard read-back: {len(tags)} tags, {checked} values, all equal to metrics.jsonl")


if __name__ == "__main__":
    main(sys.argv[1])
