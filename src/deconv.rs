//! The decoder's transposed convolutions as one product and an overlap-add of our own.
//!
//! tract lowers `Deconv` into an `EinSum` (kernel x input: one column per input pixel and kernel
//! tap) and its `DeconvSum`, which adds the columns into the output one element at a time
//! (12 % of the edge model's f32 frame). Both operators are tract-core's own: `DeconvSum` is
//! private and takes only what the f32 product gives, so an int8 decoder cannot be built from
//! them. [`rewrite`] wires the same product and [`OverlapAdd`], which adds each kernel tap's whole
//! input plane into a phase of the output (or, for geometries where a phase is wider than an input
//! row, input rows into phase-split output rows) with vector passes and, in int8 plans, reads the
//! product's i32 accumulators directly: the activations' zero point and both scales are applied
//! in the same pass, so the int8 decoder costs no extra pass over its largest tensors.
//!
//! int8 (`rewrite(.., Some(INT8_MIN_INNER))`): the weights are quantised here, symmetric per
//! output row (one output channel and kernel tap); the activations per run
//! ([`crate::quant::DynamicRange`]), as the decoder's inputs have no calibrated range in
//! onnxruntime's file. A stage with fewer input channels than [`INT8_MIN_INNER`] stays f32.

use tract_core::internal::*;
use tract_core::ops::cnn::{Deconv, KernelFormat, PaddingSpec};
use tract_core::ops::einsum::EinSum;
use tract_core::ops::nn::DataFormat;
use tract_nnef::internal as nnef;

use crate::quant::{range_of, DynamicRange, QuantizeDynamic};

/// Columns `(N, C * kh * kw, H * W)` -> image `(N, C, OH, OW)` plus a per-channel bias: output
/// pixel `(oy, ox)` gets column `(c, ky, kx)` of input pixel `(iy, ix)` where
/// `oy = iy * sy + ky - pad_y` (likewise x). Inputs: columns f32 and bias, or (quantised)
/// columns i32, bias, the activations' range `[step, zero_point]`, one weight step per row and
/// the rows' weight sums: value = `step * w_step[r] * (acc - zero_point * w_sum[r])`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OverlapAdd {
    /// Output channels.
    pub channels: usize,
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Strides.
    pub stride: [usize; 2],
    /// Padding cut from the top and the left of the full output.
    pub pad: [usize; 2],
    /// The transposed convolution's input height and width.
    pub input: [usize; 2],
    /// Output height and width.
    pub output: [usize; 2],
    /// Whether the columns are i32 accumulators (five inputs) or f32 (two).
    pub quantized: bool,
    /// Whether the ReLU after it is folded in (`src/fuse.rs`, at load: never in a plan file).
    /// A NaN stays NaN.
    pub relu: bool,
}

/// Per-row `value = acc * factor + offset`.
trait Acc: Copy {
    fn f32(self) -> f32;
}

impl Acc for f32 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self
    }
}

impl Acc for i32 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self as f32
    }
}

/// What one output plane needs: its channel's rows of columns, their factors and offsets.
struct Plane<'a, T> {
    cols: &'a [T],
    factor: &'a [f32],
    offset: &'a [f32],
    bias: f32,
    /// Outputs below it become it: 0 for a folded ReLU, else -inf. `v < low` is false for a NaN,
    /// so NaN passes.
    low: f32,
}

impl<T> Plane<'_, T> {
    #[inline(always)]
    fn finish(&self, v: f32) -> f32 {
        let v = v + self.bias;
        if v < self.low {
            self.low
        } else {
            v
        }
    }

    /// Writes an output row from its column phases (`phase(b)` holds columns `b, b + sx, ...`),
    /// finished (bias, folded ReLU).
    #[inline(always)]
    fn interleave<'s>(&self, row: &mut [f32], sx: usize, phase: impl Fn(usize) -> &'s [f32]) {
        if sx == 2 {
            let (even, odd, half) = (phase(0), phase(1), row.len() / 2);
            let mut pairs = row.chunks_exact_mut(2);
            for (pair, (e, o)) in (&mut pairs).zip(even.iter().zip(odd)) {
                pair[0] = self.finish(*e);
                pair[1] = self.finish(*o);
            }
            if let [last] = pairs.into_remainder() {
                *last = self.finish(even[half]);
            }
        } else {
            for (ox, v) in row.iter_mut().enumerate() {
                *v = self.finish(phase(ox % sx)[ox / sx]);
            }
        }
    }
}

/// Rows of output phase `a` (outputs `a, a + s, ...` below `out`).
fn phase_len(out: usize, s: usize, a: usize) -> usize {
    out.saturating_sub(a).div_ceil(s)
}

/// Where kernel tap `k` lands along one axis: output `(input + shift) * s + phase`.
fn tap(k: usize, pad: usize, s: usize) -> (usize, isize) {
    let t = k as isize - pad as isize;
    (t.rem_euclid(s as isize) as usize, t.div_euclid(s as isize))
}

impl OverlapAdd {
    fn rows(&self) -> usize {
        self.channels * self.kernel[0] * self.kernel[1]
    }

