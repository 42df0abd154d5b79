//! The vendored candle-core's patches (third_party/README.md) against
//! results computed by hand: sums over runs of leading or middle dims,
//! gradients through nodes with one consumer, several consumers, and
//! subtraction, element-wise ops split over the caller's rayon pool,
//! matrix products written into a buffer that is not zero-filled first,
//! linear layers' weight gradients (against upstream's bits), and
//! gradients through narrows of one tensor.

use candle_core::{DType, Device, Tensor, Var};

fn values(n: usize) -> Vec<f32> {
    // distinct, exactly representable, of mixed sign
    (0..n).map(|i| (i as f32 * 0.37).sin() * 4.0).collect()
}

/// The sum over `reduced` dims of a row-major tensor of shape `dims`, adding
/// the values into each output in increasing flat index (upstream's order).
fn sum_by_loop(v: &[f32], dims: &[usize], reduced: &[usize]) -> Vec<f32> {
    let out_dims: Vec<usize> = (0..dims.len())
        .map(|i| if reduced.contains(&i) { 1 } else { dims[i] })
        .collect();
    let mut out = vec![0.0f32; out_dims.iter().product()];
    for (flat, &value) in v.iter().enumerate() {
        let (mut rest, mut index, mut stride) = (flat, 0, 1);
        for axis in (0..dims.len()).rev() {
            let coord = rest % dims[axis];
            rest /= dims[axis];
            if !reduced.contains(&axis) {
                index += coord * stride;
            }
            stride *= out_dims[axis];
        }
        out[index] += value;
    }
    out
}

#[test]
fn sums_over_runs_of_dims_match_a_loop() {
    let dims = [3, 4, 5, 6];
    let v = values(dims.iter().product());
    let x = Tensor::from_vec(v.clone(), &dims, &Device::Cpu).unwrap();
    // (0, 1): a leading run, what a bias's gradient sums over; (1, 2): a
    // middle run, a sum over tokens inside each clip; (0, 2): not one run,
    // so upstream's path
    for reduced in [vec![0, 1], vec![1, 2], vec![0, 2]] {
        let got: Vec<f32> = x
            .sum_keepdim(reduced.clone())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(got, sum_by_loop(&v, &dims, &reduced), "dims {reduced:?}");
    }
}

#[test]
fn gradients_through_single_and_shared_consumers() {
    // y = sum(w * x) + sum((w - b) * x) + sum(x * x): w and x are used twice
    let dev = Device::Cpu;
    let (xs, ws, bs) = (
        [1.5f32, -2.0, 0.25],
        [0.5f32, 3.0, -1.0],
        [2.0f32, -0.5, 1.0],
    );
    let x = Var::from_slice(&xs, 3, &dev).unwrap();
    let w = Var::from_slice(&ws, 3, &dev).unwrap();
    let b = Var::from_slice(&bs, 3, &dev).unwrap();
    let first = (w.as_tensor() * x.as_tensor()).unwrap().sum_all().unwrap();
    let diff = (w.as_tensor() - b.as_tensor()).unwrap();
    let second = (&diff * x.as_tensor()).unwrap().sum_all().unwrap();
    let third = x.as_tensor().sqr().unwrap().sum_all().unwrap();
    let y = ((first + second).unwrap() + third).unwrap();
    let grads = y.backward().unwrap();
    let get = |v: &Var| -> Vec<f32> { grads.get(v.as_tensor()).unwrap().to_vec1().unwrap() };
    for i in 0..3 {
        // dy/dx = w + (w - b) + 2x; dy/dw = 2x; dy/db = -x
        assert_eq!(get(&x)[i], ws[i] + (ws[i] - bs[i]) + 2.0 * xs[i]);
        assert_eq!(get(&w)[i], 2.0 * xs[i]);
        assert_eq!(get(&b)[i], -xs[i]);
    }
    // a broadcast bias: its gradient is the sum over rows
    let m = Var::from_slice(&values(12), (4, 3), &dev).unwrap();
    let bias = Var::from_slice(&bs, 3, &dev).unwrap();
    let out = m.as_tensor().broadcast_add(bias.as_tensor()).unwrap();
    let loss = (out * 2.0).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let gb: Vec<f32> = grads.get(bias.as_tensor()).unwrap().to_vec1().unwrap();
    assert_eq!(gb, vec![8.0; 3]);
    let gm = grads.get(m.as_tensor()).unwrap();
    assert_eq!(gm.dims(), &[4, 3]);
    assert_eq!(gm.dtype(), DType::F32);
    assert!(gm
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|&g| g == 2.0));
}

