//! How a clip becomes spacetime-patch tokens, and what the model pays for
//! them: the figures behind `minisora inspect`.
//!
//! The path is input `(T, H, W)` -> compression network (factors
//! `ft, fs, fs`) -> latent -> patches `(pt, ph, pw)` -> grid of tokens. Each
//! token therefore covers `ft*pt` frames and `fs*ph x fs*pw` pixels of the
//! input. Sizes the factors do not divide are padded (and counted) or
//! refused, as the caller chooses.

mod picture;

use serde::Serialize;

pub use picture::{token_hue, token_picture};

use crate::dit::StepCost;
use crate::patch::{self, PatchSize, Remainder};
use crate::preset::Preset;
use crate::{invalid, Result};

/// The model half of an inspection: a preset's size and one step's cost.
#[derive(Clone, Debug, Serialize)]
pub struct ModelReport {
    pub preset: String,
    pub hidden: usize,
    pub depth: usize,
    pub heads: usize,
    pub params: u64,
    /// One denoising step on one clip.
    pub step: StepCost,
    /// One step with classifier-free guidance (conditional and
    /// unconditional batched: batch 2).
    pub step_cfg: StepCost,
}

/// Everything `minisora inspect` reports.
#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    /// `[T, H, W]` of the input clip.
    pub input: [usize; 3],
    /// Compression factors along `[T, H, W]`.
    pub compress: [usize; 3],
    /// `[T, H, W]` of the latent after compression.
    pub latent: [usize; 3],
    pub latent_channels: usize,
    /// `[pt, ph, pw]`.
    pub patch: [usize; 3],
    /// Tokens along each axis `[t, h, w]`.
    pub grid: [usize; 3],
    /// `t * h * w`.
    pub tokens: usize,
    /// Values in one token: `C * pt * ph * pw`.
    pub token_dim: usize,
    /// Input frames, rows and columns one token covers.
    pub footprint: [usize; 3],
    /// Tokens that hold padding because a factor does not divide the input.
    pub padded_tokens: usize,
    /// Text tokens the DiT attends to (by cross-attention).
    pub text_tokens: usize,
    /// Video plus text tokens.
    pub sequence: usize,
    pub model: ModelReport,
}

/// Inspects a clip of `input = [T, H, W]` for `preset`, with its compression
/// and patch size unless `compress` or `patch` override them.
pub fn inspect(
    input: [usize; 3],
    preset: &Preset,
    compress: Option<[usize; 3]>,
    patch: Option<PatchSize>,
    remainder: Remainder,
) -> Result<Inspection> {
    if let Some(axis) = input.iter().position(|&v| v == 0) {
        invalid!(
            "the input has no {} (size 0)",
            ["frames", "height", "width"][axis]
        );
    }
    let compress = compress.unwrap_or(preset.compression.factors());
    if compress.contains(&0) {
        invalid!("compression factors must be at least 1, got {compress:?}");
    }
    let patch = patch.unwrap_or(preset.dit.patch);
    // the compression network needs sizes its factors divide: the same rule
    // (pad or refuse) as for patches
    let compression_patch = PatchSize::new(compress[0], compress[1], compress[2])?;
    let latent = patch::grid(input, compression_patch, remainder)
        .map_err(|e| crate::Error::Invalid(format!("compression {compress:?}: {e}")))?;
    let grid = patch::grid(latent, patch, remainder)
        .map_err(|e| crate::Error::Invalid(format!("latent {latent:?}: {e}")))?;
    let footprint = [
        compress[0] * patch.t,
        compress[1] * patch.h,
        compress[2] * patch.w,
    ];
    let tokens: usize = grid.iter().product();
    let whole: usize = (0..3).map(|a| input[a] / footprint[a]).product();
    let mut dit = preset.dit.clone();
    dit.patch = patch;
    let text_tokens = dit.context_len;
    Ok(Inspection {
        input,
        compress,
        latent,
        latent_channels: dit.latent_channels,
        patch: patch.as_array(),
        grid,
        tokens,
        token_dim: dit.token_dim(),
        footprint,
        padded_tokens: tokens - whole,
        text_tokens,
        sequence: tokens + text_tokens,
        model: ModelReport {
            preset: preset.name.to_string(),
            hidden: dit.hidden,
            depth: dit.depth,
            heads: dit.heads,
            params: dit.params(),
            step: dit.step_cost(tokens, 1),
            step_cfg: dit.step_cost(tokens, 2),
        },
    })
}

