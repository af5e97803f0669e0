// The weighted combine (unpermute): every token's output is the gate-weighted sum of its
// k expert rows, out[t] = Σ_j g[t, j] · y[row_of_slot[t*k + j]], accumulated in f32
// without atomics; and its backward:
//   moe_combine_backward_rows   dy[r] = g[s] · dout[t(s)]       (s = slot_of_row[r])
//   moe_combine_backward_gates  dg[t, j] = dout[t] · y[row_of_slot[t*k + j]]  (a warp each)
// Gates are f32 whatever the rows' type.
#include "common.cuh"

template <typename T>
__device__ void combine(const T* __restrict__ y, const float* __restrict__ gates, const uint32_t* __restrict__ row_of_slot, T* __restrict__ out, int d, int k) {
    const size_t t = blockIdx.x;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float acc = 0.f;
        for (int j = 0; j < k; ++j) acc += gates[t * k + j] * load_f32(y + (size_t)row_of_slot[t * k + j] * d + i);
        store_f32(out + t * d + i, acc);
    }
}

template <typename T>
__device__ void combine_backward_rows(const T* __restrict__ grad_out, const float* __restrict__ gates, const uint32_t* __restrict__ slot_of_row, T* __restrict__ grad_y, int d, int k) {
    const size_t r = blockIdx.x;
    const uint32_t s = slot_of_row[r];
    const size_t t = s / (uint32_t)k;
    const float g = gates[s];
    for (int i = threadIdx.x; i < d; i += blockDim.x) store_f32(grad_y + r * d + i, g * load_f32(grad_out + t * d + i));
}

template <typename T>
__device__ void combine_backward_gates(const T* __restrict__ grad_out, const T* __restrict__ y, const uint32_t* __restrict__ row_of_slot, float* __restrict__ grad_gates,
                                       int slots, int d, int k) {
    const int s = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (s >= slots) return;
    const int lane = threadIdx.x & 31;
    const size_t t = (size_t)s / k;
    const T* yr = y + (size_t)row_of_slot[s] * d;
    float acc = 0.f;
    for (int i = lane; i < d; i += 32) acc += load_f32(grad_out + t * d + i) * load_f32(yr + i);
    acc = warp_sum(acc);
    if (lane == 0) grad_gates[s] = acc;
}

#define COMBINE_OPS(NAME, T)                                                                                                                       \
    extern "C" __global__ void moe_combine_##NAME(const T* y, const float* gates, const uint32_t* row_of_slot, T* out, int d, int k) {             \
        combine(y, gates, row_of_slot, out, d, k);                                                                                                 \
    }                                                                                                                                              \
    extern "C" __global__ void moe_combine_backward_rows_##NAME(const T* grad_out, const float* gates, const uint32_t* slot_of_row, T* grad_y, int d, \
                                                                int k) {                                                                           \
        combine_backward_rows(grad_out, gates, slot_of_row, grad_y, d, k);                                                                         \
    }                                                                                                                                              \
    extern "C" __global__ void moe_combine_backward_gates_##NAME(const T* grad_out, const T* y, const uint32_t* row_of_slot, float* grad_gates,     \
                                                                 int slots, int d, int k) {                                                        \
        combine_backward_gates(grad_out, y, row_of_slot, grad_gates, slots, d, k);                                                                 \
    }

COMBINE_OPS(f32, float)
COMBINE_OPS(bf16, bf16)
