"""Analysis cost against depth: muprewrite's analysis vs the `mup` package's set_base_shapes, LLaMA 8/32/80 layers.

`LlamaForCausalLM` from `transformers.LlamaConfig` at 8 x 4096, 32 x 4096 (LLaMA-7B) and 80 x 8192
(LLaMA-70B); `make = muprewrite.hf.factory(config)`, base 128, delta 256, target = hidden. Each
measurement is a fresh subprocess (the call, then again warm); imports come before the clock.

- The inputs are `muprewrite.hf.example_inputs(make)`: read from the factory, not from a second
  factory made from the config.
- mup: base, delta and target models built on meta (`with torch.device("meta"): make(width)`, as a
  mup user builds them), `mup.set_base_shapes(target, base, delta=delta,
  do_assert=False)` (lm_head is an nn.Linear, not a MuReadout, so mup's assert would fail).
- analysis: `mupify(make, base=128, delta=256, target=W, materialize=False, verify_width=False)`.
- full: the same with `verify_width=True` (verification at delta width with real tensors); the
  seconds spent inside verify are timed in that call, so the verification share is verify's
  seconds over the rest of the same call (no second process's noise in it).
- analysis_every_block: analysis with `share_blocks=False`, every layer analysed (80 layers only
  with --every-block-80).

    python benchmarks/analysis_depth.py                 # 8, 32 and 80 layers
    python benchmarks/analysis_depth.py --only 8 --repeats 3

Results: benchmarks/results/analysis_depth.{md,json}.
"""
from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CONFIGS = {8: (4096, 11008), 32: (4096, 11008), 80: (8192, 28672)}  # layers: (hidden, intermediate)
BASE, DELTA = 128, 256
TARGETS = {"analysis_over_mup_80": 2.0, "growth_8_to_80": 1.3, "analysis_peak_rss_gib": 0.75, "verification_share": 0.5}
SLOW_EVERY_BLOCK = 80
PHASES = ("cold", "warm")


def llama_config(layers: int):
    import transformers

    hidden, intermediate = CONFIGS[layers]
    return transformers.LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=intermediate,
                                    num_hidden_layers=layers, num_attention_heads=hidden // 128, num_key_value_heads=8)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def run_mup(layers: int) -> dict:
    import mup
    import torch

    import muprewrite.hf

    config = llama_config(layers)
    make = muprewrite.hf.factory(config)

    def on_meta(width: int):  # as a mup user builds them (not muprewrite's build_model, which skips meta inits)
        with torch.device("meta"):
            return make(width)

    base, delta, target = (on_meta(width) for width in (BASE, DELTA, config.hidden_size))
    mup.set_base_shapes(target, base, delta=delta, do_assert=False)
    infinite = sum(1 for p in target.parameters() if p.infshape.ninf() > 0)
    return {"n_parameters": len(list(target.parameters())), "n_infinite": infinite}


def run_mupify(layers: int, verify: bool, **options) -> dict:
    import muprewrite.hf

    import muprewrite.api

    config = llama_config(layers)
    make = muprewrite.hf.factory(config)
    inputs = muprewrite.hf.example_inputs(make)
    spent, verify_fn = [], muprewrite.api.verify

    def timed_verify(*args, **kwargs):
        start = time.perf_counter()
        try:
            return verify_fn(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - start)

    muprewrite.api.verify = timed_verify
    try:
        plan = muprewrite.mupify(make, base=BASE, delta=DELTA, target=config.hidden_size, example_inputs=inputs,
                                 materialize=False, verify_width=verify, **options).plan
    finally:
        muprewrite.api.verify = verify_fn
    return {"n_parameters": len(plan.parameters), "n_edits": len(plan.edits), "notes": list(plan.notes),
            "copies": len(plan.repeats), "verify_s": sum(spent)}


TASKS = {
    "mup": run_mup,
    "analysis": lambda layers: run_mupify(layers, verify=False),
    "full": lambda layers: run_mupify(layers, verify=True),
    "analysis_every_block": lambda layers: run_mupify(layers, verify=False, share_blocks=False),
}


def worker(name: str, layers: int) -> dict:
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import muprewrite  # noqa: F401
    import muprewrite.hf  # noqa: F401
    import muprewrite.passes.capture  # noqa: F401
    if name in ("mup", "baseline"):
        import mup  # noqa: F401
    if name == "baseline":
        return {"peak_rss_gib": peak_rss_gib()}
    record = {}
    for phase in PHASES:
        gc.collect()
        start = time.perf_counter()
        record.update(TASKS[name](layers))
        record[f"{phase}_s"] = time.perf_counter() - start
        record[f"{phase}_verify_s"] = record.pop("verify_s", 0.0)
        record[f"{phase}_peak_rss_gib"] = peak_rss_gib()
    return record


