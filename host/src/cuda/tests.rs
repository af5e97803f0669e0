//! The CUDA ops against the CPU path, forward and backward, on a real GPU (these tests
//! fail without one: `scripts/device-check.sh` runs them on the GPU machine). f32 is
//! compared tightly, bf16 loosely.

use candle_core::{D, DType, Device, Tensor, Var};

use super::router::{RouterArgs, route};
use super::{combine, permute};
use crate::model::ffn::Ffn;
use crate::model::init::SplitMix64;
use crate::model::test_tensors::randn_var;
use crate::moe::gates::{router_scores, token_choice_gates};
use crate::moe::layer::MoeLayer;
use crate::moe::selection::top_k;
use crate::moe::spec::{AuxCoefficients, LogitNorm, RouterSpec, ScoreFunction, SelectionBias, TopkOrder};

fn gpu() -> Device {
    Device::new_cuda(0).expect("these tests need a CUDA GPU (run them with scripts/device-check.sh)")
}

/// `max |a − b| / max |b|`, both brought to the CPU in f64.
fn gap(a: &Tensor, b: &Tensor) -> f64 {
    let cpu = |t: &Tensor| t.to_device(&Device::Cpu).expect("to cpu").to_dtype(DType::F64).expect("f64");
    let (a, b) = (cpu(a), cpu(b));
    assert_eq!(a.dims(), b.dims());
    let max_abs = |t: &Tensor| t.abs().expect("abs").flatten_all().expect("flat").max(0).expect("max").to_scalar::<f64>().expect("scalar");
    max_abs(&(a - &b).expect("sub")) / max_abs(&b).max(1e-30)
}

fn specs() -> Vec<(&'static str, RouterSpec)> {
    let base = RouterSpec::softmax_topk(2);
    vec![
        ("softmax top-2 renormalised", base),
        ("softmax top-3, not renormalised, scaled", RouterSpec { top_k: 3, renormalize: false, scaling: 2.5, ..base }),
        ("top-k then softmax", RouterSpec { order: TopkOrder::TopkThenSoftmax, ..base }),
        ("Skywork normalisation λ=2", RouterSpec { logit_norm: LogitNorm::Skywork(2.0), ..base }),
        ("sigmoid with a selection bias", RouterSpec { score: ScoreFunction::Sigmoid, selection_bias: SelectionBias::Plugin, ..base }),
        ("top-8 of 64", RouterSpec { top_k: 8, ..base }),
    ]
}

/// The CPU path's probabilities `[T, E]`, gates `[T, k]` and choices.
fn cpu_routing(z: &Tensor, spec: &RouterSpec, bias: &[f32]) -> (Tensor, Tensor, Vec<u32>) {
    let (tokens, experts) = z.dims2().expect("dims");
    let scores = router_scores(z, spec).expect("scores");
    let selection = scores.scores.flatten_all().expect("flat").to_vec1::<f32>().expect("vec");
    let k = spec.top_k as usize;
    let mut chosen = Vec::new();
    for row in selection.chunks_exact(experts) {
        let biased: Vec<f32> = row.iter().zip(bias).map(|(s, b)| s + b).collect();
        top_k(&biased, k, &mut chosen);
    }
    let gates = token_choice_gates(&scores, &chosen, spec).expect("gates").reshape((tokens, k)).expect("reshape");
    (scores.probs, gates, chosen)
}