    /// One output plane (`OH x OW`), row by row: each output row gathers the input rows that
    /// land on it into `scratch`, split by column phase (`ox % sx`) so that every add is a
    /// contiguous slice, then interleaves the phases into the row.
    #[inline(always)]
    fn plane<T: Acc>(&self, p: &Plane<T>, out: &mut [f32], scratch: &mut [f32]) {
        let [kh, kw] = self.kernel;
        let [sy, sx] = self.stride;
        let [py, px] = self.pad;
        let [h, w] = self.input;
        let [oh, ow] = self.output;
        let len = ow.div_ceil(sx); // columns per phase slot
        for (oy, row) in out.chunks_exact_mut(ow).enumerate() {
            scratch.iter_mut().for_each(|v| *v = 0.0);
            for ky in 0..kh {
                let t = oy + py;
                if t < ky || (t - ky) % sy != 0 || (t - ky) / sy >= h {
                    continue;
                }
                let iy = (t - ky) / sy;
                for kx in 0..kw {
                    let r = ky * kw + kx;
                    let src = &p.cols[r * h * w + iy * w..][..w];
                    let base = kx as isize - px as isize;
                    let (phase, shift) = (base.rem_euclid(sx as isize) as usize, base.div_euclid(sx as isize));
                    // Output columns of this phase: ox = j * sx + phase < ow.
                    let n = (ow - phase.min(ow)).div_ceil(sx) as isize;
                    let (i0, i1) = ((-shift).max(0), (w as isize).min(n - shift));
                    if i0 >= i1 {
                        continue;
                    }
                    let dst = &mut scratch[phase * len..][(i0 + shift) as usize..(i1 + shift) as usize];
                    let (f, o) = (p.factor[r], p.offset[r]);
                    for (d, s) in dst.iter_mut().zip(&src[i0 as usize..i1 as usize]) {
                        *d += s.f32() * f + o;
                    }
                }
            }
            p.interleave(row, sx, |b| &scratch[b * len..][..len]);
        }
        debug_assert_eq!(out.len(), oh * ow);
    }

    /// Whether [`Self::plane_blocks`] handles this geometry: no output phase wider than an input
    /// row, no column shift as long as a row.
    fn blocks_fit(&self) -> bool {
        let ([_, kw], [_, sx], [_, w], [_, ow]) = (self.kernel, self.stride, self.input, self.output);
        (0..sx).all(|b| phase_len(ow, sx, b) <= w) && (0..kw).all(|kx| tap(kx, self.pad[1], sx).1.unsigned_abs() < w)
    }

    /// Scratch for [`Self::plane_blocks`]: every output phase as rows of `w` with a spare row
    /// above and below, then room for the values a shifted block add must not touch.
    fn blocks_scratch(&self) -> usize {
        let ([sy, sx], [h, w]) = (self.stride, self.input);
        sy * sx * (phase_len(self.output[0], sy, 0) + 2) * w + h * w
    }

    /// One output plane, as [`Self::plane`] computes it, with one add per kernel tap over the
    /// whole input plane: output phase `(oy % sy, ox % sx)` is kept as rows of the input's width,
    /// so a tap's input rows land on consecutive phase rows and the add is one contiguous slice
    /// (the decoder's first stages have 14- and 28-pixel rows, too short to vectorise row by
    /// row). A tap shifted by `dx` columns pushes `|dx|` values per row into the neighbouring
    /// row; those slots are saved before the add and restored after it. Then the phases are
    /// interleaved into the plane.
    #[inline(always)]
    fn plane_blocks<T: Acc>(&self, p: &Plane<T>, out: &mut [f32], scratch: &mut [f32]) {
        let ([kh, kw], [sy, sx], [py, px]) = (self.kernel, self.stride, self.pad);
        let ([h, w], [oh, ow]) = (self.input, self.output);
        let per_phase = (phase_len(oh, sy, 0) + 2) * w;
        let (phases, save) = scratch.split_at_mut(sy * sx * per_phase);
        phases.iter_mut().for_each(|v| *v = 0.0);
        let wi = w as isize;
        for ky in 0..kh {
            let (a, dy) = tap(ky, py, sy);
            let (iy0, iy1) = ((-dy).max(0), (h as isize).min(phase_len(oh, sy, a) as isize - dy));
            if iy0 >= iy1 {
                continue;
            }
            for kx in 0..kw {
                let (b, dx) = tap(kx, px, sx);
                let r = ky * kw + kx;
                let buf = &mut phases[(a * sx + b) * per_phase..][..per_phase];
                let src = &p.cols[r * h * w..][iy0 as usize * w..iy1 as usize * w];
                // Phase row of input row iy: iy + dy, after the spare row.
                let wraps = |iy: isize| {
                    let row = (iy + dy + 1) * wi;
                    if dx > 0 {
                        row + wi..row + wi + dx
                    } else {
                        row + dx..row
                    }
                };
                let mut n = 0;
                for iy in iy0..iy1 {
                    for k in wraps(iy) {
                        save[n] = buf[k as usize];
                        n += 1;
                    }
                }
                let start = ((iy0 + dy + 1) * wi + dx) as usize;
                let (f, o) = (p.factor[r], p.offset[r]);
                for (d, s) in buf[start..start + src.len()].iter_mut().zip(src) {
                    *d += s.f32() * f + o;
                }
                n = 0;
                for iy in iy0..iy1 {
                    for k in wraps(iy) {
                        buf[k as usize] = save[n];
                        n += 1;
                    }
                }
            }
        }
        for (oy, row) in out.chunks_exact_mut(ow).enumerate() {
            let phases = &*phases;
            p.interleave(row, sx, |b| &phases[((oy % sy) * sx + b) * per_phase + (oy / sy + 1) * w..][..w]);
        }
    }

