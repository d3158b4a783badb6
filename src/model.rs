//! The model: loaded once with a static input fact, optimised once, one state reused per frame.
//!
//! Two sources give the same plan: an ONNX file (feature `onnx`, parsed by tract-onnx), or an
//! NNEF archive compiled ahead of time by `anovit compile` (tract-nnef only, so a deploy build
//! carries no ONNX front-end). A plan loads only in the tract version that wrote it.
//!
//! tract's errors (anyhow) are wrapped here; nothing above this module sees them. The facade
//! copies the input into a tensor and returns fresh output tensors, so the model boundary
//! allocates per frame: that cost is measured and budgeted apart from our own stages.

use std::path::{Path, PathBuf};

use tract_core::prelude::*;

use crate::bundle::{Bundle, Manifest, ModelFormat};
use crate::error::{Error, Result};

/// The tract version this binary links (pinned with `=` in Cargo.toml; checked by a test).
pub const TRACT_VERSION: &str = "0.23.9";

/// Property tract-nnef writes into every archive with its own version.
const SER_VERSION_KEY: &str = "tract_nnef_ser_version";

type Plan = Arc<TypedRunnableModel>;

/// The NNEF framework plans are written and read with: tract-core's operators and anovit's int8
/// quantiser (`quant::registry`) only. Writing with nothing more makes `compile` fail on an
/// operator the deploy build could not load, instead of the board failing at start; and the
/// deploy binary links no extra operator sets.
pub fn nnef() -> tract_nnef::framework::Nnef {
    tract_nnef::nnef().with_registry(crate::quant::registry())
}

/// Whether `ANOVIT_TRACT_OPS` is set: models then load with tract's own lowering of transposed
/// convolutions and broadcasts instead of ours (`deconv.rs`, `broadcast.rs`), so that
/// `scripts/perf.py` can measure both. int8 decoders then stay f32.
pub fn tract_ops_only() -> bool {
    std::env::var_os("ANOVIT_TRACT_OPS").is_some()
}

/// Which of tract's AVX-512 VNNI kernels int8 products use on x86-64 (nothing changes elsewhere).
/// The products are exact integer sums, so the choice changes speed only, never a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Int8Kernel {
    /// The wide kernel on AMD cores with AVX-512 VNNI (Zen 4 and later), else tract's choice (the
    /// wide kernel only where its probe counts two 512-bit FMA ports). `TRACT_AVX512_FMA_UNITS`,
    /// when set, is left to tract.
    Auto,
    /// The 8x8 ymm kernel.
    Narrow,
    /// The 16x16 zmm kernel for products of 16 rows and columns or more.
    Wide,
}

/// Chooses the int8 kernel (`TRACT_AVX512_FMA_UNITS` through tract's knob API). tract reads it
/// once, at the first int8 product it lowers, so this must come before any model is loaded. Why:
/// tract's probe counts one 512-bit port on AMD's cores (they split a 512-bit operation over two
/// 256-bit units), which picks the narrow kernel, as it should on Intel parts with one port, where
/// 512-bit code lowers the clock and tract measured the narrow kernel faster. AMD's cores keep
/// their clock, and the wide kernel, with twice the accumulators, ran the demo int8 plan 1.06-1.10x
/// faster on this project's AMD EPYC host (docs/PERF.md times both).
pub fn set_int8_kernel(kernel: Int8Kernel) {
    let units = match kernel {
        Int8Kernel::Auto if std::env::var_os("TRACT_AVX512_FMA_UNITS").is_none() && amd_with_vnni() => "2",
        Int8Kernel::Auto => return,
        Int8Kernel::Narrow => "1",
        Int8Kernel::Wide => "2",
    };
    tract_core::tract_linalg::knobs::TRACT_AVX512_FMA_UNITS.set(Some(units.to_string()));
}

/// Whether this is an AMD CPU with AVX-512 VNNI.
fn amd_with_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // CPUID leaf 0: the vendor string in EBX, EDX, ECX.
        #[allow(unused_unsafe)]
        // SAFETY: CPUID leaf 0 exists on every x86-64 CPU.
        let r = unsafe { std::arch::x86_64::__cpuid(0) };
        let vendor = [r.ebx, r.edx, r.ecx].map(u32::to_le_bytes).concat();
        vendor == *b"AuthenticAMD" && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn tract_err(path: &Path) -> impl Fn(anyhow::Error) -> Error + '_ {
    move |e| Error::Model { path: path.to_path_buf(), why: format!("{e:#}") }
}

