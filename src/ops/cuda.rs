//! The GPU side of minisora's ops: the PTX that `build.rs` compiles from
//! `kernels/*.cu` (embedded, so the GPU machine needs only the driver) and
//! the launches behind the custom ops' `cuda_fwd`. Without the `cuda`
//! feature only the predicates below exist, and they say no.

use candle_core::{DType, Tensor};

/// Whether this build has the CUDA kernels (`--features cuda`).
pub const COMPILED: bool = cfg!(feature = "cuda");

/// Whether minisora's kernels take these inputs: a `cuda` build, every
/// input on a CUDA device in one float dtype, and no
/// `MINISORA_REFERENCE_OPS`.
pub(super) fn kernels_for(ts: &[&Tensor]) -> bool {
    let Some(first) = ts.first() else {
        return false;
    };
    COMPILED
        && !super::reference_only()
        && matches!(first.dtype(), DType::F32 | DType::BF16 | DType::F16)
        && ts
            .iter()
            .all(|t| t.device().is_cuda() && t.dtype() == first.dtype())
}

/// Head sizes the attention kernels cover: even (pairs are loaded as one
/// 32-bit word) and at most 128 (registers and shared memory are sized for it).
pub(super) fn attention_supported(head_dim: usize) -> bool {
    COMPILED && head_dim > 0 && head_dim % 2 == 0 && head_dim <= 128
}

#[cfg(feature = "cuda")]
pub(super) use imp::{flash_attention_fwd, fused_linear_fwd, norm_modulate_fwd, rope_fwd};

