//! The `minisora` command line: a thin layer over the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use minisora::data::clips::ShapesWorldSet;
use minisora::data::shapes_world::{self, Canvas, Scene};
use minisora::patch::{PatchSize, Remainder};
use minisora::rng::Rng;
use minisora::video::{self, WriteOptions};

/// Counts heap bytes so that `minisora bench` can report a step's peak memory.
#[global_allocator]
static ALLOC: minisora::bench::CountingAlloc = minisora::bench::CountingAlloc;

#[derive(Parser)]
#[command(
    name = "minisora",
    version,
    about = "A small, from-scratch Sora-style text-to-video system",
    long_about = "minisora turns prompts into short clips with a diffusion transformer over \
                  spacetime patches, trained from scratch on Shapes World, a procedural world of \
                  coloured moving shapes.\n\nShapes World prompts follow a small grammar:\n  \
                  a [small|large] COLOUR SHAPE MOTION [and a ...]\n  \
                  COLOUR: red green blue yellow white purple orange cyan\n  \
                  SHAPE:  circle square triangle\n  \
                  MOTION: moving left|right|up|down, standing still, growing, shrinking\n\
                  e.g. \"a red circle moving right and a small blue square moving up\""
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Render a Shapes World clip of a prompt exactly, from its scene (no model)
    #[command(
        after_help = "Examples:\n  minisora render \"a red circle moving right\" -o red.mp4\n  \
        minisora render \"a small blue square growing and a large yellow triangle moving up\" --seed 3 -o clip.gif\n  \
        minisora render --random --seed 42 -o frames/"
    )]
    Render(RenderArgs),
    /// Write a data set of random Shapes World clips with captions (resumes if interrupted)
    #[command(after_help = "Layout of DIR:\n  \
        dataset.json      the settings the set was made with (a rerun with other settings is refused)\n  \
        clip_000000/      frame_0000.png ... (or clip_000000.mp4 / .gif with --format)\n  \
        clip_000000.txt   its caption, one line\n\
        Clip i's caption and placement depend only on --seed and i, so sets of different sizes \
        agree on the clips they share. Rerunning the same command completes an interrupted set.")]
    Data(DataArgs),
    /// Show how a clip becomes spacetime-patch tokens, and what one denoising step costs
    #[command(
        after_help = "The path: input (T, H, W) -> compression network (/ft, /fs, /fs) -> latent \
        -> patches (pt, ph, pw) -> a grid of tokens, ordered t, then h, then w. Each token covers \
        ft*pt frames and fs*ph x fs*pw pixels. Sizes the factors do not divide are padded with \
        zeros (--no-pad refuses them instead).\n\n\
        Examples:\n  minisora inspect samples/red_circle_blue_square.mp4 -o tokens.png\n  \
        minisora inspect --prompt \"a red circle growing\" --height 48 --width 96 --patch 2,2,2 --json\n  \
        minisora inspect clip.mp4 --preset XL --compress 4,8,8"
    )]
    Inspect(InspectArgs),
    /// Time one denoising step: latency, FLOPs, FLOP/s against the machine's matmul peak
    #[command(
        after_help = "Each case builds a DiT of the preset with random weights and times \
        one forward on random latents after warm-up: median and p90 latency, counted FLOPs \
        (attention, projections, MLP), achieved GFLOP/s and that as a fraction of a large matrix \
        multiply measured in the same run, and the heap a step holds at its peak beyond its weights \
        and inputs (counted by an allocator wrapper).\n\n\
        Examples:\n  minisora bench\n  minisora bench --preset default --preset S --tokens 128 --tokens 512\n  \
        minisora bench --preset S --frames 16 --height 64 --width 64 --json"
    )]
    Bench(BenchArgs),
    /// Train a stage of the model: `train vae` (the compression network)
    #[command(subcommand)]
    Train(TrainCommand),
    /// Use a trained compression network: `vae roundtrip`, `vae eval`
    #[command(subcommand)]
    Vae(VaeCommand),
    /// Generate clips from prompts with a trained model
    #[command(
        after_help = "Examples:\n  minisora generate \"a red circle moving right\" -o red.mp4\n  \
        minisora generate \"a small blue square growing\" --sampler heun --steps 10 --cfg 3 --show-steps -o sq.gif\n  \
        minisora generate --prompts samples/prompts.txt -o out/   (one clip per line: out/000.mp4, ...)"
    )]
    Generate(GenerateArgs),
    /// Score a model's prompt adherence on Shapes World (colour, shape, size, motion per object)
    #[command(
        after_help = "Prompts are drawn from the grammar with seeds training never uses (or read \
        from --prompts), a clip is generated for each, and a detector written for the data contract \
        checks every object: colour by its palette pixels, size and motion by their area and \
        centroid path, shape by the moments of its largest blob. Examples:\n  \
        minisora eval --count 200\n  \
        minisora eval --count 50 --save seen/   (each clip as seen/NNN.gif, verdicts in \
        seen/scores.jsonl)\n  \
        minisora eval --renders                 (the prompts' own renders: the detector's ceiling)\n  \
        minisora eval --compare runs/a_eval runs/b_eval   (two --save runs, prompt by prompt)"
    )]
    Eval(EvalArgs),
}

#[derive(Args)]
struct EvalArgs {
    /// Text-to-video checkpoint [default: the shipped samples/model]
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Held-out prompts to draw of each kind (one object, two objects)
    #[arg(long, default_value_t = 200)]
    count: usize,
    /// Leave out the first N held-out prompts of each kind: score ranks N+1
    /// to N+COUNT, each with the seed (and --save's number) it has in an
    /// evaluation with --count N+COUNT. Fresh prompts for weights or
    /// settings chosen on an earlier evaluation of the first N
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        conflicts_with = "prompts"
    )]
    skip: usize,
    /// Score these prompts (one per line) instead
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// A diagnostic: run only the last STRENGTH share of the steps, in
    /// (0, 1], starting from each prompt's own Shapes World render noised to
    /// that step's time instead of from pure noise (as generate --init does);
    /// shows at which noise levels the model loses an attribute
    #[arg(long, value_name = "STRENGTH")]
    renoise: Option<f64>,
    /// Score each prompt's own Shapes World render instead of a generated
    /// clip (no model): the most the detector gives these prompts
    #[arg(long, conflicts_with_all = ["checkpoint", "renoise"])]
    renders: bool,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    clip: ClipArgs,
    /// Keep what was scored: DIR/NNN.gif for the NNNth prompt (at --fps,
    /// scaled up to 256 pixels on the short side) and DIR/scores.jsonl, a
    /// line per prompt with its seed and each object's colour, shape, size
    /// and motion verdicts
    #[arg(long, value_name = "DIR")]
    save: Option<PathBuf>,
    /// Compare two evaluations of the same prompts (two --save folders, or
    /// their scores.jsonl) prompt by prompt instead of running one: per
    /// kind of prompt, the passes of each, the prompts only one passes, and
    /// the exact two-sided sign test of those (no model is loaded)
    #[arg(long, num_args = 2, value_names = ["A", "B"], conflicts_with_all = ["checkpoint", "prompts", "renoise", "renders", "save"])]
    compare: Option<Vec<PathBuf>>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// How to sample, shared by generate and eval.
#[derive(Args)]
struct SamplingArgs {
    /// Denoising steps
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Sampler: euler, heun, dpm++2m
    #[arg(long, default_value = "dpm++2m")]
    sampler: String,
    /// Classifier-free guidance scale (1 = none)
    #[arg(long, default_value_t = 3.0)]
    cfg: f64,
    /// Guide only the steps at times FROM to TO (0 = the clip, 1 = pure
    /// noise); the others take the conditional prediction alone, at half the
    /// cost [default: 0,1, every step]
    #[arg(long, value_name = "FROM,TO", value_parser = interval_arg)]
    cfg_interval: Option<[f64; 2]>,
    /// Timestep shift (1 = uniform steps; >1 spends more steps at high noise)
    /// [default: the shift the model was trained with]
    #[arg(long)]
    shift: Option<f64>,
    /// Clips sampled per prompt (one batch), of which the one the model
    /// itself judges to show the prompt best is kept (see --rank-by). Each
    /// candidate costs about one more clip's sampling; 1 is the plain
    /// sampler, scoring nothing
    #[arg(long, default_value_t = 4)]
    candidates: usize,
    /// How the model rates its candidates, by its own diffusion-classifier
    /// score at high noise: `dit`, how much the prompt lowers its denoising
    /// error on the clip against the empty caption (scoring costs about 3
    /// candidates' sampling: about 2 s a default clip); `rivals`, the same
    /// against the empty caption and the captions the clip is most easily
    /// taken for, each object with another shape or size and each of two
    /// objects alone (5 or 11 captions in all: about 5.6 s a two-object
    /// clip). A prompt outside the Shapes World grammar, or a rival with a
    /// word the model does not know, has no rivals to weigh
    #[arg(long, value_name = "dit|rivals", default_value = "dit", value_parser = ["dit", "rivals"])]
    rank_by: String,
    #[command(flatten)]
    device: DeviceArgs,
}

/// Where a model runs and in what precision.
#[derive(Args, Clone)]
struct DeviceArgs {
    /// cpu, or cuda (a minisora built with --features cuda, an NVIDIA GPU):
    /// every stage of the command runs there
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Weights and activations: f32, bf16 or f16 (a sampler's state stays
    /// f32) [default: f32 on the CPU, bf16 on a GPU]
    #[arg(long)]
    dtype: Option<String>,
}

impl DeviceArgs {
    fn device_dtype(&self) -> Result<(Device, candle_core::DType)> {
        let device = parse_device(&self.device)?;
        let dtype = match &self.dtype {
            Some(d) => parse_dtype(d)?,
            None if device.is_cpu() => candle_core::DType::F32,
            None => candle_core::DType::BF16,
        };
        Ok((device, dtype))
    }
}

impl SamplingArgs {
    fn device_dtype(&self) -> Result<(Device, candle_core::DType)> {
        self.device.device_dtype()
    }

