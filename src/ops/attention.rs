//! Fused attention (FlashAttention, Dao et al. 2022; Dao 2023): softmax of
//! the scaled scores times the values, computed over blocks of keys with an
//! online softmax, so the `N x M` scores never exist as a tensor. That is
//! what lets a 32k-token clip run at all: its scores would be 2 x 16 x 32k x
//! 32k f32, 137 GB, per layer.
//!
//! The mask is per token, not `N x M` (which would cost as much as the
//! scores): optional segment ids, `(B, N)` for the queries and `(B, M)` for
//! the keys, u32. Query `i` sees key `j` iff `kseg[j] != 0` and `qseg[i] ==
//! kseg[j]`. Segment 0 is padding: no query sees a padding key, and a query
//! of segment 0 sees nothing, its output being 0 (never NaN). A key padding
//! mask is "1 for every query, 1 or 0 per key"; packed clips are "clip index
//! + 1 per token, 0 for padding" ([`crate::patch::Packed::segment_ids`]).
//!
//! [`flash_attention`] runs the CUDA kernel of `kernels/attention.cu` on a
//! GPU (f32, bf16, f16) and, on the CPU, the same algorithm in f32: that CPU
//! implementation is the reference the GPU kernel is checked against, not a
//! fast path (the DiT keeps candle's matrix multiplies on the CPU, see
//! `nn::attention`). [`flash_attention_reference`] is the textbook version
//! from candle's generic ops, materialised scores and all.
//!
//! The backward pass recomputes the probabilities with generic ops (the
//! `N x M` matrix is back for the backward only), so the op is correct under
//! autograd on every device; training long sequences on a GPU would want a
//! fused backward too.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor, D};

use super::gather::contiguous_f32;
use crate::{invalid, Result};

/// Which GPU kernel runs (ignored on the CPU; see `kernels/README.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKernel {
    /// The process default ([`set_default_attention_kernel`]; `Pipelined`
    /// unless set) for bf16 and f16, CUDA cores for f32.
    Auto,
    /// CUDA cores for every dtype (the f32-exact path; for parity checks).
    Scalar,
    /// Tensor cores (`mma.sync`), tiles copied through registers in 32-bit
    /// words: the first kernel, kept as the fallback of `Pipelined`.
    Mma,
    /// Tensor cores with `cp.async` double buffering and `ldmatrix`
    /// fragments, two query tiles a warp up to head dim 80; head dims that
    /// are not a multiple of 8, or k and v not starting on 16 bytes, run
    /// `Mma`.
    Pipelined,
}

impl AttentionKernel {
    /// Every kernel a parity check or benchmark compares.
    pub const ALL: [AttentionKernel; 3] = [Self::Scalar, Self::Mma, Self::Pipelined];

    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Scalar => "scalar",
            Self::Mma => "mma",
            Self::Pipelined => "pipelined",
        }
    }

    /// `Auto` made concrete: the process default.
    pub fn resolve(self) -> AttentionKernel {
        match self {
            Self::Auto => default_attention_kernel(),
            k => k,
        }
    }
}

static DEFAULT_KERNEL: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(3);

/// The kernel `AttentionKernel::Auto` runs for 16-bit types from now on
/// (`Auto` itself means `Pipelined`). `bench gpu-check` sets the fastest
/// kernel that passed its parity checks.
pub fn set_default_attention_kernel(kernel: AttentionKernel) {
    let code = match kernel {
        AttentionKernel::Scalar => 1,
        AttentionKernel::Mma => 2,
        AttentionKernel::Auto | AttentionKernel::Pipelined => 3,
    };
    DEFAULT_KERNEL.store(code, std::sync::atomic::Ordering::Relaxed);
}

/// What `AttentionKernel::Auto` runs for 16-bit types.
pub fn default_attention_kernel() -> AttentionKernel {
    match DEFAULT_KERNEL.load(std::sync::atomic::Ordering::Relaxed) {
        1 => AttentionKernel::Scalar,
        2 => AttentionKernel::Mma,
        _ => AttentionKernel::Pipelined,
    }
}

