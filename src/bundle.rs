//! The model bundle: a directory with the model file and `manifest.json` (see `docs/BUNDLE.md`).
//!
//! Loading verifies everything the manifest promises before the model is trusted with a single
//! part: format version, the model file's sha256, a usable input shape, normalisation and a
//! threshold. A bundle that fails any check is refused with a message that says what to do.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::scoring::Reference;

/// The manifest format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// `manifest.json`, as written by `scripts/export.py`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// Always `anovit-bundle`.
    pub format: String,
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Human name.
    pub name: String,
    /// The model file.
    pub model: ModelInfo,
    /// How to feed the model.
    pub input: InputSpec,
    /// Output names.
    pub outputs: Outputs,
    /// How to turn the reconstruction into a score.
    pub scoring: ScoringSpec,
    /// The decision threshold and where it came from.
    pub threshold: Threshold,
    /// Provenance of the weights (kept verbatim).
    #[serde(default)]
    pub training: serde_json::Value,
    /// int8 bundles: how they were quantised (kept verbatim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<serde_json::Value>,
}

/// The model file and what it is.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelInfo {
    /// File name inside the bundle.
    pub file: String,
    /// Hex sha256 of that file.
    pub sha256: String,
    /// `f32` or `int8`.
    pub precision: String,
    /// `onnx` or `nnef` (a plan compiled by `anovit compile`); absent: from the file extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// For plans: the tract version that wrote them. Plans only load in the same version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tract_version: Option<String>,
    /// For plans: the ONNX file they were compiled from (`file`, `sha256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compiled_from: Option<serde_json::Value>,
    /// Architecture details (informative).
    #[serde(default)]
    pub arch: serde_json::Value,
    /// Parameter count.
    #[serde(default)]
    pub params: u64,
    /// GFLOP per frame.
    #[serde(default)]
    pub gflop: f64,
}

/// Colour handling of the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorMode {
    /// Three channels as captured.
    Rgb,
    /// Luminance replicated into three channels.
    Gray,
}

/// Input tensor description and preprocessing parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InputSpec {
    /// Tensor name.
    pub name: String,
    /// `[1, 3, H, W]`.
    pub shape: Vec<usize>,
    /// `NCHW`.
    pub layout: String,
    /// Colour mode.
    pub color: ColorMode,
    /// Crop `[x, y, w, h]` of the source image, or none for the whole image.
    #[serde(default)]
    pub roi: Option<[u32; 4]>,
    /// `bilinear`.
    pub resize: String,
    /// Per-channel mean on [0, 1] values.
    pub mean: [f32; 3],
    /// Per-channel standard deviation on [0, 1] values.
    pub std: [f32; 3],
}

impl InputSpec {
    /// Model input height.
    pub fn height(&self) -> usize {
        self.shape[2]
    }
    /// Model input width.
    pub fn width(&self) -> usize {
        self.shape[3]
    }
}

/// Output names.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Outputs {
    /// The reconstruction, same shape as the input.
    pub reconstruction: String,
    /// The discriminative stage's anomaly logits, `[1, 1, H, W]` (bundles scored by a learned map).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomaly_map: Option<String>,
}

/// Where the anomaly map comes from (docs/BUNDLE.md, Scoring).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoringKind {
    /// The channels' mean squared error between input and reconstruction (bundles without a
    /// `kind` are this).
    #[default]
    ReconstructionError,
    /// The sigmoid of the discriminative stage's logits (`outputs.anomaly_map`).
    LearnedMap,
}

impl ScoringKind {
    /// The `scoring.error` this kind requires.
    pub fn error(self) -> &'static str {
        match self {
            ScoringKind::ReconstructionError => "squared_mean_channels",
            ScoringKind::LearnedMap => "sigmoid",
        }
    }
}

/// Scoring parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScoringSpec {
    /// Where the map comes from.
    #[serde(default)]
    pub kind: ScoringKind,
    /// How the map is made from the model output: `squared_mean_channels` or `sigmoid`.
    pub error: String,
    /// Gaussian sigma in model-input pixels; 0 disables smoothing.
    pub sigma: f32,
    /// Kernel radius = floor(truncate * sigma + 0.5).
    pub truncate: f32,
    /// `max`.
    pub reduction: String,
    /// Per-pixel good-part statistics the map is standardised by (`anovit calibrate --reference`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<ReferenceSpec>,
}

/// The manifest's `scoring.reference`: a file of per-pixel statistics inside the bundle.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReferenceSpec {
    /// File name inside the bundle (f32 little-endian mean plane, then std plane).
    pub file: String,
    /// Hex sha256 of that file.
    pub sha256: String,
    /// Good images it was computed from.
    pub n_good: usize,
    /// Added to the per-pixel std before dividing.
    pub floor: f32,
}