/// `1234567` -> `"1.23 M"`.
pub fn si(v: u64) -> String {
    let v = v as f64;
    for (div, unit) in [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")] {
        if v >= div {
            return format!("{:.2} {unit}", v / div);
        }
    }
    format!("{v}")
}

/// Bytes in binary units.
pub fn bytes(v: u64) -> String {
    let v = v as f64;
    for (div, unit) in [
        (1u64 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ] {
        if v >= div as f64 {
            return format!("{:.1} {unit}", v / div as f64);
        }
    }
    format!("{v} B")
}

impl Inspection {
    /// The human-readable table `minisora inspect` prints.
    pub fn table(&self, source: &str) -> String {
        let [t, h, w] = self.input;
        let [lt, lh, lw] = self.latent;
        let [ct, ch, cw] = self.compress;
        let [pt, ph, pw] = self.patch;
        let [gt, gh, gw] = self.grid;
        let [ft, fh, fw] = self.footprint;
        let m = &self.model;
        let row = |k: &str, v: String| format!("{k:<14}{v}\n");
        let mut out = String::new();
        out += &row(
            "input",
            format!("{t} frames x {h} x {w} pixels (T x H x W)   {source}"),
        );
        out += &row(
            "compression",
            format!(
                "/{ct} time, /{ch} height, /{cw} width -> latent {lt} x {lh} x {lw}, {} channels",
                self.latent_channels
            ),
        );
        out += &row(
            "patch",
            format!("{pt} x {ph} x {pw} -> grid {gt} x {gh} x {gw} (t x h x w)"),
        );
        out += &row(
            "tokens",
            format!(
                "{} video tokens of {} values; each covers {ft} frames x {fh} x {fw} pixels",
                self.tokens, self.token_dim
            ),
        );
        let padding = if self.padded_tokens == 0 {
            "none: the factors divide the input".to_string()
        } else {
            format!(
                "{} of {} tokens hold zero padding (sizes not divisible)",
                self.padded_tokens, self.tokens
            )
        };
        out += &row("padding", padding);
        out += &row(
            "sequence",
            format!(
                "{} = {} video + {} text tokens (text by cross-attention)",
                self.sequence, self.tokens, self.text_tokens
            ),
        );
        out += &row(
            "model",
            format!(
                "preset {}: width {}, depth {}, {} heads, {} parameters",
                m.preset,
                m.hidden,
                m.depth,
                m.heads,
                si(m.params)
            ),
        );
        let s = &m.step;
        out += &row(
            "step FLOPs",
            format!(
                "{}FLOP: attention {} + attention projections {} + MLP {} + other {}",
                si(s.total_flops),
                si(s.attention_flops),
                si(s.attention_proj_flops),
                si(s.mlp_flops),
                si(s.other_flops)
            ),
        );
        out += &row(
            "with CFG",
            format!(
                "{}FLOP (batch 2: conditional + unconditional)",
                si(m.step_cfg.total_flops)
            ),
        );
        out += &row(
            "activations",
            format!(
                "{} per step (f32, no gradients), {} with CFG",
                bytes(s.activation_bytes),
                bytes(m.step_cfg.activation_bytes)
            ),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preset::preset;

    #[test]
    fn default_clip_gives_the_default_grid() {
        let p = preset("default").unwrap();
        let i = inspect([16, 32, 32], &p, None, None, Remainder::Pad).unwrap();
        assert_eq!(i.latent, [8, 8, 8]);
        assert_eq!(i.grid, [1, 8, 8]);
        assert_eq!(i.tokens, 64);
        assert_eq!(i.footprint, [16, 4, 4]);
        assert_eq!(i.padded_tokens, 0);
        assert_eq!(i.token_dim, 64);
    }

    #[test]
    fn odd_sizes_pad_or_are_refused_by_axis() {
        // 2x2x2 tubelets: a token of 4 frames x 8 x 8 pixels
        let (p, tubelet) = (preset("default").unwrap(), PatchSize::new(2, 2, 2).ok());
        let i = inspect([15, 30, 33], &p, None, tubelet, Remainder::Pad).unwrap();
        assert_eq!(i.latent, [8, 8, 9]);
        assert_eq!(i.grid, [4, 4, 5]);
        // whole tokens: 15/4=3, 30/8=3, 33/8=4
        assert_eq!(i.padded_tokens, 80 - 3 * 3 * 4);
        let err = inspect([16, 30, 32], &p, None, tubelet, Remainder::Reject)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("height 30") && err.contains("2 too many"),
            "{err}"
        );
    }
}
