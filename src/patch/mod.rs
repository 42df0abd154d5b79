//! Spacetime patches: Sora's tokens.
//!
//! A latent video `(B, C, T, H, W)` is cut into non-overlapping
//! `pt x ph x pw` tubelets; each becomes one token of `C * pt * ph * pw`
//! values, and tokens are ordered t, then h, then w. Every token carries its
//! integer `(t, h, w)` place in the patch grid, so clips of any duration,
//! resolution and aspect ratio are just different token counts ("Video
//! generation models as world simulators", OpenAI 2024; ViViT's tubelet
//! embedding, Arnab et al. 2021).
//!
//! Within a token, values are ordered channel, then time, then row, then
//! column: token `i` at grid place `(gt, gh, gw)` holds
//! `x[b, c, gt*pt + dt, gh*ph + dh, gw*pw + dw]` at index
//! `((c * pt + dt) * ph + dh) * pw + dw`.
//!
//! [`pack`] puts several clips of different sizes into one sequence with the
//! attention mask that keeps them apart (NaViT's "Patch n' Pack", Dehghani
//! et al. 2023).

pub mod pack;

use std::fmt;

use candle_core::{DType, Tensor};

pub use pack::{pack, Packed, PackedClip};

use crate::{invalid, Result};

/// Patch size along time, height and width. Read from JSON (a checkpoint's
/// `config.json`) through [`PatchSize::new`], so a zero size is refused on
/// load instead of dividing by zero later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "PatchFields")]
pub struct PatchSize {
    pub t: usize,
    pub h: usize,
    pub w: usize,
}

/// [`PatchSize`]'s fields as stored, before [`PatchSize::new`] checks them.
#[derive(serde::Deserialize)]
struct PatchFields {
    t: usize,
    h: usize,
    w: usize,
}

impl TryFrom<PatchFields> for PatchSize {
    type Error = String;

    fn try_from(p: PatchFields) -> std::result::Result<Self, String> {
        PatchSize::new(p.t, p.h, p.w).map_err(|e| e.to_string())
    }
}

impl PatchSize {
    pub fn new(t: usize, h: usize, w: usize) -> Result<Self> {
        if t == 0 || h == 0 || w == 0 {
            invalid!("patch size must be at least 1 along each axis, got {t},{h},{w}");
        }
        Ok(Self { t, h, w })
    }

    /// Values in one token for `channels` input channels.
    pub fn token_dim(&self, channels: usize) -> usize {
        channels * self.t * self.h * self.w
    }

    pub fn as_array(&self) -> [usize; 3] {
        [self.t, self.h, self.w]
    }
}

impl fmt::Display for PatchSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{},{}", self.t, self.h, self.w)
    }
}

impl std::str::FromStr for PatchSize {
    type Err = crate::Error;

    /// `"T,H,W"` (or `"TxHxW"`), e.g. `"1,2,2"`.
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split([',', 'x']).map(str::trim).collect();
        let nums: Vec<usize> = parts.iter().filter_map(|p| p.parse().ok()).collect();
        match nums[..] {
            [t, h, w] if parts.len() == 3 => PatchSize::new(t, h, w),
            _ => invalid!("expected three positive integers T,H,W (like 1,2,2), got \"{s}\""),
        }
    }
}

/// What to do with sizes that the patch size does not divide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remainder {
    /// Pad with zeros at the end of each axis and mark the tokens that hold
    /// padding in [`Patches::mask`].
    Pad,
    /// Refuse, naming the axis and by how much it is off.
    Reject,
}

/// Number of patches along an axis of `size` for patch `p`, or the error the
/// caller asked for.
fn patches_along(axis: &str, size: usize, p: usize, remainder: Remainder) -> Result<usize> {
    if size == 0 {
        invalid!("the {axis} axis is empty (size 0)");
    }
    if p > size {
        invalid!("the {axis} is {size}, smaller than the patch size {p} along it");
    }
    let rest = size % p;
    if rest != 0 && remainder == Remainder::Reject {
        invalid!(
            "{axis} {size} is not divisible by the patch size {p}: {rest} too many (or pad {} more)",
            p - rest
        );
    }
    Ok(size.div_ceil(p))
}

/// The grid of patches over `(T, H, W)`: `[nt, nh, nw]` (ceilings when padding).
pub fn grid(size: [usize; 3], patch: PatchSize, remainder: Remainder) -> Result<[usize; 3]> {
    Ok([
        patches_along("time (frames)", size[0], patch.t, remainder)?,
        patches_along("height", size[1], patch.h, remainder)?,
        patches_along("width", size[2], patch.w, remainder)?,
    ])
}

/// The `(t, h, w)` grid place of every token, in token order.
pub fn positions(grid: [usize; 3]) -> Vec<[usize; 3]> {
    let [nt, nh, nw] = grid;
    (0..nt)
        .flat_map(|t| (0..nh).flat_map(move |h| (0..nw).map(move |w| [t, h, w])))
        .collect()
}

/// A video cut into spacetime patches.
#[derive(Clone, Debug)]
pub struct Patches {
    /// `(B, N, C * pt * ph * pw)`, tokens ordered t, h, w.
    pub tokens: Tensor,
    /// `[nt, nh, nw]`; `N = nt * nh * nw`.
    pub grid: [usize; 3],
    pub patch: PatchSize,
    /// Channels of the input.
    pub channels: usize,
    /// `(T, H, W)` of the input before any padding.
    pub size: [usize; 3],
    /// Per token, `true` if it lies wholly inside the input, `false` if some
    /// of its values are padding.
    pub mask: Vec<bool>,
}

