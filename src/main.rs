//! The `minisora` command line: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use minisora::data::clips::ShapesWorldSet;
use minisora::data::shapes_world::{self, Canvas, Scene};
use minisora::patch::{PatchSize, Remainder};
use minisora::rng::Rng;
use minisora::video::{self, WriteOptions};

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
        let picture =
            minisora::inspect::token_picture(&frames.view(), &ins, auto_scale(args.scale, h, w));
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
    match Cli::parse().command {
        Command::Render(args) => render(args),
        Command::Data(args) => data(args),
        Command::Inspect(args) => inspect(args),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
