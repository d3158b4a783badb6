//! Load-time fusions of the encoder's element-wise chains into single passes.
//!
//! The ONNX export spells the encoder's small operations out, and tract runs each as its own pass
//! over memory: the tanh GELU as nine operators (six passes after tract's own fusions, 0.2 ms per
//! block), LayerNorm as a sum, a centring, tract's `RmsNorm` on a strided axis and a scale-and-shift
//! (90 us per norm), and every int8 product's dequantisation as a cast then a scale. [`rewrite`]
//! matches those chains in the decluttered model and puts one operator in place of each:
//! - the GELU chain becomes [`Gelu`], one vector pass (tract's own `GeluApproximate` kernel took
//!   0.13 ms a block);
//! - `Softmax` along the last axis becomes [`SoftmaxRows`] (tract's takes a slower path for rows
//!   that are not a multiple of 4 long, as the 197 tokens are);
//! - LayerNorm becomes [`LayerNorm`]: statistics and normalisation in two vector passes, along
//!   whatever axis tract's layout put the channels on;
//! - `Cast(i32 -> f32)` then a constant scale becomes [`ScaleI32`].
//!
//! Then what follows some of them is folded into their pass: a [`Gelu`] or a residual addition
//! into the [`ScaleI32`] before it, a ReLU into the decoder's [`crate::deconv::OverlapAdd`].
//!
//! It runs when a model is loaded, before tract's optimiser, so plan files keep tract's standard
//! operators and any plan gains it. Each replacement computes what the chain computes (tests
//! below, and `tests/golden.rs` against onnxruntime on the whole model).

use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::cast::Cast;
use tract_core::ops::element_wise::ElementWiseOp;
use tract_core::ops::math::{Add, Max, Mul, Square, Sub, Tanh};
use tract_core::ops::nn::{Reduce, Reducer, RmsNorm, Softmax, SoftmaxKind};

use crate::broadcast::for_each_row;

/// The value of `outlet` when it is a constant with one value throughout.
fn uniform(model: &TypedModel, outlet: OutletId) -> Option<f32> {
    let fact = model.outlet_fact(outlet).ok()?;
    let t = fact.uniform.as_ref().or(fact.konst.as_ref().filter(|k| k.len() == 1))?;
    t.cast_to_scalar::<f32>().ok()
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1e-6)
}

/// `node` as the binary operator `M`: its two inputs.
fn bin<M: tract_core::ops::binary::BinMiniOp>(node: &TypedNode) -> Option<[OutletId; 2]> {
    let op = node.op_as::<TypedBinOp>()?;
    (op.0.is::<M>() && node.inputs.len() == 2).then(|| [node.inputs[0], node.inputs[1]])
}

/// `node` as `M` with a uniform constant `k` on either side: the other input.
fn bin_const<M: tract_core::ops::binary::BinMiniOp>(model: &TypedModel, node: &TypedNode, k: f32) -> Option<OutletId> {
    let [a, b] = bin::<M>(node)?;
    if uniform(model, b).is_some_and(|v| close(v, k)) {
        Some(a)
    } else if uniform(model, a).is_some_and(|v| close(v, k)) {
        Some(b)
    } else {
        None
    }
}

/// The one node reading `id`'s output, if exactly one does.
fn single_succ(model: &TypedModel, id: usize) -> Option<&TypedNode> {
    model.single_succ(id).ok().flatten()
}

fn node_of(model: &TypedModel, outlet: OutletId) -> &TypedNode {
    model.node(outlet.node)
}

fn is_elementwise<E: ElementWiseMiniOp>(node: &TypedNode) -> bool {
    node.op_as::<ElementWiseOp>().is_some_and(|e| e.0.is::<E>())
}

/// Whether `node` computes `x * x * x` (as `Mul(x, Square(x))`, in either order).
fn is_cube_of(model: &TypedModel, node: &TypedNode, x: OutletId) -> bool {
    let Some([a, b]) = bin::<Mul>(node) else { return false };
    let square_of_x = |o: OutletId| {
        let n = node_of(model, o);
        is_elementwise::<Square>(n) && n.inputs[0] == x && o.slot == 0
    };
    (a == x && square_of_x(b)) || (b == x && square_of_x(a))
}

/// `0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))` ending after `tanh`: the last
/// node of the chain and `x`.
fn match_gelu(model: &TypedModel, tanh: &TypedNode) -> Option<(usize, OutletId)> {
    let inner = bin_const::<Mul>(model, node_of(model, tanh.inputs[0]), (2.0 / std::f32::consts::PI).sqrt())?;
    let [a, b] = bin::<Add>(node_of(model, inner))?;
    let cube_term = |x: OutletId, t: OutletId| {
        let c = bin_const::<Mul>(model, node_of(model, t), 0.044715)?;
        is_cube_of(model, node_of(model, c), x).then_some(x)
    };
    let x = cube_term(a, b).or_else(|| cube_term(b, a))?;
    let one_plus = single_succ(model, tanh.id)?;
    let t1 = bin_const::<Add>(model, one_plus, 1.0)?;
    (t1 == tanh.id.into()).then_some(())?;
    let times = single_succ(model, one_plus.id)?;
    let [p, q] = bin::<Mul>(times)?;
    let other = if p == one_plus.id.into() { q } else { p };
    if other == x {
        // (x * (1 + tanh)) * 0.5
        let half = single_succ(model, times.id)?;
        bin_const::<Mul>(model, half, 0.5)?;
        Some((half.id, x))
    } else {
        // (0.5 * x) * (1 + tanh)
        (bin_const::<Mul>(model, node_of(model, other), 0.5)? == x).then_some((times.id, x))
    }
}