fn mismatch(path: &Path, why: String) -> Error {
    Error::ModelMismatch { path: path.to_path_buf(), why }
}

/// Reads the bundle's model file into a typed model with the manifest's input shape, and checks
/// its inputs and outputs against the manifest. The model's one output is then the one the scorer
/// reads ([`Manifest::scored_output`]).
pub fn load_typed(bundle: &Bundle) -> Result<TypedModel> {
    let path = bundle.model_path();
    let m = &bundle.manifest;
    let mut typed = match m.model.format() {
        ModelFormat::Onnx => load_onnx(&path, m)?,
        ModelFormat::Nnef => load_nnef(&path, m)?,
    };
    let err = tract_err(&path);
    let inputs: Vec<String> =
        typed.input_outlets().map_err(&err)?.iter().map(|o| typed.node(o.node).name.clone()).collect();
    if inputs.len() != 1 || inputs[0] != m.input.name {
        return Err(mismatch(
            &path,
            format!("inputs are {inputs:?}, the manifest expects one named {:?}", m.input.name),
        ));
    }
    let outputs: Vec<String> = typed
        .output_outlets()
        .map_err(&err)?
        .iter()
        .map(|o| typed.outlet_label(*o).map(str::to_string).unwrap_or_else(|| typed.node(o.node).name.clone()))
        .collect();
    let (name, out_shape) = m.scored_output();
    let Some(out_index) = outputs.iter().position(|n| n == name) else {
        return Err(mismatch(&path, format!("outputs are {outputs:?}, the manifest expects {name:?}")));
    };
    let shape = &m.input.shape[..];
    let in_fact = typed.input_fact(0).map_err(&err)?;
    if in_fact.datum_type != f32::datum_type() || in_fact.shape.as_concrete() != Some(shape) {
        return Err(mismatch(&path, format!("input is {in_fact:?}, the manifest says f32 {shape:?}")));
    }
    let out_fact = typed.output_fact(out_index).map_err(&err)?;
    if out_fact.shape.as_concrete() != Some(&out_shape[..]) {
        return Err(mismatch(&path, format!("output {name:?} has shape {:?}, expected {out_shape:?}", out_fact.shape)));
    }
    // Only the output the scorer reads leaves the plan (a learned map's reconstruction is
    // still computed, as the discriminative stage's input, but never copied out).
    if outputs.len() > 1 {
        let keep = typed.output_outlets().map_err(&err)?[out_index];
        typed.select_output_outlets(&[keep]).map_err(&err)?;
    }
    Ok(typed)
}

#[cfg(feature = "onnx")]
fn load_onnx(path: &Path, m: &Manifest) -> Result<TypedModel> {
    use tract_onnx::prelude::{Framework as _, InferenceModelExt as _};
    let err = tract_err(path);
    let mut model = tract_onnx::onnx().model_for_path(path).map_err(&err)?;
    let n_inputs = model.input_outlets().map_err(&err)?.len();
    if n_inputs != 1 {
        return Err(mismatch(path, format!("the model has {n_inputs} inputs, expected one image input")));
    }
    let s = &m.input.shape;
    model.set_input_fact(0, f32::fact([s[0], s[1], s[2], s[3]]).into()).map_err(&err)?;
    let typed = model.into_typed().map_err(&err)?;
    if m.model.precision != "int8" {
        // The decoder's transposed convolutions with our overlap-add (src/deconv.rs).
        let mut typed = typed.into_decluttered().map_err(&err)?;
        let n = crate::deconv::rewrite(&mut typed, None).map_err(&err)?;
        log::debug!("{n} transposed convolutions with anovit's overlap-add");
        return Ok(typed);
    }
    // onnxruntime's int8 form runs slower than f32 as tract imports it: into tract's own
    // integer products (src/quant.rs).
    let (typed, rewritten) = crate::quant::rewrite_int8(typed).map_err(&err)?;
    log::debug!("int8: {rewritten} weight products in tract's integer form");
    Ok(typed)
}

#[cfg(not(feature = "onnx"))]
fn load_onnx(path: &Path, _: &Manifest) -> Result<TypedModel> {
    Err(Error::Model {
        path: path.to_path_buf(),
        why: "this is a deploy build without the ONNX front-end: compile the bundle into a plan with \
              `anovit compile` on a full build and copy that bundle here"
            .into(),
    })
}

