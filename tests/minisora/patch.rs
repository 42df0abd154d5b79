//! Spacetime patches and packing: exact inverses, tokens where they belong,
//! clips kept apart.

use candle_core::{Device, Tensor};
use minisora::patch::{self, pack, patchify, unpatchify, PatchSize, Patches, Remainder};
use proptest::prelude::*;

fn random(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut rng = minisora::rng::Rng::new(seed);
    let data: Vec<f32> = (0..n).map(|_| rng.range(-1.0, 1.0) as f32).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

fn values(x: &Tensor) -> Vec<f32> {
    x.flatten_all().unwrap().to_vec1().unwrap()
}

fn clip(c: usize, t: usize, h: usize, w: usize, p: PatchSize, seed: u64) -> (Tensor, Patches) {
    let x = random(&[1, c, t, h, w], seed);
    let cut = patchify(&x, p, Remainder::Pad).unwrap();
    (x, cut)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn unpatchify_inverts_patchify_bit_for_bit(
        b in 1usize..3, c in 1usize..4, t in 1usize..9, h in 1usize..11, w in 1usize..11,
        pt in 1usize..4, ph in 1usize..4, pw in 1usize..4, seed in any::<u64>(),
    ) {
        prop_assume!(pt <= t && ph <= h && pw <= w);
        let x = random(&[b, c, t, h, w], seed);
        let p = PatchSize::new(pt, ph, pw).unwrap();
        let cut = patchify(&x, p, Remainder::Pad).unwrap();
        let n = t.div_ceil(pt) * h.div_ceil(ph) * w.div_ceil(pw);
        prop_assert_eq!(cut.tokens.dims(), &[b, n, c * pt * ph * pw]);
        let back = cut.unpatchify(&cut.tokens).unwrap();
        prop_assert_eq!(back.dims(), x.dims());
        let (a, z) = (values(&x), values(&back));
        prop_assert!(a.iter().zip(&z).all(|(u, v)| u.to_bits() == v.to_bits()));
        let divisible = t % pt == 0 && h % ph == 0 && w % pw == 0;
        prop_assert_eq!(patchify(&x, p, Remainder::Reject).is_ok(), divisible);
        prop_assert_eq!(cut.mask.iter().all(|&m| m), divisible);
    }
}

#[test]
fn each_token_holds_the_pixels_at_its_position() {
    let (b, c, t, h, w) = (2, 3, 5, 7, 6);
    let p = PatchSize::new(2, 3, 2).unwrap();
    let x = random(&[b, c, t, h, w], 9);
    let xs = values(&x);
    let at = |bb: usize, cc: usize, tt: usize, yy: usize, xx: usize| {
        if tt >= t || yy >= h || xx >= w {
            0.0 // padding
        } else {
            xs[(((bb * c + cc) * t + tt) * h + yy) * w + xx]
        }
    };
    let cut = patchify(&x, p, Remainder::Pad).unwrap();
    assert_eq!(cut.grid, [3, 3, 3]);
    let tokens = cut.tokens.to_vec3::<f32>().unwrap();
    let positions = cut.positions();
    let mut order_ok = true;
    for (i, &[gt, gh, gw]) in positions.iter().enumerate() {
        // ordered t, then h, then w
        order_ok &= i == (gt * 3 + gh) * 3 + gw;
        let whole = (gt + 1) * 2 <= t && (gh + 1) * 3 <= h && (gw + 1) * 2 <= w;
        assert_eq!(cut.mask[i], whole, "token {i}");
        for (bb, batch) in tokens.iter().enumerate() {
            for cc in 0..c {
                for dt in 0..2 {
                    for dy in 0..3 {
                        for dx in 0..2 {
                            let k = ((cc * 2 + dt) * 3 + dy) * 2 + dx;
                            assert_eq!(
                                batch[i][k],
                                at(bb, cc, gt * 2 + dt, gh * 3 + dy, gw * 2 + dx)
                            );
                        }
                    }
                }
            }
        }
    }
    assert!(order_ok);
    let pos = cut.position_tensor().unwrap().to_vec2::<u32>().unwrap();
    assert_eq!(pos[13], [1, 1, 1]);
    // the value mask counts exactly the input's values
    let real: f32 = cut
        .value_mask()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert_eq!(real as usize, c * t * h * w);
}

#[test]
fn sizes_that_do_not_divide_are_refused_by_axis_when_asked() {
    let x = random(&[1, 2, 4, 6, 5], 1);
    let err = patchify(&x, PatchSize::new(2, 2, 2).unwrap(), Remainder::Reject)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("width 5") && err.contains("1 too many"),
        "{err}"
    );
    let err = patchify(&x, PatchSize::new(8, 1, 1).unwrap(), Remainder::Pad)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("time") && err.contains("smaller than the patch size 8"),
        "{err}"
    );
    assert!(PatchSize::new(0, 1, 1).is_err());
    assert!("1,2".parse::<PatchSize>().is_err() && "a,b,c".parse::<PatchSize>().is_err());
    assert_eq!(
        "1,2,2".parse::<PatchSize>().unwrap(),
        PatchSize::new(1, 2, 2).unwrap()
    );
    let bad = unpatchify(
        &Tensor::zeros((1, 5, 8), candle_core::DType::F32, &Device::Cpu).unwrap(),
        [1, 2, 2],
        PatchSize::new(1, 2, 2).unwrap(),
        2,
        [1, 4, 4],
    );
    assert!(bad.unwrap_err().to_string().contains("do not fit"));
}