    fn options(&self, seed: u64, canvas: Canvas) -> minisora::pipeline::SampleOptions {
        minisora::pipeline::SampleOptions {
            seed,
            steps: self.steps,
            sampler: self.sampler.clone(),
            cfg: self.cfg,
            cfg_interval: self.cfg_interval.unwrap_or([0.0, 1.0]),
            shift: self.shift,
            canvas,
            candidates: self.candidates,
            rivals: self.rank_by == "rivals",
        }
    }
}

#[derive(Args)]
struct GenerateArgs {
    /// The prompt (Shapes World grammar, words the model knows)
    #[arg(required_unless_present = "prompts")]
    prompt: Option<String>,
    /// A file of prompts, one per line: writes OUTPUT/000.EXT, OUTPUT/001.EXT, ...
    #[arg(long, conflicts_with = "prompt")]
    prompts: Option<PathBuf>,
    /// Text-to-video checkpoint [default: the shipped samples/model]
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Seed of the starting noise
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    clip: ClipArgs,
    /// Nearest-neighbour upscale [default: enough for 256 pixels on the short side]
    #[arg(long)]
    scale: Option<usize>,
    /// Also write the data prediction after each step as a contact sheet (OUTPUT stem + .steps.png)
    #[arg(long)]
    show_steps: bool,
    /// Edit this clip instead of starting from noise (SDEdit, the Sora
    /// report's video-to-video editing): its first --frames frames, resized
    /// to --height x --width, are encoded, noised, and redrawn to the prompt
    #[arg(long, value_name = "VIDEO")]
    init: Option<PathBuf>,
    /// With --init: the share of the steps run, in (0, 1]; low keeps the
    /// clip's layout and redraws its detail, 1 ignores the clip
    #[arg(long, default_value_t = 0.6, requires = "init")]
    strength: f64,
    /// Output file (.mp4, .gif, .png, dir/), or a folder with --prompts
    #[arg(short, long)]
    output: PathBuf,
    /// Extension of each clip with --prompts
    #[arg(long, default_value = "mp4")]
    format: String,
}

#[derive(Subcommand)]
enum TrainCommand {
    /// Train the video compression network (spacetime VAE)
    #[command(
        after_help = "OUT/checkpoint/ holds the latest checkpoint (written atomically every \
        --checkpoint-every steps and at the end), OUT/log.csv one row per step. Interrupted? Run the \
        same command with --resume: it continues exactly where the checkpoint stopped.\n\n\
        The defaults train the shipped autoencoder (samples/vae):\n  minisora train vae --out runs/vae"
    )]
    Vae(TrainVaeArgs),
    /// Train the text encoder and diffusion transformer on a trained autoencoder's latents
    #[command(
        after_help = "OUT/checkpoint/ is a whole text-to-video model (EMA weights, text encoder, \
        tokenizer, and a copy of the autoencoder), written atomically; --resume continues it exactly.\n\n\
        Examples:\n  minisora train dit --vae samples/vae --out runs/dit\n  \
        minisora train dit --init samples/model --data my_clips --steps 2000 --lr 2e-4 --out runs/tuned\n\n\
        A fine-tune (--init) reads captions with the model's own vocabulary: a caption with \
        another word is an error that names it."
    )]
    Dit(TrainDitArgs),
    /// Train the whole default text-to-video model: the autoencoder, then the text encoder and
    /// DiT, then a short fine-tune of both with the rival-caption contrast
    #[command(
        after_help = "OUT/vae/, OUT/dit/ and OUT/contrast/ are the three stages' run folders \
        (checkpoint/ and log.csv each); the finished model is OUT/contrast/checkpoint/ \
        (OUT/dit/checkpoint/ with --contrast-steps 0), ready for `minisora generate --checkpoint`. \
        Interrupted? Run the same command with --resume: the unfinished stage continues exactly \
        where its checkpoint stopped, a finished one is skipped.\n\n\
        The defaults train the shipped model's recipe (samples/model/card.md says how its weights were made):\n  minisora train model --out runs/model"
    )]
    Model(TrainModelArgs),
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    step: BenchStepArgs,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Write a DiT's random weights, inputs and minisora's output, for a peer implementation to check itself against
    #[command(
        after_help = "Writes DIR/config.json, weights.safetensors, inputs.safetensors and \
        output.safetensors (CPU, f32). benches/peer/run.sh uses it to check the PyTorch DiT \
        against minisora's.\n\nExample:\n  minisora bench export --preset S --tokens 256 --out /tmp/parity"
    )]
    Export(BenchExportArgs),
    /// Prompt adherence against time: every sampler at every step count, scored as `minisora eval` scores
    #[command(
        after_help = "For each sampler and step count, generates the clips of one fixed set of held-out \
        prompts (--count of each kind, the same for every point), scores them with minisora eval's \
        detector, and reports the pass rate with the wall time per clip (the point's evaluation time \
        over its clips, one clip in flight per core). Prints a table (or --json) and draws the PNG \
        plot --plot: pass rate against seconds per clip, one line per sampler.\n\nExample:\n  \
        minisora bench steps --samplers euler,heun,dpm++2m --steps 2,4,8,16,32 --plot steps.png"
    )]
    Steps(BenchStepsArgs),
    /// On an NVIDIA GPU: kernel parity, the bf16 matmul peak, and one denoising step per preset and token count
    #[command(
        after_help = "Needs a minisora built with --features cuda. In order: each of minisora's CUDA \
        kernels (LayerNorm + modulation, RoPE, fused attention: scalar, mma and pipelined) on random \
        inputs against its CPU reference, printing the relative error and pass/fail (1e-4 in f32, \
        1e-2 in bf16 and f16), and a whole DiT forward against the CPU; the bf16 matrix multiply \
        peak (--peak-size cubed); the tensor-core attention kernels that passed, alone at the \
        presets' shapes from 16k tokens (the fastest then runs the steps); then one DiT forward for \
        each preset and token count: median ms, counted FLOPs, TFLOP/s, fraction of the peak, peak \
        memory. Repeats are sized so that everything fits --budget-s; cases that would not fit are \
        reported as skipped. Exit status 1 if a parity check fails.\n\n\
        scripts/gpu-check.sh runs this and the PyTorch peer on the same shapes.\n\nExample:\n  \
        minisora bench gpu-check --json gpu.json"
    )]
    GpuCheck(BenchGpuCheckArgs),
}

#[derive(Args)]
struct BenchGpuCheckArgs {
    /// Presets to time, separated by commas
    #[arg(long, value_delimiter = ',', default_value = "S,B,L,XL")]
    presets: Vec<String>,
    /// Video tokens per clip, separated by commas
    #[arg(long, value_delimiter = ',', default_value = "1024,4096,16384,32768")]
    tokens: Vec<usize>,
    /// Clips per forward
    #[arg(long, default_value_t = 2)]
    batch: usize,
    /// f32, bf16 or f16 for the timed steps
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Seconds the whole check may take
    #[arg(long, default_value_t = 300)]
    budget_s: u64,
    /// Side of the square bf16 matrices of the peak measurement
    #[arg(long, default_value_t = 8192)]
    peak_size: usize,
    /// cuda; cpu only dry-runs the command with small parity inputs
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Also write the report here as JSON (benches/peer/gpu_speed.py reads it)
    #[arg(long)]
    json: Option<PathBuf>,
    /// Time each op of one DiT block alone at PRESET:TOKENS before the
    /// steps (where a step's time goes), or `none`
    #[arg(long, default_value = "XL:16384")]
    breakdown: String,
    /// Only write the planned step cases to --json and stop (no GPU needed):
    /// the PyTorch peer's cases, for a run where minisora's part cannot start
    #[arg(long, requires = "json")]
    plan_only: bool,
}

