//! Patch n' Pack (NaViT, Dehghani et al. 2023): clips of different durations,
//! resolutions and aspect ratios in one token sequence, kept apart by the
//! attention mask, so a transformer trains and samples at native sizes
//! without cropping.

use candle_core::{DType, Device, Tensor};

use super::{positions, unpatchify, PatchSize, Patches};
use crate::{invalid, Result};

/// Where one clip sits in a packed sequence, and what it needs to be unpacked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedClip {
    /// First token of the clip in the sequence.
    pub offset: usize,
    /// Its number of tokens.
    pub len: usize,
    pub grid: [usize; 3],
    pub patch: PatchSize,
    pub channels: usize,
    /// `(T, H, W)` of the clip before patch padding.
    pub size: [usize; 3],
    /// Per token, `false` where the token holds patch padding.
    pub mask: Vec<bool>,
}

/// Several clips' tokens in one sequence, padded at the end to a length.
#[derive(Clone, Debug)]
pub struct Packed {
    /// `(1, L, D)`.
    pub tokens: Tensor,
    /// Per token: the index of its clip, `None` for padding at the end.
    pub clip_ids: Vec<Option<usize>>,
    /// Per token: its `(t, h, w)` in its own clip's grid (`[0, 0, 0]` for padding).
    pub positions: Vec<[usize; 3]>,
    pub clips: Vec<PackedClip>,
}

/// Packs clips (each cut with batch size 1) into one sequence of `length`
/// tokens (`None`: exactly the sum of their lengths), padding the end with
/// zero tokens.
///
/// # Shapes
/// - each `clips[i].tokens`: `(1, N_i, D)`, one `D` for all
/// - returns tokens `(1, L, D)` with `L = length.unwrap_or(sum N_i)`
pub fn pack(clips: &[Patches], length: Option<usize>) -> Result<Packed> {
    let Some(first) = clips.first() else {
        invalid!("nothing to pack: no clips given");
    };
    let d = first.tokens.dim(2)?;
    let mut parts = Vec::with_capacity(clips.len() + 1);
    let mut clip_ids = Vec::new();
    let mut all_positions = Vec::new();
    let mut placed = Vec::with_capacity(clips.len());
    for (i, clip) in clips.iter().enumerate() {
        let (b, n, di) = clip.tokens.dims3()?;
        if b != 1 {
            invalid!("clip {i} has batch size {b}: pack clips one at a time (batch size 1)");
        }
        if di != d {
            invalid!("clip {i} has tokens of {di} values, clip 0 of {d}: packed clips need one token size");
        }
        placed.push(PackedClip {
            offset: clip_ids.len(),
            len: n,
            grid: clip.grid,
            patch: clip.patch,
            channels: clip.channels,
            size: clip.size,
            mask: clip.mask.clone(),
        });
        clip_ids.extend(std::iter::repeat_n(Some(i), n));
        all_positions.extend(positions(clip.grid));
        parts.push(clip.tokens.clone());
    }
    let used = clip_ids.len();
    let total = length.unwrap_or(used);
    if total < used {
        invalid!("the clips have {used} tokens in all, more than the sequence length {total}");
    }
    if total > used {
        parts.push(Tensor::zeros(
            (1, total - used, d),
            first.tokens.dtype(),
            first.tokens.device(),
        )?);
        clip_ids.extend(std::iter::repeat_n(None, total - used));
        all_positions.extend(std::iter::repeat_n([0, 0, 0], total - used));
    }
    Ok(Packed {
        tokens: Tensor::cat(&parts, 1)?,
        clip_ids,
        positions: all_positions,
        clips: placed,
    })
}

impl Packed {
    /// Sequence length `L`, padding included.
    pub fn len(&self) -> usize {
        self.clip_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clip_ids.is_empty()
    }

    /// Whether query token `i` may attend to key token `j`: only within one
    /// clip. A padding token sees only itself (so that no softmax row is
    /// empty) and no real token sees padding.
    pub fn may_attend(&self, i: usize, j: usize) -> bool {
        match (self.clip_ids[i], self.clip_ids[j]) {
            (Some(a), Some(b)) => a == b,
            (None, None) => i == j,
            _ => false,
        }
    }

    /// `(L, L)` u8: 1 where query `i` may attend key `j` ([`Self::may_attend`]).
    pub fn attention_mask(&self, device: &Device) -> Result<Tensor> {
        let l = self.len();
        let data: Vec<u8> = (0..l * l)
            .map(|k| u8::from(self.may_attend(k / l, k % l)))
            .collect();
        Ok(Tensor::from_vec(data, (l, l), device)?)
    }

    /// Per token, its segment id for [`crate::ops::flash_attention`]: its
    /// clip's index + 1, and 0 for the padding at the end; `(1, L)` u32.
    /// The fused attention masks with these instead of an `(L, L)` matrix.
    /// It agrees with [`Self::may_attend`] on every real token; a padding
    /// query sees nothing there (output 0) rather than itself, which is
    /// never read since [`Self::unpack`] drops padding.
    pub fn segment_ids(&self, device: &Device) -> Result<Tensor> {
        let ids: Vec<u32> = self
            .clip_ids
            .iter()
            .map(|c| c.map_or(0, |i| i as u32 + 1))
            .collect();
        Ok(Tensor::from_vec(ids, (1, self.len()), device)?)
    }

    /// `(L, L)` additive attention bias in `dtype`: 0 where attention is
    /// allowed, `-inf` where it is not (add it to the scores before softmax).
    pub fn attention_bias(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        let l = self.len();
        let data: Vec<f32> = (0..l * l)
            .map(|k| {
                if self.may_attend(k / l, k % l) {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        Ok(Tensor::from_vec(data, (l, l), device)?.to_dtype(dtype)?)
    }

    /// Splits a packed sequence `(1, L, D)` (the input or a model's output)
    /// back into each clip's tokens `(1, N_i, D)`, dropping the padding.
    pub fn unpack(&self, tokens: &Tensor) -> Result<Vec<Tensor>> {
        let (b, l, _) = tokens.dims3()?;
        if b != 1 || l != self.len() {
            invalid!(
                "expected packed tokens (1, {}, D), got {:?}",
                self.len(),
                tokens.dims()
            );
        }
        self.clips
            .iter()
            .map(|c| Ok(tokens.narrow(1, c.offset, c.len)?))
            .collect()
    }

    /// [`Self::unpack`] then unpatchify: each clip back as `(1, C, T, H, W)`.
    pub fn unpack_videos(&self, tokens: &Tensor) -> Result<Vec<Tensor>> {
        self.unpack(tokens)?
            .iter()
            .zip(&self.clips)
            .map(|(t, c)| unpatchify(t, c.grid, c.patch, c.channels, c.size))
            .collect()
    }
}
