//! The Rust score of real images equals the onnxruntime/Python score (tests/data/golden.json,
//! written by scripts/golden.py) within 1e-4 relative: same preprocessing, same model output,
//! same scoring on both sides of the bundle contract.

mod common;

use common::*;

#[test]
fn rust_scores_match_onnxruntime() {
    let text = std::fs::read_to_string(repo().join("tests/data/golden.json")).unwrap();
    let data = shared_data();
    let (checked, skipped, tol) = anovit::golden::check(&text, demo_bundle(), data.as_deref()).unwrap();
    for c in &checked {
        println!("{}: rust {:.7} onnxruntime {:.7} rel {:.2e}", c.name, c.got, c.want, c.rel);
        assert!(c.rel < tol, "{}: rust {} vs onnxruntime {} (relative {:.2e} >= {tol})", c.name, c.got, c.want, c.rel);
    }
    assert!(checked.len() >= 6, "only {} golden entries checked", checked.len());
    if skipped > 0 {
        eprintln!("SKIPPED {skipped} real-image golden entries: ../shared/data is absent");
    }
}
