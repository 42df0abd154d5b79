//! DiT configuration and what one denoising step costs, counted from shapes.
//!
//! The block these counts describe (the model of issue 5 is built to match,
//! and a test compares the count with its real parameters):
//! ```text
//! c = t_embedder(t) + pooled_text_proj(text)                 (B, D)
//! x = x_embed(patches) [+ pos_proj(sincos(t, h, w))]          Linear(P, D) [Linear(6F, D), no bias]
//! per block:  shift/scale/gate x 2 = adaLN(SiLU(c))           Linear(D, 6D)
//!             x += gate1 * SelfAttn(modulate(LN(x)))           qkv Linear(D, 3D), out Linear(D, D), 3D RoPE
//!             x += CrossAttn(LN(x), context)                   q Linear(D, D), kv Linear(D, 2D), out Linear(D, D)
//!             x += gate2 * MLP(modulate(LN(x)))                Linear(D, rD), GELU, Linear(rD, D)
//!               [h = modulate(LN(x)); MLP(h + dwconv3x3(h))]   local_mix: (9, D) per block, no bias
//! final:      modulate(LN(x)) -> Linear(D, C*pt*ph*pw)        adaLN Linear(D, 2D)
//! ```
//! With `joint_text` (SD3's MMDiT, lighter) the cross-attention line goes
//! and the caption's tokens `s` (`L` of them, from the context projection)
//! become a second stream that shares the self-attention:
//! ```text
//! per block:  [x; s] attend jointly: video q, k, v as above (RoPE on the
//!             video's), text q, k, v = Linear(D, 3D)(LN(s)), LN affine
//!             x += gate1 * out(video rows)
//!             s += Linear(D, D)(text rows); s += MLP(LN(s))    not in the last block
//! ```
//! The text stream has no adaLN of its own, and the last block only reads
//! it (its text outputs would go nowhere).
//! With `self_cond`, `x` also adds `estimate_embed(patches of the previous
//! clean estimate)`, `Linear(P, D)` without bias; counted as if every
//! forward had an estimate (a sampler's first step has none).
//! A multiply-add counts as 2 FLOPs. Norms, softmax, RoPE and elementwise
//! ops are left out of the FLOP count (they are memory-bound and a few
//! percent of the total at these widths).

use serde::{Deserialize, Serialize};

use crate::patch::PatchSize;

/// Every hyper-parameter of a DiT. A field this build does not know (a
/// checkpoint from a newer minisora) is refused by name rather than dropped,
/// so that such a model is never run as another architecture.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DitConfig {
    /// Channels of the latent it denoises (the compression network's `C`).
    pub latent_channels: usize,
    pub patch: PatchSize,
    /// Model width `D`.
    pub hidden: usize,
    pub depth: usize,
    pub heads: usize,
    /// MLP hidden width is `mlp_ratio * D` (4 as in ViT and DiT).
    pub mlp_ratio: usize,
    /// Width of the text encoder's output (the cross-attention context).
    pub context_dim: usize,
    /// Number of text tokens the context holds.
    pub context_len: usize,
    /// Size of the sinusoidal timestep features fed to the timestep MLP (256
    /// as in DiT).
    pub freq_dim: usize,
    /// Add to each token's embedding a learned projection (zero at
    /// initialisation, no bias) of fixed sin-cos features of its absolute
    /// `(t, h, w)` place ([`crate::nn::sincos_3d`]), beside RoPE's relative
    /// positions: so that a token knows which group of frames it is in.
    /// Checkpoints written before it existed read as `false`.
    #[serde(default)]
    pub pos_embed: bool,
    /// In each block, mix the MLP's input over each token's 3x3 spatial
    /// neighbourhood before the MLP (a depthwise convolution, zero at
    /// initialisation: `h + dwconv3x3(h)`, as Sana's Mix-FFN and CPVT's
    /// position convolution do), so that neighbouring tokens can agree on
    /// detail such as where an edge runs. Needs the tokens of one full grid
    /// per sequence (no packing). Checkpoints written before it existed
    /// read as `false`.
    #[serde(default)]
    pub local_mix: bool,
    /// Base of the self-attention's 3D RoPE frequencies
    /// ([`crate::nn::rope_3d`]): pair `i` of an axis with `n` pairs turns
    /// `base^(-i / n)` radians per token. The default model (head size 32:
    /// 5 pairs for t, 5 for h, 6 for w, [`DitConfig::rope_pairs`] unset) has
    /// a grid of 1 x 8 x 8 tokens for a 16-frame clip; at
    /// RoFormer's 10000 only two pairs of h and two of w turn by more than
    /// half a radian across 8 tokens, at a base of 100 three of h and four
    /// of w. Checkpoints written before it existed read as 10000.
    #[serde(default = "rope_base_default")]
    pub rope_base: f64,
    /// How many of each head's `head_dim / 2` RoPE rotation pairs go to t,
    /// h and w; `None` (the presets, and checkpoints written before it
    /// existed) is [`crate::nn::rope_thirds`]. The default model's grid has
    /// one token position in time for a 16-frame clip, so its 5 t pairs
    /// never turn: `[0, 8, 8]` gives them to h and w (and leaves the time
    /// positions of longer clips to the absolute position features alone).
    /// Written only when set, so that a config without it reads the same in
    /// builds that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_pairs: Option<[usize; 3]>,
    /// Condition on the caption by joint attention (the module docs'
    /// second diagram, after SD3's MMDiT) instead of cross-attention: the
    /// caption's tokens are a stream of their own, updated in every block
    /// from the video tokens they attend to. One clip and one caption per
    /// sequence (no packing). Written only when set, so that a config
    /// without it reads the same in builds that predate it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub joint_text: bool,
    /// Self-conditioning (Chen et al. 2023, "Analog Bits"): the model also
    /// reads its own previous estimate of the clean latent, embedded by a
    /// linear map of its own (zero at initialisation, no bias) and added to
    /// the patch embedding. Half of the training steps first predict without
    /// an estimate and feed that prediction back (no gradient through it);
    /// a sampler feeds each step the data prediction of the step before.
    /// With no estimate the map is skipped, which equals an estimate of
    /// zeros. Written only when set, so that a config without it reads the
    /// same in builds that predate it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub self_cond: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn rope_base_default() -> f64 {
    crate::nn::ROPE_BASE
}