#[test]
fn packing_then_unpacking_returns_every_clip_unchanged() {
    let p = PatchSize::new(1, 2, 2).unwrap();
    // durations, resolutions and aspect ratios all differ; one needs padding
    let clips: Vec<(Tensor, Patches)> = [(4, 8, 8), (2, 4, 12), (3, 10, 4), (1, 5, 7)]
        .iter()
        .enumerate()
        .map(|(i, &(t, h, w))| clip(3, t, h, w, p, i as u64))
        .collect();
    let cuts: Vec<Patches> = clips.iter().map(|(_, c)| c.clone()).collect();
    let total: usize = cuts.iter().map(|c| c.len()).sum();
    let packed = pack(&cuts, Some(total + 5)).unwrap();
    assert_eq!(packed.tokens.dims(), &[1, total + 5, 12]);
    for (i, (tokens, (x, cut))) in packed
        .unpack(&packed.tokens)
        .unwrap()
        .iter()
        .zip(&clips)
        .enumerate()
    {
        assert_eq!(values(tokens), values(&cut.tokens), "clip {i} tokens");
        let video = &packed.unpack_videos(&packed.tokens).unwrap()[i];
        assert_eq!(values(video), values(x), "clip {i} video");
    }
    // positions restart in each clip's own grid
    let second = packed.clips[1].offset;
    assert_eq!(packed.positions[second], [0, 0, 0]);
    assert_eq!(packed.positions[second + 6], [0, 1, 0]);
    assert_eq!(packed.positions[second + 12], [1, 0, 0]);
    assert!(pack(&cuts, Some(total - 1)).is_err());
}

#[test]
fn the_attention_mask_keeps_clips_apart_and_padding_out() {
    let p = PatchSize::new(1, 2, 2).unwrap();
    let cuts: Vec<Patches> = [(2, 4, 4), (1, 6, 4), (3, 2, 2)]
        .iter()
        .enumerate()
        .map(|(i, &(t, h, w))| clip(1, t, h, w, p, i as u64).1)
        .collect();
    let packed = pack(&cuts, Some(24)).unwrap();
    let l = packed.len();
    let mask = packed
        .attention_mask(&Device::Cpu)
        .unwrap()
        .to_vec2::<u8>()
        .unwrap();
    let bias = packed
        .attention_bias(candle_core::DType::F32, &Device::Cpu)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for i in 0..l {
        assert!(mask[i].contains(&1), "row {i} sees nothing");
        for j in 0..l {
            let same_clip =
                packed.clip_ids[i].is_some() && packed.clip_ids[i] == packed.clip_ids[j];
            let expected = same_clip || (i == j && packed.clip_ids[i].is_none());
            assert_eq!(mask[i][j] == 1, expected, "({i}, {j})");
            assert_eq!(bias[i][j] == 0.0, expected);
            if packed.clip_ids[i].is_some() && packed.clip_ids[j].is_none() {
                assert_eq!(mask[i][j], 0, "real token {i} sees padding {j}");
            }
        }
    }
    // softmax with the bias: no token's output depends on another clip's
    // tokens (perturb clip 2 and clip 0's attention output stays put)
    let attend = |tokens: &Tensor| -> Vec<f32> {
        let x = tokens.squeeze(0).unwrap();
        let scores = x.matmul(&x.t().unwrap()).unwrap();
        let b = Tensor::new(bias.clone(), &Device::Cpu).unwrap();
        let w = candle_nn::ops::softmax_last_dim(&(scores + b).unwrap()).unwrap();
        values(&w.matmul(&x).unwrap())
    };
    let before = attend(&packed.tokens);
    let mut changed = cuts.clone();
    changed[2].tokens = (&changed[2].tokens * 3.0).unwrap();
    let after = attend(&pack(&changed, Some(24)).unwrap().tokens);
    let n0 = packed.clips[0].len * 4;
    assert_eq!(before[..n0], after[..n0]);
    assert_ne!(
        before[packed.clips[2].offset * 4..],
        after[packed.clips[2].offset * 4..]
    );
}

#[test]
fn packing_refuses_mixed_token_sizes_and_batches() {
    let a = clip(1, 2, 4, 4, PatchSize::new(1, 2, 2).unwrap(), 0).1;
    let b = clip(2, 2, 4, 4, PatchSize::new(1, 2, 2).unwrap(), 1).1;
    assert!(pack(&[a.clone(), b], None)
        .unwrap_err()
        .to_string()
        .contains("one token size"));
    let batch = patchify(
        &random(&[2, 1, 2, 4, 4], 3),
        PatchSize::new(1, 2, 2).unwrap(),
        Remainder::Pad,
    )
    .unwrap();
    assert!(pack(&[batch], None)
        .unwrap_err()
        .to_string()
        .contains("batch size 2"));
    assert!(pack(&[], None).is_err());
    assert_eq!(patch::positions([2, 1, 3]).len(), 6);
}
