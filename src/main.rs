//! The `anovit` binary: parses the command line, builds the pipeline, runs it. All the logic
//! lives in the library; this file is wiring and the only place `anyhow` is used.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anovit::actuation::{RecordingPin, RejectLine, StatusLine};
use anovit::board::{BoardProfile, DisplayKind, OutputKind, SourceKind};
use anovit::bundle::Bundle;
use anovit::calibrate::{BorderPeaks, Calibration};
use anovit::capture::{FrameSource, Prefetched, ReplaySource, SyntheticSource};
use anovit::clock::MonotonicClock;
use anovit::decision::{AlarmPolicy, Decider};
use anovit::display::MemoryFramebuffer;
use anovit::ejector::{Base, BeltPosition, Ejector, EjectorThread, PartTracker, Placement, Watermark};
use anovit::evaluate::{evaluate, score_files, EvalOptions, FrameScorer};
use anovit::model::{Int8Kernel, Model};
use anovit::pipeline::{AlarmOutput, Inspector, Outcome, Outputs};
use anovit::preprocess::Preprocessor;
use anovit::scoring::Scorer;
use anovit::service::Notifier;
use anovit::synth::{Defect, PartSpec, SynthConveyor};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use embedded_hal::digital::OutputPin;

/// Counts heap allocations per thread for `anovit bench` (one thread-local increment each).
#[global_allocator]
static ALLOC: anovit::bench::CountingAlloc = anovit::bench::CountingAlloc;

