"""How often the depth check is wrong (issue 24: false FAIL <= 1 in 20 on correct models, plain muP on a
deep pre-LN GPT caught >= 19 in 20).

examples/gpt_depth.py at width 64, depths 2, 4, 8, 16, the check's defaults (4 Adam steps, 3 seeds a
run, threshold 0.125), run 20 times on disjoint seed groups: CompleteP (alpha 1, with muP alone as
its contrast side, judged by the same rule) and depth-muP (alpha 1/2).

    python benchmarks/coordcheck_depth_calibration.py [--runs 20]     # ~25 min on 2 cores

Writes benchmarks/results/coordcheck_depth_calibration.{json,md}.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "examples")]

from _common import env_md, environment, md_table, write_results  # noqa: E402

WIDTH, DEPTHS, SEEDS = 64, (2, 4, 8, 16), 3


def main() -> int:
    from rich.progress import Progress

    from gpt_depth import example_inputs, make_model
    from muprewrite.coordcheck_depth import coordcheck_depth

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    rows, start = [], time.perf_counter()
    with Progress() as bar:
        task = bar.add_task("depth check calibration", total=2 * args.runs)
        for run in range(args.runs):
            for alpha, compare in ((1.0, True), (0.5, False)):
                result = coordcheck_depth(make_model, width=WIDTH, depths=DEPTHS, example_inputs=example_inputs(),
                                          seeds=SEEDS, seed=SEEDS * run, options={"depth_alpha": alpha}, compare=compare)
                slopes = {side: {m: result.slope(side, m)[0] for m in ("stream", "update")} for side in result.sizes}
                rows.append({"run": run, "alpha": alpha, "passed": result.passed, "slopes": slopes,
                             "mup_passes": compare and max(slopes["mup"].values()) <= result.threshold})
                bar.advance(task)
    completep = [r for r in rows if r["alpha"] == 1.0]
    depth_mup = [r for r in rows if r["alpha"] == 0.5]
    summary = {"completep_false_fail": sum(not r["passed"] for r in completep),
               "depth_mup_false_fail": sum(not r["passed"] for r in depth_mup),
               "mup_caught": sum(not r["mup_passes"] for r in completep), "runs": args.runs,
               "worst_correct_slope": max(max(r["slopes"]["depth"].values()) for r in rows),
               "mildest_mup_update_slope": min(r["slopes"]["mup"]["update"] for r in completep),
               "seconds": time.perf_counter() - start}
    data = {"width": WIDTH, "depths": DEPTHS, "seeds_per_run": SEEDS, "rows": rows, "summary": summary,
            "environment": environment()}
    s = summary
    lines = ["# Depth check calibration", "",
             f"`python benchmarks/coordcheck_depth_calibration.py --runs {args.runs}`: examples/gpt_depth.py at width "
             f"{WIDTH}, depths {', '.join(map(str, DEPTHS))}, {SEEDS} seeds a run, disjoint seed groups; "
             f"{s['seconds'] / 60:.0f} min.", "",
             md_table(["model", "runs", "judged FAIL", "target"],
                      [["CompleteP (correct)", args.runs, s["completep_false_fail"], "≤ 1"],
                       ["depth-muP, alpha 1/2 (correct)", args.runs, s["depth_mup_false_fail"], "≤ 1"],
                       ["muP alone on the deep pre-LN GPT (wrong)", args.runs, s["mup_caught"], "≥ 19"]]), "",
             f"Largest slope of a correct model: {s['worst_correct_slope']:+.3f}; smallest update slope of muP alone: "
             f"{s['mildest_mup_update_slope']:+.3f} (threshold 0.125).", "", env_md(data["environment"])]
    write_results("coordcheck_depth_calibration", "\n".join(lines), data)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
