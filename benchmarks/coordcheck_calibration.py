"""How often is the coordinate check wrong? False FAILs on correct rewrites, misses on known mistakes.

Each configuration (a model, and either muprewrite's plan or the plan with a known mistake) is
checked once with many seeds (`--seeds`; the committed results: 60 for every correct rewrite and
for the mildest mistake, the SP attention scale, so 20 disjoint runs of the default 3 seeds; 20
for the other mistakes) at the default widths, steps and LR; the mean |x| of every node is kept
per seed.
Runs of the protocol are then replayed from disjoint groups of k seeds (k = 1, 2, 3), and for each
candidate statistic and threshold the table counts the runs whose verdict is FAIL (and the FAIL
rate over 200 resampled groups). The statistics:

* `max-step` — the slope of the seed-averaged mean |x| at each step 1..T, the worst over steps
  and nodes (the verdict before this calibration);
* `pooled` — one slope per node over steps 1..T and the k seeds (an intercept per seed and step,
  `coordcheck_result.pooled_slope`), the worst over nodes.

Correct: muprewrite's rewrite of every bundled example and of two Hugging Face models at the
zoo's small configs (hf:llama, hf:gpt2); and the `mup` package's own muP of the two GPTs
(tests/mup_twins.py: MuReadout, 1/d attention, hidden init by `mup.init`'s rule, MuAdam), run
through the same protocol with every module's output recorded, as `mup.coord_check` does (the
two twins compute the same function: SDPA's dropout draws the mask nn.Dropout draws).
Mistakes (on gpt_sdpa unless named):
SP; the readout multiplier removed; the hidden Adam LR not divided by width; the SP attention
scale with materialised logits (gpt_manual, attention edits removed); the hidden init not
rescaled (the model's own std kept at every width).

    python benchmarks/coordcheck_calibration.py run --seeds 60      # ~3 h on 2 cores
    python benchmarks/coordcheck_calibration.py run --only gpt_sdpa,sp --lr 3e-3
    python benchmarks/coordcheck_calibration.py run --only cnn --seeds 40 --more    # 40 more seeds
    python benchmarks/coordcheck_calibration.py report              # the tables from the raw runs

Raw runs go to OUT/coordcheck_calibration_raw/ (not committed); the report to
OUT/coordcheck_calibration.{md,json}.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import random
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples"))

from _common import env_md, environment, mark_end, md_table  # noqa: E402

EXAMPLES = ("mlp", "cnn", "gpt_sdpa", "gpt_manual", "gpt_heads", "gpt_tied", "einsum_attention", "moe",
            "transformer_encoder")
SEEDS_PER_RUN = (1, 2, 3)
THRESHOLDS = (0.1, 0.125, 0.15, 0.175, 0.2, 0.25)
STATISTICS = ("max-step", "pooled")
RESAMPLED = 200  # resampled runs per configuration and seeds per run


# The known mistakes, as edits of a correct plan -----------------------------------------------

def without_readout_multiplier(plan):
    return dataclasses.replace(plan, edits=[e for e in plan.edits if e.kind != "readout_multiplier"])


def without_attention_scale(plan):
    return dataclasses.replace(plan, edits=[e for e in plan.edits if e.kind != "attention_scale"])


def hidden_lr_not_divided(plan):
    def undivided(p):
        return dataclasses.replace(p, lr_mult={"adam": 1.0, "sgd": 1.0}) if p.role == "hidden" else p
    return dataclasses.replace(plan, parameters={n: undivided(p) for n, p in plan.parameters.items()})


def hidden_init_not_rescaled(plan):
    def kept(p):
        return dataclasses.replace(p, init_std={**p.init_std, "after": p.init_std["before"]}) if p.role == "hidden" \
            else p
    return dataclasses.replace(plan, parameters={n: kept(p) for n, p in plan.parameters.items()})


@dataclasses.dataclass
class Config:
    name: str
    example: str
    correct: bool
    parametrization: str = "mup"
    plan_transform: object = None
    twin: str | None = None  # a hand-written `mup` twin of this example, trained with MuAdam


CONFIGS = [Config(name, name, True) for name in EXAMPLES[2:4]] + [
    Config("sp", "gpt_sdpa", False, parametrization="sp"),
    Config("no readout multiplier", "gpt_sdpa", False, plan_transform=without_readout_multiplier),
    Config("hidden LR not divided", "gpt_sdpa", False, plan_transform=hidden_lr_not_divided),
    Config("SP attention scale (materialised logits)", "gpt_manual", False, plan_transform=without_attention_scale),
    Config("hidden init not rescaled", "gpt_sdpa", False, plan_transform=hidden_init_not_rescaled),
] + [Config(name, name, True) for name in EXAMPLES[:2] + EXAMPLES[4:]] + [  # the two GPTs first: the hardest
    Config("hf:llama", "hf:llama", True), Config("hf:gpt2", "hf:gpt2", True),
    Config("mup twin of gpt_sdpa", "gpt_sdpa", True, twin="sdpa"),
    Config("mup twin of gpt_manual", "gpt_manual", True, twin="manual")]


# Running ---------------------------------------------------------------------------------------

def subject(example: str) -> tuple:
    """(factory, base width, example inputs) of a bundled example or of "hf:TYPE"."""
    if example.startswith("hf:"):
        from muprewrite import hf

        factory = hf.factory(example[3:])
        return factory, hf.widths(factory)[0], hf.example_inputs(factory)
    module = importlib.import_module(example)
    return module.make_model, module.BASE_WIDTH, module.example_inputs()


def run_config(config: Config, seeds: int, lr: float | None, first_seed: int = 0) -> dict:
    """One coordinate check of `config` with seeds first_seed, ..., first_seed + seeds - 1; the
    judged nodes' per-seed sizes."""
    from muprewrite.coordcheck import coordcheck

    if config.twin:
        return run_twin(config, seeds, lr, first_seed)
    factory, base, inputs = subject(config.example)
    start = time.perf_counter()
    result = coordcheck(factory, base=base, example_inputs=inputs, seed=first_seed,
                        parametrization=config.parametrization, plan_transform=config.plan_transform,
                        compare_sp=False, seeds=seeds, lr=lr, device="cpu", name=config.name)
    nodes = {name: {"module": t.module, "seed_sizes": t.seed_sizes}
             for name, t in result.traces["mup"].items() if t.judged}
    return {"config": config.name, "example": config.example, "correct": config.correct, "lr": result.lr,
            "widths": result.widths, "steps": result.steps, "seeds": seeds,
            "seconds": time.perf_counter() - start, "nodes": nodes}