#[derive(Parser)]
#[command(name = "anovit", version, about = "Inline visual inspection with AnoViT: camera -> model -> reject line")]
struct Cli {
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Which AVX-512 VNNI kernel int8 products use on x86-64: auto (the 16x16 one on AMD, else
    /// tract's choice), the 8x8 or the 16x16 one (`anovit --int8-kernel narrow bench` and
    /// `wide` say which is faster here; docs/DEPLOY.md).
    #[arg(long, global = true, value_enum, default_value_t = Int8Kernel::Auto)]
    int8_kernel: Int8Kernel,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the inspection loop (with no options: the built-in demo).
    Run(RunArgs),
    /// Write the synthetic conveyor data set (the demo model's training data) in MVTec layout.
    Synth(SynthArgs),
    /// Choose the decision threshold from good images only and write it into the bundle.
    Calibrate(CalibrateArgs),
    /// Measure a bundle on a labelled data set (MVTec or Magnetic Tile layout).
    Eval(EvalArgs),
    /// Check a V4L2 camera: list devices, or capture frames with a profile's settings and report
    /// the format, the rate by driver timestamps and any dropped frames.
    #[cfg(feature = "hw-v4l")]
    Camera(CameraArgs),
    /// Play images into a V4L2 output device (a v4l2loopback virtual camera) at a steady rate,
    /// so that chosen parts travel the real capture path: dry runs at commissioning, tests.
    #[cfg(feature = "hw-v4l")]
    Feed(FeedArgs),
    /// Compile an ONNX bundle into a plan bundle (tract NNEF) for deploy builds.
    #[cfg(feature = "onnx")]
    Compile(CompileArgs),
    /// Measure speed and memory: the plan, the whole loop per frame, allocations, RSS, load
    /// time (`scripts/perf.py` runs it beside onnxruntime and writes docs/PERF.md).
    Bench(BenchArgs),
    /// Soak the whole loop on a simulated belt with injected faults (corrupt frames, camera
    /// stalls and disconnections, late and failing inference, a full disk) and check every
    /// part at the ejector; figures for docs/RELIABILITY.md. Exits 1 if any invariant broke.
    Soak(SoakArgs),
    /// Recompute the scores of a golden file (tests/data/golden.json, onnxruntime on x86) with
    /// this build: the check for ARM builds, under qemu or on the board. Exits 1 beyond tolerance.
    Golden(GoldenArgs),
}

#[derive(Args)]
struct GoldenArgs {
    /// The golden file.
    #[arg(default_value = "tests/data/golden.json")]
    file: PathBuf,
    /// Model bundle. Default: models/demo-f32.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The shared data folder for the real-image entries (skipped, and said so, without it).
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(Args)]
struct SoakArgs {
    /// Parts to run.
    #[arg(long, default_value_t = 100_000)]
    parts: u64,
    /// Seed of the parts and faults.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Share of parts with a corrupt frame (and with a late inference); rarer faults scale with it.
    #[arg(long, default_value_t = 0.01)]
    fault_rate: f64,
    /// Model bundle whose input, scoring and threshold the loop uses (its model is not run: an
    /// oracle stands in, so that every escape is the runtime's). Default: models/demo-f32.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Write the soak section of this Markdown file (between `<!-- soak:begin -->` and
    /// `<!-- soak:end -->`; the file is created if absent).
    #[arg(long)]
    doc: Option<PathBuf>,
    /// Write the whole report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct BenchArgs {
    /// Model bundle directories to time (repeat the option). Default: models/demo-f32 and
    /// models/demo-int8. The loop, the operator profile and the memory run use the first.
    #[arg(long = "model")]
    models: Vec<PathBuf>,
    /// Thread counts to time the plans at.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Plan runs per configuration and round.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Rounds: each round runs every configuration in turn, so that they share the machine's
    /// state alike.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Frames through the whole loop (after 10 warm-up frames); 0 skips the loop.
    #[arg(long, default_value_t = 300)]
    frames: usize,
    /// Camera frame size for the loop (YUYV, converted every frame), WIDTHxHEIGHT.
    #[arg(long, default_value = "640x480")]
    camera: String,
    /// Also time loading these bundles (e.g. a compiled plan).
    #[arg(long)]
    load: Vec<PathBuf>,
    /// Parts for the peak-memory run of `anovit run` on the first model; 0 skips it.
    #[arg(long, default_value_t = 200)]
    rss_parts: u64,
    /// Plan runs for the per-operator profile of each model; 0 skips it.
    #[arg(long, default_value_t = 20)]
    profile: usize,
    /// Write every figure as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Serve plan timings on stdin/stdout to a peer script (scripts/perf.py): prints the
    /// configurations as one JSON line, then answers each line `CONFIG RUNS` with a JSON list of
    /// milliseconds; ends at end of input.
    #[arg(long)]
    serve: bool,
    /// With --serve: write the model input the plans run on here (f32 little-endian, NCHW), so
    /// the peer runs the very same input.
    #[arg(long)]
    input_out: Option<PathBuf>,
    /// With --serve: write each configuration's reconstruction of that input into this folder
    /// (`N.f32`, N the configuration's index), for the peer to compare with its own.
    #[arg(long)]
    recon_out: Option<PathBuf>,
}

#[cfg(feature = "onnx")]
#[derive(Args)]
struct CompileArgs {
    /// ONNX bundle directory (model.onnx + manifest.json).
    #[arg(long, required_unless_present = "onnx", conflicts_with_all = ["onnx", "manifest"])]
    model: Option<PathBuf>,
    /// The ONNX file, when it is not in a bundle directory with its manifest (with --manifest;
    /// the manifest's sha256 must be this file's).
    #[arg(long, requires = "manifest")]
    onnx: Option<PathBuf>,
    /// The manifest that goes with --onnx (its scoring reference, if any, next to it).
    #[arg(long, requires = "onnx")]
    manifest: Option<PathBuf>,
    /// Output bundle directory.
    #[arg(long)]
    out: PathBuf,
    /// Require an int8 plan: the bundle must be int8 (scripts/quantize.py). An int8 bundle always
    /// compiles into tract's integer form; the flag makes an f32 bundle an error.
    #[arg(long)]
    int8: bool,
}

#[derive(Args)]
struct CalibrateArgs {
    /// Model bundle directory; its manifest's threshold is replaced.
    #[arg(long)]
    model: PathBuf,
    /// Folder of good images (PNG/JPEG) the model was not trained on.
    #[arg(long)]
    good: PathBuf,
    /// False-reject rate to stay under.
    #[arg(long, default_value_t = 0.01)]
    target_false_reject: f64,
    /// Confidence that the rate is not exceeded (the safety margin grows as images get fewer).
    #[arg(long, default_value_t = 0.95)]
    confidence: f64,
    /// Extra relative margin on the threshold (0.1 = 10 % higher).
    #[arg(long, default_value_t = 0.0)]
    margin: f64,
    /// Also learn a per-pixel scoring reference from the good images (mean and spread of their
    /// error maps): for fixtured parts, where the same spots are always hard to reconstruct.
    /// The threshold then comes from leave-one-out scores.
    #[arg(long)]
    reference: bool,
    /// Report only; leave the manifest as it is.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args)]
struct EvalArgs {
    /// Model bundle directory.
    #[arg(long)]
    model: PathBuf,
    /// Data set root (MVTec: `test/<kind>/`, `ground_truth/`; Magnetic Tile: `MT_*/Imgs/`).
    #[arg(long)]
    data: PathBuf,
    /// Layout of the data set (default: detected).
    #[arg(long, value_enum)]
    layout: Option<anovit::dataset::Layout>,
    /// Output folder for eval.json, eval.md, roc.png and overlays/.
    #[arg(long, default_value = "out/eval")]
    out: PathBuf,
    /// Heatmap overlays for the first N images of each kind (misclassified ones always).
    #[arg(long, default_value_t = 4)]
    overlays: usize,
    /// False-positive-rate limit of AUPRO.
    #[arg(long, default_value_t = 0.3)]
    max_fpr: f64,
    /// Also write the anomaly maps and masks as .npy files (for cross-checks).
    #[arg(long)]
    dump: bool,
}

#[cfg(feature = "hw-v4l")]
#[derive(Args)]
struct FeedArgs {
    /// Output device, e.g. /dev/video9 (`modprobe v4l2loopback video_nr=9`).
    #[arg(long)]
    device: PathBuf,
    /// Images to play (PNG/JPEG, all of one size), or a folder of them (sub-folders included,
    /// in the order `run --folder` replays them).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Frames per second.
    #[arg(long, default_value_t = 5)]
    fps: u32,
    /// Frames per image before the next one.
    #[arg(long, default_value_t = 1)]
    repeat: u64,
    /// Frames in all, cycling through the images; 0 = until stopped (SIGTERM, Ctrl-C).
    #[arg(long, default_value_t = 0)]
    frames: u64,
    /// Send MJPEG (each image JPEG-encoded at this quality, 1-100) instead of RGB24.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=100))]
    mjpeg: Option<u8>,
}

#[cfg(feature = "hw-v4l")]
#[derive(Args)]
struct CameraArgs {
    /// List the V4L2 capture devices with their formats, then stop.
    #[arg(long)]
    list: bool,
    /// Board profile whose `[camera]` settings to use (`camera.source = "v4l2"`).
    #[arg(long)]
    board: Option<PathBuf>,
    /// Device path or card name (overrides the profile).
    #[arg(long)]
    device: Option<String>,
    /// Pixel format: yuyv, rgb24, grey, mjpeg (overrides the profile).
    #[arg(long)]
    format: Option<String>,
    /// Frame size WIDTHxHEIGHT (overrides the profile).
    #[arg(long)]
    size: Option<String>,
    /// Frames per second (overrides the profile).
    #[arg(long)]
    fps: Option<u32>,
    /// Frames to capture.
    #[arg(long, default_value_t = 50)]
    frames: u64,
    /// Save the last frame as a PNG.
    #[arg(long)]
    save: Option<PathBuf>,
}

#[derive(Args, Default)]
struct RunArgs {
    /// Board profile (TOML). Default: board/host-demo.toml.
    #[arg(long)]
    board: Option<PathBuf>,
    /// Model bundle directory. Default: models/demo-f32.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Replay this image folder instead of the profile's camera.
    #[arg(long)]
    folder: Option<PathBuf>,
    /// Stop after this many parts.
    #[arg(long)]
    parts: Option<u64>,
    /// Write one JSON line per part to this file (`-` for stdout).
    #[arg(long)]
    events: Option<PathBuf>,
    /// Save the final status screen as a PNG.
    #[arg(long)]
    snapshot: Option<PathBuf>,
    /// Do not print a line per part.
    #[arg(long, short)]
    quiet: bool,
    /// Cores the model's matrix products run on (default 1; docs/PERF.md has both).
    #[arg(long)]
    threads: Option<usize>,
    /// Publish to this MQTT broker (`host` or `host:port`), with the profile's `[mqtt]`
    /// settings when it has them (docs/FLEET.md).
    #[arg(long, value_name = "BROKER")]
    mqtt: Option<String>,
    /// Serve the set-up page on this address (e.g. 127.0.0.1:8080), read-only unless the
    /// profile's `[web]` has a token (docs/FLEET.md).
    #[arg(long, value_name = "ADDR")]
    web: Option<String>,
}

#[derive(Args)]
struct SynthArgs {
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Generator seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Good training images.
    #[arg(long, default_value_t = 400)]
    train: u64,
    /// Good test images.
    #[arg(long, default_value_t = 100)]
    test_good: u64,
    /// Test images per defect type.
    #[arg(long, default_value_t = 30)]
    test_per_defect: u64,
    /// Image size in pixels (square).
    #[arg(long, default_value_t = SynthConveyor::DEFAULT_SIZE)]
    size: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    anovit::logger::init(match cli.verbose {
        0 => log::LevelFilter::Info,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    });
    anovit::model::set_int8_kernel(cli.int8_kernel);
    let r = match cli.cmd {
        Some(Cmd::Run(a)) => run(a),
        Some(Cmd::Synth(a)) => write_synth(&a),
        Some(Cmd::Calibrate(a)) => calibrate(&a),
        Some(Cmd::Eval(a)) => eval(&a),
        #[cfg(feature = "hw-v4l")]
        Some(Cmd::Camera(a)) => camera(&a),
        #[cfg(feature = "hw-v4l")]
        Some(Cmd::Feed(a)) => feed(&a),
        #[cfg(feature = "onnx")]
        Some(Cmd::Compile(a)) => compile(&a),
        Some(Cmd::Bench(a)) => bench(&a),
        Some(Cmd::Golden(a)) => golden(&a),
        Some(Cmd::Soak(a)) => {
            // Thousands of injected faults would bury the report: their log lines with -v.
            if cli.verbose == 0 {
                log::set_max_level(log::LevelFilter::Off);
            }
            soak(&a)
        }
        None => run(RunArgs::default()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A path shipped in the repository: as given relative to the working directory, else relative
/// to the source tree this binary was built from (so the demo runs from anywhere in a clone).
fn shipped(rel: &str) -> PathBuf {
    let here = PathBuf::from(rel);
    if here.exists() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn run(a: RunArgs) -> Result<()> {
    let board_path = a.board.clone().unwrap_or_else(|| shipped("board/host-demo.toml"));
    let board = BoardProfile::load(&board_path)?;
    let model_path = a.model.clone().unwrap_or_else(|| shipped("models/demo-f32"));
    let bundle = Bundle::load(&model_path)?;
    let m = &bundle.manifest;
    log::info!(
        "board {:?} ({}), model {:?} ({} {}x{}, threshold {} from {})",
        board.name,
        board_path.display(),
        m.name,
        m.model.precision,
        m.input.width(),
        m.input.height(),
        m.threshold.value,
        m.threshold.source
    );
    let t = std::time::Instant::now();
    let mut model = Model::load(&bundle)?;
    log::info!("model loaded and optimised in {} ms", t.elapsed().as_millis());
    if let Some(n) = a.threads {
        model.set_threads(n)?;
    }

    let clock = MonotonicClock::new();
    // Where a triggered camera marks the times it saw no part, for the ejector.
    let no_part = Watermark::default();
    let source = open_source(&board, &a, clock, &no_part)?;
    let no_part = board.trigger.is_some().then_some(no_part);
    let encoder = open_encoder(&board)?;
    let placement = board.placement();
    // With an ejector, its thread owns the reject line and the loop's own line stays idle.
    let idle = || {
        RejectLine::new(RecordingPin::<_, 16>::new(clock), board.reject.polarity, board.pulse())
            .unwrap_or_else(|e| match e {})
    };
    match board.reject.output {
        OutputKind::Recording => {
            let line = RejectLine::new(RecordingPin::<_, 1024>::new(clock), board.reject.polarity, board.pulse())
                .unwrap_or_else(|e| match e {});
            match placement {
                None => run_loop(source, model, line, clock, &bundle, &board, &a, encoder, None),
                Some(p) => {
                    let ejector = spawn_ejector(p, line, &encoder, clock, no_part)?;
                    run_loop(source, model, idle(), clock, &bundle, &board, &a, encoder, Some(ejector))
                }
            }
        }
        #[cfg(feature = "hw-gpio")]
        OutputKind::Gpio => {
            let (Some(chip), Some(n)) = (board.reject.chip.as_deref(), board.reject.line.as_ref()) else {
                bail!("board profile {:?}: `reject.chip` and `reject.line` are required for a GPIO reject line", board.name)
            };
            let idle_level = anovit::actuation::line_level(false, board.reject.polarity);
            let pin = anovit::gpio::open_output(chip, n, idle_level, "anovit-reject")?;
            log::info!("reject line: GPIO line {n} of {chip} ({:?})", board.reject.polarity);
            let cannot = || format!("cannot drive GPIO line {n} of {chip}");
            if let Some(p) = placement {
                let line = RejectLine::new(pin, board.reject.polarity, board.pulse()).with_context(cannot)?;
                let ejector = spawn_ejector(p, line, &encoder, clock, no_part)?;
                return run_loop(source, model, idle(), clock, &bundle, &board, &a, encoder, Some(ejector));
            }
            let pin = anovit::actuation::TimedPin::spawn(pin, board.reject.polarity, board.pulse())
                .context("cannot start the reject line's timer thread")?;
            let line = RejectLine::new(pin, board.reject.polarity, board.pulse()).with_context(cannot)?;
            run_loop(source, model, line, clock, &bundle, &board, &a, encoder, None)
        }
        #[cfg(not(feature = "hw-gpio"))]
        OutputKind::Gpio => bail!(
            "board profile {:?} asks for a GPIO reject line, but this build has no GPIO support: rebuild with `--features hw-gpio`",
            board.name
        ),
    }
}

/// The framebuffer device of `[display]`, checked against the view drawn on it.
fn open_fbdev(d: &anovit::board::Display) -> Result<Box<dyn anovit::display::Panel>> {
    use anovit::display::{fbdev::Fbdev, Layout};
    let fb = Fbdev::open(&d.device).map_err(|e| anyhow::anyhow!(e))?;
    let (w, h) = fb.size();
    if d.width > w || d.height > h {
        bail!(
            "{} shows {w}x{h} pixels: `display.width` x `display.height` ({}x{}) must fit in it",
            d.device.display(),
            d.width,
            d.height
        );
    }
    if fb.is_mono() && d.layout != Layout::Mono {
        bail!("{} is a one-colour screen: set `display.layout = \"mono\"`", d.device.display());
    }
    log::info!("display: {} ({w}x{h}), {:?} view of {}x{}", d.device.display(), d.layout, d.width, d.height);
    Ok(Box::new(fb))
}

/// The SSD1306 panel of `[display]`, on a thread of its own (a frame takes ~25 ms on the bus).
#[cfg(feature = "hw-i2c")]
fn open_oled(d: &anovit::board::Display) -> Result<Box<dyn anovit::display::Panel>> {
    let oled = anovit::display::oled::open(&d.bus, d.address).map_err(|e| anyhow::anyhow!(e))?;
    log::info!("display: SSD1306 at {:#04x} on {}", d.address, d.bus.display());
    let t = anovit::display::Threaded::spawn(Box::new(oled), d.width, d.height)
        .context("cannot start the display's thread")?;
    Ok(Box::new(t))
}

#[cfg(not(feature = "hw-i2c"))]
fn open_oled(_: &anovit::board::Display) -> Result<Box<dyn anovit::display::Panel>> {
    bail!("this build has no I2C panel support: rebuild with `--features hw-i2c`")
}

/// The ejector's thread, driving `line` when each part reaches the ejector.
fn spawn_ejector<P: OutputPin + Send + 'static>(
    p: Placement,
    line: RejectLine<P>,
    encoder: &Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    clock: MonotonicClock,
    idle: Option<Watermark>,
) -> Result<Box<dyn PartTracker>> {
    let belt = match (p.base, encoder) {
        (Base::Encoder, Some(count)) => BeltPosition::Encoder(count.clone()),
        _ => BeltPosition::Clock,
    };
    log::info!(
        "ejector: {:?} base, travel {} {}, lead {:?}",
        p.base,
        p.travel,
        if p.base == Base::Time { "us" } else { "counts" },
        p.lead
    );
    let thread =
        EjectorThread::spawn(Ejector::new(p, line), belt, clock, idle).context("cannot start the ejector thread")?;
    Ok(Box::new(thread))
}

/// A flag set by SIGTERM (systemd stopping the service) or SIGINT (Ctrl-C): the loop finishes
/// the part in hand, then leaves the lines idle and writes the final summary.
fn stop_on_signals() -> &'static std::sync::atomic::AtomicBool {
    use std::sync::atomic::{AtomicBool, Ordering};
    static STOP: AtomicBool = AtomicBool::new(false);
    extern "C" fn on_signal(_: libc::c_int) {
        // Only an atomic store: async-signal-safe.
        STOP.store(true, Ordering::Relaxed);
    }
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: installs a handler that only stores to an atomic.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    &STOP
}

/// The frame source the profile (or `--folder`) asks for, read one frame ahead on a capture
/// thread when the profile says `prefetch = true`.
fn open_source(
    board: &BoardProfile,
    a: &RunArgs,
    clock: MonotonicClock,
    idle: &Watermark,
) -> Result<Box<dyn FrameSource>> {
    let source = open_camera(board, a, idle)?;
    if !board.camera.prefetch {
        return Ok(source);
    }
    Ok(Box::new(Prefetched::spawn(source, clock).context("cannot start the capture thread")?))
}

#[cfg_attr(not(feature = "hw-v4l"), allow(unused_variables))]
fn open_camera(board: &BoardProfile, a: &RunArgs, idle: &Watermark) -> Result<Box<dyn FrameSource + Send>> {
    let limit = a.parts;
    let c = &board.camera;
    let folder = a.folder.as_ref().or(c.folder.as_ref().filter(|_| c.source == SourceKind::Folder));
    if let Some(folder) = folder {
        let src = ReplaySource::open(folder, c.loops && limit.is_some())?;
        log::info!("replaying {} images from {}", src.len(), folder.display());
        return Ok(Box::new(src));
    }
    match c.source {
        SourceKind::Synthetic | SourceKind::Folder => {
            let gen = SynthConveyor::new(c.seed, c.size, c.size, c.defect_rate);
            let count = limit.or((c.parts > 0).then_some(c.parts));
            let n = count.map_or("endless".to_string(), |n| n.to_string());
            log::info!("synthetic conveyor: {n} parts, seed {}, defect rate {}", c.seed, c.defect_rate);
            Ok(Box::new(SyntheticSource::new(gen, 0, count)))
        }
        #[cfg(feature = "hw-v4l")]
        SourceKind::V4l2 => {
            let mut src = anovit::capture::v4l2::V4l2Source::open(board.v4l2_config())?;
            log::info!("camera {}", src.negotiated());
            if let Some(t) = &board.trigger {
                src = src.with_trigger(open_trigger(board, t)?, Duration::from_millis(t.delay_ms), idle.clone());
                log::info!("one part per {:?} edge of trigger line {} of {}, {} ms to view", t.edge, t.line, t.chip, t.delay_ms);
            }
            Ok(match limit {
                Some(n) => Box::new(anovit::capture::Limited::new(src, n)),
                None => Box::new(src),
            })
        }
        #[cfg(not(feature = "hw-v4l"))]
        SourceKind::V4l2 => bail!(
            "board profile {:?} asks for a V4L2 camera, but this build has no camera support: rebuild with `--features hw-v4l`",
            board.name
        ),
    }
}

/// The part-present trigger input.
#[cfg(feature = "hw-v4l")]
fn open_trigger(board: &BoardProfile, t: &anovit::board::Input) -> Result<Box<dyn anovit::capture::Trigger>> {
    #[cfg(feature = "hw-gpio")]
    {
        let _ = board;
        Ok(Box::new(anovit::gpio::EdgeInput::open(&t.chip, &t.line, t.edge, "anovit-trigger")?))
    }
    #[cfg(not(feature = "hw-gpio"))]
    bail!(
        "board profile {:?} has a GPIO trigger ({} of {}), but this build has no GPIO support: rebuild with `--features hw-gpio`",
        board.name,
        t.line,
        t.chip
    )
}

/// The encoder's running edge count, when the profile has an encoder input.
fn open_encoder(board: &BoardProfile) -> Result<Option<std::sync::Arc<std::sync::atomic::AtomicU64>>> {
    let Some(e) = &board.encoder else { return Ok(None) };
    #[cfg(feature = "hw-gpio")]
    {
        let input = anovit::gpio::EdgeInput::open(&e.chip, &e.line, e.edge, "anovit-encoder")?;
        let counter = anovit::gpio::EdgeCounter::spawn(input).context("cannot start the encoder thread")?;
        log::info!("encoder: counting {:?} edges of line {} of {}", e.edge, e.line, e.chip);
        Ok(Some(counter.count()))
    }
    #[cfg(not(feature = "hw-gpio"))]
    bail!(
        "board profile {:?} has a GPIO encoder ({} of {}), but this build has no GPIO support: rebuild with `--features hw-gpio`",
        board.name,
        e.line,
        e.chip
    )
}

/// An on/off indicator line (health, alarm) as the profile names it.
fn open_status_line(
    board: &BoardProfile,
    what: &str,
    chip: &str,
    line: &anovit::board::LineSpec,
    active_low: bool,
) -> Result<StatusLine> {
    #[cfg(feature = "hw-gpio")]
    {
        let _ = board;
        let off = embedded_hal::digital::PinState::from(active_low);
        let pin = anovit::gpio::open_output(chip, line, off, &format!("anovit-{what}"))?;
        let status = StatusLine::new(Box::new(pin), active_low)
            .map_err(|e| anyhow::anyhow!("cannot drive {what} line {line} of {chip}: {e}"))?;
        log::info!("{what} line: GPIO line {line} of {chip}{}", if active_low { " (active low)" } else { "" });
        Ok(status)
    }
    #[cfg(not(feature = "hw-gpio"))]
    bail!(
        "board profile {:?} has a GPIO {what} line ({line} of {chip}, active low: {active_low}), but this build has no GPIO support: rebuild with `--features hw-gpio`",
        board.name
    )
}

#[allow(clippy::too_many_arguments)]
fn run_loop<P: OutputPin>(
    source: Box<dyn FrameSource>,
    model: Model,
    line: RejectLine<P>,
    clock: MonotonicClock,
    bundle: &Bundle,
    board: &BoardProfile,
    a: &RunArgs,
    encoder: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    ejector: Option<Box<dyn PartTracker>>,
) -> Result<()> {
    let m = &bundle.manifest;
    let events: Option<Box<dyn Write + Send>> = match &a.events {
        None => None,
        Some(p) if p.as_os_str() == "-" => Some(Box::new(std::io::BufWriter::new(std::io::stdout()))),
        Some(p) => Some(Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create event log {}", p.display()))?,
        ))),
    };
    let d = &board.display;
    let display = (d.kind != DisplayKind::None).then(|| MemoryFramebuffer::new(d.width, d.height));
    let panel = match d.kind {
        DisplayKind::Fbdev => Some(open_fbdev(d)?),
        DisplayKind::Ssd1306 => Some(open_oled(d)?),
        DisplayKind::None | DisplayKind::Memory => None,
    };
    let outputs = Outputs {
        display,
        layout: d.layout,
        panel,
        events,
        summary_every: Duration::from_secs(board.telemetry.summary_every_s),
        health: board
            .health
            .as_ref()
            .map(|h| open_status_line(board, "health", &h.chip, &h.line, h.active_low))
            .transpose()?,
        encoder,
        alarm: match &board.alarm {
            Some(a) => Some(AlarmOutput {
                line: open_status_line(board, "alarm", &a.chip, &a.line, a.active_low)?,
                policy: AlarmPolicy::new(a.raise_after, a.clear_after),
            }),
            None => None,
        },
        notifier: Notifier::from_env(),
        ejector,
        outbox: None,
        scene: None,
    };
    let (outputs, publisher) = start_publisher(outputs, board, bundle, a)?;
    let (outputs, _page) = start_page(outputs, board, bundle, a)?;
    let mut insp = Inspector::new(
        source,
        Preprocessor::new(&m.input),
        model,
        Scorer::new(m.input.width(), m.input.height(), &m.scoring).with_reference(bundle.reference.as_ref()),
        Decider::new(m.threshold.value, board.deadline()),
        line,
        clock,
        outputs,
    );
    let print = !a.quiet && a.events.as_deref() != Some(Path::new("-"));
    let threshold = m.threshold.value;
    let mut out = std::io::stdout().lock();
    let stop = stop_on_signals();
    insp.notify_ready();
    insp.run_until(stop, |o| {
        if print {
            let _ = print_part(&mut out, o, threshold);
        }
    });
    drop(out);
    let report = insp.finish();
    publisher.finish();
    if report.pin.is_none() {
        log::error!("the reject line could not be returned to idle");
    }
    let c = report.counters;
    println!(
        "\n{} parts: {} OK, {} NG, {} FAULT | {} reject pulses | latency p50 {:.1} ms, p99 {:.1} ms",
        c.frames,
        c.passed,
        c.defects,
        c.faults,
        c.pulses,
        report.p50.as_secs_f64() * 1e3,
        report.p99.as_secs_f64() * 1e3
    );
    if c.ejector_late + c.ejector_overflows > 0 {
        println!(
            "ejector: {} result(s) came after their part reached the ejector and {} part(s) found its queue full: those parts were rejected",
            c.ejector_late, c.ejector_overflows
        );
    }
    if c.ejector_unseen > 0 {
        println!(
            "ejector: {} time(s) belt the loop had not looked at reached the ejector and was rejected (the loop fell behind by more than the camera-to-ejector travel)",
            c.ejector_unseen
        );
    }
    if c.log_errors > 0 {
        println!("event log: {} event(s) could not be written (disk full?): they are lost", c.log_errors);
    }
    if c.truth_known > 0 {
        println!(
            "verdicts matched ground truth for {}/{} parts ({:.1} %): {} defective parts passed (escapes), {} good parts rejected",
            c.truth_matched,
            c.truth_known,
            100.0 * c.truth_matched as f64 / c.truth_known as f64,
            c.escapes,
            c.false_rejects
        );
    }
    if let (Some(p), Some(fb)) = (&a.snapshot, &report.display) {
        fb.save_png(p).with_context(|| format!("cannot write snapshot {}", p.display()))?;
        println!("status screen saved to {}", p.display());
    }
    Ok(())
}

/// The profile's `[mqtt]` section, with the broker given on the command line if any.
fn mqtt_settings(board: &BoardProfile, a: &RunArgs) -> Result<Option<anovit::board::Mqtt>> {
    let mut m = board.mqtt.clone();
    if let Some(b) = &a.mqtt {
        let base = match m.take() {
            Some(m) => m,
            None => anovit::board::BoardProfile::parse_mqtt(&format!("broker = {b:?}"))
                .map_err(|e| anyhow::anyhow!("--mqtt {b:?}: {e}"))?,
        };
        let set = anovit::board::Mqtt { broker: b.clone(), ..base };
        set.host_port().map_err(|e| anyhow::anyhow!("--mqtt {b:?}: {e}"))?;
        m = Some(set);
    }
    Ok(m)
}

/// Starts publishing to MQTT when the profile or the command line asks for it.
#[cfg(feature = "mqtt")]
fn start_publisher(
    mut out: Outputs,
    board: &BoardProfile,
    bundle: &Bundle,
    a: &RunArgs,
) -> Result<(Outputs, Publisher)> {
    let Some(m) = mqtt_settings(board, a)? else { return Ok((out, Publisher(None))) };
    let station = m.station(&board.name);
    let denorm = m.thumbnails.then_some(anovit::fleet::Denorm {
        width: bundle.manifest.input.width(),
        height: bundle.manifest.input.height(),
        mean: bundle.manifest.input.mean,
        std: bundle.manifest.input.std,
    });
    let outbox = anovit::fleet::Outbox::new(m.buffer, Duration::from_secs(m.counters_every_s), denorm);
    let online = serde_json::json!({
        "state": "online",
        "board": board.name,
        "model": bundle.manifest.name,
        "threshold": bundle.manifest.threshold.value,
        "version": env!("CARGO_PKG_VERSION"),
    })
    .to_string();
    let p = anovit::fleet::mqtt::Publisher::start(&m, &station, online, outbox.clone())
        .context("cannot start the MQTT publisher thread")?;
    log::info!(
        "mqtt: publishing to {} as anovit/{station}/ (QoS {}, up to {} messages kept while it is away)",
        m.broker,
        m.qos,
        m.buffer
    );
    out.outbox = Some(outbox);
    Ok((out, Publisher(Some(p))))
}

#[cfg(not(feature = "mqtt"))]
fn start_publisher(out: Outputs, board: &BoardProfile, _: &Bundle, a: &RunArgs) -> Result<(Outputs, Publisher)> {
    match mqtt_settings(board, a)? {
        None => Ok((out, Publisher)),
        Some(_) => {
            bail!("MQTT publishing is configured, but this build has no MQTT support: rebuild with `--features mqtt`")
        }
    }
}

/// Serves the set-up page when the profile or the command line asks for it.
#[cfg(feature = "web")]
fn start_page(
    mut out: Outputs,
    board: &BoardProfile,
    bundle: &Bundle,
    a: &RunArgs,
) -> Result<(Outputs, Option<anovit::fleet::page::Page>)> {
    let token = board.web.as_ref().and_then(|w| w.token.clone());
    let Some(listen) = a.web.clone().or_else(|| board.web.as_ref().map(|w| w.listen.clone())) else {
        return Ok((out, None));
    };
    let m = &bundle.manifest;
    let scene = std::sync::Arc::new(anovit::fleet::scene::Scene::new(
        m.input.roi,
        m.input.width(),
        m.input.height(),
        m.threshold.value,
    ));
    let station = anovit::fleet::page::Station { board: board.name.clone(), model: m.name.clone() };
    let page = anovit::fleet::page::Page::start(&listen, token.clone(), scene.clone(), station)
        .map_err(|e| anyhow::anyhow!("set-up page: {e} (is another program on that port?)"))?;
    log::info!(
        "set-up page: http://{}/ ({})",
        page.addr,
        if token.is_some() { "threshold changes allowed with the token" } else { "read-only" }
    );
    out.scene = Some(scene);
    Ok((out, Some(page)))
}

#[cfg(not(feature = "web"))]
fn start_page(out: Outputs, board: &BoardProfile, _: &Bundle, a: &RunArgs) -> Result<(Outputs, Option<()>)> {
    if a.web.is_some() || board.web.is_some() {
        bail!("a set-up page is configured, but this build has no web support: rebuild with `--features web`");
    }
    Ok((out, None))
}

/// The MQTT publisher of a run, if any.
#[cfg(feature = "mqtt")]
struct Publisher(Option<anovit::fleet::mqtt::Publisher>);
#[cfg(not(feature = "mqtt"))]
struct Publisher;

impl Publisher {
    fn finish(self) {
        #[cfg(feature = "mqtt")]
        if let Some(p) = self.0 {
            p.finish();
        }
    }
}

/// Compiles, then checks that the plan reproduces the ONNX model's output on a real frame.
#[cfg(feature = "onnx")]
fn compile(a: &CompileArgs) -> Result<()> {
    // --onnx and --manifest: the pair staged as a bundle directory (hash checked as for any bundle).
    let (Some(onnx), Some(manifest)) = (&a.onnx, &a.manifest) else {
        let dir = a.model.as_deref().context("give --model BUNDLE, or --onnx FILE with --manifest FILE")?;
        return compile_bundle(a, dir);
    };
    let staging = stage_bundle(onnx, manifest)?;
    let r = compile_bundle(a, &staging);
    let _ = std::fs::remove_dir_all(&staging);
    r
}

/// A temporary bundle directory holding `onnx` under the manifest's model file name, the manifest,
/// and its scoring reference if it names one.
#[cfg(feature = "onnx")]
fn stage_bundle(onnx: &Path, manifest: &Path) -> Result<PathBuf> {
    let text = std::fs::read_to_string(manifest).with_context(|| format!("cannot read {}", manifest.display()))?;
    let m = anovit::bundle::Manifest::parse(&text).map_err(|why| anyhow::anyhow!("{}: {why}", manifest.display()))?;
    let bytes = std::fs::read(onnx).with_context(|| format!("cannot read {}", onnx.display()))?;
    let hash = anovit::bundle::sha256_hex(&bytes);
    if hash != m.model.sha256 {
        bail!(
            "{} is not the model {} describes (sha256 {hash}, the manifest says {}): give the manifest exported \
             with this model",
            onnx.display(),
            manifest.display(),
            m.model.sha256
        );
    }
    let dir = std::env::temp_dir().join(format!("anovit-compile-{}", std::process::id()));
    let fill = || -> Result<()> {
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let copy = |from: &Path, name: &str| {
            std::fs::copy(from, dir.join(name))
                .with_context(|| format!("cannot copy {} into {}", from.display(), dir.display()))
        };
        std::fs::write(dir.join(&m.model.file), &bytes)
            .with_context(|| format!("cannot write into {}", dir.display()))?;
        copy(manifest, "manifest.json")?;
        if let Some(r) = &m.scoring.reference {
            copy(&manifest.parent().unwrap_or(Path::new(".")).join(&r.file), &r.file)?;
        }
        Ok(())
    };
    if let Err(e) = fill() {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    Ok(dir)
}

#[cfg(feature = "onnx")]
fn compile_bundle(a: &CompileArgs, dir: &Path) -> Result<()> {
    let src = Bundle::load(dir)?;
    let named = a.onnx.clone().unwrap_or_else(|| src.model_path());
    if a.int8 && src.manifest.model.precision != "int8" {
        bail!(
            "--int8: {} is an {} bundle; quantise it first (scripts/quantize.py --bundle BUNDLE --out DIR --data DATA) \
             and compile that",
            named.display(),
            src.manifest.model.precision,
        );
    }
    let t = std::time::Instant::now();
    let compiled = anovit::model::compile(&src, &a.out)?;
    let compiled_in = t.elapsed();
    let plan = Bundle::load(&a.out)?;
    let input = synthetic_input(&src)?;
    let reference = Model::load(&src)?.infer(&input)?.to_vec();
    let t = std::time::Instant::now();
    let got = Model::load(&plan)?.infer(&input)?.to_vec();
    let load_to_first = t.elapsed();
    let rel = anovit::model::relative_l2(&got, &reference);
    let size = std::fs::metadata(plan.model_path()).map(|m| m.len()).unwrap_or(0);
    let kind = match compiled.int8_products {
        Some(n) => format!("int8, {n} weight products in integers"),
        None => plan.manifest.model.precision.clone(),
    };
    println!(
        "compiled {} -> {} in {} ms ({:.2} MB plan, {kind}, tract {}); plan load to first result {} ms; \
         plan vs ONNX relative L2 {rel:.2e}",
        named.display(),
        compiled.manifest.display(),
        compiled_in.as_millis(),
        size as f64 / 1e6,
        anovit::model::TRACT_VERSION,
        load_to_first.as_millis()
    );
    if rel.is_nan() || rel >= 1e-5 {
        bail!("the compiled plan differs from the ONNX model (relative L2 {rel:.2e} >= 1e-5): do not deploy it");
    }
    Ok(())
}

fn progress_bar(n: usize, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(n as u64);
    let style = indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
        .expect("a valid template")
        .progress_chars("=> ");
    pb.set_style(style);
    pb.set_message(what.to_string());
    pb
}

fn calibrate(a: &CalibrateArgs) -> Result<()> {
    Calibration::check_parameters(a.target_false_reject, a.confidence, a.margin)?;
    let mut bundle = Bundle::load(&a.model)?;
    let files = anovit::capture::list_images(&a.good)
        .with_context(|| format!("cannot read the good-image folder {}", a.good.display()))?;
    if files.is_empty() {
        bail!("{} holds no .png or .jpg images: point --good at a folder of good parts", a.good.display());
    }
    if a.reference {
        // The new reference is built from raw maps: any old one is left out of the scoring.
        bundle.reference = None;
    }
    let mut fs = FrameScorer::new(&bundle, Model::load(&bundle)?);
    let pb = progress_bar(files.len(), "scoring good images");
    let mut maps = Vec::new();
    let mut at_border = 0;
    let mut scores = score_files(&mut fs, &files, |i, fs| {
        pb.set_position(i as u64);
        at_border += usize::from(fs.peak_near_border());
        if a.reference {
            maps.push(fs.map().to_vec());
        }
    })?;
    pb.finish_and_clear();
    let reference = if a.reference {
        let (r, loo) = anovit::calibrate::reference_from_maps(&maps)?;
        // Where the maps peak once standardised as the runtime will: what the new reference leaves
        // to the border.
        let factors = r.factors();
        for m in &mut maps {
            anovit::scoring::standardise(m, &r.mean, &factors);
        }
        let (width, band) = (fs.spec().width(), fs.border_band());
        at_border = maps.iter().filter(|m| anovit::scoring::peak_near_border(m, width, band)).count();
        println!(
            "scoring reference from {} good images: mean error {:.5}, mean spread {:.5}, floor {:.5}",
            maps.len(),
            r.mean.iter().map(|&v| f64::from(v)).sum::<f64>() / r.mean.len() as f64,
            r.std.iter().map(|&v| f64::from(v)).sum::<f64>() / r.std.len() as f64,
            r.floor
        );
        scores = loo;
        Some(r)
    } else {
        None
    };
    report_border_peaks(at_border, files.len(), fs.border_band(), fs.spec(), a.reference || bundle.reference.is_some());
    let m = &bundle.manifest;
    let c = Calibration::from_scores(&scores, a.target_false_reject, a.confidence, a.margin)?;
    println!(
        "{} good images: score mean {:.5}, std {:.5}, median {:.5}, max {:.5}",
        c.n_good, c.mean, c.std, c.quantiles[0].1, c.quantiles[3].1
    );
    println!(
        "threshold {:.5} (was {:.5}, {}): image {} of {} by score{}",
        c.value,
        m.threshold.value,
        m.threshold.source,
        c.rank,
        c.n_good,
        if a.margin > 0.0 { format!(", plus {:.0} % margin", a.margin * 100.0) } else { String::new() }
    );
    println!(
        "expected false-reject rate {:.2} %; at most {:.2} % with {:.1} % confidence",
        100.0 * c.expected_false_reject,
        100.0 * c.target_false_reject,
        100.0 * c.achieved_confidence
    );
    if !c.is_confident() {
        log::warn!(
            "only {} good images: {:.0} % confidence asked, {:.1} % reached; {} images are needed for a \
             {:.2} % false-reject bound (the threshold is the highest good score)",
            c.n_good,
            100.0 * c.confidence,
            100.0 * c.achieved_confidence,
            c.n_needed,
            100.0 * c.target_false_reject
        );
    }
    if a.dry_run {
        println!("dry run: {} left unchanged", a.model.join("manifest.json").display());
    } else {
        let images = a.good.display().to_string();
        bundle.write_calibration(c.to_manifest(&images), reference.as_ref().map(|r| (r, files.len())))?;
        println!("written to {}", a.model.join("manifest.json").display());
    }
    Ok(())
}

/// Says where the good parts' maps peak and, when the border sets the threshold, what helps.
fn report_border_peaks(at_border: usize, n: usize, band: usize, spec: &anovit::bundle::InputSpec, reference: bool) {
    let b = BorderPeaks::new(at_border, n, band, spec.width(), spec.height());
    println!(
        "good images whose map peaks within {band} px of the image border: {at_border} of {n} ({:.0} %; the band is \
         {:.0} % of the image)",
        100.0 * b.share,
        100.0 * b.band_area
    );
    if b.dominates() {
        log::warn!(
            "the threshold is set by the image border, where reconstructions are weakest, more than by the part: {}",
            if reference {
                "narrow the input `roi` to the part (docs/BUNDLE.md)"
            } else {
                "`anovit calibrate --reference` standardises each pixel by the good parts' spread there \
                 (docs/EVAL.md), or narrow the input `roi` to the part"
            }
        );
    }
}

fn eval(a: &EvalArgs) -> Result<()> {
    let bundle = Bundle::load(&a.model)?;
    let layout = a.layout.unwrap_or_else(|| anovit::dataset::Layout::detect(&a.data));
    let samples = anovit::dataset::test_split(&a.data, layout)?;
    let opts = EvalOptions {
        data: a.data.clone(),
        layout,
        out: a.out.clone(),
        overlays_per_kind: a.overlays,
        max_fpr: a.max_fpr,
        dump: a.dump,
    };
    let model = Model::load(&bundle)?;
    let pb = progress_bar(samples.len(), "evaluating");
    let r = evaluate(&bundle, model, &samples, &opts, |i| pb.set_position(i as u64))?;
    pb.finish_and_clear();
    print!("{}", r.markdown());
    println!("\nwritten: {0}/eval.json, {0}/eval.md, {0}/roc.png, {0}/overlays/", a.out.display());
    Ok(())
}

fn print_part(out: &mut impl Write, o: &Outcome, threshold: f32) -> std::io::Result<()> {
    write!(out, "part {:5}  {:5}", o.part, o.verdict.label())?;
    match o.score {
        Some(s) => write!(out, "  score {s:8.5} {} {threshold:.5}", if s >= threshold { ">=" } else { "< " })?,
        None => write!(out, "  score {:>8} {:2} {threshold:.5}", "--", "")?,
    }
    if let anovit::decision::Verdict::Fault(f) = o.verdict {
        write!(out, "  [{f}]")?;
    }
    write!(out, "  {:>6.1} ms", o.times.total().as_secs_f64() * 1e3)?;
    if let Some(m) = &o.meta {
        let truth = match m.truth {
            Some(t) if t == o.verdict.is_reject() => "  ok",
            Some(_) => "  WRONG",
            None => "",
        };
        write!(out, "  {:<8}{truth}", m.label.as_str())?;
    }
    writeln!(out)
}

/// `anovit camera`: the same capture path as `run`, without the model.
#[cfg(feature = "hw-v4l")]
fn camera(a: &CameraArgs) -> Result<()> {
    use anovit::capture::convert::CameraFormat;
    use anovit::capture::v4l2::{list_devices, V4l2Config, V4l2Source};
    use anovit::clock::Clock;

    if a.list {
        for d in list_devices() {
            println!("{d}");
        }
        return Ok(());
    }
    let mut cfg = match &a.board {
        Some(p) => BoardProfile::load(p)?.v4l2_config(),
        None => V4l2Config {
            device: "/dev/video0".into(),
            format: None,
            width: 640,
            height: 480,
            fps: 10,
            buffers: 4,
            timeout: Duration::from_secs(1),
        },
    };
    if let Some(d) = &a.device {
        cfg.device.clone_from(d);
    }
    if let Some(f) = &a.format {
        let f: CameraFormat =
            serde::Deserialize::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(f))
                .map_err(|_| anyhow::anyhow!("unknown format {f:?}: use yuyv, rgb24, grey or mjpeg"))?;
        cfg.format = Some(f);
    }
    if let Some(s) = &a.size {
        (cfg.width, cfg.height) = parse_size("--size", s)?;
    }
    if let Some(f) = a.fps {
        cfg.fps = f;
    }
    let mut src = V4l2Source::open(cfg)?;
    println!("camera: {}", src.negotiated());
    let clock = MonotonicClock::new();
    let (mut ok, mut corrupt, mut timeouts, mut lost) = (0u64, 0u64, 0u64, 0u64);
    // (sequence number, timestamp) of the first and last frame.
    let (mut first, mut last) = (None::<(u64, Duration)>, None::<(u64, Duration)>);
    let mut backwards = 0u64;
    for _ in 0..a.frames {
        match src.next_frame(clock.now()) {
            Ok(Some(f)) => {
                ok += 1;
                let now = (f.meta.seq, f.meta.timestamp);
                if last.is_some_and(|(s, t)| now.0 <= s || now.1 < t) {
                    backwards += 1;
                }
                first.get_or_insert(now);
                last = Some(now);
                if let Some(p) = &a.save {
                    save_frame(p, f.data, f.meta)?;
                }
            }
            Ok(None) => break,
            Err(anovit::capture::CaptureError::Corrupt) => corrupt += 1,
            Err(anovit::capture::CaptureError::Timeout) => timeouts += 1,
            Err(_) => lost += 1,
        }
    }
    let stats = src.stats();
    let (s0, t0) = first.unwrap_or_default();
    let (s1, t1) = last.unwrap_or_default();
    let secs = (t1 - t0).as_secs_f64();
    let fps = if ok > 1 && secs > 0.0 { (ok - 1) as f64 / secs } else { 0.0 };
    println!(
        "captured {ok} frames: {fps:.2} fps by driver timestamps, sequence {s0}..{s1}, {} dropped, {backwards} out of order, {corrupt} corrupt, {timeouts} timeouts, {lost} lost, {} reopened",
        stats.dropped, stats.reopened
    );
    if let Some(p) = &a.save {
        println!("last frame saved to {}", p.display());
    }
    Ok(())
}

/// `anovit feed`: images into a V4L2 output device.
#[cfg(feature = "hw-v4l")]
fn feed(a: &FeedArgs) -> Result<()> {
    use anovit::capture::feed::{load_frames, Feeder};
    let mut paths = Vec::new();
    for p in &a.images {
        if p.is_dir() {
            paths.extend(ReplaySource::open(p, false)?.paths().map(Path::to_path_buf));
        } else {
            paths.push(p.clone());
        }
    }
    let (w, h, frames) = load_frames(&paths, a.mjpeg).map_err(anyhow::Error::msg)?;
    let mut out = Feeder::open(&a.device, w, h, a.fps, a.mjpeg.is_some()).map_err(anyhow::Error::msg)?;
    let kind = a.mjpeg.map_or("RGB24".to_string(), |q| format!("MJPEG q{q}"));
    log::info!("feeding {} images ({w}x{h} {kind}) into {} at {} fps", frames.len(), a.device.display(), a.fps);
    let stop = stop_on_signals();
    let repeat = a.repeat.max(1);
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && (a.frames == 0 || n < a.frames) {
        let i = ((n / repeat) % frames.len() as u64) as usize;
        out.write(&frames[i]).map_err(anyhow::Error::msg)?;
        n += 1;
    }
    println!("fed {n} frames");
    Ok(())
}

#[cfg(feature = "hw-v4l")]
fn save_frame(path: &Path, data: &[u8], m: &anovit::capture::FrameMeta) -> Result<()> {
    use anovit::capture::PixelFormat;
    let (w, h) = (m.width as u32, m.height as u32);
    let r = match m.format {
        PixelFormat::Rgb8 => image::RgbImage::from_raw(w, h, data.to_vec()).map(|i| i.save(path)),
        PixelFormat::Gray8 => image::GrayImage::from_raw(w, h, data.to_vec()).map(|i| i.save(path)),
        PixelFormat::Yuyv => {
            let mut rgb = vec![0; m.width * m.height * 3];
            anovit::capture::convert::yuyv_frame(data, m.width, &mut rgb);
            image::RgbImage::from_raw(w, h, rgb).map(|i| i.save(path))
        }
    };
    r.context("frame has the wrong size")?.with_context(|| format!("cannot write {}", path.display()))
}

fn write_synth(a: &SynthArgs) -> Result<()> {
    let size = a.size;
    if !(32..=4096).contains(&size) {
        bail!("--size {size} must be between 32 and 4096");
    }
    let g = SynthConveyor::new(a.seed, size, size, 0.0);
    let mut rgb = vec![0u8; size * size * 3];
    let mut mask = vec![0u8; size * size];
    let mut index = 0u64;
    let mut emit = |dir: &str, n: u64, defect: Option<Defect>| -> Result<()> {
        let d = a.out.join(dir);
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        for k in 0..n {
            g.render(PartSpec { index, defect }, &mut rgb, &mut mask);
            index += 1;
            let p = d.join(format!("{k:03}.png"));
            image::save_buffer(&p, &rgb, size as u32, size as u32, image::ExtendedColorType::Rgb8)
                .with_context(|| format!("cannot write {}", p.display()))?;
            if let Some(def) = defect {
                let md = a.out.join("ground_truth").join(def.name());
                std::fs::create_dir_all(&md).with_context(|| format!("cannot create {}", md.display()))?;
                let mp = md.join(format!("{k:03}_mask.png"));
                image::save_buffer(&mp, &mask, size as u32, size as u32, image::ExtendedColorType::L8)
                    .with_context(|| format!("cannot write {}", mp.display()))?;
            }
        }
        Ok(())
    };
    emit("train/good", a.train, None)?;
    emit("test/good", a.test_good, None)?;
    for d in Defect::ALL {
        emit(&format!("test/{}", d.name()), a.test_per_defect, Some(d))?;
    }
    println!("wrote {index} images to {} (seed {})", a.out.display(), a.seed);
    Ok(())
}

/// `WIDTHxHEIGHT` of option `opt`.
fn parse_size<T: std::str::FromStr>(opt: &str, s: &str) -> Result<(T, T)> {
    s.split_once('x')
        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
        .with_context(|| format!("{opt} {s:?}: expected WIDTHxHEIGHT, e.g. 640x480"))
}

/// One plan under test: a bundle at a thread count.
struct BenchConfig {
    name: String,
    precision: String,
    threads: usize,
    model: Model,
}

fn golden(a: &GoldenArgs) -> Result<()> {
    let file = if a.file.exists() { a.file.clone() } else { shipped("tests/data/golden.json") };
    let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let bundle = Bundle::load(&a.model.clone().unwrap_or_else(|| shipped("models/demo-f32")))?;
    let (checked, skipped, tol) =
        anovit::golden::check(&text, &bundle, a.data.as_deref()).map_err(|e| anyhow::anyhow!(e))?;
    let mut worst = 0.0f64;
    for c in &checked {
        println!("{}: here {:.7} golden {:.7} rel {:.2e}", c.name, c.got, c.want, c.rel);
        worst = worst.max(c.rel);
    }
    println!(
        "golden: {} scores on {}, largest relative difference {worst:.2e} (tolerance {tol:.0e}){}",
        checked.len(),
        std::env::consts::ARCH,
        if skipped > 0 { format!("; {skipped} real-image entries skipped (no --data)") } else { String::new() }
    );
    if checked.is_empty() || worst >= tol {
        bail!("golden scores do not match within {tol:.0e}");
    }
    Ok(())
}

fn soak(a: &SoakArgs) -> Result<()> {
    use anovit::soak::{self, SoakConfig};
    if a.parts == 0 || !(0.0..=0.2).contains(&a.fault_rate) {
        bail!("--parts must be at least 1 and --fault-rate between 0 and 0.2");
    }
    let bundle = Bundle::load(&a.model.clone().unwrap_or_else(|| shipped("models/demo-f32")))?;
    let cfg = SoakConfig { parts: a.parts, seed: a.seed, fault_rate: a.fault_rate, ..SoakConfig::default() };
    let bar = indicatif::ProgressBar::new_spinner().with_message(format!("soaking {} parts", a.parts));
    bar.enable_steady_tick(Duration::from_millis(500));
    let report = soak::run(&cfg, &bundle.manifest).map_err(|e| anyhow::anyhow!(e))?;
    bar.finish_and_clear();
    let command = format!("anovit soak --parts {} --seed {} --fault-rate {}", a.parts, a.seed, a.fault_rate);
    let text = soak::render(&report, &command);
    println!("{text}");
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    if let Some(p) = &a.doc {
        write_doc_section(p, "soak", &text)?;
        println!("wrote the soak section of {}", p.display());
    }
    if !report.passed() {
        bail!("the soak broke {} invariant(s): see above", report.violation_count);
    }
    Ok(())
}

/// Replaces the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in a Markdown file
/// (appending the markers, or creating the file, where they are missing): each generated
/// section comes from its own command and leaves the others alone.
fn write_doc_section(path: &Path, name: &str, body: &str) -> Result<()> {
    let (begin, end) = (format!("<!-- {name}:begin -->"), format!("<!-- {name}:end -->"));
    let old = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "# Reliability\n".to_string(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let section = format!("{begin}\n{}\n{end}", body.trim_end());
    let new = match (old.find(&begin), old.find(&end)) {
        (Some(b), Some(e)) if b < e => format!("{}{section}{}", &old[..b], &old[e + end.len()..]),
        (None, None) => format!("{}\n{section}\n", old.trim_end_matches('\n').to_string() + "\n"),
        _ => bail!("{} has a broken {begin} ... {end} pair: mend it by hand", path.display()),
    };
    std::fs::write(path, new).with_context(|| format!("cannot write {}", path.display()))
}

fn bench(a: &BenchArgs) -> Result<()> {
    use anovit::bench::{self as b, Summary};
    let models = if a.models.is_empty() {
        vec![shipped("models/demo-f32"), shipped("models/demo-int8")]
    } else {
        a.models.clone()
    };
    if a.threads.contains(&0) || a.runs == 0 || a.rounds == 0 {
        bail!("--threads, --runs and --rounds must be at least 1");
    }
    let bundles = models.iter().map(|p| Bundle::load(p)).collect::<anovit::error::Result<Vec<_>>>()?;
    let input = synthetic_input(&bundles[0])?;
    let mut configs = Vec::new();
    for (bundle, path) in bundles.iter().zip(&models) {
        if bundle.manifest.input.shape != bundles[0].manifest.input.shape {
            bail!("{}: every model benchmarked together must take the same input shape", path.display());
        }
        for &threads in &a.threads {
            let mut model = Model::load(bundle)?;
            model.set_threads(threads)?;
            let name =
                path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
            configs.push(BenchConfig { name, precision: bundle.manifest.model.precision.clone(), threads, model });
        }
    }
    // Warm: first runs allocate and fault in pages.
    for c in &mut configs {
        b::time_runs(&mut c.model, &input, 3)?;
    }
    if a.serve {
        return serve(&mut configs, &input, a.input_out.as_deref(), a.recon_out.as_deref());
    }

    let mut json = serde_json::Map::new();
    json.insert("machine".into(), machine());
    let (peak, isa) = b::peak_gflops(Duration::from_millis(500));
    println!("peak rate of one core: {peak:.1} GFLOP/s ({isa})");
    json.insert("peak_gflops_one_core".into(), serde_json::json!({"gflops": peak, "isa": isa}));

    let mut loads = Vec::new();
    let extra = a.load.iter().map(|p| Bundle::load(p)).collect::<anovit::error::Result<Vec<_>>>()?;
    for (bundle, path) in bundles.iter().zip(&models).chain(extra.iter().zip(&a.load)) {
        let mut ms = Vec::new();
        for _ in 0..3 {
            let t = std::time::Instant::now();
            let mut m = Model::load(bundle)?;
            m.infer(&input)?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let s = Summary::of(&ms);
        println!(
            "load + first result {}: median {:.0} ms ({} {})",
            path.display(),
            s.median_ms,
            format!("{:?}", bundle.manifest.model.format()).to_lowercase(),
            bundle.manifest.model.precision
        );
        loads.push(serde_json::json!({"bundle": path, "format": format!("{:?}", bundle.manifest.model.format()).to_lowercase(), "load_to_first_result": s}));
    }
    json.insert("load".into(), loads.into());

    let mut samples = vec![Vec::new(); configs.len()];
    for _ in 0..a.rounds {
        for (c, s) in configs.iter_mut().zip(&mut samples) {
            s.extend(b::time_runs(&mut c.model, &input, a.runs)?);
        }
    }
    let mut plans = Vec::new();
    for (c, s) in configs.iter().zip(&samples) {
        let s = Summary::of(s);
        println!(
            "plan {} ({}) {} thread(s): median {:.2} ms, p99 {:.2} ms over {} runs",
            c.name, c.precision, c.threads, s.median_ms, s.p99_ms, s.n
        );
        plans.push(serde_json::json!({"model": c.name, "precision": c.precision, "threads": c.threads, "latency": s}));
    }
    json.insert("plan".into(), plans.into());

    if a.profile > 0 {
        // Every model, on its first configuration; the JSON's `profile` is the first model's.
        let mut profiles = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for c in configs.iter_mut().filter(|c| seen.insert(c.name.clone())) {
            let ops = c.model.profile(&input, a.profile)?;
            let total: f64 = ops.iter().map(|o| o.1.as_secs_f64()).sum();
            println!("where the plan's time goes ({}, {} thread(s), {} runs):", c.name, c.threads, a.profile);
            let mut list = Vec::new();
            for (op, t) in &ops {
                let ms = t.as_secs_f64() * 1e3 / a.profile as f64;
                let share = t.as_secs_f64() / total;
                if share >= 0.01 {
                    println!("  {op:36} {ms:7.2} ms  {:5.1} %", 100.0 * share);
                }
                list.push(serde_json::json!({"op": op, "ms": ms, "share": share}));
            }
            profiles.push(serde_json::json!({"model": c.name, "precision": c.precision, "ops": list}));
        }
        json.insert("profile".into(), profiles[0].clone());
        json.insert("profiles".into(), profiles.into());
    }

    if a.frames > 0 {
        let camera = parse_size("--camera", &a.camera)?;
        let events = std::env::temp_dir().join(format!("anovit-bench-{}.jsonl", std::process::id()));
        for prefetch in [false, true] {
            let model = Model::load(&bundles[0])?;
            let l = b::bench_loop(&bundles[0], model, camera, prefetch, 10, a.frames, &events);
            let _ = std::fs::remove_file(&events);
            let l = l.context("the loop benchmark failed")?;
            println!(
                "loop ({}x{} YUYV camera, {} frames, capture {}): {:.1} fps | per frame median: capture {:.3} ms, preprocess {:.3} ms, plan {:.2} ms, score {:.3} ms, outputs {:.3} ms | around the plan {:.2} % of it | latency p50 {:.2} ms, p99 {:.2} ms (p99/p50 {:.3}) | allocations per frame: ours {}, tract {}",
                camera.0, camera.1, l.frames, if prefetch { "one frame ahead" } else { "in the loop" }, l.fps,
                l.capture.median_ms, l.preprocess.median_ms, l.infer.median_ms, l.score.median_ms, l.output.median_ms,
                100.0 * l.around_share, l.latency.median_ms, l.latency.p99_ms, l.p99_over_p50,
                l.allocs_ours_per_frame, l.allocs_engine_per_frame
            );
            json.insert(if prefetch { "loop_prefetch" } else { "loop" }.into(), serde_json::to_value(&l)?);
        }
    }

    if a.rss_parts > 0 {
        let exe = std::env::current_exe().context("cannot find this executable to run it")?;
        let parts = a.rss_parts.to_string();
        let mut cmd = std::process::Command::new(exe);
        cmd.args(["run", "-q", "--parts", &parts, "--model"]).arg(&models[0]).stdout(std::process::Stdio::null());
        let (status, rss) = b::child_peak_rss(&mut cmd)?;
        if !status.success() {
            bail!("`anovit run` for the memory figure failed ({status})");
        }
        println!("peak RSS of `anovit run --parts {parts}` on {}: {:.1} MB", models[0].display(), rss as f64 / 1e6);
        json.insert("peak_rss".into(), serde_json::json!({"command": format!("anovit run -q --parts {parts} --model {}", models[0].display()), "bytes": rss}));
    }

    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("cannot write {}", p.display()))?;
        println!("figures written to {}", p.display());
    }
    Ok(())
}

/// A model input from a real frame: a synthetic part through the bundle's preprocessing (what
/// `compile` checks the plan on and `bench` times the plans on).
fn synthetic_input(bundle: &Bundle) -> Result<Vec<f32>> {
    let mut source = SyntheticSource::new(SynthConveyor::new(1, 256, 256, 0.5), 0, Some(1));
    let frame = source.next_frame(Duration::ZERO)?.context("the synthetic source gave no frame")?;
    Ok(Preprocessor::new(&bundle.manifest.input).run(&frame)?.to_vec())
}

/// The machine the figures come from.
fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name") || l.starts_with("Model"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, v)| v.trim());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    serde_json::json!({
        "arch": std::env::consts::ARCH,
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "loadavg_at_start": load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        "tract": anovit::model::TRACT_VERSION,
        "anovit": env!("CARGO_PKG_VERSION"),
    })
}