#[test]
fn fused_router_matches_the_cpu_router_forward_and_backward() {
    let dev = gpu();
    let mut rng = SplitMix64(7);
    for (name, spec) in specs() {
        let (tokens, experts) = (333, if spec.top_k == 8 { 64 } else { 8 });
        let k = spec.top_k as usize;
        let z = randn_var(&mut rng, &[tokens, experts], 1.5);
        let bias: Vec<f32> = (0..experts).map(|e| if spec.selection_bias == SelectionBias::None { 0.0 } else { 0.05 * (e % 3) as f32 }).collect();
        let (probs, gates, chosen) = cpu_routing(z.as_tensor(), &spec, &bias);

        let zg = Var::from_tensor(&z.as_tensor().to_device(&dev).expect("to gpu")).expect("var");
        let args = RouterArgs::new(&spec, tokens, experts).expect("within the kernel's limits");
        let (packed, routed) = route(zg.as_tensor(), args, &bias).expect("route");
        let (gp, gg) = (packed.narrow(1, 0, experts).expect("p"), packed.narrow(1, experts, k).expect("g"));
        assert!(gap(&gp, &probs) < 1e-5, "{name}: probabilities differ by {}", gap(&gp, &probs));
        assert!(gap(&gg, &gates) < 1e-5, "{name}: gates differ by {}", gap(&gg, &gates));
        let got: Vec<u32> = dev_vec(&dev, &routed.chosen);
        assert_eq!(got, chosen, "{name}: chosen experts");
        let counts: Vec<u32> = dev_vec(&dev, &routed.counts);
        let mut want = vec![0u32; experts];
        chosen.iter().for_each(|&e| want[e as usize] += 1);
        assert_eq!(counts, want, "{name}: counts");

        // A loss on both outputs: the router gradient must agree.
        let rp = randn_var(&mut rng, &[tokens, experts], 1.0);
        let rg = randn_var(&mut rng, &[tokens, k], 1.0);
        let loss = |p: &Tensor, g: &Tensor, dev: &Device| -> Tensor {
            let a = (p * rp.as_tensor().to_device(dev).expect("dev")).expect("mul").sum_all().expect("sum");
            let b = (g * rg.as_tensor().to_device(dev).expect("dev")).expect("mul").sum_all().expect("sum");
            (a + b).expect("add")
        };
        let want = loss(&probs, &gates, &Device::Cpu).backward().expect("cpu backward");
        let got = loss(&gp, &gg, &dev).backward().expect("gpu backward");
        let (dw, dg) = (want.get(&z).expect("cpu dz"), got.get(&zg).expect("gpu dz"));
        assert!(gap(dg, dw) < 1e-4, "{name}: dL/dz differs by {}", gap(dg, dw));
    }
}

fn dev_vec(dev: &Device, s: &candle_core::cuda_backend::cudarc::driver::CudaSlice<u32>) -> Vec<u32> {
    let Device::Cuda(d) = dev else { unreachable!("a CUDA device") };
    d.clone_dtoh(s).expect("copy to host")
}

