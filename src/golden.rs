//! The bundle contract checked on this machine: the scores of tests/data/golden.json (written
//! by scripts/golden.py with onnxruntime on x86) recomputed here, through the same
//! preprocessing, model and scoring the loop uses. `tests/golden.rs` runs it on the host;
//! `anovit golden` runs it on an ARM build (under qemu or on the board), where tract's NEON
//! kernels replace the x86 ones.

use std::path::Path;

use crate::bundle::Bundle;
use crate::capture::{Frame, FrameMeta, PixelFormat};
use crate::model::Model;
use crate::preprocess::Preprocessor;
use crate::scoring::Scorer;
use crate::synth::{Defect, PartSpec, SynthConveyor};

/// One recomputed score.
#[derive(Clone, Debug)]
pub struct Checked {
    /// The entry (synthetic spec or image path).
    pub name: String,
    /// Score here.
    pub got: f64,
    /// Score in the file.
    pub want: f64,
    /// Relative difference.
    pub rel: f64,
    /// The model input the score came from (preprocessed frame).
    pub input: Vec<f32>,
    /// The file's entry, with whatever else it records.
    pub entry: serde_json::Value,
}

/// The file's entries, recomputed; real-image entries are skipped (counted) when `data` (the
/// shared data folder) is `None`. Returns the entries, the skipped count and the tolerance.
pub fn check(golden: &str, bundle: &Bundle, data: Option<&Path>) -> Result<(Vec<Checked>, usize, f64), String> {
    let g: serde_json::Value = serde_json::from_str(golden).map_err(|e| format!("golden file: {e}"))?;
    // A plan compiled from the model checks against its source's file.
    let model = &bundle.manifest.model;
    let source = model.compiled_from.as_ref().and_then(|c| c["sha256"].as_str()).unwrap_or(&model.sha256);
    if g["model_sha256"] != source {
        return Err("the golden file was made for another model: rerun scripts/golden.py".into());
    }
    let tol = g["rel_tolerance"].as_f64().ok_or("golden file: no `rel_tolerance`")?;
    let m = &bundle.manifest;
    let mut model = Model::load(bundle).map_err(|e| e.to_string())?;
    let mut pre = Preprocessor::new(&m.input);
    let mut scorer = Scorer::new(m.input.width(), m.input.height(), &m.scoring);
    let (mut out, mut skipped) = (Vec::new(), 0);
    for e in g["entries"].as_array().ok_or("golden file: no `entries`")? {
        let (rgb, w, h, name) = if let Some(s) = e.get("synthetic") {
            let defect = match s["defect"].as_str() {
                Some(n) => Some(*Defect::ALL.iter().find(|d| d.name() == n).ok_or(format!("unknown defect {n}"))?),
                None => None,
            };
            let size = s["size"].as_u64().ok_or("synthetic entry without `size`")? as usize;
            let gen = SynthConveyor::new(s["seed"].as_u64().unwrap_or(0), size, size, 0.0);
            let spec = PartSpec { index: s["index"].as_u64().unwrap_or(0), defect };
            let (mut rgb, mut mask) = (vec![0; size * size * 3], vec![0; size * size]);
            gen.render(spec, &mut rgb, &mut mask);
            (rgb, size, size, s.to_string())
        } else {
            let rel = e["shared_data"].as_str().ok_or("entry neither synthetic nor shared_data")?;
            let Some(dir) = data else {
                skipped += 1;
                continue;
            };
            let img = image::open(dir.join(rel)).map_err(|e| format!("{rel}: {e}"))?.to_rgb8();
            let (w, h) = (img.width() as usize, img.height() as usize);
            (img.into_raw(), w, h, rel.to_string())
        };
        let meta = FrameMeta::new(w, h, PixelFormat::Rgb8);
        let input = pre.run(&Frame { data: &rgb, meta: &meta }).map_err(|e| e.to_string())?.to_vec();
        let recon = model.infer(&input).map_err(|e| e.to_string())?;
        let got = f64::from(scorer.score(&input, recon));
        let want = e["score"].as_f64().ok_or("entry without `score`")?;
        out.push(Checked { name, got, want, rel: (got - want).abs() / want.abs(), input, entry: e.clone() });
    }
    Ok((out, skipped, tol))
}