fn load_nnef(path: &Path, m: &Manifest) -> Result<TypedModel> {
    let wrote = m.model.tract_version.as_deref().unwrap_or("unknown");
    if wrote != TRACT_VERSION {
        return Err(mismatch(
            path,
            format!(
                "the plan was compiled by tract {wrote}, this anovit runs tract {TRACT_VERSION}: recompile it with \
                 this anovit's `anovit compile`"
            ),
        ));
    }
    let model = nnef().model_for_path(path).map_err(tract_err(path))?;
    let ser = model
        .properties
        .get(SER_VERSION_KEY)
        .and_then(|t| t.try_as_plain_ram().and_then(|v| v.to_scalar::<String>().cloned()).ok());
    if ser.as_deref() != Some(TRACT_VERSION) {
        return Err(mismatch(
            path,
            format!("the archive says it was written by tract {ser:?}, this anovit runs tract {TRACT_VERSION}: recompile it"),
        ));
    }
    Ok(model)
}

/// A loaded, optimised model with its reusable state.
pub struct Model {
    state: TypedSimpleState,
    /// tract's thread pool when the plan runs on more than one core.
    #[cfg(feature = "threads")]
    executor: Option<tract_linalg::multithread::Executor>,
    shape: [usize; 4],
    recon: Vec<f32>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("shape", &self.shape).finish_non_exhaustive()
    }
}

impl Model {
    /// Loads the bundle's model (ONNX or plan), checks it against the manifest and builds the
    /// optimised plan with one state.
    pub fn load(bundle: &Bundle) -> Result<Model> {
        let path = bundle.model_path();
        let typed = load_typed(bundle)?;
        let s = &bundle.manifest.input.shape;
        let shape = [s[0], s[1], s[2], s[3]];
        let out_len: usize = bundle.manifest.scored_output().1.iter().product();
        let optimised = |typed: TypedModel| -> TractResult<TypedModel> {
            // The encoder's element-wise chains as single operators (src/fuse.rs); they are
            // matched in the decluttered form.
            let mut typed = typed.into_decluttered()?;
            let fused = crate::fuse::rewrite(&mut typed)?;
            log::debug!("fused: {fused:?}");
            let mut m = typed.into_optimized()?;
            // Broadcasts tract leaves to its generic loop (src/broadcast.rs).
            crate::broadcast::rewrite(&mut m)?;
            Ok(m)
        };
        let plan: Plan = optimised(typed).and_then(|m| m.into_runnable()).map_err(tract_err(&path))?;
        let state = plan.spawn().map_err(tract_err(&path))?;
        Ok(Model {
            state,
            #[cfg(feature = "threads")]
            executor: None,
            shape,
            recon: vec![0.0; out_len],
        })
    }

    /// Runs the plan's matrix products on `threads` cores (tract's multithreaded executor; 1 =
    /// on the calling thread only, the default). On a board with two cores or more, two
    /// threads shorten a frame by about a third (docs/PERF.md) and leave less for anything
    /// else on the board.
    #[cfg(feature = "threads")]
    pub fn set_threads(&mut self, threads: usize) -> Result<()> {
        self.executor = match threads {
            0 => return Err(threads_error("threads must be at least 1")),
            1 => None,
            n => {
                // tract splits a product only above 64 panels by default, which leaves most of
                // this model's products on one core; 16 gained most here (docs/PERF.md).
                tract_linalg::multithread::set_threading_panel_threshold(16);
                Some(tract_linalg::multithread::Executor::multithread(n))
            }
        };
        Ok(())
    }

    /// Without the `threads` feature the plan runs on the calling thread only.
    #[cfg(not(feature = "threads"))]
    pub fn set_threads(&mut self, threads: usize) -> Result<()> {
        match threads {
            1 => Ok(()),
            0 => Err(threads_error("threads must be at least 1")),
            _ => {
                Err(threads_error("this build runs the plan on one thread: rebuild with `--features threads` for more"))
            }
        }
    }

    /// Input shape `[1, 3, H, W]`.
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    /// Runs one frame; returns the output the scorer reads (`Manifest::scored_output`: the
    /// reconstruction, NCHW, or the anomaly logits). Errors are reported as a kind so
    /// that the loop can count them and reject the part.
    pub fn infer(&mut self, input: &[f32]) -> std::result::Result<&[f32], InferError> {
        let t = Tensor::from_shape(&self.shape, input).map_err(|_| InferError::BadInput)?;
        let state = &mut self.state;
        #[cfg(feature = "threads")]
        let out = match &self.executor {
            Some(e) => tract_linalg::multithread::multithread_tract_scope(e.clone(), || state.run(tvec!(t.into()))),
            None => state.run(tvec!(t.into())),
        };
        #[cfg(not(feature = "threads"))]
        let out = state.run(tvec!(t.into()));
        let out = out.map_err(|_| InferError::Engine)?;
        let view = out.first().ok_or(InferError::Engine)?;
        let s = view.try_as_plain_ram().and_then(|v| v.as_slice::<f32>()).map_err(|_| InferError::Engine)?;
        if s.len() != self.recon.len() {
            return Err(InferError::Engine);
        }
        self.recon.copy_from_slice(s);
        Ok(&self.recon)
    }
}

