//! The diffusion transformer (DiT, Peebles and Xie 2023) over spacetime
//! patches, conditioned on the timestep by adaLN-Zero and on text by
//! cross-attention (as in PixArt-alpha), with 3D RoPE so that any `(t, h, w)`
//! grid works. The architecture is the one `config.rs` counts.
//!
//! The model knows nothing about diffusion: it maps a noisy latent, a time
//! in `[0, 1]` and text features to a prediction of the same shape.

use std::sync::Mutex;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Linear, VarBuilder};

use super::DitConfig;
use crate::nn::{
    apply_rope, attention, key_padding_bias, merge_heads, rope_3d, sincos_3d, sinusoidal,
    split_heads, LayerNorm, Mlp,
};
use crate::patch::{patchify, positions, unpatchify, Remainder};
use crate::vae::blocks::{apply_last, linear_zero};
use crate::{invalid, Result};

/// `layer_norm(x) * (1 + scale) + shift`, with `shift`, `scale` `(B, 1 or N, D)`.
fn norm_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    crate::ops::norm_modulate(x, shift, scale, 1e-6)
}

/// A 3x3 depthwise convolution over each `(h, w)` plane of the token grid,
/// zero padding: `(B, N, D) -> (B, N, D)`, the tokens in raster order of a
/// full `[t, h, w]` grid. Weights `(9, D)`, slot `ky * 3 + kx`, no bias.
struct LocalMix {
    weight: Tensor,
}

impl LocalMix {
    fn new(d: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints((9, d), "weight", candle_nn::Init::Const(0.0))?;
        Ok(Self { weight })
    }

    fn forward(&self, x: &Tensor, grid: [usize; 3]) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        let [t, h, w] = grid;
        let g = crate::ops::gather_neighbours(&x.reshape((b * t, h, w, d))?, 3, 3)?; // (B*T, H, W, 9D)
        Ok(g.reshape((b, n, 9, d))?
            .broadcast_mul(&self.weight)?
            .sum(2)?)
    }
}

/// The `[t, h, w]` grid `positions` fill in raster order, if they do (one
/// clip's tokens; a packed sequence does not).
fn full_grid(positions: &[[usize; 3]]) -> Option<[usize; 3]> {
    let last = positions.last()?;
    let grid = [last[0] + 1, last[1] + 1, last[2] + 1];
    let raster = positions.len() == grid.iter().product::<usize>()
        && positions
            .iter()
            .enumerate()
            .all(|(i, p)| *p == [i / (grid[1] * grid[2]), i / grid[2] % grid[1], i % grid[2]]);
    raster.then_some(grid)
}

/// Cross-attention from the video tokens to the caption.
struct Cross {
    norm: LayerNorm,
    q: Linear,
    kv: Linear,
    proj: Linear,
}

/// The caption's side of a joint-attention block (`DitConfig::joint_text`).
struct TextStream {
    norm1: LayerNorm,
    qkv: Linear,
    /// Output projection, LayerNorm and MLP; `None` in the last block, whose
    /// text outputs nothing reads.
    update: Option<(Linear, LayerNorm, Mlp)>,
}

struct Block {
    ada: Linear,
    qkv: Linear,
    proj: Linear,
    /// Exactly one of these two: `cross` without `joint_text`, else `text`.
    cross: Option<Cross>,
    text: Option<TextStream>,
    mlp: Mlp,
    mix: Option<LocalMix>,
    heads: usize,
}

/// What every block needs besides the tokens.
pub struct Conditioning<'a> {
    /// `(B, 1 or N, D)`: timestep and pooled text, per clip or per token.
    pub c: &'a Tensor,
    /// `(B, L, D)`: projected text context (with `joint_text`, the text
    /// stream's input to the first block).
    pub context: &'a Tensor,
    /// `(B, 1, 1 or N, L)` additive: hides padding (and, packed, other clips' captions).
    pub context_bias: &'a Tensor,
    /// With `joint_text`: `(B, 1, 1, N + L)` additive over the keys of both
    /// streams, 0 for every video token and `context_bias` for the caption's.
    pub joint_bias: Option<&'a Tensor>,
    /// `(B or 1, 1, N, N)` additive self-attention mask (packing), if any.
    pub self_bias: Option<&'a Tensor>,
    /// `context_bias` as the fused attention kernel's segment ids
    /// `(ones (B, N), keep (B, L))` u32, where that kernel runs (a GPU, one
    /// caption per clip); else `None` and the bias is added to the scores.
    pub context_segments: Option<(&'a Tensor, &'a Tensor)>,
    /// RoPE tables `(N, Dh / 2)`.
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
    /// The tokens' `[t, h, w]` grid, for the local mix.
    pub grid: Option<[usize; 3]>,
}