#[derive(Args)]
struct BenchStepsArgs {
    /// Text-to-video checkpoint [default: the shipped samples/model]
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Samplers to compare, separated by commas (euler, heun, dpm++2m)
    #[arg(long, value_delimiter = ',', default_value = "euler,heun,dpm++2m")]
    samplers: Vec<String>,
    /// Step counts to try, separated by commas
    #[arg(long, default_value = "2,4,8,16,32")]
    steps: String,
    /// Held-out prompts of each kind (one object, two objects) per point
    #[arg(long, default_value_t = 25)]
    count: usize,
    /// Classifier-free guidance scale (1 = none)
    #[arg(long, default_value_t = 3.0)]
    cfg: f64,
    /// Timestep shift [default: the shift the model was trained with]
    #[arg(long)]
    shift: Option<f64>,
    #[command(flatten)]
    clip: ClipArgs,
    /// Where to draw the plot (PNG)
    #[arg(long, default_value = "bench-steps.png")]
    plot: PathBuf,
    /// Print JSON instead of the table
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchExportArgs {
    /// Model preset
    #[arg(long, default_value = "default")]
    preset: String,
    /// Video tokens per clip
    #[arg(long, default_value_t = 128)]
    tokens: usize,
    /// Clips
    #[arg(long, default_value_t = 2)]
    batch: usize,
    /// Mix each block's MLP input over neighbouring tokens, instead of the
    /// preset's choice (see train dit --local-mix)
    #[arg(long, value_name = "true|false")]
    local_mix: Option<bool>,
    /// Base of the RoPE frequencies, instead of the preset's (see train dit
    /// --rope-base)
    #[arg(long, value_name = "BASE")]
    rope_base: Option<f64>,
    /// RoPE rotation pairs given to t, h and w, instead of a third each (see
    /// train dit --rope-pairs)
    #[arg(long, value_name = "T,H,W", value_parser = rope_pairs_arg)]
    rope_pairs: Option<[usize; 3]>,
    /// Folder to write
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct BenchStepArgs {
    /// Model presets to time (default, S, B, L, XL, tiny); repeat the flag for several
    #[arg(long = "preset", default_values_t = vec!["default".to_string()])]
    presets: Vec<String>,
    /// Video tokens per clip; repeat the flag for several [default: the clip size below]
    #[arg(long = "tokens")]
    tokens: Vec<usize>,
    /// Clip frames, used when no --tokens is given [default: the preset's]
    #[arg(long)]
    frames: Option<usize>,
    /// Clip height [default: the preset's]
    #[arg(long)]
    height: Option<usize>,
    /// Clip width [default: the preset's]
    #[arg(long)]
    width: Option<usize>,
    /// Clips per step (guidance doubles the forward batch)
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// cpu, or cuda (builds with --features cuda)
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32, bf16 or f16 [default: f32 on the CPU, bf16 on a GPU]
    #[arg(long)]
    dtype: Option<String>,
    /// Timed steps per case
    #[arg(long, default_value_t = 10)]
    repeat: usize,
    /// Untimed steps first
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Print JSON (one object with every case) instead of a table
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct TrainModelArgs {
    /// Model preset (autoencoder and DiT): default or tiny
    #[arg(long, default_value = "default")]
    preset: String,
    /// Autoencoder optimizer steps
    #[arg(long, default_value_t = VAE_STEPS)]
    vae_steps: u64,
    /// Autoencoder clips per step
    #[arg(long, default_value_t = 8)]
    vae_batch: usize,
    /// Autoencoder peak learning rate
    #[arg(long, default_value_t = 2e-3)]
    vae_lr: f64,
    /// DiT optimizer steps
    #[arg(long, default_value_t = DIT_STEPS)]
    dit_steps: u64,
    /// DiT clips per step
    #[arg(long, default_value_t = 16)]
    dit_batch: usize,
    /// DiT peak learning rate
    #[arg(long, default_value_t = DIT_LR)]
    dit_lr: f64,
    /// Mix the DiT's MLP inputs over neighbouring tokens, instead of the
    /// preset's choice (see train dit --local-mix); resuming, the run's own
    #[arg(long, value_name = "true|false")]
    dit_local_mix: Option<bool>,
    /// Base of the DiT's RoPE frequencies, instead of the preset's 10000
    /// (see train dit --rope-base); resuming, the run's own
    #[arg(long, value_name = "BASE")]
    dit_rope_base: Option<f64>,
    /// RoPE rotation pairs of the DiT's heads given to t, h and w, instead
    /// of a third each (see train dit --rope-pairs); resuming, the run's own
    #[arg(long, value_name = "T,H,W", value_parser = rope_pairs_arg)]
    dit_rope_pairs: Option<[usize; 3]>,
    /// Condition the DiT on the caption by joint attention instead of
    /// cross-attention (see train dit --joint-text); resuming, the run's own
    #[arg(long, value_name = "true|false")]
    dit_joint_text: Option<bool>,
    /// Train the DiT with self-conditioning or without (see train dit
    /// --self-cond) [default: the preset's, on; resuming, the run's own]
    #[arg(long, value_name = "true|false")]
    dit_self_cond: Option<bool>,
    /// Transformer blocks of the caption encoder; 0 encodes a caption by its
    /// word and position embeddings and the final LayerNorm alone [default:
    /// 2; resuming, the run's own]
    #[arg(long, value_name = "N")]
    dit_text_depth: Option<usize>,
    /// Share of two-object captions in the DiT stage's clips, in [0, 1];
    /// 0.5 is the grammar's own draw (see train dit --two-objects) [default:
    /// 0.65, the shipped model's]
    #[arg(long, value_name = "SHARE")]
    dit_two_objects: Option<f64>,
    /// Steps of the last stage, which fine-tunes the DiT stage's model with
    /// the rival-caption ranking term (see train dit --contrast) from a
    /// fresh optimiser: warm-up 50 steps, cosine to 10%, weight average
    /// 0.995. 0 leaves it out: the DiT stage's model is then the finished one
    #[arg(long, default_value_t = CONTRAST_STEPS)]
    contrast_steps: u64,
    /// The last stage's peak learning rate
    #[arg(long, default_value_t = CONTRAST_LR)]
    contrast_lr: f64,
    /// The last stage's ranking-term weight (see train dit --contrast)
    #[arg(long, default_value_t = CONTRAST_WEIGHT)]
    contrast: f64,
    /// The last stage's ranking-term margin (see train dit --contrast-margin)
    #[arg(long, default_value_t = CONTRAST_MARGIN, value_name = "MARGIN")]
    contrast_margin: f64,
    /// Channels of the latent (the autoencoder's output and the DiT's
    /// input), instead of the preset's (default: 8, where the standalone
    /// `train vae` makes 16)
    #[arg(long)]
    latent_channels: Option<usize>,
    /// Seed of both stages' data order, initial weights and noise
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    shards: ShardArgs,
    /// Run folder
    #[arg(long, default_value = "runs/model")]
    out: PathBuf,
    /// Continue the run in --out
    #[arg(long)]
    resume: bool,
}

#[derive(Args)]
struct TrainDitArgs {
    /// The autoencoder checkpoint whose latents to learn [default with
    /// --init: the model's own, INIT/vae]
    #[arg(long, required_unless_present = "init")]
    vae: Option<PathBuf>,
    /// Fine-tune this trained model (a checkpoint folder such as
    /// samples/model) instead of starting from random weights: its
    /// architecture, vocabulary and autoencoder are kept, and the optimiser
    /// and learning-rate schedule start afresh
    #[arg(long, value_name = "DIR", conflicts_with_all = ["preset", "patch", "hidden", "depth", "heads", "local_mix", "rope_base", "rope_pairs", "joint_text", "self_cond", "text_depth"])]
    init: Option<PathBuf>,
    /// DiT preset: default, S, B, L, XL [default: default]
    #[arg(long)]
    preset: Option<String>,
    /// Patch size T,H,W over the latent, instead of the preset's
    #[arg(long)]
    patch: Option<PatchSize>,
    /// Model width, instead of the preset's
    #[arg(long)]
    hidden: Option<usize>,
    /// Transformer blocks, instead of the preset's
    #[arg(long)]
    depth: Option<usize>,
    /// Attention heads, instead of the preset's
    #[arg(long)]
    heads: Option<usize>,
    /// Mix each block's MLP input over neighbouring tokens (a 3x3 depthwise
    /// convolution; see DitConfig::local_mix), instead of the preset's choice
    #[arg(long, value_name = "true|false")]
    local_mix: Option<bool>,
    /// Base of the self-attention's 3D RoPE frequencies, above 1 (see
    /// DitConfig::rope_base), instead of the preset's 10000. Resuming, the
    /// architecture flags left out (this, --rope-pairs, --joint-text,
    /// --self-cond, --patch, --hidden, --depth, --heads, --local-mix,
    /// --text-depth) keep the run's own
    #[arg(long, value_name = "BASE")]
    rope_base: Option<f64>,
    /// RoPE rotation pairs of each head given to t, h and w, adding up to
    /// half the head size (see DitConfig::rope_pairs), instead of a third
    /// each to t and h and the rest to w: a 16-frame clip's grid in the
    /// default model has one position in time, so 0,8,8 gives its 5
    /// unturned t pairs to h and w
    #[arg(long, value_name = "T,H,W", value_parser = rope_pairs_arg)]
    rope_pairs: Option<[usize; 3]>,
    /// Condition on the caption by joint attention (SD3's MMDiT, lighter:
    /// the caption's tokens a second stream in each block's self-attention,
    /// updated from the video; see DitConfig::joint_text) instead of
    /// cross-attention, the preset's choice. One clip per sequence
    #[arg(long, value_name = "true|false")]
    joint_text: Option<bool>,
    /// Self-conditioning (Chen et al. 2023): the DiT also reads its own
    /// previous clean estimate, fed back on half the training steps (an
    /// extra forward without gradient: about 11% fewer clips a second on
    /// the default model) and by the sampler at every step after the
    /// first; see DitConfig::self_cond. Instead of the preset's choice (on
    /// for default, as the shipped model; off for S, B, L, XL)
    #[arg(long, value_name = "true|false")]
    self_cond: Option<bool>,
    /// Transformer blocks of the caption encoder; 0 encodes a caption by its
    /// word and position embeddings and the final LayerNorm alone [default:
    /// 2; resuming, the run's own]
    #[arg(long, value_name = "N")]
    text_depth: Option<usize>,
    /// Training clips: "shapes" (rendered on the fly) or a clip folder
    #[arg(long, default_value = "shapes")]
    data: String,
    /// Optimizer steps in all (`train model`'s DiT stage, before its rival-contrast stage)
    #[arg(long, default_value_t = DIT_STEPS)]
    steps: u64,
    /// Clips per step
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Peak learning rate
    #[arg(long, default_value_t = DIT_LR)]
    lr: f64,
    /// Warm-up steps
    #[arg(long, default_value_t = 200)]
    warmup: u64,
    /// Probability of training on the null caption (enables guidance)
    #[arg(long, default_value_t = 0.1)]
    cfg_dropout: f64,
    /// Timestep shift of the training times (1 = plain logit-normal; >1 trains
    /// more at high noise, where an object's place and motion are decided).
    /// Recorded in the checkpoint as the sampling default.
    #[arg(long, default_value_t = DIT_TIME_SHIFT)]
    time_shift: f64,
    /// Share of the training times drawn without the shift (0 = all shifted):
    /// a mixture also trains the middle times, where shapes are settled
    #[arg(long, default_value_t = DIT_TIME_MIX)]
    time_mix: f64,
    /// Weight of a ranking term that teaches the model to tell each clip's
    /// caption from a rival one (an object with another shape or size, or
    /// one of two objects alone; Shapes World captions only): the mean of
    /// relu(MARGIN - (err_rival - err_caption)) over the clips, each error
    /// the clip's mean squared velocity error. A second forward and
    /// backward of every clip, so about half the clips a second; 0 is
    /// none. A clip folder with no caption of the grammar is refused
    #[arg(long, default_value_t = 0.0)]
    contrast: f64,
    /// The ranking term's margin, in mean squared velocity error
    #[arg(long, default_value_t = CONTRAST_MARGIN, value_name = "MARGIN")]
    contrast_margin: f64,
    /// Decay of the weights' moving average used for sampling
    #[arg(long, default_value_t = 0.999)]
    ema: f64,
    /// Share of two-object captions in the Shapes World clips trained on,
    /// in [0, 1]; 0.5 is the grammar's own draw, as runs before this option
    /// made [default: 0.65, the shipped model's; resuming, the run's own]
    #[arg(long, value_name = "SHARE")]
    two_objects: Option<f64>,
    /// Seed of the data order, initial weights and noise
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    clip: ClipArgs,
    #[command(flatten)]
    shards: ShardArgs,
    /// Steps between checkpoints
    #[arg(long, default_value_t = 250)]
    checkpoint_every: u64,
    /// Run folder
    #[arg(long, default_value = "runs/dit")]
    out: PathBuf,
    /// Continue the checkpoint in --out
    #[arg(long)]
    resume: bool,
    /// Stop after this step (with a checkpoint), to continue later with --resume
    #[arg(long)]
    stop_at: Option<u64>,
}

#[derive(Subcommand)]
enum VaeCommand {
    /// Encode and decode a video file or PNG-frame folder
    Roundtrip(VaeRoundtripArgs),
    /// PSNR and colour error on held-out Shapes World clips (or a folder)
    Eval(VaeEvalArgs),
}

#[derive(Args)]
struct TrainVaeArgs {
    /// Autoencoder preset: default or tiny
    #[arg(long, default_value = "default")]
    preset: String,
    #[command(flatten)]
    shape: VaeShapeArgs,
    /// Training clips: "shapes" (rendered on the fly) or a clip folder
    #[arg(long, default_value = "shapes")]
    data: String,
    /// Optimizer steps in all (the shipped autoencoder's)
    #[arg(long, default_value_t = VAE_STEPS)]
    steps: u64,
    /// Clips per step
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Peak learning rate (after warm-up; cosine decay to 10% of it)
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Warm-up steps
    #[arg(long, default_value_t = 100)]
    warmup: u64,
    /// Final learning rate as a fraction of the peak
    #[arg(long, default_value_t = VAE_LR_FLOOR)]
    lr_floor: f64,
    /// Decay of the weights' moving average that the checkpoint holds (0: none)
    #[arg(long, default_value_t = VAE_EMA)]
    ema: f64,
    /// Seed of the data order, initial weights and noise
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    clip: ClipArgs,
    #[command(flatten)]
    shards: ShardArgs,
    /// Steps between checkpoints
    #[arg(long, default_value_t = 200)]
    checkpoint_every: u64,
    /// Run folder
    #[arg(long, default_value = "runs/vae")]
    out: PathBuf,
    /// Continue the checkpoint in --out
    #[arg(long)]
    resume: bool,
    /// Stop after this step (with a checkpoint), to continue later with --resume
    #[arg(long)]
    stop_at: Option<u64>,
}

/// How a training batch is split across cores.
#[derive(Args)]
struct ShardArgs {
    /// Parts each batch is cut into, trained side by side on one thread per
    /// core (changes results only by rounding) [default: 2 for an even batch, else 1]
    #[arg(long = "shards", value_name = "N")]
    count: Option<usize>,
}

impl ShardArgs {
    /// The shards for batches of `batch`.
    fn for_batch(&self, batch: usize) -> usize {
        self.count
            .unwrap_or(minisora::train::parallel::default_shards(batch))
    }
}

/// Changes to the preset's autoencoder, for experiments.
#[derive(Args)]
struct VaeShapeArgs {
    /// Weight of the KL term against the mean squared error [default: the preset's]
    #[arg(long)]
    kl_weight: Option<f64>,
    /// Hidden width at latent resolution [default: the preset's]
    #[arg(long)]
    hidden_width: Option<usize>,
    /// Residual blocks in the encoder and in the decoder [default: the preset's]
    #[arg(long)]
    blocks: Option<usize>,
    /// Latent channels [default: the preset's]
    #[arg(long)]
    latent_channels: Option<usize>,
    /// Channels per pixel into the full-resolution refinement, 0 for none [default: the preset's]
    #[arg(long)]
    pixel_channels: Option<usize>,
    /// Hidden width of the refinement [default: the preset's]
    #[arg(long)]
    pixel_width: Option<usize>,
}

impl VaeShapeArgs {
    fn apply(&self, config: &mut minisora::vae::VaeConfig) -> Result<()> {
        if let Some(w) = self.kl_weight {
            if !(w >= 0.0 && w.is_finite()) {
                bail!("--kl-weight must be a finite number >= 0, got {w}");
            }
            config.kl_weight = w;
        }
        let set = |field: &mut usize, v: Option<usize>| {
            if let Some(v) = v {
                *field = v;
            }
        };
        set(&mut config.width, self.hidden_width);
        set(&mut config.blocks, self.blocks);
        set(&mut config.latent_channels, self.latent_channels);
        set(&mut config.pixel_channels, self.pixel_channels);
        set(&mut config.pixel_width, self.pixel_width);
        Ok(config.validate()?)
    }
}

#[derive(Args)]
struct VaeRoundtripArgs {
    /// A video file, GIF or folder of PNG frames
    input: PathBuf,
    /// Autoencoder checkpoint [default: the shipped samples/vae]
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Write the input and the reconstruction side by side
    #[arg(long)]
    side_by_side: bool,
    /// Frames per second of mp4 and GIF outputs
    #[arg(long, default_value_t = 8.0)]
    fps: f64,
    /// Nearest-neighbour upscale of the output
    #[arg(long, default_value_t = 1)]
    scale: usize,
    /// Output (format from the name, as for render)
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
struct VaeEvalArgs {
    /// Autoencoder checkpoint [default: the shipped samples/vae]
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Held-out clips to score
    #[arg(long, default_value_t = 200)]
    count: usize,
    /// Score a clip folder instead of held-out Shapes World clips
    #[arg(long)]
    data: Option<PathBuf>,
    /// Add Gaussian noise of this standard deviation to each latent (in the
    /// normalised units the DiT works in) before decoding: how far a
    /// generated latent may stray before the decoder's clip goes wrong
    #[arg(long, default_value_t = 0.0, value_name = "SIGMA")]
    latent_noise: f64,
    /// Print JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
struct ClipArgs {
    /// Frames in the clip
    #[arg(long, default_value_t = Canvas::DEFAULT.frames)]
    frames: usize,
    /// Frame height in pixels
    #[arg(long, default_value_t = Canvas::DEFAULT.height)]
    height: usize,
    /// Frame width in pixels
    #[arg(long, default_value_t = Canvas::DEFAULT.width)]
    width: usize,
    /// Frames per second of mp4 and GIF outputs
    #[arg(long, default_value_t = 8.0)]
    fps: f64,
}

impl ClipArgs {
    fn canvas(&self) -> Result<Canvas> {
        Ok(Canvas::new(self.frames, self.height, self.width)?)
    }
}

#[derive(Args)]
struct RenderArgs {
    /// The prompt, e.g. "a red circle moving right" (see `minisora --help` for the grammar)
    #[arg(required_unless_present = "random")]
    prompt: Option<String>,
    /// Draw a random prompt from the grammar with --seed instead of giving one
    #[arg(long, conflicts_with = "prompt")]
    random: bool,
    /// Seed for positions, travel distances and unspecified sizes
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    clip: ClipArgs,
    /// Nearest-neighbour upscale factor [default: enough for 256 pixels on the short side]
    #[arg(long)]
    scale: Option<usize>,
    /// Output: .mp4, .gif, .png (contact sheet) or a folder ending in / (PNG frames)
    #[arg(short, long)]
    output: PathBuf,
}

#[derive(Args)]
struct DataArgs {
    /// Number of clips
    #[arg(long)]
    count: usize,
    /// Seed of the whole set
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    clip: ClipArgs,
    /// How each clip is stored: png (lossless frame folders), mp4 or gif
    #[arg(long, default_value = "png", value_parser = ["png", "mp4", "gif"])]
    format: String,
    /// Output folder (created if missing)
    #[arg(short, long)]
    output: PathBuf,
}

#[derive(Args)]
struct InspectArgs {
    /// A video file (anything FFmpeg reads), a GIF or a folder of PNG frames
    #[arg(required_unless_present = "prompt")]
    input: Option<PathBuf>,
    /// Inspect a Shapes World clip of this prompt instead of a file
    #[arg(long, conflicts_with = "input")]
    prompt: Option<String>,
    /// Seed of the --prompt clip
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    clip: ClipArgs,
    /// Model preset whose compression, patch size and cost to report: default, S, B, L, XL
    #[arg(long, default_value = "default")]
    preset: String,
    /// Patch size T,H,W over the latent [default: the preset's]
    #[arg(long)]
    patch: Option<PatchSize>,
    /// Compression factors T,H,W [default: the preset's]
    #[arg(long)]
    compress: Option<PatchSize>,
    /// Refuse sizes the factors do not divide instead of padding them
    #[arg(long)]
    no_pad: bool,
    /// Print JSON (keys input, latent, patch, grid, tokens, ...) instead of the table
    #[arg(long)]
    json: bool,
    /// Write a picture: the frames with each token tinted and numbered, and the token sequence
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Pixel size of the picture's frames [default: enough for 256 pixels on the short side]
    #[arg(long)]
    scale: Option<usize>,
}

fn auto_scale(scale: Option<usize>, height: usize, width: usize) -> usize {
    scale.unwrap_or_else(|| 256usize.div_ceil(height.min(width).max(1)).clamp(1, 16))
}

fn inspect(args: InspectArgs) -> Result<()> {
    let preset = minisora::preset::preset(&args.preset)?;
    let (frames, source) = match (&args.input, &args.prompt) {
        (Some(path), _) => (
            video::read(path, &Default::default())
                .with_context(|| format!("cannot inspect {}", path.display()))?,
            path.display().to_string(),
        ),
        (None, Some(prompt)) => {
            let scene = Scene::parse(prompt)?;
            let clip = shapes_world::render(&scene, args.clip.canvas()?, args.seed)?;
            (clip.frames, format!("\"{scene}\" (seed {})", args.seed))
        }
        (None, None) => bail!("give a video file or --prompt"),
    };
    let (t, h, w, _) = frames.dim();
    let remainder = if args.no_pad {
        Remainder::Reject
    } else {
        Remainder::Pad
    };
    let ins = minisora::inspect::inspect(
        [t, h, w],
        &preset,
        args.compress.map(|c| c.as_array()),
        args.patch,
        remainder,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&ins)?);
    } else {
        print!("{}", ins.table(&source));
    }
    if let Some(out) = &args.output {
        let scale = auto_scale(args.scale, h, w);
        video::check_scale(frames.dim(), scale)?;
        let picture = minisora::inspect::token_picture(&frames.view(), &ins, scale);
        video::write_png(out, &picture)?;
        if !args.json {
            println!(
                "wrote {} ({}x{})",
                out.display(),
                picture.width(),
                picture.height()
            );
        }
    }
    Ok(())
}

/// The shipped checkpoint `samples/NAME`: in the current directory if there,
/// else beside the sources minisora was built from.
fn shipped(name: &str) -> PathBuf {
    let here = PathBuf::from("samples").join(name);
    if here.exists() {
        return here;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("samples")
        .join(name)
}

fn progress_bar(total: u64, position: u64) -> Result<ProgressBar> {
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} eta {eta}")
            .context("progress bar template")?,
    );
    bar.set_position(position);
    Ok(bar)
}

/// This process's arguments, for a run's record: lossy where an argument
/// (a path) is not UTF-8, which `std::env::args` would panic on.
fn command_line() -> Vec<String> {
    std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

/// Closes a training run's progress bar and says where it stopped.
fn finish_run(bar: &ProgressBar, outcome: &minisora::train::TrainOutcome, steps: u64) {
    bar.finish();
    println!(
        "step {} of {steps}: checkpoint {} ({:.0} s this run)",
        outcome.step,
        outcome.checkpoint.display(),
        outcome.seconds
    );
}

/// The shipped autoencoder's schedule floor and weight average (`train vae`
/// and `train model` defaults). No average: a 0.999 average cost the
/// autoencoder 0.9 dB of PSNR (samples/vae/card.md).
const VAE_LR_FLOOR: f64 = 0.05;
const VAE_EMA: f64 = 0.0;
/// The timestep shift the DiT trains with (`train dit` and `train model`).
const DIT_TIME_SHIFT: f64 = 3.0;
/// Share of the DiT's training times drawn without the shift.
const DIT_TIME_MIX: f64 = 0.0;
/// The shipped model's training lengths: the shipped weights are `train
/// model`'s with these (samples/model/card.md, "How it was made"). With
/// the rival-contrast stage ([`CONTRAST_STEPS`]) after the DiT's, that run
/// took 120.6, 95.1 and 115.5 minutes alone on the machine of three
/// 2026-12-07 sessions (over issue 5's 90). A DiT stage of 10300 steps
/// made a model passing 57.5% of two-object prompts (bar 60%) where these
/// pass 61.0%.
const VAE_STEPS: u64 = 8400;
const DIT_STEPS: u64 = 11800;
/// Share of two-object captions in the DiT's Shapes World clips: the shipped
/// model's, where the grammar's own draw is one half (samples/model/history.md).
const DIT_TWO_OBJECTS: f64 = 0.65;
/// `train model`'s last stage, the rival-contrast fine-tune, as the shipped
/// model was tuned (samples/model/history.md, "Rival contrast"). 750 and
/// 2250 steps on the same DiT stage passed fewer prompts (the same file,
/// "The contrast stage's length").
const CONTRAST_STEPS: u64 = 1500;
const CONTRAST_LR: f64 = 2e-4;
const CONTRAST_WARMUP: u64 = 50;
const CONTRAST_EMA: f64 = 0.995;
const CONTRAST_WEIGHT: f64 = 1.0;
const CONTRAST_MARGIN: f64 = 0.1;

/// The caption encoder of a DiT: [`minisora::text::TextConfig::for_dit`]'s,
/// with `depth` blocks if given.
fn text_config(dit: &minisora::dit::DitConfig, depth: Option<usize>) -> minisora::text::TextConfig {
    let text = minisora::text::TextConfig::for_dit(dit);
    minisora::text::TextConfig {
        depth: depth.unwrap_or(text.depth),
        ..text
    }
}

/// The checkpoint a DiT run in `run_dir` continues, when resuming: settings
/// a command leaves out take its values, so that a run resumes as it began.
/// `None` when not resuming or nothing readable is there (an unreadable
/// checkpoint is train's to report, with its path).
fn resumed_dit(resume: bool, run_dir: &Path) -> Option<minisora::train::dit::DitMeta> {
    let config = run_dir.join("checkpoint/config.json");
    if !(resume && config.exists()) {
        return None;
    }
    minisora::checkpoint::read_json(&config).ok()
}

/// The share of two-object captions a DiT run trains with: `given` if the
/// command gave one; else the share of the checkpoint it resumes (runs from
/// before the option had none: the grammar's even draw); else the shipped
/// model's, for Shapes World.
fn two_objects_for(
    given: Option<f64>,
    resumed: Option<&minisora::train::dit::DitMeta>,
    data: &str,
) -> Option<f64> {
    match (given, resumed) {
        (Some(share), _) => Some(share),
        (None, Some(meta)) => meta.run.two_objects,
        (None, None) => (data == "shapes").then_some(DIT_TWO_OBJECTS),
    }
}
/// The DiT's peak learning rate (`train dit` and `train model`). A full run
/// at 1.5e-3 ended with a lower loss and the same prompt adherence
/// (samples/model/history.md, "Its prompt adherence, and what was tried on it").
const DIT_LR: f64 = 7e-4;

fn train_vae(args: TrainVaeArgs) -> Result<()> {
    use minisora::train::{vae, RunConfig};
    let mut config = minisora::vae::VaeConfig::preset(&args.preset)?;
    args.shape.apply(&mut config)?;
    let run = RunConfig {
        steps: args.steps,
        batch: args.batch,
        lr: args.lr,
        warmup: args.warmup,
        lr_floor: args.lr_floor,
        seed: args.seed,
        data: args.data.clone(),
        frames: args.clip.frames,
        height: args.clip.height,
        width: args.clip.width,
        checkpoint_every: args.checkpoint_every.max(1),
        shards: args.shards.for_batch(args.batch),
        ema_decay: args.ema,
        two_objects: None,
    };
    let command = command_line();
    let bar = progress_bar(args.steps, 0)?;
    let session = minisora::train::Session {
        resume: args.resume,
        stop_at: args.stop_at,
        command: command.join(" "),
    };
    let outcome = vae::train(&args.out, &config, &run, &session, &Device::Cpu, |r| {
        bar.set_position(r.step);
        let psnr = r
            .extra
            .iter()
            .find(|(k, _)| *k == "psnr")
            .map_or(0.0, |(_, v)| *v);
        bar.set_message(format!(
            "loss {:.5}  psnr {psnr:.2} dB  {:.1} clips/s",
            r.loss, r.clips_per_s
        ));
    })?;
    finish_run(&bar, &outcome, args.steps);
    Ok(())
}

fn train_dit(args: TrainDitArgs) -> Result<()> {
    use minisora::train::{dit, RunConfig, Session};
    let vae_dir = match (&args.vae, &args.init) {
        (Some(vae), _) => vae.clone(),
        (None, Some(init)) => init.join("vae"),
        (None, None) => bail!("--vae is needed (or --init, whose autoencoder is then used)"),
    };
    let resumed = resumed_dit(args.resume, &args.out);
    let (dit, text) = match &args.init {
        Some(init) => {
            if !init.is_dir() {
                bail!("--init {}: no such checkpoint directory", init.display());
            }
            let meta: dit::DitMeta =
                minisora::checkpoint::read_config(init, "dit", "a text-to-video model")
                    .with_context(|| format!("--init {}", init.display()))?;
            (meta.dit, meta.text)
        }
        None => {
            // resuming, the flags left out keep the run's own settings, and
            // without --preset so does the rest of its architecture
            let (base, base_text) = match (&resumed, &args.preset) {
                (Some(meta), None) => (meta.dit.clone(), meta.text.clone()),
                (_, name) => {
                    let preset = minisora::preset::preset(name.as_deref().unwrap_or("default"))?;
                    let text = text_config(&preset.dit, None);
                    (preset.dit, text)
                }
            };
            // what a flag left out means: the resumed run's value, else the preset's
            let (left_out, left_out_text) = resumed
                .as_ref()
                .map_or((&base, &base_text), |meta| (&meta.dit, &meta.text));
            // the DiT denoises what its autoencoder makes, whatever the preset's
            let vae = minisora::train::vae::read_meta(&vae_dir)
                .with_context(|| format!("--vae {}", vae_dir.display()))?;
            let dit = minisora::dit::DitConfig {
                latent_channels: vae.vae.latent_channels,
                patch: args.patch.unwrap_or(left_out.patch),
                hidden: args.hidden.unwrap_or(left_out.hidden),
                depth: args.depth.unwrap_or(left_out.depth),
                heads: args.heads.unwrap_or(left_out.heads),
                local_mix: args.local_mix.unwrap_or(left_out.local_mix),
                rope_base: args.rope_base.unwrap_or(left_out.rope_base),
                rope_pairs: args.rope_pairs.or(left_out.rope_pairs),
                joint_text: args.joint_text.unwrap_or(left_out.joint_text),
                self_cond: args.self_cond.unwrap_or(left_out.self_cond),
                ..base.clone()
            };
            let text = minisora::text::TextConfig {
                depth: args.text_depth.unwrap_or(left_out_text.depth),
                ..base_text.clone()
            };
            (dit, text)
        }
    };
    let run = RunConfig {
        steps: args.steps,
        batch: args.batch,
        lr: args.lr,
        warmup: args.warmup,
        lr_floor: 0.1,
        seed: args.seed,
        data: args.data.clone(),
        frames: args.clip.frames,
        height: args.clip.height,
        width: args.clip.width,
        checkpoint_every: args.checkpoint_every.max(1),
        shards: args.shards.for_batch(args.batch),
        ema_decay: args.ema,
        two_objects: two_objects_for(args.two_objects, resumed.as_ref(), &args.data),
    };
    let job = dit::DitJob {
        dit,
        text,
        run,
        vae_dir: &vae_dir,
        cfg_dropout: args.cfg_dropout,
        time_shift: args.time_shift,
        time_mix: args.time_mix,
        contrast: args.contrast,
        contrast_margin: args.contrast_margin,
        init: args.init.as_deref(),
    };
    let session = Session {
        resume: args.resume,
        stop_at: args.stop_at,
        command: command_line().join(" "),
    };
    let bar = progress_bar(args.steps, 0)?;
    let outcome = dit::train(&args.out, &job, &session, &Device::Cpu, |r| {
        bar.set_position(r.step);
        bar.set_message(format!("loss {:.4}  {:.1} clips/s", r.loss, r.clips_per_s));
    })?;
    finish_run(&bar, &outcome, args.steps);
    Ok(())
}

/// Exactly `N` comma-separated numbers, or `None`.
fn numbers<T: std::str::FromStr, const N: usize>(text: &str) -> Option<[T; N]> {
    let parsed: Option<Vec<T>> = text.split(',').map(|p| p.trim().parse().ok()).collect();
    parsed?.try_into().ok()
}

/// `FROM,TO` of `--cfg-interval`: two numbers; whether they are times in
/// order is checked where they are used.
fn interval_arg(text: &str) -> std::result::Result<[f64; 2], String> {
    numbers(text).ok_or_else(|| {
        format!(
            "expected two numbers FROM,TO (times from 0, the clip, to 1, pure noise), got \"{text}\""
        )
    })
}

/// `T,H,W` of `--rope-pairs`: three whole numbers; whether they fit the
/// head is checked with the rest of the config.
fn rope_pairs_arg(text: &str) -> std::result::Result<[usize; 3], String> {
    numbers(text).ok_or_else(|| {
        format!(
            "expected three whole numbers T,H,W (pairs for time, height, width), got \"{text}\""
        )
    })
}

fn parse_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            let device = Device::new_cuda(0).context(
                "--device cuda needs a minisora built with --features cuda and an NVIDIA GPU",
            )?;
            minisora::bench::gpu_memory::keep_reserved_memory(&device);
            Ok(device)
        }
        other => bail!("--device must be cpu or cuda, got \"{other}\""),
    }
}