/// FLOPs of one DiT forward and what it holds in memory, per the module docs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepCost {
    /// Batch the figures are for (2 with classifier-free guidance).
    pub batch: usize,
    /// Video tokens per clip.
    pub tokens: usize,
    /// Self- and cross-attention scores and weighted sums (`QK^T`, `AV`):
    /// the part that grows with the square of the tokens.
    pub attention_flops: u64,
    /// Q, K, V and output projections of self- and cross-attention.
    pub attention_proj_flops: u64,
    pub mlp_flops: u64,
    /// Patch embedding, timestep MLP, adaLN modulation, final layer.
    pub other_flops: u64,
    pub total_flops: u64,
    /// Parameters of the DiT.
    pub params: u64,
    /// Peak activation memory of one forward without gradients (f32), with
    /// attention scores materialised: the residual stream, one block's
    /// normalised input, Q, K, V, attention output and MLP hidden, and one
    /// head-batch of scores.
    pub activation_bytes: u64,
}

impl DitConfig {
    /// Refuses a config no DiT can be built from (heads that do not split the
    /// width into even sizes), and a RoPE base of 1 or less: every pair would
    /// turn at the same rate (or grow), so the axes' frequencies would not
    /// spread.
    pub fn validate(&self) -> crate::Result<()> {
        let (d, heads) = (self.hidden, self.heads);
        if heads == 0 || d == 0 || d % heads != 0 || (d / heads) % 2 != 0 {
            crate::invalid!(
                "width {d} must split into {heads} heads of an even size (both at least 1)"
            );
        }
        if !(self.rope_base.is_finite() && self.rope_base > 1.0) {
            crate::invalid!(
                "the RoPE base must be a number above 1, got {}",
                self.rope_base
            );
        }
        if let Some(pairs) = self.rope_pairs {
            let total = self.head_dim() / 2;
            let sum = pairs.iter().try_fold(0usize, |a, &n| a.checked_add(n));
            if sum != Some(total) {
                crate::invalid!(
                    "the RoPE pairs per axis (t, h, w) {pairs:?} must add up to the {total} \
                     rotation pairs of a head of {} values",
                    self.head_dim()
                );
            }
        }
        Ok(())
    }

    /// The RoPE rotation pairs of t, h and w: [`DitConfig::rope_pairs`], else
    /// [`crate::nn::rope_thirds`].
    pub fn rope_split(&self) -> [usize; 3] {
        self.rope_pairs
            .unwrap_or_else(|| crate::nn::rope_thirds(self.head_dim()))
    }

    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// Values per token of the latent: `C * pt * ph * pw`.
    pub fn token_dim(&self) -> usize {
        self.patch.token_dim(self.latent_channels)
    }

