"""The benchmarks' measuring workers still run against the current API (one broke silently once:
it called a private helper that had been removed). Each runs as the benchmark runs it, in a
fresh subprocess that prints one JSON line, at the benchmark's own base width 128 (at 32 the
LLaMA shapes round to equal d_ffn at base and delta, which muprewrite rightly refuses); no timing
is asserted."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_worker(script: str, worker: str, base: int) -> dict:
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), "--worker", worker, "--base", str(base)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_analysis_llama_step_worker_runs_every_pass():
    result = run_worker("analysis_llama.py", "steps", 128)
    from muprewrite.pipeline import COMPILATION

    steps = [s["step"].split(" ")[0] for s in result["steps"]]
    assert steps == [stage.name for stage in COMPILATION] + ["report"]  # the pipeline's stages, in its order
    # the 32 layers are one repeated block, captured once: a layer, the embedding and the head
    assert result["graph_nodes"] > 50 and all(s["seconds"] >= 0 for s in result["steps"])


def test_hf_perf_analysis_worker_plans_the_llama_7b_shape():
    pytest.importorskip("transformers")
    result = run_worker("hf_perf.py", "analysis", 128)
    assert result["parameters"] == 291 and result["edits"] == 33   # 32 layers: 32 attention edits + lm_head
    assert result["seconds"] > 0 and result["peak_mib"] > 0


def test_calibration_replays_runs_from_disjoint_seed_groups(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import coordcheck_calibration as calibration

    widths = [32, 64, 128]
    grows = [[[w ** 0.5 for w in widths]] * 3 for _ in range(4)]  # 4 seeds, steps 0..2
    flat = [[[1.0 for _ in widths]] * 3 for _ in range(4)]
    raw = {"widths": widths, "steps": 2, "seeds": 4, "nodes": {"a": {"seed_sizes": flat}, "b": {"seed_sizes": grows}}}
    values = calibration.replay(raw, 2)
    assert len(values["pooled"]) == 2 and all(abs(v - 0.5) < 1e-9 for v in values["pooled"])
    assert all(abs(v - 0.5) < 1e-9 for v in values["max-step"])


def test_calibration_merges_more_seeds_into_an_earlier_run(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import coordcheck_calibration as calibration

    earlier = {"seeds": 2, "seconds": 1.0, "nodes": {"a": {"seed_sizes": [[[1.0]], [[2.0]]]}}}
    more = {"seeds": 1, "seconds": 0.5, "nodes": {"a": {"seed_sizes": [[[3.0]]]}}}
    merged = calibration.merged(earlier, more)
    assert merged["seeds"] == 3 and merged["nodes"]["a"]["seed_sizes"] == [[[1.0]], [[2.0]], [[3.0]]]
    assert calibration.merged(None, more) is more