fn parse_dtype(name: &str) -> Result<candle_core::DType> {
    use candle_core::DType;
    match name {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        other => bail!("--dtype must be f32, bf16 or f16, got \"{other}\""),
    }
}

fn bench(args: BenchArgs) -> Result<()> {
    match args.command {
        Some(BenchCommand::Export(a)) => {
            if a.batch == 0 {
                bail!("--batch must be at least 1");
            }
            let preset = minisora::preset::preset(&a.preset)?;
            let grid = minisora::bench::grid_for_tokens(a.tokens)?;
            let dit = minisora::dit::DitConfig {
                local_mix: a.local_mix.unwrap_or(preset.dit.local_mix),
                rope_base: a.rope_base.unwrap_or(preset.dit.rope_base),
                rope_pairs: a.rope_pairs.or(preset.dit.rope_pairs),
                ..preset.dit.clone()
            };
            minisora::bench::export(&dit, grid, a.batch, &a.out)?;
            println!(
                "wrote {}: preset {}, grid {grid:?}, batch {}",
                a.out.display(),
                preset.name,
                a.batch
            );
            Ok(())
        }
        Some(BenchCommand::Steps(a)) => bench_steps(a),
        Some(BenchCommand::GpuCheck(a)) => bench_gpu_check(a),
        None => bench_step(args.step),
    }
}