    /// Width of the absolute position features the DiT projects (0 without
    /// [`DitConfig::pos_embed`]).
    pub fn pos_features(&self) -> u64 {
        if self.pos_embed {
            6 * crate::nn::POS_FREQS as u64
        } else {
            0
        }
    }

    /// Parameters, counted from the architecture in the module docs.
    pub fn params(&self) -> u64 {
        let d = self.hidden as u64;
        let r = self.mlp_ratio as u64;
        let e = self.context_dim as u64;
        let p = self.token_dim() as u64;
        let f = self.freq_dim as u64;
        let linear = |i: u64, o: u64| i * o + o;
        let mlp = linear(d, r * d) + linear(r * d, d);
        let block = linear(d, 6 * d)            // adaLN modulation
            + linear(d, 3 * d) + linear(d, d)   // self-attention
            + mlp
            + if self.local_mix { 9 * d } else { 0 }; // depthwise 3x3
        let depth = self.depth as u64;
        let text = if self.joint_text {
            // every block: LN (affine) and q, k, v of the text stream; all
            // but the last: its output projection, LN and MLP
            depth * (2 * d + linear(d, 3 * d))
                + depth.saturating_sub(1) * (linear(d, d) + 2 * d + mlp)
        } else {
            // cross-attention: LN (affine), q, kv, out
            depth * (2 * d + linear(d, d) + linear(d, 2 * d) + linear(d, d))
        };
        let embed = linear(p, d)                // patch embedding
            + linear(f, d) + linear(d, d)       // timestep MLP
            + linear(e, d)                      // context projection
            + linear(e, d); // pooled text -> conditioning
        let last = linear(d, 2 * d) + linear(d, p);
        let estimate = if self.self_cond { p * d } else { 0 };
        embed + estimate + self.pos_features() * d + depth * block + text + last
    }

