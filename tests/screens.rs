//! Golden pictures of every status screen: each layout at its sizes, in each state (pass,
//! defect with the heatmap of the part, a fault with the camera lost, the alarm), drawn exactly
//! as `docs/screens/*.png` shows them. `ANOVIT_BLESS=1 cargo test --release --test screens`
//! rewrites the pictures after an intended change (look at them before committing).

mod common;

use std::time::Duration;

use anovit::capture::CaptureError;
use anovit::decision::{Fault, Verdict};
use anovit::display::{draw_status, Heatmap, Layout, MemoryFramebuffer, Status};
use anovit::telemetry::{Counters, Health};

fn counters() -> Counters {
    Counters { frames: 1287, passed: 1203, defects: 71, faults: 13, late: 2, capture_errors: 11, ..Counters::default() }
}

/// An anomaly map with one hot blob, the way a scratch shows up.
fn heatmap() -> Heatmap {
    let (w, h) = (224, 224);
    let map: Vec<f32> = (0..w * h)
        .map(|i| {
            let (x, y) = ((i % w) as f32, (i / w) as f32);
            let d2 = (x - 150.0).powi(2) / 300.0 + (y - 80.0).powi(2) / 60.0;
            0.05 + 0.6 * (-d2).exp()
        })
        .collect();
    let mut hm = Heatmap::new();
    hm.update(&map, w, h, 0.27, 1286);
    hm
}

fn status<'a>(c: &'a Counters, hm: &'a Heatmap, state: &str) -> Status<'a> {
    let base = Status {
        seq: 1287,
        verdict: Verdict::Pass,
        score: Some(0.1834),
        threshold: 0.2692,
        counters: c,
        fps: 24.7,
        p99: Duration::from_millis(43),
        health: Health { camera_ok: true, alarm: false, late: false },
        heatmap: None,
    };
    match state {
        "ok" => base,
        "ng" => Status { verdict: Verdict::Defect, score: Some(0.4121), seq: 1286, heatmap: Some(hm), ..base },
        "camera-lost" => Status {
            verdict: Verdict::Fault(Fault::Capture(CaptureError::Timeout)),
            score: None,
            health: Health { camera_ok: false, ..base.health },
            heatmap: Some(hm),
            ..base
        },
        "alarm" => Status {
            verdict: Verdict::Fault(Fault::Late),
            score: Some(0.12),
            health: Health { camera_ok: true, alarm: true, late: true },
            heatmap: Some(hm),
            ..base
        },
        _ => unreachable!(),
    }
}

#[test]
fn every_screen_matches_its_golden_picture() {
    let bless = std::env::var_os("ANOVIT_BLESS").is_some();
    let dir = common::repo().join("docs/screens");
    let c = counters();
    let hm = heatmap();
    let mut checked = 0;
    for (layout, name, w, h) in
        [(Layout::Colour, "colour", 320, 240), (Layout::Colour, "colour", 480, 320), (Layout::Mono, "mono", 128, 64)]
    {
        for state in ["ok", "ng", "camera-lost", "alarm"] {
            let mut fb = MemoryFramebuffer::new(w, h);
            draw_status(&mut fb, &status(&c, &hm, state), layout).unwrap();
            let path = dir.join(format!("{name}-{w}x{h}-{state}.png"));
            if bless {
                std::fs::create_dir_all(&dir).unwrap();
                fb.save_png(&path).unwrap();
            }
            let golden = image::open(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (ANOVIT_BLESS=1 writes it)", path.display()))
                .to_rgb8();
            assert_eq!(golden.dimensions(), (w, h), "{}", path.display());
            let diff = golden.as_raw().iter().zip(fb.rgb()).filter(|(a, b)| a != b).count();
            assert_eq!(diff, 0, "{}: {diff} bytes differ from the golden picture", path.display());
            if layout == Layout::Mono {
                assert!(
                    fb.rgb().iter().all(|&v| v == 0 || v == 255),
                    "{}: a one-colour panel gets black and white only",
                    path.display()
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 12);
}

#[test]
fn the_heatmap_is_hot_where_the_map_passes_the_threshold() {
    let hm = heatmap();
    // The blob's centre (150, 80) of 224 falls in cell (32, 17) of 48.
    assert_eq!(hm.value(32, 17), 255);
    assert!(hm.value(5, 40) < 60, "cold far from the blob: {}", hm.value(5, 40));
    assert_eq!(hm.part, 1286);
}
