//! Reconstruction quality: PSNR over whole clips and the colour error inside
//! Shapes World objects (the pixels of a palette colour in the original).

use serde::Serialize;

use crate::data::shapes_world::Color;
use crate::video::Frames;

/// Running totals over clips.
#[derive(Clone, Debug, Default)]
pub struct ReconStats {
    clips: usize,
    sq_err: f64,
    values: f64,
    psnr_sum: f64,
    object_abs_err: f64,
    object_values: f64,
}

/// The figures of an evaluation.
#[derive(Clone, Debug, Serialize)]
pub struct ReconReport {
    pub clips: usize,
    /// PSNR in dB of all pixels of all clips together (8-bit scale).
    pub psnr: f64,
    /// Mean of the clips' own PSNRs.
    pub psnr_mean_per_clip: f64,
    /// Mean absolute error (of 255) over the pixels of objects, where the
    /// original is exactly a palette colour; `None` without such pixels.
    pub object_colour_error: Option<f64>,
}

fn psnr(mse: f64) -> f64 {
    10.0 * (255.0 * 255.0 / mse.max(1e-10)).log10()
}

impl ReconStats {
    /// Adds one clip: `original` and `recon` `(T, H, W, 3)` of one size.
    pub fn add(&mut self, original: &Frames, recon: &Frames) {
        let palette: Vec<[u8; 3]> = Color::ALL.iter().map(|c| c.rgb()).collect();
        let (o, r) = (original.as_slice(), recon.as_slice());
        let (Some(o), Some(r)) = (o, r) else {
            return self.add(
                &original.as_standard_layout().to_owned(),
                &recon.as_standard_layout().to_owned(),
            );
        };
        let mut sq = 0.0;
        for (po, pr) in o.chunks_exact(3).zip(r.chunks_exact(3)) {
            let mut abs = 0.0;
            for c in 0..3 {
                let d = po[c] as f64 - pr[c] as f64;
                sq += d * d;
                abs += d.abs();
            }
            if palette.contains(&[po[0], po[1], po[2]]) {
                self.object_abs_err += abs;
                self.object_values += 3.0;
            }
        }
        let n = o.len() as f64;
        self.clips += 1;
        self.sq_err += sq;
        self.values += n;
        self.psnr_sum += psnr(sq / n);
    }

    pub fn report(&self) -> ReconReport {
        ReconReport {
            clips: self.clips,
            psnr: psnr(self.sq_err / self.values.max(1.0)),
            psnr_mean_per_clip: self.psnr_sum / self.clips.max(1) as f64,
            object_colour_error: (self.object_values > 0.0)
                .then(|| self.object_abs_err / self.object_values),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psnr_and_colour_error_by_hand() {
        let mut a = Frames::zeros((1, 1, 2, 3));
        a[[0, 0, 0, 0]] = 220; // red (220, 40, 40)
        a[[0, 0, 0, 1]] = 40;
        a[[0, 0, 0, 2]] = 40;
        let mut b = a.clone();
        b[[0, 0, 0, 0]] = 210; // 10 off on one channel of the object
        b[[0, 0, 1, 2]] = 5; // 5 off on the background
        let mut s = ReconStats::default();
        s.add(&a, &b);
        let r = s.report();
        let mse = (100.0 + 25.0) / 6.0;
        assert!((r.psnr - 10.0 * (65025.0f64 / mse).log10()).abs() < 1e-9);
        assert!((r.object_colour_error.unwrap() - 10.0 / 3.0).abs() < 1e-9);
    }
}