/// Softmax attention with scale `1 / sqrt(Dh)`, fused, with an optional
/// per-token segment mask (see the module docs).
///
/// # Shapes
/// - `q`: `(B, H, N, Dh)`; `k`, `v`: `(B, H, M, Dh)`
/// - `segments`: `(qseg (B, N), kseg (B, M))` u32, or `None` (all visible)
/// - returns `(B, H, N, Dh)`
pub fn flash_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    segments: Option<(&Tensor, &Tensor)>,
) -> Result<Tensor> {
    flash_attention_with(q, k, v, segments, AttentionKernel::Auto)
}

/// [`flash_attention`] with the GPU kernel chosen.
pub fn flash_attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    segments: Option<(&Tensor, &Tensor)>,
    kernel: AttentionKernel,
) -> Result<Tensor> {
    let (_, _, _, dh) = check_shapes(q, k, v, segments)?;
    if super::reference_only() {
        return flash_attention_reference(q, k, v, segments);
    }
    let op = FlashAttention {
        segments: match segments {
            Some((a, b)) => Some((a.contiguous()?, b.contiguous()?)),
            None => None,
        },
        scale: 1.0 / (dh as f32).sqrt(),
        kernel,
    };
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    if q.device().is_cpu() {
        if q.dtype() == DType::F32 {
            return Ok(q.apply_op3(&k, &v, op)?);
        }
        // the CPU implementation is f32 only: run it there, round once
        let f = |t: &Tensor| t.to_dtype(DType::F32);
        return Ok(f(&q)?
            .apply_op3(&f(&k)?, &f(&v)?, op)?
            .to_dtype(q.dtype())?);
    }
    if q.device().is_cuda() && super::cuda::attention_supported(dh) {
        // the tensor-core kernels read pairs of 16-bit values as one
        // 32-bit word: a view starting at an odd element gets a copy (the
        // pipelined kernel's 16-byte alignment is checked at its launch)
        let aligned = |t: Tensor| -> Result<Tensor> {
            Ok(if t.layout().start_offset() % 2 == 1 {
                t.copy()?
            } else {
                t
            })
        };
        let (q, k, v) = (aligned(q)?, aligned(k)?, aligned(v)?);
        return Ok(q.apply_op3(&k, &v, op)?);
    }
    // head sizes the kernels do not cover, a build without `cuda`, metal
    flash_attention_reference(&q, &k, &v, segments)
}

/// Checks the shapes; returns `(B, H, N, Dh)`.
fn check_shapes(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    segments: Option<(&Tensor, &Tensor)>,
) -> Result<(usize, usize, usize, usize)> {
    let (b, h, n, dh) = q.dims4()?;
    let (kb, kh, m, kd) = k.dims4()?;
    if (kb, kh, kd) != (b, h, dh) || v.dims() != k.dims() {
        invalid!(
            "flash_attention: q {:?}, k {:?}, v {:?}: want (B, H, N, Dh) and two of (B, H, M, Dh)",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if k.dtype() != q.dtype() || v.dtype() != q.dtype() {
        invalid!(
            "flash_attention: q, k, v are {:?}, {:?}, {:?}: want one dtype",
            q.dtype(),
            k.dtype(),
            v.dtype()
        );
    }
    if let Some((qs, ks)) = segments {
        if qs.dims() != [b, n] || ks.dims() != [b, m] {
            invalid!(
                "flash_attention: segment ids {:?} and {:?}, want [{b}, {n}] and [{b}, {m}]",
                qs.dims(),
                ks.dims()
            );
        }
        if qs.dtype() != DType::U32 || ks.dtype() != DType::U32 {
            invalid!(
                "flash_attention: segment ids must be u32, got {:?} and {:?}",
                qs.dtype(),
                ks.dtype()
            );
        }
        if !qs.device().same_device(q.device()) || !ks.device().same_device(q.device()) {
            invalid!("flash_attention: segment ids must be on the device of q, k, v");
        }
    }
    Ok((b, h, n, dh))
}

/// Which keys each query sees: `(B, 1, N, M)` f32, 1 or 0.
fn visible(qseg: &Tensor, kseg: &Tensor) -> Result<Tensor> {
    let same = qseg.unsqueeze(2)?.broadcast_eq(&kseg.unsqueeze(1)?)?; // (B, N, M)
    let real = kseg.ne(0u32)?.unsqueeze(1)?; // (B, 1, M)
    Ok(same
        .to_dtype(DType::F32)?
        .broadcast_mul(&real.to_dtype(DType::F32)?)?
        .unsqueeze(1)?)
}

/// Attention probabilities in f32 from generic ops: `(B, H, N, M)`, rows
/// that see nothing all zero.
fn probabilities(q: &Tensor, k: &Tensor, segments: Option<(&Tensor, &Tensor)>) -> Result<Tensor> {
    let dh = q.dim(D::Minus1)?;
    let scores = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (dh as f64).sqrt()))?;
    let Some((qs, ks)) = segments else {
        return Ok(candle_nn::ops::softmax(&scores, D::Minus1)?);
    };
    let seen = visible(qs, ks)?;
    // -1e9 (not -inf) keeps a row that sees nothing finite; the product
    // with `seen` then zeroes it, as the fused kernels do
    let bias = ((&seen - 1.0)? * 1e9)?;
    Ok(candle_nn::ops::softmax(&scores.broadcast_add(&bias)?, D::Minus1)?.broadcast_mul(&seen)?)
}