/// `e^x` in f32 by range reduction and a degree-6 polynomial (Cephes' `expf`, within 2 ulp),
/// written without branches or calls so that the loops using it vectorise. NaN stays NaN; the
/// argument is clamped to the finite range.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let x = x.clamp(-87.3, 88.3);
    let t = x.mul_add(std::f32::consts::LOG2_E, MAGIC);
    let k = t.to_bits().wrapping_sub(MAGIC.to_bits()); // round(x / ln 2) as a wrapped integer
    let n = t - MAGIC;
    // x - n ln 2, with ln 2 in two parts so that the product is exact.
    let r = n.mul_add(2.121_944_4e-4, n.mul_add(-0.693_359_4, x));
    let mut p = 1.987_569_2e-4f32;
    for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = p.mul_add(r, c);
    }
    let y = (p * r).mul_add(r, r + 1.0);
    y * f32::from_bits(k.wrapping_add(127) << 23)
}

crate::simd::multiversion! {
    /// The tanh GELU in place: `0.5 x (1 + tanh(u)) = x / (1 + e^(-2u))`,
    /// `u = sqrt(2 / pi) (x + 0.044715 x^3)`.
    fn gelu_in_place(xs: &mut [f32]) {
        const C: f32 = -2.0 * 0.797_884_6; // -2 sqrt(2 / pi)
        xs.iter_mut().for_each(|x| {
            let v = *x;
            *x = v / (1.0 + exp(C * (0.044715 * v * v).mul_add(v, v)));
        });
    }
}

crate::simd::multiversion! {
    /// Softmax of one row in place (a NaN anywhere makes the row NaN). The row's tail is worked
    /// on in a padded block, so every exponential is a vector one.
    fn softmax_in_place(row: &mut [f32]) {
        const L: usize = 16;
        let mut lanes = [f32::NEG_INFINITY; L];
        let mut chunks = row.chunks_exact(L);
        for c in &mut chunks {
            lanes.iter_mut().zip(c).for_each(|(m, x)| *m = m.max(*x));
        }
        let max = chunks.remainder().iter().chain(&lanes).fold(f32::NEG_INFINITY, |m, x| m.max(*x));
        let mut sums = [0f32; L];
        let mut chunks = row.chunks_exact_mut(L);
        for c in &mut chunks {
            c.iter_mut().zip(&mut sums).for_each(|(x, s)| {
                *x = exp(*x - max);
                *s += *x;
            });
        }
        let tail = chunks.into_remainder();
        let mut pad = [0f32; L];
        pad[..tail.len()].copy_from_slice(tail);
        pad.iter_mut().for_each(|x| *x = exp(*x - max));
        tail.copy_from_slice(&pad[..tail.len()]);
        let sum = tail.iter().sum::<f32>() + sums.iter().sum::<f32>();
        let scale = 1.0 / sum;
        row.iter_mut().for_each(|x| *x *= scale);
    }
}

/// The tanh-approximated GELU on f32, in place when it can.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Gelu;

/// Softmax of f32 rows: along the last axis.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SoftmaxRows;

/// The single f32 input as an owned tensor to work on in place (tract hands over its buffer when
/// no other node reads it), `f` applied to its rows of `row` values (all of it when `row` is 0).
fn in_place(inputs: TVec<TValue>, f: fn(&mut [f32]), last_axis: bool) -> TractResult<TVec<TValue>> {
    let mut t = inputs.into_iter().next().context("one input")?.into_tensor();
    let row = if last_axis { t.shape().last().copied().unwrap_or(1).max(1) } else { t.len().max(1) };
    {
        let mut ram = t.try_as_plain_ram_mut()?;
        ram.as_slice_mut::<f32>()?.chunks_exact_mut(row).for_each(f);
    }
    Ok(tvec!(t.into_tvalue()))
}

macro_rules! unary_f32_op {
    ($op:ident, $name:literal, $f:expr, $last_axis:expr) => {
        impl Op for $op {
            fn name(&self) -> StaticName {
                $name.into()
            }
            op_as_typed_op!();
        }

        impl EvalOp for $op {
            op_out_of_plan!();

            fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
                in_place(inputs, $f, $last_axis)
            }
        }

        impl TypedOp for $op {
            fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
                ensure!(inputs[0].datum_type == f32::datum_type(), concat!($name, " takes f32"));
                Ok(tvec!(f32::fact(inputs[0].shape.clone())))
            }
            as_op!();
        }
    };
}

unary_f32_op!(Gelu, "Gelu", gelu_in_place, false);
unary_f32_op!(SoftmaxRows, "SoftmaxRows", softmax_in_place, true);

