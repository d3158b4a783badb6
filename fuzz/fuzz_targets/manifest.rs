//! `manifest.json` of a model bundle: `Manifest::parse` must turn any text into a manifest or an
//! error. A manifest that validates is then used the way `anovit run` uses it at start-up (input
//! size, model format, preprocessor and scorer buffers, one score), so that nothing the
//! validation lets through can panic later.
#![no_main]

use anovit::bundle::Manifest;
use anovit::preprocess::Preprocessor;
use anovit::scoring::{gaussian_kernel, Scorer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // `Bundle::load` reads the file with `read_to_string`: text that is not UTF-8 never gets here.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(m) = Manifest::parse(text) else { return };
    let (w, h) = (m.input.width(), m.input.height());
    let _ = m.model.format();
    let kernel = gaussian_kernel(m.scoring.sigma, m.scoring.truncate);
    assert!(
        kernel.iter().all(|v| v.is_finite()),
        "kernel of sigma {} truncate {}",
        m.scoring.sigma,
        m.scoring.truncate
    );
    // The buffers are sized by the validated shape (up to 4096 x 4096); building and scoring
    // them at that size only costs time, so the full path runs for the common small inputs.
    if w * h <= 64 * 64 {
        let _ = Preprocessor::new(&m.input);
        let mut scorer = Scorer::new(w, h, &m.scoring);
        let zeros = vec![0.0f32; 3 * w * h];
        let score = scorer.score(&zeros, &zeros);
        assert!(score.is_finite(), "score {score} of a perfect reconstruction");
    }
});
