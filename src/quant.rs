//! int8 plans in tract's own integer arithmetic.
//!
//! The int8 bundle is onnxruntime's QOperator form: each weight MatMul is QuantizeLinear (u8
//! activations) -> QLinearMatMul (per-channel i8 weights, requantised u8 output) ->
//! DequantizeLinear. tract 0.23.9 imports it as a nine-input quantised `EinSum` whose lowering
//! keeps the per-channel requantisation as a chain of generic broadcasting ops (Scale, Add, Min,
//! Max, Cast) around the integer kernel, and quantises activations one scalar at a time: that plan
//! ran slower than f32. [`rewrite_int8`] turns each such product into what tract fuses:
//!
//! - the activations quantised straight to i8 by [`QuantizeI8`] (vectorised; zero point - 128, so
//!   tract needs no u8 -> i8 offset pass);
//! - an `EinSum` with scalar parameters and an i32 output: one integer `OptMatMul` with the
//!   constant zero-point correction folded in;
//! - a cast to f32 and one multiplication by the per-channel `a_scale * b_scale[n]`, which drops
//!   the requantisation to u8 and back (one rounding fewer than onnxruntime).
//!
//! The rewritten graph serialises to NNEF with tract-core's `tract_core_einsum_q` and this module's
//! [`registry`] (`anovit_quantize_i8`), so int8 plans load in the deploy build.

use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::cast::cast;
use tract_core::ops::einsum::EinSum;
use tract_core::ops::element_wise::{ElementWiseMiniOp, ElementWiseOp};
use tract_core::ops::quant::{DequantizeLinearF32, QuantizeLinearU8};
use tract_nnef::internal as nnef;

/// `y = clamp(round_ties_even(x * scale) + zero_point, -128, 127)` as i8: ONNX QuantizeLinear
/// with `scale` the reciprocal of ONNX's scale (as tract stores it).
#[derive(Debug, Clone)]
pub struct QuantizeI8 {
    /// Multiplier: 1 / ONNX's scale.
    pub scale: f32,
    /// ONNX's u8 zero point - 128.
    pub zero_point: i8,
}

impl PartialEq for QuantizeI8 {
    fn eq(&self, other: &Self) -> bool {
        self.scale.to_bits() == other.scale.to_bits() && self.zero_point == other.zero_point
    }
}

impl Eq for QuantizeI8 {}

/// Adding then subtracting 1.5 * 2^23 rounds an f32 of magnitude below 2^22 to the nearest
/// integer, ties to even, in plain arithmetic the compiler vectorises.
const ROUND_MAGIC: f32 = 12_582_912.0;

crate::simd::multiversion! {
    /// Quantises `xs` into `ys` (same length). The loop is plain arithmetic the compiler
    /// vectorises (`simd::multiversion!`: baseline SSE2 runs it at about 0.5 ns per element,
    /// AVX-512 at about 0.12).
    pub fn quantize_i8(xs: &[f32], ys: &mut [i8], scale: f32, zero_point: i8) {
        let zp = i32::from(zero_point);
        // Clamping before rounding gives the same result (the bounds are integers) and keeps the
        // value where the rounding trick and the unchecked conversion are exact.
        let (lo, hi) = ((-128 - zp) as f32, (127 - zp) as f32);
        for (x, y) in xs.iter().zip(ys.iter_mut()) {
            let v = x * scale;
            let v = if v < lo {
                lo
            } else if v > hi {
                hi
            } else {
                v
            };
            let r = (v + ROUND_MAGIC) - ROUND_MAGIC;
            // NaN (the only value the clamp lets through unbounded) maps to the zero point, as in
            // tract's own QuantizeLinear.
            let q = if r.is_nan() {
                0
            } else {
                // SAFETY: r is an integer in [-255, 255] here, representable in i32.
                unsafe { r.to_int_unchecked::<i32>() }
            };
            *y = (q + zp) as i8;
        }
    }
}

impl ElementWiseMiniOp for QuantizeI8 {
    fn name(&self) -> String {
        "QuantizeI8".into()
    }