/// tract's f32 `Softmax` along the last axis.
fn match_softmax(model: &TypedModel, node: &TypedNode) -> Option<(usize, OutletId, SoftmaxRows)> {
    let op = node.op_as::<Softmax>()?;
    let fact = model.outlet_fact(node.inputs[0]).ok()?;
    let last = fact.rank().checked_sub(1)?;
    let plain = op.kind == SoftmaxKind::Softmax && op.quant_output_dt.is_none() && *op.axes == [last];
    (plain && fact.datum_type == f32::datum_type()).then_some((node.id, node.inputs[0], SoftmaxRows))
}

/// Layer normalisation of an f32 tensor along one axis: `(x - mean) / sqrt(var + eps) * gamma +
/// beta`, mean and (biased) variance over that axis; `gamma` and `beta` one value per position
/// on the axis.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LayerNorm {
    /// The normalised axis.
    pub axis: usize,
    /// Added to the variance.
    pub eps: Arc<Tensor>,
    /// Scale per position on the axis (f32, rank 1).
    pub gamma: Arc<Tensor>,
    /// Shift per position on the axis (f32, rank 1).
    pub beta: Arc<Tensor>,
}

crate::simd::multiversion! {
    /// `acc += row`.
    fn add_into(acc: &mut [f32], row: &[f32]) {
        acc.iter_mut().zip(row).for_each(|(a, x)| *a += x);
    }
}

crate::simd::multiversion! {
    /// `acc += (row - mean)^2`.
    fn add_sq_dev(acc: &mut [f32], row: &[f32], mean: &[f32]) {
        acc.iter_mut().zip(row).zip(mean).for_each(|((a, x), m)| *a += (x - m) * (x - m));
    }
}

crate::simd::multiversion! {
    /// `out = (row - mean) * rstd * g + b`.
    fn norm_row(out: &mut [f32], row: &[f32], mean: &[f32], rstd: &[f32], g: f32, b: f32) {
        out.iter_mut().zip(row).zip(mean.iter().zip(rstd)).for_each(|((o, x), (m, r))| *o = (x - m) * r * g + b);
    }
}

thread_local! {
    /// Means and reciprocal deviations of one block's columns, sized once per thread.
    static STATS: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

impl LayerNorm {
    fn run(&self, x: &Tensor) -> TractResult<Tensor> {
        let shape = x.shape();
        ensure!(self.axis < shape.len(), "LayerNorm: axis {} of a rank {} tensor", self.axis, shape.len());
        let n = shape[self.axis];
        let inner: usize = shape[self.axis + 1..].iter().product();
        let (g, b) = (self.gamma.try_as_plain_ram()?, self.beta.try_as_plain_ram()?);
        let (g, b) = (g.as_slice::<f32>()?, b.as_slice::<f32>()?);
        ensure!(g.len() == n && b.len() == n, "LayerNorm: {} scales for an axis of {n}", g.len());
        let eps = self.eps.cast_to_scalar::<f32>()?;
        let xs = x.try_as_plain_ram()?;
        let xs = xs.as_slice::<f32>()?;
        let mut out = unsafe { Tensor::uninitialized::<f32>(shape)? };
        {
            let mut o = out.try_as_plain_ram_mut()?;
            let o = o.as_slice_mut::<f32>()?;
            if n == 0 || inner == 0 {
                return Ok(out);
            }
            // Each block is n rows of `inner` columns; every column is normalised over its rows,
            // a vector of columns at a time (rows of one value when the axis is the last).
            STATS.with_borrow_mut(|(mean, rstd)| {
                mean.resize(inner, 0.0);
                rstd.resize(inner, 0.0);
                for (ob, xb) in o.chunks_exact_mut(n * inner).zip(xs.chunks_exact(n * inner)) {
                    mean.fill(0.0);
                    xb.chunks_exact(inner).for_each(|row| add_into(mean, row));
                    mean.iter_mut().for_each(|m| *m /= n as f32);
                    rstd.fill(0.0);
                    xb.chunks_exact(inner).for_each(|row| add_sq_dev(rstd, row, mean));
                    rstd.iter_mut().for_each(|v| *v = 1.0 / (*v / n as f32 + eps).sqrt());
                    for (i, (orow, row)) in ob.chunks_exact_mut(inner).zip(xb.chunks_exact(inner)).enumerate() {
                        norm_row(orow, row, mean, rstd, g[i], b[i]);
                    }
                }
            });
        }
        Ok(out)
    }
}

impl Op for LayerNorm {
    fn name(&self) -> StaticName {
        "LayerNorm".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("axis: {}", self.axis)])
    }
    op_as_typed_op!();
}

impl EvalOp for LayerNorm {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        Ok(tvec!(self.run(&inputs[0])?.into_tvalue()))
    }
}

impl TypedOp for LayerNorm {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type(), "LayerNorm takes f32");
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }
    as_op!();
}