fn bench_gpu_check(args: BenchGpuCheckArgs) -> Result<()> {
    use minisora::bench::gpu;
    if args.batch == 0 || args.peak_size == 0 || args.tokens.contains(&0) {
        bail!("--batch, --peak-size and every --tokens must be at least 1");
    }
    if args.presets.is_empty() || args.tokens.is_empty() {
        bail!("--presets and --tokens need at least one value each");
    }
    for name in &args.presets {
        minisora::preset::preset(name)?;
    }
    let device = if args.plan_only {
        Device::Cpu
    } else {
        parse_device(&args.device)?
    };
    let opts = gpu::GpuCheckOptions {
        presets: args.presets,
        tokens: args.tokens,
        batch: args.batch,
        dtype: parse_dtype(&args.dtype)?,
        peak_size: args.peak_size,
        budget: std::time::Duration::from_secs(args.budget_s),
        quick: device.is_cpu(),
        breakdown: match args.breakdown.as_str() {
            "none" => None,
            spec => {
                let (preset, tokens) = spec.split_once(':').with_context(|| {
                    format!("--breakdown takes PRESET:TOKENS or none, got \"{spec}\"")
                })?;
                minisora::preset::preset(preset)?;
                let tokens: usize = tokens
                    .parse()
                    .with_context(|| format!("--breakdown: \"{tokens}\" is not a token count"))?;
                Some((preset.to_string(), tokens))
            }
        },
    };
    let write = |report: &gpu::GpuCheckReport| -> Result<()> {
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(report)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    };
    // the plan first, then after every part: a run cut short still leaves
    // the peer its cases and what was measured
    write(&gpu::GpuCheckReport {
        plan: gpu::plan(&opts)?,
        ..Default::default()
    })?;
    if args.plan_only {
        return Ok(());
    }
    let report = gpu::run(
        &device,
        &opts,
        |line| println!("{line}"),
        |r| {
            if let Err(e) = write(r) {
                eprintln!("warning: {e:#}");
            }
        },
    )?;
    write(&report)?;
    if let Some(path) = &args.json {
        println!("wrote {}", path.display());
    }
    let failed = report.parity.iter().filter(|p| !p.pass).count();
    if failed > 0 {
        bail!("{failed} of {} parity checks failed", report.parity.len());
    }
    Ok(())
}

