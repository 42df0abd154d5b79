//! The diffusion transformer (DiT, Peebles and Xie 2023) over spacetime
//! patches, conditioned on the timestep by adaLN-Zero and on text by
//! cross-attention (as in PixArt-alpha), with 3D RoPE so that any `(t, h, w)`
//! grid works. The architecture is the one `config.rs` counts.
//!
//! The model knows nothing about diffusion: it maps a noisy latent, a time
//! in `[0, 1]` and text features to a prediction of the same shape.

use candle_core::{Tensor, D};
use candle_nn::{Linear, VarBuilder};

use super::DitConfig;
use crate::nn::{
    apply_rope, attention, merge_heads, rope_3d, sinusoidal, split_heads, LayerNorm, Mlp,
};
use crate::patch::{patchify, positions, unpatchify, Remainder};
use crate::vae::blocks::{apply_last, linear_zero};
use crate::{invalid, Result};

/// `layer_norm(x) * (1 + scale) + shift`, with `shift`, `scale` `(B, 1 or N, D)`.
fn norm_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    crate::ops::norm_modulate(x, shift, scale, 1e-6)
}

struct Block {
    ada: Linear,
    qkv: Linear,
    proj: Linear,
    norm_cross: LayerNorm,
    q: Linear,
    kv: Linear,
    cross_proj: Linear,
    mlp: Mlp,
    heads: usize,
}

/// What every block needs besides the tokens.
pub struct Conditioning<'a> {
    /// `(B, 1 or N, D)`: timestep and pooled text, per clip or per token.
    pub c: &'a Tensor,
    /// `(B, L, D)`: projected text context.
    pub context: &'a Tensor,
    /// `(B, 1, 1 or N, L)` additive: hides padding (and, packed, other clips' captions).
    pub context_bias: &'a Tensor,
    /// `(B or 1, 1, N, N)` additive self-attention mask (packing), if any.
    pub self_bias: Option<&'a Tensor>,
    /// RoPE tables `(N, Dh / 2)`.
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
}

impl Block {
    fn new(cfg: &DitConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden;
        Ok(Self {
            ada: linear_zero(d, 6 * d, vb.pp("ada"))?,
            qkv: candle_nn::linear(d, 3 * d, vb.pp("qkv"))?,
            proj: candle_nn::linear(d, d, vb.pp("proj"))?,
            norm_cross: LayerNorm::new(d, vb.pp("norm_cross"))?,
            q: candle_nn::linear(d, d, vb.pp("q"))?,
            kv: candle_nn::linear(d, 2 * d, vb.pp("kv"))?,
            cross_proj: candle_nn::linear(d, d, vb.pp("cross_proj"))?,
            mlp: Mlp::new(d, cfg.mlp_ratio * d, vb.pp("mlp"))?,
            heads: cfg.heads,
        })
    }

    /// `(B, N, D) -> (B, N, D)`.
    fn forward(&self, x: &Tensor, cond: &Conditioning) -> Result<Tensor> {
        let d = x.dim(D::Minus1)?;
        let m = apply_last(&self.ada, &cond.c.silu()?)?; // (B, 1|N, 6D)
        let chunk = |i: usize| m.narrow(D::Minus1, i * d, d);
        let (shift1, scale1, gate1) = (chunk(0)?, chunk(1)?, chunk(2)?);
        let (shift2, scale2, gate2) = (chunk(3)?, chunk(4)?, chunk(5)?);

        // self-attention over the spacetime tokens, positions by 3D RoPE
        let h = norm_modulate(x, &shift1, &scale1)?;
        let qkv = apply_last(&self.qkv, &h)?;
        let head = |i: usize| split_heads(&qkv.narrow(D::Minus1, i * d, d)?, self.heads);
        let q = apply_rope(&head(0)?, cond.cos, cond.sin)?;
        let k = apply_rope(&head(1)?, cond.cos, cond.sin)?;
        let a = merge_heads(&attention(&q, &k, &head(2)?, cond.self_bias)?)?;
        let x = (x + apply_last(&self.proj, &a)?.broadcast_mul(&gate1)?)?;

        // cross-attention to the caption
        let q = split_heads(
            &apply_last(&self.q, &self.norm_cross.forward(&x)?)?,
            self.heads,
        )?;
        let kv = apply_last(&self.kv, cond.context)?;
        let k = split_heads(&kv.narrow(D::Minus1, 0, d)?, self.heads)?;
        let v = split_heads(&kv.narrow(D::Minus1, d, d)?, self.heads)?;
        let a = merge_heads(&attention(&q, &k, &v, Some(cond.context_bias))?)?;
        let x = (&x + apply_last(&self.cross_proj, &a)?)?;

        // MLP
        let h = norm_modulate(&x, &shift2, &scale2)?;
        Ok((&x + self.mlp.forward(&h)?.broadcast_mul(&gate2)?)?)
    }
}