#[test]
fn permute_and_combine_match_gather_and_scatter_add() {
    let dev = gpu();
    let mut rng = SplitMix64(11);
    let (tokens, experts, k, d) = (257, 8, 2, 96);
    let spec = RouterSpec::softmax_topk(k as u32);
    let z = randn_var(&mut rng, &[tokens, experts], 1.0).as_tensor().to_device(&dev).expect("gpu");
    let (packed, routed) = route(&z, RouterArgs::new(&spec, tokens, experts).expect("args"), &vec![0.0; experts]).expect("route");
    let chosen = dev_vec(&dev, &routed.chosen);
    let placement = permute::place(
        match &dev {
            Device::Cuda(d) => d,
            _ => unreachable!(),
        },
        &routed,
        tokens,
        k,
        experts,
    )
    .expect("place");
    // CPU order: slots grouped by expert, token order inside (as moe::selection).
    let mut slots_by_row: Vec<u32> = (0..(tokens * k) as u32).collect();
    slots_by_row.sort_by_key(|&s| (chosen[s as usize], s));
    let token_of_row: Vec<u32> = slots_by_row.iter().map(|&s| s / k as u32).collect();
    let mut counts = vec![0usize; experts];
    chosen.iter().for_each(|&e| counts[e as usize] += 1);
    assert_eq!(placement.counts, counts);

    for (dtype, tolerance) in [(DType::F32, 1e-6), (DType::BF16, 1e-2)] {
        let x = randn_var(&mut rng, &[tokens, d], 1.0);
        let xg = Var::from_tensor(&x.as_tensor().to_device(&dev).expect("gpu").to_dtype(dtype).expect("dtype")).expect("var");
        let rows = permute::permute(xg.as_tensor(), &placement).expect("permute");
        let idx = Tensor::from_vec(token_of_row.clone(), token_of_row.len(), &Device::Cpu).expect("idx");
        let want_rows = x.as_tensor().to_dtype(dtype).expect("dtype").index_select(&idx, 0).expect("gather");
        assert!(gap(&rows, &want_rows) < tolerance, "{dtype:?}: permute");

        // Combine of random rows with the router's gates, against index_add on the CPU.
        let y = randn_var(&mut rng, &[tokens * k, d], 1.0);
        let yg = Var::from_tensor(&y.as_tensor().to_device(&dev).expect("gpu").to_dtype(dtype).expect("dtype")).expect("var");
        let gates = Var::from_tensor(&packed.narrow(1, experts, k).expect("g").contiguous().expect("c").detach()).expect("var");
        let out = combine::combine(yg.as_tensor(), gates.as_tensor(), &placement).expect("combine");
        let gates_cpu = Var::from_tensor(&gates.as_tensor().to_device(&Device::Cpu).expect("cpu")).expect("var");
        let slot_idx = Tensor::from_vec(slots_by_row.clone(), slots_by_row.len(), &Device::Cpu).expect("idx");
        let y_cpu = y.as_tensor().to_dtype(dtype).expect("dtype").to_dtype(DType::F32).expect("f32");
        let weights = gates_cpu.as_tensor().flatten_all().expect("flat").index_select(&slot_idx, 0).expect("w").unsqueeze(1).expect("u");
        let want = Tensor::zeros((tokens, d), DType::F32, &Device::Cpu).expect("z").index_add(&idx, &y_cpu.broadcast_mul(&weights).expect("mul"), 0).expect("add");
        assert!(gap(&out, &want) < tolerance, "{dtype:?}: combine differs by {}", gap(&out, &want));

        // Backward of both, through one loss.
        let r = randn_var(&mut rng, &[tokens, d], 1.0);
        let rows_r = randn_var(&mut rng, &[tokens * k, d], 1.0);
        let l_gpu = ((out.to_dtype(DType::F32).expect("f32") * r.as_tensor().to_device(&dev).expect("gpu")).expect("mul").sum_all().expect("s")
            + (rows.to_dtype(DType::F32).expect("f32") * rows_r.as_tensor().to_device(&dev).expect("gpu")).expect("mul").sum_all().expect("s"))
        .expect("add");
        let g = l_gpu.backward().expect("gpu backward");
        let x_cpu = Var::from_tensor(&x.as_tensor().to_dtype(dtype).expect("d").to_dtype(DType::F32).expect("f32")).expect("var");
        let y_cpu = Var::from_tensor(&y_cpu).expect("var");
        let weights = gates_cpu.as_tensor().flatten_all().expect("flat").index_select(&slot_idx, 0).expect("w").unsqueeze(1).expect("u");
        let want = Tensor::zeros((tokens, d), DType::F32, &Device::Cpu).expect("z").index_add(&idx, &y_cpu.as_tensor().broadcast_mul(&weights).expect("mul"), 0).expect("add");
        let l_cpu =
            ((want * r.as_tensor()).expect("mul").sum_all().expect("s") + (x_cpu.as_tensor().index_select(&idx, 0).expect("g") * rows_r.as_tensor()).expect("mul").sum_all().expect("s")).expect("add");
        let w = l_cpu.backward().expect("cpu backward");
        for (what, got, want) in [
            ("dx", g.get(&xg).expect("dx"), w.get(&x_cpu).expect("dx")),
            ("dy", g.get(&yg).expect("dy"), w.get(&y_cpu).expect("dy")),
            ("dgates", g.get(&gates).expect("dg"), w.get(&gates_cpu).expect("dg")),
        ] {
            assert!(gap(got, want) < tolerance * 10.0, "{dtype:?}: {what} differs by {}", gap(got, want));
        }
    }
}