/// The reference file `anovit calibrate --reference` writes.
pub const REFERENCE_FILE: &str = "reference.bin";

/// Decision threshold: a part is defective when its score is at least `value`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Threshold {
    /// The threshold.
    pub value: f32,
    /// How it was chosen.
    pub source: String,
    /// Statistics it came from (kept verbatim).
    #[serde(default)]
    pub stats: serde_json::Value,
}

/// What kind of model file a bundle holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFormat {
    /// ONNX, as exported by `scripts/export.py`.
    Onnx,
    /// tract's NNEF archive, as written by `anovit compile`.
    Nnef,
}

impl ModelInfo {
    /// The model file's format.
    pub fn format(&self) -> ModelFormat {
        match self.format.as_deref() {
            Some("nnef") => ModelFormat::Nnef,
            Some(_) => ModelFormat::Onnx,
            None if self.file.ends_with(".nnef.tgz") || self.file.ends_with(".nnef.tar") => ModelFormat::Nnef,
            None => ModelFormat::Onnx,
        }
    }
}

/// A verified bundle on disk.
#[derive(Clone, Debug)]
pub struct Bundle {
    /// The bundle directory.
    pub dir: PathBuf,
    /// The parsed and validated manifest.
    pub manifest: Manifest,
    /// The scoring reference, loaded and verified, when the manifest names one.
    pub reference: Option<Reference>,
}

impl Bundle {
    /// Reads `dir/manifest.json`, validates it and checks the model file's hash.
    pub fn load(dir: &Path) -> Result<Bundle> {
        let mpath = dir.join("manifest.json");
        if !dir.is_dir() {
            return Err(Error::Manifest { path: mpath, why: format!("{} is not a bundle directory", dir.display()) });
        }
        let text = std::fs::read_to_string(&mpath).map_err(|source| Error::Io { path: mpath.clone(), source })?;
        let manifest = Manifest::parse(&text).map_err(|why| Error::Manifest { path: mpath.clone(), why })?;
        let mut bundle = Bundle { dir: dir.to_path_buf(), manifest, reference: None };
        bundle.verify_model_hash()?;
        bundle.reference = bundle.load_reference()?;
        Ok(bundle)
    }

    fn load_reference(&self) -> Result<Option<Reference>> {
        let Some(spec) = &self.manifest.scoring.reference else { return Ok(None) };
        let path = self.dir.join(&spec.file);
        let bad = |why: String| Error::ModelMismatch {
            path: path.clone(),
            why: format!("scoring reference {why}: run `anovit calibrate --reference` again"),
        };
        let bytes = read_hashed(&path, &spec.sha256).map_err(|e| match e {
            Error::ModelMismatch { why, .. } => bad(why),
            e => e,
        })?;
        let plane = self.manifest.input.width() * self.manifest.input.height();
        Reference::from_bytes(&bytes, plane, spec.floor).map(Some).map_err(bad)
    }

    /// Path of the model file.
    pub fn model_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.model.file)
    }

    /// Replaces the manifest's `threshold` section on disk (the rest is kept byte-for-byte in
    /// meaning), through a temporary file so a crash leaves the old manifest intact. With
    /// `reference`, also writes the reference file and `scoring.reference` (the threshold must
    /// then come from scores standardised by it).
    pub fn write_calibration(
        &mut self,
        threshold: serde_json::Value,
        reference: Option<(&Reference, usize)>,
    ) -> Result<()> {
        let mpath = self.dir.join("manifest.json");
        let err = |why: String| Error::Manifest { path: mpath.clone(), why };
        let text = std::fs::read_to_string(&mpath).map_err(|source| Error::Io { path: mpath.clone(), source })?;
        let mut doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        let obj = doc.as_object_mut().ok_or_else(|| err("not a JSON object".into()))?;
        obj.insert("threshold".into(), threshold);
        if let Some((r, n_good)) = reference {
            let bytes = r.to_bytes();
            write_atomic(&self.dir.join(REFERENCE_FILE), &bytes)?;
            let spec =
                ReferenceSpec { file: REFERENCE_FILE.into(), sha256: sha256_hex(&bytes), n_good, floor: r.floor };
            let scoring = obj.get_mut("scoring").and_then(|v| v.as_object_mut());
            let scoring = scoring.ok_or_else(|| err("`scoring` is not an object".into()))?;
            scoring.insert("reference".into(), serde_json::to_value(spec).map_err(|e| err(e.to_string()))?);
        }
        let text = serde_json::to_string_pretty(&doc).map_err(|e| err(e.to_string()))? + "\n";
        self.manifest = Manifest::parse(&text).map_err(err)?;
        write_atomic(&mpath, text.as_bytes())?;
        if let Some((r, _)) = reference {
            self.reference = Some(r.clone());
        }
        Ok(())
    }

    fn verify_model_hash(&self) -> Result<()> {
        read_hashed(&self.model_path(), &self.manifest.model.sha256).map(drop)
    }
}

