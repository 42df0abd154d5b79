//! Named model presets: the CPU default that ships in `samples/`, and DiT's
//! S, B, L and XL widths and depths (Peebles and Xie 2023, table 1) for
//! benchmarks and scaling work.

use serde::{Deserialize, Serialize};

use crate::data::shapes_world::Canvas;
use crate::dit::DitConfig;
use crate::patch::PatchSize;
use crate::vae::VaeConfig;
use crate::{invalid, Result};

/// The compression network's factors: time `t`, space `s` (height and
/// width), and latent channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compression {
    pub t: usize,
    pub s: usize,
    pub channels: usize,
}

impl Compression {
    /// Factors along `(T, H, W)`.
    pub fn factors(&self) -> [usize; 3] {
        [self.t, self.s, self.s]
    }
}

/// A whole model's shape: clip size, compression and DiT.
#[derive(Clone, Debug, PartialEq)]
pub struct Preset {
    pub name: &'static str,
    pub summary: &'static str,
    /// The clip size it is trained and sampled at by default.
    pub canvas: Canvas,
    pub compression: Compression,
    pub dit: DitConfig,
}

/// Names accepted by [`preset`].
pub const NAMES: &[&str] = &["default", "S", "B", "L", "XL", "tiny"];

/// Latent channels of the shipped model's autoencoder: the standalone
/// default ([`VaeConfig::default_preset`], `samples/vae`) has 16 and
/// reconstructs 1.4 dB better, but the DiT trained on an 8-channel latent
/// by the same 90-minute recipe got an object's shape right 62% of the time
/// instead of 49%, and passed 67.5% of one-object prompts instead of 59%
/// (`samples/model/history.md`).
pub const MODEL_LATENT_CHANNELS: usize = 8;

/// A compression network's factors: the standalone default one (see
/// [`VaeConfig::default_preset`]) is 2x in time, 4x in space, 16 channels (a
/// 16x32x32 clip becomes 16x8x8x8).
fn compression_of(vae: &VaeConfig) -> Compression {
    Compression {
        t: vae.ft,
        s: vae.fs,
        channels: vae.latent_channels,
    }
}

fn dit(hidden: usize, depth: usize, heads: usize, context_dim: usize) -> DitConfig {
    DitConfig {
        latent_channels: VaeConfig::default_preset().latent_channels,
        patch: PatchSize { t: 1, h: 2, w: 2 },
        hidden,
        depth,
        heads,
        mlp_ratio: 4,
        context_dim,
        // the longest Shapes World caption has 13 words
        context_len: 16,
        freq_dim: 256,
        pos_embed: true,
        local_mix: false,
        rope_base: crate::nn::ROPE_BASE,
        rope_pairs: None,
        joint_text: false,
        self_cond: false,
    }
}

/// The preset called `name` (case-insensitive).
pub fn preset(name: &str) -> Result<Preset> {
    let big = Canvas {
        frames: 16,
        height: 64,
        width: 64,
    };
    let (name, summary, canvas, dit) = match name.to_ascii_lowercase().as_str() {
        "default" => (
            "default",
            "the CPU model that ships in samples/",
            Canvas::DEFAULT,
            // tokens as long as the default clip (8 latent frames) and one
            // latent cell wide: 64 tokens, each a 4x4-pixel place over all
            // 16 frames, so motion lies inside each token's own output
            // (2x2x2 tubelets, also 64 tokens, made objects jump between
            // groups of 4 frames: samples/model/history.md)
            // self-conditioning, as the shipped model is trained: the
            // model shipped 2026-12-06 passed 48.0% of two-object prompts
            // with it (the model before, 38.5%), but a second seed of its
            // recipe passed 35.5% (samples/model/history.md)
            DitConfig {
                latent_channels: MODEL_LATENT_CHANNELS,
                patch: PatchSize { t: 8, h: 1, w: 1 },
                self_cond: true,
                ..dit(192, 6, 6, 128)
            },
        ),
        "s" => ("S", "DiT-S width and depth", big, dit(384, 12, 6, 256)),
        "b" => ("B", "DiT-B width and depth", big, dit(768, 12, 12, 256)),
        "l" => ("L", "DiT-L width and depth", big, dit(1024, 24, 16, 256)),
        "xl" => ("XL", "DiT-XL width and depth", big, dit(1152, 28, 16, 256)),
        "tiny" => {
            // for tests: pairs with the tiny autoencoder
            let vae = VaeConfig::tiny();
            let config = DitConfig {
                latent_channels: vae.latent_channels,
                freq_dim: 32,
                ..dit(32, 1, 2, 16)
            };
            let canvas = Canvas {
                frames: 4,
                height: 16,
                width: 16,
            };
            return Ok(Preset {
                name: "tiny",
                summary: "a test-sized model",
                canvas,
                compression: compression_of(&vae),
                dit: config,
            });
        }
        _ => invalid!(
            "unknown preset \"{name}\": expected one of {}",
            NAMES.join(", ")
        ),
    };
    Ok(Preset {
        name,
        summary,
        canvas,
        compression: Compression {
            channels: dit.latent_channels,
            ..compression_of(&VaeConfig::default_preset())
        },
        dit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_resolves_and_unknown_ones_list_the_names() {
        for name in NAMES {
            assert_eq!(&preset(name).unwrap().name, name);
        }
        assert_eq!(preset("xl").unwrap().dit.hidden, 1152);
        let err = preset("huge").unwrap_err().to_string();
        assert!(
            err.contains("huge") && err.contains("default, S, B, L, XL"),
            "{err}"
        );
    }

    #[test]
    fn xl_is_the_size_of_dit_xl_plus_cross_attention() {
        // DiT-XL/2 has 675M parameters; cross-attention adds 4 D^2 per block
        let p = preset("XL").unwrap().dit.params() as f64;
        let cross = 28.0 * 4.0 * 1152.0 * 1152.0;
        assert!(((p - cross) / 675e6 - 1.0).abs() < 0.02, "{p}");
    }
}
