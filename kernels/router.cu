// The fused MoE router: from router logits z [T, E] (f32) to everything routing needs,
// one thread per token, no intermediate tensors:
//   logit normalisation (none, or Skywork-MoE's λ (z − μ) / (σ + ε) with the unbiased σ),
//   scores s = softmax or sigmoid, the probability rows p (s, or s / Σ s for sigmoid),
//   selection on s + bias (per-expert, aux-loss-free balancing; ties to the lower
//   expert), top-k, combine weights (the chosen scores, renormalised if asked, or a
//   softmax over the chosen logits), times the spec's scaling, and per-expert counts.
// Output `packed` is [T, E + k]: p in the first E columns, the gates in the last k, so
// one differentiable tensor carries both; `moe_router_backward` maps its gradient back
// to z. Mirrors host/src/moe/gates.rs and selection.rs (the CPU reference).
#include "common.cuh"

#define MAX_EXPERTS 256
#define MAX_TOP_K 32
#define SKYWORK_EPS 1e-6f

struct RouterArgs {
    int tokens, experts, k;
    int sigmoid_score;      // 0: softmax, 1: sigmoid
    int normalise;          // 1: Skywork normalisation with `lambda`
    float lambda;
    int topk_then_softmax;  // 1: gates are a softmax over the chosen logits
    int renormalise;        // softmax-then-top-k: divide the chosen scores by their sum
    float scaling;
};

// Normalised logits n and scores s of one token; returns Σ s.
__device__ float token_scores(const float* zr, const RouterArgs& a, float* n, float* s, float* mean_out, float* sigma_raw_out) {
    const int E = a.experts;
    float mean = 0.f;
    for (int e = 0; e < E; ++e) { n[e] = zr[e]; mean += n[e]; }
    mean /= (float)E;
    float sigma_raw = 0.f;
    if (a.normalise) {
        float var = 0.f;
        for (int e = 0; e < E; ++e) { float c = n[e] - mean; var += c * c; }
        var /= (float)(E > 1 ? E - 1 : 1);
        sigma_raw = sqrtf(var);
        const float scale = a.lambda / (sigma_raw + SKYWORK_EPS);
        for (int e = 0; e < E; ++e) n[e] = (n[e] - mean) * scale;
    }
    *mean_out = mean;
    *sigma_raw_out = sigma_raw;
    float sum = 0.f;
    if (a.sigmoid_score) {
        for (int e = 0; e < E; ++e) { s[e] = 1.f / (1.f + expf(-n[e])); sum += s[e]; }
    } else {
        float m = n[0];
        for (int e = 1; e < E; ++e) m = fmaxf(m, n[e]);
        for (int e = 0; e < E; ++e) { s[e] = expf(n[e] - m); sum += s[e]; }
        for (int e = 0; e < E; ++e) s[e] /= sum;
        sum = 1.f;
    }
    return sum;
}

extern "C" __global__ void moe_router_forward(const float* __restrict__ z, const float* __restrict__ bias, float* __restrict__ packed,
                                              uint32_t* __restrict__ chosen, uint32_t* __restrict__ counts, RouterArgs a) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= a.tokens) return;
    const int E = a.experts, k = a.k;
    float n[MAX_EXPERTS], s[MAX_EXPERTS];
    float mean, sigma_raw;
    const float sum = token_scores(z + (size_t)t * E, a, n, s, &mean, &sigma_raw);
    float* out = packed + (size_t)t * (E + k);
    for (int e = 0; e < E; ++e) out[e] = a.sigmoid_score ? s[e] / sum : s[e];

    // Top-k on s + bias, best first; a strict `>` keeps ties at the lower expert.
    uint32_t taken[MAX_EXPERTS / 32] = {0};
    int idx[MAX_TOP_K];
    for (int j = 0; j < k; ++j) {
        int best = -1;
        float best_v = 0.f;
        for (int e = 0; e < E; ++e) {
            if (taken[e >> 5] & (1u << (e & 31))) continue;
            const float v = s[e] + (bias ? bias[e] : 0.f);
            if (best < 0 || v > best_v) { best = e; best_v = v; }
        }
        taken[best >> 5] |= 1u << (best & 31);
        idx[j] = best;
    }

    float g[MAX_TOP_K];
    if (a.topk_then_softmax) {
        float m = n[idx[0]];
        for (int j = 1; j < k; ++j) m = fmaxf(m, n[idx[j]]);
        float total = 0.f;
        for (int j = 0; j < k; ++j) { g[j] = expf(n[idx[j]] - m); total += g[j]; }
        for (int j = 0; j < k; ++j) g[j] /= total;
    } else {
        float total = 0.f;
        for (int j = 0; j < k; ++j) { g[j] = s[idx[j]]; total += g[j]; }
        if (a.renormalise) for (int j = 0; j < k; ++j) g[j] /= total;
    }
    for (int j = 0; j < k; ++j) {
        out[E + j] = g[j] * a.scaling;
        chosen[(size_t)t * k + j] = (uint32_t)idx[j];
        atomicAdd(&counts[idx[j]], 1u);
    }
}