impl Patches {
    pub fn len(&self) -> usize {
        self.mask.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mask.is_empty()
    }

    /// The `(t, h, w)` grid place of every token.
    pub fn positions(&self) -> Vec<[usize; 3]> {
        positions(self.grid)
    }

    /// `(N, C * pt * ph * pw)` f32: 1 for values from the input, 0 for
    /// padding, so a loss can ignore what was padded.
    pub fn value_mask(&self) -> Result<Tensor> {
        let size = self.size;
        let padded = [
            self.grid[0] * self.patch.t,
            self.grid[1] * self.patch.h,
            self.grid[2] * self.patch.w,
        ];
        let mut inside = vec![0f32; self.channels * padded.iter().product::<usize>()];
        let per_channel = padded.iter().product::<usize>();
        for c in 0..self.channels {
            for t in 0..size[0] {
                for h in 0..size[1] {
                    let row = c * per_channel + (t * padded[1] + h) * padded[2];
                    inside[row..row + size[2]].fill(1.0);
                }
            }
        }
        let device = self.tokens.device();
        let x = Tensor::from_vec(
            inside,
            (1, self.channels, padded[0], padded[1], padded[2]),
            device,
        )?;
        Ok(patchify(&x, self.patch, Remainder::Reject)?
            .tokens
            .squeeze(0)?)
    }
}

/// Cuts `(B, C, T, H, W)` into spacetime patches.
///
/// # Shapes
/// - `x`: `(B, C, T, H, W)`
/// - returns tokens `(B, N, C * pt * ph * pw)` with `N = nt * nh * nw`
pub fn patchify(x: &Tensor, patch: PatchSize, remainder: Remainder) -> Result<Patches> {
    let (b, c, t, h, w) = x.dims5()?;
    let grid @ [nt, nh, nw] = grid([t, h, w], patch, remainder)?;
    let mut padded = x.clone();
    for (dim, (size, p)) in [(2, (t, patch.t)), (3, (h, patch.h)), (4, (w, patch.w))] {
        let need = size.div_ceil(p) * p - size;
        if need > 0 {
            padded = padded.pad_with_zeros(dim, 0, need)?;
        }
    }
    let tokens = padded
        .reshape(vec![b, c, nt, patch.t, nh, patch.h, nw, patch.w])?
        // (B, nt, nh, nw, C, pt, ph, pw)
        .permute([0, 2, 4, 6, 1, 3, 5, 7])?
        .reshape((b, nt * nh * nw, patch.token_dim(c)))?;
    let whole = |g: usize, p: usize, size: usize| (g + 1) * p <= size;
    let mask = positions(grid)
        .into_iter()
        .map(|[gt, gh, gw]| whole(gt, patch.t, t) && whole(gh, patch.h, h) && whole(gw, patch.w, w))
        .collect();
    Ok(Patches {
        tokens,
        grid,
        patch,
        channels: c,
        size: [t, h, w],
        mask,
    })
}

/// The exact inverse of [`patchify`]: tokens back to `(B, C, T, H, W)` at
/// the original size (padding dropped).
///
/// # Shapes
/// - `tokens`: `(B, N, C * pt * ph * pw)` with `N = nt * nh * nw`
/// - returns `(B, C, T, H, W)`
pub fn unpatchify(
    tokens: &Tensor,
    grid: [usize; 3],
    patch: PatchSize,
    channels: usize,
    size: [usize; 3],
) -> Result<Tensor> {
    let (b, n, d) = tokens.dims3()?;
    let [nt, nh, nw] = grid;
    if n != nt * nh * nw || d != patch.token_dim(channels) {
        invalid!(
            "tokens of shape ({b}, {n}, {d}) do not fit grid {nt}x{nh}x{nw} of patch {patch} with {channels} channels \
             (expected ({b}, {}, {}))",
            nt * nh * nw,
            patch.token_dim(channels)
        );
    }
    if size[0] > nt * patch.t || size[1] > nh * patch.h || size[2] > nw * patch.w {
        invalid!("size {size:?} is larger than the patch grid covers");
    }
    let x = tokens
        .reshape(vec![b, nt, nh, nw, channels, patch.t, patch.h, patch.w])?
        // (B, C, nt, pt, nh, ph, nw, pw)
        .permute([0, 4, 1, 5, 2, 6, 3, 7])?
        .reshape((b, channels, nt * patch.t, nh * patch.h, nw * patch.w))?
        .narrow(2, 0, size[0])?
        .narrow(3, 0, size[1])?
        .narrow(4, 0, size[2])?
        .contiguous()?;
    Ok(x)
}

impl Patches {
    /// [`unpatchify`] with this cut's own grid, patch, channels and size.
    pub fn unpatchify(&self, tokens: &Tensor) -> Result<Tensor> {
        unpatchify(tokens, self.grid, self.patch, self.channels, self.size)
    }

    /// Token positions as a `(N, 3)` u32 tensor on the tokens' device.
    pub fn position_tensor(&self) -> Result<Tensor> {
        let flat: Vec<u32> = self
            .positions()
            .into_iter()
            .flatten()
            .map(|v| v as u32)
            .collect();
        Ok(Tensor::from_vec(flat, (self.len(), 3), self.tokens.device())?.to_dtype(DType::U32)?)
    }
}