impl Model {
    /// Runs the plan `runs` times on `input` and returns the time spent in each operator kind
    /// (tract's op name), summed over the runs, largest first: where the plan's time goes. The
    /// products (`OptMatMul`) are split by the part of the model they belong to.
    pub fn profile(&mut self, input: &[f32], runs: usize) -> Result<Vec<(String, std::time::Duration)>> {
        let mut per_op = std::collections::BTreeMap::<String, std::time::Duration>::new();
        let err = |e: anyhow::Error| Error::Model { path: PathBuf::from("<plan>"), why: format!("{e:#}") };
        for _ in 0..runs {
            let t = Tensor::from_shape(&self.shape, input).map_err(err)?;
            self.state
                .run_plan_with_eval(tvec!(t.into()), |ctx, state, node, inputs| {
                    let start = std::time::Instant::now();
                    let out = tract_core::plan::eval(ctx, state, node, inputs);
                    *per_op.entry(profile_key(node.op().name().as_ref(), &node.name)).or_default() += start.elapsed();
                    out
                })
                .map_err(err)?;
        }
        let mut v: Vec<_> = per_op.into_iter().collect();
        v.sort_by_key(|o| std::cmp::Reverse(o.1));
        Ok(v)
    }
}

/// The profile's key of a node: its operator kind, and for products the part of the model they
/// belong to, read from the node name as our export writes it (`/blocks.0/attn/qkv/...` from
/// ONNX, `__blocks_0_attn_qkv_...` from a plan): `blocks` (the attention's activation products
/// apart), `decoder`, `patch_embed`.
fn profile_key(op: &str, node: &str) -> String {
    if op != "OptMatMul" {
        return op.to_string();
    }
    let name = node.replace(['/', '.'], "_");
    let name = name.trim_start_matches('_');
    let part = ["blocks", "decoder", "patch_embed"].into_iter().find(|p| name.starts_with(p));
    match part {
        None => op.to_string(),
        Some(p) if name.contains("_attn_MatMul") => format!("{op} ({p}, attention)"),
        Some(p) => format!("{op} ({p})"),
    }
}

fn threads_error(why: &str) -> Error {
    Error::Model { path: PathBuf::from("<plan>"), why: why.into() }
}

/// Why inference failed on a frame. The part is rejected and the failure counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InferError {
    /// The input buffer does not have the model's size.
    BadInput,
    /// tract reported an error while running the plan.
    Engine,
}

impl std::fmt::Display for InferError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InferError::BadInput => "model input has the wrong size",
            InferError::Engine => "inference engine error",
        })
    }
}

impl std::error::Error for InferError {}

/// Relative L2 distance `|got - reference| / |reference|`, in f64: how plans and engines are
/// compared with each other.
pub fn relative_l2(got: &[f32], reference: &[f32]) -> f64 {
    let (num, den) = got
        .iter()
        .zip(reference)
        .fold((0f64, 0f64), |(n, d), (a, b)| (n + f64::from(a - b).powi(2), d + f64::from(*b).powi(2)));
    (num / den.max(1e-30)).sqrt()
}

/// File name of the plan inside a compiled bundle.
pub const PLAN_FILE: &str = "model.nnef.tgz";

/// What `compile` wrote.
#[derive(Debug)]
pub struct Compiled {
    /// The new bundle's manifest.
    pub manifest: PathBuf,
    /// For an int8 plan, its weight products in tract's integer form.
    pub int8_products: Option<usize>,
}