/// The per-axis constant of a scale or shift: `n` values along `axis` (ones elsewhere), or one
/// value for all; as a rank-1 tensor of `n`.
fn per_axis(model: &TypedModel, outlet: OutletId, rank: usize, axis: usize, n: usize) -> Option<Arc<Tensor>> {
    let fact = model.outlet_fact(outlet).ok()?;
    let k = fact.konst.as_ref()?;
    if k.datum_type() != f32::datum_type() {
        return None;
    }
    let v = k.try_as_plain_ram().ok()?.as_slice::<f32>().ok()?.to_vec();
    let shape = k.shape();
    let along = shape.len() == rank && shape.iter().enumerate().all(|(i, d)| *d == 1 || (i == axis && *d == n));
    match v.len() {
        1 => Some(Arc::new(tensor1(&vec![v[0]; n]))),
        l if l == n && along => Some(Arc::new(tensor1(&v))),
        _ => None,
    }
}

/// `RmsNorm(x - Sum(x) * (1/n))` and the scale and shift after it: the chain's last node and its
/// replacement.
fn match_layer_norm(model: &TypedModel, rms: &TypedNode) -> Option<(usize, OutletId, LayerNorm)> {
    let op = rms.op_as::<RmsNorm>()?;
    let [x, mean] = bin::<Sub>(node_of(model, rms.inputs[0]))?;
    let fact = model.outlet_fact(x).ok()?;
    let rank = fact.rank();
    let n = fact.shape[op.axis].to_usize().ok()?;
    if fact.datum_type != f32::datum_type() || fact.shape.as_concrete().is_none() {
        return None;
    }
    let sum = bin_const::<Mul>(model, node_of(model, mean), 1.0 / n as f32)?;
    let sum = node_of(model, sum);
    let reduce = sum.op_as::<Reduce>()?;
    if reduce.reducer != Reducer::Sum || *reduce.axes != [op.axis] || sum.inputs[0] != x {
        return None;
    }
    let (mut last, mut gamma, mut beta) = (rms.id, None, None);
    // The scale, then the shift, each optional.
    if let Some(next) = single_succ(model, last) {
        if let Some([a, b]) = bin::<Mul>(next) {
            let k = if a == last.into() { b } else { a };
            if let Some(g) = per_axis(model, k, rank, op.axis, n) {
                (last, gamma) = (next.id, Some(g));
            }
        }
    }
    if let Some(next) = single_succ(model, last) {
        if let Some([a, b]) = bin::<Add>(next) {
            let k = if a == last.into() { b } else { a };
            if let Some(s) = per_axis(model, k, rank, op.axis, n) {
                (last, beta) = (next.id, Some(s));
            }
        }
    }
    let ln = LayerNorm {
        axis: op.axis,
        eps: op.eps.clone(),
        gamma: gamma.unwrap_or_else(|| Arc::new(tensor1(&vec![1f32; n]))),
        beta: beta.unwrap_or_else(|| Arc::new(tensor1(&vec![0f32; n]))),
    };
    Some((last, x, ln))
}

/// An integer product's dequantisation, `i32 as f32 * scale`, `scale` a constant broadcast onto
/// the input's shape, and what follows it folded in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScaleI32 {
    /// The scale (f32, same rank as the input, each axis the input's or 1).
    pub scale: Arc<Tensor>,
    /// What is applied to the scaled values.
    pub then: Then,
}

/// The operation [`ScaleI32`] ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Then {
    /// Nothing.
    Nothing,
    /// [`Gelu`] (the MLP's first product).
    Gelu,
    /// Adding a second input of the same shape (the residual after a block's products).
    Add,
}

crate::simd::multiversion! {
    /// `out[i] = x[i] as f32 * s[i]` (or `s[0]` for every i when `s` has one value).
    fn scale_row(out: &mut [f32], x: &[i32], s: &[f32]) {
        if let [s] = s {
            let s = *s;
            out.iter_mut().zip(x).for_each(|(o, x)| *o = *x as f32 * s);
        } else {
            out.iter_mut().zip(x).zip(s).for_each(|((o, x), s)| *o = *x as f32 * s);
        }
    }
}

crate::simd::multiversion! {
    /// `out[i] = x[i] as f32 * s[i] + add[i]` (`s` one value or a row).
    fn scale_add_row(out: &mut [f32], x: &[i32], s: &[f32], add: &[f32]) {
        if let [s] = s {
            let s = *s;
            out.iter_mut().zip(x).zip(add).for_each(|((o, x), a)| *o = (*x as f32).mul_add(s, *a));
        } else {
            out.iter_mut().zip(x).zip(s).zip(add).for_each(|(((o, x), s), a)| *o = (*x as f32).mul_add(*s, *a));
        }
    }
}

impl Op for ScaleI32 {
    fn name(&self) -> StaticName {
        match self.then {
            Then::Nothing => "ScaleI32".into(),
            Then::Gelu => "ScaleI32+Gelu".into(),
            Then::Add => "ScaleI32+Add".into(),
        }
    }
    op_as_typed_op!();
}

