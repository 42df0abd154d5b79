//! The vendored candle-core's patches (third_party/README.md) against
//! results computed by hand: sums over runs of leading or middle dims,
//! gradients through nodes with one consumer, several consumers, and
//! subtraction, and element-wise ops split over the caller's rayon pool.

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