def spawn(name: str, layers: int = 0) -> dict:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", name, "--layers", str(layers)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"worker {name} ({layers} layers) failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median_record(runs: list) -> dict:
    """The first run's counts and notes, the median of every timing and RSS; the runs kept raw."""
    merged = dict(runs[0])
    for key in ("cold_s", "warm_s", "cold_peak_rss_gib", "warm_peak_rss_gib", "cold_verify_s", "warm_verify_s"):
        merged[key] = statistics.median(r[key] for r in runs)
    merged["runs"] = runs
    return merged


def plan_jobs(args) -> list:
    names = ["mup", "analysis", "full", "analysis_every_block"]
    return [(name, layers) for _ in range(args.repeats) for layers in args.only for name in names
            if name != "analysis_every_block" or layers != SLOW_EVERY_BLOCK or args.every_block_80]


def measure(args) -> tuple:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    jobs = plan_jobs(args)
    runs = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn()) as progress:
        task = progress.add_task("baseline (imports only)", total=len(jobs) + 1)
        baseline = spawn("baseline")
        for name, layers in jobs:
            progress.update(task, advance=1, description=f"{name}, {layers} layers x {CONFIGS[layers][0]}")
            runs.setdefault(layers, {}).setdefault(name, []).append(spawn(name, layers))
        progress.update(task, advance=1, description="all workers done")
    return baseline, {layers: {name: median_record(r) for name, r in by_name.items()} for layers, by_name in runs.items()}


def pair(row: dict, name: str, key: str = "s", digits: int = 1) -> str:
    if name not in row:
        return "-"
    return f"{row[name]['cold_' + key]:.{digits}f} / {row[name]['warm_' + key]:.{digits}f}"


def ratio(row: dict, top: str, bottom: str, phase: str) -> float:
    return row[top][f"{phase}_s"] / row[bottom][f"{phase}_s"]


def verification_share(row: dict, phase: str) -> float:
    """verify's seconds in the full call over the rest of that call (its analysis)."""
    full = row["full"]
    return full[f"{phase}_verify_s"] / (full[f"{phase}_s"] - full[f"{phase}_verify_s"])


def results_rows(results: dict) -> list:
    rows = []
    for layers, row in sorted(results.items()):
        over_mup = " / ".join(f"{ratio(row, 'analysis', 'mup', phase):.2f}" for phase in PHASES)
        share = " / ".join(f"+{verification_share(row, phase):.0%}" for phase in PHASES)
        rows.append([f"{layers} x {CONFIGS[layers][0]}", row["analysis"]["n_parameters"], row["analysis"]["n_edits"],
                     pair(row, "mup"), pair(row, "analysis"), over_mup, pair(row, "full"), pair(row, "full", "verify_s"),
                     share, pair(row, "analysis_every_block"),
                     pair(row, "analysis", "peak_rss_gib", 2), pair(row, "full", "peak_rss_gib", 2)])
    return rows


def verdict(value: float | None, limit: float, text: str) -> str:
    return "n/a (not run)" if value is None else f"{value:{text}} {'PASS' if value <= limit else 'FAIL'}"


def target_rows(results: dict) -> list:
    """[target, cold verdict, warm verdict] for each target; n/a where the configs it needs were not run."""
    rss = lambda p: max(r["analysis"][f"{p}_peak_rss_gib"] for r in results.values())  # noqa: E731
    share = lambda p: max(verification_share(r, p) for r in results.values())  # noqa: E731
    checks = [  # (target key, label, format, configs needed, value of a phase)
        ("analysis_over_mup_80", "80 x 8192: analysis <= {:g} x mup", ".2f", {80},
         lambda p: ratio(results[80], "analysis", "mup", p)),
        ("growth_8_to_80", "analysis time 80 layers / 8 layers <= {:g}", ".2f", {8, 80},
         lambda p: ratio_between(results, "analysis", p)),
        ("analysis_peak_rss_gib", "peak RSS of the analysis <= {:g} GiB (largest over the configs)", ".2f", set(), rss),
        ("verification_share", "verification adds <= {:.0%} to the analysis (largest over the configs)", "+.0%",
         set(), share),
    ]
    return [[label.format(TARGETS[key]), *(verdict(value(p) if needs <= results.keys() else None, TARGETS[key], text)
                                           for p in PHASES)] for key, label, text, needs, value in checks]