def run_twin(config: Config, seeds: int, lr: float | None, first_seed: int = 0) -> dict:
    """The coordinate check's protocol (widths, batch, loss, steps, seeds, dropout masks) on the
    `mup` package's own muP of the example (tests/mup_twins.py: MuReadout, 1/d attention, MuAdam),
    recording every module's output as `mup.coord_check` does; a muprewrite plan plays no part."""
    import torch
    from mup import MuAdam

    sys.path.insert(0, str(HERE.parent / "tests"))
    import mup_twins
    from muprewrite.coordcheck import ADAM_EPS, DEFAULT_LR, DEFAULT_MULTIPLIERS, DEFAULT_STEPS, default_loss, mean_abs

    example = importlib.import_module(config.example)
    base, inputs = example.BASE_WIDTH, example.example_inputs()
    lr = DEFAULT_LR["adam"] if lr is None else lr
    widths = [base * m for m in DEFAULT_MULTIPLIERS]
    start = time.perf_counter()
    nodes = {}
    for k, seed in enumerate(range(first_seed, first_seed + seeds)):
        for i, width in enumerate(widths):
            torch.manual_seed(seed)
            model = mup_twins.mup_model(lambda w: mup_twins.gpt_twin(w, config.twin), width, base).train()
            _mup_init(model)
            optimizer = MuAdam(model.parameters(), lr=lr, eps=ADAM_EPS)
            for t, sizes in enumerate(_twin_steps(model, inputs, optimizer, seed, DEFAULT_STEPS, default_loss,
                                                  mean_abs)):
                for name, size in sizes.items():
                    node = nodes.setdefault(name, {"module": name, "seed_sizes": []})
                    while len(node["seed_sizes"]) <= k:
                        node["seed_sizes"].append([[None] * len(widths) for _ in range(DEFAULT_STEPS + 1)])
                    node["seed_sizes"][k][t][i] = size
    return {"config": config.name, "example": config.example, "correct": config.correct, "lr": lr,
            "widths": widths, "steps": DEFAULT_STEPS, "seeds": seeds, "seconds": time.perf_counter() - start,
            "nodes": nodes}


def _mup_init(model) -> None:
    """The example's own normal init redone by `mup.init.normal_`'s rule: a tensor with two
    infinite dims gets its std times width_mult ** -0.5 (the same draws, rescaled)."""
    import torch

    with torch.no_grad():
        for param in model.parameters():
            if param.infshape.ninf() == 2:
                param.mul_(param.infshape.width_mult() ** -0.5)