impl EvalOp for ScaleI32 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let shape = x.shape();
        let xs = x.try_as_plain_ram()?;
        let xs = xs.as_slice::<i32>()?;
        let ss = self.scale.try_as_plain_ram()?;
        let ss = ss.as_slice::<f32>()?;
        let mut out = unsafe { Tensor::uninitialized::<f32>(shape)? };
        {
            let mut o = out.try_as_plain_ram_mut()?;
            let o = o.as_slice_mut::<f32>()?;
            let last = shape.last().copied().unwrap_or(1).max(1);
            let add = match self.then {
                Then::Add => {
                    ensure!(inputs.len() == 2 && inputs[1].shape() == shape, "ScaleI32+Add: shapes differ");
                    Some(inputs[1].try_as_plain_ram()?)
                }
                _ => None,
            };
            let add = add.as_ref().map(|a| a.as_slice::<f32>()).transpose()?;
            for_each_row(shape, self.scale.shape(), |r, off, len| {
                let (a, s) = (r * last, &ss[off..off + len]);
                let out = &mut o[a..a + last];
                match (self.then, add) {
                    (Then::Add, Some(add)) => scale_add_row(out, &xs[a..a + last], s, &add[a..a + last]),
                    _ => scale_row(out, &xs[a..a + last], s),
                }
                if self.then == Then::Gelu {
                    gelu_in_place(out);
                }
            })?;
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for ScaleI32 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == i32::datum_type(), "ScaleI32 takes i32");
        ensure!(inputs.len() == if self.then == Then::Add { 2 } else { 1 }, "ScaleI32: wrong input count");
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }
    as_op!();
}

/// `Mul(Cast(x: i32 -> f32), k)`, k a constant that broadcasts onto x: the Mul and the op.
fn match_scale_i32(model: &TypedModel, cast: &TypedNode) -> Option<(usize, OutletId, ScaleI32)> {
    let c = cast.op_as::<Cast>()?;
    let x = cast.inputs[0];
    let fact = model.outlet_fact(x).ok()?;
    if c.to != f32::datum_type() || fact.datum_type != i32::datum_type() {
        return None;
    }
    let shape = fact.shape.as_concrete()?.to_vec();
    let mul = single_succ(model, cast.id)?;
    let [a, b] = bin::<Mul>(mul)?;
    let k = if a == cast.id.into() { b } else { a };
    let k = crate::quant::konst(model, k)?;
    let fits = k.datum_type() == f32::datum_type()
        && k.rank() == shape.len()
        && k.shape().iter().zip(&shape).all(|(s, d)| s == d || *s == 1);
    fits.then(|| (mul.id, x, ScaleI32 { scale: k, then: Then::Nothing }))
}

/// What [`rewrite`] replaced.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fused {
    /// GELU chains now [`Gelu`].
    pub gelu: usize,
    /// Softmaxes now [`SoftmaxRows`].
    pub softmax: usize,
    /// LayerNorm chains now [`LayerNorm`].
    pub layer_norm: usize,
    /// Casts and scales now [`ScaleI32`].
    pub scale_i32: usize,
    /// Operators folded into the one before them: a [`Gelu`] or a residual addition into
    /// [`ScaleI32`], a ReLU into the decoder's [`crate::deconv::OverlapAdd`].
    pub folded: usize,
}

/// Replaces the chains of the module doc in a decluttered model. Nothing under `ANOVIT_TRACT_OPS`
/// ([`crate::model::tract_ops_only`]).
pub fn rewrite(model: &mut TypedModel) -> TractResult<Fused> {
    let mut fused = Fused::default();
    if crate::model::tract_ops_only() {
        return Ok(fused);
    }
    for id in model.eval_order()? {
        let node = model.node(id);
        let found = if is_elementwise::<Tanh>(node) {
            counted(&mut fused.gelu, match_gelu(model, node).map(|(last, x)| (last, x, Gelu)))
        } else if node.op_is::<RmsNorm>() {
            counted(&mut fused.layer_norm, match_layer_norm(model, node))
        } else if node.op_is::<Softmax>() {
            counted(&mut fused.softmax, match_softmax(model, node))
        } else if node.op_is::<Cast>() {
            counted(&mut fused.scale_i32, match_scale_i32(model, node))
        } else {
            None
        };
        if let Some((last, x, op)) = found {
            let patch = TypedModelPatch::replace_single_op(model, model.node(last), &[x], op)?;
            patch.apply(model)?;
        }
    }
    // Then what the operators above (and the decoder's) can finish in their own pass.
    for id in model.eval_order()? {
        if let Some((last, inputs, op)) = fold_next(model, model.node(id)) {
            let patch = TypedModelPatch::replace_single_op(model, model.node(last), &inputs, op)?;
            patch.apply(model)?;
            fused.folded += 1;
        }
    }
    Ok(fused)
}

/// A match with its operator boxed, counted in `count`.
fn counted<O: TypedOp>(
    count: &mut usize,
    found: Option<(usize, OutletId, O)>,
) -> Option<(usize, OutletId, Box<dyn TypedOp>)> {
    let (last, x, op) = found?;
    *count += 1;
    Some((last, x, Box::new(op)))
}