    /// Cost of one forward on `batch` clips of `tokens` video tokens each.
    pub fn step_cost(&self, tokens: usize, batch: usize) -> StepCost {
        let (n, b) = (tokens as u64, batch as u64);
        let d = self.hidden as u64;
        let l = self.context_len as u64;
        let e = self.context_dim as u64;
        let r = self.mlp_ratio as u64;
        let p = self.token_dim() as u64;
        let f = self.freq_dim as u64;
        let depth = self.depth as u64;
        let mm = |m: u64, k: u64, n: u64| 2 * m * k * n;
        // per clip, summed over the blocks
        let self_proj = mm(n, d, 3 * d) + mm(n, d, d); // self qkv, out
                                                       // the depthwise 3x3 mix: 9 multiply-adds per value
        let mix = if self.local_mix { 2 * 9 * n * d } else { 0 };
        let video_mlp = mm(n, d, r * d) + mm(n, r * d, d) + mix;
        let (attention, attention_proj, mlp) = if self.joint_text {
            // QK^T and AV over the N + L tokens of both streams; the text
            // stream's qkv in every block, its out and MLP in all but the last
            let s = n + l;
            let text_out = mm(l, d, d);
            let text_mlp = mm(l, d, r * d) + mm(l, r * d, d);
            let rest = depth.saturating_sub(1);
            (
                depth * (mm(s, d, s) + mm(s, s, d)),
                depth * (self_proj + mm(l, d, 3 * d)) + rest * text_out,
                depth * video_mlp + rest * text_mlp,
            )
        } else {
            (
                depth
                    * (mm(n, d, n) + mm(n, n, d) // self: QK^T over all heads, AV
                + mm(n, d, l) + mm(n, l, d)), // cross
                depth * (self_proj + mm(n, d, d) + mm(l, d, 2 * d) + mm(n, d, d)), // cross q, kv, out
                depth * video_mlp,
            )
        };
        let modulation = mm(1, d, 6 * d);
        let estimate = if self.self_cond { mm(n, p, d) } else { 0 };
        let other = mm(n, p, d) + estimate + mm(1, f, d) + mm(1, d, d) + mm(l, e, d) + mm(1, e, d) // embeddings
            + depth * modulation
            + mm(1, d, 2 * d) + mm(n, d, p); // final layer
        let attention_flops = b * attention;
        let attention_proj_flops = b * attention_proj;
        let mlp_flops = b * mlp;
        // the position embedding is computed once per forward and shared by the batch
        let other_flops = b * other + mm(n, self.pos_features(), d);
        let h = self.heads as u64;
        let scores = if self.joint_text {
            (n + l) * (n + l)
        } else {
            n * n.max(l)
        };
        let activation_floats = b
            * (n * d /* residual */ + n * d /* normed */ + 3 * n * d /* qkv */ + n * d /* attn out */
            + n * r * d /* mlp hidden */ + h * scores);
        StepCost {
            batch,
            tokens,
            attention_flops,
            attention_proj_flops,
            mlp_flops,
            other_flops,
            total_flops: attention_flops + attention_proj_flops + mlp_flops + other_flops,
            params: self.params(),
            activation_bytes: 4 * activation_floats,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> DitConfig {
        DitConfig {
            latent_channels: 2,
            patch: PatchSize::new(1, 2, 2).unwrap(),
            hidden: 8,
            depth: 1,
            heads: 2,
            mlp_ratio: 4,
            context_dim: 4,
            context_len: 3,
            freq_dim: 16,
            pos_embed: false,
            local_mix: false,
            rope_base: crate::nn::ROPE_BASE,
            rope_pairs: None,
            joint_text: false,
            self_cond: false,
        }
    }

    #[test]
    fn configs_without_later_fields_read_their_defaults_and_unknown_fields_are_refused() {
        let mut json = serde_json::to_value(tiny()).unwrap();
        let fields = json.as_object_mut().unwrap();
        for later in ["pos_embed", "local_mix", "rope_base"] {
            fields.remove(later);
        }
        let read: DitConfig = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(read, tiny());
        json["rope_axes"] = serde_json::json!([1, 7, 8]);
        let err = serde_json::from_value::<DitConfig>(json).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `rope_axes`"),
            "{err}"
        );
    }

    #[test]
    fn rope_pairs_are_written_only_when_set_and_must_fill_the_head() {
        // tiny: 2 heads of 4 values, so 2 rotation pairs a head
        let json = serde_json::to_value(tiny()).unwrap();
        assert!(json.get("rope_pairs").is_none(), "{json}");
        assert!(json.get("joint_text").is_none(), "{json}");
        assert!(json.get("self_cond").is_none(), "{json}");
        assert_eq!(tiny().rope_split(), [0, 0, 2]);
        let split = DitConfig {
            rope_pairs: Some([0, 1, 1]),
            ..tiny()
        };
        split.validate().unwrap();
        assert_eq!(split.rope_split(), [0, 1, 1]);
        let json = serde_json::to_value(&split).unwrap();
        assert_eq!(json["rope_pairs"], serde_json::json!([0, 1, 1]));
        assert_eq!(serde_json::from_value::<DitConfig>(json).unwrap(), split);
        for wrong in [[0, 1, 2], [0, 0, 1], [usize::MAX, 1, 2]] {
            let err = DitConfig {
                rope_pairs: Some(wrong),
                ..tiny()
            }
            .validate()
            .unwrap_err()
            .to_string();
            assert!(err.contains("must add up to the 2 rotation pairs"), "{err}");
        }
    }

    #[test]
    fn params_match_a_hand_count() {
        // D = 8, token dim p = 2*1*2*2 = 8, E = 4, F = 16
        // block: adaLN 8*48+48 = 432; self 8*24+24 + 8*8+8 = 288; cross 72 + 8*16+16 + 72 = 288;
        //        LN 16; MLP 8*32+32 + 32*8+8 = 552  -> 1576
        // embed: patch 72, t-MLP 16*8+8 + 72 = 208, ctx 4*8+8 = 40, pooled 40 -> 360
        // final: 8*16+16 + 8*8+8 = 216
        assert_eq!(tiny().params(), 360 + 1576 + 216);
        // the position embedding: 3 axes x 16 frequencies x (cos, sin) -> D = 8, no bias
        let with_pos = DitConfig {
            pos_embed: true,
            ..tiny()
        };
        assert_eq!(with_pos.params(), tiny().params() + 96 * 8);
        // the local mix: a 3x3 depthwise kernel of D = 8 channels per block
        let with_mix = DitConfig {
            local_mix: true,
            ..tiny()
        };
        assert_eq!(with_mix.params(), tiny().params() + 72);
        // joint text, one block (the last): no cross-attention (288 + LN 16),
        // the text stream's LN 16 and qkv 8*24+24 = 216
        let joint = DitConfig {
            joint_text: true,
            ..tiny()
        };
        assert_eq!(joint.params(), tiny().params() - 304 + 232);
        // a second block adds a whole block (1576 - 304 = 1272 without
        // cross-attention), its text LN and qkv (232), and the first
        // block's text out 72, LN 16 and MLP 552
        let joint2 = DitConfig { depth: 2, ..joint };
        assert_eq!(joint2.params(), joint.params() + 1272 + 232 + 72 + 16 + 552);
        // self-conditioning: the estimate's embedding, P = 8 -> D = 8, no bias
        let with_estimate = DitConfig {
            self_cond: true,
            ..tiny()
        };
        assert_eq!(with_estimate.params(), tiny().params() + 64);
    }

    #[test]
    fn configs_written_before_the_position_embedding_local_mix_or_rope_base_read_without_them() {
        let mut json = serde_json::to_value(DitConfig {
            pos_embed: true,
            local_mix: true,
            rope_base: 100.0,
            rope_pairs: Some([0, 1, 1]),
            joint_text: true,
            self_cond: true,
            ..tiny()
        })
        .unwrap();
        for key in [
            "pos_embed",
            "local_mix",
            "rope_base",
            "rope_pairs",
            "joint_text",
            "self_cond",
        ] {
            json.as_object_mut().unwrap().remove(key);
        }
        let old: DitConfig = serde_json::from_value(json).unwrap();
        assert_eq!(old, tiny());
    }

    #[test]
    fn a_config_with_a_zero_patch_size_is_refused_on_read() {
        let mut json = serde_json::to_value(tiny()).unwrap();
        json["patch"]["h"] = serde_json::json!(0);
        let err = serde_json::from_value::<DitConfig>(json)
            .unwrap_err()
            .to_string();
        assert!(err.contains("patch size must be at least 1"), "{err}");
    }

    #[test]
    fn flops_match_a_hand_count() {
        // N = 4 tokens, batch 1: self QK^T and AV 2*4*8*4 each = 256 + 256,
        // cross with L = 3: 2*4*8*3 each = 192 + 192 -> 896
        let c = tiny().step_cost(4, 1);
        assert_eq!(c.attention_flops, 896);
        // self qkv 2*4*8*24 = 1536, out 512; cross q 512, kv 2*3*8*16 = 768, out 512
        assert_eq!(c.attention_proj_flops, 1536 + 512 + 512 + 768 + 512);
        // MLP 2*4*8*32 * 2
        assert_eq!(c.mlp_flops, 4096);
        // patch 2*4*8*8 = 512, t-MLP 256 + 128, ctx 2*3*4*8 = 192, pooled 64,
        // modulation 2*8*48 = 768, final adaLN 256 + linear 512
        assert_eq!(c.other_flops, 512 + 256 + 128 + 192 + 64 + 768 + 256 + 512);
        assert_eq!(
            c.total_flops,
            c.attention_flops + c.attention_proj_flops + c.mlp_flops + c.other_flops
        );
        // batch 2 doubles everything
        assert_eq!(tiny().step_cost(4, 2).total_flops, 2 * c.total_flops);
        // the local mix: 9 multiply-adds for each of the 4 x 8 values
        let with_mix = DitConfig {
            local_mix: true,
            ..tiny()
        };
        assert_eq!(with_mix.step_cost(4, 1).mlp_flops, 4096 + 576);
        // joint text over N + L = 7 tokens: QK^T and AV 2*7*8*7 each; the
        // text stream's qkv 2*3*8*24 (its out and MLP skipped in the only,
        // last, block)
        let joint = DitConfig {
            joint_text: true,
            ..tiny()
        };
        let j = joint.step_cost(4, 1);
        assert_eq!(j.attention_flops, 784 + 784);
        assert_eq!(j.attention_proj_flops, 1536 + 512 + 1152);
        assert_eq!(j.mlp_flops, 4096);
        let j2 = DitConfig { depth: 2, ..joint }.step_cost(4, 1);
        // block one's text out 2*3*8*8 = 384 and MLP 2*3*8*32 * 2 = 3072
        assert_eq!(j2.attention_proj_flops, 2 * (1536 + 512 + 1152) + 384);
        assert_eq!(j2.mlp_flops, 2 * 4096 + 3072);
        // the position embedding adds 2*4*96*8 once per forward, whatever the batch
        let with_pos = DitConfig {
            pos_embed: true,
            ..tiny()
        };
        for batch in [1, 2] {
            assert_eq!(
                with_pos.step_cost(4, batch).other_flops,
                tiny().step_cost(4, batch).other_flops + 6144
            );
        }
        // self-conditioning: the estimate's embedding, 2*4*8*8 per clip
        let with_estimate = DitConfig {
            self_cond: true,
            ..tiny()
        };
        assert_eq!(
            with_estimate.step_cost(4, 2).other_flops,
            tiny().step_cost(4, 2).other_flops + 2 * 512
        );
    }
}