def markdown(env: dict, baseline: dict, results: dict) -> str:
    from _common import env_md, md_table

    headers = ["layers x hidden", "parameters", "edits", "mup s", "analysis s", "analysis / mup", "full s",
               "verify s (in full)", "verification share", "every block s", "analysis peak RSS GiB", "full peak RSS GiB"]
    notes = [f"- {layers} layers, analysis: {'; '.join(row['analysis']['notes']) or 'no notes'}"
             for layers, row in sorted(results.items())]
    every = ("`every block`: analysis with `share_blocks=False` (every layer analysed, the behaviour before; the "
             "two plans are the same but for graph-local node names: tests/test_repeats.py).")
    return "\n".join([
        "# analysis_depth: muprewrite's analysis vs mup's set_base_shapes, LLaMA at 8, 32 and 80 layers", "",
        f"`LlamaForCausalLM` from `transformers.LlamaConfig` (vocab 32000, heads = hidden / 128, 8 KV heads, "
        f"intermediate 11008 at 4096, 28672 at 8192), `muprewrite.hf.factory(config)`, base {BASE}, delta {DELTA}, "
        "target = hidden. Cells are cold / warm: cold is the first call in a fresh subprocess (torch, transformers, "
        "muprewrite, mup imported before the clock; the clock covers config, factory, model builds — the first "
        "imports transformers' modeling_llama, for both tools — and the call), warm the same again in that process. "
        "`mup`: base, delta, target built on meta, `mup.set_base_shapes(target, base, delta=delta, do_assert=False)` "
        "(do_assert=False: lm_head is an nn.Linear, not a MuReadout, so mup's check fails). `analysis`: "
        "`mupify(..., materialize=False, verify_width=False)`; `full`: `verify_width=True` (verification at delta "
        f"width, real tensors); `verify s`: the seconds spent inside verify in that full call; verification share = "
        f"verify s / (full s - verify s), both from the same call. {every} Peak RSS: `ru_maxrss` "
        f"after the cold / the warm call (import-only baseline {baseline['peak_rss_gib']:.2f} GiB). Median of "
        f"{env['repeats']} subprocess(es) per cell.", "",
        md_table(headers, results_rows(results)), "", *notes, "",
        "## Targets", "",
        md_table(["target", "cold", "warm"], target_rows(results)), "", *mup_growth_line(results),
        "## Environment", "", env_md(env)])


def mup_growth_line(results: dict) -> list:
    """mup's own 80 / 8 layer growth, for reference (its three model builds grow with depth too)."""
    if not {8, 80} <= results.keys():
        return []
    growth = " / ".join(f"{ratio_between(results, 'mup', p):.2f}" for p in PHASES)
    return [f"For reference, mup's own time 80 layers / 8 layers (cold / warm): {growth}.", ""]


def ratio_between(results: dict, name: str, phase: str) -> float:
    return results[80][name][f"{phase}_s"] / results[8][name][f"{phase}_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="subprocesses per worker and config (median)")
    parser.add_argument("--only", default="8,32,80", help="comma-separated layer counts among 8, 32, 80")
    parser.add_argument("--every-block-80", action="store_true", help="also run share_blocks=False at 80 layers (~40 s)")
    parser.add_argument("--worker", choices=["baseline", *TASKS], help=argparse.SUPPRESS)
    parser.add_argument("--layers", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.layers)))
        return
    args.only = [int(x) for x in args.only.split(",") if x]
    if not set(args.only) <= CONFIGS.keys():
        parser.error(f"--only takes layer counts among {', '.join(map(str, CONFIGS))}")

    from _common import environment, mark_end, write_results

    env = {**environment(), "repeats": args.repeats}
    baseline, results = measure(args)
    mark_end(env)
    md = markdown(env, baseline, results)
    data = {"env": env, "base": BASE, "delta": DELTA, "configs": {str(k): CONFIGS[k] for k in args.only},
            "import_baseline": baseline,
            "targets": TARGETS, "results": {str(layers): row for layers, row in sorted(results.items())}}
    from rich.console import Console
    from rich.markdown import Markdown

    Console(width=160).print(Markdown(md.split("## Environment")[0]))
    for path in write_results("analysis_depth", md, data):
        print(path)


if __name__ == "__main__":
    main()