    fn output_type(&self, input_type: DatumType) -> Option<DatumType> {
        (input_type == f32::datum_type()).then(i8::datum_type)
    }

    fn eval_out_of_place(&self, t: &Tensor, _out_dt: Option<DatumType>) -> TractResult<Tensor> {
        let xs = t.try_as_plain_ram()?;
        let xs = xs.as_slice::<f32>()?;
        let mut out = unsafe { Tensor::uninitialized_dt(i8::datum_type(), t.shape())? };
        {
            let mut ys = out.try_as_plain_ram_mut()?;
            quantize_i8(xs, ys.as_slice_mut::<i8>()?, self.scale, self.zero_point);
        }
        Ok(out)
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("scale: {} zero_point: {}", self.scale, self.zero_point)])
    }
}

crate::simd::multiversion! {
    /// `(min(xs, 0), max(xs, 0), nan)`: `nan` is NaN when some x is NaN or infinite. Sixteen
    /// lanes of running minima and maxima, so the compiler vectorises it.
    fn min_max(xs: &[f32]) -> (f32, f32, f32) {
        let (mut lo, mut hi, mut bad) = ([0f32; 16], [0f32; 16], [0f32; 16]);
        let chunks = xs.chunks_exact(16);
        let rest = chunks.remainder();
        for c in chunks {
            for i in 0..16 {
                lo[i] = if c[i] < lo[i] { c[i] } else { lo[i] };
                hi[i] = if c[i] > hi[i] { c[i] } else { hi[i] };
                bad[i] += c[i] * 0.0;
            }
        }
        for (i, x) in rest.iter().enumerate() {
            lo[i] = if *x < lo[i] { *x } else { lo[i] };
            hi[i] = if *x > hi[i] { *x } else { hi[i] };
            bad[i] += x * 0.0;
        }
        let lo = lo.iter().fold(0f32, |a, b| a.min(*b));
        let hi = hi.iter().fold(0f32, |a, b| a.max(*b));
        (lo, hi, bad.iter().sum())
    }
}

/// Per-tensor parameters of dynamic int8 quantisation: `(step, zero_point)` with
/// `x ~ step * (q - zero_point)`, `q` in i8, covering `[min(x, 0), max(x, 0)]` with 0 exact
/// (after a ReLU that is the whole 8 bits on `[0, max]`). A NaN or infinite value makes the step
/// NaN, so the product it feeds comes out NaN, as f32 arithmetic would, instead of a plausible
/// number.
pub fn dynamic_range(xs: &[f32]) -> (f32, i8) {
    let (lo, hi, bad) = min_max(xs);
    if bad.is_nan() {
        return (f32::NAN, 0);
    }
    let step = (hi - lo) / 255.0;
    if step <= 0.0 {
        return (1.0, 0); // all zeros
    }
    let zero_point = ((-lo / step).round() - 128.0).clamp(-128.0, 127.0) as i8;
    (step, zero_point)
}

/// `x` -> `[step, zero_point]` (f32) of [`dynamic_range`], computed per run: int8 products
/// whose activations have no calibrated range (the decoder's, `deconv.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DynamicRange;

impl Op for DynamicRange {
    fn name(&self) -> StaticName {
        "DynamicRange".into()
    }
    op_as_typed_op!();
}

impl EvalOp for DynamicRange {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = inputs[0].try_as_plain_ram()?;
        let (step, zero_point) = dynamic_range(x.as_slice::<f32>()?);
        Ok(tvec!(tensor1(&[step, f32::from(zero_point)]).into_tvalue()))
    }
}

impl TypedOp for DynamicRange {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type(), "DynamicRange takes f32");
        Ok(tvec!(f32::fact([2])))
    }
    as_op!();
}

/// `(x, [step, zero_point])` -> i8: quantises with a [`DynamicRange`]'s output.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QuantizeDynamic;

impl Op for QuantizeDynamic {
    fn name(&self) -> StaticName {
        "QuantizeDynamic".into()
    }
    op_as_typed_op!();
}