#[test]
fn element_wise_ops_on_the_callers_rayon_pool_cover_every_value_once() {
    use std::sync::atomic::{AtomicU32, Ordering};
    let hits: Vec<AtomicU32> = (0..10_007).map(|_| AtomicU32::new(0)).collect();
    Device::Cpu.with_context(|| {
        candle_core::utils::barrier_pool().execute_chunked(hits.len(), |range| {
            for i in range {
                hits[i].fetch_add(1, Ordering::Relaxed);
            }
        })
    });
    assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));

    // above candle's parallel threshold (64 Ki values): outside the pool
    // candle's own workers split the op, inside it the rayon pool does
    let n = 300_001;
    let (a, b) = (values(n), values(n + 7)[7..].to_vec());
    let x = Tensor::from_vec(a.clone(), n, &Device::Cpu).unwrap();
    let y = Tensor::from_vec(b.clone(), n, &Device::Cpu).unwrap();
    let op = || {
        ((&x * &y).unwrap() + 1.0)
            .unwrap()
            .sqr()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let by_hand: Vec<f32> = a
        .iter()
        .zip(&b)
        .map(|(a, b)| (a * b + 1.0).powi(2))
        .collect();
    assert_eq!(op(), by_hand);
    assert_eq!(Device::Cpu.with_context(op), by_hand);
}

/// `(b, m, k) x (b or 1, k, n)` by three loops, each value summed in `k`
/// order.
fn matmul_by_loop(a: &[f32], b: &[f32], dims: [usize; 4], rhs_batched: bool) -> Vec<f32> {
    let [batch, m, k, n] = dims;
    let mut out = Vec::with_capacity(batch * m * n);
    for bi in 0..batch {
        let rb = if rhs_batched { bi } else { 0 };
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k)
                    .map(|p| a[(bi * m + i) * k + p] as f64 * b[(rb * k + p) * n + j] as f64)
                    .sum();
                out.push(dot as f32);
            }
        }
    }
    out
}

/// Every value of a product is written though its buffer starts
/// uninitialised: batched, with a batch-invariant right side (the folded
/// path), transposed operands, and an inner size of 0 (all zeros). A
/// buffer of NaNs of the product's size is freed just before each product,
/// so the allocator is likely to hand it back: a value left unwritten would
/// then read NaN, not a zero that happens to be right.
#[test]
fn matrix_products_write_every_value() {
    let dev = Device::Cpu;
    for (dims, rhs_batched) in [
        ([3, 5, 7, 4], true),
        ([3, 5, 7, 4], false),
        ([2, 33, 65, 17], true),
        ([1, 1, 9, 1], true),
    ] {
        let [batch, m, k, n] = dims;
        let rb = if rhs_batched { batch } else { 1 };
        let (av, bv) = (values(batch * m * k), values(rb * k * n + 3)[3..].to_vec());
        let a = Tensor::from_vec(av.clone(), (batch, m, k), &dev).unwrap();
        let b = Tensor::from_vec(bv.clone(), (rb, k, n), &dev).unwrap();
        let want = matmul_by_loop(&av, &bv, dims, rhs_batched);
        // f32 rounding of k products of values up to 4 in size, in gemm's order
        let tol = 16.0 * k as f32 * 1e-6;
        // leave freed garbage for the allocator to hand back
        drop(Tensor::full(f32::NAN, batch * m * n, &dev).unwrap());
        let b = if rhs_batched {
            b
        } else {
            b.broadcast_as((batch, k, n)).unwrap()
        };
        let got = a
            .matmul(&b)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= tol, "{dims:?}: {g} vs {w}");
        }
        // transposed operands: the same product as (b^T a^T)^T
        let t = b.t().unwrap().matmul(&a.t().unwrap()).unwrap().t().unwrap();
        let t = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (g, w) in t.iter().zip(&want) {
            assert!((g - w).abs() <= tol, "{dims:?} transposed: {g} vs {w}");
        }
    }
    let a = Tensor::zeros((2, 3, 0), DType::F32, &dev).unwrap();
    let b = Tensor::zeros((2, 0, 4), DType::F32, &dev).unwrap();
    drop(Tensor::full(f32::NAN, 24, &dev).unwrap());
    let z = a.matmul(&b).unwrap();
    assert_eq!(z.dims(), &[2, 3, 4]);
    assert!(z
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|&v| v == 0.0));
}