impl Block {
    fn new(cfg: &DitConfig, last: bool, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden;
        let (cross, text) = if cfg.joint_text {
            let update = if last {
                None
            } else {
                Some((
                    candle_nn::linear(d, d, vb.pp("text_proj"))?,
                    LayerNorm::new(d, vb.pp("text_norm2"))?,
                    Mlp::new(d, cfg.mlp_ratio * d, vb.pp("text_mlp"))?,
                ))
            };
            let text = TextStream {
                norm1: LayerNorm::new(d, vb.pp("text_norm1"))?,
                qkv: candle_nn::linear(d, 3 * d, vb.pp("text_qkv"))?,
                update,
            };
            (None, Some(text))
        } else {
            // the names of the checkpoints written before joint_text existed
            let cross = Cross {
                norm: LayerNorm::new(d, vb.pp("norm_cross"))?,
                q: candle_nn::linear(d, d, vb.pp("q"))?,
                kv: candle_nn::linear(d, 2 * d, vb.pp("kv"))?,
                proj: candle_nn::linear(d, d, vb.pp("cross_proj"))?,
            };
            (Some(cross), None)
        };
        Ok(Self {
            ada: linear_zero(d, 6 * d, vb.pp("ada"))?,
            qkv: candle_nn::linear(d, 3 * d, vb.pp("qkv"))?,
            proj: candle_nn::linear(d, d, vb.pp("proj"))?,
            cross,
            text,
            mlp: Mlp::new(d, cfg.mlp_ratio * d, vb.pp("mlp"))?,
            mix: if cfg.local_mix {
                Some(LocalMix::new(d, vb.pp("mix"))?)
            } else {
                None
            },
            heads: cfg.heads,
        })
    }

    /// `(B, N, D) -> (B, N, D)`; `text` is the caption's stream `(B, L, D)`
    /// with `joint_text`, which the block returns updated (else unchanged).
    fn forward(&self, x: &Tensor, text: &Tensor, cond: &Conditioning) -> Result<(Tensor, Tensor)> {
        let d = x.dim(D::Minus1)?;
        let m = apply_last(&self.ada, &cond.c.silu()?)?; // (B, 1|N, 6D)
        let chunk = |i: usize| m.narrow(D::Minus1, i * d, d);
        let (shift1, scale1, gate1) = (chunk(0)?, chunk(1)?, chunk(2)?);
        let (shift2, scale2, gate2) = (chunk(3)?, chunk(4)?, chunk(5)?);

        // self-attention over the spacetime tokens, positions by 3D RoPE
        // (with joint_text, over the caption's tokens too, which have none)
        let h = norm_modulate(x, &shift1, &scale1)?;
        let qkv = self.heads_of(&apply_last(&self.qkv, &h)?)?;
        let q = apply_rope(&qkv.get(0)?, cond.cos, cond.sin)?;
        let k = apply_rope(&qkv.get(1)?, cond.cos, cond.sin)?;
        let v = qkv.get(2)?;
        let (x, text) = match (&self.text, &self.cross, cond.joint_bias) {
            (Some(stream), _, Some(bias)) => {
                self.joint(x, text, [&q, &k, &v], &gate1, stream, bias)?
            }
            (None, Some(cross), _) => {
                let a = merge_heads(&attention(&q, &k, &v, cond.self_bias)?)?;
                let x = (x + apply_last(&self.proj, &a)?.broadcast_mul(&gate1)?)?;
                (cross.forward(&x, cond, self.heads)?, text.clone())
            }
            _ => invalid!(
                "a DiT block's text conditioning does not match its inputs (joint attention without its key mask, or neither kind)"
            ),
        };

        // MLP, its input first mixed over each token's neighbours
        let mut h = norm_modulate(&x, &shift2, &scale2)?;
        if let (Some(mix), Some(grid)) = (&self.mix, cond.grid) {
            h = (&h + mix.forward(&h, grid)?)?;
        }
        Ok(((&x + self.mlp.forward(&h)?.broadcast_mul(&gate2)?)?, text))
    }