/// [`flash_attention`] from candle's generic ops, in f32 (the result in the
/// inputs' dtype): the scores materialised, masked, softmaxed.
pub fn flash_attention_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    segments: Option<(&Tensor, &Tensor)>,
) -> Result<Tensor> {
    check_shapes(q, k, v, segments)?;
    let f = |t: &Tensor| t.to_dtype(DType::F32);
    let p = probabilities(&f(q)?, &f(k)?, segments)?;
    Ok(p.matmul(&f(v)?.contiguous()?)?.to_dtype(q.dtype())?)
}

pub(super) struct FlashAttention {
    /// `(qseg (B, N), kseg (B, M))`, contiguous u32.
    pub(super) segments: Option<(Tensor, Tensor)>,
    pub(super) scale: f32,
    /// Read by the CUDA launch only.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(super) kernel: AttentionKernel,
}

impl CustomOp3 for FlashAttention {
    fn name(&self) -> &'static str {
        "flash-attention"
    }

    /// Blocks of query rows on candle's thread pool; per block and head,
    /// the scores `q k^T s` by one single-threaded GEMM, the mask, a
    /// vectorised softmax, then `P v` by another GEMM. The scores of a
    /// block (at most a few hundred rows by M) are the only `N x M` part
    /// held, so long sequences fit.
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let q = contiguous_f32(s1, l1, self.name())?;
        let k = contiguous_f32(s2, l2, self.name())?;
        let v = contiguous_f32(s3, l3, self.name())?;
        let (_, h, n, dh) = l1.shape().dims4()?;
        let m = l2.shape().dims4()?.2;
        let segments = match &self.segments {
            Some((qs, ks)) => Some((
                qs.flatten_all()?.to_vec1::<u32>()?,
                ks.flatten_all()?.to_vec1::<u32>()?,
            )),
            None => None,
        };
        let mut out = vec![0f32; q.len()];
        if out.is_empty() {
            return Ok((CpuStorage::F32(out), l1.shape().clone()));
        }
        // about 4 MFLOP of products a block: tens of microseconds, enough
        // to outweigh handing the block to a thread, and two blocks or more
        // (both cores busy) from a few hundred rows at the default preset
        let rows = (1usize << 20) / (m * dh).max(1);
        super::vmath::par_row_blocks(&mut out, dh, rows.clamp(8, 512), |offset, block| {
            let (first, rows) = (offset / dh, block.len() / dh);
            let mut scores = Vec::new();
            let mut r = first;
            // the block's rows, one head at a time
            while r < first + rows {
                let (bh, i0) = (r / n, r % n);
                let take = (n - i0).min(first + rows - r);
                let qp = &q[(bh * n + i0) * dh..][..take * dh];
                let kp = &k[bh * m * dh..][..m * dh];
                let vp = &v[bh * m * dh..][..m * dh];
                scores.clear();
                scores.resize(take * m, 0.0);
                // SAFETY: (take x dh) q rows (row stride dh), k read as the
                // (dh x m) k^T (row stride 1, column stride dh), into
                // (take x m) scores (row stride m): every index in bounds
                unsafe {
                    gemm::gemm(
                        take,
                        m,
                        dh,
                        scores.as_mut_ptr(),
                        1,
                        m as isize,
                        false,
                        qp.as_ptr(),
                        1,
                        dh as isize,
                        kp.as_ptr(),
                        dh as isize,
                        1,
                        0.0,
                        self.scale,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                if let Some((qs, ks)) = &segments {
                    let bi = bh / h;
                    for (ii, row) in scores.chunks_exact_mut(m).enumerate() {
                        let qseg = qs[bi * n + i0 + ii];
                        for (s, &kseg) in row.iter_mut().zip(&ks[bi * m..][..m]) {
                            if kseg == 0 || kseg != qseg {
                                *s = f32::NEG_INFINITY;
                            }
                        }
                    }
                }
                super::vmath::softmax_rows_inplace(&mut scores, m);
                let dst = &mut block[(r - first) * dh..][..take * dh];
                // SAFETY: (take x m) probabilities times (m x dh) v into
                // (take x dh) rows of the block, all row-major
                unsafe {
                    gemm::gemm(
                        take,
                        dh,
                        m,
                        dst.as_mut_ptr(),
                        1,
                        dh as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        m as isize,
                        vp.as_ptr(),
                        1,
                        dh as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                r += take;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::flash_attention_fwd(self, s1, l1, s2, l2, s3, l3)
    }

    /// Recomputes the probabilities `P` with generic ops, then `dV = P^T dO`,
    /// `dS = P * (dO V^T - rowsum(P * dO V^T))`, `dQ = dS K s`, `dK = dS^T Q s`.
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let segments = self.segments.as_ref().map(|(a, b)| (a, b));
        let (dq, dk, dv) = attention_backward(q, k, v, segments, grad, self.scale as f64)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// Gradients of attention with respect to `q`, `k`, `v`, in their dtype.
fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    segments: Option<(&Tensor, &Tensor)>,
    grad: &Tensor,
    scale: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dtype = q.dtype();
    // detached: the gradient needs no graph of its own
    let f = |t: &Tensor| t.detach().to_dtype(DType::F32);
    let (q, k, v, g) = (f(q)?, f(k)?, f(v)?, f(grad)?);
    let p = probabilities(&q, &k, segments)?; // (B, H, N, M)
    let dv = p.t()?.contiguous()?.matmul(&g)?; // (B, H, M, Dh)
    let dp = g.matmul(&v.t()?.contiguous()?)?; // (B, H, N, M)
    let row = (&dp * &p)?.sum_keepdim(D::Minus1)?; // (B, H, N, 1)
    let ds = (&p * dp.broadcast_sub(&row)?)?;
    let dq = (ds.matmul(&k)? * scale)?;
    let dk = (ds.t()?.contiguous()?.matmul(&q)? * scale)?;
    Ok((
        dq.to_dtype(dtype)?,
        dk.to_dtype(dtype)?,
        dv.to_dtype(dtype)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::{check, random, rel_diff};
    use candle_core::Device;

    fn segs(ids: &[u32], b: usize) -> Tensor {
        Tensor::from_vec(ids.to_vec(), (b, ids.len() / b), &Device::Cpu).unwrap()
    }

    #[test]
    fn fused_attention_matches_the_reference_unmasked() {
        // uneven lengths: N, M not multiples of the key block, M > one block,
        // and cross-attention shapes (N != M), head sizes odd and even
        for (i, &(b, h, n, m, dh)) in [
            (2, 3, 5, 7, 8),
            (1, 2, 70, 130, 16),
            (2, 1, 1, 1, 4),
            (1, 2, 33, 65, 72),
            (1, 1, 9, 200, 3),
        ]
        .iter()
        .enumerate()
        {
            let seed = 100 + 10 * i as u64;
            let inputs = [
                random(&[b, h, n, dh], seed, 1.5),
                random(&[b, h, m, dh], seed + 1, 1.5),
                random(&[b, h, m, dh], seed + 2, 1.0),
            ];
            check(
                &inputs,
                |t| flash_attention(&t[0], &t[1], &t[2], None).unwrap(),
                |t| flash_attention_reference(&t[0], &t[1], &t[2], None).unwrap(),
                2e-5,
                &format!("attention {b}x{h}x{n}x{m}x{dh}"),
            );
        }
    }

    /// Large enough for the CPU forward to split its rows into blocks on
    /// the thread pool, blocks that start and end inside heads (600 rows a
    /// head, 512 a block at head size 16), with and without segments.
    #[test]
    fn fused_attention_matches_the_reference_across_parallel_blocks() {
        let (b, h, n, m, dh) = (2, 3, 600, 530, 16);
        let qids: Vec<u32> = (0..b * n)
            .map(|k| match k % n {
                i if i < 250 => 1,
                i if i < 590 => 2,
                _ => 0,
            })
            .collect();
        let kids: Vec<u32> = (0..b * m)
            .map(|k| if k % m < 200 { 1 } else { 2 })
            .collect();
        let (qseg, kseg) = (segs(&qids, b), segs(&kids, b));
        let inputs = [
            random(&[b, h, n, dh], 4, 2.0),
            random(&[b, h, m, dh], 5, 2.0),
            random(&[b, h, m, dh], 6, 1.0),
        ];
        check(
            &inputs,
            |t| flash_attention(&t[0], &t[1], &t[2], None).unwrap(),
            |t| flash_attention_reference(&t[0], &t[1], &t[2], None).unwrap(),
            2e-5,
            "unmasked, parallel blocks",
        );
        check(
            &inputs,
            |t| flash_attention(&t[0], &t[1], &t[2], Some((&qseg, &kseg))).unwrap(),
            |t| flash_attention_reference(&t[0], &t[1], &t[2], Some((&qseg, &kseg))).unwrap(),
            2e-5,
            "segments, parallel blocks",
        );
    }

    #[test]
    fn fused_attention_matches_the_reference_with_segments() {
        // self-attention over three packed clips of uneven lengths (one a
        // single token), padding at the end, and a second batch row with
        // other boundaries; the padding queries must come out 0
        let (b, h, n, dh) = (2, 2, 75, 8);
        let mut ids = Vec::new();
        for row in 0..b {
            for i in 0..n {
                ids.push(match (row, i) {
                    (0, 0..=39) => 1,
                    (0, 40) => 2, // a single-token segment
                    (0, 41..=69) => 3,
                    (0, _) => 0,
                    (1, 0..=9) => 5,
                    (1, _) => 6,
                    _ => unreachable!(),
                });
            }
        }
        let seg = segs(&ids, b);
        let inputs = [
            random(&[b, h, n, dh], 1, 2.0),
            random(&[b, h, n, dh], 2, 2.0),
            random(&[b, h, n, dh], 3, 1.0),
        ];
        check(
            &inputs,
            |t| flash_attention(&t[0], &t[1], &t[2], Some((&seg, &seg))).unwrap(),
            |t| flash_attention_reference(&t[0], &t[1], &t[2], Some((&seg, &seg))).unwrap(),
            2e-5,
            "packed self-attention",
        );
        let out = flash_attention(&inputs[0], &inputs[1], &inputs[2], Some((&seg, &seg))).unwrap();
        let pad = out.narrow(2, 70, 5).unwrap().get(0).unwrap();
        let max: f32 = pad.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        assert_eq!(max, 0.0, "padding queries see nothing");
        // the single-token segment sees only itself: its output is its value
        let single = out.narrow(2, 40, 1).unwrap().get(0).unwrap();
        let own = inputs[2].narrow(2, 40, 1).unwrap().get(0).unwrap();
        assert!(rel_diff(&single, &own) < 1e-6);
    }

    #[test]
    fn fused_attention_matches_the_reference_with_key_padding() {
        // cross-attention to captions of 6, 3 and 1 words out of 6 slots
        let (b, h, n, m, dh) = (3, 2, 11, 6, 16);
        let keys: Vec<u32> = [6usize, 3, 1]
            .iter()
            .flat_map(|&len| (0..m).map(move |j| u32::from(j < len)))
            .collect();
        let kseg = segs(&keys, b);
        let qseg = Tensor::ones((b, n), DType::U32, &Device::Cpu).unwrap();
        let inputs = [
            random(&[b, h, n, dh], 4, 1.0),
            random(&[b, h, m, dh], 5, 1.0),
            random(&[b, h, m, dh], 6, 1.0),
        ];
        check(
            &inputs,
            |t| flash_attention(&t[0], &t[1], &t[2], Some((&qseg, &kseg))).unwrap(),
            |t| flash_attention_reference(&t[0], &t[1], &t[2], Some((&qseg, &kseg))).unwrap(),
            2e-5,
            "key padding",
        );
        // a caption of one word: every query gets that word's value
        let out =
            flash_attention(&inputs[0], &inputs[1], &inputs[2], Some((&qseg, &kseg))).unwrap();
        let got = out.get(2).unwrap();
        let want = inputs[2]
            .get(2)
            .unwrap()
            .narrow(1, 0, 1)
            .unwrap()
            .broadcast_as((h, n, dh))
            .unwrap();
        assert!(rel_diff(&got, &want) < 1e-6);
    }

    #[test]
    fn fused_attention_in_bf16_on_the_cpu_rounds_once() {
        let (b, h, n, dh) = (1, 2, 40, 32);
        let [q, k, v] = [1u64, 2, 3].map(|s| random(&[b, h, n, dh], 20 + s, 1.0));
        let want = flash_attention_reference(&q, &k, &v, None).unwrap();
        let bf = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
        let got = flash_attention(&bf(&q), &bf(&k), &bf(&v), None).unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        let diff = rel_diff(&got.to_dtype(DType::F32).unwrap(), &want);
        assert!(diff < 2e-2, "bf16 differs by {diff}");
    }

    #[test]
    fn segments_of_a_packed_sequence_mask_as_its_bias_does() {
        use crate::patch::{pack, patchify, PatchSize, Remainder};
        let p = PatchSize::new(1, 2, 2).unwrap();
        // 8, 1 and 3 tokens, then 4 of padding
        let clips: Vec<_> = [(2, 4, 4), (1, 2, 2), (1, 2, 6)]
            .iter()
            .enumerate()
            .map(|(i, &(t, h, w))| {
                patchify(
                    &random(&[1, 2, t, h, w], 70 + i as u64, 1.0),
                    p,
                    Remainder::Reject,
                )
                .unwrap()
            })
            .collect();
        let packed = pack(&clips, Some(16)).unwrap();
        let l = packed.len();
        let seg = packed.segment_ids(&Device::Cpu).unwrap();
        let [q, k, v] = [1u64, 2, 3].map(|s| random(&[1, 2, l, 8], 80 + s, 1.0));
        let fused = flash_attention(&q, &k, &v, Some((&seg, &seg))).unwrap();
        let bias = packed
            .attention_bias(DType::F32, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, l, l))
            .unwrap();
        let with_bias = crate::nn::attention(&q, &k, &v, Some(&bias)).unwrap();
        let real = 12;
        let diff = rel_diff(
            &fused.narrow(2, 0, real).unwrap(),
            &with_bias.narrow(2, 0, real).unwrap(),
        );
        assert!(diff < 1e-5, "packed: {diff}");
    }

    #[test]
    fn bad_shapes_and_segments_are_errors() {
        let q = random(&[1, 2, 4, 8], 1, 1.0);
        let k = random(&[1, 2, 5, 8], 2, 1.0);
        assert!(flash_attention(&q, &k, &q, None).is_err());
        assert!(flash_attention(&q, &random(&[1, 2, 5, 6], 3, 1.0), &k, None).is_err());
        let bad = Tensor::ones((1, 3), DType::U32, &Device::Cpu).unwrap();
        let good = Tensor::ones((1, 5), DType::U32, &Device::Cpu).unwrap();
        assert!(flash_attention(&q, &k, &k, Some((&bad, &good))).is_err());
        let float = Tensor::ones((1, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(flash_attention(&q, &k, &k, Some((&float, &good))).is_err());
    }
}