    fn run<T: Planes + Datum>(&self, inputs: &[TValue], factor: &[f32], offset: &[f32]) -> TractResult<Tensor> {
        let cols = inputs[0].try_as_plain_ram()?;
        let cols = cols.as_slice::<T>()?;
        let bias = inputs[1].try_as_plain_ram()?;
        let bias = bias.as_slice::<f32>()?;
        let batch = inputs[0].shape()[0];
        let [oh, ow] = self.output;
        let per_channel = self.kernel[0] * self.kernel[1] * self.input[0] * self.input[1];
        let mut out = unsafe { Tensor::uninitialized::<f32>(&[batch, self.channels, oh, ow])? };
        {
            let mut o = out.try_as_plain_ram_mut()?;
            let o = o.as_slice_mut::<f32>()?;
            let blocks = self.blocks_fit();
            SCRATCH.with_borrow_mut(|scratch| {
                let len = if blocks { self.blocks_scratch() } else { self.stride[1] * ow.div_ceil(self.stride[1]) };
                scratch.resize(len, 0.0);
                for (i, plane) in o.chunks_exact_mut(oh * ow).enumerate() {
                    let c = i % self.channels;
                    let rows = c * self.kernel[0] * self.kernel[1]..(c + 1) * self.kernel[0] * self.kernel[1];
                    let p = Plane {
                        cols: &cols[i * per_channel..][..per_channel],
                        factor: &factor[rows.clone()],
                        offset: &offset[rows],
                        bias: bias[if bias.len() == 1 { 0 } else { c }],
                        low: if self.relu { 0.0 } else { f32::NEG_INFINITY },
                    };
                    T::planes(self, &p, plane, scratch, blocks);
                }
            });
        }
        Ok(out)
    }
}

