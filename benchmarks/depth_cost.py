"""What depth transfer adds to the analysis of an 80-layer LLaMA-shaped model (issue 24's target:
at most 1.5x the width-only analysis).

Times `muprewrite.mupify(make_model, base=128, delta=256, target=8192, materialize=False,
verify_width=False)` on benchmarks/llama_like.py with 80 layers, and the same with
`depth_base=4, depth_target=80` (`make_model(width, depth=L)`), each in a fresh interpreter,
alternating, `--repeats` times; the stage timings of the depth run come from the pipeline's
observer. One run on one machine: ratios, not absolute times, are the result.

    python benchmarks/depth_cost.py [--repeats 3]

Writes benchmarks/results/depth_cost.json and .md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import env_md, environment, md_table, write_results  # noqa: E402

LAYERS, BASE, TARGET, DEPTH_BASE = 80, 128, 8192, 4


def make_model(width: int, depth: int = LAYERS):
    import llama_like

    return llama_like.LlamaLike(llama_like.LlamaConfig(d_model=width, n_layer=depth))


def worker(with_depth: bool) -> dict:
    import llama_like
    from muprewrite import pipeline
    from muprewrite.api import _check_widths
    from muprewrite.passes.depth import AtDepth
    from muprewrite.widths import Depths

    depths = Depths(DEPTH_BASE, 2 * DEPTH_BASE, LAYERS) if with_depth else None
    factory = AtDepth(make_model, LAYERS) if with_depth else make_model
    asked = pipeline.Compilation(factory, llama_like.example_inputs(), _check_widths(BASE, None, TARGET),
                                 verify_width=False, depths=depths)
    observer = pipeline.Observer()
    start = time.perf_counter()
    compiled = pipeline.compile(asked, observer)
    return {"seconds": time.perf_counter() - start, "stages": observer.timings,
            "branches": sum(e.kind == "branch_multiplier" for e in compiled.plan.edits)}


def run(with_depth: bool) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", "depth" if with_depth else "width"],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", choices=("width", "depth"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker == "depth")))
        return 0
    runs = {"width": [], "depth": []}
    for _ in range(args.repeats):
        for kind in runs:
            runs[kind].append(run(kind == "depth"))
            print(kind, f"{runs[kind][-1]['seconds']:.2f} s", flush=True)
    median = {kind: statistics.median(r["seconds"] for r in rs) for kind, rs in runs.items()}
    ratio = median["depth"] / median["width"]
    depth_stage = statistics.median(r["stages"].get("depth", 0.0) for r in runs["depth"])
    result = {"layers": LAYERS, "base": BASE, "target": TARGET, "depth_base": DEPTH_BASE, "runs": runs,
              "median_seconds": median, "ratio": ratio, "depth_stage_seconds": depth_stage,
              "branches": runs["depth"][0]["branches"], "environment": environment()}
    lines = ["# Depth transfer's analysis cost (80-layer LLaMA-shaped model)", "",
             f"`python benchmarks/depth_cost.py --repeats {args.repeats}`: mupify (no verification, not materialised) "
             f"at base {BASE}, target {TARGET}, {LAYERS} layers; with depth: depth_base {DEPTH_BASE}, "
             f"depth_target {LAYERS}. Each run a fresh interpreter, alternating; medians.", "",
             md_table(["analysis", "median s", "runs (s)"],
                      [[kind, f"{median[kind]:.2f}", ", ".join(f"{r['seconds']:.2f}" for r in rs)]
                       for kind, rs in runs.items()]),
             "", f"**Depth / width-only: {ratio:.2f}x** (target ≤ 1.5x); the `depth` stage itself: {depth_stage:.2f} s; "
             f"{result['branches']} residual branches scaled.", "", env_md(result["environment"])]
    markdown = "\n".join(lines)
    print(markdown)
    write_results("depth_cost", markdown, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
