// LayerNorm without affine followed by adaLN modulation, in one pass:
// out = (x - mean) / sqrt(var + eps) * (1 + scale) + shift over the last axis.
// CPU reference: src/ops/fused.rs (`norm_modulate`, `NormModulate::cpu_fwd`).
//
// x, out: (B, N, D) rows; shift, scale: (B, S, D) with S = 1 (one row per
// clip) or S = N (one per token). One warp per row; the statistics are two
// passes over the row (mean, then centred squares) in f32, as the CPU does,
// rather than one pass of sum and sum of squares, which loses digits when
// the mean is large against the spread.
#include "common.cuh"

template <typename T>
__device__ void norm_modulate(const T *__restrict__ x, const T *__restrict__ shift,
                              const T *__restrict__ scale, T *__restrict__ out, int rows,
                              int n, int s, int d, float eps) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) {
        return;
    }
    const int b = row / n;
    const int m = b * s + (s == 1 ? 0 : row % n);
    const T *xr = x + (size_t)row * d;
    float sum = 0.f;
    for (int j = lane; j < d; j += 32) {
        sum += to_float(xr[j]);
    }
    const float mean = warp_sum(sum) / d;
    float sq = 0.f;
    for (int j = lane; j < d; j += 32) {
        const float c = to_float(xr[j]) - mean;
        sq += c * c;
    }
    const float rstd = 1.f / sqrtf(warp_sum(sq) / d + eps);
    const T *sh = shift + (size_t)m * d;
    const T *sc = scale + (size_t)m * d;
    T *o = out + (size_t)row * d;
    for (int j = lane; j < d; j += 32) {
        const float v = (to_float(xr[j]) - mean) * rstd * (1.f + to_float(sc[j])) + to_float(sh[j]);
        o[j] = from_float<T>(v);
    }
}

#define NORM_MODULATE(NAME, T)                                                                \
    extern "C" __global__ void NAME(const T *x, const T *shift, const T *scale, T *out,        \
                                    int rows, int n, int s, int d, float eps) {               \
        norm_modulate<T>(x, shift, scale, out, rows, n, s, d, eps);                           \
    }

NORM_MODULATE(norm_modulate_f32, float)
NORM_MODULATE(norm_modulate_bf16, __nv_bfloat16)
NORM_MODULATE(norm_modulate_f16, __half)