def _twin_steps(model, inputs, optimizer, seed: int, steps: int, loss_fn, size):
    """mean |output| of every module (forward hooks) before each of `steps` MuAdam steps and after
    the last; the same dropout masks at every step, as the coordinate check's forward."""
    import torch

    sizes = {}

    def record(name):
        def hook(module, args, output):
            if isinstance(output, torch.Tensor) and output.is_floating_point():
                sizes[name] = float(size(output))
        return hook

    for name, module in model.named_modules():
        module.register_forward_hook(record(name or "(model)"))
    for t in range(steps + 1):
        sizes.clear()
        torch.manual_seed(seed + 1)
        out = model(*inputs) if isinstance(inputs, tuple) else model(**inputs)
        loss, _ = loss_fn(out, inputs, seed)
        yield dict(sizes)
        if t < steps:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def merged(earlier: dict | None, raw: dict) -> dict:
    """`raw` appended to the seeds of an earlier run of the same configuration (same nodes)."""
    if earlier is None or earlier["nodes"].keys() != raw["nodes"].keys():
        return raw
    for name, node in raw["nodes"].items():
        earlier["nodes"][name]["seed_sizes"] += node["seed_sizes"]
    return {**earlier, "seeds": earlier["seeds"] + raw["seeds"], "seconds": earlier["seconds"] + raw["seconds"]}


def raw_path(out: Path, name: str, lr: float) -> Path:
    return out / "coordcheck_calibration_raw" / f"{name.replace(' ', '_').replace('(', '').replace(')', '')}@{lr:g}.json"


# Replaying the protocol ------------------------------------------------------------------------

def run_statistic(raw: dict, seeds: list, statistic: str) -> tuple:
    """(worst statistic over the judged nodes, its node) for the run made of `seeds`."""
    from muprewrite.coordcheck_result import fit_slope, pooled_slope

    widths, steps = raw["widths"], range(1, raw["steps"] + 1)
    worst = (-math.inf, None)
    for name, node in raw["nodes"].items():
        rows = [node["seed_sizes"][k] for k in seeds]
        if any(_diverged(row) for row in rows):
            return math.inf, name
        if statistic == "pooled":
            value = pooled_slope(widths, rows, steps)[0]
        else:
            averaged = [[_mean([row[t][i] for row in rows]) for i in range(len(widths))] for t in steps]
            value = max((s for s in (fit_slope(widths, r) for r in averaged) if s is not None), default=None)
        if value is not None and value > worst[0]:
            worst = (value, name)
    return worst


def replay(raw: dict, per_run: int, groups=None) -> dict:
    """statistic -> the worst value of each run of `per_run` seeds (disjoint groups by default)."""
    groups = groups or [list(range(k, k + per_run)) for k in range(0, raw["seeds"] - per_run + 1, per_run)]
    return {statistic: [run_statistic(raw, group, statistic)[0] for group in groups] for statistic in STATISTICS}


def resampled_groups(seeds: int, per_run: int) -> list:
    """RESAMPLED seed groups drawn without replacement within a group (overlapping between groups):
    a steadier estimate of the per-run FAIL rate than the few disjoint runs, though not independent."""
    generator = random.Random(0)
    return [generator.sample(range(seeds), per_run) for _ in range(RESAMPLED)]


def _diverged(row) -> bool:
    return any(s is not None and not math.isfinite(s) for step in row for s in step)


def _mean(values):
    return None if any(v is None for v in values) else sum(values) / len(values)


# Report ----------------------------------------------------------------------------------------

def report(out: Path) -> dict:
    raws = [json.loads(p.read_text()) for p in sorted((out / "coordcheck_calibration_raw").glob("*.json"))]
    rows = []
    for raw in raws:
        for per_run in SEEDS_PER_RUN:
            values = replay(raw, per_run)
            resampled = replay(raw, per_run, resampled_groups(raw["seeds"], per_run))
            for statistic in STATISTICS:
                fails = {thr: sum(v > thr for v in values[statistic]) for thr in THRESHOLDS}
                rate = {thr: sum(v > thr for v in resampled[statistic]) / RESAMPLED for thr in THRESHOLDS}
                rows.append({"config": raw["config"], "correct": raw["correct"], "lr": raw["lr"],
                             "seeds_per_run": per_run, "statistic": statistic, "runs": len(values[statistic]),
                             "fails": fails, "resampled_fail_rate": rate, "median": _median(values[statistic]),
                             "min": min(values[statistic]), "max": max(values[statistic]),
                             "seconds_per_seed": raw["seconds"] / raw["seeds"]})
    return {"rows": rows}


def _median(values):
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else None


