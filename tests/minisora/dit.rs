//! The diffusion transformer and text encoder: shapes, adaLN-Zero, packing,
//! gradients, and the analytic parameter count.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use minisora::dit::{Dit, DitConfig};
use minisora::patch::{pack, patchify, PatchSize, Remainder};
use minisora::rng::Rng;
use minisora::text::{TextConfig, TextEncoder, Tokenizer};
use minisora::train::optim::{AdamW, AdamWConfig};
use minisora::train::{randn, seeded_init};

fn tiny() -> DitConfig {
    DitConfig {
        latent_channels: 4,
        patch: PatchSize::new(1, 2, 2).unwrap(),
        hidden: 24,
        depth: 2,
        heads: 2,
        mlp_ratio: 4,
        context_dim: 16,
        context_len: 6,
        freq_dim: 32,
        pos_embed: true,
        local_mix: false,
        rope_base: minisora::nn::ROPE_BASE,
        rope_pairs: None,
        joint_text: false,
        self_cond: false,
    }
}

/// [`tiny`] with the caption as a joint-attention stream.
fn joint() -> DitConfig {
    DitConfig {
        joint_text: true,
        ..tiny()
    }
}

fn build(cfg: &DitConfig) -> (Dit, VarMap) {
    let varmap = VarMap::new();
    let dit = Dit::new(
        cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    seeded_init(&varmap, 3).unwrap();
    (dit, varmap)
}

fn noise(shape: &[usize], seed: u64) -> Tensor {
    randn(&mut Rng::new(seed), shape, &Device::Cpu).unwrap()
}

fn text(b: usize) -> (Tensor, Tensor, Tensor) {
    let keep: Vec<f32> = (0..b * 6)
        .map(|i| if i % 6 < 4 { 1.0 } else { 0.0 })
        .collect();
    (
        noise(&[b, 6, 16], 10),
        noise(&[b, 16], 11),
        Tensor::from_vec(keep, (b, 6), &Device::Cpu).unwrap(),
    )
}

fn max_abs(x: &Tensor) -> f32 {
    x.abs().unwrap().max_all().unwrap().to_scalar().unwrap()
}

/// Gives every zero-initialised layer weights, as after some training.
fn perturb(varmap: &VarMap) {
    for (i, var) in varmap.data().lock().unwrap().values().enumerate() {
        let t = var.as_tensor();
        var.set(&(t + (noise(t.dims(), 100 + i as u64) * 0.05).unwrap()).unwrap())
            .unwrap();
    }
}

#[test]
fn output_shape_is_input_shape_and_a_fresh_model_outputs_zeros() {
    for cfg in [tiny(), joint()] {
        shapes_and_zeros(&cfg);
    }
}

fn shapes_and_zeros(cfg: &DitConfig) {
    let (dit, varmap) = build(cfg);
    for (t, h, w) in [(1, 2, 2), (4, 4, 4), (3, 2, 6), (2, 8, 4)] {
        let x = noise(&[2, 4, t, h, w], 1);
        let (ctx, pooled, keep) = text(2);
        let times = Tensor::new(&[0.3f32, 0.9], &Device::Cpu).unwrap();
        let out = dit.forward(&x, &times, &ctx, &pooled, &keep).unwrap();
        assert_eq!(out.dims(), x.dims());
        assert_eq!(max_abs(&out), 0.0, "adaLN-Zero: a fresh DiT predicts zeros");
    }
    perturb(&varmap);
    let x = noise(&[1, 4, 2, 4, 4], 1);
    let (ctx, pooled, keep) = text(1);
    let out = dit
        .forward(
            &x,
            &Tensor::new(&[0.5f32], &Device::Cpu).unwrap(),
            &ctx,
            &pooled,
            &keep,
        )
        .unwrap();
    assert!(max_abs(&out) > 0.0);
    let err = dit.forward(
        &noise(&[1, 3, 2, 4, 4], 1),
        &Tensor::new(&[0.5f32], &Device::Cpu).unwrap(),
        &ctx,
        &pooled,
        &keep,
    );
    assert!(err.err().unwrap().to_string().contains("4 latent channels"));
}

#[test]
fn the_parameter_count_is_the_one_config_counts() {
    for cfg in [
        tiny(),
        DitConfig {
            depth: 3,
            hidden: 32,
            heads: 4,
            ..tiny()
        },
        DitConfig {
            local_mix: true,
            ..tiny()
        },
        joint(),
        DitConfig {
            depth: 1,
            ..joint()
        },
        DitConfig {
            depth: 3,
            ..joint()
        },
        DitConfig {
            self_cond: true,
            ..tiny()
        },
    ] {
        let (_, varmap) = build(&cfg);
        let real: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
        assert_eq!(real as u64, cfg.params());
    }
}

/// `clips` packed into one sequence padded to 24 tokens, and its
/// self-attention mask `(1, 1, N, N)`.
fn packed_with_bias(clips: &[minisora::patch::Patches]) -> (minisora::patch::Packed, Tensor) {
    let packed = pack(clips, Some(24)).unwrap();
    let l = packed.len();
    let bias = packed
        .attention_bias(DType::F32, &Device::Cpu)
        .unwrap()
        .reshape((1, 1, l, l))
        .unwrap();
    (packed, bias)
}

#[test]
fn packed_tokens_see_only_their_own_clip_and_never_padding() {
    let cfg = tiny();
    let (dit, varmap) = build(&cfg);
    perturb(&varmap);
    let p = cfg.patch;
    let clips: Vec<_> = [(2, 4, 4), (1, 2, 6), (3, 2, 2)]
        .iter()
        .enumerate()
        .map(|(i, &(t, h, w))| {
            patchify(
                &noise(&[1, 4, t, h, w], 20 + i as u64),
                p,
                Remainder::Reject,
            )
            .unwrap()
        })
        .collect();
    let run = |clips: &[minisora::patch::Patches]| -> Vec<Tensor> {
        let (packed, bias) = packed_with_bias(clips);
        // padding: finite bias so padded rows (which see only themselves) stay finite
        let (ctx, pooled, keep) = text(1);
        let c = dit
            .condition(&Tensor::new(&[0.4f32], &Device::Cpu).unwrap(), &pooled)
            .unwrap()
            .unsqueeze(1)
            .unwrap();
        let cb = ((keep - 1.0).unwrap() * 1e9)
            .unwrap()
            .reshape((1, 1, 1, 6))
            .unwrap();
        let out = dit
            .forward_tokens(
                &packed.tokens,
                None,
                &packed.positions,
                &c,
                &ctx,
                &cb,
                Some(&bias),
            )
            .unwrap();
        packed.unpack(&out).unwrap()
    };
    let before = run(&clips);
    // change clip 2's tokens: clips 0 and 1 must not move
    let mut changed = clips.clone();
    changed[2].tokens = (&changed[2].tokens * -2.0).unwrap();
    let after = run(&changed);
    for k in 0..2 {
        assert_eq!(
            max_abs(&(&before[k] - &after[k]).unwrap()),
            0.0,
            "clip {k} saw clip 2"
        );
    }
    assert!(max_abs(&(&before[2] - &after[2]).unwrap()) > 0.0);
    // a clip alone gives what it gives packed (padding and neighbours are invisible)
    let alone = run(&clips[1..2]);
    let diff = max_abs(&(&alone[0] - &before[1]).unwrap());
    assert!(diff < 1e-5, "clip 1 alone vs packed: {diff}");

    // a DiT that mixes neighbouring tokens needs one clip's full grid: a
    // packed sequence is refused, not mixed across clips
    let (mixing, _) = build(&DitConfig {
        local_mix: true,
        ..cfg.clone()
    });
    let packed = pack(&clips, Some(24)).unwrap();
    let (ctx, pooled, _) = text(1);
    let c = mixing
        .condition(&Tensor::new(&[0.4f32], &Device::Cpu).unwrap(), &pooled)
        .unwrap()
        .unsqueeze(1)
        .unwrap();
    let cb = Tensor::zeros((1, 1, 1, 6), DType::F32, &Device::Cpu).unwrap();
    let err = mixing
        .forward_tokens(&packed.tokens, None, &packed.positions, &c, &ctx, &cb, None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("packed"), "{err}");
}

#[test]
fn every_parameter_of_the_dit_and_text_encoder_learns() {
    // with the local mix, so that its kernels are among the parameters
    every_parameter_learns(&DitConfig {
        local_mix: true,
        ..tiny()
    });
}

#[test]
fn every_parameter_of_a_joint_attention_dit_learns() {
    every_parameter_learns(&joint());
}

#[test]
fn every_parameter_of_a_self_conditioning_dit_learns() {
    every_parameter_learns(&DitConfig {
        self_cond: true,
        ..tiny()
    });
}

fn every_parameter_learns(cfg: &DitConfig) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let tok = Tokenizer::from_captions(["a red circle growing", "a blue square moving left"], 6);
    let tcfg = TextConfig {
        vocab_size: tok.vocab_size(),
        max_len: 6,
        width: 16,
        depth: 1,
        heads: 2,
    };
    let text = TextEncoder::new(&tcfg, vb.pp("text")).unwrap();
    let dit = Dit::new(cfg, vb.pp("dit")).unwrap();
    seeded_init(&varmap, 1).unwrap();
    let ids: Vec<u32> = ["a red circle growing", "a blue square moving left"]
        .iter()
        .flat_map(|c| tok.encode(c).unwrap())
        .collect();
    let ids = Tensor::from_vec(ids, (2, 6), &Device::Cpu).unwrap();
    let keep = ids.ne(0u32).unwrap().to_dtype(DType::F32).unwrap();
    let x = noise(&[2, 4, 2, 4, 4], 5);
    let target = noise(&[2, 4, 2, 4, 4], 6);
    // a self-conditioning DiT learns its estimate's embedding from estimates
    let estimate = cfg.self_cond.then(|| noise(&[2, 4, 2, 4, 4], 7));
    let t = Tensor::new(&[0.2f32, 0.7], &Device::Cpu).unwrap();
    let all: HashMap<_, _> = varmap.data().lock().unwrap().clone();
    let mut opt = AdamW::new(all.clone(), AdamWConfig::default()).unwrap();
    let loss = || {
        let (ctx, pooled) = text.forward(&ids).unwrap();
        let out = dit
            .forward_with_estimate(&x, estimate.as_ref(), &t, &ctx, &pooled, &keep)
            .unwrap();
        (out - &target).unwrap().sqr().unwrap().mean_all().unwrap()
    };
    // zero-initialised gates and outputs open up after the first steps
    for _ in 0..2 {
        opt.step(&loss().backward().unwrap(), 1e-2).unwrap();
    }
    let grads = loss().backward().unwrap();
    let mut missing = vec![];
    for (name, var) in &all {
        let ok = grads.get(var.as_tensor()).is_some_and(|g| max_abs(g) > 0.0);
        if !ok {
            missing.push(name.clone());
        }
    }
    missing.sort();
    assert!(missing.is_empty(), "no gradient for {missing:?}");
}

