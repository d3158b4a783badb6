//! f32 arithmetic with one operand broadcast, for the shapes tract's fast paths refuse.
//!
//! tract's optimiser gives a binary operator vector kernels when the smaller operand is one value
//! per row, or a row whose length is a multiple of the vector width (16 with AVX-512); anything
//! else stays a generic `TypedBinOp` at about 4 ns per element. The encoder's LayerNorm centring,
//! `x - mean` on `[1, 192, 197] - [1, 1, 197]` (197 tokens: the patches and the class token), is
//! such a case: 2 ms per frame, 9 % of an int8 frame. [`rewrite`] runs on the optimised plan (it
//! changes no graph that is written to a plan file) and gives every remaining f32 `TypedBinOp`
//! whose output has the larger operand's shape to [`BroadcastBin`], which walks the output row by
//! row with vector loops.

use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::math::{Add, Div, Mul, Sub};

/// The operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arith {
    /// a + b
    Add,
    /// a - b
    Sub,
    /// a * b
    Mul,
    /// a / b
    Div,
}

/// `a (op) b` in f32 where `b` broadcasts onto `a`'s shape (same rank, each axis `a`'s or 1),
/// or, for `Add` and `Mul`, `a` onto `b`'s.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BroadcastBin {
    /// The operation.
    pub op: Arith,
}

crate::simd::multiversion! {
    /// `out[i] = big[i] (op) small[i]` (small one row), or `small[0]` for every i when `small` has
    /// one value.
    fn row(op: Arith, out: &mut [f32], big: &[f32], small: &[f32]) {
        macro_rules! each {
            ($f:expr) => {
                if let [s] = small {
                    let s = *s;
                    out.iter_mut().zip(big).for_each(|(o, a)| *o = $f(*a, s));
                } else {
                    out.iter_mut().zip(big).zip(small).for_each(|((o, a), b)| *o = $f(*a, *b));
                }
            };
        }
        match op {
            Arith::Add => each!(|a: f32, b: f32| a + b),
            Arith::Sub => each!(|a: f32, b: f32| a - b),
            Arith::Mul => each!(|a: f32, b: f32| a * b),
            Arith::Div => each!(|a: f32, b: f32| a / b),
        }
    }
}

/// Calls `f(r, offset, len)` for each row `r` (last-axis run) of a tensor of `shape`, with the
/// slice `offset..offset + len` of a tensor of `small` shape that broadcasts onto that row (same
/// rank, each axis `shape`'s or 1; `len` is 1 when the last axis broadcasts).
pub(crate) fn for_each_row(
    shape: &[usize],
    small: &[usize],
    mut f: impl FnMut(usize, usize, usize),
) -> TractResult<()> {
    let rank = shape.len();
    ensure!(small.len() == rank, "broadcast: ranks differ");
    let last = shape.last().copied().unwrap_or(1).max(1);
    let small_last = small.last().copied().unwrap_or(1);
    // The small operand's strides, 0 along its broadcast axes.
    let mut strides = vec![0usize; rank];
    let mut acc = 1;
    for ax in (0..rank).rev() {
        if small[ax] != 1 {
            strides[ax] = acc;
        }
        acc *= small[ax];
    }
    let rows = shape.iter().product::<usize>() / last;
    let mut index = vec![0usize; rank.saturating_sub(1)];
    for r in 0..rows {
        if r > 0 {
            // Next row's index over the leading axes.
            for ax in (0..index.len()).rev() {
                index[ax] += 1;
                if index[ax] < shape[ax] {
                    break;
                }
                index[ax] = 0;
            }
        }
        let off: usize = index.iter().zip(&strides).map(|(i, s)| i * s).sum();
        f(r, off, small_last);
    }
    Ok(())
}

impl BroadcastBin {
    fn apply(&self, big: &Tensor, small: &Tensor) -> TractResult<Tensor> {
        let shape = big.shape();
        let last = shape.last().copied().unwrap_or(1).max(1);
        let big_ram = big.try_as_plain_ram()?;
        let (bv, sv) = (big_ram.as_slice::<f32>()?, small.try_as_plain_ram()?);
        let sv = sv.as_slice::<f32>()?;
        let mut out = unsafe { Tensor::uninitialized::<f32>(shape)? };
        {
            let mut o = out.try_as_plain_ram_mut()?;
            let o = o.as_slice_mut::<f32>()?;
            for_each_row(shape, small.shape(), |r, off, len| {
                let a = r * last;
                row(self.op, &mut o[a..a + last], &bv[a..a + last], &sv[off..off + len]);
            })?;
        }
        Ok(out)
    }
}

impl Op for BroadcastBin {
    fn name(&self) -> StaticName {
        format!("Broadcast{:?}", self.op).into()
    }
    op_as_typed_op!();
}

