// Fused attention forward (FlashAttention-2 style, Dao 2023): softmax(q k^T
// * scale) v over key tiles with an online softmax, so the N x M scores are
// never written to memory. Every sum and the softmax run in f32.
// CPU reference: src/ops/attention.rs (`FlashAttention::cpu_fwd`, and
// `flash_attention_reference` built from candle's generic ops).
//
// Shapes: q (B, H, N, Dh), k and v (B, H, M, Dh), out (B, H, N, Dh), all
// contiguous. The mask is per token, never N x M: `qseg` (B, N) and `kseg`
// (B, M) u32 segment ids (or both null: everything visible). Query i sees key
// j iff kseg[j] != 0 and qseg[i] == kseg[j]: segment 0 is padding, seen by
// no query; a query of segment 0 sees nothing and its output is 0. A key
// padding mask is "1 for every query, 1 or 0 per key"; packed clips are "clip
// index + 1 per token". A query row with nothing visible gives 0, not NaN.
//
// Three kernels:
// - `attn_mma2_*` (bf16, f16; the default): `attn_mma`'s softmax with
//   cp.async double buffering, ldmatrix fragments and two query tiles a warp
//   (see "the pipelined tensor-core kernel" below).
// - `attn_mma_*` (bf16, f16; the first kernel, now the fallback): tensor cores through `mma.sync.m16n8k16` with
//   f32 accumulators. A block is 4 warps, each owning 16 query rows (64 per
//   block); K and V tiles of 64 keys go through shared memory. The f32
//   accumulator layout of m16n8k16 is fixed by the PTX ISA (thread `lane`
//   holds rows lane/4 and lane/4 + 8), so the row max and sum of the online
//   softmax stay in registers and the probabilities are fed back as the A
//   operand of the P V product without a trip through shared memory.
//   The head dimension is padded with zeros to DP, a multiple of 16 (XL's 72
//   runs as 80).
// - `attn_scalar_*` (every type; the only one for f32): CUDA cores, 4
//   threads per query each holding a quarter of the head dimension, K and V
//   tiles of 32 keys in shared memory as f32. Exact f32 arithmetic, for the
//   f32 parity test and head sizes the tensor-core kernel does not cover.
// Both take head dims up to 128 (the Rust side checks) and any N, M.
#include "common.cuh"

// ---------------------------------------------------------------------------
// the tensor-core kernel

// Two 16-bit values as the b32 register an mma operand takes: `lo` is the
// element with the lower column (or row) index.
template <typename T> __device__ __forceinline__ unsigned pack2(float lo, float hi);
template <> __device__ __forceinline__ unsigned pack2<__nv_bfloat16>(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned *>(&v);
}
template <> __device__ __forceinline__ unsigned pack2<__half>(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<unsigned *>(&v);
}

template <typename T> __device__ __forceinline__ unsigned pack2_raw(T lo, T hi) {
    unsigned short l = *reinterpret_cast<unsigned short *>(&lo);
    unsigned short h = *reinterpret_cast<unsigned short *>(&hi);
    return (unsigned)l | ((unsigned)h << 16);
}