/// With joint attention the caption's padding is never seen (by the video
/// tokens nor by the caption's words), its words are, and a packed batch
/// (which would need a mask across both streams) is refused by name.
#[test]
fn a_joint_attention_dit_reads_the_captions_words_and_never_its_padding() {
    let (dit, varmap) = build(&joint());
    perturb(&varmap);
    let x = noise(&[1, 4, 2, 4, 4], 1);
    let t = Tensor::new(&[0.5f32], &Device::Cpu).unwrap();
    let (ctx, pooled, keep) = text(1); // words at 0..4, padding at 4..6
    let out = dit.forward(&x, &t, &ctx, &pooled, &keep).unwrap();
    let changed = |from: usize| {
        let mut v = ctx.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for x in &mut v[from * 16..(from + 1) * 16] {
            *x += 3.0;
        }
        let ctx = Tensor::from_vec(v, (1, 6, 16), &Device::Cpu).unwrap();
        let other = dit.forward(&x, &t, &ctx, &pooled, &keep).unwrap();
        max_abs(&(other - &out).unwrap())
    };
    assert_eq!(changed(5), 0.0, "a padding token changed the output");
    assert!(changed(2) > 1e-4, "a word of the caption did not");

    let cfg = joint();
    let clip = noise(&[1, 4, 2, 4, 4], 2);
    let p = patchify(&clip, cfg.patch, Remainder::Reject).unwrap();
    let (packed, bias) = packed_with_bias(&[p.clone(), p]);
    let err = dit
        .forward_tokens(
            &packed.tokens,
            None,
            &packed.positions,
            &Tensor::zeros((1, 1, 24), DType::F32, &Device::Cpu).unwrap(),
            &noise(&[1, 6, 16], 3),
            &Tensor::zeros((1, 1, 1, 6), DType::F32, &Device::Cpu).unwrap(),
            Some(&bias),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("joint_text") && err.contains("packed"),
        "{err}"
    );
}

