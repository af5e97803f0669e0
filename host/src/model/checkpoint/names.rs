//! Tensor names: Recast's own (the Qwen2-MoE spelling, with shared experts numbered)
//! and each Hugging Face family's.
//!
//! | Recast                                    | Mixtral                                 | Qwen2-MoE                |
//! |-------------------------------------------|-----------------------------------------|--------------------------|
//! | `layers.L.mlp.gate.weight`                | `layers.L.block_sparse_moe.gate.weight` | same as Recast           |
//! | `layers.L.mlp.experts.E.gate_proj.weight` | `…block_sparse_moe.experts.E.w1.weight` | same                     |
//! | `layers.L.mlp.experts.E.up_proj.weight`   | `…w3.weight`                            | same                     |
//! | `layers.L.mlp.experts.E.down_proj.weight` | `…w2.weight`                            | same                     |
//! | `layers.L.mlp.shared_experts.0.…`         | (none)                                  | `layers.L.mlp.shared_expert.…` |

use crate::model::config::Architecture;

/// Recast's name for a tensor stored under `name` in a checkpoint of `arch`.
pub fn from_hf(arch: Architecture, name: &str) -> String {
    match arch {
        Architecture::Mixtral => {
            let parts: Vec<&str> = name.split('.').collect();
            match parts.as_slice() {
                [pre @ .., "block_sparse_moe", "experts", e, w, last] => {
                    let proj = match *w {
                        "w1" => "gate_proj",
                        "w3" => "up_proj",
                        "w2" => "down_proj",
                        other => other,
                    };
                    format!("{}.mlp.experts.{e}.{proj}.{last}", pre.join("."))
                }
                _ => name.replacen(".block_sparse_moe.", ".mlp.", 1),
            }
        }
        Architecture::Qwen2Moe => name.replacen(".mlp.shared_expert.", ".mlp.shared_experts.0.", 1),
        _ => name.to_string(),
    }
}

/// The name `arch` stores Recast's tensor `name` under.
pub fn to_hf(arch: Architecture, name: &str) -> String {
    match arch {
        Architecture::Mixtral => {
            let parts: Vec<&str> = name.split('.').collect();
            match parts.as_slice() {
                [pre @ .., "mlp", "experts", e, proj, last] => {
                    let w = match *proj {
                        "gate_proj" => "w1",
                        "up_proj" => "w3",
                        "down_proj" => "w2",
                        other => other,
                    };
                    format!("{}.block_sparse_moe.experts.{e}.{w}.{last}", pre.join("."))
                }
                [pre @ .., "mlp", "gate", last] => format!("{}.block_sparse_moe.gate.{last}", pre.join(".")),
                _ => name.to_string(),
            }
        }
        Architecture::Qwen2Moe => name.replacen(".mlp.shared_experts.0.", ".mlp.shared_expert.", 1),
        _ => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixtral_names_round_trip() {
        for (hf, ours) in [
            ("model.layers.3.block_sparse_moe.experts.7.w1.weight", "model.layers.3.mlp.experts.7.gate_proj.weight"),
            ("model.layers.3.block_sparse_moe.experts.7.w2.weight", "model.layers.3.mlp.experts.7.down_proj.weight"),
            ("model.layers.3.block_sparse_moe.experts.7.w3.weight", "model.layers.3.mlp.experts.7.up_proj.weight"),
            ("model.layers.0.block_sparse_moe.gate.weight", "model.layers.0.mlp.gate.weight"),
            ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.weight"),
        ] {
            assert_eq!(from_hf(Architecture::Mixtral, hf), ours);
            assert_eq!(to_hf(Architecture::Mixtral, ours), hf);
        }
    }

    #[test]
    fn qwen2_moe_shared_expert_is_number_zero() {
        let hf = "model.layers.1.mlp.shared_expert.up_proj.weight";
        let ours = from_hf(Architecture::Qwen2Moe, hf);
        assert_eq!(ours, "model.layers.1.mlp.shared_experts.0.up_proj.weight");
        assert_eq!(to_hf(Architecture::Qwen2Moe, &ours), hf);
        assert_eq!(from_hf(Architecture::Qwen2Moe, "model.layers.1.mlp.shared_expert_gate.weight"), "model.layers.1.mlp.shared_expert_gate.weight");
    }
}
