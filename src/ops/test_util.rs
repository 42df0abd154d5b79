//! Test helpers shared by the ops' tests: fresh random inputs, relative
//! differences, and a value-and-gradient comparison of an op with its
//! reference.

use candle_core::{Device, Tensor, Var};

pub(crate) fn random(shape: &[usize], seed: u64, scale: f64) -> Tensor {
    let mut rng = crate::rng::Rng::new(seed);
    (crate::train::randn(&mut rng, shape, &Device::Cpu).unwrap() * scale).unwrap()
}

/// Largest difference relative to the reference's largest magnitude; `a`
/// may be of any float dtype, `b` is f32.
pub(crate) fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.to_dtype(candle_core::DType::F32).unwrap();
    let d: f32 = (&a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    let m: f32 = b.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    d / m.max(1e-12)
}

/// Values and gradients (of `sum(out * probe)`) of `fused` and
/// `reference` on the same fresh inputs agree to `tol`.
pub(crate) fn check<F, R>(inputs: &[Tensor], fused: F, reference: R, tol: f32, what: &str)
where
    F: Fn(&[Tensor]) -> Tensor,
    R: Fn(&[Tensor]) -> Tensor,
{
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let (a, b) = (fused(&ts), reference(&ts));
    assert_eq!(a.dims(), b.dims(), "{what}: shape");
    let diff = rel_diff(&a, &b);
    assert!(diff < tol, "{what}: forward differs by {diff}");
    let probe = random(a.dims(), 999, 1.0);
    let ga = (&a * &probe)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gb = (&b * &probe)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for (i, v) in vars.iter().enumerate() {
        let (x, y) = (
            ga.get(v.as_tensor()).expect("fused gradient"),
            gb.get(v.as_tensor()).expect("reference gradient"),
        );
        let diff = rel_diff(x, y);
        assert!(
            diff < tol,
            "{what}: gradient of input {i} differs by {diff}"
        );
    }
}