/// The `(step, zero_point)` a [`DynamicRange`] output holds.
pub fn range_of(t: &Tensor) -> TractResult<(f32, i8)> {
    let r = t.try_as_plain_ram()?;
    let &[step, zp] = r.as_slice::<f32>()? else { bail!("a dynamic range is [step, zero_point], got {t:?}") };
    Ok((step, zp as i8))
}

impl EvalOp for QuantizeDynamic {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (step, zero_point) = range_of(&inputs[1])?;
        let x = inputs[0].try_as_plain_ram()?;
        let mut out = unsafe { Tensor::uninitialized_dt(i8::datum_type(), inputs[0].shape())? };
        {
            let mut ys = out.try_as_plain_ram_mut()?;
            quantize_i8(x.as_slice::<f32>()?, ys.as_slice_mut::<i8>()?, 1.0 / step, zero_point);
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for QuantizeDynamic {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type(), "QuantizeDynamic takes f32");
        Ok(tvec!(i8::fact(inputs[0].shape.clone())))
    }
    as_op!();
}

/// NNEF operators of our plans beyond tract-core's: `anovit_quantize_i8(input, scale, zero_point)`,
/// `anovit_dynamic_range(input)`, `anovit_quantize_dynamic(input, range)` and the decoder's
/// overlap-add (`deconv::register`).
pub fn registry() -> nnef::Registry {
    use nnef::TypeName;
    let mut reg = nnef::Registry::new("anovit").with_doc("anovit: operators of int8 plans (src/quant.rs)");
    reg.register_element_wise(
        "anovit_quantize_i8",
        std::any::TypeId::of::<QuantizeI8>(),
        Box::new(|ast, node| {
            let op = node.op_as::<ElementWiseOp>().and_then(|e| e.0.downcast_ref::<QuantizeI8>());
            let op = op.context("anovit_quantize_i8 dumper called on another op")?;
            let input = ast.mapping[&node.inputs[0]].clone();
            Ok(Some(nnef::invocation(
                "anovit_quantize_i8",
                &[input],
                &[("scale", nnef::numeric(op.scale)), ("zero_point", nnef::numeric(op.zero_point))],
            )))
        }),
        vec![
            TypeName::Scalar.tensor().named("input"),
            TypeName::Scalar.named("scale"),
            TypeName::Integer.named("zero_point"),
        ],
        |builder, invocation| {
            let input = invocation.named_arg_as(builder, "input")?;
            let scale: f32 = invocation.named_arg_as(builder, "scale")?;
            let zero_point: i64 = invocation.named_arg_as(builder, "zero_point")?;
            let zero_point = i8::try_from(zero_point).context("anovit_quantize_i8: zero_point out of i8 range")?;
            builder.wire(ElementWiseOp(Box::new(QuantizeI8 { scale, zero_point }), None), &[input])
        },
    );
    reg.register_dumper(|ast, node, _: &DynamicRange| {
        Ok(Some(nnef::invocation("anovit_dynamic_range", &[ast.mapping[&node.inputs[0]].clone()], &[])))
    });
    reg.register_primitive(
        "anovit_dynamic_range",
        &[TypeName::Scalar.tensor().named("input")],
        &[("output", TypeName::Scalar.tensor())],
        |builder, invocation| {
            let input = invocation.named_arg_as(builder, "input")?;
            builder.wire(DynamicRange, &[input])
        },
    );
    reg.register_dumper(|ast, node, _: &QuantizeDynamic| {
        let inputs: Vec<_> = node.inputs.iter().map(|i| ast.mapping[i].clone()).collect();
        Ok(Some(nnef::invocation("anovit_quantize_dynamic", &inputs, &[])))
    });
    reg.register_primitive(
        "anovit_quantize_dynamic",
        &[TypeName::Scalar.tensor().named("input"), TypeName::Scalar.tensor().named("range")],
        &[("output", TypeName::Integer.tensor())],
        |builder, invocation| {
            let input = invocation.named_arg_as(builder, "input")?;
            let range = invocation.named_arg_as(builder, "range")?;
            builder.wire(QuantizeDynamic, &[input, range])
        },
    );
    crate::deconv::register(&mut reg);
    reg
}