/// Reads a file of the bundle and checks it against the sha256 the manifest gives for it.
fn read_hashed(path: &Path, want: &str) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let got = sha256_hex(&bytes);
    if !got.eq_ignore_ascii_case(want) {
        return Err(Error::ModelMismatch {
            path: path.to_path_buf(),
            why: format!("sha256 is {got}, the manifest says {want}"),
        });
    }
    Ok(bytes)
}

/// A manifest file name must name a file inside the bundle.
fn plain_file_name(key: &str, name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.contains('/') || name.contains("..") {
        return Err(format!("`{key}` {name:?} must be a plain file name inside the bundle"));
    }
    Ok(())
}

/// Writes through a temporary file and a rename, so readers never see half a file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| Error::Io { path: path.to_path_buf(), source })
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl Manifest {
    /// The output the scorer reads and its shape: the reconstruction `[1, 3, H, W]`, or for a
    /// learned map the anomaly logits `[1, 1, H, W]`.
    pub fn scored_output(&self) -> (&str, [usize; 4]) {
        let (h, w) = (self.input.height(), self.input.width());
        match (self.scoring.kind, &self.outputs.anomaly_map) {
            (ScoringKind::LearnedMap, Some(name)) => (name, [1, 1, h, w]),
            _ => (&self.outputs.reconstruction, [1, 3, h, w]),
        }
    }

    /// Parses and validates manifest JSON. The error names the offending field.
    pub fn parse(text: &str) -> std::result::Result<Manifest, String> {
        let m: Manifest = serde_json::from_str(text).map_err(|e| format!("not a valid manifest: {e}"))?;
        m.validate()?;
        Ok(m)
    }

    /// Checks every field the runtime relies on.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.format != "anovit-bundle" {
            return Err(format!("`format` is {:?}, expected \"anovit-bundle\"", self.format));
        }
        if self.format_version != FORMAT_VERSION {
            return Err(format!(
                "`format_version` is {}, this anovit reads version {FORMAT_VERSION}: use a matching anovit or re-export",
                self.format_version
            ));
        }
        plain_file_name("model.file", &self.model.file)?;
        if self.model.sha256.len() != 64 || !self.model.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err("`model.sha256` must be 64 hex digits".into());
        }
        if !matches!(self.model.precision.as_str(), "f32" | "int8") {
            return Err(format!("`model.precision` is {:?}, expected \"f32\" or \"int8\"", self.model.precision));
        }
        if !matches!(self.model.format.as_deref(), None | Some("onnx" | "nnef")) {
            return Err(format!("`model.format` is {:?}, expected \"onnx\" or \"nnef\"", self.model.format));
        }
        if self.model.format() == ModelFormat::Nnef && self.model.tract_version.is_none() {
            return Err("`model.tract_version` is required for a compiled plan: recompile with `anovit compile`".into());
        }
        let i = &self.input;
        if i.shape.len() != 4 || i.shape[0] != 1 || i.shape[1] != 3 {
            return Err(format!("`input.shape` is {:?}, expected [1, 3, H, W]", i.shape));
        }
        let (h, w) = (i.shape[2], i.shape[3]);
        if h == 0 || w == 0 || h % 16 != 0 || w % 16 != 0 || h > 4096 || w > 4096 {
            return Err(format!("`input.shape` {h}x{w}: H and W must be positive multiples of 16 up to 4096"));
        }
        if i.layout != "NCHW" {
            return Err(format!("`input.layout` is {:?}, only \"NCHW\" is supported", i.layout));
        }
        if i.resize != "bilinear" {
            return Err(format!("`input.resize` is {:?}, only \"bilinear\" is supported", i.resize));
        }
        if let Some([_, _, rw, rh]) = i.roi {
            if rw == 0 || rh == 0 {
                return Err("`input.roi` must have a positive width and height".into());
            }
        }
        if i.mean.iter().any(|v| !v.is_finite()) || i.std.iter().any(|v| !v.is_finite() || *v <= 0.0) {
            return Err("`input.mean` must be finite and `input.std` finite and positive".into());
        }
        if self.outputs.reconstruction.is_empty() {
            return Err("`outputs.reconstruction` is empty".into());
        }
        let s = &self.scoring;
        if s.error != s.kind.error() {
            return Err(format!("`scoring.error` is {:?}, a {:?} bundle needs {:?}", s.error, s.kind, s.kind.error()));
        }
        if s.kind == ScoringKind::LearnedMap && self.outputs.anomaly_map.as_deref().is_none_or(str::is_empty) {
            return Err("`outputs.anomaly_map` is missing: a learned_map bundle scores the model's anomaly map".into());
        }
        if s.reduction != "max" {
            return Err(format!("`scoring.reduction` is {:?}, only \"max\" is supported", s.reduction));
        }
        if !s.sigma.is_finite() || !(0.0..=64.0).contains(&s.sigma) {
            return Err(format!("`scoring.sigma` {} must be in [0, 64]", s.sigma));
        }
        if !s.truncate.is_finite() || !(0.5..=8.0).contains(&s.truncate) {
            return Err(format!("`scoring.truncate` {} must be in [0.5, 8]", s.truncate));
        }
        if let Some(r) = &s.reference {
            plain_file_name("scoring.reference.file", &r.file)?;
            if !(r.floor.is_finite() && r.floor > 0.0) {
                return Err(format!("`scoring.reference.floor` {} must be positive", r.floor));
            }
        }
        if !self.threshold.value.is_finite() || self.threshold.value <= 0.0 {
            return Err(format!(
                "`threshold.value` {} must be a positive number: calibrate the bundle",
                self.threshold.value
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_json() -> serde_json::Value {
        serde_json::json!({
            "format": "anovit-bundle", "format_version": 1, "name": "t",
            "model": {"file": "model.onnx", "sha256": "0".repeat(64), "precision": "f32"},
            "input": {"name": "image", "shape": [1, 3, 32, 48], "layout": "NCHW", "color": "rgb",
                      "roi": null, "resize": "bilinear", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
            "outputs": {"reconstruction": "reconstruction"},
            "scoring": {"error": "squared_mean_channels", "sigma": 2.0, "truncate": 4.0, "reduction": "max"},
            "threshold": {"value": 0.5, "source": "test"}
        })
    }

    fn with(path: &[&str], v: serde_json::Value) -> std::result::Result<Manifest, String> {
        let mut j = sample_json();
        let mut at = &mut j;
        for p in &path[..path.len() - 1] {
            at = at.get_mut(*p).unwrap();
        }
        at[path[path.len() - 1]] = v;
        Manifest::parse(&j.to_string())
    }

    #[test]
    fn accepts_a_valid_manifest() {
        let m = Manifest::parse(&sample_json().to_string()).unwrap();
        assert_eq!((m.input.height(), m.input.width()), (32, 48));
    }

    #[test]
    fn rejects_bad_fields_with_their_names() {
        let cases: [(&[&str], serde_json::Value, &str); 8] = [
            (&["format_version"], 2.into(), "format_version"),
            (&["input", "shape"], serde_json::json!([1, 3, 30, 48]), "input.shape"),
            (&["input", "shape"], serde_json::json!([3, 32, 48]), "input.shape"),
            (&["input", "std"], serde_json::json!([0.2, 0.0, 0.2]), "input.std"),
            (&["scoring", "sigma"], serde_json::json!(-1.0), "scoring.sigma"),
            (&["threshold", "value"], serde_json::json!(0.0), "threshold.value"),
            (&["model", "file"], "../x.onnx".into(), "model.file"),
            (&["model", "sha256"], "abc".into(), "model.sha256"),
        ];
        for (path, v, field) in cases {
            let e = with(path, v).unwrap_err();
            assert!(e.contains(field), "{e:?} should name {field}");
        }
        assert!(Manifest::parse("{ not json").unwrap_err().contains("not a valid manifest"));
    }

    #[test]
    fn a_learned_map_bundle_names_its_map_output_and_error() {
        let old = Manifest::parse(&sample_json().to_string()).unwrap();
        assert_eq!(old.scoring.kind, ScoringKind::ReconstructionError);
        assert_eq!(old.scored_output(), ("reconstruction", [1, 3, 32, 48]));
        let mut j = sample_json();
        j["scoring"]["kind"] = "learned_map".into();
        j["scoring"]["error"] = "sigmoid".into();
        let e = Manifest::parse(&j.to_string()).unwrap_err();
        assert!(e.contains("outputs.anomaly_map"), "{e}");
        j["outputs"]["anomaly_map"] = "anomaly_map".into();
        let m = Manifest::parse(&j.to_string()).unwrap();
        assert_eq!(m.scored_output(), ("anomaly_map", [1, 1, 32, 48]));
        j["scoring"]["error"] = "squared_mean_channels".into();
        let e = Manifest::parse(&j.to_string()).unwrap_err();
        assert!(e.contains("scoring.error") && e.contains("sigmoid"), "{e}");
        j["scoring"]["kind"] = "magic".into();
        assert!(Manifest::parse(&j.to_string()).unwrap_err().contains("not a valid manifest"));
    }
}
