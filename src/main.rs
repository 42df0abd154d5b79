//! The `minisora` command line: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use minisora::data::clips::ShapesWorldSet;
use minisora::data::shapes_world::{self, Canvas, Scene};
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