/// The constant behind an outlet, if it is one.
pub(crate) fn konst(model: &TypedModel, outlet: OutletId) -> Option<Arc<Tensor>> {
    model.outlet_fact(outlet).ok()?.konst.clone()
}

/// One QuantizeLinearU8 -> EinSum(q, u8 out) -> DequantizeLinearF32 chain found in the graph.
struct Chain {
    quantize: usize,
    /// The quantize node's op.
    qop: QuantizeLinearU8,
    einsum: usize,
    dequantize: usize,
}

fn find_chains(model: &TypedModel) -> Vec<Chain> {
    let mut found = vec![];
    for e in &model.nodes {
        let Some(op) = e.op_as::<EinSum>() else { continue };
        if op.q_params.is_none() || e.inputs.len() != 9 {
            continue;
        }
        let succ = model.outlet_successors(e.id.into());
        if succ.len() != 1 || !model.node(succ[0].node).op_is::<DequantizeLinearF32>() {
            continue;
        }
        let q = model.node(e.inputs[0].node);
        let qop = q.op_as::<ElementWiseOp>().and_then(|ew| ew.0.downcast_ref::<QuantizeLinearU8>());
        if let (Some(qop), Some(_)) = (qop, konst(model, e.inputs[1])) {
            found.push(Chain { quantize: q.id, qop: qop.clone(), einsum: e.id, dequantize: succ[0].node });
        }
    }
    found
}

fn scalar_f32(model: &TypedModel, outlet: OutletId) -> Option<f32> {
    let t = konst(model, outlet)?;
    (t.len() == 1).then(|| t.cast_to_scalar::<f32>().ok()).flatten()
}

