//! The model: loaded once with a static input fact, optimised once, one state reused per frame.
//!
//! tract's errors (anyhow) are wrapped here; nothing above this module sees them. The facade
//! copies the input into a tensor and returns fresh output tensors, so the model boundary
//! allocates per frame: that cost is measured and budgeted apart from our own stages.

use std::path::Path;

use tract_onnx::prelude::*;

use crate::bundle::Bundle;
use crate::error::{Error, Result};

type Plan = Arc<TypedRunnableModel>;

/// A loaded, optimised model with its reusable state.
pub struct Model {
    state: TypedSimpleState,
    shape: [usize; 4],
    out_index: usize,
    recon: Vec<f32>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("shape", &self.shape).finish_non_exhaustive()
    }
}

fn model_err(path: &Path) -> impl Fn(anyhow::Error) -> Error + '_ {
    move |e| Error::Model { path: path.to_path_buf(), why: format!("{e:#}") }
}

impl Model {
    /// Loads the bundle's ONNX model, fixes its input to the manifest's shape, checks that the
    /// reconstruction output exists with the same shape, and builds the plan.
    pub fn load(bundle: &Bundle) -> Result<Model> {
        let path = bundle.model_path();
        let m = &bundle.manifest;
        let s = &m.input.shape;
        let shape = [s[0], s[1], s[2], s[3]];
        let err = model_err(&path);
        let mut model = tract_onnx::onnx().model_for_path(&path).map_err(&err)?;
        let input_names: Vec<String> =
            model.input_outlets().map_err(&err)?.iter().map(|o| model.node(o.node).name.clone()).collect();
        if input_names.len() != 1 || input_names[0] != m.input.name {
            return Err(Error::ModelMismatch {
                path: path.clone(),
                why: format!("inputs are {input_names:?}, the manifest expects one named {:?}", m.input.name),
            });
        }
        let outputs: Vec<String> = model
            .output_outlets()
            .map_err(&err)?
            .iter()
            .map(|o| model.outlet_label(*o).map(str::to_string).unwrap_or_else(|| model.node(o.node).name.clone()))
            .collect();
        let Some(out_index) = outputs.iter().position(|n| *n == m.outputs.reconstruction) else {
            return Err(Error::ModelMismatch {
                path: path.clone(),
                why: format!("outputs are {outputs:?}, the manifest expects {:?}", m.outputs.reconstruction),
            });
        };
        model.set_input_fact(0, f32::fact(shape).into()).map_err(&err)?;
        let typed = model.into_typed().map_err(&err)?;
        let out_fact = typed.output_fact(out_index).map_err(&err)?;
        let out_shape = out_fact.shape.as_concrete().map(|s| s.to_vec());
        if out_shape.as_deref() != Some(&shape[..]) {
            return Err(Error::ModelMismatch {
                path: path.clone(),
                why: format!(
                    "output {:?} has shape {:?}, expected {shape:?}",
                    m.outputs.reconstruction, out_fact.shape
                ),
            });
        }
        let plan: Plan = typed.into_optimized().map_err(&err)?.into_runnable().map_err(&err)?;
        Self::from_plan(&plan, shape, out_index).map_err(err)
    }

    fn from_plan(plan: &Plan, shape: [usize; 4], out_index: usize) -> TractResult<Model> {
        Ok(Model { state: plan.spawn()?, shape, out_index, recon: vec![0.0; shape.iter().product()] })
    }

    /// Input shape `[1, 3, H, W]`.
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    /// Runs one frame; returns the reconstruction (NCHW). Errors are tract's, as text, so that
    /// the loop can count them and reject the part.
    pub fn infer(&mut self, input: &[f32]) -> std::result::Result<&[f32], InferError> {
        let t = Tensor::from_shape(&self.shape, input).map_err(|_| InferError::BadInput)?;
        let out = self.state.run(tvec!(t.into())).map_err(|_| InferError::Engine)?;
        let view = out.get(self.out_index).ok_or(InferError::Engine)?;
        let s = view.try_as_plain_ram().and_then(|v| v.as_slice::<f32>()).map_err(|_| InferError::Engine)?;
        if s.len() != self.recon.len() {
            return Err(InferError::Engine);
        }
        self.recon.copy_from_slice(s);
        Ok(&self.recon)
    }
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