thread_local! {
    /// One output row's phase slots, sized once per thread.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The plane loop compiled per vector width (`simd::multiversion!`), per column type.
/// (`blocks`: [`OverlapAdd::plane_blocks`], else [`OverlapAdd::plane`].)
trait Planes: Acc + Sized {
    fn planes(op: &OverlapAdd, p: &Plane<Self>, out: &mut [f32], scratch: &mut [f32], blocks: bool);
}

crate::simd::multiversion! {
    fn planes_f32(op: &OverlapAdd, p: &Plane<f32>, out: &mut [f32], scratch: &mut [f32], blocks: bool) {
        if blocks { op.plane_blocks(p, out, scratch) } else { op.plane(p, out, scratch) }
    }
}

crate::simd::multiversion! {
    fn planes_i32(op: &OverlapAdd, p: &Plane<i32>, out: &mut [f32], scratch: &mut [f32], blocks: bool) {
        if blocks { op.plane_blocks(p, out, scratch) } else { op.plane(p, out, scratch) }
    }
}

impl Planes for f32 {
    fn planes(op: &OverlapAdd, p: &Plane<f32>, out: &mut [f32], scratch: &mut [f32], blocks: bool) {
        planes_f32(op, p, out, scratch, blocks)
    }
}

impl Planes for i32 {
    fn planes(op: &OverlapAdd, p: &Plane<i32>, out: &mut [f32], scratch: &mut [f32], blocks: bool) {
        planes_i32(op, p, out, scratch, blocks)
    }
}

impl Op for OverlapAdd {
    fn name(&self) -> StaticName {
        "OverlapAdd".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "channels {} kernel {:?} stride {:?} pad {:?} {:?} -> {:?}{}",
            self.channels,
            self.kernel,
            self.stride,
            self.pad,
            self.input,
            self.output,
            if self.quantized { " (i32 columns)" } else { "" }
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for OverlapAdd {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let m = self.rows();
        let out = if self.quantized {
            let (step, zero_point) = range_of(&inputs[2])?;
            let w_step = inputs[3].try_as_plain_ram()?;
            let w_sum = inputs[4].try_as_plain_ram()?;
            let (w_step, w_sum) = (w_step.as_slice::<f32>()?, w_sum.as_slice::<i32>()?);
            ensure!(w_step.len() == m && w_sum.len() == m, "OverlapAdd: {m} rows expected");
            FACTORS.with_borrow_mut(|(factor, offset)| {
                factor.clear();
                offset.clear();
                for (s, sum) in w_step.iter().zip(w_sum) {
                    let f = step * s;
                    factor.push(f);
                    offset.push(-(f32::from(zero_point) * *sum as f32) * f);
                }
                self.run::<i32>(&inputs, factor, offset)
            })?
        } else {
            FACTORS.with_borrow_mut(|(factor, offset)| {
                factor.resize(m, 1.0);
                offset.resize(m, 0.0);
                factor.iter_mut().for_each(|f| *f = 1.0);
                offset.iter_mut().for_each(|o| *o = 0.0);
                self.run::<f32>(&inputs, factor, offset)
            })?
        };
        Ok(tvec!(out.into_tvalue()))
    }
}

thread_local! {
    /// Per-row factors and offsets, sized once per thread.
    static FACTORS: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

impl TypedOp for OverlapAdd {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (dt, n_inputs) = if self.quantized { (i32::datum_type(), 5) } else { (f32::datum_type(), 2) };
        ensure!(inputs.len() == n_inputs, "OverlapAdd takes {n_inputs} inputs");
        let cols = &inputs[0];
        ensure!(cols.datum_type == dt && cols.rank() == 3, "OverlapAdd: columns must be {dt:?} (N, rows, pixels)");
        ensure!(
            cols.shape[1] == self.rows().to_dim() && cols.shape[2] == (self.input[0] * self.input[1]).to_dim(),
            "OverlapAdd: columns {:?} do not match {self:?}",
            cols.shape
        );
        Ok(tvec!(f32::fact([
            cols.shape[0].clone(),
            self.channels.into(),
            self.output[0].into(),
            self.output[1].into()
        ])))
    }

    as_op!();
}

/// The geometry of a `Deconv` this module handles: NCHW, 2-D, one group, no dilation, OIHW
/// constant kernel, explicit padding, concrete shapes. Returns the op and the kernel.
fn plan_for(model: &TypedModel, node: &TypedNode) -> Option<(OverlapAdd, Arc<Tensor>, Arc<Tensor>)> {
    let op = node.op_as::<Deconv>()?;
    let ps = &op.pool_spec;
    if ps.data_format != DataFormat::NCHW || ps.rank() != 2 || op.group != 1 || op.kernel_format != KernelFormat::OIHW {
        return None;
    }
    if ps.dilations().iter().any(|d| *d != 1) {
        return None;
    }
    let pad = match &ps.padding {
        PaddingSpec::Explicit(b, _) => [b[0], b[1]],
        PaddingSpec::Valid => [0, 0],
        _ => return None,
    };
    let kernel = model.outlet_fact(node.inputs[1]).ok()?.konst.clone()?;
    let bias = model.outlet_fact(node.inputs[2]).ok()?.konst.clone()?;
    let x = model.outlet_fact(node.inputs[0]).ok()?.shape.as_concrete()?.to_vec();
    let y = model.outlet_fact(node.id.into()).ok()?.shape.as_concrete()?.to_vec();
    let (c, k) = (ps.output_channels, &ps.kernel_shape);
    let ok = kernel.datum_type() == f32::datum_type()
        && kernel.shape() == [c, ps.input_channels, k[0], k[1]]
        && bias.datum_type() == f32::datum_type()
        && (bias.len() == 1 || bias.len() == c)
        && x.len() == 4
        && y.len() == 4
        && y[1] == c;
    let s = ps.strides();
    ok.then(|| {
        let op = OverlapAdd {
            channels: c,
            kernel: [k[0], k[1]],
            stride: [s[0], s[1]],
            pad,
            input: [x[2], x[3]],
            output: [y[2], y[3]],
            quantized: false,
            relu: false,
        };
        (op, kernel, bias)
    })
}

/// The kernel `(C, I, kh, kw)` as the product's `(C * kh * kw, I)` matrix.
fn matrix(kernel: &Tensor) -> TractResult<(Vec<f32>, usize, usize)> {
    let &[c, i, kh, kw] = kernel.shape() else { bail!("kernel rank") };
    let k = kernel.try_as_plain_ram()?;
    let k = k.as_slice::<f32>()?;
    let m = c * kh * kw;
    let mut a = vec![0f32; m * i];
    for (idx, v) in k.iter().enumerate() {
        let (co, rest) = (idx / (i * kh * kw), idx % (i * kh * kw));
        let (ci, tap) = (rest / (kh * kw), rest % (kh * kw));
        a[(co * kh * kw + tap) * i + ci] = *v;
    }
    Ok((a, m, i))
}

/// Each row of `a` (`m x k`) quantised symmetric to i8: values, steps, row sums.
fn quantize_rows(a: &[f32], k: usize) -> (Vec<i8>, Vec<f32>, Vec<i32>) {
    let mut q = Vec::with_capacity(a.len());
    let (mut steps, mut sums) = (vec![], vec![]);
    for row in a.chunks_exact(k) {
        let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let step = if max > 0.0 { max / 127.0 } else { 1.0 };
        let start = q.len();
        q.extend(row.iter().map(|v| (v / step).round().clamp(-127.0, 127.0) as i8));
        steps.push(step);
        sums.push(q[start..].iter().map(|v| i32::from(*v)).sum());
    }
    (q, steps, sums)
}

/// The shortest inner dimension (input channels) an int8 model's transposed convolution is
/// quantised at. Below it tract's integer product gains less than quantising the activations and
/// packing them costs: the demo decoder's last stage (32 channels in) took 1.17 ms in integers
/// against 1.00 ms in f32 (`anovit bench --profile`), while the stages with 64-192 channels in
/// gain 0.4-0.8 ms each.
pub const INT8_MIN_INNER: usize = 64;

/// Rewrites every `Deconv` of the handled form (see `plan_for`) into a product and an
/// [`OverlapAdd`]: f32, or, with `int8_from: Some(k)`, an integer product on dynamically quantised
/// activations wherever the product's inner dimension is `k` or more. Returns how many were
/// rewritten; none under `ANOVIT_TRACT_OPS` ([`crate::model::tract_ops_only`]).
pub fn rewrite(model: &mut TypedModel, int8_from: Option<usize>) -> TractResult<usize> {
    if crate::model::tract_ops_only() {
        return Ok(0);
    }
    let found: Vec<_> =
        model.nodes.iter().filter_map(|n| plan_for(model, n).map(|(op, k, b)| (n.id, op, k, b))).collect();
    for (id, op, kernel, bias) in &found {
        let mut op = op.clone();
        let node = model.node(*id).clone();
        let name = &node.name;
        let (a, m, k) = matrix(kernel)?;
        let [h, w] = op.input;
        let mut patch = TypedModelPatch::new(format!("overlap-add {name}"));
        let x = patch.tap_model(model, node.inputs[0])?;
        let flat = AxisOp::Reshape(2, tvec![h.to_dim(), w.to_dim()], tvec![(h * w).to_dim()]);
        let bias = patch.add_const(format!("{name}.bias"), bias.clone().into_tensor().into_shape(&[bias.len()])?)?;
        let y = if int8_from.is_some_and(|min| k >= min) {
            op.quantized = true;
            let (q, steps, sums) = quantize_rows(&a, k);
            let range = patch.wire_node(format!("{name}.range"), DynamicRange, &[x])?[0];
            let xq = patch.wire_node(format!("{name}.quantize"), QuantizeDynamic, &[x, range])?[0];
            let xq = patch.wire_node(format!("{name}.flat"), flat, &[xq])?[0];
            let wq = patch.add_const(format!("{name}.kernel_i8"), tensor1(&q).into_shape(&[m, k])?)?;
            let zero = patch.add_const(format!("{name}.zero"), tensor0(0i32))?;
            let one = patch.add_const(format!("{name}.one"), tensor0(1f32))?;
            let axes: AxesMapping = "mk,Nkn,,,,,,,->Nmn".parse()?;
            let q = EinSum::newq(axes, i32::datum_type(), i32::datum_type());
            let acc =
                patch.wire_node(format!("{name}.product"), q, &[wq, xq, zero, zero, one, zero, one, zero, one])?[0];
            let steps = patch.add_const(format!("{name}.kernel_steps"), tensor1(&steps))?;
            let sums = patch.add_const(format!("{name}.kernel_sums"), tensor1(&sums))?;
            patch.wire_node(name, op.clone(), &[acc, bias, range, steps, sums])?[0]
        } else {
            let xf = patch.wire_node(format!("{name}.flat"), flat, &[x])?[0];
            let wf = patch.add_const(format!("{name}.kernel_matrix"), tensor1(&a).into_shape(&[m, k])?)?;
            let e = EinSum { axes: "mk,Nkn->Nmn".parse()?, operating_dt: f32::datum_type(), q_params: None };
            let cols = patch.wire_node(format!("{name}.product"), e, &[wf, xf])?[0];
            patch.wire_node(name, op.clone(), &[cols, bias])?[0]
        };
        patch.shunt_outside(model, node.id.into(), y)?;
        patch.apply(model)?;
    }
    Ok(found.len())
}

/// `anovit_overlap_add` and `anovit_overlap_add_q` in the NNEF registry.
pub fn register(reg: &mut nnef::Registry) {
    use nnef::TypeName;
    reg.register_dumper(|ast, node, op: &OverlapAdd| {
        ensure!(!op.relu, "OverlapAdd with a folded ReLU is a load-time fusion and has no NNEF form");
        let inputs: Vec<_> = node.inputs.iter().map(|i| ast.mapping[i].clone()).collect();
        let id = if op.quantized { "anovit_overlap_add_q" } else { "anovit_overlap_add" };
        Ok(Some(nnef::invocation(
            id,
            &inputs,
            &[
                ("channels", nnef::numeric(op.channels)),
                ("kernel", tract_nnef::ser::ints(&op.kernel)),
                ("stride", tract_nnef::ser::ints(&op.stride)),
                ("padding", tract_nnef::ser::ints(&op.pad)),
                ("input_size", tract_nnef::ser::ints(&op.input)),
                ("output_size", tract_nnef::ser::ints(&op.output)),
            ],
        )))
    });
    let geometry = [
        TypeName::Integer.named("channels"),
        TypeName::Integer.array().named("kernel"),
        TypeName::Integer.array().named("stride"),
        TypeName::Integer.array().named("padding"),
        TypeName::Integer.array().named("input_size"),
        TypeName::Integer.array().named("output_size"),
    ];
    for quantized in [false, true] {
        let mut params = vec![TypeName::Scalar.tensor().named("columns"), TypeName::Scalar.tensor().named("bias")];
        if quantized {
            params.push(TypeName::Scalar.tensor().named("range"));
            params.push(TypeName::Scalar.tensor().named("kernel_steps"));
            params.push(TypeName::Integer.tensor().named("kernel_sums"));
        }
        params.extend(geometry.iter().cloned());
        let id = if quantized { "anovit_overlap_add_q" } else { "anovit_overlap_add" };
        let de: nnef::ToTract =
            if quantized { |b, i| de_overlap_add(b, i, true) } else { |b, i| de_overlap_add(b, i, false) };
        reg.register_primitive(id, &params, &[("output", TypeName::Scalar.tensor())], de);
    }
}

fn de_overlap_add(
    builder: &mut nnef::ModelBuilder,
    invocation: &nnef::ResolvedInvocation,
    quantized: bool,
) -> TractResult<nnef::Value> {
    let mut pair = |name: &str| -> TractResult<[usize; 2]> {
        let v: TVec<usize> = invocation.named_arg_as(builder, name)?;
        let &[a, b] = &v[..] else { bail!("anovit_overlap_add: {name} must have two values, got {v:?}") };
        Ok([a, b])
    };
    let (kernel, stride, pad, input, output) =
        (pair("kernel")?, pair("stride")?, pair("padding")?, pair("input_size")?, pair("output_size")?);
    let channels = invocation.named_arg_as::<i64>(builder, "channels")? as usize;
    let op = OverlapAdd { channels, kernel, stride, pad, input, output, quantized, relu: false };
    let names: &[&str] =
        if quantized { &["columns", "bias", "range", "kernel_steps", "kernel_sums"] } else { &["columns", "bias"] };
    let inputs: TVec<OutletId> =
        names.iter().map(|n| invocation.named_arg_as(builder, n)).collect::<TractResult<_>>()?;
    builder.wire(op, &inputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_core::ops::cnn::PoolSpec;

    /// Pseudo-random values in [-1, 1), reproducible.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    struct Case {
        batch: usize,
        ci: usize,
        co: usize,
        hw: [usize; 2],
        k: [usize; 2],
        s: [usize; 2],
        pad: ([usize; 2], [usize; 2]),
        adj: [usize; 2],
        bias: bool,
    }

    /// tract's own `Deconv` on (x, kernel, bias), and the input it runs on.
    fn deconv_model(c: &Case, seed: u64) -> (TypedModel, Tensor) {
        let kernel =
            tensor1(&values(c.co * c.ci * c.k[0] * c.k[1], seed)).into_shape(&[c.co, c.ci, c.k[0], c.k[1]]).unwrap();
        let bias = if c.bias { tensor1(&values(c.co, seed + 1)) } else { tensor0(0f32) };
        let padding = PaddingSpec::Explicit(c.pad.0[..].into(), c.pad.1[..].into());
        let spec = PoolSpec::new(DataFormat::NCHW, c.k[..].into(), padding, None, Some(c.s[..].into()), c.ci, c.co);
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([c.batch, c.ci, c.hw[0], c.hw[1]])).unwrap();
        let k = model.add_const("kernel", kernel).unwrap();
        let b = model.add_const("bias", bias).unwrap();
        let op = Deconv::new(spec, KernelFormat::OIHW, c.adj[..].into(), 1);
        let y = model.wire_node("deconv", op, &[x, k, b]).unwrap();
        model.select_output_outlets(&y).unwrap();
        // Like a decoder's input after a ReLU: mostly non-negative, some exact zeros.
        let xs: Vec<f32> = values(c.batch * c.ci * c.hw[0] * c.hw[1], seed + 2).iter().map(|v| v.max(-0.2)).collect();
        (model, tensor1(&xs).into_shape(&[c.batch, c.ci, c.hw[0], c.hw[1]]).unwrap())
    }

    fn run(model: TypedModel, x: &Tensor) -> Vec<f32> {
        let out = model.into_optimized().unwrap().into_runnable().unwrap().run(tvec!(x.clone().into())).unwrap();
        out[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec()
    }

    fn cases() -> Vec<Case> {
        let c = |batch, ci, co, hw, k, s, pad, adj, bias| Case { batch, ci, co, hw, k, s, pad, adj, bias };
        vec![
            // The decoder's stages: kernel 4, stride 2, padding 1.
            c(1, 16, 8, [7, 7], [4, 4], [2, 2], ([1, 1], [1, 1]), [0, 0], true),
            c(2, 5, 3, [6, 9], [4, 4], [2, 2], ([1, 1], [1, 1]), [0, 0], false),
            // Taps that never overlap, stride 3, uneven kernel and padding, output adjustment.
            c(1, 4, 6, [5, 5], [2, 2], [2, 2], ([0, 0], [0, 0]), [0, 0], true),
            c(1, 3, 2, [4, 6], [3, 5], [3, 2], ([2, 0], [1, 3]), [1, 1], true),
            c(1, 6, 4, [5, 4], [3, 3], [1, 1], ([1, 1], [1, 1]), [0, 0], true),
        ]
    }

    /// tract's `Deconv` and our rewrite of it (f32 or int8) on the same input: (tract's output,
    /// ours, the input).
    fn tract_and_ours(case: &Case, seed: u64, int8: bool) -> (Vec<f32>, Vec<f32>, Tensor) {
        let (model, x) = deconv_model(case, seed);
        let want = run(model.clone(), &x);
        let mut ours = model.into_decluttered().unwrap();
        assert_eq!(rewrite(&mut ours, int8.then_some(1)).unwrap(), 1);
        assert!(ours.nodes.iter().any(|n| n.op_is::<OverlapAdd>()) && !ours.nodes.iter().any(|n| n.op_is::<Deconv>()));
        (want, run(ours, &x), x)
    }

    #[test]
    fn the_cases_take_both_plane_paths() {
        // Whole-plane block adds where every output phase fits an input row's width; the
        // row-by-row path for the stride-3 case, whose phase 0 is 7 columns from 6.
        let fits: Vec<bool> = cases()
            .iter()
            .map(|c| {
                let (model, _) = deconv_model(c, 1);
                let node = model.nodes.iter().find(|n| n.op_is::<Deconv>()).unwrap();
                plan_for(&model, node).unwrap().0.blocks_fit()
            })
            .collect();
        assert_eq!(fits, [true, true, true, false, true]);
    }

    #[test]
    fn f32_overlap_add_equals_tracts_deconv() {
        for (i, case) in cases().iter().enumerate() {
            let (want, got, _) = tract_and_ours(case, 10 + i as u64, false);
            assert_eq!(got.len(), want.len(), "case {i}");
            for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "case {i} [{j}]: {g} vs {w}");
            }
        }
    }

    /// The int8 decoder against f32, element by element, within the worst case of its two
    /// roundings: `sum_k |w_k| dx / 2 + |x_k| dw / 2` over the taps that reach the pixel, with
    /// `dx` the activations' step and `dw` the row's weight step (bounded by the largest).
    #[test]
    fn int8_overlap_add_is_within_the_quantisation_bound_of_f32() {
        for (i, case) in cases().iter().enumerate() {
            let (want, got, x) = tract_and_ours(case, 20 + i as u64, true);
            let xs = x.try_as_plain_ram().unwrap();
            let (dx, _) = crate::quant::dynamic_range(xs.as_slice::<f32>().unwrap());
            let kernel = values(case.co * case.ci * case.k[0] * case.k[1], 20 + i as u64);
            let wmax = kernel.iter().fold(0f32, |m, v| m.max(v.abs()));
            let xmax = xs.as_slice::<f32>().unwrap().iter().fold(0f32, |m, v| m.max(v.abs()));
            // Every output pixel receives at most ceil(k/s) taps per axis, each summing ci terms.
            let taps = case.k[0].div_ceil(case.s[0]) * case.k[1].div_ceil(case.s[1]) * case.ci;
            let bound = taps as f32 * (wmax * dx / 2.0 + xmax * (wmax / 127.0) / 2.0) + 1e-5;
            let mut worst = 0f32;
            for (g, w) in got.iter().zip(&want) {
                worst = worst.max((g - w).abs());
            }
            assert!(worst <= bound, "case {i}: largest error {worst} over the bound {bound}");
        }
    }

    /// The int8 path computes exactly `bias + sum step * w_step[r] * (q(x) - z) * wq[r, i]` over
    /// the taps reaching each pixel (naive loops in f64 here), so a wrong scale, zero point or
    /// tap fails even where it would hide inside the quantisation bound.
    #[test]
    fn int8_overlap_add_equals_the_exact_integer_formula() {
        for (i, c) in cases().iter().enumerate() {
            let seed = 30 + i as u64;
            let (_, got, x) = tract_and_ours(c, seed, true);
            let xs = x.try_as_plain_ram().unwrap();
            let xs = xs.as_slice::<f32>().unwrap();
            let (step, z) = crate::quant::dynamic_range(xs);
            let mut qx = vec![0i8; xs.len()];
            crate::quant::quantize_i8(xs, &mut qx, 1.0 / step, z);
            let kernel = tensor1(&values(c.co * c.ci * c.k[0] * c.k[1], seed))
                .into_shape(&[c.co, c.ci, c.k[0], c.k[1]])
                .unwrap();
            let (a, _, k) = matrix(&kernel).unwrap();
            let (wq, w_step, _) = quantize_rows(&a, k);
            let bias = if c.bias { values(c.co, seed + 1) } else { vec![0.0; c.co] };
            let [h, w] = c.hw;
            let oh = (h - 1) * c.s[0] + c.k[0] + c.adj[0] - c.pad.0[0] - c.pad.1[0];
            let ow = (w - 1) * c.s[1] + c.k[1] + c.adj[1] - c.pad.0[1] - c.pad.1[1];
            let mut want = vec![0f64; c.batch * c.co * oh * ow];
            for n in 0..c.batch {
                for co in 0..c.co {
                    let plane = &mut want[(n * c.co + co) * oh * ow..][..oh * ow];
                    plane.iter_mut().for_each(|v| *v = f64::from(bias[co]));
                    for (iy, ix, ky, kx) in itertools_product(h, w, c.k[0], c.k[1]) {
                        let (oy, ox) = (
                            (iy * c.s[0] + ky) as isize - c.pad.0[0] as isize,
                            (ix * c.s[1] + kx) as isize - c.pad.0[1] as isize,
                        );
                        if oy < 0 || ox < 0 || oy as usize >= oh || ox as usize >= ow {
                            continue;
                        }
                        let r = (co * c.k[0] + ky) * c.k[1] + kx;
                        let acc: i64 = (0..c.ci)
                            .map(|ci| {
                                let q = i64::from(qx[((n * c.ci + ci) * h + iy) * w + ix]) - i64::from(z);
                                q * i64::from(wq[r * k + ci])
                            })
                            .sum();
                        plane[oy as usize * ow + ox as usize] += f64::from(step) * f64::from(w_step[r]) * acc as f64;
                    }
                }
            }
            for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((f64::from(*g) - w).abs() <= 1e-5 * (1.0 + w.abs()), "case {i} [{j}]: {g} vs {w}");
            }
        }
    }

    fn itertools_product(a: usize, b: usize, c: usize, d: usize) -> impl Iterator<Item = (usize, usize, usize, usize)> {
        (0..a).flat_map(move |i| (0..b).flat_map(move |j| (0..c).flat_map(move |k| (0..d).map(move |l| (i, j, k, l)))))
    }

    #[test]
    fn rewritten_deconvs_round_trip_through_nnef() {
        let case = &cases()[3];
        for int8 in [false, true] {
            let (model, x) = deconv_model(case, 7);
            let mut ours = model.into_decluttered().unwrap();
            rewrite(&mut ours, int8.then_some(1)).unwrap();
            let nnef = crate::model::nnef();
            let mut buf = vec![];
            nnef.write_to_tar(&ours, &mut buf).unwrap();
            let back = nnef.model_for_read(&mut &buf[..]).unwrap();
            let op = back.nodes.iter().find_map(|n| n.op_as::<OverlapAdd>()).expect("an OverlapAdd in the plan");
            assert_eq!(op.quantized, int8);
            assert_eq!(run(back, &x), run(ours, &x), "int8 {int8}");
        }
    }

    #[test]
    fn int8_overlap_add_propagates_nan() {
        let case = &cases()[0];
        let (model, x) = deconv_model(case, 5);
        let mut ours = model.into_decluttered().unwrap();
        rewrite(&mut ours, Some(1)).unwrap();
        let mut x = x;
        x.try_as_plain_ram_mut().unwrap().as_slice_mut::<f32>().unwrap()[17] = f32::NAN;
        assert!(run(ours, &x).iter().all(|v| v.is_nan()));
    }

    /// The decoder's stage with its ReLU, the ReLU folded in at load (`src/fuse.rs`).
    #[test]
    fn a_folded_relu_equals_the_relu_after_it_and_keeps_nan() {
        for int8 in [false, true] {
            let (model, x) = deconv_model(&cases()[0], 9);
            let mut with_relu = model.clone();
            let y = with_relu.output_outlets().unwrap()[0];
            let zero = with_relu.add_const("zero", tensor0(0f32).broadcast_into_rank(4).unwrap()).unwrap();
            let r = with_relu.wire_node("relu", tract_core::ops::math::max(), &[y, zero]).unwrap();
            with_relu.select_output_outlets(&r).unwrap();
            let want = run(with_relu.clone(), &x);
            let mut ours = with_relu.into_decluttered().unwrap();
            rewrite(&mut ours, int8.then_some(1)).unwrap();
            let fused = crate::fuse::rewrite(&mut ours).unwrap();
            assert_eq!(fused.folded, 1);
            assert!(ours.nodes.iter().any(|n| n.op_as::<OverlapAdd>().is_some_and(|op| op.relu)));
            let got = run(ours.clone(), &x);
            assert!(want.contains(&0.0) && want.iter().any(|v| *v > 0.0));
            let tol = if int8 { 0.05 } else { 1e-5 };
            for (g, w) in got.iter().zip(&want) {
                assert!(*g >= 0.0 && (g - w).abs() <= tol * (1.0 + w.abs()), "{g} vs {w}");
            }
            let mut bad = x.clone();
            bad.try_as_plain_ram_mut().unwrap().as_slice_mut::<f32>().unwrap()[3] = f32::NAN;
            let out = run(ours, &bad);
            assert!(out.iter().any(|v| v.is_nan()), "int8 {int8}: a NaN input is not hidden by the ReLU");
        }
    }

    #[test]
    fn dynamic_range_covers_zero_and_uses_all_eight_bits_after_a_relu() {
        use crate::quant::dynamic_range;
        let (step, zp) = dynamic_range(&[0.0, 0.5, 2.55, 1.0]);
        assert!((step - 0.01).abs() < 1e-7 && zp == -128, "{step} {zp}");
        let (step, zp) = dynamic_range(&[-1.0, 1.55]);
        assert!((step - 0.01).abs() < 1e-7 && zp == -28, "{step} {zp}");
        assert_eq!(dynamic_range(&[0.0; 40]), (1.0, 0));
        let xs: Vec<f32> = (0..40).map(|i| if i == 33 { f32::INFINITY } else { i as f32 }).collect();
        assert!(dynamic_range(&xs).0.is_nan());
    }
}