/// The peer protocol of `anovit bench --serve`.
fn serve(configs: &mut [BenchConfig], input: &[f32], input_out: Option<&Path>, recon_out: Option<&Path>) -> Result<()> {
    let write = |p: &Path, values: &[f32]| {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(p, bytes).with_context(|| format!("cannot write {}", p.display()))
    };
    if let Some(p) = input_out {
        write(p, input)?;
    }
    if let Some(dir) = recon_out {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for (i, c) in configs.iter_mut().enumerate() {
            let recon = c.model.infer(input)?;
            write(&dir.join(format!("{i}.f32")), recon)?;
        }
    }
    let list: Vec<_> = configs
        .iter()
        .map(|c| serde_json::json!({"model": c.name, "precision": c.precision, "threads": c.threads}))
        .collect();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::json!({"configs": list}))?;
    out.flush()?;
    for line in std::io::stdin().lines() {
        let line = line?;
        let mut it = line.split_whitespace().map(str::parse::<usize>);
        let (Some(Ok(i)), Some(Ok(runs)), None) = (it.next(), it.next(), it.next()) else {
            bail!("--serve: expected `CONFIG RUNS`, got {line:?}");
        };
        let c = configs.get_mut(i).with_context(|| format!("--serve: no configuration {i}"))?;
        let ms = anovit::bench::time_runs(&mut c.model, input, runs)?;
        writeln!(out, "{}", serde_json::to_string(&ms)?)?;
        out.flush()?;
    }
    Ok(())
}