/// The diffusion transformer.
pub struct Dit {
    pub config: DitConfig,
    x_embed: Linear,
    t_mlp1: Linear,
    t_mlp2: Linear,
    context_proj: Linear,
    pooled_proj: Linear,
    blocks: Vec<Block>,
    final_ada: Linear,
    final_linear: Linear,
}

impl Dit {
    pub fn new(config: &DitConfig, vb: VarBuilder) -> Result<Self> {
        let (d, p, e) = (config.hidden, config.token_dim(), config.context_dim);
        if d % config.heads != 0 || (d / config.heads) % 2 != 0 {
            invalid!(
                "width {d} must split into {} heads of an even size",
                config.heads
            );
        }
        Ok(Self {
            config: config.clone(),
            x_embed: candle_nn::linear(p, d, vb.pp("x_embed"))?,
            t_mlp1: candle_nn::linear(config.freq_dim, d, vb.pp("t_mlp1"))?,
            t_mlp2: candle_nn::linear(d, d, vb.pp("t_mlp2"))?,
            context_proj: candle_nn::linear(e, d, vb.pp("context_proj"))?,
            pooled_proj: candle_nn::linear(e, d, vb.pp("pooled_proj"))?,
            blocks: (0..config.depth)
                .map(|i| Block::new(config, vb.pp("blocks").pp(i)))
                .collect::<Result<_>>()?,
            final_ada: linear_zero(d, 2 * d, vb.pp("final_ada"))?,
            final_linear: linear_zero(d, p, vb.pp("final_linear"))?,
        })
    }

    /// The conditioning vector `c = t_embedder(t) + pooled_proj(pooled)`:
    /// `t` `(B,)` in `[0, 1]`, `pooled` `(B, E)` -> `(B, D)`.
    pub fn condition(&self, t: &Tensor, pooled: &Tensor) -> Result<Tensor> {
        // times in [0, 1] scaled to DiT's 0..1000 so the sinusoid bands spread
        let freqs = sinusoidal(&(t * 1000.0)?, self.config.freq_dim, 10_000.0)?;
        let t_emb = self
            .t_mlp2
            .forward_t(&self.t_mlp1.forward_t(&freqs)?.silu()?)?;
        Ok((t_emb + apply_last(&self.pooled_proj, pooled)?)?)
    }

    /// The transformer over tokens already embedded: `tokens` `(B, N, P)` at
    /// grid `positions` -> predictions `(B, N, P)`. `c` is `(B, 1 or N, D)`,
    /// `context` the raw text features `(B, L, E)`.
    pub fn forward_tokens(
        &self,
        tokens: &Tensor,
        positions: &[[usize; 3]],
        c: &Tensor,
        context: &Tensor,
        context_bias: &Tensor,
        self_bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (cos, sin) = rope_3d(positions, self.config.head_dim(), tokens.device())?;
        let context = apply_last(&self.context_proj, context)?;
        let cond = Conditioning {
            c,
            context: &context,
            context_bias,
            self_bias,
            cos: &cos,
            sin: &sin,
        };
        let mut x = apply_last(&self.x_embed, tokens)?; // (B, N, D)
        for block in &self.blocks {
            x = block.forward(&x, &cond)?;
        }
        let d = self.config.hidden;
        let m = apply_last(&self.final_ada, &c.silu()?)?;
        let x = norm_modulate(&x, &m.narrow(D::Minus1, 0, d)?, &m.narrow(D::Minus1, d, d)?)?;
        apply_last(&self.final_linear, &x)
    }

    /// # Shapes
    /// - `x`: latent `(B, C, T', H', W')`; `t`: `(B,)` in `[0, 1]`
    /// - `context`: `(B, L, E)`, `pooled`: `(B, E)`, `context_keep`: `(B, L)`
    ///   f32, 1 for words and 0 for padding
    /// - returns `(B, C, T', H', W')`
    pub fn forward(
        &self,
        x: &Tensor,
        t: &Tensor,
        context: &Tensor,
        pooled: &Tensor,
        context_keep: &Tensor,
    ) -> Result<Tensor> {
        let (b, c, lt, lh, lw) = x.dims5()?;
        if c != self.config.latent_channels {
            invalid!(
                "the DiT takes {} latent channels, got {c}",
                self.config.latent_channels
            );
        }
        let patches = patchify(x, self.config.patch, Remainder::Reject)?;
        let cond = self.condition(t, pooled)?.unsqueeze(1)?; // (B, 1, D)
        let l = context_keep.dim(1)?;
        let context_bias = ((context_keep - 1.0)? * 1e9)?.reshape((b, 1, 1, l))?;
        let out = self.forward_tokens(
            &patches.tokens,
            &positions(patches.grid),
            &cond,
            context,
            &context_bias,
            None,
        )?;
        unpatchify(&out, patches.grid, self.config.patch, c, [lt, lh, lw])
    }
}

trait ForwardT {
    fn forward_t(&self, x: &Tensor) -> Result<Tensor>;
}

impl ForwardT for Linear {
    fn forward_t(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_core::Module::forward(self, x)?)
    }
}