fn bench_steps(args: BenchStepsArgs) -> Result<()> {
    use minisora::bench::{plot, steps};
    let step_counts = steps::parse_steps(&args.steps)?;
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let (meta, model, vae) = load_model(&args.checkpoint, &Device::Cpu, candle_core::DType::F32)?;
    let prompts = minisora::eval::held_out(0, args.count);
    let base = minisora::pipeline::SampleOptions {
        seed: 0,
        steps: 1,
        sampler: String::new(),
        cfg: args.cfg,
        cfg_interval: [0.0, 1.0],
        shift: args.shift,
        canvas: args.clip.canvas()?,
        candidates: 1,
        rivals: false,
    };
    let points_total = args.samplers.len() * step_counts.len();
    let bar = progress_bar((points_total * prompts.len()) as u64, 0)?;
    let threads = minisora::train::parallel::worker_threads(prompts.len());
    let points = steps::sweep(
        &model,
        &meta,
        &vae,
        &prompts,
        &args.samplers,
        &step_counts,
        &base,
        &Device::Cpu,
        threads,
        |point, done| bar.set_position((point * prompts.len() + done) as u64),
    )?;
    bar.finish_and_clear();
    let shift = args.shift.unwrap_or(meta.time_shift);
    let title = format!(
        "{} prompts ({} of each kind), guidance {}, shift {}",
        prompts.len(),
        args.count,
        args.cfg,
        shift
    );
    plot::draw_sweep(&points, &title, &args.plot)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&points)?);
        return Ok(());
    }
    println!("{title}; {threads} clips in flight");
    println!(
        "{:<8} {:>5} {:>6} {:>8} {:>6} {:>6} {:>6} {:>7} {:>6} {:>6} {:>7}",
        "sampler",
        "steps",
        "calls",
        "s/clip",
        "pass",
        "1-obj",
        "2-obj",
        "colour",
        "shape",
        "size",
        "motion"
    );
    let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.0}%", 100.0 * v));
    for p in &points {
        let a = &p.adherence;
        println!(
            "{:<8} {:>5} {:>6} {:>8.3} {:>6} {:>6} {:>6} {:>7} {:>6} {:>6} {:>7}",
            p.sampler,
            p.steps,
            p.model_calls,
            p.seconds_per_clip,
            pct(Some(a.pass_rate)),
            pct(a.one_object_pass),
            pct(a.two_object_pass),
            pct(Some(a.colour)),
            pct(Some(a.shape)),
            pct(Some(a.size)),
            pct(Some(a.motion)),
        );
    }
    println!(
        "calls: DiT calls per clip (guidance runs both predictions as one batch); s/clip: the point's wall time over its clips"
    );
    println!("plot: {}", args.plot.display());
    Ok(())
}

fn bench_step(args: BenchStepArgs) -> Result<()> {
    use minisora::bench::{self, StepCase};
    let device = parse_device(&args.device)?;
    let dtype_name = args
        .dtype
        .clone()
        .unwrap_or_else(|| if device.is_cpu() { "f32" } else { "bf16" }.to_string());
    let dtype = parse_dtype(&dtype_name)?;
    if args.batch == 0 || args.repeat == 0 {
        bail!("--batch and --repeat must be at least 1");
    }
    // a GPU needs a large product to reach its peak; 1024^3 is ~2 us there
    let peak_size = if device.is_cpu() { 1024 } else { 8192 };
    let peak = bench::matmul_peak(&device, dtype, peak_size, 5)?;
    let mut reports = Vec::new();
    for name in &args.presets {
        let preset = minisora::preset::preset(name)?;
        let grids: Vec<[usize; 3]> = if args.tokens.is_empty() {
            let c = preset.canvas;
            let size = [
                args.frames.unwrap_or(c.frames),
                args.height.unwrap_or(c.height),
                args.width.unwrap_or(c.width),
            ];
            let f = preset.compression.factors();
            let p = preset.dit.patch;
            let latent: Vec<usize> = (0..3).map(|i| size[i] / f[i]).collect();
            let grid = [latent[0] / p.t, latent[1] / p.h, latent[2] / p.w];
            if grid.contains(&0) || (0..3).any(|i| size[i] % f[i] != 0) {
                bail!(
                    "a {}x{}x{} clip does not fit preset {}: frames, height and width must be multiples of {}, {} and {} times its patch",
                    size[0], size[1], size[2], preset.name, f[0], f[1], f[2]
                );
            }
            vec![grid]
        } else {
            args.tokens
                .iter()
                .map(|&n| Ok(bench::grid_for_tokens(n)?))
                .collect::<Result<_>>()?
        };
        for grid in grids {
            for guidance in [false, true] {
                let case = StepCase {
                    preset: preset.name.to_string(),
                    dit: preset.dit.clone(),
                    grid,
                    batch: args.batch,
                    guidance,
                    dtype,
                    repeat: args.repeat,
                    warmup: args.warmup,
                };
                reports.push(bench::bench_step(&case, &device, peak)?);
            }
        }
    }
    if args.json {
        let out = serde_json::json!({ "matmul_peak_gflops": peak, "cases": reports });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "matrix multiply peak ({peak_size}^3, {}, {}): {peak:.1} GFLOP/s",
        dtype_name, args.device
    );
    println!(
        "{:<8} {:>6} {:>5} {:>9} {:>9} {:>10} {:>8} {:>8} {:>8} {:>9} {:>6} {:>9}",
        "preset",
        "tokens",
        "batch",
        "median ms",
        "p90 ms",
        "tokens/s",
        "attn",
        "proj",
        "mlp",
        "GFLOP/s",
        "peak",
        "mem MiB"
    );
    // FLOPs with an SI prefix
    let gf = |v: u64| {
        let v = v as f64;
        match v {
            v if v >= 1e12 => format!("{:.2}T", v / 1e12),
            v if v >= 1e9 => format!("{:.2}G", v / 1e9),
            v if v >= 1e6 => format!("{:.2}M", v / 1e6),
            v => format!("{:.1}k", v / 1e3),
        }
    };
    for r in &reports {
        println!(
            "{:<8} {:>6} {:>5} {:>9.2} {:>9.2} {:>10.0} {:>8} {:>8} {:>8} {:>9.1} {:>5.0}% {:>9}",
            r.preset,
            r.tokens,
            format!("{}{}", r.forward_batch, if r.guidance { "g" } else { "" }),
            r.median_ms,
            r.p90_ms,
            r.tokens_per_s,
            gf(r.cost.attention_flops),
            gf(r.cost.attention_proj_flops),
            gf(r.cost.mlp_flops),
            r.achieved_gflops,
            100.0 * r.peak_fraction,
            r.peak_memory_bytes.map_or("-".to_string(), |b| format!(
                "{:.1}",
                b as f64 / (1 << 20) as f64
            )),
        );
    }
    println!(
        "batch: clips in the forward (g: conditional + unconditional for guidance in one batch)"
    );
    println!("attn, proj, mlp: counted FLOPs of attention scores, attention projections, MLP");
    Ok(())
}

fn train_model(args: TrainModelArgs) -> Result<()> {
    use minisora::train::model::{self, ContrastStage, ModelPlan, Stage};
    use minisora::train::{RunConfig, Session};
    let preset = minisora::preset::preset(&args.preset)?;
    let mut vae = match preset.name {
        "default" | "tiny" => minisora::vae::VaeConfig::preset(preset.name)?,
        other => bail!("train model trains the default or tiny preset; {other} is for benchmarks (train its stages with train vae and train dit)"),
    };
    let latent_channels = args.latent_channels.unwrap_or(preset.compression.channels);
    vae.latent_channels = latent_channels;
    let canvas = preset.canvas;
    let run = |steps, batch, lr, warmup, checkpoint_every, lr_floor, ema_decay| RunConfig {
        steps,
        batch,
        lr,
        warmup,
        lr_floor,
        seed: args.seed,
        data: "shapes".into(),
        frames: canvas.frames,
        height: canvas.height,
        width: canvas.width,
        checkpoint_every,
        shards: args.shards.for_batch(batch),
        ema_decay,
        two_objects: None,
    };
    let resumed = resumed_dit(args.resume, &model::stage_dir(&args.out, Stage::Dit));
    let two_objects = two_objects_for(args.dit_two_objects, resumed.as_ref(), "shapes");
    let plan = ModelPlan {
        vae,
        vae_run: run(
            args.vae_steps,
            args.vae_batch,
            args.vae_lr,
            100,
            200,
            VAE_LR_FLOOR,
            VAE_EMA,
        ),
        // resuming, the DiT flags left out keep the stage's own choices
        text: text_config(
            &preset.dit,
            args.dit_text_depth
                .or(resumed.as_ref().map(|meta| meta.text.depth)),
        ),
        dit: minisora::dit::DitConfig {
            local_mix: args
                .dit_local_mix
                .or(resumed.as_ref().map(|meta| meta.dit.local_mix))
                .unwrap_or(preset.dit.local_mix),
            rope_base: args
                .dit_rope_base
                .or(resumed.as_ref().map(|meta| meta.dit.rope_base))
                .unwrap_or(preset.dit.rope_base),
            rope_pairs: args
                .dit_rope_pairs
                .or(resumed.as_ref().and_then(|meta| meta.dit.rope_pairs))
                .or(preset.dit.rope_pairs),
            joint_text: args
                .dit_joint_text
                .or(resumed.as_ref().map(|meta| meta.dit.joint_text))
                .unwrap_or(preset.dit.joint_text),
            self_cond: args
                .dit_self_cond
                .or(resumed.as_ref().map(|meta| meta.dit.self_cond))
                .unwrap_or(preset.dit.self_cond),
            latent_channels,
            ..preset.dit.clone()
        },
        dit_run: RunConfig {
            two_objects,
            ..run(
                args.dit_steps,
                args.dit_batch,
                args.dit_lr,
                200,
                250,
                0.1,
                0.999,
            )
        },
        cfg_dropout: 0.1,
        time_shift: DIT_TIME_SHIFT,
        time_mix: DIT_TIME_MIX,
        contrast: (args.contrast_steps > 0).then(|| ContrastStage {
            run: RunConfig {
                two_objects,
                ..run(
                    args.contrast_steps,
                    args.dit_batch,
                    args.contrast_lr,
                    CONTRAST_WARMUP,
                    250,
                    0.1,
                    CONTRAST_EMA,
                )
            },
            weight: args.contrast,
            margin: args.contrast_margin,
        }),
    };
    let session = Session {
        resume: args.resume,
        stop_at: None,
        command: command_line().join(" "),
    };
    let bar = std::cell::RefCell::new(progress_bar(1, 0)?);
    let outcome = model::train(
        &args.out,
        &plan,
        &session,
        &Device::Cpu,
        |stage, from| {
            let total = match stage {
                Stage::Vae => args.vae_steps,
                Stage::Dit => args.dit_steps,
                Stage::Contrast => args.contrast_steps,
            };
            bar.borrow().finish_and_clear();
            println!("{}: step {from} of {total}", stage.name());
            *bar.borrow_mut() = progress_bar(total, from).expect("a fixed template");
        },
        |stage, r| {
            let bar = bar.borrow();
            bar.set_position(r.step);
            bar.set_message(format!(
                "{}  loss {:.4}  {:.1} clips/s",
                stage.name(),
                r.loss,
                r.clips_per_s
            ));
        },
    )?;
    bar.borrow().finish();
    println!(
        "model: {} (autoencoder {:.0} s, text encoder + DiT {:.0} s, rival contrast {:.0} s this run)",
        outcome.checkpoint.display(),
        outcome.vae_seconds,
        outcome.dit_seconds,
        outcome.contrast_seconds
    );
    Ok(())
}

