#!/usr/bin/env python3
"""The plan against onnxruntime, and the whole loop: writes docs/PERF.md and docs/perf.json.

    .venv/bin/python scripts/perf.py [--rounds 10] [--runs 10] [--quick]

tract runs in `anovit bench --serve` (built with `cargo build --release` first), onnxruntime in
this process, on the same ONNX files, the same input (the plan's own, written by anovit), at the
same thread counts; both stay loaded and warm, and their runs are interleaved block by block
(each round: every configuration, tract then onnxruntime or the other way round), so that both
see the machine in the same state. Then `anovit bench` measures what only the runtime has: the
whole loop per frame, allocations, peak RSS, load time, the peak FLOP rate of one core and
tract's operator profile. FLOPs per frame are counted from the ONNX graph.
"""

import argparse
import collections
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def nearest_rank(sorted_ms, p):
    """p-th percentile by nearest rank, as `anovit bench` computes it."""
    rank = max(1, -(-len(sorted_ms) * p // 100))
    return sorted_ms[rank - 1]


def summary(ms):
    s = sorted(ms)
    return {"n": len(s), "median_ms": statistics.median(s), "p99_ms": nearest_rank(s, 99),
            "min_ms": s[0], "mean_ms": sum(s) / len(s)}


def count_flops(model, input_shape):
    """Multiply-adds x 2 of the products in an ONNX graph: MatMul, Gemm, Conv, ConvTranspose
    (and their quantised forms), shapes from ONNX shape inference. What the floor is made of."""
    import onnx
    from onnx import numpy_helper, shape_inference

    # The input's dynamic sizes (batch) fixed first, so that every shape is known.
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(dims, input_shape):
        d.dim_value = v
    m = shape_inference.infer_shapes(model, data_prop=True)
    shapes = {}
    for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if dims and all(d > 0 for d in dims):
            shapes[vi.name] = dims
    for t in m.graph.initializer:
        shapes[t.name] = list(numpy_helper.to_array(t).shape)

    def attr(node, name, default):
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    total = 0
    for n in m.graph.node:
        op = n.op_type
        if op in ("MatMul", "MatMulInteger", "QLinearMatMul", "Gemm"):
            a = shapes.get(n.input[0])
            out = shapes.get(n.output[0])
            if a is None or out is None:
                raise ValueError(f"no shape for {n.name} ({op}): cannot count its FLOPs")
            k = a[-1] if not (op == "Gemm" and attr(n, "transA", 0)) else a[0]
            total += 2 * int(np.prod(out)) * k
        elif op in ("Conv", "ConvInteger", "QLinearConv"):
            w = shapes[n.input[3 if op == "QLinearConv" else 1]]
            out = shapes[n.output[0]]
            total += 2 * int(np.prod(out)) * int(np.prod(w[1:]))
        elif op == "ConvTranspose":
            x, w = shapes[n.input[0]], shapes[n.input[1]]
            # Every input value meets Cout/group x kh x kw weights (w is Cin x Cout/group x kh x kw).
            total += 2 * int(np.prod(x)) * int(np.prod(w[1:]))
    return total


class Tract:
    """`anovit bench --serve`: the plans, loaded once, timed on request."""

    def __init__(self, exe, models, threads, input_path, recon_dir, kernel="auto"):
        cmd = [str(exe), "--int8-kernel", kernel, "bench", "--serve", "--threads", ",".join(map(str, threads)),
               "--input-out", str(input_path), "--recon-out", str(recon_dir)]
        for m in models:
            cmd += ["--model", str(m)]
        self.p = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.p.stdout.readline()
        if not line:
            raise SystemExit("anovit bench --serve ended before it was ready (see its error above)")
        self.configs = [{**c, "int8_kernel": kernel} for c in json.loads(line)["configs"]]

    def run(self, i, runs):
        self.p.stdin.write(f"{i} {runs}\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())

    def close(self):
        self.p.stdin.close()
        if self.p.wait() != 0:
            raise SystemExit("anovit bench --serve failed")


def ort_session(path, threads, profile=False):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.enable_profiling = profile
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_times(sess, feed, runs):
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        out.append((time.perf_counter() - t) * 1e3)
    return out


def ort_profile(path, feed, runs):
    """onnxruntime's own per-operator times (ms per run), largest first."""
    sess = ort_session(path, 1, profile=True)
    ort_times(sess, feed, 3)
    ort_times(sess, feed, runs)
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    per_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    n = runs + 3
    total = sum(per_op.values())
    return [{"op": op, "ms": us / n / 1e3, "share": us / total} for op, us in per_op.most_common()]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["models/demo-f32", "models/demo-int8"])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--runs", type=int, default=10, help="runs per configuration, engine and round")
    ap.add_argument("--frames", type=int, default=300, help="frames through the whole loop")
    ap.add_argument("--int8-kernels", default="auto,narrow,wide",
                    help="`anovit --int8-kernel` choices to time the int8 models with, one tract process each")
    ap.add_argument("--quick", action="store_true", help="few runs, nothing written to docs/ (a smoke test)")
    ap.add_argument("--out", default="docs", help="where PERF.md and perf.json go")
    a = ap.parse_args()
    if a.quick:
        a.rounds, a.runs, a.frames = 2, 2, 20
    threads = [int(t) for t in a.threads.split(",")]
    models = [Path(m) for m in a.models]  # relative to ROOT, where every command runs
    work = ROOT / "target" / "perf"
    work.mkdir(parents=True, exist_ok=True)

    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    exe = ROOT / "target" / "release" / "anovit"

    import onnx

    manifests = [json.loads((ROOT / m / "manifest.json").read_text()) for m in models]
    onnx_files = [ROOT / m / man["model"]["file"] for m, man in zip(models, manifests)]
    flops = count_flops(onnx.load(str(onnx_files[0])), manifests[0]["input"]["shape"])

    # Plan latency, interleaved.
    # One tract process per int8 kernel choice (tract reads it once per process): the first with
    # every model, the others with the int8 models only.
    kernels = a.int8_kernels.split(",")
    int8_models = [m for m, man in zip(models, manifests) if man["model"]["precision"] == "int8"]
    tracts = []
    for k, kernel in enumerate(kernels):
        ms = models if k == 0 else int8_models
        if ms:
            tracts.append(Tract(exe, ms, threads, work / f"input-{kernel}.f32", work / f"recon-{kernel}", kernel))
    entries = [(t, i, c) for t in tracts for i, c in enumerate(t.configs)]
    shape = manifests[0]["input"]["shape"]
    x = np.fromfile(work / f"input-{kernels[0]}.f32", dtype="<f4").reshape(shape)
    sessions, feeds = [], []
    for t, j, c in entries:
        i = [m.name for m in models].index(c["model"])
        s = ort_session(onnx_files[i], c["threads"])
        sessions.append(s)
        feeds.append({s.get_inputs()[0].name: x})
        ort_times(s, feeds[-1], 3)
        # Parity on the very input both engines are timed on: tract's reconstruction against
        # onnxruntime's (relative L2).
        want = s.run([manifests[i]["outputs"]["reconstruction"]], feeds[-1])[0].ravel()
        got = np.fromfile(work / f"recon-{c['int8_kernel']}" / f"{j}.f32", dtype="<f4")
        c["recon_rel_l2_vs_onnxruntime"] = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    samples = [{"tract": [], "onnxruntime": []} for _ in entries]
    for r in range(a.rounds):
        for i, (t, j, _) in enumerate(entries):
            order = ["tract", "onnxruntime"] if (r + i) % 2 == 0 else ["onnxruntime", "tract"]
            for engine in order:
                # A pause lets the other engine's worker threads stop spinning.
                time.sleep(0.05)
                ms = t.run(j, a.runs) if engine == "tract" else ort_times(sessions[i], feeds[i], a.runs)
                samples[i][engine] += ms
    for t in tracts:
        t.close()
    plans = []
    for (_, _, c), s in zip(entries, samples):
        t, o = summary(s["tract"]), summary(s["onnxruntime"])
        plans.append({**c, "tract": t, "onnxruntime": o, "speed_vs_onnxruntime": o["median_ms"] / t["median_ms"]})
        print(f"{label(c)} {c['threads']} thread(s): tract {t['median_ms']:.2f} ms, onnxruntime {o['median_ms']:.2f} ms, "
              f"tract speed / onnxruntime speed {o['median_ms'] / t['median_ms']:.2f}", flush=True)
    del sessions

    # Everything only the runtime has.
    bench_json = work / "bench.json"
    # The profiles with the int8 kernel that ran faster above.
    fast8 = fastest(plans, "int8", 1)
    kernel = fast8["int8_kernel"] if fast8 else "auto"
    cmd = [str(exe), "--int8-kernel", kernel, "bench", "--threads", "1", "--json", str(bench_json), "--frames", str(a.frames),
           "--rounds", "1", "--runs", "3"] + sum((["--model", str(m)] for m in models), [])
    if a.quick:
        cmd += ["--rss-parts", "20", "--profile", "3"]
    else:
        # Load times of each model's compiled plan beside its ONNX bundle (timed as --model).
        for m in models:
            plan_dir = Path("target/perf") / f"{m.name}-plan"
            subprocess.run([str(exe), "compile", "--model", str(m), "--out", str(plan_dir)], cwd=ROOT, check=True,
                           stdout=subprocess.DEVNULL)
            cmd += ["--load", str(plan_dir)]
    subprocess.run(cmd, cwd=ROOT, check=True)
    bench = json.loads(bench_json.read_text())
    # The same f32 plan with tract's own lowering of the decoder's transposed convolutions and of
    # broadcasts (ANOVIT_TRACT_OPS), profiled right after: what anovit's operators replace.
    own_json = work / "bench-tract-ops.json"
    subprocess.run([str(exe), "bench", "--threads", "1", "--json", str(own_json), "--frames", "0", "--rss-parts", "0",
                    "--rounds", "3", "--runs", "3", "--model", str(models[0]), "--profile", "3" if a.quick else "20"],
                   cwd=ROOT, check=True, env={**os.environ, "ANOVIT_TRACT_OPS": "1"})
    tract_ops = json.loads(own_json.read_text())
    ort_ops = ort_profile(onnx_files[0], feeds[0], 3 if a.quick else 20)

    figures = {"machine": {**bench["machine"], "python": platform.python_version(),
                           "onnxruntime": __import__("onnxruntime").__version__},
               "flops_per_frame": flops, "peak_gflops_one_core": bench["peak_gflops_one_core"],
               "plan": plans, "loop": bench["loop"], "load": bench["load"], "peak_rss": bench["peak_rss"],
               "profile": {"tract": bench["profile"], "onnxruntime": {"model": models[0].name, "ops": ort_ops}},
               "profiles_tract": bench.get("profiles", []),
               "tract_ops_only": {"plan": tract_ops["plan"], "profile": tract_ops["profile"]},
               "command": "scripts/perf.py " + " ".join(sys.argv[1:])}
    out = work if a.quick else ROOT / a.out
    (out / "perf.json").write_text(json.dumps(figures, indent=2) + "\n")
    (out / "PERF.md").write_text(render(figures))
    print(f"wrote {out / 'PERF.md'} and {out / 'perf.json'}")


def label(p):
    """A configuration's name in the tables: the model, and the int8 kernel where one was chosen."""
    kernel = p.get("int8_kernel", "auto")
    return p["model"] + (f", {kernel} int8 kernel" if p["precision"] == "int8" and kernel != "auto" else "")


def fastest(plans, precision, threads):
    """The configuration of that precision and thread count tract ran fastest."""
    ps = [p for p in plans if p["precision"] == precision and p["threads"] == threads]
    return min(ps, key=lambda p: p["tract"]["median_ms"]) if ps else None


def render(f):
    m, peak, loop = f["machine"], f["peak_gflops_one_core"], f["loop"]
    gflop = f["flops_per_frame"] / 1e9
    floor_ms = gflop / peak["gflops"] * 1e3
    lines = [
        "# Performance: the plan against onnxruntime, the whole loop, memory",
        "",
        "Regenerate: `.venv/bin/python scripts/perf.py` (about 3 minutes; it builds the release binary,",
        "runs `anovit bench --serve` beside onnxruntime, then `anovit bench`). Raw figures: `docs/perf.json`.",
        "",
        f"Machine: {m['cpu']}, {m['arch']}, {m['cores']} cores (load average at start {m['loadavg_at_start']}: a shared",
        f"machine, so figures move by 10-20 % between runs; ratios are measured side by side in one run); tract {m['tract']},",
        f"onnxruntime {m['onnxruntime']}, anovit {m['anovit']}.",
        "",
        "## The plan: tract against onnxruntime (same ONNX file, same input, same threads)",
        "",
        f"Both engines loaded and warm, runs interleaved in blocks ({f['plan'][0]['tract']['n']} runs each). The",
        "speed ratio is onnxruntime's median over tract's: above 1.0, tract is faster.",
        "",
        "| model | threads | tract median | tract p99 | onnxruntime median | onnxruntime p99 | tract speed / onnxruntime |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in f["plan"]:
        t, o = p["tract"], p["onnxruntime"]
        lines.append(f"| {label(p)} ({p['precision']}) | {p['threads']} | {t['median_ms']:.2f} ms | {t['p99_ms']:.2f} ms | "
                     f"{o['median_ms']:.2f} ms | {o['p99_ms']:.2f} ms | {p['speed_vs_onnxruntime']:.2f} |")
    lines += ["", *headline(f["plan"]), *int8_speedup(f["plan"])]
    parity = [f"{label(p)} {p['threads']} thread(s) {p['recon_rel_l2_vs_onnxruntime']:.1e}"
              for p in f["plan"] if "recon_rel_l2_vs_onnxruntime" in p]
    if parity:
        lines.append("- Parity on that same input, tract's reconstruction against onnxruntime's (relative L2; int8: "
                     "tract also quantises the decoder, onnxruntime's file does not): " + ", ".join(parity) + ".")
    lines += [
        "",
        "## The floor",
        "",
        f"{gflop:.3f} GFLOP per frame (multiply-adds x 2 of every MatMul, Gemm, Conv and ConvTranspose of the",
        f"f32 graph). One core's peak, measured by `anovit bench` ({peak['isa']}, independent multiply-adds):",
        f"{peak['gflops']:.1f} GFLOP/s. Floor: **{floor_ms:.2f} ms** per frame on one core.",
        "",
        "| engine, 1 thread | median | floor / median (share of peak reached) |",
        "|---|---|---|",
    ]
    for p in f["plan"]:
        if p["threads"] == 1:
            # A second int8 kernel is tract's alone (onnxruntime was timed again beside it).
            for eng in ("tract", "onnxruntime")[: 1 if label(p) != p["model"] else 2]:
                med = p[eng]["median_ms"]
                lines.append(f"| {eng}, {label(p)} | {med:.2f} ms | {100 * floor_ms / med:.0f} % |")
    lines += [
        "",
        "## The whole loop (`anovit bench`, f32 plan, 1 thread, capture in the loop: the default)",
        "",
        f"{loop['frames']} frames from a memory camera that delivers {loop['camera'][0]}x{loop['camera'][1]} YUYV (copied out of its",
        "ring every frame, as the V4L2 source does), through preprocessing, the plan, scoring, the decision, the reject",
        "line, the health and alarm lines, the status screen and the event log, as `anovit run` wires them.",
        "",
        "| stage | median per frame | mean |",
        "|---|---|---|",
    ]
    for key, name in [("capture", "capture (copy out of the camera ring)"), ("preprocess", "preprocess (YUYV sampled, converted, resized, normalised)"), ("infer", "plan"),
                      ("score", "anomaly map and score"), ("output", "decide, actuate, display, log"),
                      ("around", "**everything but the plan**"), ("latency", "**capture to verdict**")]:
        lines.append(f"| {name} | {loop[key]['median_ms']:.3f} ms | {loop[key]['mean_ms']:.3f} ms |")
    lines += [
        "",
        f"- Around the plan: **{100 * loop['around_share']:.1f} %** of the plan's time per frame (means).",
        f"- Sustained: **{loop['fps']:.1f} frames per second**; latency p50 {loop['latency']['median_ms']:.2f} ms, p99 "
        f"{loop['latency']['p99_ms']:.2f} ms, **p99/p50 {loop['p99_over_p50']:.3f}**.",
        f"- Heap allocations per frame: **{loop['allocs_ours_per_frame']:g} in anovit's code**, "
        f"{loop['allocs_engine_per_frame']:g} inside tract (its plan allocates its intermediate tensors each run).",
        f"- Peak RSS of `{f['peak_rss']['command']}`: **{f['peak_rss']['bytes'] / 1e6:.1f} MB**.",
        "",
        "Load to first result (median of 3):",
        "",
        "| bundle | format | median |",
        "|---|---|---|",
    ]
    for ld in f["load"]:
        lines.append(f"| `{Path(ld['bundle']).name}` | {ld['format']} | {ld['load_to_first_result']['median_ms']:.0f} ms |")
    lines += ["", "## Where the time goes (f32, 1 thread, operators at 1 % or more)", "",
              "| tract operator | ms per run | share | | onnxruntime operator | ms per run | share |", "|---|---|---|---|---|---|---|"]
    t_ops = [o for o in f["profile"]["tract"]["ops"] if o["share"] >= 0.01]
    o_ops = [o for o in f["profile"]["onnxruntime"]["ops"] if o["share"] >= 0.01]
    for i in range(max(len(t_ops), len(o_ops))):
        row = []
        for ops in (t_ops, o_ops):
            row += [f"`{ops[i]['op']}`", f"{ops[i]['ms']:.2f}", f"{100 * ops[i]['share']:.1f} %"] if i < len(ops) else ["", "", ""]
        lines.append("| " + " | ".join(row[:3]) + " | | " + " | ".join(row[3:]) + " |")
    lines += ["", *analysis(f), ""]
    return "\n".join(lines)


def headline(plans):
    """The issue's measure: tract against onnxruntime for the faster of tract's f32 and int8, per
    thread count, with the int8 kernel that was faster."""
    out = []
    for threads in sorted({p["threads"] for p in plans}):
        best = min((p for p in plans if p["threads"] == threads), key=lambda p: p["tract"]["median_ms"])
        out.append(f"- Faster of tract's f32 and int8 at {threads} thread(s): {label(best)} ({best['precision']}), "
                   f"**{best['speed_vs_onnxruntime']:.2f}x** onnxruntime's speed on the same model.")
    for threads in sorted({p["threads"] for p in plans}):
        ks = {p.get("int8_kernel", "auto"): p for p in plans if p["precision"] == "int8" and p["threads"] == threads}
        if len(ks) > 1 and "auto" in ks:
            others = ", ".join(f"{k} {p['tract']['median_ms']:.2f} ms" for k, p in ks.items() if k != "auto")
            out.append(f"- int8 kernel, {threads} thread(s): the default (`auto`) {ks['auto']['tract']['median_ms']:.2f} ms, "
                       f"{others} (`anovit --int8-kernel`; `auto` is the wide kernel on AMD CPUs with AVX-512 VNNI, "
                       "else tract's choice: docs/DEPLOY.md).")
    return out


def int8_speedup(plans):
    """Each engine's int8 speed over its f32 speed, per thread count, from the same interleaved runs
    (tract's faster int8 kernel)."""
    out = []
    for threads in sorted({p["threads"] for p in plans}):
        f32, int8 = fastest(plans, "f32", threads), fastest(plans, "int8", threads)
        if f32 and int8:
            speed = {eng: f32[eng]["median_ms"] / int8[eng]["median_ms"] for eng in ("tract", "onnxruntime")}
            out.append(f"- int8 over f32, {threads} thread(s): tract **{speed['tract']:.2f}x**, onnxruntime "
                       f"{speed['onnxruntime']:.2f}x (f32 median over int8 median, same run; tract runs the int8 "
                       "model in its integer form, src/quant.rs).")
    return out


# Operators that carry the products (MatMul, Gemm, Conv, ConvTranspose) in each engine's profile.
PRODUCT_OPS = {"tract": {"OptMatMul"}, "onnxruntime": {"Gemm", "MatMul", "FusedMatMul", "Conv", "ConvTranspose"}}


def analysis(f):
    """What the figures say, computed from them."""
    gflop = f["flops_per_frame"] / 1e9
    peak = f["peak_gflops_one_core"]["gflops"]
    rates = {}
    for eng in ("tract", "onnxruntime"):
        ms = sum(o["ms"] for o in f["profile"][eng]["ops"] if o["op"].split(" (")[0] in PRODUCT_OPS[eng])
        rates[eng] = (ms, gflop / ms * 1e3 if ms else 0.0)
    t_ops = {o["op"]: o for o in f["profile"]["tract"]["ops"]}
    best = {prec: fastest(f["plan"], prec, 1) for prec in ("f32", "int8") if fastest(f["plan"], prec, 1)}
    loop, ahead = f["loop"], f.get("loop_prefetch")
    rest = {eng: sum(o["ms"] for o in f["profile"][eng]["ops"]) - rates[eng][0] for eng in rates}
    out = [
        "## What the figures say",
        "",
        "From the operator profiles above (profiled runs, a little slower than the timed ones):",
        "",
        f"- **Products**: tract {rates['tract'][0]:.1f} ms in `OptMatMul` (every product, including the convolutions' "
        f"and transposed convolutions'), {rates['tract'][1]:.0f} GFLOP/s or {100 * rates['tract'][1] / peak:.0f} % of "
        f"the core's peak; onnxruntime {rates['onnxruntime'][0]:.1f} ms in Gemm/MatMul/Conv/ConvTranspose (its "
        f"ConvTranspose includes the overlap-add), {rates['onnxruntime'][1]:.0f} GFLOP/s ({100 * rates['onnxruntime'][1] / peak:.0f} %). "
        "No setting of tract 0.23.9 moved its f32 kernels (forcing the AVX2 kernels with `TRACT_CPU_ISA=-avx512f`, or "
        "`TRACT_AVX512_FMA_UNITS=2`, changed nothing measurable); its int8 kernel is a choice (`--int8-kernel`, above).",
        f"- **Everything else**: tract {rest['tract']:.1f} ms, onnxruntime {rest['onnxruntime']:.1f} ms. tract's share of "
        "it is in the operators below; onnxruntime fuses LayerNorm, the attention's scaling and the products' packing "
        "into its kernels.",
    ]
    own = f.get("tract_ops_only")
    if own:
        o_ops = {o["op"]: o["ms"] for o in own["profile"]["ops"]}
        mine = {o["op"]: o["ms"] for o in f["profile"]["tract"]["ops"]}
        plan_own = next(p["latency"]["median_ms"] for p in own["plan"] if p["threads"] == 1)
        bsub = sum(v for k, v in mine.items() if k.startswith("Broadcast"))
        out.append(
            f"- **anovit's operators in the plan** (`src/deconv.rs`, `src/broadcast.rs`; profiled against the same f32 "
            f"model loaded with `ANOVIT_TRACT_OPS=1`, tract's own lowering, in the same script run): the decoder's "
            f"overlap-add `OverlapAdd` {mine.get('OverlapAdd', 0):.2f} ms against tract's `DeconvSum` "
            f"{o_ops.get('DeconvSum', 0):.2f} ms (a generic loop; tract's fast path needs kernel = stride); LayerNorm's "
            f"centring over 197 tokens, tract's generic `Sub` {o_ops.get('Sub', 0):.2f} ms (its vector kernels need a row "
            f"length that is a multiple of 16), is inside the fused `LayerNorm` below (broadcasts left to "
            f"`src/broadcast.rs`: {bsub:.2f} ms). The f32 plan with tract's own lowering "
            f"ran at a median {plan_own:.2f} ms in its run (with anovit's: {best['f32']['tract']['median_ms']:.2f} ms "
            "above).")
        fused = ", ".join(f"`{k}` {mine[k]:.2f} ms" for k in ("LayerNorm", "Gelu", "SoftmaxRows") if k in mine)
        theirs = ", ".join(f"`{k}` {o_ops[k]:.2f} ms" for k in ("RmsNorm", "Reduce<Sum>", "Softmax", "Tanh", "Square")
                           if k in o_ops)
        if fused:
            out.append(f"- **Fused at load** (`src/fuse.rs`: LayerNorm, the tanh GELU and the attention's softmax each one "
                       f"operator): {fused}; tract's own lowering of the same runs, among others, {theirs} and the "
                       "GELU's and LayerNorm's scale-and-shift chains.")
    extra = [f"`{k}` {t_ops[k]['ms']:.2f} ms" for k in ("OptMatMulPack",) if k in t_ops]
    if extra:
        out.append(f"- Then the packing of activations before each product ({', '.join(extra)}), tract-core's.")
    if "int8" in best and "f32" in best:
        t8, t32 = best["int8"]["tract"]["median_ms"], best["f32"]["tract"]["median_ms"]
        line = (f"- **int8**: tract {t8:.1f} ms against {t32:.1f} ms for f32 ({t32 / t8:.2f}x; onnxruntime "
                f"{best['f32']['onnxruntime']['median_ms'] / best['int8']['onnxruntime']['median_ms']:.2f}x). Every "
                "weight product but the patch embedding and the decoder's last stage runs as integers: the encoder's "
                "from onnxruntime's file (`src/quant.rs`), the decoder's with activations quantised per frame "
                "(`src/deconv.rs`; onnxruntime keeps its decoder f32; the last stage, 32 channels in, is faster in f32)")
        parts = {p["precision"]: {o["op"]: o["ms"] for o in p["ops"]} for p in f.get("profiles_tract", [])}
        if {"f32", "int8"} <= parts.keys():
            enc = [parts[k].get("OptMatMul (blocks)", 0.0) for k in ("f32", "int8")]
            dec = [parts[k].get("OptMatMul (decoder)", 0.0) for k in ("f32", "int8")]
            att = parts["int8"].get("OptMatMul (blocks, attention)", 0.0)
            line += (f": encoder {enc[0]:.1f} -> {enc[1]:.1f} ms ({enc[0] / max(enc[1], 1e-9):.1f}x), decoder "
                     f"{dec[0]:.1f} -> {dec[1]:.1f} ms ({dec[0] / max(dec[1], 1e-9):.1f}x). The attention's activation x "
                     f"activation products ({att:.1f} ms) stay f32, as in onnxruntime's file.")
        else:
            line += "."
        out.append(line)
    two = [p for p in f["plan"] if p["threads"] == 2 and p["precision"] == "f32"]
    if two and "f32" in best:
        out.append(f"- **Two threads**: tract f32 {best['f32']['tract']['median_ms']:.1f} -> {two[0]['tract']['median_ms']:.1f} ms "
                   f"(`multithread-mm`, products split above 16 panels instead of tract's 64); onnxruntime "
                   f"{best['f32']['onnxruntime']['median_ms']:.1f} -> {two[0]['onnxruntime']['median_ms']:.1f} ms. On this "
                   "2-core shared machine the second core is also where the other engine's idle threads and the host run.")
    if ahead:
        out.append(
            f"- **Capture one frame ahead** (`[camera] prefetch = true`, off by default): the capture thread copies "
            f"the next frame while the loop judges this one, so the loop's own capture time drops from "
            f"{loop['capture']['median_ms']:.3f} to {ahead['capture']['median_ms']:.3f} ms and its time around the plan from "
            f"{100 * loop['around_share']:.1f} % to {100 * ahead['around_share']:.1f} %; {loop['fps']:.1f} -> "
            f"{ahead['fps']:.1f} frames per second. The memory camera always has a frame ready (a camera faster than the "
            f"loop), so a frame captured ahead waits for the loop: latency p50 {loop['latency']['median_ms']:.1f} -> "
            f"{ahead['latency']['median_ms']:.1f} ms. With YUYV kept packed (the preprocessing converts only the pixels "
            "it samples) capture costs the loop little, so prefetch is worth it only where capture is expensive: MJPEG "
            "decoding, or a board whose plan runs on one core while others idle.")
    return out


if __name__ == "__main__":
    main()