def markdown(summary: dict, env: dict) -> str:
    lrs = sorted({r["lr"] for r in summary["rows"]})
    lines = ["# Coordinate check calibration", "", *(line for p in __doc__.split("\n\n")[1:4] for line in (_paragraph(p), "")),
             "The raw runs: " + ", ".join(f"`python benchmarks/coordcheck_calibration.py run --lr {lr:g}`"
                                          for lr in lrs) + "; then the report:", "", env_md(env), ""]
    lines += default_protocol(summary) + [""]
    for lr in lrs:
        for statistic in STATISTICS:
            for per_run in SEEDS_PER_RUN:
                rows = [r for r in summary["rows"] if r["lr"] == lr and r["statistic"] == statistic
                        and r["seeds_per_run"] == per_run]
                if not rows:
                    continue
                lines += [f"## lr {lr:g}, statistic `{statistic}`, {per_run} seed(s) per run", "",
                          "FAIL verdicts out of the disjoint runs per threshold (correct rewrites: false FAILs; "
                          f"mistakes: detections); in brackets the FAIL rate over {RESAMPLED} resampled runs.", ""]
                header = ["configuration", "kind", "runs", "min", "median", "max"] + [f"> {t:g}" for t in THRESHOLDS]
                body = [[r["config"], "correct" if r["correct"] else "mistake", r["runs"],
                         *(f"{r[k]:+.3f}" for k in ("min", "median", "max")),
                         *(f"{r['fails'][t]} ({100 * r['resampled_fail_rate'][t]:.0f}%)" for t in THRESHOLDS)]
                        for r in sorted(rows, key=lambda r: (not r["correct"], r["config"]))]
                lines += [md_table(header, body), ""]
    return "\n".join(lines)


def _paragraph(text: str) -> str:
    """A docstring paragraph as one Markdown line per bullet."""
    return re.sub(r"\n(?!\* )\s*", " ", text)


def default_protocol(summary: dict) -> list:
    """The verdict's default protocol and what the runs say about it."""
    from muprewrite.coordcheck import DEFAULT_LR, DEFAULT_SEEDS, DEFAULT_THRESHOLD

    rows = [r for r in summary["rows"] if r["statistic"] == "pooled" and r["seeds_per_run"] == DEFAULT_SEEDS
            and r["lr"] == DEFAULT_LR["adam"]]
    if not rows:
        return []
    correct, mistakes = [r for r in rows if r["correct"]], [r for r in rows if not r["correct"]]
    worst_false = max(r["resampled_fail_rate"][DEFAULT_THRESHOLD] for r in correct) if correct else None
    worst_caught = min(r["resampled_fail_rate"][DEFAULT_THRESHOLD] for r in mistakes) if mistakes else None
    return ["## The default protocol", "",
            f"Statistic `pooled`, {DEFAULT_SEEDS} seeds, threshold {DEFAULT_THRESHOLD:g}, Adam lr "
            f"{DEFAULT_LR['adam']:g}: false FAILs {sum(r['fails'][DEFAULT_THRESHOLD] for r in correct)} of "
            f"{sum(r['runs'] for r in correct)} disjoint runs on {len(correct)} correct rewrites (at most "
            f"{100 * worst_false:.0f}% of resampled runs on any one); mistakes caught in "
            f"{sum(r['fails'][DEFAULT_THRESHOLD] for r in mistakes)} of {sum(r['runs'] for r in mistakes)} disjoint "
            f"runs (at least {100 * worst_caught:.0f}% of resampled runs on each). Largest correct value "
            f"{max(r['max'] for r in correct):+.3f}, smallest mistake value {min(r['min'] for r in mistakes):+.3f}."]


def _seeds_done(out: Path, config: Config, lr: float | None) -> int:
    from muprewrite.coordcheck import DEFAULT_LR

    path = raw_path(out, config.name, lr if lr is not None else DEFAULT_LR["adam"])
    return json.loads(path.read_text())["seeds"] if path.exists() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["run", "report"])
    parser.add_argument("--only", help="comma-separated configuration names (default: all)")
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--lr", type=float, help="Adam LR (default: the coordinate check's)")
    parser.add_argument("--more", action="store_true", help="add --seeds new seeds to the raw runs already there")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    out = Path(args.out)
    if args.what == "run":
        from rich.progress import Progress

        chosen = [c for c in CONFIGS if not args.only or c.name in args.only.split(",")]
        with Progress() as progress:
            task = progress.add_task("calibration", total=len(chosen))
            for config in chosen:
                progress.update(task, description=config.name)
                raw = run_config(config, args.seeds, args.lr, args.more and _seeds_done(out, config, args.lr))
                path = raw_path(out, config.name, raw["lr"])
                path.parent.mkdir(parents=True, exist_ok=True)
                earlier = json.loads(path.read_text()) if args.more and path.exists() else None
                path.write_text(json.dumps(merged(earlier, raw)))
                progress.advance(task)
        return
    env = environment()
    summary = report(out)
    mark_end(env)
    (out / "coordcheck_calibration.json").write_text(json.dumps({"env": env, **summary}, indent=1))
    (out / "coordcheck_calibration.md").write_text(markdown(summary, env))
    print(f"wrote {out / 'coordcheck_calibration.md'}")


if __name__ == "__main__":
    main()