fn generate(args: GenerateArgs) -> Result<()> {
    use minisora::pipeline;
    let (device, dtype) = args.sampling.device_dtype()?;
    let (meta, model, vae) = load_model(&args.checkpoint, &device, dtype)?;
    let canvas = args.clip.canvas()?;
    let options = args.sampling.options(args.seed, canvas);
    let write = WriteOptions {
        fps: args.clip.fps,
        scale: auto_scale(args.scale, canvas.height, canvas.width),
    };
    let jobs: Vec<(String, PathBuf)> = match (&args.prompt, &args.prompts) {
        (Some(p), _) => vec![(p.clone(), args.output.clone())],
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            std::fs::create_dir_all(&args.output)
                .with_context(|| format!("cannot create {}", args.output.display()))?;
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .enumerate()
                .map(|(i, p)| {
                    (
                        p.to_string(),
                        args.output.join(format!("{i:03}.{}", args.format)),
                    )
                })
                .collect()
        }
        (None, None) => bail!("give a prompt or --prompts FILE"),
    };
    let init = match &args.init {
        Some(path) => {
            check_strength("--strength", args.strength)?;
            let frames = video::read(
                path,
                &video::ReadOptions {
                    size: Some((canvas.height, canvas.width)),
                },
            )?;
            if frames.dim().0 < canvas.frames {
                bail!(
                    "{} has {} frames; --init needs at least --frames {}",
                    path.display(),
                    frames.dim().0,
                    canvas.frames
                );
            }
            let frames = frames
                .slice(ndarray::s![..canvas.frames, .., .., ..])
                .to_owned();
            Some(pipeline::Init {
                latent: pipeline::encode(&vae, &frames, &device)?,
                strength: args.strength,
            })
        }
        None => None,
    };
    let bar = progress_bar(jobs.len() as u64, 0)?;
    for (prompt, out) in &jobs {
        let g = pipeline::generate_from(
            &model,
            &meta,
            &vae,
            prompt,
            &options,
            init.as_ref(),
            &device,
        )
        .with_context(|| format!("prompt \"{prompt}\""))?;
        video::write(out, &g.frames.view(), &write)?;
        if args.show_steps {
            // one row per step: the middle frame of each step's data prediction
            let rows: Vec<_> = g
                .predictions
                .iter()
                .map(|p| pipeline::decode(&vae, p))
                .collect::<minisora::Result<_>>()?;
            let mid = canvas.frames / 2;
            let views: Vec<_> = rows
                .iter()
                .map(|f| f.slice(ndarray::s![mid..mid + 1, .., .., ..]))
                .collect();
            let strip = ndarray::concatenate(ndarray::Axis(0), &views)?;
            let steps_path = out.with_extension("steps.png");
            video::write(&steps_path, &strip.view(), &write)?;
        }
        bar.inc(1);
        let mut line = format!(
            "\"{prompt}\" -> {}",
            video::describe(out, &g.frames.view(), &write)
        );
        if !g.scores.is_empty() {
            let scores: Vec<String> = g.scores.iter().map(|s| format!("{s:.4}")).collect();
            line += &format!(
                " (kept candidate {} of {}, rated against the empty caption{}; scores {})",
                g.chosen,
                g.scores.len(),
                match g.rivals {
                    0 => String::new(),
                    r => format!(" and {r} rival captions"),
                },
                scores.join(" ")
            );
        }
        // a hidden bar (output not a terminal) would swallow the line
        if bar.is_hidden() {
            println!("{line}");
        } else {
            bar.println(line);
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// An SDEdit strength is a share of the steps: in (0, 1].
fn check_strength(flag: &str, strength: f64) -> Result<()> {
    if !(strength > 0.0 && strength <= 1.0) {
        bail!("{flag} must be in (0, 1] (the share of the steps run), got {strength}");
    }
    Ok(())
}

/// Loads a text-to-video checkpoint, or the shipped one when none is named.
fn load_model(
    checkpoint: &Option<PathBuf>,
    device: &Device,
    dtype: candle_core::DType,
) -> Result<(
    minisora::train::dit::DitMeta,
    minisora::train::dit::TextToVideo,
    minisora::train::vae::VaeCheckpoint,
)> {
    let dir = checkpoint.clone().unwrap_or_else(|| shipped("model"));
    if checkpoint.is_none() && !dir.exists() {
        bail!(
            "no model at {}: this checkout has no samples/model; train one with `minisora train model --out runs/model` and pass --checkpoint runs/model/contrast/checkpoint",
            dir.display()
        );
    }
    Ok(minisora::train::dit::load_as(&dir, device, dtype)?)
}

/// `eval --compare A B`.
fn eval_compare(a: &std::path::Path, b: &std::path::Path, json: bool) -> Result<()> {
    use minisora::eval::compare;
    let read = |p: &std::path::Path| {
        compare::read_scores(p).with_context(|| format!("--compare {}", p.display()))
    };
    let paired = compare::compare(&read(a)?, &read(b)?)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&paired)?);
        return Ok(());
    }
    println!("A  {}\nB  {}", a.display(), b.display());
    println!("prompts      A passes   B passes   only A   only B   sign test p");
    for k in &paired {
        let kind = match k.objects {
            1 => "one object".to_string(),
            2 => "two objects".to_string(),
            n => format!("{n} objects"),
        };
        let p = match k.p_value {
            p if p >= 0.01 => format!("{p:.2}"),
            p => format!("{p:.1e}"),
        };
        let rate = |n: usize| format!("{n}/{}", k.prompts);
        println!(
            "{kind:<12} {:<10} {:<10} {:<8} {:<8} {p}",
            rate(k.pass_a),
            rate(k.pass_b),
            k.only_a,
            k.only_b,
        );
    }
    Ok(())
}

/// `eval --save`: each scored clip as a GIF and a line of scores.jsonl per
/// prompt, in prompt order (clips finish out of order, so the lines wait in
/// memory and are written at the end).
struct SavedClips {
    dir: PathBuf,
    write: WriteOptions,
    lines: Vec<Option<String>>,
}

impl SavedClips {
    fn create(dir: &std::path::Path, prompts: usize, write: WriteOptions) -> Result<SavedClips> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(SavedClips {
            dir: dir.to_path_buf(),
            write,
            lines: vec![None; prompts],
        })
    }

    /// Keeps the clip and scores of `prompt`, the `i`th of the evaluation.
    fn add(
        &mut self,
        i: usize,
        prompt: &minisora::eval::EvalPrompt,
        frames: &minisora::video::Frames,
        scores: &[minisora::eval::ObjectScore],
    ) -> minisora::Result<()> {
        // named as generate --prompts names its clips
        let clip = format!("{:03}.gif", prompt.index);
        minisora::video::write(&self.dir.join(&clip), &frames.view(), &self.write)?;
        let line = serde_json::json!({
            "index": prompt.index,
            "prompt": prompt.scene.caption(),
            "seed": prompt.seed(),
            "clip": clip,
            "pass": scores.iter().all(minisora::eval::ObjectScore::all),
            "objects": scores,
        });
        self.lines[i] = Some(line.to_string());
        Ok(())
    }

    fn finish(self) -> Result<()> {
        let text: String = self.lines.into_iter().flatten().map(|l| l + "\n").collect();
        let path = self.dir.join("scores.jsonl");
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    }
}

fn eval(args: EvalArgs) -> Result<()> {
    if let Some(pair) = &args.compare {
        return eval_compare(&pair[0], &pair[1], args.json);
    }
    let (device, dtype) = args.sampling.device_dtype()?;
    let loaded = match args.renders {
        true => None,
        false => Some(load_model(&args.checkpoint, &device, dtype)?),
    };
    let prompts = match &args.prompts {
        Some(file) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| Scene::parse(l).map_err(anyhow::Error::from))
            .collect::<Result<Vec<_>>>()
            .map(minisora::eval::EvalPrompt::numbered)?,
        None if args.count == 0 => bail!("--count must be at least 1"),
        None => minisora::eval::held_out(args.skip, args.count),
    };
    if let (Some(file), true) = (&args.prompts, prompts.is_empty()) {
        bail!(
            "{} holds no prompts (one a line; # starts a comment)",
            file.display()
        );
    }
    if let Some(r) = args.renoise {
        check_strength("--renoise", r)?;
    }
    let options = args.sampling.options(0, args.clip.canvas()?);
    let mut saved = match &args.save {
        Some(dir) => {
            let (h, w) = (options.canvas.height, options.canvas.width);
            let write = WriteOptions {
                fps: args.clip.fps,
                scale: auto_scale(None, h, w),
            };
            Some(SavedClips::create(dir, prompts.len(), write)?)
        }
        None => None,
    };
    let bar = progress_bar(prompts.len() as u64, 0)?;
    let scored = |i: usize, frames: &minisora::video::Frames, scores: &[_]| {
        bar.inc(1);
        match saved.as_mut() {
            Some(saved) => saved.add(i, &prompts[i], frames, scores),
            None => Ok(()),
        }
    };
    // one GPU: prompts one after another; the CPU: one a core
    let threads = match device.is_cpu() {
        true => minisora::train::parallel::worker_threads(prompts.len()),
        false => 1,
    };
    let report = match &loaded {
        Some((meta, model, vae)) => minisora::eval::evaluate(
            model,
            meta,
            vae,
            &prompts,
            &options,
            args.renoise,
            &device,
            threads,
            scored,
        )?,
        None => minisora::eval::evaluate_renders(&prompts, options.canvas, threads, scored)?,
    };
    bar.finish_and_clear();
    if let Some(saved) = saved {
        saved.finish()?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let ranks = match (&args.prompts, args.skip) {
        (None, skip) if skip > 0 => format!(
            ", ranks {}-{} of each kind",
            skip + 1,
            skip.saturating_add(args.count)
        ),
        _ => String::new(),
    };
    let Some((meta, _, _)) = &loaded else {
        println!(
            "prompts      {} ({} objects{ranks}), each scored on its own Shapes World render (--renders: no model; the detector's ceiling)",
            report.prompts, report.objects
        );
        print_adherence(&report);
        return Ok(());
    };
    let interval = match args.sampling.cfg_interval {
        Some([from, to]) => format!(" at t in [{from}, {to}]"),
        None => String::new(),
    };
    println!(
        "prompts      {} ({} objects{ranks}), {} steps of {}, guidance {}{interval}, shift {}",
        report.prompts,
        report.objects,
        args.sampling.steps,
        args.sampling.sampler,
        args.sampling.cfg,
        args.sampling.shift.unwrap_or(meta.time_shift)
    );
    if args.sampling.candidates > 1 {
        println!(
            "candidates   {} a prompt, the best by the model's own score against the empty caption{} kept",
            args.sampling.candidates,
            if options.rivals {
                " and rival captions"
            } else {
                ""
            }
        );
    }
    if let Some(r) = args.renoise {
        let shift = args.sampling.shift.unwrap_or(meta.time_shift);
        println!(
            "start        each prompt's own render noised to t = {:.3} (--renoise {r}: the last {} steps)",
            minisora::pipeline::init_time(args.sampling.steps, shift, r),
            minisora::pipeline::init_steps(args.sampling.steps, r)
        );
    }
    print_adherence(&report);
    Ok(())
}

