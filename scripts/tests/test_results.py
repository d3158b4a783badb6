"""scripts/results.py: the rows of docs/results.json and the page section, from run summaries."""

import results

KEYS = {"dataset", "model", "precision", "seed", "image_auroc", "pixel_auroc", "aupro", "escapes", "defective",
        "false_rejects", "good", "train_minutes", "plan_ms_ratio_vs_demo_int8"}


def report(image, pixel, escapes, false_rejects):
    return {"image_auroc": image, "pixel": {"auroc": pixel, "aupro": 0.5} if pixel is not None else None,
            "at_threshold": {"escapes": escapes, "false_rejects": false_rejects}, "n_defect": 100, "n_good": 50}


def summary(ds, seed, image, pixel=None, escapes=3):
    return {"dataset": ds, "model": results.MODEL, "seed": seed, "train_minutes": 20.04, "steps": 2000, "epochs": 25,
            "train_threads": 1, "sigma": 2.0,
            "plan_ms_ratio_vs_demo_int8": 1.1234,
            "results": {"f32": report(image, pixel, escapes, 1), "int8": report(image - 0.001, pixel, escapes, 1)}}


def test_rows_have_the_published_keys():
    r = results.row(summary("kolektorsdd", 1, 0.97), "int8")
    assert set(r) == KEYS
    assert r["precision"] == "int8" and r["seed"] == 1 and r["pixel_auroc"] is None and r["aupro"] is None
    assert r["image_auroc"] == 0.969 and r["escapes"] == 3 and r["defective"] == 100 and r["good"] == 50
    assert r["train_minutes"] == 20.0 and r["plan_ms_ratio_vs_demo_int8"] == 1.123
    # Baselines have no plan ratio.
    base = {**summary("bsdata", 0, 0.8), "model": "cae-c01"}
    del base["plan_ms_ratio_vs_demo_int8"]
    assert results.row(base, "f32")["plan_ms_ratio_vs_demo_int8"] is None


def test_the_section_states_each_target_as_reached_or_missed():
    runs = [summary("magnetic_tile", s, 0.96 - 0.02 * s, pixel=0.97, escapes=2 + 8 * s) for s in (0, 1)]
    runs.append(summary("kolektorsdd", 0, 0.99))
    text = results.section(runs, [], ["bsdata-s0"])
    mt = next(line for line in text.splitlines() if line.startswith("- magnetic_tile: "))
    # Worst seed and precision counts: 0.939 (seed 1, int8) misses 0.95; 10 of 100 escapes misses 5 %.
    assert "worst 0.939 **missed by 0.011**" in mt and "pixel AUROC >= 0.95: worst 0.970 reached" in mt
    assert "escapes <= 5 %: worst 10.0 % **missed**" in mt and "image -0.0010" in mt
    assert "- kolektorsdd: image AUROC >= 0.95: worst 0.989 reached" in text
    assert "- bottle: not run." in text and "`bsdata-s0`" in text
    assert "| magnetic_tile | anovit-edge+disc | f32 | 0,1 | 0.950 ± 0.014 |" in text
    assert "- kolektorsdd seed 0: 2000 steps (25 epochs), 1 thread(s) on cpu, 20 min; image score sigma 2." in text