/// `node` with the operator after it folded in: the node it replaces, its inputs, the operator.
fn fold_next(model: &TypedModel, node: &TypedNode) -> Option<(usize, TVec<OutletId>, Box<dyn TypedOp>)> {
    let next = single_succ(model, node.id)?;
    if let Some(op) = node.op_as::<ScaleI32>().filter(|op| op.then == Then::Nothing) {
        if next.op_is::<Gelu>() {
            return Some((
                next.id,
                node.inputs.iter().copied().collect(),
                Box::new(ScaleI32 { then: Then::Gelu, ..op.clone() }),
            ));
        }
        let [a, b] = bin::<Add>(next)?;
        let other = if a == node.id.into() { b } else { a };
        let (f, o) = (model.outlet_fact(node.id.into()).ok()?, model.outlet_fact(other).ok()?);
        if other == node.id.into() || o.datum_type != f32::datum_type() || o.shape != f.shape || o.konst.is_some() {
            return None;
        }
        let inputs = tvec![node.inputs[0], other];
        return Some((next.id, inputs, Box::new(ScaleI32 { then: Then::Add, ..op.clone() })));
    }
    if let Some(op) = node.op_as::<crate::deconv::OverlapAdd>().filter(|op| !op.relu) {
        bin_const::<Max>(model, next, 0.0)?;
        return Some((
            next.id,
            node.inputs.iter().copied().collect(),
            Box::new(crate::deconv::OverlapAdd { relu: true, ..op.clone() }),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_core::ops::math;

    fn konst(model: &mut TypedModel, name: &str, v: f32, rank: usize) -> OutletId {
        model.add_const(name, tensor0(v).broadcast_into_rank(rank).unwrap()).unwrap()
    }

    fn wire(model: &mut TypedModel, name: &str, op: impl Into<Box<dyn TypedOp>>, inputs: &[OutletId]) -> OutletId {
        model.wire_node(name, op.into(), inputs).unwrap()[0]
    }

    /// Runs `model` on `x` as built, and after `rewrite`: (before, after, what was fused).
    fn before_after(model: TypedModel, x: Tensor) -> (Vec<f32>, Vec<f32>, Fused, TypedModel) {
        let run = |m: TypedModel| {
            let out = m.into_optimized().unwrap().into_runnable().unwrap().run(tvec!(x.clone().into())).unwrap();
            out[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec()
        };
        let want = run(model.clone());
        let mut fused_model = model.into_decluttered().unwrap();
        let fused = rewrite(&mut fused_model).unwrap();
        let kept = fused_model.clone().into_decluttered().unwrap();
        (want, run(fused_model), fused, kept)
    }

    fn ramp(n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|i| lo + (hi - lo) * ((i * 7919) % n) as f32 / n as f32).collect()
    }

    fn assert_close(got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol * (1.0 + w.abs()), "[{i}]: {g} vs {w}");
        }
    }

    /// The tanh GELU as torch exports it, `x * x * x` spelled out; `half_first` puts the 0.5 on
    /// `x` (the other order tract's own detector knows).
    fn gelu_model(shape: &[usize], half_first: bool, cube_coef: f32) -> TypedModel {
        let mut m = TypedModel::default();
        let r = shape.len();
        let x = m.add_source("x", f32::fact(shape)).unwrap();
        let sq = wire(&mut m, "sq", math::mul(), &[x, x]);
        let cube = wire(&mut m, "cube", math::mul(), &[x, sq]);
        let k0 = konst(&mut m, "k0", cube_coef, r);
        let t = wire(&mut m, "t", math::mul(), &[k0, cube]);
        let inner = wire(&mut m, "inner", math::add(), &[x, t]);
        let k1 = konst(&mut m, "k1", (2.0 / std::f32::consts::PI).sqrt(), r);
        let u = wire(&mut m, "u", math::mul(), &[k1, inner]);
        let th = wire(&mut m, "tanh", math::tanh(), &[u]);
        let one = konst(&mut m, "one", 1.0, r);
        let p = wire(&mut m, "p", math::add(), &[one, th]);
        let half = konst(&mut m, "half", 0.5, r);
        let y = if half_first {
            let hx = wire(&mut m, "hx", math::mul(), &[x, half]);
            wire(&mut m, "y", math::mul(), &[hx, p])
        } else {
            let xp = wire(&mut m, "xp", math::mul(), &[x, p]);
            wire(&mut m, "y", math::mul(), &[half, xp])
        };
        m.select_output_outlets(&[y]).unwrap();
        m
    }

    #[test]
    fn gelu_chain_becomes_one_operator_with_the_same_values() {
        for half_first in [false, true] {
            let shape = [7, 45];
            let mut xs = ramp(7 * 45, -12.0, 12.0);
            xs[3] = 0.0;
            xs[4] = -1e-30;
            xs[5] = 80.0;
            xs[6] = -80.0;
            let x = tensor1(&xs).into_shape(&shape).unwrap();
            let (want, got, fused, kept) = before_after(gelu_model(&shape, half_first, 0.044715), x);
            assert_eq!(fused, Fused { gelu: 1, ..Fused::default() }, "half first: {half_first}");
            assert!(!kept.nodes.iter().any(is_elementwise::<Tanh>), "the chain is gone");
            // tract's chain loses digits in `1 + tanh(u)` for large negative x (-3.6e-6 at x =
            // -12, -2.4e-5 at -80, where the value is below 1e-36): against it where x >= -6,
            // against the definition everywhere.
            for ((g, w), x) in got.iter().zip(&want).zip(&xs) {
                assert!(*x < -6.0 || (g - w).abs() <= 2e-6 * (1.0 + w.abs()), "gelu({x}): {g} vs tract's {w}");
            }
            let exact =
                |x: f64| 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh());
            for (g, x) in got.iter().zip(&xs) {
                let w = exact(f64::from(*x));
                assert!((f64::from(*g) - w).abs() <= 1e-6 * (1.0 + w.abs()), "gelu({x}) = {g}, not {w}");
            }
        }
    }

    #[test]
    fn gelu_propagates_nan() {
        let mut xs = vec![f32::NAN, 1.0, -1.0];
        gelu_in_place(&mut xs);
        assert!(xs[0].is_nan() && (xs[1] - 0.841_192).abs() < 1e-5 && (xs[2] + 0.158_808).abs() < 1e-5, "{xs:?}");
    }

    #[test]
    fn a_chain_with_another_constant_is_left_alone() {
        let m = gelu_model(&[3, 4], false, 0.05);
        let x = tensor1(&ramp(12, -3.0, 3.0)).into_shape(&[3, 4]).unwrap();
        let (want, got, fused, _) = before_after(m, x);
        assert_eq!(fused, Fused::default());
        assert_eq!(got, want);
    }

    /// LayerNorm as tract declutters the ONNX one: a sum, a scale, a centring, `RmsNorm`, then
    /// scale and shift per position on the axis.
    fn layer_norm_model(shape: &[usize], axis: usize, gamma: &[f32], beta: &[f32]) -> TypedModel {
        let mut m = TypedModel::default();
        let r = shape.len();
        let x = m.add_source("x", f32::fact(shape)).unwrap();
        let sum = wire(&mut m, "sum", Reduce::new(tvec![axis], Reducer::Sum), &[x]);
        let inv = konst(&mut m, "inv", 1.0 / shape[axis] as f32, r);
        let mean = wire(&mut m, "mean", math::mul(), &[sum, inv]);
        let d = wire(&mut m, "d", math::sub(), &[x, mean]);
        let rms = wire(&mut m, "rms", RmsNorm { axis, eps: Arc::new(tensor0(1e-5f32)) }, &[d]);
        let mut per_axis = vec![1; r];
        per_axis[axis] = shape[axis];
        let g = m.add_const("gamma", tensor1(gamma).into_shape(&per_axis).unwrap()).unwrap();
        let b = m.add_const("beta", tensor1(beta).into_shape(&per_axis).unwrap()).unwrap();
        let y = wire(&mut m, "scaled", math::mul(), &[rms, g]);
        let y = wire(&mut m, "shifted", math::add(), &[y, b]);
        m.select_output_outlets(&[y]).unwrap();
        m
    }

    #[test]
    fn layer_norm_chain_becomes_one_operator_on_either_layout() {
        // Channels in the middle (as tract lays out the encoder) and last; a spread where eps counts.
        let cases =
            [(vec![2, 6, 197], 1, 3.0), (vec![5, 24], 1, 3.0), (vec![1, 3, 1], 1, 3.0), (vec![4, 16], 1, 0.003)];
        for (shape, axis, spread) in cases {
            let n = shape[axis];
            let gamma = ramp(n, 0.5, 1.5);
            let beta = ramp(n, -0.2, 0.3);
            let len = shape.iter().product();
            let xs: Vec<f32> = ramp(len, -4.0, 9.0).iter().map(|v| v * spread + 1.0).collect();
            let x = tensor1(&xs).into_shape(&shape).unwrap();
            let (want, got, fused, kept) = before_after(layer_norm_model(&shape, axis, &gamma, &beta), x);
            assert_eq!(fused, Fused { layer_norm: 1, ..Fused::default() }, "{shape:?}");
            assert!(!kept.nodes.iter().any(|n| n.op_is::<RmsNorm>()), "the chain is gone");
            assert_close(&got, &want, 2e-5);
            // And against the definition, in f64.
            let inner: usize = shape[axis + 1..].iter().product();
            for (o, block) in xs.chunks(n * inner).enumerate() {
                for j in 0..inner {
                    let col: Vec<f64> = (0..n).map(|i| f64::from(block[i * inner + j])).collect();
                    let mean = col.iter().sum::<f64>() / n as f64;
                    let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
                    for i in 0..n {
                        let w = (col[i] - mean) / (var + 1e-5).sqrt() * f64::from(gamma[i]) + f64::from(beta[i]);
                        let g = f64::from(got[o * n * inner + i * inner + j]);
                        assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{shape:?} [{o} {i} {j}]: {g} vs {w}");
                    }
                }
            }
        }
    }

    #[test]
    fn softmax_rows_equal_tracts_and_keep_nan_in_its_row() {
        let shape = [3, 4, 197];
        let mut xs: Vec<f32> = ramp(3 * 4 * 197, -30.0, 30.0);
        xs[197 * 5 + 11] = f32::NAN;
        xs[197 * 7] = 1e30;
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact(shape)).unwrap();
        let y = wire(&mut m, "softmax", Softmax::new(tvec![2], None, SoftmaxKind::Softmax), &[x]);
        m.select_output_outlets(&[y]).unwrap();
        let (want, got, fused, _) = before_after(m, tensor1(&xs).into_shape(&shape).unwrap());
        assert_eq!(fused, Fused { softmax: 1, ..Fused::default() });
        for (r, (g, w)) in got.chunks(197).zip(want.chunks(197)).enumerate() {
            if r == 5 {
                assert!(g.iter().all(|v| v.is_nan()), "the NaN row stays NaN");
                continue;
            }
            assert_close(g, w, 1e-6);
            assert!((g.iter().sum::<f32>() - 1.0).abs() < 1e-5, "row {r}");
        }
    }

    #[test]
    fn integer_products_dequantise_in_one_pass_exactly() {
        for (shape, scale_shape) in [([1, 6, 19], [1, 6, 1]), ([1, 19, 6], [1, 1, 6]), ([1, 5, 7], [1, 1, 1])] {
            let n: usize = shape.iter().product();
            let xs: Vec<i32> = (0..n as i32).map(|i| (i * 7919) % 20011 - 10000).collect();
            let ns: usize = scale_shape.iter().product();
            let mut m = TypedModel::default();
            let x = m.add_source("x", i32::fact(shape)).unwrap();
            let c = wire(&mut m, "cast", Cast { to: f32::datum_type() }, &[x]);
            let k = m.add_const("scale", tensor1(&ramp(ns, 1e-4, 3e-3)).into_shape(&scale_shape).unwrap()).unwrap();
            let y = wire(&mut m, "scaled", math::mul(), &[c, k]);
            m.select_output_outlets(&[y]).unwrap();
            let (want, got, fused, _) = before_after(m, tensor1(&xs).into_shape(&shape).unwrap());
            assert_eq!(fused, Fused { scale_i32: 1, ..Fused::default() });
            assert_eq!(got, want, "{shape:?} * {scale_shape:?}");
        }
    }

    #[test]
    fn gelu_and_residual_fold_into_the_dequantisation() {
        for residual in [false, true] {
            let shape = [6, 40];
            let mut m = TypedModel::default();
            let x = m.add_source("x", i32::fact(shape)).unwrap();
            let c = wire(&mut m, "cast", Cast { to: f32::datum_type() }, &[x]);
            let k = m.add_const("scale", tensor1(&ramp(40, 1e-3, 4e-3)).into_shape(&[1, 40]).unwrap()).unwrap();
            let y = wire(&mut m, "scaled", math::mul(), &[c, k]);
            let y = if residual {
                let r = m.add_source("r", f32::fact(shape)).unwrap();
                wire(&mut m, "sum", math::add(), &[r, y])
            } else {
                // The GELU chain of `gelu_model` on y.
                let g = gelu_model(&shape, false, 0.044715);
                let mut map = std::collections::HashMap::new();
                map.insert(g.input_outlets().unwrap()[0], y);
                for n in g.eval_order().unwrap().into_iter().skip(1) {
                    let node = g.node(n);
                    let ins: TVec<OutletId> = node.inputs.iter().map(|i| map[i]).collect();
                    map.insert(n.into(), m.wire_node(format!("g.{}", node.name), node.op.clone(), &ins).unwrap()[0]);
                }
                map[&g.output_outlets().unwrap()[0]]
            };
            m.select_output_outlets(&[y]).unwrap();
            // Values within +-4, where the chain of f32 operators is itself accurate (see above).
            let xs: Vec<i32> = (0..240).map(|i| (i * 7919) % 2001 - 1000).collect();
            let mut inputs = tvec![tensor1(&xs).into_shape(&shape).unwrap().into_tvalue()];
            if residual {
                inputs.push(tensor1(&ramp(240, -5.0, 5.0)).into_shape(&shape).unwrap().into_tvalue());
            }
            let run = |m: TypedModel| {
                let out = m.into_optimized().unwrap().into_runnable().unwrap().run(inputs.clone()).unwrap();
                out[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec()
            };
            let want = run(m.clone());
            let mut ours = m.into_decluttered().unwrap();
            let fused = rewrite(&mut ours).unwrap();
            assert_eq!((fused.scale_i32, fused.folded), (1, 1), "residual {residual}: {fused:?}");
            let then = if residual { Then::Add } else { Then::Gelu };
            assert!(ours.nodes.iter().any(|n| n.op_as::<ScaleI32>().is_some_and(|op| op.then == then)));
            assert_close(&run(ours), &want, 2e-6);
        }
    }

    #[test]
    fn exp_is_within_two_ulp_and_clamps() {
        let mut worst = 0f64;
        for i in 0..200_001 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let want = f64::from(x).exp();
            worst = worst.max((f64::from(exp(x)) - want).abs() / want);
        }
        assert!(worst < 2.5e-7, "largest relative error {worst:e}");
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(-1000.0) > 0.0 && exp(-1000.0) < 1e-37 && exp(1000.0).is_finite());
        assert_eq!(exp(0.0), 1.0);
    }
}