// d = a b + d for a 16x16 (row) by 16x8 (col) product.
template <typename T>
__device__ __forceinline__ void mma16816(float d[4], const unsigned a[4], unsigned b0, unsigned b1);
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float d[4], const unsigned a[4],
                                                        unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<__half>(float d[4], const unsigned a[4], unsigned b0,
                                                 unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The pair (row, col), (row, col + 1) of a (rows, dh) matrix as one b32, or
// zeros outside it. `dh` and `col` are even, so the pair is 4-byte aligned
// and never straddles the end of a row.
template <typename T>
__device__ __forceinline__ unsigned load_pair(const T *base, int row, int col, int rows, int dh) {
    if (row < rows && col < dh) {
        return *reinterpret_cast<const unsigned *>(base + (size_t)row * dh + col);
    }
    return 0u;
}

constexpr int MMA_BQ = 64;  // query rows per block: 4 warps x 16
constexpr int MMA_BK = 64;  // keys per shared-memory tile

template <typename T, int DP>
__device__ void attn_mma(const T *__restrict__ q, const T *__restrict__ k,
                         const T *__restrict__ v, const unsigned *__restrict__ qseg,
                         const unsigned *__restrict__ kseg, T *__restrict__ out, int heads, int n,
                         int m, int dh, float scale) {
    // +8 elements per row: rows then start 4 banks apart, so the fragment
    // loads below hit 32 different banks
    constexpr int STRIDE = DP + 8;
    __shared__ __align__(16) T ks[MMA_BK * STRIDE];
    __shared__ __align__(16) T vs[MMA_BK * STRIDE];
    __shared__ unsigned ksg[MMA_BK];

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane >> 2, t = lane & 3;  // the mma's groupID and threadID_in_group
    const int bh = blockIdx.y, b = bh / heads;
    const T *qb = q + (size_t)bh * n * dh;
    const T *kb = k + (size_t)bh * m * dh;
    const T *vb = v + (size_t)bh * m * dh;
    T *ob = out + (size_t)bh * n * dh;
    const float scale_log2 = scale * 1.4426950408889634f;  // softmax through exp2

    // this thread's two query rows; rows past the end see nothing
    const int r0 = blockIdx.x * MMA_BQ + warp * 16 + g, r1 = r0 + 8;
    const unsigned seg0 = r0 < n ? (qseg ? qseg[(size_t)b * n + r0] : 1u) : 0u;
    const unsigned seg1 = r1 < n ? (qseg ? qseg[(size_t)b * n + r1] : 1u) : 0u;

    // Q as A fragments, one per 16 columns of the head dimension
    unsigned qf[DP / 16][4];
#pragma unroll
    for (int kc = 0; kc < DP / 16; ++kc) {
        const int col = kc * 16 + 2 * t;
        qf[kc][0] = load_pair(qb, r0, col, n, dh);
        qf[kc][1] = load_pair(qb, r1, col, n, dh);
        qf[kc][2] = load_pair(qb, r0, col + 8, n, dh);
        qf[kc][3] = load_pair(qb, r1, col + 8, n, dh);
    }

    float o[DP / 8][4];
#pragma unroll
    for (int dc = 0; dc < DP / 8; ++dc) {
        o[dc][0] = o[dc][1] = o[dc][2] = o[dc][3] = 0.f;
    }
    float mx0 = -INFINITY, mx1 = -INFINITY;  // running row maxima (log2 units)
    float l0 = 0.f, l1 = 0.f;                // running row sums

    for (int j0 = 0; j0 < m; j0 += MMA_BK) {
        __syncthreads();  // every warp is done with the previous tile
        for (int e = threadIdx.x; e < MMA_BK * (DP / 2); e += blockDim.x) {
            const int r = e / (DP / 2), col = 2 * (e % (DP / 2));
            // zeros past the last key and the head dimension: a masked
            // probability is 0, and 0 times garbage could be NaN
            *reinterpret_cast<unsigned *>(ks + r * STRIDE + col) = load_pair(kb, j0 + r, col, m, dh);
            *reinterpret_cast<unsigned *>(vs + r * STRIDE + col) = load_pair(vb, j0 + r, col, m, dh);
        }
        if (threadIdx.x < MMA_BK) {
            const int j = j0 + threadIdx.x;
            ksg[threadIdx.x] = j < m ? (kseg ? kseg[(size_t)b * m + j] : 1u) : 0u;
        }
        __syncthreads();

        // S = Q K^T for 16 rows x 64 keys: s[nc] covers keys nc*8 .. nc*8+7;
        // s[nc][0..2] are row g, keys nc*8 + 2t + {0, 1}; s[nc][2..4] row g + 8
        float s[MMA_BK / 8][4];
#pragma unroll
        for (int nc = 0; nc < MMA_BK / 8; ++nc) {
            s[nc][0] = s[nc][1] = s[nc][2] = s[nc][3] = 0.f;
            const T *krow = ks + (nc * 8 + g) * STRIDE + 2 * t;
#pragma unroll
            for (int kc = 0; kc < DP / 16; ++kc) {
                const unsigned b0 = *reinterpret_cast<const unsigned *>(krow + kc * 16);
                const unsigned b1 = *reinterpret_cast<const unsigned *>(krow + kc * 16 + 8);
                mma16816<T>(s[nc], qf[kc], b0, b1);
            }
        }

        // mask, scale, and the tile's row maxima
        float tmax0 = -INFINITY, tmax1 = -INFINITY;
#pragma unroll
        for (int nc = 0; nc < MMA_BK / 8; ++nc) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const unsigned ksv = ksg[nc * 8 + 2 * t + e];
                s[nc][e] = (ksv != 0u && ksv == seg0) ? s[nc][e] * scale_log2 : -INFINITY;
                s[nc][2 + e] = (ksv != 0u && ksv == seg1) ? s[nc][2 + e] * scale_log2 : -INFINITY;
                tmax0 = fmaxf(tmax0, s[nc][e]);
                tmax1 = fmaxf(tmax1, s[nc][2 + e]);
            }
        }
        // a row is spread over the 4 lanes of its group (lanes differing in bits 0, 1)
        tmax0 = fmaxf(tmax0, __shfl_xor_sync(0xffffffffu, tmax0, 1));
        tmax0 = fmaxf(tmax0, __shfl_xor_sync(0xffffffffu, tmax0, 2));
        tmax1 = fmaxf(tmax1, __shfl_xor_sync(0xffffffffu, tmax1, 1));
        tmax1 = fmaxf(tmax1, __shfl_xor_sync(0xffffffffu, tmax1, 2));
        const float new0 = fmaxf(mx0, tmax0), new1 = fmaxf(mx1, tmax1);
        // a row that has seen nothing yet keeps -inf; subtract 0 there
        // instead, so that -inf - -inf never makes a NaN
        const float base0 = new0 == -INFINITY ? 0.f : new0;
        const float base1 = new1 == -INFINITY ? 0.f : new1;
        const float alpha0 = exp2f(mx0 - base0), alpha1 = exp2f(mx1 - base1);
        float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
        for (int nc = 0; nc < MMA_BK / 8; ++nc) {
            s[nc][0] = exp2f(s[nc][0] - base0);
            s[nc][1] = exp2f(s[nc][1] - base0);
            s[nc][2] = exp2f(s[nc][2] - base1);
            s[nc][3] = exp2f(s[nc][3] - base1);
            sum0 += s[nc][0] + s[nc][1];
            sum1 += s[nc][2] + s[nc][3];
        }
        sum0 += __shfl_xor_sync(0xffffffffu, sum0, 1);
        sum0 += __shfl_xor_sync(0xffffffffu, sum0, 2);
        sum1 += __shfl_xor_sync(0xffffffffu, sum1, 1);
        sum1 += __shfl_xor_sync(0xffffffffu, sum1, 2);
        l0 = l0 * alpha0 + sum0;
        l1 = l1 * alpha1 + sum1;
        mx0 = new0;
        mx1 = new1;
#pragma unroll
        for (int dc = 0; dc < DP / 8; ++dc) {
            o[dc][0] *= alpha0;
            o[dc][1] *= alpha0;
            o[dc][2] *= alpha1;
            o[dc][3] *= alpha1;
        }

        // O += P V, 16 keys at a time. P's accumulator layout is the A
        // operand's: keys kc*16 + 2t + {0,1} are s[2kc][0..2] (row g) and
        // s[2kc][2..4] (row g + 8); keys + 8 are s[2kc + 1]
#pragma unroll
        for (int kc = 0; kc < MMA_BK / 16; ++kc) {
            unsigned a[4];
            a[0] = pack2<T>(s[2 * kc][0], s[2 * kc][1]);
            a[1] = pack2<T>(s[2 * kc][2], s[2 * kc][3]);
            a[2] = pack2<T>(s[2 * kc + 1][0], s[2 * kc + 1][1]);
            a[3] = pack2<T>(s[2 * kc + 1][2], s[2 * kc + 1][3]);
            const T *vrow = vs + (kc * 16 + 2 * t) * STRIDE + g;
#pragma unroll
            for (int dc = 0; dc < DP / 8; ++dc) {
                // B = V (keys x dims): b0, b1 are keys 2t, 2t + 1 at dim
                // dc*8 + g; b2, b3 the same 8 keys further on
                const T *vc = vrow + dc * 8;
                const unsigned b0 = pack2_raw<T>(vc[0], vc[STRIDE]);
                const unsigned b1 = pack2_raw<T>(vc[8 * STRIDE], vc[9 * STRIDE]);
                mma16816<T>(o[dc], a, b0, b1);
            }
        }
    }

    // normalise and write rows g and g + 8, dims dc*8 + 2t + {0, 1}
    const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f;
    const float inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