// dL/dz from dL/d(packed), recomputing the forward's per-token values.
extern "C" __global__ void moe_router_backward(const float* __restrict__ z, const uint32_t* __restrict__ chosen, const float* __restrict__ grad_packed,
                                               float* __restrict__ grad_z, RouterArgs a) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= a.tokens) return;
    const int E = a.experts, k = a.k;
    const float* zr = z + (size_t)t * E;
    float n[MAX_EXPERTS], s[MAX_EXPERTS], ds[MAX_EXPERTS], dn[MAX_EXPERTS];
    float mean, sigma_raw;
    const float sum = token_scores(zr, a, n, s, &mean, &sigma_raw);
    const float* gp = grad_packed + (size_t)t * (E + k);
    const uint32_t* idx = chosen + (size_t)t * k;
    for (int e = 0; e < E; ++e) { ds[e] = 0.f; dn[e] = 0.f; }

    // Gates.
    if (a.topk_then_softmax) {
        float m = n[idx[0]];
        for (int j = 1; j < k; ++j) m = fmaxf(m, n[idx[j]]);
        float q[MAX_TOP_K], total = 0.f, dot = 0.f;
        for (int j = 0; j < k; ++j) { q[j] = expf(n[idx[j]] - m); total += q[j]; }
        for (int j = 0; j < k; ++j) { q[j] /= total; dot += q[j] * gp[E + j] * a.scaling; }
        for (int j = 0; j < k; ++j) dn[idx[j]] += q[j] * (gp[E + j] * a.scaling - dot);
    } else if (a.renormalise) {
        float total = 0.f, dot = 0.f;
        for (int j = 0; j < k; ++j) total += s[idx[j]];
        for (int j = 0; j < k; ++j) dot += gp[E + j] * a.scaling * s[idx[j]] / total;
        for (int j = 0; j < k; ++j) ds[idx[j]] += (gp[E + j] * a.scaling - dot) / total;
    } else {
        for (int j = 0; j < k; ++j) ds[idx[j]] += gp[E + j] * a.scaling;
    }

    // Probabilities, then the score function.
    if (a.sigmoid_score) {
        float dot = 0.f;
        for (int e = 0; e < E; ++e) dot += gp[e] * s[e] / sum;
        for (int e = 0; e < E; ++e) ds[e] += (gp[e] - dot) / sum;
        for (int e = 0; e < E; ++e) dn[e] += ds[e] * s[e] * (1.f - s[e]);
    } else {
        float dot = 0.f;
        for (int e = 0; e < E; ++e) { ds[e] += gp[e]; dot += s[e] * ds[e]; }
        for (int e = 0; e < E; ++e) dn[e] += s[e] * (ds[e] - dot);
    }

    // Normalisation: n = λ c / (σ + ε), c = z − μ, σ² = Σ c² / (E − 1).
    float* gz = grad_z + (size_t)t * E;
    if (a.normalise) {
        const float sp = sigma_raw + SKYWORK_EPS;
        const float m = (float)(E > 1 ? E - 1 : 1);
        float dn_dot_c = 0.f;
        for (int e = 0; e < E; ++e) dn_dot_c += dn[e] * (zr[e] - mean);
        const float via_sigma = sigma_raw > 0.f ? -a.lambda * dn_dot_c / (sp * sp) / (m * sigma_raw) : 0.f;
        float dc_mean = 0.f;
        for (int e = 0; e < E; ++e) {
            ds[e] = a.lambda * dn[e] / sp + via_sigma * (zr[e] - mean);  // ds reused as dc
            dc_mean += ds[e];
        }
        dc_mean /= (float)E;
        for (int e = 0; e < E; ++e) gz[e] = ds[e] - dc_mean;
    } else {
        for (int e = 0; e < E; ++e) gz[e] = dn[e];
    }
}
