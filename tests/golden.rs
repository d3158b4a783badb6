//! The Rust score of real images equals the onnxruntime/Python score (tests/data/golden.json,
//! written by scripts/golden.py) within 1e-4 relative: same preprocessing, same model output,
//! same scoring on both sides of the bundle contract.

mod common;

use anovit::capture::{Frame, FrameMeta, PixelFormat};
use anovit::model::Model;
use anovit::preprocess::Preprocessor;
use anovit::scoring::Scorer;
use anovit::synth::{Defect, PartSpec, SynthConveyor};
use common::*;

#[test]
fn rust_scores_match_onnxruntime() {
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("tests/data/golden.json")).unwrap()).unwrap();
    let bundle = demo_bundle();
    assert_eq!(
        golden["model_sha256"], bundle.manifest.model.sha256,
        "tests/data/golden.json was made for another model: rerun scripts/golden.py"
    );
    let m = &bundle.manifest;
    let mut model = Model::load(bundle).unwrap();
    let mut pre = Preprocessor::new(&m.input);
    let mut scorer = Scorer::new(m.input.width(), m.input.height(), &m.scoring);
    let tol = golden["rel_tolerance"].as_f64().unwrap();
    let (mut checked, mut skipped) = (0, 0);
    for e in golden["entries"].as_array().unwrap() {
        let (rgb, w, h, name) = if let Some(s) = e.get("synthetic") {
            let defect = s["defect"].as_str().map(|n| *Defect::ALL.iter().find(|d| d.name() == n).unwrap());
            let size = s["size"].as_u64().unwrap() as usize;
            let g = SynthConveyor::new(s["seed"].as_u64().unwrap(), size, size, 0.0);
            let spec = PartSpec { index: s["index"].as_u64().unwrap(), defect };
            (synth_frame(&g, spec), size, size, format!("{s}"))
        } else {
            let rel = e["shared_data"].as_str().unwrap();
            let Some(data) = shared_data() else {
                skipped += 1;
                continue;
            };
            let img = image::open(data.join(rel)).unwrap().to_rgb8();
            let (w, h) = (img.width() as usize, img.height() as usize);
            (img.into_raw(), w, h, rel.to_string())
        };
        let meta = FrameMeta::new(w, h, PixelFormat::Rgb8);
        let input = pre.run(&Frame { data: &rgb, meta: &meta }).unwrap().to_vec();
        let recon = model.infer(&input).unwrap();
        let got = scorer.score(&input, recon) as f64;
        let want = e["score"].as_f64().unwrap();
        let rel = (got - want).abs() / want.abs();
        println!("{name}: rust {got:.7} onnxruntime {want:.7} rel {rel:.2e}");
        assert!(rel < tol, "{name}: rust {got} vs onnxruntime {want} (relative {rel:.2e} >= {tol})");
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} golden entries checked");
    if skipped > 0 {
        eprintln!("SKIPPED {skipped} real-image golden entries: ../shared/data is absent");
    }
}