    /// Joint attention: the video's `q, k, v` `(B, H, N, Dh)` (RoPE applied)
    /// and the caption stream's attend over both, keys masked by `bias`
    /// (`Conditioning::joint_bias`); returns `x` with the
    /// gated video output added, and the caption stream updated.
    fn joint(
        &self,
        x: &Tensor,
        text: &Tensor,
        [q, k, v]: [&Tensor; 3],
        gate: &Tensor,
        stream: &TextStream,
        bias: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let n = x.dim(1)?;
        let l = text.dim(1)?;
        let tqkv = self.heads_of(&apply_last(&stream.qkv, &stream.norm1.forward(text)?)?)?;
        let cat = |i: usize, video: &Tensor| -> Result<Tensor> {
            Ok(Tensor::cat(&[video, &tqkv.get(i)?], 2)?)
        };
        let a = attention(&cat(0, q)?, &cat(1, k)?, &cat(2, v)?, Some(bias))?;
        let video = merge_heads(&a.narrow(2, 0, n)?)?;
        let x = (x + apply_last(&self.proj, &video)?.broadcast_mul(gate)?)?;
        let text = match &stream.update {
            Some((proj, norm2, mlp)) => {
                let t = merge_heads(&a.narrow(2, n, l)?)?;
                let t = (text + apply_last(proj, &t)?)?;
                (&t + mlp.forward(&norm2.forward(&t)?)?)?
            }
            None => text.clone(),
        };
        Ok((x, text))
    }

    /// `(B, S, 3D) -> (3, B, H, S, Dh)` in one copy: q, k and v are then
    /// contiguous views (narrowing first would copy each twice).
    fn heads_of(&self, qkv: &Tensor) -> Result<Tensor> {
        let (b, s, d3) = qkv.dims3()?;
        Ok(qkv
            .reshape((b, s, 3, self.heads, d3 / 3 / self.heads))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?)
    }
}

impl Cross {
    /// `x` plus its cross-attention to the caption.
    fn forward(&self, x: &Tensor, cond: &Conditioning, heads: usize) -> Result<Tensor> {
        let d = x.dim(D::Minus1)?;
        let q = split_heads(&apply_last(&self.q, &self.norm.forward(x)?)?, heads)?;
        let kv = apply_last(&self.kv, cond.context)?;
        let k = split_heads(&kv.narrow(D::Minus1, 0, d)?, heads)?;
        let v = split_heads(&kv.narrow(D::Minus1, d, d)?, heads)?;
        let a = match cond.context_segments {
            Some(segments) => crate::ops::flash_attention(&q, &k, &v, Some(segments))?,
            None => attention(&q, &k, &v, Some(cond.context_bias))?,
        };
        Ok((x + apply_last(&self.proj, &merge_heads(&a)?)?)?)
    }
}

/// The position tables of the last grid a forward saw: the RoPE `cos`,
/// `sin` and the absolute features, on the model's device and in its dtype.
/// Built on the CPU (about 1.3 M sines and cosines at 32k tokens, tens of
/// milliseconds) and copied over, so rebuilding them every step would cost
/// a GPU step a large share of its time at small grids.
struct PositionTables {
    positions: Vec<[usize; 3]>,
    device: Device,
    cos: Tensor,
    sin: Tensor,
    features: Option<Tensor>,
}

/// The diffusion transformer.
pub struct Dit {
    pub config: DitConfig,
    x_embed: Linear,
    /// Absolute positions, when the config asks for them: `(D, 6F)`, zero at start.
    pos_proj: Option<Linear>,
    /// The previous clean estimate's patches, with `self_cond`: `(D, P)`,
    /// zero at start, no bias.
    estimate_embed: Option<Linear>,
    t_mlp1: Linear,
    t_mlp2: Linear,
    context_proj: Linear,
    pooled_proj: Linear,
    blocks: Vec<Block>,
    final_ada: Linear,
    final_linear: Linear,
    tables: Mutex<Option<PositionTables>>,
}