/// A self-conditioning DiT reads its previous clean estimate: no estimate
/// is the same as an estimate of zeros, bit for bit, and another estimate
/// changes the prediction. A DiT without it, or an estimate of another
/// shape, is refused by name.
#[test]
fn a_self_conditioning_dit_reads_its_estimate_and_none_is_zeros() {
    let cfg = DitConfig {
        self_cond: true,
        ..tiny()
    };
    let (dit, varmap) = build(&cfg);
    let x = noise(&[1, 4, 2, 4, 4], 1);
    let t = Tensor::new(&[0.5f32], &Device::Cpu).unwrap();
    let (ctx, pooled, keep) = text(1);
    let run = |dit: &Dit, estimate: Option<&Tensor>| {
        dit.forward_with_estimate(&x, estimate, &t, &ctx, &pooled, &keep)
    };
    let fresh = run(&dit, Some(&noise(&[1, 4, 2, 4, 4], 2))).unwrap();
    assert_eq!(
        max_abs(&fresh),
        0.0,
        "adaLN-Zero: a fresh DiT predicts zeros"
    );
    perturb(&varmap);
    let none = run(&dit, None).unwrap();
    let zeros = run(&dit, Some(&x.zeros_like().unwrap())).unwrap();
    assert_eq!(
        none.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        zeros.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    let other = run(&dit, Some(&noise(&[1, 4, 2, 4, 4], 2))).unwrap();
    assert!(max_abs(&(other - &none).unwrap()) > 1e-4);
    let err = run(&dit, Some(&noise(&[1, 4, 2, 4, 2], 2)))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("the clean estimate is"), "{err}");
    let (plain, _) = build(&tiny());
    let err = run(&plain, Some(&x)).err().unwrap().to_string();
    assert!(err.contains("self-conditioning"), "{err}");
}
