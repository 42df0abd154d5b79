//! A linear layer `y = x W^T + b`, optionally followed by GELU (tanh
//! approximation), as one cuBLASLt call on a GPU with the bias and GELU in
//! the GEMM's epilogue: what PyTorch's `addmm` does, where candle's `Linear`
//! runs the product and then a separate broadcast add (measured on an H200
//! at XL's shapes: 2.4 ms for the bias of the qkv projection alone, beside
//! 1.0 ms for its GEMM).
//!
//! Off until a GPU run has checked and timed it ([`set_fused_linear`]; `bench
//! gpu-check` does both). Everywhere else, and whenever it is off,
//! [`linear`] is the reference: candle's matmul, broadcast add and GELU.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};

use super::gather::contiguous_f32;
use crate::{invalid, Result};

static FUSED: AtomicBool = AtomicBool::new(false);

/// Whether [`linear`] runs the fused cuBLASLt op on a GPU from now on.
pub fn set_fused_linear(on: bool) {
    FUSED.store(on, Ordering::Relaxed);
}

/// Whether [`linear`] runs the fused op on a GPU.
pub fn fused_linear() -> bool {
    FUSED.load(Ordering::Relaxed)
}

/// `x W^T + b`, then GELU if `gelu`: `x` `(rows, K)`, `w` `(N, K)`, `b`
/// `(N,)` -> `(rows, N)`. Fused on a GPU in bf16 or f16 when turned on.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor, gelu: bool) -> Result<Tensor> {
    let on_gpu = x.device().is_cuda() && super::cuda::COMPILED;
    if fused_linear() && on_gpu && matches!(x.dtype(), DType::BF16 | DType::F16) {
        return linear_fused(x, w, b, gelu);
    }
    linear_reference(x, w, b, gelu)
}

/// The fused op regardless of [`set_fused_linear`] (on the CPU, its f32
/// reference implementation): for parity checks and benchmarks.
pub fn linear_fused(x: &Tensor, w: &Tensor, b: &Tensor, gelu: bool) -> Result<Tensor> {
    check(x, w, b)?;
    let op = FusedLinear { gelu };
    if x.device().is_cpu() {
        // the reference implementation is f32: run it there, round once
        let f = |t: &Tensor| t.to_dtype(DType::F32);
        return Ok(f(x)?.apply_op3(&f(w)?, &f(b)?, op)?.to_dtype(x.dtype())?);
    }
    Ok(x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, op)?)
}

/// candle's matmul, broadcast add and GELU (minisora's fused GELU on the CPU).
pub fn linear_reference(x: &Tensor, w: &Tensor, b: &Tensor, gelu: bool) -> Result<Tensor> {
    check(x, w, b)?;
    let y = x.matmul(&w.t()?)?.broadcast_add(b)?;
    if gelu {
        super::gelu(&y)
    } else {
        Ok(y)
    }
}

fn check(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<()> {
    let (_, k) = x.dims2()?;
    let (n, kw) = w.dims2()?;
    if kw != k || b.dims1()? != n {
        invalid!(
            "linear: x {:?}, weight {:?} and bias {:?} do not fit (x (rows, K), weight (N, K), bias (N,))",
            x.dims(),
            w.dims(),
            b.dims()
        );
    }
    Ok(())
}

struct FusedLinear {
    gelu: bool,
}

impl CustomOp3 for FusedLinear {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    /// The reference, f32 only, row by row: dot products, bias, GELU.
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let w = contiguous_f32(s2, l2, self.name())?;
        let b = contiguous_f32(s3, l3, self.name())?;
        let (rows, k) = l1.shape().dims2()?;
        let n = l2.shape().dims2()?.0;
        let mut y = vec![0f32; rows * n];
        for (xr, yr) in x.chunks_exact(k.max(1)).zip(y.chunks_exact_mut(n.max(1))) {
            for ((yv, wr), bv) in yr.iter_mut().zip(w.chunks_exact(k.max(1))).zip(b.iter()) {
                let v = xr.iter().zip(wr).map(|(a, c)| a * c).sum::<f32>() + bv;
                *yv = if self.gelu {
                    v * super::vmath::half_one_plus_tanh(v)
                } else {
                    v
                };
            }
        }
        Ok((CpuStorage::F32(y), Shape::from((rows, n))))
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
        super::cuda::fused_linear_fwd(self.gelu, s1, l1, s2, l2, s3, l3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::{random, rel_diff};

    /// The op's CPU implementation (the GPU kernel's reference in `bench
    /// gpu-check`) against candle's matmul, add and GELU.
    #[test]
    fn the_fused_linear_matches_matmul_add_and_gelu() {
        let x = random(&[37, 24], 1, 1.0);
        let w = random(&[40, 24], 2, 0.3);
        let b = random(&[40], 3, 0.5);
        for gelu in [false, true] {
            let got = linear_fused(&x, &w, &b, gelu).unwrap();
            let want = linear_reference(&x, &w, &b, gelu).unwrap();
            assert_eq!(got.dims(), &[37, 40]);
            let diff = rel_diff(&got, &want);
            assert!(diff < 1e-5, "gelu {gelu}: off by {diff}");
        }
        assert!(linear_fused(&x, &w.narrow(1, 0, 20).unwrap(), &b, false).is_err());
    }
}