impl Dit {
    pub fn new(config: &DitConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let (d, p, e) = (config.hidden, config.token_dim(), config.context_dim);
        Ok(Self {
            config: config.clone(),
            x_embed: candle_nn::linear(p, d, vb.pp("x_embed"))?,
            pos_proj: if config.pos_embed {
                let shape = (d, config.pos_features() as usize);
                let w = vb.get_with_hints(shape, "pos_proj.weight", candle_nn::Init::Const(0.0))?;
                Some(Linear::new(w, None))
            } else {
                None
            },
            estimate_embed: if config.self_cond {
                let w = vb.get_with_hints(
                    (d, p),
                    "estimate_embed.weight",
                    candle_nn::Init::Const(0.0),
                )?;
                Some(Linear::new(w, None))
            } else {
                None
            },
            t_mlp1: candle_nn::linear(config.freq_dim, d, vb.pp("t_mlp1"))?,
            t_mlp2: candle_nn::linear(d, d, vb.pp("t_mlp2"))?,
            context_proj: candle_nn::linear(e, d, vb.pp("context_proj"))?,
            pooled_proj: candle_nn::linear(e, d, vb.pp("pooled_proj"))?,
            blocks: (0..config.depth)
                .map(|i| Block::new(config, i + 1 == config.depth, vb.pp("blocks").pp(i)))
                .collect::<Result<_>>()?,
            final_ada: linear_zero(d, 2 * d, vb.pp("final_ada"))?,
            final_linear: linear_zero(d, p, vb.pp("final_linear"))?,
            tables: Mutex::new(None),
        })
    }

    /// RoPE `(cos, sin)` and, with `pos_embed`, the absolute features of
    /// `positions` on `device`: the cached ones when the grid is the last
    /// one seen (every step of a sampler, every batch of a training run),
    /// else built and cached.
    fn position_tables(
        &self,
        positions: &[[usize; 3]],
        device: &Device,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        // a poisoned lock only means another thread panicked mid-build:
        // the cache is then rebuilt, never trusted
        {
            let cache = self.tables.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(t) = cache.as_ref() {
                if t.positions == positions && t.device.same_device(device) {
                    return Ok((t.cos.clone(), t.sin.clone(), t.features.clone()));
                }
            }
        }
        // built without the lock: an op may run other tasks of the CPU pool
        // on this thread (a training shard's among them), and one of those
        // asking for the lock here would wait on itself
        let (cos, sin) = rope_3d(
            positions,
            self.config.rope_split(),
            self.config.rope_base,
            device,
        )?;
        let features = match self.pos_proj {
            Some(_) => Some(sincos_3d(positions, device)?.to_dtype(self.dtype())?),
            None => None,
        };
        *self.tables.lock().unwrap_or_else(|e| e.into_inner()) = Some(PositionTables {
            positions: positions.to_vec(),
            device: device.clone(),
            cos: cos.clone(),
            sin: sin.clone(),
            features: features.clone(),
        });
        Ok((cos, sin, features))
    }

    /// The dtype of the weights (f32 on the CPU; bf16 or f16 on a GPU too).
    pub fn dtype(&self) -> DType {
        self.x_embed.weight().dtype()
    }

    /// The conditioning vector `c = t_embedder(t) + pooled_proj(pooled)`:
    /// `t` `(B,)` in `[0, 1]`, `pooled` `(B, E)` -> `(B, D)`.
    pub fn condition(&self, t: &Tensor, pooled: &Tensor) -> Result<Tensor> {
        // times in [0, 1] scaled to DiT's 0..1000 so the sinusoid bands
        // spread; scaled in f32 (in bf16, 1000 t is off by up to 2)
        let t = t.to_dtype(DType::F32)?;
        let freqs =
            sinusoidal(&(t * 1000.0)?, self.config.freq_dim, 10_000.0)?.to_dtype(self.dtype())?;
        let t_emb = self
            .t_mlp2
            .forward_t(&self.t_mlp1.forward_t(&freqs)?.silu()?)?;
        Ok((t_emb + apply_last(&self.pooled_proj, pooled)?)?)
    }