impl EvalOp for BroadcastBin {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (a, b) = (&inputs[0], &inputs[1]);
        let out = if a.len() >= b.len() { self.apply(a, b)? } else { self.apply(b, a)? };
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for BroadcastBin {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (a, b) = (inputs[0], inputs[1]);
        let big = if fits(&b.shape, &a.shape) {
            a
        } else if matches!(self.op, Arith::Add | Arith::Mul) && fits(&a.shape, &b.shape) {
            b
        } else {
            bail!("BroadcastBin {:?}: {:?} and {:?} are not a broadcast onto one of them", self.op, a.shape, b.shape)
        };
        Ok(tvec!(f32::fact(big.shape.clone())))
    }
    as_op!();
}

/// Whether `small` broadcasts onto `big` (same rank, each axis equal or 1), and is not equal.
fn fits(small: &ShapeFact, big: &ShapeFact) -> bool {
    small.rank() == big.rank() && small.iter().zip(big.iter()).all(|(s, b)| s == b || s.is_one()) && small != big
}

/// Replaces the optimised plan's generic f32 binary operators of a handled shape (module doc).
/// Returns how many; none under `ANOVIT_TRACT_OPS` ([`crate::model::tract_ops_only`]).
pub fn rewrite(model: &mut TypedModel) -> TractResult<usize> {
    if crate::model::tract_ops_only() {
        return Ok(0);
    }
    let mut n = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(bin) = node.op_as::<TypedBinOp>() else { continue };
        let op = if bin.0.is::<Add>() {
            Arith::Add
        } else if bin.0.is::<Sub>() {
            Arith::Sub
        } else if bin.0.is::<Mul>() {
            Arith::Mul
        } else if bin.0.is::<Div>() {
            Arith::Div
        } else {
            continue;
        };
        let facts = model.node_input_facts(id)?;
        let out = model.outlet_fact(id.into())?;
        let f32s = facts.iter().chain([&out]).all(|f| f.datum_type == f32::datum_type());
        let concrete = facts.iter().all(|f| f.shape.as_concrete().is_some());
        let new = BroadcastBin { op };
        let handled = f32s && concrete && node.inputs.len() == 2 && new.output_facts(&facts).is_ok();
        drop(facts);
        if !handled {
            continue;
        }
        let patch = TypedModelPatch::replace_single_op(model, node, &node.inputs, new)?;
        patch.apply(model)?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_both(op: Box<dyn tract_core::ops::binary::BinMiniOp>, a: Tensor, b: Tensor) -> (Tensor, Tensor, usize) {
        let mut model = TypedModel::default();
        let x = model.add_source("a", f32::fact(a.shape())).unwrap();
        let y = model.add_source("b", f32::fact(b.shape())).unwrap();
        let z = model.wire_node("op", TypedBinOp(op, None), &[x, y]).unwrap();
        model.select_output_outlets(&z).unwrap();
        let inputs = tvec!(a.into_tvalue(), b.into_tvalue());
        let want = model.clone().into_runnable().unwrap().run(inputs.clone()).unwrap().remove(0).into_tensor();
        let n = rewrite(&mut model).unwrap();
        let got = model.into_runnable().unwrap().run(inputs).unwrap().remove(0).into_tensor();
        (got, want, n)
    }

    fn ramp(shape: &[usize], k: f32) -> Tensor {
        let n: usize = shape.iter().product();
        tensor1(&(0..n).map(|i| (i as f32 * k).sin() + 1.5).collect::<Vec<_>>()).into_shape(shape).unwrap()
    }

    #[test]
    fn equals_tracts_generic_operator_for_each_broadcast() {
        use tract_core::ops::math::{add, div, mul, sub};
        let cases: Vec<(&[usize], &[usize])> = vec![
            (&[1, 192, 197], &[1, 1, 197]), // LayerNorm centring
            (&[2, 5, 7], &[2, 5, 1]),
            (&[3, 4, 5], &[1, 4, 1]),
            (&[6, 9], &[1, 9]),
            (&[4, 1, 3], &[4, 1, 1]),
        ];
        for (sa, sb) in cases {
            for (name, op) in [("add", add()), ("sub", sub()), ("mul", mul()), ("div", div())] {
                let (got, want, n) = run_both(op.0, ramp(sa, 0.37), ramp(sb, 0.91));
                assert_eq!(n, 1, "{name} {sa:?} {sb:?}");
                assert_eq!(got, want, "{name} {sa:?} {sb:?}");
            }
            // The broadcast operand first: only commutative operators are taken.
            let (got, want, n) = run_both(mul().0, ramp(sb, 0.5), ramp(sa, 0.2));
            assert_eq!((n, got), (1, want), "mul {sb:?} {sa:?}");
            let (_, _, n) = run_both(sub().0, ramp(sb, 0.5), ramp(sa, 0.2));
            assert_eq!(n, 0, "sub with the broadcast operand first stays tract's");
        }
    }
}