/// Rewrites one chain; `Ok(false)` when its parameters are not of the form handled (left as is).
fn rewrite_chain(model: &mut TypedModel, c: &Chain) -> TractResult<bool> {
    let e = model.node(c.einsum).clone();
    let op = e.op_as::<EinSum>().context("einsum")?.clone();
    let qop = &c.qop;
    // Activation parameters: the quantize op's must be the einsum's (scalars).
    let (Some(a_scale), Some(a0)) = (scalar_f32(model, e.inputs[4]), konst(model, e.inputs[3])) else {
        return Ok(false);
    };
    if a0.len() != 1 || a0.cast_to_scalar::<i32>()? != i32::from(qop.zero_point) {
        return Ok(false);
    }
    // Weights: constant i8 with zero points all 0, one scale per output channel (or one in all),
    // no integer bias yet.
    let w = konst(model, e.inputs[1]).context("weights")?;
    let b0 = konst(model, e.inputs[5]).context("b0")?;
    let b_scale = konst(model, e.inputs[6]).context("b_scale")?;
    let bias = konst(model, e.inputs[2]).context("bias")?;
    if w.datum_type() != i8::datum_type()
        || b0.cast_to::<i32>()?.try_as_plain_ram()?.as_slice::<i32>()?.iter().any(|z| *z != 0)
        || bias.len() != 1
        || bias.cast_to_scalar::<i32>()? != 0
        || b_scale.rank() > 1
    {
        return Ok(false);
    }
    // The output channel: the weights' axis that is in the output and not in the activations.
    let Some(n_axis) = op
        .axes
        .iter_all_axes()
        .find(|ax| ax.inputs[0].is_empty() && ax.inputs[1].len() == 1 && ax.outputs[0].len() == 1)
    else {
        return Ok(false);
    };
    let (repr, n_in_w, n_out) = (n_axis.repr, n_axis.inputs[1][0], n_axis.outputs[0][0]);
    let n = w.shape()[n_in_w];
    let b_scale = b_scale.cast_to::<f32>()?.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    let per_channel = b_scale.len() > 1;
    if per_channel && (b_scale.len() != n || op.axes.axis((InOut::In(6), 0))?.repr != repr) {
        return Ok(false);
    }
    let scales: Vec<f32> = (0..n).map(|j| b_scale[if per_channel { j } else { 0 }] * a_scale).collect();

    // The activations' zero point joins the integer bias: sum_k (a - a0) w = sum_k a w - a0 sum_k w,
    // with the weights' column sums taken here once. tract would otherwise sum the weights at
    // every run where they exceed its constant-folding budget (ViT-B: 40 % of the plan's time).
    let zero_point = i8::try_from(i32::from(qop.zero_point) - 128)?;
    let mut acc_bias = vec![0i32; n];
    let inner: usize = w.shape()[n_in_w + 1..].iter().product();
    let wv = w.try_as_plain_ram()?;
    for (i, v) in wv.as_slice::<i8>()?.iter().enumerate() {
        acc_bias[(i / inner) % n] -= i32::from(zero_point) * i32::from(*v);
    }
    // A per-channel f32 bias added right after joins it too (rounded to the accumulator's step,
    // a_scale * b_scale[n], far below the activations' quantisation step): tract adds it inside
    // the product instead of in a pass of its own.
    let mut replaced = c.dequantize;
    if let Some((add, b)) = per_channel_bias(model, c.dequantize, n_out, &scales) {
        acc_bias.iter_mut().zip(b).for_each(|(acc, b)| *acc += b);
        replaced = add;
    }

    // The weight parameters become scalars (their channel axis leaves the mapping) and the
    // bias gets the output channel.
    let mut axes = op.axes.clone();
    for slot in [5, 6] {
        if axes.rank(InOut::In(slot)) == 1 {
            axes = axes.remove_axis_occurency(InOut::In(slot), 0)?;
        }
    }
    let axes = axes.with_extra_axis_occurency(repr, InOut::In(2), 0)?;

    let name = &e.name;
    let mut patch = TypedModelPatch::new(format!("int8 {name}"));
    let x = patch.tap_model(model, model.node(c.quantize).inputs[0])?;
    let a = patch.wire_node(
        format!("{name}.quantize_i8"),
        ElementWiseOp(Box::new(QuantizeI8 { scale: qop.scale, zero_point }), None),
        &[x],
    )?[0];
    let w = patch.tap_model(model, e.inputs[1])?;
    let bias = patch.add_const(format!("{name}.bias_i32"), tensor1(&acc_bias))?;
    let zero = patch.add_const(format!("{name}.zero"), tensor0(0i32))?;
    let one = patch.add_const(format!("{name}.one"), tensor0(1f32))?;
    let q = EinSum::newq(axes, op.operating_dt, i32::datum_type());
    let acc = patch.wire_node(name, q, &[a, w, bias, zero, one, zero, one, zero, one])?[0];
    let acc = patch.wire_node(format!("{name}.to_f32"), cast(f32::datum_type()), &[acc])?[0];
    let mut shape = tvec![1usize; patch.outlet_fact(acc)?.rank()];
    shape[n_out] = n;
    let scales = patch.add_const(format!("{name}.scale"), tensor1(&scales).into_shape(&shape)?)?;
    let y = patch.wire_node(format!("{name}.scaled"), tract_core::ops::math::mul(), &[acc, scales])?[0];
    patch.shunt_outside(model, replaced.into(), y)?;
    patch.apply(model)?;
    Ok(true)
}

/// The node adding a constant per-channel f32 bias to the dequantised product, if that is what
/// follows it, with the bias in accumulator units (`bias[n] / scale[n]`, rounded).
fn per_channel_bias(
    model: &TypedModel,
    dequantize: usize,
    channel_pos: usize,
    scales: &[f32],
) -> Option<(usize, Vec<i32>)> {
    let rank = model.outlet_fact(dequantize.into()).ok()?.rank();
    let succ = model.outlet_successors(dequantize.into());
    let [inlet] = succ[..] else { return None };
    let add = model.node(inlet.node);
    let bin = add.op_as::<TypedBinOp>()?;
    if !bin.0.is::<tract_core::ops::math::Add>() || add.inputs.len() != 2 {
        return None;
    }
    let bias = konst(model, add.inputs[1 - inlet.slot])?;
    let n = scales.len();
    let along_channel =
        bias.rank() == rank && bias.shape().iter().enumerate().all(|(i, d)| *d == if i == channel_pos { n } else { 1 });
    if !along_channel || bias.datum_type() != f32::datum_type() {
        return None;
    }
    let bias = bias.try_as_plain_ram().ok()?;
    let acc: Option<Vec<i32>> = bias
        .as_slice::<f32>()
        .ok()?
        .iter()
        .zip(scales)
        .map(|(b, s)| {
            let v = (b / s).round();
            (v.abs() < 1e9).then_some(v as i32)
        })
        .collect();
    Some((add.id, acc?))
}