/// Compiles a bundle's ONNX model into a plan bundle in `out`: input shape fixed, graph
/// decluttered, written as tract's NNEF archive (deterministic, gzip), with a manifest that
/// records the plan's hash, the tract version and the ONNX file it came from.
pub fn compile(bundle: &Bundle, out: &Path) -> Result<Compiled> {
    let src = bundle.model_path();
    if bundle.manifest.model.format() != ModelFormat::Onnx {
        return Err(mismatch(&src, "`anovit compile` takes an ONNX bundle; this one is already a plan".into()));
    }
    let typed = load_typed(bundle)?;
    let typed = typed.into_decluttered().map_err(tract_err(&src))?;
    let mut int8_products = None;
    if bundle.manifest.model.precision == "int8" {
        let (glue, integer) = crate::quant::census(&typed);
        int8_products = Some(integer);
        if glue > 0 {
            return Err(mismatch(
                &src,
                format!(
                    "{glue} quantisation node(s) are not in a form tract runs as integers (or can write into a plan): \
                     quantise with scripts/quantize.py (QOperator, per-channel weights, MatMuls only)"
                ),
            ));
        }
    }
    std::fs::create_dir_all(out).map_err(|source| Error::Io { path: out.to_path_buf(), source })?;
    let plan_path = out.join(PLAN_FILE);
    let io = |source| Error::Io { path: plan_path.clone(), source };
    let file = std::fs::File::create(&plan_path).map_err(io)?;
    let gz = flate2::write::GzEncoder::new(std::io::BufWriter::new(file), flate2::Compression::default());
    let gz = nnef().write_to_tar_with_config(&typed, gz, false, true).map_err(tract_err(&plan_path))?;
    gz.finish().and_then(|mut w| std::io::Write::flush(&mut w)).map_err(io)?;

    let bytes = std::fs::read(&plan_path).map_err(io)?;
    let mut manifest = bundle.manifest.clone();
    manifest.model.compiled_from =
        Some(serde_json::json!({"file": manifest.model.file, "sha256": manifest.model.sha256}));
    manifest.model.file = PLAN_FILE.into();
    manifest.model.sha256 = crate::bundle::sha256_hex(&bytes);
    manifest.model.format = Some("nnef".into());
    manifest.model.tract_version = Some(TRACT_VERSION.into());
    if let Some(r) = &manifest.scoring.reference {
        // The plan scores like its source: the reference travels with it (hash kept).
        let (from, to) = (bundle.dir.join(&r.file), out.join(&r.file));
        std::fs::copy(&from, &to).map_err(|source| Error::Io { path: to.clone(), source })?;
    }
    let mpath = out.join("manifest.json");
    let text = serde_json::to_string_pretty(&manifest).expect("a manifest always serialises");
    std::fs::write(&mpath, text + "\n").map_err(|source| Error::Io { path: mpath.clone(), source })?;
    Ok(Compiled { manifest: mpath, int8_products })
}

#[cfg(test)]
mod tests {
    #[test]
    fn profile_keys_split_products_by_model_part() {
        use super::profile_key;
        assert_eq!(profile_key("Softmax", "/blocks.0/attn/Softmax"), "Softmax");
        assert_eq!(profile_key("OptMatMul", "/blocks.3/mlp/fc1/MatMul_quant"), "OptMatMul (blocks)");
        assert_eq!(profile_key("OptMatMul", "/blocks.3/attn/MatMul_1"), "OptMatMul (blocks, attention)");
        assert_eq!(
            profile_key("OptMatMul", "/blocks.3/attn/MatMul_1.split-over-2.1..197"),
            "OptMatMul (blocks, attention)"
        );
        assert_eq!(profile_key("OptMatMul", "/blocks.3/attn/qkv/MatMul_quant"), "OptMatMul (blocks)");
        assert_eq!(
            profile_key("OptMatMul", "/decoder/decoder.0/decoder.0.0/ConvTranspose.einsum"),
            "OptMatMul (decoder)"
        );
        assert_eq!(profile_key("OptMatMul", "/patch_embed/proj/Conv.matmatmul"), "OptMatMul (patch_embed)");
        // The same nodes loaded from a plan (NNEF identifiers).
        assert_eq!(profile_key("OptMatMul", "__blocks_5_mlp_fc1_Add_split_over_1_1__197_1"), "OptMatMul (blocks)");
        assert_eq!(profile_key("OptMatMul", "__blocks_0_attn_MatMul_1_split_over_2"), "OptMatMul (blocks, attention)");
        assert_eq!(profile_key("OptMatMul", "__decoder_decoder_3_ConvTranspose_deconv"), "OptMatMul (decoder)");
        assert_eq!(profile_key("OptMatMul", "__patch_embed_proj_Conv_conv"), "OptMatMul (patch_embed)");
        assert_eq!(profile_key("OptMatMul", "matmul_of_another_export"), "OptMatMul");
    }

    #[test]
    fn tract_version_matches_the_lock_file() {
        let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).unwrap();
        let want = format!("name = \"tract-nnef\"\nversion = \"{}\"", super::TRACT_VERSION);
        assert!(lock.contains(&want), "Cargo.lock pins another tract-nnef than TRACT_VERSION");
    }
}
