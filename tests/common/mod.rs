//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anovit::bundle::Bundle;
use anovit::synth::{PartSpec, SynthConveyor};

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The bundled demo model (f32), verified once per test binary.
pub fn demo_bundle() -> &'static Bundle {
    static B: OnceLock<Bundle> = OnceLock::new();
    B.get_or_init(|| Bundle::load(&repo().join("models/demo-f32")).expect("models/demo-f32 must load"))
}

/// `../shared/data` beside the repository, or `None` (with a loud note) when absent.
pub fn shared_data() -> Option<PathBuf> {
    let p = repo().join("../shared/data");
    if p.is_dir() {
        Some(p)
    } else {
        eprintln!("SKIPPED: {} is absent, so the real-data part of this test did not run", p.display());
        None
    }
}

/// Renders one synthetic frame as RGB8.
pub fn synth_frame(g: &SynthConveyor, spec: PartSpec) -> Vec<u8> {
    let mut rgb = vec![0; g.width() * g.height() * 3];
    let mut mask = vec![0; g.width() * g.height()];
    g.render(spec, &mut rgb, &mut mask);
    rgb
}

/// Writes RGB8 pixels as a PNG.
pub fn save_png(path: &Path, rgb: &[u8], w: usize, h: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::save_buffer(path, rgb, w as u32, h as u32, image::ExtendedColorType::Rgb8).unwrap();
}