#[cfg(feature = "cuda")]
mod imp {
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
    };
    use candle_core::cuda_backend::{CudaStorageSlice, Map3, WrapErr};
    use candle_core::{bail, CudaDevice, CudaStorage, DType, Layout, Result, Shape, Storage};
    use candle_core::{WithDType, D};

    use super::super::attention::{AttentionKernel, FlashAttention};

    const NORM_MODULATE_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/norm_modulate.ptx"));
    const ROPE_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/rope.ptx"));
    const ATTENTION_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/attention.ptx"));

    fn contiguous<'a, T>(s: &'a CudaSlice<T>, l: &Layout, what: &str) -> Result<CudaView<'a, T>> {
        match l.contiguous_offsets() {
            Some((start, end)) => Ok(s.slice(start..end)),
            None => bail!("{what}: inputs must be contiguous"),
        }
    }

    /// Sizes passed to the kernels as `int`.
    fn int(v: usize, what: &str) -> Result<i32> {
        i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{what} = {v} is too large")))
    }

    fn kernel_suffix(dtype: DType, op: &str) -> Result<&'static str> {
        Ok(match dtype {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            other => bail!("{op}: no CUDA kernel for {other:?} (f32, bf16, f16)"),
        })
    }

    // -----------------------------------------------------------------------
    // LayerNorm + adaLN modulation

    struct NormModulate {
        eps: f32,
    }

    impl Map3 for NormModulate {
        fn f<T: DeviceRepr + WithDType + ValidAsZeroBits>(
            &self,
            x: &CudaSlice<T>,
            lx: &Layout,
            shift: &CudaSlice<T>,
            ls: &Layout,
            scale: &CudaSlice<T>,
            lc: &Layout,
            dev: &CudaDevice,
        ) -> Result<CudaSlice<T>> {
            const OP: &str = "norm-modulate";
            let (b, n, d) = lx.shape().dims3()?;
            let s = ls.shape().dims3()?.1;
            let name = format!("norm_modulate_{}", kernel_suffix(T::DTYPE, OP)?);
            let func =
                dev.get_or_load_custom_func(&name, "minisora_norm_modulate", NORM_MODULATE_PTX)?;
            let rows = b * n;
            // SAFETY: every element is written by the kernel below.
            let out = unsafe { dev.alloc::<T>(rows * d)? };
            if rows == 0 || d == 0 {
                return Ok(out);
            }
            let (x, shift, scale) = (
                contiguous(x, lx, OP)?,
                contiguous(shift, ls, OP)?,
                contiguous(scale, lc, OP)?,
            );
            // one warp per row, 8 rows per block
            const WARPS: usize = 8;
            let cfg = LaunchConfig {
                grid_dim: (int(rows.div_ceil(WARPS), "rows")? as u32, 1, 1),
                block_dim: (32 * WARPS as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            let (rows, n, s, d) = (int(rows, "rows")?, int(n, "N")?, int(s, "S")?, int(d, "D")?);
            let mut builder = func.builder();
            builder.arg(&x);
            builder.arg(&shift);
            builder.arg(&scale);
            builder.arg(&out);
            builder.arg(&rows);
            builder.arg(&n);
            builder.arg(&s);
            builder.arg(&d);
            builder.arg(&self.eps);
            // SAFETY: the argument list matches norm_modulate.cu's signature.
            unsafe { builder.launch(cfg) }.w()?;
            Ok(out)
        }
    }

    pub(crate) fn norm_modulate_fwd(
        eps: f32,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = &s1.device;
        let slice = NormModulate { eps }.map(&s1.slice, l1, &s2.slice, l2, &s3.slice, l3, dev)?;
        Ok((
            CudaStorage {
                slice,
                device: dev.clone(),
            },
            l1.shape().clone(),
        ))
    }

    // -----------------------------------------------------------------------
    // RoPE

    #[allow(clippy::too_many_arguments)]
    fn rope_launch<T: DeviceRepr>(
        dev: &CudaDevice,
        suffix: &str,
        x: &CudaSlice<T>,
        lx: &Layout,
        cos: &CudaView<f32>,
        sin: &CudaView<f32>,
        sign: f32,
    ) -> Result<CudaSlice<T>> {
        let (_, _, n, dh) = lx.shape().dims4()?;
        let el = lx.shape().elem_count();
        let func =
            dev.get_or_load_custom_func(&format!("rope_{suffix}"), "minisora_rope", ROPE_PTX)?;
        // SAFETY: every element is written by the kernel below.
        let out = unsafe { dev.alloc::<T>(el)? };
        if el == 0 {
            return Ok(out);
        }
        let x = contiguous(x, lx, "rope")?;
        let pairs = (el / 2) as u64;
        // grid-stride: a bounded grid covers any size
        let blocks = pairs.div_ceil(256).min(1 << 16) as u32;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let (n, half) = (int(n, "N")?, int(dh / 2, "Dh / 2")?);
        let mut builder = func.builder();
        builder.arg(&x);
        builder.arg(cos);
        builder.arg(sin);
        builder.arg(&out);
        builder.arg(&pairs);
        builder.arg(&n);
        builder.arg(&half);
        builder.arg(&sign);
        // SAFETY: the argument list matches rope.cu's signature.
        unsafe { builder.launch(cfg) }.w()?;
        Ok(out)
    }

    pub(crate) fn rope_fwd(
        inverse: bool,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = &s1.device;
        let (CudaStorageSlice::F32(cos), CudaStorageSlice::F32(sin)) = (&s2.slice, &s3.slice)
        else {
            bail!("rope: the cos and sin tables must be f32 on the GPU");
        };
        let (cos, sin) = (contiguous(cos, l2, "rope")?, contiguous(sin, l3, "rope")?);
        let sign = if inverse { -1.0f32 } else { 1.0 };
        let slice = match &s1.slice {
            CudaStorageSlice::F32(x) => {
                CudaStorageSlice::F32(rope_launch(dev, "f32", x, l1, &cos, &sin, sign)?)
            }
            CudaStorageSlice::BF16(x) => {
                CudaStorageSlice::BF16(rope_launch(dev, "bf16", x, l1, &cos, &sin, sign)?)
            }
            CudaStorageSlice::F16(x) => {
                CudaStorageSlice::F16(rope_launch(dev, "f16", x, l1, &cos, &sin, sign)?)
            }
            _ => bail!("rope: no CUDA kernel for this dtype (f32, bf16, f16)"),
        };
        Ok((
            CudaStorage {
                slice,
                device: dev.clone(),
            },
            l1.shape().clone(),
        ))
    }

    // -----------------------------------------------------------------------
    // fused attention

    fn u32_view<'a>(s: &'a Storage, l: &Layout) -> Result<CudaView<'a, u32>> {
        match s {
            Storage::Cuda(cs) => {
                contiguous(cs.as_cuda_slice::<u32>()?, l, "flash-attention segments")
            }
            _ => bail!("flash-attention: the segment ids must be on the GPU"),
        }
    }

    /// `[B, H, N, M, Dh]`.
    type Dims = [usize; 5];

    #[allow(clippy::too_many_arguments)]
    fn attention_launch<T: DeviceRepr>(
        dev: &CudaDevice,
        suffix: &str,
        (q, lq): (&CudaSlice<T>, &Layout),
        (k, lk): (&CudaSlice<T>, &Layout),
        (v, lv): (&CudaSlice<T>, &Layout),
        segments: Option<&(CudaView<u32>, CudaView<u32>)>,
        [b, h, n, m, dh]: Dims,
        scale: f32,
        kernel: AttentionKernel,
    ) -> Result<CudaSlice<T>> {
        const OP: &str = "flash-attention";
        // SAFETY: every element is written by the kernel below (rows that
        // see no key are written as zeros).
        let out = unsafe { dev.alloc::<T>(b * h * n * dh)? };
        if b * h * n * dh == 0 {
            return Ok(out);
        }
        if b * h > 65_535 {
            bail!("{OP}: batch x heads = {} is over the grid's 65535", b * h);
        }
        // tensor cores for 16-bit types; f32 (exact) and `Scalar` on CUDA
        // cores. The pipelined kernel copies 16-byte pieces of k and v rows:
        // whole pieces only (dh % 8 == 0), starting on 16 bytes (cudaMalloc
        // gives 256-byte aligned buffers; a view must start on a multiple
        // of 8 elements)
        let dp = dh.div_ceil(16) * 16;
        let pieces = dh % 8 == 0 && lk.start_offset() % 8 == 0 && lv.start_offset() % 8 == 0;
        let kernel = match kernel.resolve() {
            AttentionKernel::Pipelined if !pieces => AttentionKernel::Mma,
            k => k,
        };
        let (name, rows_per_block) = if suffix != "f32" && kernel == AttentionKernel::Pipelined {
            // two query tiles a warp up to head dim 80 (attention.cu's ATTN_MMA2)
            (
                format!("attn_mma2_{suffix}_d{dp}"),
                if dp <= 80 { 128 } else { 64 },
            )
        } else if suffix != "f32" && kernel == AttentionKernel::Mma {
            (format!("attn_mma_{suffix}_d{dp}"), 64)
        } else {
            let per_lane = match dh {
                0..=32 => 8,
                33..=64 => 16,
                _ => 32,
            };
            (format!("attn_scalar_{suffix}_l{per_lane}"), 32)
        };
        let func = dev.get_or_load_custom_func(&name, "minisora_attention", ATTENTION_PTX)?;
        let cfg = LaunchConfig {
            grid_dim: (
                int(n.div_ceil(rows_per_block), "query blocks")? as u32,
                (b * h) as u32,
                1,
            ),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let (q, k, v) = (
            contiguous(q, lq, OP)?,
            contiguous(k, lk, OP)?,
            contiguous(v, lv, OP)?,
        );
        let null = 0usize; // no segments: the kernel sees null pointers
        let (h, n, m, dh) = (int(h, "H")?, int(n, "N")?, int(m, "M")?, int(dh, "Dh")?);
        let mut builder = func.builder();
        builder.arg(&q);
        builder.arg(&k);
        builder.arg(&v);
        match segments {
            Some((qs, ks)) => {
                builder.arg(qs);
                builder.arg(ks);
            }
            None => {
                builder.arg(&null);
                builder.arg(&null);
            }
        }
        builder.arg(&out);
        builder.arg(&h);
        builder.arg(&n);
        builder.arg(&m);
        builder.arg(&dh);
        builder.arg(&scale);
        // SAFETY: the argument list matches attention.cu's signatures.
        unsafe { builder.launch(cfg) }.w()?;
        Ok(out)
    }

    pub(crate) fn flash_attention_fwd(
        op: &FlashAttention,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = &s1.device;
        let (b, h, n, dh) = l1.shape().dims4()?;
        let m = l2.shape().dim(D::Minus2)?;
        // the segment ids stay read-locked until the launch is queued
        let guards = op
            .segments
            .as_ref()
            .map(|(qs, ks)| (qs.storage_and_layout(), ks.storage_and_layout()));
        let segments = match &guards {
            Some(((qs, lq), (ks, lk))) => Some((u32_view(qs, lq)?, u32_view(ks, lk)?)),
            None => None,
        };
        let dims = [b, h, n, m, dh];
        let (segs, scale, kernel) = (segments.as_ref(), op.scale, op.kernel);
        use CudaStorageSlice as S;
        let slice = match (&s1.slice, &s2.slice, &s3.slice) {
            (S::F32(q), S::F32(k), S::F32(v)) => S::F32(attention_launch(
                dev,
                "f32",
                (q, l1),
                (k, l2),
                (v, l3),
                segs,
                dims,
                scale,
                kernel,
            )?),
            (S::BF16(q), S::BF16(k), S::BF16(v)) => S::BF16(attention_launch(
                dev,
                "bf16",
                (q, l1),
                (k, l2),
                (v, l3),
                segs,
                dims,
                scale,
                kernel,
            )?),
            (S::F16(q), S::F16(k), S::F16(v)) => S::F16(attention_launch(
                dev,
                "f16",
                (q, l1),
                (k, l2),
                (v, l3),
                segs,
                dims,
                scale,
                kernel,
            )?),
            _ => bail!("flash-attention: q, k, v must share one of f32, bf16, f16"),
        };
        Ok((
            CudaStorage {
                slice,
                device: dev.clone(),
            },
            l1.shape().clone(),
        ))
    }

    // -----------------------------------------------------------------------
    // linear layers through cuBLASLt, bias (and GELU) in the epilogue

    use candle_core::cuda_backend::cudarc::cublaslt::{
        Activation, CudaBlasLT, Matmul, MatmulConfig,
    };

    /// One cuBLASLt handle (and its workspace) per device, on the stream
    /// candle launches everything else on.
    fn blas_lt(dev: &CudaDevice) -> Result<std::sync::Arc<CudaBlasLT>> {
        use std::collections::HashMap;
        use std::sync::{Arc, Mutex, OnceLock};
        static HANDLES: OnceLock<Mutex<HashMap<String, Arc<CudaBlasLT>>>> = OnceLock::new();
        let key = format!("{:?}", dev.id());
        let mut handles = HANDLES
            .get_or_init(|| Mutex::new(HashMap::new()))
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(h) = handles.get(&key) {
            return Ok(h.clone());
        }
        let h = Arc::new(
            CudaBlasLT::new(dev.cuda_stream())
                .map_err(|e| candle_core::Error::Msg(format!("cuBLASLt: {e:?}")))?,
        );
        handles.insert(key, h.clone());
        Ok(h)
    }

    #[allow(clippy::too_many_arguments)]
    fn fused_linear_launch<T: DeviceRepr>(
        dev: &CudaDevice,
        (x, lx): (&CudaSlice<T>, &Layout),
        (w, lw): (&CudaSlice<T>, &Layout),
        (b, lb): (&CudaSlice<T>, &Layout),
        [rows, n, k]: [usize; 3],
        gelu: bool,
    ) -> Result<CudaSlice<T>>
    where
        CudaBlasLT: Matmul<T>,
    {
        const OP: &str = "fused-linear";
        let lt = blas_lt(dev)?;
        let (x, w, b) = (
            contiguous(x, lx, OP)?,
            contiguous(w, lw, OP)?,
            contiguous(b, lb, OP)?,
        );
        // SAFETY: the GEMM writes every element of y.
        let mut y = unsafe { dev.alloc::<T>(rows * n)? };
        if rows * n == 0 {
            return Ok(y);
        }
        // cuBLASLt is column-major: y (rows, N) row-major is C = (N, rows);
        // C = op(A) B with A = W stored (K, N) column-major (W (N, K)
        // row-major), transposed, and B = x stored (K, rows) column-major;
        // the epilogue adds bias[i] to row i of C, one per output feature
        let cfg = MatmulConfig {
            transa: true,
            transb: false,
            transc: false,
            m: n as u64,
            n: rows as u64,
            k: k as u64,
            alpha: 1.0,
            lda: k as i64,
            ldb: k as i64,
            beta: 0.0,
            ldc: n as i64,
            stride_a: None,
            stride_b: None,
            stride_c: None,
            stride_bias: None,
            batch_size: None,
        };
        let act = gelu.then_some(Activation::Gelu);
        // SAFETY: the layouts above match the buffers' sizes: w N x K, x
        // rows x K, b N, y rows x N, all contiguous.
        unsafe { lt.matmul(cfg, &w, &x, &mut y, Some(&b), act.as_ref()) }
            .map_err(|e| candle_core::Error::Msg(format!("{OP}: cuBLASLt: {e:?}")))?;
        Ok(y)
    }

    pub(crate) fn fused_linear_fwd(
        gelu: bool,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        use CudaStorageSlice as S;
        let dev = &s1.device;
        let (rows, k) = l1.shape().dims2()?;
        let (n, _) = l2.shape().dims2()?;
        let dims = [rows, n, k];
        let slice = match (&s1.slice, &s2.slice, &s3.slice) {
            (S::BF16(x), S::BF16(w), S::BF16(b)) => S::BF16(fused_linear_launch(
                dev,
                (x, l1),
                (w, l2),
                (b, l3),
                dims,
                gelu,
            )?),
            (S::F16(x), S::F16(w), S::F16(b)) => S::F16(fused_linear_launch(
                dev,
                (x, l1),
                (w, l2),
                (b, l3),
                dims,
                gelu,
            )?),
            _ => bail!("fused-linear: x, weight and bias must share bf16 or f16"),
        };
        Ok((
            CudaStorage {
                slice,
                device: dev.clone(),
            },
            Shape::from((rows, n)),
        ))
    }
}