#pragma unroll
    for (int dc = 0; dc < DP / 8; ++dc) {
        const int col = dc * 8 + 2 * t;
        if (col < dh) {
            if (r0 < n) {
                *reinterpret_cast<unsigned *>(ob + (size_t)r0 * dh + col) =
                    pack2<T>(o[dc][0] * inv0, o[dc][1] * inv0);
            }
            if (r1 < n) {
                *reinterpret_cast<unsigned *>(ob + (size_t)r1 * dh + col) =
                    pack2<T>(o[dc][2] * inv1, o[dc][3] * inv1);
            }
        }
    }
}

#define ATTN_MMA(NAME, T, DP)                                                                  \
    extern "C" __global__ void __launch_bounds__(128)                                          \
        NAME(const T *q, const T *k, const T *v, const unsigned *qseg, const unsigned *kseg,   \
             T *out, int heads, int n, int m, int dh, float scale) {                           \
        attn_mma<T, DP>(q, k, v, qseg, kseg, out, heads, n, m, dh, scale);                     \
    }

#define ATTN_MMA_ALL(TNAME, T)                                                                 \
    ATTN_MMA(attn_mma_##TNAME##_d16, T, 16)                                                    \
    ATTN_MMA(attn_mma_##TNAME##_d32, T, 32)                                                    \
    ATTN_MMA(attn_mma_##TNAME##_d48, T, 48)                                                    \
    ATTN_MMA(attn_mma_##TNAME##_d64, T, 64)                                                    \
    ATTN_MMA(attn_mma_##TNAME##_d80, T, 80)                                                    \
    ATTN_MMA(attn_mma_##TNAME##_d96, T, 96)                                                    \
    ATTN_MMA(attn_mma_##TNAME##_d112, T, 112)                                                  \
    ATTN_MMA(attn_mma_##TNAME##_d128, T, 128)

ATTN_MMA_ALL(bf16, __nv_bfloat16)
ATTN_MMA_ALL(f16, __half)

// ---------------------------------------------------------------------------
// the pipelined tensor-core kernel
//
// `attn_mma`'s online softmax with FlashAttention-2's data movement:
// - K and V tiles are copied in 16-byte pieces by `cp.async` (no trip
//   through registers), into one of two shared buffers while the warps
//   compute on the other (STAGES = 2; one buffer where two would pass the
//   48 KB of static shared memory, head dims over 80);
// - fragments are read with `ldmatrix`: K as it is (the B operand of
//   Q K^T is K's rows), V transposed (`.trans`: the B operand of P V takes
//   two keys of one dimension), one instruction for four 8x8 matrices
//   instead of `attn_mma`'s four 32-bit (K) or eight 16-bit (V) loads;
// - MT tiles of 16 query rows per warp, so that every K and V fragment read
//   from shared memory feeds MT products.
// Needs dh % 8 == 0 and k, v starting on 16 bytes (whole 16-byte pieces
// per row); the Rust side checks and otherwise runs `attn_mma`.

__device__ __forceinline__ unsigned smem_u32(const void *p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// 16 bytes from global to shared memory, or 16 zero bytes when !valid
// (src-size 0: nothing is read, so `src` only has to be a global address)
__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)),
                 "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// waits until at most N of this thread's copy groups are still in flight
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Four 8x8 b16 matrices; lanes 8i .. 8i+7 give the row addresses of matrix
// i, and r[i] is this lane's part of it: row lane/4, columns 2(lane%4) and
// 2(lane%4) + 1; with .trans, rows 2(lane%4) and 2(lane%4) + 1 of column
// lane/4 (PTX ISA, "Warp-level matrix load instruction: ldmatrix").
__device__ __forceinline__ void ldmatrix_x4(unsigned r[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned r[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

template <typename T, int DP, int MT, int STAGES>
__device__ void attn_mma2(const T *__restrict__ q, const T *__restrict__ k,
                          const T *__restrict__ v, const unsigned *__restrict__ qseg,
                          const unsigned *__restrict__ kseg, T *__restrict__ out, int heads, int n,
                          int m, int dh, float scale) {
    constexpr int BQ = 64 * MT;  // query rows per block: 4 warps x MT x 16
    constexpr int BK = 64;       // keys per tile
    constexpr int STRIDE = DP + 8;  // rows 16 bytes apart mod 128: ldmatrix without bank conflicts
    constexpr int CHUNKS = DP / 8;  // 16-byte pieces per row
    __shared__ __align__(16) T ks[STAGES][BK * STRIDE];
    __shared__ __align__(16) T vs[STAGES][BK * STRIDE];
    __shared__ unsigned ksg[STAGES][BK];

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane >> 2, t = lane & 3;
    const int mi = lane >> 3, mr = lane & 7;  // ldmatrix: which matrix, which row this lane addresses
    const int bh = blockIdx.y, b = bh / heads;
    const T *qb = q + (size_t)bh * n * dh;
    const T *kb = k + (size_t)bh * m * dh;
    const T *vb = v + (size_t)bh * m * dh;
    T *ob = out + (size_t)bh * n * dh;
    const float scale_log2 = scale * 1.4426950408889634f;

    int rows[MT][2];
    unsigned seg[MT][2];
    unsigned qf[MT][DP / 16][4];
    float o[MT][DP / 8][4];
    float mx[MT][2], l[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        rows[mt][0] = blockIdx.x * BQ + (warp * MT + mt) * 16 + g;
        rows[mt][1] = rows[mt][0] + 8;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = rows[mt][h];
            seg[mt][h] = r < n ? (qseg ? qseg[(size_t)b * n + r] : 1u) : 0u;
            mx[mt][h] = -INFINITY;
            l[mt][h] = 0.f;
        }
#pragma unroll
        for (int kc = 0; kc < DP / 16; ++kc) {
            const int col = kc * 16 + 2 * t;
            qf[mt][kc][0] = load_pair(qb, rows[mt][0], col, n, dh);
            qf[mt][kc][1] = load_pair(qb, rows[mt][1], col, n, dh);
            qf[mt][kc][2] = load_pair(qb, rows[mt][0], col + 8, n, dh);
            qf[mt][kc][3] = load_pair(qb, rows[mt][1], col + 8, n, dh);
        }
#pragma unroll
        for (int dc = 0; dc < DP / 8; ++dc) {
            o[mt][dc][0] = o[mt][dc][1] = o[mt][dc][2] = o[mt][dc][3] = 0.f;
        }
    }

    // tile j0's keys into buffer `stage`: zeros past the last key and the
    // head dimension (a masked probability is 0, and 0 times garbage could
    // be NaN)
    auto load = [&](int stage, int j0) {
        for (int e = threadIdx.x; e < BK * CHUNKS; e += blockDim.x) {
            const int r = e / CHUNKS, col = 8 * (e % CHUNKS);
            const bool ok = j0 + r < m && col < dh;
            const size_t at = ok ? (size_t)(j0 + r) * dh + col : 0;
            cp_async16(&ks[stage][r * STRIDE + col], kb + at, ok);
            cp_async16(&vs[stage][r * STRIDE + col], vb + at, ok);
        }
        if (threadIdx.x < BK) {
            const int j = j0 + threadIdx.x;
            ksg[stage][threadIdx.x] = j < m ? (kseg ? kseg[(size_t)b * m + j] : 1u) : 0u;
        }
        cp_async_commit();
    };

    const int tiles = (m + BK - 1) / BK;
    load(0, 0);
    for (int it = 0; it < tiles; ++it) {
        const int st = STAGES == 2 ? (it & 1) : 0;
        if (STAGES == 2 && it + 1 < tiles) {
            // the other buffer was last read in iteration it - 1, which
            // ended with a barrier
            load((it + 1) & 1, (it + 1) * BK);
            cp_async_wait<1>();
        } else {
            if (STAGES == 1 && it > 0) {
                load(0, it * BK);
            }
            cp_async_wait<0>();
        }
        __syncthreads();
        const T *kt = ks[st];
        const T *vt = vs[st];

        // S = Q K^T, 16 x 64 per query tile: s[mt][nc] covers keys nc*8 .. nc*8+7
        float s[MT][BK / 8][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
            for (int nc = 0; nc < BK / 8; ++nc) {
                s[mt][nc][0] = s[mt][nc][1] = s[mt][nc][2] = s[mt][nc][3] = 0.f;
            }
        }
#pragma unroll
        for (int nc = 0; nc < BK / 8; nc += 2) {
#pragma unroll
            for (int kc = 0; kc < DP / 16; ++kc) {
                // matrices: keys nc*8.. and (nc+1)*8.. by dims kc*16 and kc*16 + 8
                // = b0, b1 of key block nc, then of nc + 1
                unsigned kf[4];
                ldmatrix_x4(kf, kt + (nc * 8 + (mi >> 1) * 8 + mr) * STRIDE + kc * 16 + (mi & 1) * 8);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma16816<T>(s[mt][nc], qf[mt][kc], kf[0], kf[1]);
                    mma16816<T>(s[mt][nc + 1], qf[mt][kc], kf[2], kf[3]);
                }
            }
        }

        // the online softmax, as in attn_mma. A whole tile without a mask
        // (the DiT's self-attention, every tile but a partial last one)
        // skips the mask, and takes the row maxima of the raw scores (the
        // scale is positive) so that scaling and subtracting the maximum is
        // one fused multiply-add inside exp2
        const bool plain = qseg == nullptr && kseg == nullptr && (it + 1) * BK <= m;
        const float sc = plain ? scale_log2 : 1.f;  // what the exponent still scales by
        const unsigned *sg = ksg[st];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            float tmax0 = -INFINITY, tmax1 = -INFINITY;
            if (plain) {
#pragma unroll
                for (int nc = 0; nc < BK / 8; ++nc) {
                    tmax0 = fmaxf(tmax0, fmaxf(s[mt][nc][0], s[mt][nc][1]));
                    tmax1 = fmaxf(tmax1, fmaxf(s[mt][nc][2], s[mt][nc][3]));
                }
                tmax0 *= scale_log2;
                tmax1 *= scale_log2;
            } else {
#pragma unroll
                for (int nc = 0; nc < BK / 8; ++nc) {
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        const unsigned ksv = sg[nc * 8 + 2 * t + e];
                        s[mt][nc][e] =
                            (ksv != 0u && ksv == seg[mt][0]) ? s[mt][nc][e] * scale_log2 : -INFINITY;
                        s[mt][nc][2 + e] =
                            (ksv != 0u && ksv == seg[mt][1]) ? s[mt][nc][2 + e] * scale_log2 : -INFINITY;
                        tmax0 = fmaxf(tmax0, s[mt][nc][e]);
                        tmax1 = fmaxf(tmax1, s[mt][nc][2 + e]);
                    }
                }
            }
            tmax0 = fmaxf(tmax0, __shfl_xor_sync(0xffffffffu, tmax0, 1));
            tmax0 = fmaxf(tmax0, __shfl_xor_sync(0xffffffffu, tmax0, 2));
            tmax1 = fmaxf(tmax1, __shfl_xor_sync(0xffffffffu, tmax1, 1));
            tmax1 = fmaxf(tmax1, __shfl_xor_sync(0xffffffffu, tmax1, 2));
            const float new0 = fmaxf(mx[mt][0], tmax0), new1 = fmaxf(mx[mt][1], tmax1);
            const float base0 = new0 == -INFINITY ? 0.f : new0;
            const float base1 = new1 == -INFINITY ? 0.f : new1;
            const float alpha0 = exp2f(mx[mt][0] - base0), alpha1 = exp2f(mx[mt][1] - base1);
            float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
            for (int nc = 0; nc < BK / 8; ++nc) {
                s[mt][nc][0] = exp2f(fmaf(s[mt][nc][0], sc, -base0));
                s[mt][nc][1] = exp2f(fmaf(s[mt][nc][1], sc, -base0));
                s[mt][nc][2] = exp2f(fmaf(s[mt][nc][2], sc, -base1));
                s[mt][nc][3] = exp2f(fmaf(s[mt][nc][3], sc, -base1));
                sum0 += s[mt][nc][0] + s[mt][nc][1];
                sum1 += s[mt][nc][2] + s[mt][nc][3];
            }
            sum0 += __shfl_xor_sync(0xffffffffu, sum0, 1);
            sum0 += __shfl_xor_sync(0xffffffffu, sum0, 2);
            sum1 += __shfl_xor_sync(0xffffffffu, sum1, 1);
            sum1 += __shfl_xor_sync(0xffffffffu, sum1, 2);
            l[mt][0] = l[mt][0] * alpha0 + sum0;
            l[mt][1] = l[mt][1] * alpha1 + sum1;
            mx[mt][0] = new0;
            mx[mt][1] = new1;
#pragma unroll
            for (int dc = 0; dc < DP / 8; ++dc) {
                o[mt][dc][0] *= alpha0;
                o[mt][dc][1] *= alpha0;
                o[mt][dc][2] *= alpha1;
                o[mt][dc][3] *= alpha1;
            }
        }

        // O += P V, 16 keys at a time; P's accumulators are the A operand
#pragma unroll
        for (int kc = 0; kc < BK / 16; ++kc) {
            unsigned a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                a[mt][0] = pack2<T>(s[mt][2 * kc][0], s[mt][2 * kc][1]);
                a[mt][1] = pack2<T>(s[mt][2 * kc][2], s[mt][2 * kc][3]);
                a[mt][2] = pack2<T>(s[mt][2 * kc + 1][0], s[mt][2 * kc + 1][1]);
                a[mt][3] = pack2<T>(s[mt][2 * kc + 1][2], s[mt][2 * kc + 1][3]);
            }
#pragma unroll
            for (int dc = 0; dc < DP / 8; dc += 2) {
                // matrices: keys kc*16.. and kc*16+8.. by dims dc*8 and dc*8 + 8,
                // transposed = b0, b1 of dims dc, then of dc + 1
                unsigned vf[4];
                ldmatrix_x4_trans(vf, vt + (kc * 16 + (mi & 1) * 8 + mr) * STRIDE + dc * 8 + (mi >> 1) * 8);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma16816<T>(o[mt][dc], a[mt], vf[0], vf[1]);
                    mma16816<T>(o[mt][dc + 1], a[mt], vf[2], vf[3]);
                }
            }
        }
        __syncthreads();  // every warp is done with buffer st before it is refilled
    }

#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        const float inv0 = l[mt][0] > 0.f ? 1.f / l[mt][0] : 0.f;
        const float inv1 = l[mt][1] > 0.f ? 1.f / l[mt][1] : 0.f;
#pragma unroll
        for (int dc = 0; dc < DP / 8; ++dc) {
            const int col = dc * 8 + 2 * t;
            if (col < dh) {
                if (rows[mt][0] < n) {
                    *reinterpret_cast<unsigned *>(ob + (size_t)rows[mt][0] * dh + col) =
                        pack2<T>(o[mt][dc][0] * inv0, o[mt][dc][1] * inv0);
                }
                if (rows[mt][1] < n) {
                    *reinterpret_cast<unsigned *>(ob + (size_t)rows[mt][1] * dh + col) =
                        pack2<T>(o[mt][dc][2] * inv1, o[mt][dc][3] * inv1);
                }
            }
        }
    }
}

// MT = 2 query tiles per warp up to head dim 80 (128 rows a block), 1 above
// (the accumulators would spill); two buffers while they fit 48 KB
#define ATTN_MMA2(NAME, T, DP)                                                                 \
    extern "C" __global__ void __launch_bounds__(128)                                          \
        NAME(const T *q, const T *k, const T *v, const unsigned *qseg, const unsigned *kseg,   \
             T *out, int heads, int n, int m, int dh, float scale) {                           \
        attn_mma2<T, DP, (DP <= 80 ? 2 : 1), (DP <= 80 ? 2 : 1)>(q, k, v, qseg, kseg, out,     \
                                                                 heads, n, m, dh, scale);      \
    }

#define ATTN_MMA2_ALL(TNAME, T)                                                                \
    ATTN_MMA2(attn_mma2_##TNAME##_d16, T, 16)                                                  \
    ATTN_MMA2(attn_mma2_##TNAME##_d32, T, 32)                                                  \
    ATTN_MMA2(attn_mma2_##TNAME##_d48, T, 48)                                                  \
    ATTN_MMA2(attn_mma2_##TNAME##_d64, T, 64)                                                  \
    ATTN_MMA2(attn_mma2_##TNAME##_d80, T, 80)                                                  \
    ATTN_MMA2(attn_mma2_##TNAME##_d96, T, 96)                                                  \
    ATTN_MMA2(attn_mma2_##TNAME##_d112, T, 112)                                                \
    ATTN_MMA2(attn_mma2_##TNAME##_d128, T, 128)

ATTN_MMA2_ALL(bf16, __nv_bfloat16)
ATTN_MMA2_ALL(f16, __half)

// ---------------------------------------------------------------------------
// the CUDA-core kernel

constexpr int SCALAR_BQ = 32;   // queries per block: 128 threads, 4 per query
constexpr int SCALAR_BK = 32;   // keys per shared-memory tile
constexpr int SCALAR_DMAX = 128;

// DPL: head dims per thread (a quarter of the head, rounded up): thread
// `sub` of a query holds dims sub, sub + 4, sub + 8, ...
template <typename T, int DPL>
__device__ void attn_scalar(const T *__restrict__ q, const T *__restrict__ k,
                            const T *__restrict__ v, const unsigned *__restrict__ qseg,
                            const unsigned *__restrict__ kseg, T *__restrict__ out, int heads,
                            int n, int m, int dh, float scale) {
    __shared__ float ks[SCALAR_BK][SCALAR_DMAX];
    __shared__ float vs[SCALAR_BK][SCALAR_DMAX];
    __shared__ unsigned ksg[SCALAR_BK];

    const int bh = blockIdx.y, b = bh / heads;
    const int qi = blockIdx.x * SCALAR_BQ + threadIdx.x / 4;
    const int sub = threadIdx.x % 4;
    const T *qb = q + (size_t)bh * n * dh;
    const T *kb = k + (size_t)bh * m * dh;
    const T *vb = v + (size_t)bh * m * dh;
    const bool row_ok = qi < n;
    const unsigned seg = row_ok ? (qseg ? qseg[(size_t)b * n + qi] : 1u) : 0u;

    float qr[DPL], acc[DPL];
#pragma unroll
    for (int i = 0; i < DPL; ++i) {
        const int d = sub + 4 * i;
        qr[i] = (row_ok && d < dh) ? to_float(qb[(size_t)qi * dh + d]) * scale : 0.f;
        acc[i] = 0.f;
    }
    float mx = -INFINITY, l = 0.f;
    // columns past dh are read (times q = 0) but never loaded: zero them
    // once, since 0 times whatever shared memory held could be NaN
    for (int e = threadIdx.x; e < SCALAR_BK * SCALAR_DMAX; e += blockDim.x) {
        ks[e / SCALAR_DMAX][e % SCALAR_DMAX] = 0.f;
        vs[e / SCALAR_DMAX][e % SCALAR_DMAX] = 0.f;
    }

    for (int j0 = 0; j0 < m; j0 += SCALAR_BK) {
        __syncthreads();
        for (int e = threadIdx.x; e < SCALAR_BK * dh; e += blockDim.x) {
            const int r = e / dh, c = e % dh, j = j0 + r;
            ks[r][c] = j < m ? to_float(kb[(size_t)j * dh + c]) : 0.f;
            vs[r][c] = j < m ? to_float(vb[(size_t)j * dh + c]) : 0.f;
        }
        if (threadIdx.x < SCALAR_BK) {
            const int j = j0 + threadIdx.x;
            ksg[threadIdx.x] = j < m ? (kseg ? kseg[(size_t)b * m + j] : 1u) : 0u;
        }
        __syncthreads();

        float s[SCALAR_BK];
        float tmax = -INFINITY;
#pragma unroll
        for (int r = 0; r < SCALAR_BK; ++r) {
            float part = 0.f;
#pragma unroll
            for (int i = 0; i < DPL; ++i) {
                const int d = sub + 4 * i;
                // d < SCALAR_DMAX always; dims past dh hold q = 0
                part += qr[i] * ks[r][d];
            }
            // every lane runs the shuffles (no early exit above), as they need
            part += __shfl_xor_sync(0xffffffffu, part, 1);
            part += __shfl_xor_sync(0xffffffffu, part, 2);
            const unsigned ksv = ksg[r];
            s[r] = (ksv != 0u && ksv == seg) ? part : -INFINITY;
            tmax = fmaxf(tmax, s[r]);
        }
        if (tmax == -INFINITY) {
            continue;  // nothing visible in this tile (the loop's sync is at its top)
        }
        const float mnew = fmaxf(mx, tmax);
        const float alpha = expf(mx - mnew);  // mx = -inf: 0, and acc, l are 0 anyway
        l *= alpha;
#pragma unroll
        for (int i = 0; i < DPL; ++i) {
            acc[i] *= alpha;
        }
#pragma unroll
        for (int r = 0; r < SCALAR_BK; ++r) {
            const float p = expf(s[r] - mnew);
            l += p;
#pragma unroll
            for (int i = 0; i < DPL; ++i) {
                acc[i] += p * vs[r][sub + 4 * i];
            }
        }
        mx = mnew;
    }

    if (row_ok) {
        const float inv = l > 0.f ? 1.f / l : 0.f;
        T *orow = out + (size_t)bh * n * dh + (size_t)qi * dh;
#pragma unroll
        for (int i = 0; i < DPL; ++i) {
            const int d = sub + 4 * i;
            if (d < dh) {
                orow[d] = from_float<T>(acc[i] * inv);
            }
        }
    }
}

#define ATTN_SCALAR(NAME, T, DPL)                                                              \
    extern "C" __global__ void __launch_bounds__(128)                                          \
        NAME(const T *q, const T *k, const T *v, const unsigned *qseg, const unsigned *kseg,   \
             T *out, int heads, int n, int m, int dh, float scale) {                           \
        attn_scalar<T, DPL>(q, k, v, qseg, kseg, out, heads, n, m, dh, scale);                 \
    }

#define ATTN_SCALAR_ALL(TNAME, T)                                                              \
    ATTN_SCALAR(attn_scalar_##TNAME##_l8, T, 8)                                                \
    ATTN_SCALAR(attn_scalar_##TNAME##_l16, T, 16)                                              \
    ATTN_SCALAR(attn_scalar_##TNAME##_l32, T, 32)

ATTN_SCALAR_ALL(f32, float)
ATTN_SCALAR_ALL(bf16, __nv_bfloat16)
ATTN_SCALAR_ALL(f16, __half)
