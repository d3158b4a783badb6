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

/// The host demo as an endless line (`camera.parts = 0`) with `extra` appended (a `[mqtt]` or
/// `[web]` section), written as `dir/board.toml`.
pub fn endless_demo_board(dir: &Path, extra: &str) -> PathBuf {
    let demo = std::fs::read_to_string(repo().join("board/host-demo.toml")).unwrap();
    assert!(demo.contains("parts = 200 "), "board/host-demo.toml no longer has `parts = 200`");
    let p = dir.join("board.toml");
    std::fs::write(&p, demo.replace("parts = 200 ", "parts = 0 ") + "\n" + extra).unwrap();
    p
}

/// A child process (an endless `anovit run`) killed when dropped, so that a failing test does
/// not leave it running.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