/// Rewrites every weight product of an onnxruntime QOperator int8 model into tract's integer
/// form (module doc). Returns the decluttered model and how many products were rewritten; a
/// product whose parameters are not of the handled form stays as imported.
pub fn rewrite_int8(model: TypedModel) -> TractResult<(TypedModel, usize)> {
    let mut model = model.into_decluttered()?;
    let chains = find_chains(&model);
    for c in &chains {
        rewrite_chain(&mut model, c)?;
    }
    crate::deconv::rewrite(&mut model, Some(crate::deconv::INT8_MIN_INNER))?;
    let model = model.into_decluttered()?;
    let n = census(&model).1;
    Ok((model, n))
}

/// Counts the int8 model's nodes that are still onnxruntime's form after the rewrite (a product
/// it did not cover, or quantisation glue around other operators), and the weight products in
/// integers (onnxruntime's, and the decoder's with activations quantised per run).
pub fn census(model: &TypedModel) -> (usize, usize) {
    let mut glue = 0;
    let mut integer = 0;
    for n in &model.nodes {
        if let Some(ew) = n.op_as::<ElementWiseOp>() {
            if ew.0.downcast_ref::<QuantizeLinearU8>().is_some() {
                glue += 1;
            }
            if ew.0.downcast_ref::<QuantizeI8>().is_some() {
                integer += 1;
            }
        }
        if n.op_is::<DequantizeLinearF32>() {
            glue += 1;
        }
        if n.op_is::<QuantizeDynamic>() {
            integer += 1; // a decoder product (deconv.rs)
        }
    }
    (glue, integer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tract_q(x: f32, scale: f32, zp: u8) -> i8 {
        (i32::from(tract_core::ops::quant::quantize_linear_f32_u8(x, scale, i32::from(zp))) - 128) as i8
    }

    #[test]
    fn quantize_matches_tracts_quantize_linear_shifted_to_i8() {
        let mut xs: Vec<f32> = (-4000..4000).map(|i| i as f32 * 0.0137).collect();
        // Ties (x * scale = k + 0.5) both ways, the clamp edges, extremes and NaN.
        xs.extend((-300..300).map(|k| (k as f32 + 0.5) / 4.0));
        xs.extend([f32::NAN, 0.0, -0.0, 1e6, -1e6]);
        for (scale, zp) in [(4.0f32, 128u8), (28.854, 128), (149.95, 157), (124.07, 21), (4.0, 0), (4.0, 255)] {
            let mut ys = vec![0i8; xs.len()];
            quantize_i8(&xs, &mut ys, scale, (i32::from(zp) - 128) as i8);
            for (x, y) in xs.iter().zip(&ys) {
                assert_eq!(*y, tract_q(*x, scale, zp), "x {x} scale {scale} zp {zp}");
            }
        }
    }

    #[test]
    fn quantize_saturates_where_tracts_scalar_version_overflows() {
        // tract's QuantizeLinear adds the zero point after a saturating cast to i32, which wraps
        // for values beyond i32 (x * scale >= 2^31); ours clamps first.
        let xs = [f32::MAX, f32::INFINITY, 1e30, f32::MIN, f32::NEG_INFINITY, -1e30];
        let mut ys = [0i8; 6];
        quantize_i8(&xs, &mut ys, 4.0, 0);
        assert_eq!(ys, [127, 127, 127, -128, -128, -128]);
    }
}

#[cfg(test)]
mod rewrite_tests {
    use super::*;
    use tract_core::ops::math::add;

    /// x [m, k] f32 -> QuantizeLinearU8 -> EinSum q (u8 out) -> DequantizeLinearF32 -> + bias.
    fn chain(m: usize, k: usize, n: usize, with_bias: bool) -> (TypedModel, Vec<i8>, Vec<f32>, Vec<f32>) {
        let w: Vec<i8> = (0..k * n).map(|i| ((i * 37 + 11) % 255) as i8).collect();
        let b_scale: Vec<f32> = (0..n).map(|j| 0.001 + 0.0001 * j as f32).collect();
        let bias: Vec<f32> = (0..n).map(|j| 0.05 * (j as f32 - 2.0)).collect();
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([m, k])).unwrap();
        let q = model
            .wire_node(
                "q",
                ElementWiseOp(Box::new(QuantizeLinearU8 { scale: 1.0 / 0.02, zero_point: 120 }), None),
                &[x],
            )
            .unwrap()[0];
        let c = |model: &mut TypedModel, name: &str, t: Tensor| model.add_const(name, t).unwrap();
        let wq = c(&mut model, "w", tensor1(&w).into_shape(&[k, n]).unwrap());
        let bias0 = c(&mut model, "bias0", tensor0(0i32));
        let a0 = c(&mut model, "a0", tensor0(120u8));
        let a_scale = c(&mut model, "a_scale", tensor0(0.02f32));
        let b0 = c(&mut model, "b0", tensor1(&vec![0i8; n]));
        let bs = c(&mut model, "b_scale", tensor1(&b_scale));
        let c0 = c(&mut model, "c0", tensor0(128u8));
        let c_scale = c(&mut model, "c_scale", tensor0(0.5f32));
        let axes: AxesMapping = "mk,kn,,,,n,n,,->mn".parse().unwrap();
        let e = model
            .wire_node(
                "e",
                EinSum::newq(axes, i32::datum_type(), u8::datum_type()),
                &[q, wq, bias0, a0, a_scale, b0, bs, c0, c_scale],
            )
            .unwrap()[0];
        let mut y = model.wire_node("dq", DequantizeLinearF32 { scale: 0.5, zero_point: 128 }, &[e]).unwrap()[0];
        if with_bias {
            let bt = c(&mut model, "bias", tensor1(&bias).into_shape(&[1, n]).unwrap());
            y = model.wire_node("add", add(), &[y, bt]).unwrap()[0];
        }
        model.select_output_outlets(&[y]).unwrap();
        (model, w, b_scale, bias)
    }

    #[test]
    fn rewritten_product_equals_the_exact_integer_formula() {
        let (m, k, n) = (7, 24, 5);
        for with_bias in [false, true] {
            let (model, w, b_scale, bias) = chain(m, k, n, with_bias);
            let (rewritten, count) = rewrite_int8(model).unwrap();
            assert_eq!(count, 1);
            assert!(!rewritten.nodes.iter().any(|n| n.op_is::<DequantizeLinearF32>()));
            let xs: Vec<f32> = (0..m * k).map(|i| ((i * 13) % 29) as f32 * 0.1 - 1.3).collect();
            let run = |model: TypedModel| {
                let out = model
                    .into_optimized()
                    .unwrap()
                    .into_runnable()
                    .unwrap()
                    .run(tvec!(tensor1(&xs).into_shape(&[m, k]).unwrap().into()))
                    .unwrap();
                out[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec()
            };
            let got = run(rewritten);
            for i in 0..m {
                for j in 0..n {
                    let acc: i32 = (0..k)
                        .map(|l| {
                            let q = tract_core::ops::quant::quantize_linear_f32_u8(xs[i * k + l], 50.0, 120) as i32;
                            (q - 120) * i32::from(w[l * n + j])
                        })
                        .sum();
                    let want = acc as f32 * 0.02 * b_scale[j] + if with_bias { bias[j] } else { 0.0 };
                    let g = got[i * n + j];
                    assert!((g - want).abs() <= 1e-5 + 1e-4 * want.abs(), "bias {with_bias} [{i},{j}] {g} vs {want}");
                }
            }
        }
    }
}
