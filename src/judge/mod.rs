//! The judge: a small transformer that reads a clip's latent and a caption
//! together and says how well they match, as a logit. It is trained beside
//! the DiT on Shapes World ([`crate::train::judge`]): each clip against its
//! own caption, against a caption one mistake away, and each caption
//! against the render of a scene one mistake away
//! ([`crate::data::shapes_world::Scene::confusion`]). Generation samples
//! several candidates of a clip and keeps the one the judge rates highest
//! (reranking, as DALL-E reranked its samples with CLIP).
//!
//! Caption words and latent tokens attend to one another in every block
//! (one sequence, padding words masked), so that the judge can bind each
//! colour to its shape, size and motion; the latent tokens' mean, through a
//! linear head, is the logit.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Embedding, Linear, Module, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::nn::{key_padding_bias, sincos_3d, LayerNorm};
use crate::patch::{patchify, positions, PatchSize, Remainder};
use crate::text::{Block, PAD_ID};
use crate::vae::blocks::apply_last;
use crate::{invalid, Result};

/// Hyper-parameters of a judge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeConfig {
    /// Channels of the latent it reads.
    pub latent_channels: usize,
    /// Latent cells per token `(t, h, w)`.
    pub patch: PatchSize,
    pub width: usize,
    pub depth: usize,
    pub heads: usize,
    /// Set from the tokenizer.
    pub vocab_size: usize,
    pub max_len: usize,
}

impl JudgeConfig {
    /// The default judge for a DiT's latents: the DiT's tokens (so each
    /// token holds a place over the whole clip), width 128, 4 blocks of 4
    /// heads.
    pub fn for_dit(dit: &crate::dit::DitConfig) -> Self {
        Self {
            latent_channels: dit.latent_channels,
            patch: dit.patch,
            width: 128,
            depth: 4,
            heads: 4,
            vocab_size: 0,
            max_len: dit.context_len,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let d = self.width;
        if self.heads == 0 || d == 0 || d % self.heads != 0 {
            invalid!(
                "the judge's width {d} must split into {} heads (both at least 1)",
                self.heads
            );
        }
        if self.depth == 0 || self.max_len == 0 || self.latent_channels == 0 {
            invalid!("the judge needs at least 1 block, 1 caption token and 1 latent channel");
        }
        Ok(())
    }
}

/// The judge's layers.
pub struct Judge {
    pub config: JudgeConfig,
    words: Embedding,
    word_positions: Tensor,
    patch_embed: Linear,
    place_embed: Linear,
    blocks: Vec<Block>,
    norm: LayerNorm,
    head: Linear,
}

impl Judge {
    pub fn new(config: &JudgeConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let d = config.width;
        let token_dim = config.patch.token_dim(config.latent_channels);
        Ok(Self {
            config: config.clone(),
            words: candle_nn::embedding(config.vocab_size, d, vb.pp("words"))?,
            word_positions: vb.get_with_hints(
                (config.max_len, d),
                "word_positions",
                candle_nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            )?,
            patch_embed: candle_nn::linear(token_dim, d, vb.pp("patch_embed"))?,
            place_embed: candle_nn::linear_no_bias(
                6 * crate::nn::POS_FREQS,
                d,
                vb.pp("place_embed"),
            )?,
            blocks: (0..config.depth)
                .map(|i| Block::new(d, config.heads, vb.pp("blocks").pp(i)))
                .collect::<Result<_>>()?,
            norm: LayerNorm::new(d, vb.pp("norm"))?,
            head: candle_nn::linear(d, 1, vb.pp("head"))?,
        })
    }

    pub fn dtype(&self) -> DType {
        self.word_positions.dtype()
    }

    /// How well each latent matches its caption: a logit, higher is a
    /// better match.
    ///
    /// # Shapes
    /// - `z`: `(B, C, T', H', W')`, normalised latents (as the DiT's)
    /// - `ids`: `(B, L)` u32 caption tokens, padded with [`PAD_ID`]
    /// - returns `(B,)` in f32
    pub fn forward(&self, z: &Tensor, ids: &Tensor) -> Result<Tensor> {
        let (b, c, ..) = z.dims5()?;
        if c != self.config.latent_channels {
            invalid!(
                "the judge reads latents of {} channels, got {c}",
                self.config.latent_channels
            );
        }
        let (ib, l) = ids.dims2()?;
        if ib != b || l != self.config.max_len {
            invalid!(
                "the judge takes one caption of {} tokens per latent, got {ib} of {l} for {b}",
                self.config.max_len
            );
        }
        let dtype = self.dtype();
        let patches = patchify(&z.to_dtype(dtype)?, self.config.patch, Remainder::Reject)?;
        let places = sincos_3d(&positions(patches.grid), z.device())?.to_dtype(dtype)?;
        let clip = apply_last(&self.patch_embed, &patches.tokens)?
            .broadcast_add(&self.place_embed.forward(&places)?)?;
        let n = clip.dim(1)?;
        let words = self
            .words
            .forward(ids)?
            .broadcast_add(&self.word_positions.narrow(0, 0, l)?)?;
        let keep = Tensor::cat(
            &[
                &ids.ne(PAD_ID)?.to_dtype(dtype)?,
                &Tensor::ones((b, n), dtype, z.device())?,
            ],
            1,
        )?;
        let bias = key_padding_bias(&keep, dtype)?;
        let mut x = Tensor::cat(&[&words, &clip], 1)?;
        for block in &self.blocks {
            x = block.forward(&x, &bias)?;
        }
        let pooled = self.norm.forward(&x.narrow(1, l, n)?)?.mean(1)?;
        Ok(self
            .head
            .forward(&pooled)?
            .squeeze(D::Minus1)?
            .to_dtype(DType::F32)?)
    }
}

/// A judge with its variables (for training) or built on plain tensors
/// (for inference).
pub struct JudgeModel {
    pub judge: Judge,
    pub varmap: VarMap,
}

impl JudgeModel {
    pub fn new(config: &JudgeConfig, device: &Device) -> Result<Self> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        Ok(Self {
            judge: Judge::new(config, vb)?,
            varmap,
        })
    }

    /// The same judge for inference, in `dtype`: a forward records no
    /// backward graph.
    pub fn for_inference(&self, dtype: DType) -> Result<Self> {
        let (varmap, vb) = crate::checkpoint::inference_builder(&self.varmap, dtype)?;
        Ok(Self {
            judge: Judge::new(&self.judge.config, vb)?,
            varmap,
        })
    }
}
