//! The `anovit` binary: parses the command line, builds the pipeline, runs it. All the logic
//! lives in the library; this file is wiring and the only place `anyhow` is used.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anovit::actuation::{RecordingPin, RejectLine};
use anovit::board::{BoardProfile, DisplayKind, OutputKind, SourceKind};
use anovit::bundle::Bundle;
use anovit::calibrate::Calibration;
use anovit::capture::{FrameSource, ReplaySource, SyntheticSource};
use anovit::clock::MonotonicClock;
use anovit::decision::Decider;
use anovit::display::MemoryFramebuffer;
use anovit::evaluate::{evaluate, score_files, EvalOptions, FrameScorer};
use anovit::model::Model;
use anovit::pipeline::{Inspector, Outcome, Outputs};
use anovit::preprocess::Preprocessor;
use anovit::scoring::Scorer;
use anovit::synth::{Defect, PartSpec, SynthConveyor};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use embedded_hal::digital::OutputPin;

#[derive(Parser)]
#[command(name = "anovit", version, about = "Inline visual inspection with AnoViT: camera -> model -> reject line")]
struct Cli {
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
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
    /// Compile an ONNX bundle into a plan bundle (tract NNEF) for deploy builds.
    #[cfg(feature = "onnx")]
    Compile(CompileArgs),
}

#[cfg(feature = "onnx")]
#[derive(Args)]
struct CompileArgs {
    /// ONNX bundle directory (model.onnx + manifest.json).
    #[arg(long)]
    model: PathBuf,
    /// Output bundle directory.
    #[arg(long)]
    out: PathBuf,
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
    let r = match cli.cmd {
        Some(Cmd::Run(a)) => run(a),
        Some(Cmd::Synth(a)) => write_synth(&a),
        Some(Cmd::Calibrate(a)) => calibrate(&a),
        Some(Cmd::Eval(a)) => eval(&a),
        #[cfg(feature = "onnx")]
        Some(Cmd::Compile(a)) => compile(&a),
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
    let model = Model::load(&bundle)?;
    log::info!("model loaded and optimised in {} ms", t.elapsed().as_millis());

    let limit = a.parts;
    let folder =
        a.folder.as_ref().or(board.camera.folder.as_ref().filter(|_| board.camera.source == SourceKind::Folder));
    let source: Box<dyn FrameSource> = if let Some(folder) = folder {
        let src = ReplaySource::open(folder, board.camera.loops && limit.is_some())?;
        log::info!("replaying {} images from {}", src.len(), folder.display());
        Box::new(src)
    } else {
        let c = &board.camera;
        let gen = SynthConveyor::new(c.seed, c.size, c.size, c.defect_rate);
        let count = limit.or((c.parts > 0).then_some(c.parts));
        let n = count.map_or("endless".to_string(), |n| n.to_string());
        log::info!("synthetic conveyor: {n} parts, seed {}, defect rate {}", c.seed, c.defect_rate);
        Box::new(SyntheticSource::new(gen, 0, count))
    };
    let clock = MonotonicClock::new();
    match board.reject.output {
        OutputKind::Recording => {
            let line = RejectLine::new(RecordingPin::<_, 1024>::new(clock), board.reject.polarity, board.pulse())
                .unwrap_or_else(|e| match e {});
            run_loop(source, model, line, clock, &bundle, &board, &a)
        }
        #[cfg(feature = "hw-gpio")]
        OutputKind::Gpio => {
            let (chip, n) = (board.reject.chip.as_deref().unwrap_or(Path::new("")), board.reject.line.unwrap_or(0));
            let idle = anovit::actuation::line_level(false, board.reject.polarity);
            let pin = anovit::gpio::open_output(chip, n, idle)?;
            let line = RejectLine::new(pin, board.reject.polarity, board.pulse())
                .with_context(|| format!("cannot drive GPIO line {n} of {}", chip.display()))?;
            log::info!("reject line: GPIO line {n} of {} ({:?})", chip.display(), board.reject.polarity);
            run_loop(source, model, line, clock, &bundle, &board, &a)
        }
        #[cfg(not(feature = "hw-gpio"))]
        OutputKind::Gpio => bail!(
            "board profile {:?} asks for a GPIO reject line, but this build has no GPIO support: rebuild with `--features hw-gpio`",
            board.name
        ),
    }
}

fn run_loop<P: OutputPin>(
    source: Box<dyn FrameSource>,
    model: Model,
    line: RejectLine<P>,
    clock: MonotonicClock,
    bundle: &Bundle,
    board: &BoardProfile,
    a: &RunArgs,
) -> Result<()> {
    let m = &bundle.manifest;
    let events: Option<Box<dyn Write + Send>> = match &a.events {
        None => None,
        Some(p) if p.as_os_str() == "-" => Some(Box::new(std::io::BufWriter::new(std::io::stdout()))),
        Some(p) => Some(Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create event log {}", p.display()))?,
        ))),
    };
    let display = (board.display.kind == DisplayKind::Memory)
        .then(|| MemoryFramebuffer::new(board.display.width, board.display.height));
    let outputs = Outputs { display, events, summary_every: Duration::from_secs(board.telemetry.summary_every_s) };
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
    insp.run(|o| {
        if print {
            let _ = print_part(&mut out, o, threshold);
        }
    });
    drop(out);
    let report = insp.finish();
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

/// Compiles, then checks that the plan reproduces the ONNX model's output on a real frame.
#[cfg(feature = "onnx")]
fn compile(a: &CompileArgs) -> Result<()> {
    let src = Bundle::load(&a.model)?;
    let t = std::time::Instant::now();
    let manifest = anovit::model::compile(&src, &a.out)?;
    let compiled_in = t.elapsed();
    let plan = Bundle::load(&a.out)?;
    let g = SynthConveyor::new(1, 256, 256, 0.5);
    let mut source = SyntheticSource::new(g, 0, Some(1));
    let frame = source.next_frame(Duration::ZERO)?.context("the synthetic source gave no frame")?;
    let mut pre = Preprocessor::new(&src.manifest.input);
    let input = pre.run(&frame)?.to_vec();
    let reference = Model::load(&src)?.infer(&input)?.to_vec();
    let t = std::time::Instant::now();
    let got = Model::load(&plan)?.infer(&input)?.to_vec();
    let load_to_first = t.elapsed();
    let rel = anovit::model::relative_l2(&got, &reference);
    let size = std::fs::metadata(plan.model_path()).map(|m| m.len()).unwrap_or(0);
    println!(
        "compiled {} -> {} in {} ms ({:.2} MB plan, tract {}); plan load to first result {} ms; \
         plan vs ONNX relative L2 {rel:.2e}",
        src.model_path().display(),
        manifest.display(),
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
    let mut scores = score_files(&mut fs, &files, |i, fs| {
        pb.set_position(i as u64);
        if a.reference {
            maps.push(fs.map().to_vec());
        }
    })?;
    pb.finish_and_clear();
    let reference = if a.reference {
        let (r, loo) = anovit::calibrate::reference_from_maps(&maps)?;
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
