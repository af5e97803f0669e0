// Auxiliary-loss weights on a schedule, in JavaScript (METHODS.md §2.4): linear warm-up
// from 0 to the configured weights, constant, then a linear decay to `final_ratio` of
// them. The `warmup-decay` schedule, with the same f32 arithmetic.

import { info, parseParams, fail, f32 } from "./recast-sdk.js";

let p = null;

/** The multiplier at `step`, in f32 like the Rust plugin. */
function factor(step) {
  if (step < p.warmup_steps) return f32(f32(step + 1) / f32(p.warmup_steps));
  if (p.decay_start !== null && step >= p.decay_start) {
    const progress = p.decay_steps === 0 ? 1 : Math.min(f32(f32(step - p.decay_start) / f32(p.decay_steps)), 1);
    return f32(1 - f32(f32(1 - p.final_ratio) * progress));
  }
  return 1;
}

export const auxSchedule = {
  info() {
    return info("js-warmup-decay", "0.1.0", "aux-schedule", "Aux-loss weights with linear warm-up and decay, in JavaScript: the warmup-decay schedule, line for line.");
  },
  configure(params, context) {
    const given = parseParams(params, { load_balance: 0.01, z_loss: 0.001, warmup_steps: 100, decay_start: null, decay_steps: 0, final_ratio: 0 });
    for (const name of ["load_balance", "z_loss", "final_ratio"]) {
      if (!(Number.isFinite(given[name]) && given[name] >= 0)) fail(`${name} must be finite and >= 0, not ${given[name]}`);
      given[name] = f32(given[name]);
    }
    p = given;
  },
  saveState() {
    return new Uint8Array(0);
  },
  loadState(state) {},
  coefficients(step, moeLayers, stats) {
    const f = factor(Number(step));
    return Array.from(moeLayers, (layer) => ({ layer, loadBalance: f32(p.load_balance * f), zLoss: f32(p.z_loss * f) }));
  },
};
