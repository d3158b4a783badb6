"""scripts/perf.py: the FLOP count behind the floor, and percentiles as `anovit bench` takes them."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import perf


def tiny_graph():
    """Conv 3->4 (3x3, pad 1) on 8x8, ConvTranspose 4->2 (4x4, stride 2, pad 1) to 16x16, then a
    MatMul of the flattened map with a 256x5 matrix, the batch left dynamic."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "wc"),
        numpy_helper.from_array(rng.standard_normal((4, 2, 4, 4)).astype(np.float32), "wt"),
        numpy_helper.from_array(np.array([1, 2, 256], np.int64), "shape"),
        numpy_helper.from_array(rng.standard_normal((256, 5)).astype(np.float32), "wm"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "wc"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("ConvTranspose", ["c", "wt"], ["t"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["t", "shape"], ["r"]),
        helper.make_node("MatMul", ["r", "wm"], ["y"]),
    ]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_flops_count_every_product_with_the_batch_fixed():
    conv = 2 * (4 * 8 * 8) * (3 * 3 * 3)
    convt = 2 * (4 * 8 * 8) * (2 * 4 * 4)  # each input value meets Cout x kh x kw weights
    matmul = 2 * (2 * 5) * 256
    assert perf.count_flops(tiny_graph(), [1, 3, 8, 8]) == conv + convt + matmul


def test_percentiles_match_the_runtime():
    ms = [float(v) for v in range(100, 0, -1)]
    s = perf.summary(ms)
    assert (s["n"], s["median_ms"], s["p99_ms"], s["min_ms"]) == (100, 50.5, 99.0, 1.0)
    assert perf.nearest_rank([1.0, 2.0, 3.0], 50) == 2.0


def test_quick_run_measures_both_engines_side_by_side():
    """perf.py --quick end to end: anovit bench --serve beside onnxruntime, then anovit bench;
    it writes under target/perf, not docs/."""
    import json
    import subprocess
    import sys

    subprocess.run([sys.executable, str(perf.ROOT / "scripts" / "perf.py"), "--quick", "--models", "models/demo-f32",
                    "--threads", "1"], cwd=perf.ROOT, check=True, capture_output=True)
    f = json.loads((perf.ROOT / "target" / "perf" / "perf.json").read_text())
    (p,) = f["plan"]
    assert p["tract"]["n"] == p["onnxruntime"]["n"] == 4
    assert p["speed_vs_onnxruntime"] > 0
    # The f32 model's reconstruction in tract against onnxruntime's, on the input both timed.
    assert p["recon_rel_l2_vs_onnxruntime"] < 1e-5
    assert abs(f["flops_per_frame"] / 1e9 - 1.712) < 0.01, "the demo model's FLOPs (docs/MODEL.md)"
    assert f["loop"]["allocs_ours_per_frame"] == 0
    assert "## What the figures say" in (perf.ROOT / "target" / "perf" / "PERF.md").read_text()