/// A linear layer's weight gradient: `x W^T` hands `W` the product `grad^T
/// x`, computed in `W`'s layout, with the same bits as upstream's `(x^T
/// grad)^T` and as one `mul_add` chain over the rows in order (gemm's order
/// for an inner size of at most 512). Sizes off gemm's 16 x 6 tiles and its
/// unrolling; a second use of the same weight adds its gradient.
#[test]
fn linear_weight_gradients_come_out_in_the_weights_layout_with_upstreams_bits() {
    let dev = Device::Cpu;
    let (rows, k, n) = (301, 37, 70);
    let xs = values(rows * k);
    let cs: Vec<f32> = values(rows * n + 5)[5..].iter().map(|v| v * 0.3).collect();
    let x = Tensor::from_slice(&xs, (rows, k), &dev).unwrap();
    let c = Tensor::from_slice(&cs, (rows, n), &dev).unwrap();
    let w = Var::from_slice(&values(n * k + 11)[11..], (n, k), &dev).unwrap();
    // d/dy of sum(y * c) is c
    let y = x.matmul(&w.as_tensor().t().unwrap()).unwrap();
    let grads = (y * &c).unwrap().sum_all().unwrap().backward().unwrap();
    let gw = grads.get(w.as_tensor()).unwrap();
    assert_eq!(gw.dims(), &[n, k]);
    assert!(gw.is_contiguous());
    let got: Vec<f32> = gw.flatten_all().unwrap().to_vec1().unwrap();
    let upstream: Vec<f32> = x
        .t()
        .unwrap()
        .matmul(&c)
        .unwrap()
        .t()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(got, upstream);
    for j in 0..n {
        for i in 0..k {
            let chain = (0..rows).fold(0f32, |acc, r| cs[r * n + j].mul_add(xs[r * k + i], acc));
            assert_eq!(got[j * k + i].to_bits(), chain.to_bits(), "W[{j}, {i}]");
        }
    }
    // the same weight twice: the two gradients add
    let y2 = x.matmul(&w.as_tensor().t().unwrap()).unwrap();
    let y = x.matmul(&w.as_tensor().t().unwrap()).unwrap();
    let loss = ((y * &c).unwrap() + (y2 * &c).unwrap()).unwrap();
    let grads = loss.sum_all().unwrap().backward().unwrap();
    let twice: Vec<f32> = grads
        .get(w.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let doubled: Vec<f32> = upstream.iter().map(|v| v + v).collect();
    assert_eq!(twice, doubled);
}

/// Gradients through narrows of one tensor: q, k and v from a fused qkv
/// (disjoint, along the first and the last dim), overlapping narrows, and a
/// tensor used whole besides its narrows. Each value of the gradient is the
/// sum of what every use hands it, as upstream's padded adds give.
#[test]
fn gradients_through_narrows_fill_one_tensor() {
    let dev = Device::Cpu;
    let src = Var::from_slice(&values(6 * 8), (6, 8), &dev).unwrap();
    let s = src.as_tensor();
    // coefficients for each use, so each part's gradient is known
    let coef = |seed: usize, dims: (usize, usize)| {
        let n = dims.0 * dims.1;
        Tensor::from_slice(&values(n + seed)[seed..], dims, &dev).unwrap()
    };
    let grad_of = |loss: Tensor| -> Vec<f32> {
        let grads = loss.sum_all().unwrap().backward().unwrap();
        let g = grads.get(s).unwrap();
        assert_eq!(g.dims(), &[6, 8]);
        g.flatten_all().unwrap().to_vec1().unwrap()
    };
    // what each use hands src: its coefficients in its range, zeros elsewhere
    let padded = |c: &Tensor, dim: usize, start: usize| -> Vec<f32> {
        let mut out = vec![0f32; 48];
        let (r, k) = c.dims2().unwrap();
        let cv: Vec<f32> = c.flatten_all().unwrap().to_vec1().unwrap();
        for i in 0..r {
            for j in 0..k {
                let (a, b) = if dim == 0 {
                    (i + start, j)
                } else {
                    (i, j + start)
                };
                out[a * 8 + b] = cv[i * k + j];
            }
        }
        out
    };
    let add = |parts: &[Vec<f32>]| -> Vec<f32> {
        (0..48).map(|i| parts.iter().map(|p| p[i]).sum()).collect()
    };
    // uses as (start, len, seed) along dim, each summed times its own
    // coefficients, plus src used whole (times coefficients of `whole`)
    let check = |dim: usize, uses: &[(usize, usize, usize)], whole: Option<usize>, what: &str| {
        let mut terms = Vec::new();
        let mut parts = Vec::new();
        for &(start, len, seed) in uses {
            let c = coef(seed, if dim == 0 { (len, 8) } else { (6, len) });
            let t = s.narrow(dim, start, len).unwrap();
            terms.push((t * &c).unwrap().sum_all().unwrap());
            parts.push(padded(&c, dim, start));
        }
        if let Some(seed) = whole {
            let c = coef(seed, (6, 8));
            terms.push((s * &c).unwrap().sum_all().unwrap());
            parts.push(c.flatten_all().unwrap().to_vec1().unwrap());
        }
        let loss = Tensor::stack(&terms, 0).unwrap();
        assert_eq!(grad_of(loss), add(&parts), "{what}, dim {dim}");
    };
    for dim in [0, 1] {
        // disjoint thirds, used in the order v, q, k
        check(dim, &[(4, 2, 3), (0, 2, 1), (2, 2, 2)], None, "disjoint");
        // overlapping: [1, 4) and [2, 5), plus [0, 1)
        check(dim, &[(1, 3, 4), (2, 3, 5), (0, 1, 6)], None, "overlapping");
        // whole as well as narrowed
        check(dim, &[(0, 2, 1), (4, 2, 3)], Some(7), "whole and narrowed");
    }
}
