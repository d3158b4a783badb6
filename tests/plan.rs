//! Ahead-of-time plans: `anovit compile` output reproduces the ONNX model, and a plan from another
//! tract version or with a bad hash is refused with a clear message.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use anovit::bundle::Bundle;
use anovit::capture::{FrameSource, SyntheticSource};
use anovit::model::Model;
use anovit::preprocess::Preprocessor;
use anovit::scoring::Scorer;
use anovit::synth::SynthConveyor;
use common::*;

/// The demo bundle compiled once per test binary.
fn plan_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        anovit::model::compile(demo_bundle(), &d.path().join("plan")).unwrap();
        d
    })
    .path()
}

#[test]
fn plan_matches_onnx_on_good_and_defective_frames() {
    let onnx = demo_bundle();
    let plan = Bundle::load(&plan_dir().join("plan")).unwrap();
    assert_eq!(plan.manifest.model.tract_version.as_deref(), Some(anovit::model::TRACT_VERSION));
    assert_eq!(plan.manifest.model.compiled_from.as_ref().unwrap()["sha256"], onnx.manifest.model.sha256);
    let m = &onnx.manifest;
    let (mut a, mut b) = (Model::load(onnx).unwrap(), Model::load(&plan).unwrap());
    let mut pre = Preprocessor::new(&m.input);
    let mut scorer = Scorer::new(m.input.width(), m.input.height(), &m.scoring);
    let mut src = SyntheticSource::new(SynthConveyor::new(3, 256, 256, 0.5), 0, Some(6));
    while let Some(frame) = src.next_frame(std::time::Duration::ZERO).unwrap() {
        let input = pre.run(&frame).unwrap().to_vec();
        let ra = a.infer(&input).unwrap().to_vec();
        let rb = b.infer(&input).unwrap().to_vec();
        let rel = anovit::model::relative_l2(&rb, &ra);
        assert!(rel < 1e-5, "plan vs ONNX relative L2 {rel:e}");
        let (sa, sb) = (scorer.score(&input, &ra), scorer.score(&input, &rb));
        assert!(((sa - sb) / sa).abs() < 1e-4, "scores {sa} vs {sb}");
    }
}

fn copy_plan(edit: impl FnOnce(&mut serde_json::Value, &Path)) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let src = plan_dir().join("plan");
    for f in ["manifest.json", anovit::model::PLAN_FILE] {
        std::fs::copy(src.join(f), d.path().join(f)).unwrap();
    }
    let mp = d.path().join("manifest.json");
    let mut j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&mp).unwrap()).unwrap();
    edit(&mut j, d.path());
    std::fs::write(&mp, j.to_string()).unwrap();
    d
}

fn run_fails(bundle: &Path, want: &str) {
    let o = Command::new(env!("CARGO_BIN_EXE_anovit"))
        .args(["run", "--parts", "2", "--model", bundle.to_str().unwrap()])
        .current_dir(repo())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(want), "stderr should contain {want:?}:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn runs_from_a_plan_and_refuses_bad_ones() {
    let o = Command::new(env!("CARGO_BIN_EXE_anovit"))
        .args(["run", "--parts", "4", "-q", "--model", plan_dir().join("plan").to_str().unwrap()])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("4 parts:"));

    let other = copy_plan(|j, _| j["model"]["tract_version"] = "0.22.1".into());
    run_fails(other.path(), "compiled by tract 0.22.1, this anovit runs tract 0.23.9");
    let missing = copy_plan(|j, _| {
        j["model"].as_object_mut().unwrap().remove("tract_version");
    });
    run_fails(missing.path(), "model.tract_version");
    let tampered = copy_plan(|_, dir| {
        let p = dir.join(anovit::model::PLAN_FILE);
        let mut bytes = std::fs::read(&p).unwrap();
        let n = bytes.len();
        bytes[n / 3] ^= 1;
        std::fs::write(p, bytes).unwrap();
    });
    run_fails(tampered.path(), "sha256");
}

#[test]
fn a_scoring_reference_travels_into_the_plan() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let demo = demo_bundle();
    for f in ["manifest.json", demo.manifest.model.file.as_str()] {
        std::fs::copy(demo.dir.join(f), src.join(f)).unwrap();
    }
    let mut b = Bundle::load(&src).unwrap();
    let plane = b.manifest.input.width() * b.manifest.input.height();
    let r = anovit::scoring::Reference { mean: vec![0.1; plane], std: vec![0.2; plane], floor: 0.02 };
    let threshold = serde_json::to_value(&b.manifest.threshold).unwrap();
    b.write_calibration(threshold, Some((&r, 7))).unwrap();
    anovit::model::compile(&b, &d.path().join("plan")).unwrap();
    let plan = Bundle::load(&d.path().join("plan")).unwrap();
    assert_eq!(plan.reference.as_ref(), Some(&r));
    assert_eq!(plan.manifest.scoring.reference.as_ref().unwrap().n_good, 7);
}

#[test]
fn int8_bundles_compile_into_integer_plans_and_int8_refuses_f32() {
    let d = tempfile::tempdir().unwrap();
    let compile = |model: &str, out: &str| {
        Command::new(env!("CARGO_BIN_EXE_anovit"))
            .args(["compile", "--int8", "--model", model, "--out", d.path().join(out).to_str().unwrap()])
            .current_dir(repo())
            .output()
            .unwrap()
    };
    let o = compile("models/demo-int8", "plan8");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // 6 blocks x (qkv, proj, fc1, fc2) and the first 3 decoder stages: every weight product but
    // the patch embedding (a convolution onnxruntime leaves in f32) and the decoder's last stage
    // (32 channels in: faster in f32, `deconv::INT8_MIN_INNER`) in integers.
    assert!(out.contains("int8, 27 weight products in integers"), "{out}");
    let plan = Bundle::load(&d.path().join("plan8")).unwrap();
    let typed = anovit::model::load_typed(&plan).unwrap();
    assert_eq!(anovit::quant::census(&typed), (0, 27));

    let o = compile("models/demo-f32", "plan32");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("is an f32 bundle; quantise it first"), "{err}");
    assert!(!d.path().join("plan32").exists());
}

#[test]
fn compile_takes_an_onnx_file_and_its_manifest_and_checks_they_belong_together() {
    let d = tempfile::tempdir().unwrap();
    let compile = |onnx: &str, manifest: &str, out: &str| {
        Command::new(env!("CARGO_BIN_EXE_anovit"))
            .args(["compile", "--onnx", onnx, "--manifest", manifest, "--out", d.path().join(out).to_str().unwrap()])
            .current_dir(repo())
            .output()
            .unwrap()
    };
    let o = compile("models/demo-f32/model.onnx", "models/demo-f32/manifest.json", "plan");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("compiled models/demo-f32/model.onnx ->"));
    let plan = Bundle::load(&d.path().join("plan")).unwrap();
    assert_eq!(plan.manifest.model.format.as_deref(), Some("nnef"));
    let from = plan.manifest.model.compiled_from.as_ref().unwrap();
    assert_eq!(from["sha256"].as_str(), Some(demo_bundle().manifest.model.sha256.as_str()));

    // A model with another model's manifest: refused before anything is written.
    let o = compile("models/demo-f32/model.onnx", "models/demo-int8/manifest.json", "wrong");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("is not the model models/demo-int8/manifest.json describes"), "{err}");
    assert!(!d.path().join("wrong").exists());
    let o = Command::new(env!("CARGO_BIN_EXE_anovit"))
        .args(["compile", "--onnx", "models/demo-f32/model.onnx", "--out", "x"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--manifest"));
}
