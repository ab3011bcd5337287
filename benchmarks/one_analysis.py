"""One analysis serves every width: what planning each width from it saves, and that nothing changes.

1. The coordinate check of examples/gpt_sdpa.py (base 32, widths 32..512, 4 Adam steps, both sides)
   with every width planned by `mupify` (its capture at base, delta and that width, and its init
   scan: `reuse_analysis=False`, the behaviour before) and with one analysis captured at base, delta
   and 512 planning every width (`Analysis.plan_for`, the default now): wall time of each, and
   whether the two results are identical (every node's sizes, bit for bit).
2. Planning alone, for 5 widths: `mupify(..., materialize=False, verify_width=False)` once per width
   vs `analyse_widths` once and `plan_for` per width — on hf llama (muprewrite.hf.factory("llama"),
   base 64, delta 128, target 256) and on examples/gpt_sdpa.py — with the plans compared
   (`Plan.to_dict()` without the notes).

    python benchmarks/one_analysis.py               # seeds=1 for the coordinate check
    python benchmarks/one_analysis.py --seeds 3     # the coordinate check's default protocol

Results: benchmarks/results/one_analysis.{md,json}.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples"))

import _common  # noqa: E402

COORD_WIDTHS = [32, 64, 128, 256, 512]
LLAMA_WIDTHS = [64, 96, 128, 192, 256]


def _plan_record(plan) -> dict:
    record = plan.to_dict()
    record.pop("notes")
    return record


def coordcheck_times(seeds: int) -> dict:
    """Each way twice, in the order before, after, after, before (a drift in machine speed hits both
    alike); the planning inside each run (analysis and plans, or mupify per width) timed apart."""
    import gpt_sdpa

    import muprewrite.coordcheck as cc

    labels = {False: "mupify per width (before)", True: "one analysis (after)"}
    runs = {label: [] for label in labels.values()}
    make_planner = cc._planner
    for reuse in (False, True, True, False):
        planning = [0.0]

        def timed_planner(*args, planning=planning):
            start = time.perf_counter()
            planner = make_planner(*args)
            planning[0] += time.perf_counter() - start

            def plan(width):
                start = time.perf_counter()
                result = planner(width)
                planning[0] += time.perf_counter() - start
                return result
            return plan

        cc._planner = timed_planner
        try:
            start = time.perf_counter()
            result = cc.coordcheck(gpt_sdpa.make_model, base=gpt_sdpa.BASE_WIDTH, widths=COORD_WIDTHS, seeds=seeds,
                                   example_inputs=gpt_sdpa.example_inputs(), device="cpu", reuse_analysis=reuse)
            runs[labels[reuse]].append({"seconds": time.perf_counter() - start, "planning_s": planning[0],
                                        "result": result.to_dict()})
        finally:
            cc._planner = make_planner
    before, after = runs[labels[False]], runs[labels[True]]
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    return {"widths": COORD_WIDTHS, "seeds": seeds, "before_s": [r["seconds"] for r in before],
            "after_s": [r["seconds"] for r in after], "before_planning_s": [r["planning_s"] for r in before],
            "after_planning_s": [r["planning_s"] for r in after],
            "ratio": mean(after, "seconds") / mean(before, "seconds"),
            "planning_ratio": mean(after, "planning_s") / mean(before, "planning_s"),
            "identical": all(r["result"] == before[0]["result"] for r in before + after),
            "verdict": after[0]["result"]["verdict"]}


def planning_times(name: str, factory, base: int, delta: int, target: int, widths: list, inputs) -> dict:
    import muprewrite
    from muprewrite.api import analyse_widths

    muprewrite.mupify(factory, base=base, delta=delta, target=widths[0], example_inputs=inputs, verify_width=False,
                      materialize=False)  # warm-up (first builds and exports), not timed
    start = time.perf_counter()
    fresh = [muprewrite.mupify(factory, base=base, delta=delta, target=w, example_inputs=inputs, verify_width=False,
                               materialize=False).plan for w in widths]
    per_width = time.perf_counter() - start
    start = time.perf_counter()
    analysis = analyse_widths(factory, base=base, delta=delta, target=target, example_inputs=inputs)
    analysed = time.perf_counter() - start
    planned = [analysis.plan_for(w) for w in widths]
    once = time.perf_counter() - start
    return {"model": name, "widths": widths, "captured": [base, delta, target], "mupify_per_width_s": per_width,
            "analysis_s": analysed, "plans_s": once - analysed, "one_analysis_s": once, "ratio": once / per_width,
            "identical": [_plan_record(a) == _plan_record(b) for a, b in zip(planned, fresh)],
            "predicted": [not any(n.startswith("captured at width") for n in p.notes) for p in planned]}


def _seconds(values: list) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def markdown(env: dict, coord: dict, planning: list) -> str:
    rows = [[p["model"], ", ".join(map(str, p["widths"])), "/".join(map(str, p["captured"])),
             f"{p['mupify_per_width_s']:.2f}", f"{p['analysis_s']:.2f}", f"{p['plans_s']:.3f}",
             f"{p['one_analysis_s']:.2f}", f"{p['ratio']:.3f}", "yes" if all(p["identical"]) else "NO",
             "all" if all(p["predicted"]) else f"{sum(p['predicted'])} of {len(p['predicted'])}"] for p in planning]
    return "\n".join([
        "# one_analysis: one analysis serves every width",
        "",
        "The coordinate check and the transfer benchmark used to run `mupify` — three torch.export captures on",
        "meta and an init scan — for every width; now one analysis (captured at base, delta and the largest",
        "width) plans every width (`Analysis.plan_for`), each size and constant predicted from the captures",
        "(docs/design.md, \"One analysis, every width\").",
        "",
        f"## Coordinate check, examples/gpt_sdpa.py (widths {', '.join(map(str, coord['widths']))}, "
        f"seeds={coord['seeds']}, both sides, CPU)",
        "",
        _common.md_table(["", "mupify per width (before)", "one analysis (after)", "after / before"],
                         [["coordcheck wall s (2 runs each)", _seconds(coord["before_s"]), _seconds(coord["after_s"]),
                           f"{coord['ratio']:.3f}"],
                          ["of which planning s", _seconds(coord["before_planning_s"]),
                           _seconds(coord["after_planning_s"]), f"{coord['planning_ratio']:.3f}"]]),
        "",
        f"Results identical (all 4 runs): {'yes' if coord['identical'] else 'NO'}; verdict {coord['verdict']}. Runs in the",
        "order before, after, after, before; the ratios are of the means. \"planning\": the time inside coordcheck spent",
        "making the plans (mupify per width; or analyse_widths once and plan_for per width): the per-width capture",
        "and init scan are what the change removes; the rest of the wall time — training the graphs (forward with",
        "the recorder, backward, Adam) and exporting each width's graph to run it — is unchanged.",
        "\"identical\": `CoordCheckResult.to_dict()` equal, every node's mean |x| at every step and width bit for bit.",
        "",
        "## Planning 5 widths",
        "",
        _common.md_table(["model", "widths", "captured at", "mupify per width s", "analyse_widths s",
                          "plan_for x5 s", "one analysis total s", "ratio", "plans identical", "predicted"], rows),
        "",
        "\"plans identical\": `Plan.to_dict()` without `notes` equal to mupify's at every width; \"predicted\": widths",
        "planned without a fresh capture (a width whose sizes or constants cannot be predicted is captured). One",
        "untimed mupify runs first (one-time costs of the first build and export).",
        "",
        _common.env_md(env),
    ])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1, help="seeds of the coordinate check (default 1)")
    args = parser.parse_args(argv)
    import gpt_sdpa

    import muprewrite.hf as hf

    env = _common.environment()
    llama = hf.factory("llama")
    planning = [planning_times("hf llama", llama, *hf.widths(llama), LLAMA_WIDTHS, hf.example_inputs("llama")),
                planning_times("examples/gpt_sdpa.py", gpt_sdpa.make_model, 32, 64, 512, COORD_WIDTHS,
                               gpt_sdpa.example_inputs())]
    coord = coordcheck_times(args.seeds)
    _common.mark_end(env)
    data = {"environment": env, "coordcheck": coord, "planning": planning}
    for path in _common.write_results("one_analysis", markdown(env, coord, planning), data):
        print(path)
    print(f"coordcheck gpt_sdpa: {_seconds(coord['before_s'])} s -> {_seconds(coord['after_s'])} s "
          f"(x{coord['ratio']:.3f}; planning x{coord['planning_ratio']:.3f}), identical: {coord['identical']}")
    for p in planning:
        print(f"{p['model']}: {p['mupify_per_width_s']:.2f} s -> {p['one_analysis_s']:.2f} s (x{p['ratio']:.3f}), "
              f"identical: {all(p['identical'])}")
    return 0 if coord["identical"] and all(all(p["identical"]) for p in planning) else 1


if __name__ == "__main__":
    raise SystemExit(main())