    /// The transformer over tokens already embedded: `tokens` `(B, N, P)` at
    /// grid `positions` -> predictions `(B, N, P)`. `c` is `(B, 1 or N, D)`,
    /// `context` the raw text features `(B, L, E)`. `estimate`, the previous
    /// clean estimate's tokens `(B, N, P)`, is read by a `self_cond` model
    /// (none: as if zeros) and refused by any other.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_tokens(
        &self,
        tokens: &Tensor,
        estimate: Option<&Tensor>,
        positions: &[[usize; 3]],
        c: &Tensor,
        context: &Tensor,
        context_bias: &Tensor,
        self_bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (cos, sin, features) = self.position_tables(positions, tokens.device())?;
        let context = apply_last(&self.context_proj, context)?;
        // on a GPU, the caption's padding mask as segment ids for the fused
        // kernel: kept words have a bias of exactly 0
        let context_segments = match context_bias.dims4()? {
            (b, 1, 1, l)
                if !self.config.joint_text
                    && tokens.device().is_cuda()
                    && crate::ops::cuda::COMPILED =>
            {
                let keep = context_bias
                    .reshape((b, l))?
                    .eq(0.0)?
                    .to_dtype(DType::U32)?;
                let queries = Tensor::ones((b, tokens.dim(1)?), DType::U32, tokens.device())?;
                Some((queries, keep))
            }
            _ => None,
        };
        // only a mixing DiT needs the grid: others skip the scan of positions
        let grid = if self.config.local_mix {
            full_grid(positions)
        } else {
            None
        };
        if self.config.joint_text && (self_bias.is_some() || context_bias.dim(2)? != 1) {
            invalid!(
                "this DiT attends jointly to video and caption tokens (joint_text), which needs one clip and its caption per sequence: packed sequences are not supported"
            );
        }
        if self.config.local_mix && grid.is_none() {
            invalid!(
                "this DiT mixes neighbouring tokens (local_mix), which needs one clip's full grid of tokens per sequence: packed or partial sequences are not supported"
            );
        }
        // built once a forward: every video key is seen, the caption's
        // padding never is
        let joint_bias = if self.config.joint_text {
            let (b, n) = (tokens.dim(0)?, tokens.dim(1)?);
            let video_keys = Tensor::zeros((b, 1, 1, n), context_bias.dtype(), tokens.device())?;
            Some(Tensor::cat(&[&video_keys, context_bias], 3)?)
        } else {
            None
        };
        let cond = Conditioning {
            joint_bias: joint_bias.as_ref(),
            grid,
            c,
            context: &context,
            context_bias,
            context_segments: context_segments.as_ref().map(|(q, k)| (q, k)),
            self_bias,
            cos: &cos,
            sin: &sin,
        };
        let mut x = apply_last(&self.x_embed, tokens)?; // (B, N, D)
        match (&self.estimate_embed, estimate) {
            (Some(embed), Some(estimate)) => {
                if estimate.dims() != tokens.dims() {
                    invalid!(
                        "the clean estimate has tokens {:?}, the input {:?}",
                        estimate.dims(),
                        tokens.dims()
                    );
                }
                x = (x + apply_last(embed, estimate)?)?;
            }
            (None, Some(_)) => invalid!(
                "this DiT was not trained with self-conditioning (self_cond), so it reads no clean estimate"
            ),
            (_, None) => {}
        }
        if let (Some(pos_proj), Some(features)) = (&self.pos_proj, &features) {
            x = x.broadcast_add(&pos_proj.forward_t(features)?)?; // + (N, D)
        }
        let mut text = context.clone();
        for block in &self.blocks {
            (x, text) = block.forward(&x, &text, &cond)?;
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
        self.forward_with_estimate(x, None, t, context, pooled, context_keep)
    }