/// The per-attribute lines of `eval`'s report.
fn print_adherence(report: &minisora::eval::AdherenceReport) {
    let pct = |v: f64| format!("{:.1}%", 100.0 * v);
    println!("colour       {}", pct(report.colour));
    let by_kind: Vec<String> = report
        .shape_by_kind
        .iter()
        .map(|(shape, v)| format!("{shape} {}", pct(*v)))
        .collect();
    println!(
        "shape        {} ({})",
        pct(report.shape),
        by_kind.join(", ")
    );
    println!("size         {}", pct(report.size));
    println!("motion       {}", pct(report.motion));
    for (label, v) in [
        ("one object", report.one_object_pass),
        ("two objects", report.two_object_pass),
    ] {
        if let Some(v) = v {
            println!(
                "{label:<12} {} of prompts pass (every attribute of every object)",
                pct(v)
            );
        }
    }
}

fn vae_roundtrip(args: VaeRoundtripArgs) -> Result<()> {
    let ckpt_dir = args.checkpoint.unwrap_or_else(|| shipped("vae"));
    let (device, dtype) = args.device.device_dtype()?;
    let ckpt = minisora::train::vae::load(&ckpt_dir, &device)?.for_inference(dtype)?;
    let frames = video::read(&args.input, &Default::default())?;
    let (t, h, w, _) = frames.dim();
    ckpt.meta
        .vae
        .latent_size([t, h, w])
        .with_context(|| format!("{} cannot be encoded", args.input.display()))?;
    let recon = reconstruct(&ckpt, &frames, &device, dtype)?;
    let out = if args.side_by_side {
        ndarray::concatenate(ndarray::Axis(2), &[frames.view(), recon.view()])?
    } else {
        recon.clone()
    };
    let options = WriteOptions {
        fps: args.fps,
        scale: args.scale,
    };
    video::write(&args.output, &out.view(), &options)?;
    let mut stats = minisora::vae::eval::ReconStats::default();
    stats.add(&frames, &recon);
    println!(
        "PSNR {:.2} dB; wrote {}",
        stats.report().psnr,
        video::describe(&args.output, &out.view(), &options)
    );
    Ok(())
}

/// Encodes and decodes `frames` on `device` in `dtype` (the posterior's mean).
fn reconstruct(
    ckpt: &minisora::train::vae::VaeCheckpoint,
    frames: &video::Frames,
    device: &Device,
    dtype: candle_core::DType,
) -> Result<video::Frames> {
    let x = video::frames_to_tensor(&frames.view(), device)?.to_dtype(dtype)?;
    Ok(video::tensor_to_frames(&ckpt.vae.reconstruct(&x)?)?)
}

/// `frames` through the encoder's mean, plus `sigma` of Gaussian noise in
/// normalised latent units, through the decoder.
fn reconstruct_noisy(
    ckpt: &minisora::train::vae::VaeCheckpoint,
    frames: &video::Frames,
    sigma: f64,
    rng: &mut minisora::rng::Rng,
    device: &Device,
) -> Result<video::Frames> {
    let z = minisora::pipeline::encode(ckpt, frames, device)?;
    let noise = minisora::train::randn(rng, z.dims(), device)?;
    Ok(minisora::pipeline::decode(ckpt, &(z + (noise * sigma)?)?)?)
}

fn vae_eval(args: VaeEvalArgs) -> Result<()> {
    use minisora::train::{DataSource, HELD_OUT};
    if !(args.latent_noise >= 0.0 && args.latent_noise.is_finite()) {
        bail!(
            "--latent-noise must be a finite number >= 0, got {}",
            args.latent_noise
        );
    }
    let ckpt_dir = args.checkpoint.unwrap_or_else(|| shipped("vae"));
    let (device, dtype) = args.device.device_dtype()?;
    let ckpt = minisora::train::vae::load(&ckpt_dir, &device)?.for_inference(dtype)?;
    let run = &ckpt.meta.run;
    let canvas = run.canvas()?;
    let (source, count) = match &args.data {
        Some(dir) => {
            let data = minisora::train::data_source(&dir.to_string_lossy(), canvas, 0, None)?;
            let n = match &data {
                DataSource::Folder { clips, .. } => clips.len(),
                DataSource::Shapes { .. } => 0,
            };
            (data, n)
        }
        None => (
            DataSource::Shapes {
                canvas,
                seed: run.seed,
                two_objects: None,
            },
            args.count,
        ),
    };
    let bar = progress_bar(count as u64, 0)?;
    let mut stats = minisora::vae::eval::ReconStats::default();
    // the prompt-adherence detector on reconstructions of Shapes World clips:
    // the ceiling the autoencoder puts on a text-to-video model's `eval`
    let mut tally = minisora::eval::AttributeTally::default();
    for i in 0..count {
        // folders: every clip once, in order; Shapes World: held-out stream ids
        let (frames, caption) = match &source {
            DataSource::Folder { clips, .. } => {
                let f = video::read(
                    &clips[i].video,
                    &minisora::video::ReadOptions {
                        size: Some((canvas.height, canvas.width)),
                    },
                )?;
                let t = f.dim().0 / ckpt.meta.vae.ft * ckpt.meta.vae.ft;
                (
                    f.slice(ndarray::s![..t, .., .., ..]).to_owned(),
                    String::new(),
                )
            }
            DataSource::Shapes { .. } => source.clip(HELD_OUT + i as u64)?,
        };
        let recon = if args.latent_noise > 0.0 {
            let mut rng = minisora::rng::Rng::derive(run.seed, HELD_OUT + i as u64);
            reconstruct_noisy(&ckpt, &frames, args.latent_noise, &mut rng, &device)?
        } else {
            reconstruct(&ckpt, &frames, &device, dtype)?
        };
        stats.add(&frames, &recon);
        if matches!(source, DataSource::Shapes { .. }) {
            let scene = Scene::parse(&caption)?;
            tally.add(&scene, &minisora::eval::detect(&recon, &scene));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let report = stats.report();
    let detector = (args.data.is_none() && count > 0).then(|| tally.report());
    if args.json {
        #[derive(serde::Serialize)]
        struct Report {
            #[serde(flatten)]
            recon: minisora::vae::eval::ReconReport,
            /// the detector of `minisora eval` on the reconstructions
            detector_on_reconstructions: Option<minisora::eval::AdherenceReport>,
            /// `--latent-noise`
            latent_noise: f64,
        }
        let report = Report {
            recon: report,
            detector_on_reconstructions: detector,
            latent_noise: args.latent_noise,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "checkpoint   {} (step {})",
            ckpt_dir.display(),
            ckpt.meta.step
        );
        let what = match &args.data {
            Some(d) => d.display().to_string(),
            None => "held-out Shapes World clips (never used in training)".into(),
        };
        println!("clips        {} {what}", report.clips);
        if args.latent_noise > 0.0 {
            println!(
                "latent noise {} (standard deviation, normalised latent units) added before decoding",
                args.latent_noise
            );
        }
        println!(
            "PSNR         {:.2} dB (all pixels), {:.2} dB mean per clip",
            report.psnr, report.psnr_mean_per_clip
        );
        if let Some(e) = report.object_colour_error {
            println!("colour error {e:.2} of 255, mean absolute, inside objects");
        }
        if let Some(d) = detector {
            let pct = |v: f64| format!("{:.1}%", 100.0 * v);
            println!(
                "detector     on the reconstructions (the ceiling for `minisora eval`): colour {}, shape {}, size {}, motion {}; one object {}, two objects {} of clips pass",
                pct(d.colour),
                pct(d.shape),
                pct(d.size),
                pct(d.motion),
                d.one_object_pass.map_or("-".into(), pct),
                d.two_object_pass.map_or("-".into(), pct),
            );
        }
    }
    Ok(())
}

fn render(args: RenderArgs) -> Result<()> {
    let canvas = args.clip.canvas()?;
    let scene = match &args.prompt {
        Some(prompt) => Scene::parse(prompt)?,
        None => Scene::sample(&mut Rng::new(args.seed)),
    };
    let scale = match args.scale {
        Some(k) => k,
        None => 256usize
            .div_ceil(canvas.height.min(canvas.width))
            .clamp(1, 16),
    };
    let clip = shapes_world::render(&scene, canvas, args.seed)?;
    let options = WriteOptions {
        fps: args.clip.fps,
        scale,
    };
    video::write(&args.output, &clip.frames.view(), &options)?;
    println!("\"{scene}\" (seed {})", args.seed);
    println!(
        "wrote {}",
        video::describe(&args.output, &clip.frames.view(), &options)
    );
    Ok(())
}

fn data(args: DataArgs) -> Result<()> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let set = ShapesWorldSet::new(args.seed, args.clip.canvas()?, &args.format, args.clip.fps)?;
    let bar = ProgressBar::new(args.count as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} clips  {per_sec}  eta {eta}")
            .context("progress bar template")?,
    );
    let written = set.write(&args.output, args.count, |done| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    println!(
        "{}: {} clips ({written} written now, {} already there), {} frames of {}x{} as {}",
        args.output.display(),
        args.count,
        args.count - written,
        set.frames,
        set.width,
        set.height,
        set.format
    );
    Ok(())
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    // training runs its batch shards as tasks of candle's pool
    // (train::parallel) and keeps one thread per core
    let clip_threads = matches!(
        cli.command,
        Command::Eval(_)
            | Command::Bench(BenchArgs {
                command: Some(BenchCommand::Steps(_)),
                ..
            })
    );
    if clip_threads && std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // Eval and bench steps run their prompts on one thread per core;
        // candle's matrix multiply must then stay on its caller's thread.
        // Set here, before any other thread exists.
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    match cli.command {
        Command::Render(args) => render(args),
        Command::Data(args) => data(args),
        Command::Inspect(args) => inspect(args),
        Command::Bench(args) => bench(args),
        Command::Train(TrainCommand::Vae(args)) => train_vae(args),
        Command::Train(TrainCommand::Dit(args)) => train_dit(args),
        Command::Train(TrainCommand::Model(args)) => train_model(args),
        Command::Generate(args) => generate(args),
        Command::Eval(args) => eval(args),
        Command::Vae(VaeCommand::Roundtrip(args)) => vae_roundtrip(args),
        Command::Vae(VaeCommand::Eval(args)) => vae_eval(args),
    }
}

fn main() -> ExitCode {
    // `minisora bench --json | head` ends quietly when its reader stops, as
    // other command-line tools do, instead of panicking in `println!`:
    // restore SIGPIPE's default action, which Rust's runtime sets to ignore.
    #[cfg(unix)]
    // SAFETY: first thing in main, before any other thread exists; it only
    // changes how the process reacts to one signal
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    minisora::alloc::tune_for_tensors();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
