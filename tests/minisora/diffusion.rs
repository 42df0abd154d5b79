//! Samplers against the one case with a known answer: Gaussian data, whose
//! rectified-flow velocity and ODE solution are closed-form.

use candle_core::{Device, Tensor};
use minisora::diffusion::{
    self, guide, interpolate, logit_normal, logit_normal_mixed, shift_time, timesteps, Denoiser,
    SamplerState,
};
use minisora::rng::Rng;
use minisora::train::randn;

/// Data `x0 ~ N(mu, s^2)` per value. With `x_t = (1 - t) x0 + t eps`:
/// `var_t = (1 - t)^2 s^2 + t^2`, `m_t = (1 - t) mu`,
/// `E[x0 | x] = mu + (1 - t) s^2 (x - m_t) / var_t`, `E[eps | x] = t (x - m_t) / var_t`,
/// and the exact velocity is `E[eps | x] - E[x0 | x]`.
struct Gaussian {
    mu: f64,
    s: f64,
}

impl Denoiser for Gaussian {
    fn velocity(&self, x: &Tensor, t: f64) -> minisora::Result<Tensor> {
        let (mu, s) = (self.mu, self.s);
        let var = (1.0 - t).powi(2) * s * s + t * t;
        let centred = (x - (1.0 - t) * mu)?;
        let eps = (&centred * (t / var))?;
        let x0 = ((&centred * ((1.0 - t) * s * s / var))? + mu)?;
        Ok((eps - x0)?)
    }
}

const DATA: Gaussian = Gaussian { mu: 1.5, s: 0.5 };

fn sample(name: &str, z: &Tensor, steps: usize) -> Tensor {
    let sampler = diffusion::sampler(name).unwrap();
    let mut state = SamplerState::default();
    let ts = timesteps(steps, 1.0);
    let mut x = z.clone();
    for w in ts.windows(2) {
        x = sampler.step(&DATA, &x, w[0], w[1], &mut state).unwrap();
    }
    x
}

fn noise(n: usize) -> Tensor {
    randn(&mut Rng::new(7), &[n], &Device::Cpu).unwrap()
}

fn moments(x: &Tensor) -> (f64, f64) {
    let v: Vec<f32> = x.to_vec1().unwrap();
    let mean = v.iter().map(|&a| a as f64).sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|&a| (a as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
    (mean, var.sqrt())
}

/// Mean distance to the exact ODE solution `x0 = mu + s z`.
fn error(name: &str, z: &Tensor, steps: usize) -> f64 {
    let exact = ((z * DATA.s).unwrap() + DATA.mu).unwrap();
    let x = sample(name, z, steps);
    (x - exact)
        .unwrap()
        .abs()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64
}

#[test]
fn every_sampler_maps_noise_to_the_data_distribution() {
    let z = noise(20_000);
    let (zm, zs) = moments(&z);
    for name in diffusion::SAMPLERS {
        let (m, s) = moments(&sample(name, &z, 64));
        // the flow map is affine, so sample moments follow the noise's exactly
        assert!(
            (m - (DATA.mu + DATA.s * zm)).abs() < 0.02,
            "{name}: mean {m}"
        );
        assert!((s - DATA.s * zs).abs() < 0.02, "{name}: std {s}");
    }
}

#[test]
fn heun_and_dpm_solver_reach_an_error_in_fewer_steps_than_euler() {
    let z = noise(2_000);
    let target = 2e-3;
    let steps_needed = |name: &str| {
        [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256]
            .into_iter()
            .find(|&k| error(name, &z, k) < target)
    };
    let euler = steps_needed("euler").unwrap_or(usize::MAX);
    let heun = steps_needed("heun").unwrap();
    let dpm = steps_needed("dpm++2m").unwrap();
    assert!(heun < euler, "heun {heun} vs euler {euler}");
    assert!(dpm < euler, "dpm++2m {dpm} vs euler {euler}");
    // and the error falls as steps grow
    for name in diffusion::SAMPLERS {
        assert!(error(name, &z, 32) < error(name, &z, 4), "{name}");
    }
}

#[test]
fn guidance_scale_one_is_the_conditional_prediction() {
    let c = noise(10);
    let u = (noise(10) * 3.0).unwrap();
    let g1 = guide(&c, &u, 1.0).unwrap();
    assert_eq!(g1.to_vec1::<f32>().unwrap(), c.to_vec1::<f32>().unwrap());
    let g0: Vec<f32> = guide(&c, &u, 0.0).unwrap().to_vec1().unwrap();
    let uv: Vec<f32> = u.to_vec1().unwrap();
    assert!(g0.iter().zip(&uv).all(|(a, b)| (a - b).abs() < 1e-6));
}

#[test]
fn the_path_timesteps_and_training_times_are_as_defined() {
    let x0 = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
    let eps = Tensor::new(&[[0f32, 0.0], [1.0, 1.0]], &Device::Cpu).unwrap();
    let t = Tensor::new(&[0.25f32, 1.0], &Device::Cpu).unwrap();
    let (x_t, v) = interpolate(&x0, &eps, &t).unwrap();
    assert_eq!(x_t.to_vec2::<f32>().unwrap(), [[0.75, 1.5], [1.0, 1.0]]);
    assert_eq!(v.to_vec2::<f32>().unwrap(), [[-1.0, -2.0], [-2.0, -3.0]]);
    let ts = timesteps(4, 1.0);
    assert_eq!(ts, [1.0, 0.75, 0.5, 0.25, 0.0]);
    let shifted = timesteps(4, 3.0);
    assert!(shifted[0] == 1.0 && shifted[4] == 0.0 && shifted[2] > 0.5);
    let times = logit_normal(&mut Rng::new(1), 10_000, 0.0, 1.0, 1.0);
    assert!(times.iter().all(|&t| t > 0.0 && t < 1.0));
    let mean = times.iter().map(|&t| t as f64).sum::<f64>() / 1e4;
    assert!((mean - 0.5).abs() < 0.01);
    // a shift of s moves the median from 1/2 to s / (1 + s) and keeps the order
    let shifted = logit_normal(&mut Rng::new(1), 10_000, 0.0, 1.0, 3.0);
    let median = |v: &[f32]| {
        let mut v = v.to_vec();
        v.sort_by(f32::total_cmp);
        v[v.len() / 2] as f64
    };
    assert!((median(&times) - 0.5).abs() < 0.02);
    assert!((median(&shifted) - 0.75).abs() < 0.02);
    assert!(times.iter().zip(&shifted).all(|(a, b)| b >= a));
    // a mixture shifts exactly the draws not marked unshifted
    let marks: Vec<bool> = (0..10_000).map(|i| i % 3 == 0).collect();
    let mixed = logit_normal_mixed(&mut Rng::new(1), &marks, 0.0, 1.0, 3.0);
    for (i, &m) in mixed.iter().enumerate() {
        assert_eq!(m, if marks[i] { times[i] } else { shifted[i] }, "draw {i}");
    }
    assert_eq!(shift_time(0.5, 3.0), 0.75);
    assert!(diffusion::sampler("ddim")
        .err()
        .unwrap()
        .to_string()
        .contains("euler, heun, dpm++2m"));
}