    /// [`Dit::forward`] with the previous clean estimate of `x`'s clip,
    /// `(B, C, T', H', W')` (see [`DitConfig::self_cond`]).
    pub fn forward_with_estimate(
        &self,
        x: &Tensor,
        estimate: Option<&Tensor>,
        t: &Tensor,
        context: &Tensor,
        pooled: &Tensor,
        context_keep: &Tensor,
    ) -> Result<Tensor> {
        let (_, c, lt, lh, lw) = x.dims5()?;
        if c != self.config.latent_channels {
            invalid!(
                "the DiT takes {} latent channels, got {c}",
                self.config.latent_channels
            );
        }
        let patches = patchify(x, self.config.patch, Remainder::Reject)?;
        let estimate = match estimate {
            Some(e) if e.dims() != x.dims() => invalid!(
                "the clean estimate is {:?}, the latent {:?}",
                e.dims(),
                x.dims()
            ),
            Some(e) => Some(
                patchify(
                    &e.to_dtype(x.dtype())?,
                    self.config.patch,
                    Remainder::Reject,
                )?
                .tokens,
            ),
            None => None,
        };
        let cond = self.condition(t, pooled)?.unsqueeze(1)?; // (B, 1, D)
        let context_bias = key_padding_bias(context_keep, self.dtype())?; // (B, 1, 1, L)
        let out = self.forward_tokens(
            &patches.tokens,
            estimate.as_ref(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::{TextConfig, TextEncoder};
    use crate::train::randn;
    use candle_core::Device;
    use candle_nn::VarMap;

    use crate::ops::test_util::rel_diff;

    /// The DiT and the text encoder in bf16 and f16 on the CPU agree with
    /// f32: every stage follows the weights' dtype (a stage that does not
    /// fails on a dtype mismatch; an overflow shows up as a NaN, which fails
    /// the comparison). What a GPU run in bf16 needs, checked without one.
    #[test]
    fn half_precision_forwards_agree_with_f32() {
        let dev = Device::Cpu;
        let cfg = DitConfig {
            depth: 2,
            ..crate::preset::preset("tiny").unwrap().dit
        };
        let (model, varmap) = crate::bench::random_dit(&cfg, 3, &dev).unwrap();
        let weights = crate::checkpoint::named_tensors(&varmap).unwrap();
        let mut rng = crate::rng::Rng::new(4);
        let x = randn(&mut rng, &[2, cfg.latent_channels, 2, 8, 8], &dev).unwrap();
        let t = Tensor::new(&[0.25f32, 0.75], &dev).unwrap();
        let ctx = randn(&mut rng, &[2, cfg.context_len, cfg.context_dim], &dev).unwrap();
        let pooled = randn(&mut rng, &[2, cfg.context_dim], &dev).unwrap();
        let keep: Vec<f32> = (0..2 * cfg.context_len)
            .map(|j| f32::from(j % cfg.context_len < 5 + 7 * (j / cfg.context_len)))
            .collect();
        let keep = Tensor::from_vec(keep, (2, cfg.context_len), &dev).unwrap();
        let want = model.forward(&x, &t, &ctx, &pooled, &keep).unwrap();

        let text_cfg = TextConfig {
            vocab_size: 12,
            max_len: 6,
            width: 16,
            depth: 1,
            heads: 2,
        };
        let text_vars = VarMap::new();
        TextEncoder::new(
            &text_cfg,
            VarBuilder::from_varmap(&text_vars, DType::F32, &dev),
        )
        .unwrap();
        crate::train::seeded_init(&text_vars, 5).unwrap();
        let text_weights = crate::checkpoint::named_tensors(&text_vars).unwrap();
        let text = |dtype| {
            TextEncoder::new(
                &text_cfg,
                VarBuilder::from_tensors(text_weights.clone(), dtype, &dev),
            )
            .unwrap()
        };
        // the second caption is padded after two words
        let ids = Tensor::new(&[[3u32, 4, 5, 6, 7, 8], [9, 10, 0, 0, 0, 0]], &dev).unwrap();
        let (want_ctx, want_pooled) = text(DType::F32).forward(&ids).unwrap();

        for (dtype, tol) in [(DType::BF16, 5e-2), (DType::F16, 1e-2)] {
            let half =
                Dit::new(&cfg, VarBuilder::from_tensors(weights.clone(), dtype, &dev)).unwrap();
            assert_eq!(half.dtype(), dtype);
            let on = |t: &Tensor| t.to_dtype(dtype).unwrap();
            let got = half
                .forward(&on(&x), &on(&t), &on(&ctx), &on(&pooled), &on(&keep))
                .unwrap();
            assert_eq!(got.dtype(), dtype);
            let diff = rel_diff(&got, &want);
            assert!(diff < tol, "DiT in {dtype:?} differs from f32 by {diff}");

            let (c, p) = text(dtype).forward(&ids).unwrap();
            assert_eq!((c.dtype(), p.dtype()), (dtype, dtype));
            let diff = rel_diff(&c, &want_ctx).max(rel_diff(&p, &want_pooled));
            assert!(
                diff < tol,
                "text encoder in {dtype:?} differs from f32 by {diff}"
            );
        }
    }

    /// The local mix is a 3x3 depthwise convolution over each frame's
    /// `(h, w)` plane with zero padding: checked against a direct loop on a
    /// 2 x (2, 3, 4) grid with random weights; `full_grid` accepts only a
    /// raster-order full grid.
    #[test]
    fn local_mix_is_a_depthwise_3x3_convolution() {
        let dev = Device::Cpu;
        let (b, [t, h, w], d) = (2, [2, 3, 4], 5);
        let mut rng = crate::rng::Rng::new(11);
        let x = randn(&mut rng, &[b, t * h * w, d], &dev).unwrap();
        let mix = LocalMix {
            weight: randn(&mut rng, &[9, d], &dev).unwrap(),
        };
        let got = mix
            .forward(&x, [t, h, w])
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        let (xv, wv) = (
            x.to_vec3::<f32>().unwrap(),
            mix.weight.to_vec2::<f32>().unwrap(),
        );
        for bi in 0..b {
            for (i, row) in got[bi].iter().enumerate() {
                let (ti, yi, xi) = (i / (h * w), i / w % h, i % w);
                for c in 0..d {
                    let mut want = 0.0f32;
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (y, x) = (yi + ky, xi + kx);
                            if (1..=h).contains(&y) && (1..=w).contains(&x) {
                                let j = ti * h * w + (y - 1) * w + (x - 1);
                                want += wv[ky * 3 + kx][c] * xv[bi][j][c];
                            }
                        }
                    }
                    assert!((row[c] - want).abs() < 1e-5, "token {i} channel {c}");
                }
            }
        }
        let grid = crate::patch::positions([t, h, w]);
        assert_eq!(full_grid(&grid), Some([t, h, w]));
        assert_eq!(full_grid(&grid[..grid.len() - 1]), None);
        let mut swapped = grid.clone();
        swapped.swap(0, 1);
        assert_eq!(full_grid(&swapped), None);
        assert_eq!(full_grid(&[]), None);
    }

    /// The cached position tables follow the grid: a forward at one grid,
    /// another grid, then the first again gives what fresh models give.
    #[test]
    fn cached_position_tables_follow_the_grid() {
        let dev = Device::Cpu;
        let cfg = DitConfig {
            depth: 1,
            pos_embed: true,
            ..crate::preset::preset("tiny").unwrap().dit
        };
        let (model, varmap) = crate::bench::random_dit(&cfg, 7, &dev).unwrap();
        let weights = crate::checkpoint::named_tensors(&varmap).unwrap();
        let mut rng = crate::rng::Rng::new(8);
        let ctx = randn(&mut rng, &[1, cfg.context_len, cfg.context_dim], &dev).unwrap();
        let pooled = randn(&mut rng, &[1, cfg.context_dim], &dev).unwrap();
        let keep = Tensor::ones((1, cfg.context_len), DType::F32, &dev).unwrap();
        let t = Tensor::new(&[0.5f32], &dev).unwrap();
        let small = randn(&mut rng, &[1, cfg.latent_channels, 2, 4, 4], &dev).unwrap();
        let large = randn(&mut rng, &[1, cfg.latent_channels, 2, 8, 4], &dev).unwrap();
        let run = |m: &Dit, x: &Tensor| m.forward(x, &t, &ctx, &pooled, &keep).unwrap();
        let fresh = || {
            Dit::new(
                &cfg,
                VarBuilder::from_tensors(weights.clone(), DType::F32, &dev),
            )
            .unwrap()
        };
        let (want_small, want_large) = (run(&fresh(), &small), run(&fresh(), &large));
        for (x, want) in [
            (&small, &want_small),
            (&large, &want_large),
            (&small, &want_small),
        ] {
            let got = run(&model, x);
            assert_eq!(got.dims(), want.dims());
            assert_eq!(rel_diff(&got, want), 0.0);
        }
    }
}