/// One MoE layer with its weights on the CPU and the same weights on the GPU.
fn layer_pair(rng: &mut SplitMix64, d: usize, f: usize, experts: usize, spec: RouterSpec, dtype: DType, dev: &Device) -> (MoeLayer, MoeLayer, Vec<Var>, Vec<Var>) {
    let mut cpu_vars = Vec::new();
    let mut gpu_vars = Vec::new();
    let mut pair = |dims: &[usize], std: f64| -> (Tensor, Tensor) {
        let v = randn_var(rng, dims, std);
        let v = Var::from_tensor(&v.as_tensor().to_dtype(dtype).expect("d").to_dtype(DType::F32).expect("f32")).expect("var");
        let g = Var::from_tensor(&v.as_tensor().to_device(dev).expect("gpu").to_dtype(dtype).expect("dtype")).expect("var");
        let out = (v.as_tensor().clone(), g.as_tensor().clone());
        cpu_vars.push(v);
        gpu_vars.push(g);
        out
    };
    let (router_c, router_g) = pair(&[experts, d], 0.3);
    let mut experts_c = Vec::new();
    let mut experts_g = Vec::new();
    for _ in 0..experts {
        let (gc, gg) = pair(&[f, d], 0.2);
        let (uc, ug) = pair(&[f, d], 0.2);
        let (dc, dg) = pair(&[d, f], 0.2);
        experts_c.push(Ffn { gate: gc, up: uc, down: dc });
        experts_g.push(Ffn { gate: gg, up: ug, down: dg });
    }
    let coefficients = AuxCoefficients { load_balance: 0.01, z_loss: 0.001 };
    let bias = vec![0.0; experts];
    let make = |router: Tensor, experts: Vec<Ffn>| MoeLayer { layer: 0, router, experts, shared: vec![], shared_gate: None, spec, selection_bias: bias.clone(), coefficients };
    (make(router_c, experts_c), make(router_g, experts_g), cpu_vars, gpu_vars)
}

#[test]
fn cuda_moe_layer_matches_the_cpu_layer_forward_and_backward() {
    let dev = gpu();
    let mut rng = SplitMix64(23);
    let (tokens, d, f, experts) = (300, 64, 96, 8);
    for (dtype, tolerance) in [(DType::F32, 2e-4), (DType::BF16, 5e-2)] {
        for (name, spec) in specs().into_iter().filter(|(_, s)| s.top_k < 8) {
            let (cpu, gpu_layer, cpu_vars, gpu_vars) = layer_pair(&mut rng, d, f, experts, spec, dtype, &dev);
            let x = randn_var(&mut rng, &[tokens, d], 1.0);
            let x = Var::from_tensor(&x.as_tensor().to_dtype(dtype).expect("d").to_dtype(DType::F32).expect("f32")).expect("var");
            let xg = Var::from_tensor(&x.as_tensor().to_device(&dev).expect("gpu").to_dtype(dtype).expect("dtype")).expect("var");
            let r = randn_var(&mut rng, &[tokens, d], 1.0);
            let want = cpu.forward(x.as_tensor()).expect("cpu layer");
            let got = gpu_layer.forward(xg.as_tensor()).expect("gpu layer");
            assert!(gap(&got.output, &want.output) < tolerance, "{dtype:?} {name}: output differs by {}", gap(&got.output, &want.output));
            assert_eq!(got.stats.expert_load, want.stats.expert_load, "{dtype:?} {name}: expert load");
            let aux = |o: &crate::moe::layer::MoeOutput| o.aux_loss.as_ref().expect("aux loss").to_dtype(DType::F32).expect("f32").to_device(&Device::Cpu).expect("cpu");
            assert!(gap(&aux(&got), &aux(&want)) < tolerance, "{dtype:?} {name}: aux loss");
            let loss = |o: &crate::moe::layer::MoeOutput, r: &Tensor| -> Tensor {
                let main = (o.output.to_dtype(DType::F32).expect("f32") * r).expect("mul").sum_all().expect("s");
                (main + o.aux_loss.as_ref().expect("aux").to_dtype(DType::F32).expect("f32")).expect("add")
            };
            let gw = loss(&want, r.as_tensor()).backward().expect("cpu backward");
            let gg = loss(&got, &r.as_tensor().to_device(&dev).expect("gpu")).backward().expect("gpu backward");
            let dx = gap(gg.get(&xg).expect("dx"), gw.get(&x).expect("dx"));
            assert!(dx < tolerance, "{dtype:?} {name}: dx differs by {dx}");
            for (i, (c, g)) in cpu_vars.iter().zip(&gpu_vars).enumerate() {
                match (gw.get(c), gg.get(g)) {
                    (Some(w), Some(h)) => assert!(gap(h, w) < tolerance, "{dtype:?} {name}: gradient of weight {i} (0 = router) differs by {}", gap(h, w)),
                    (None, None) => {}
                    (w, h) => panic!("{dtype:?} {name}: weight {i} has a gradient on one side only (cpu {}, gpu {})", w.is_some(), h.is_some()),
                }
            }
            assert!(got.output.sum_keepdim(D::Minus1).is_ok());
        }
    }
}
