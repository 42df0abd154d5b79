//! A small bidirectional transformer over caption tokens: learned word and
//! position embeddings, pre-LN blocks, a final LayerNorm. Returns the
//! per-token context the DiT cross-attends to and a pooled vector (mean
//! over the caption's words) for its adaLN conditioning.

use candle_core::{Tensor, D};
use candle_nn::{Embedding, Linear, Module, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::nn::{attention, merge_heads, split_heads, LayerNorm, Mlp};
use crate::vae::blocks::apply_last;
use crate::Result;

use super::PAD_ID;

/// Hyper-parameters of the text encoder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub max_len: usize,
    pub width: usize,
    pub depth: usize,
    pub heads: usize,
}

impl TextConfig {
    /// The text encoder a DiT reads: its context width and length, 2 blocks
    /// of 4 heads; the vocabulary size is set from the training captions.
    pub fn for_dit(dit: &crate::dit::DitConfig) -> Self {
        Self {
            vocab_size: 0,
            max_len: dit.context_len,
            width: dit.context_dim,
            depth: 2,
            heads: 4,
        }
    }
}

struct Block {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    norm2: LayerNorm,
    mlp: Mlp,
    heads: usize,
}

impl Block {
    fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.width;
        Ok(Self {
            norm1: LayerNorm::new(d, vb.pp("norm1"))?,
            qkv: candle_nn::linear(d, 3 * d, vb.pp("qkv"))?,
            proj: candle_nn::linear(d, d, vb.pp("proj"))?,
            norm2: LayerNorm::new(d, vb.pp("norm2"))?,
            mlp: Mlp::new(d, 4 * d, vb.pp("mlp"))?,
            heads: cfg.heads,
        })
    }

    /// `x` `(B, L, D)`, `bias` `(B, 1, 1, L)` masking padding keys.
    fn forward(&self, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let d = x.dim(D::Minus1)?;
        let qkv = apply_last(&self.qkv, &self.norm1.forward(x)?)?;
        let head = |i: usize| split_heads(&qkv.narrow(D::Minus1, i * d, d)?, self.heads);
        let a = merge_heads(&attention(&head(0)?, &head(1)?, &head(2)?, Some(bias))?)?;
        let x = (x + apply_last(&self.proj, &a)?)?;
        Ok((&x + self.mlp.forward(&self.norm2.forward(&x)?)?)?)
    }
}

/// The caption encoder.
pub struct TextEncoder {
    pub config: TextConfig,
    words: Embedding,
    positions: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
}

impl TextEncoder {
    pub fn new(config: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let d = config.width;
        if config.heads == 0 || d == 0 || d % config.heads != 0 {
            crate::invalid!(
                "the text encoder's width {d} must split into {} heads (both at least 1)",
                config.heads
            );
        }
        if config.max_len == 0 {
            crate::invalid!("the text encoder must read at least 1 token");
        }
        Ok(Self {
            config: config.clone(),
            words: candle_nn::embedding(config.vocab_size, d, vb.pp("words"))?,
            positions: vb.get_with_hints(
                (config.max_len, d),
                "positions",
                candle_nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            )?,
            blocks: (0..config.depth)
                .map(|i| Block::new(config, vb.pp("blocks").pp(i)))
                .collect::<Result<_>>()?,
            norm: LayerNorm::new(d, vb.pp("norm"))?,
        })
    }

    /// # Shapes
    /// - `ids`: `(B, L)` u32, padded with [`PAD_ID`]
    /// - returns context `(B, L, D)` and pooled `(B, D)`
    pub fn forward(&self, ids: &Tensor) -> Result<(Tensor, Tensor)> {
        let l = ids.dim(1)?;
        let dtype = self.positions.dtype();
        let keep = ids.ne(PAD_ID)?.to_dtype(dtype)?; // (B, L) 1 for words
                                                     // padding keys get -1e9; every caption has a first token, so no row is empty
        let bias = crate::nn::key_padding_bias(&keep, dtype)?;
        let mut x = self
            .words
            .forward(ids)?
            .broadcast_add(&self.positions.narrow(0, 0, l)?)?;
        for block in &self.blocks {
            x = block.forward(&x, &bias)?;
        }
        let x = self.norm.forward(&x)?;
        let weights = keep.broadcast_div(&keep.sum_keepdim(1)?)?.unsqueeze(2)?; // (B, L, 1)
        let pooled = x.broadcast_mul(&weights)?.sum(1)?;
        Ok((x, pooled))
    }
}
