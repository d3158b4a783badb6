//! The frame loop allocates no heap memory per frame in this crate's code.
//!
//! A counting global allocator counts every allocation made on this test's thread; the engine
//! wrapper switches the count to a separate tally while tract runs, so the model boundary is
//! reported on its own (it is tract's, and budgeted, not zero).

mod common;

use std::time::Duration;

use anovit::actuation::{Polarity, RecordingPin, RejectLine, StatusLine};
use anovit::bench::{allocations, CountingAlloc, Tallied};
use anovit::capture::convert::{convert, CameraFormat};
use anovit::capture::SyntheticSource;
use anovit::clock::MonotonicClock;
use anovit::decision::{AlarmPolicy, Decider};
use anovit::display::{Layout, MemoryFramebuffer, Panel, Threaded};
use anovit::fleet::scene::Scene;
use anovit::fleet::{Denorm, Outbox};

/// A screen that shows nothing.
struct Discard;

impl Panel for Discard {
    fn show(&mut self, _: &MemoryFramebuffer) -> Result<(), String> {
        Ok(())
    }
}
use anovit::model::Model;
use anovit::pipeline::{AlarmOutput, Inspector, Outputs};
use anovit::preprocess::Preprocessor;
use anovit::scoring::Scorer;
use anovit::service::Notifier;
use anovit::synth::SynthConveyor;

#[global_allocator]
static A: CountingAlloc = CountingAlloc;

#[test]
fn steady_state_loop_allocates_nothing_in_our_code() {
    let bundle = common::demo_bundle();
    let m = &bundle.manifest;
    let clock = MonotonicClock::new();
    let source = SyntheticSource::new(SynthConveyor::new(5, 256, 256, 0.3), 0, None);
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify");
    let notify_socket = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify_socket.set_nonblocking(true).unwrap();
    let line = RejectLine::new(RecordingPin::<_, 1024>::new(clock), Polarity::GoodEnergised, Duration::from_millis(1))
        .unwrap();
    let denorm = Denorm { width: m.input.width(), height: m.input.height(), mean: m.input.mean, std: m.input.std };
    let outbox = Outbox::new(16, Duration::ZERO, Some(denorm));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scene = std::sync::Arc::new(Scene::new(m.input.roi, m.input.width(), m.input.height(), m.threshold.value));
    let page = {
        let (scene, stop) = (scene.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut views = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                scene.watched();
                views += scene.read(|v| !v.live.composite().is_empty() && !v.live.map.is_empty()) as u32;
                std::thread::sleep(Duration::from_millis(20));
            }
            views
        })
    };
    let drain = {
        let (outbox, stop) = (outbox.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut thumbnails = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                while let Some(m) = outbox.pop() {
                    drop(m.payload);
                }
                thumbnails += outbox.take_thumbnail_jpeg().is_some() as u32;
                outbox.restock();
                std::thread::sleep(Duration::from_millis(1));
            }
            thumbnails
        })
    };
    let outputs = Outputs {
        display: Some(MemoryFramebuffer::new(320, 240)),
        events: Some(Box::new(std::io::BufWriter::new(std::io::sink()))),
        // Summaries go to the log every frame here, so their cost is measured too.
        summary_every: Duration::ZERO,
        health: Some(StatusLine::new(Box::new(RecordingPin::<_, 16>::new(clock)), false).unwrap()),
        encoder: Some(std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0))),
        alarm: Some(AlarmOutput {
            line: StatusLine::new(Box::new(RecordingPin::<_, 16>::new(clock)), false).unwrap(),
            policy: AlarmPolicy::new(3, 10),
        }),
        // A watchdog ping on every part (period zero), so that the send path is measured; nobody
        // reads the socket, so its queue fills and the sends fail without blocking, as designed.
        notifier: Some(Notifier::new(notify_path.to_str().unwrap(), Some(Duration::ZERO)).unwrap()),
        ejector: None,
        layout: Layout::Colour,
        // A panel on its thread, so that handing views over is measured too.
        panel: Some(Box::new(Threaded::spawn(Box::new(Discard), 320, 240).unwrap())),
        // Messages for MQTT (every part, counters every part, thumbnails), drained by a
        // stand-in publisher on its own thread, so that the loop's side is measured.
        outbox: Some(outbox.clone()),
        // The set-up page's view, watched and read by a stand-in page on its own thread.
        scene: Some(scene.clone()),
    };
    anovit::logger::init(log::LevelFilter::Off);
    let mut insp = Inspector::new(
        source,
        Preprocessor::new(&m.input),
        Tallied(Model::load(bundle).unwrap()),
        Scorer::new(m.input.width(), m.input.height(), &m.scoring),
        Decider::new(m.threshold.value, Duration::from_secs(60)),
        line,
        clock,
        outputs,
    );
    // Warm-up: first-use allocations (stdout buffers, lazy statics) are not per-frame.
    for _ in 0..3 {
        insp.step().unwrap();
    }
    let (ours0, tract0) = allocations();
    let frames = 20;
    let mut rejects = 0;
    for _ in 0..frames {
        rejects += insp.step().unwrap().verdict.is_reject() as u64;
    }
    let (ours1, tract1) = allocations();
    let (ours, tract) = (ours1 - ours0, tract1 - tract0);
    println!(
        "allocations over {frames} frames: ours {ours}, tract {tract} ({:.1} per frame at the model boundary)",
        tract as f64 / frames as f64
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let thumbnails = drain.join().unwrap();
    let views = page.join().unwrap();
    assert!(views > 0, "the page saw frames with their maps");
    let sent = outbox.totals();
    println!("outbox: {sent:?}, {thumbnails} thumbnail(s) taken");
    assert!(sent.queued >= 2 * frames, "every part and its counters go to the outbox: {sent:?}");
    assert!(rejects > 0, "the run should include rejects so that the reject path is measured");
    assert_eq!(ours, 0, "our stages allocated {ours} times in {frames} frames");
    assert!(tract > 0, "the tally must see tract's allocations, or it is not measuring anything");
}

#[test]
fn camera_format_conversion_allocates_nothing() {
    let (w, h) = (640, 480);
    let mut rgb = vec![0u8; w * h * 3];
    let mut grey = vec![0u8; w * h];
    let mut packed = vec![0u8; w * h * 2];
    let yuyv: Vec<u8> = (0..w * h * 2).map(|i| (i * 7 % 251) as u8).collect();
    let rgb_in: Vec<u8> = (0..w * h * 3).map(|i| (i % 253) as u8).collect();
    let before = allocations().0;
    for _ in 0..5 {
        convert(CameraFormat::Yuyv, &yuyv, w, h, w * 2, &mut packed).unwrap();
        convert(CameraFormat::Rgb24, &rgb_in, w, h, w * 3, &mut rgb).unwrap();
        convert(CameraFormat::Grey, &rgb_in[..w * h], w, h, w, &mut grey).unwrap();
    }
    assert_eq!(allocations().0 - before, 0, "YUYV/RGB24/GREY conversion allocated");
}
