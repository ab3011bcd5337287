"""Depth-transfer benchmark: a learning-rate sweep at several depths and one width, muP alone
against CompleteP (depth_alpha 1) and depth-muP (depth_alpha 1/2), all planned by muprewrite.

The GPT of transfer.py (examples/nanogpt.py: byte vocabulary, pre-LN blocks, GPT-2's init with
output projections at 0.02/sqrt(2 L)) at depth L, trained with AdamW on the standard library's own
.py files (transfer.py's data, schedule, clipping and evaluation; the same init seed and batches for
every run). Sides: `mup` is the model as written at its depth (the base width: muP changes
nothing); `completep` and `depth_mup` are `mupify(make_model, depth_base=D0, depth_target=L,
options={"depth_alpha": a})` (residual branches x (L/D0)^-a, Adam LR inside the blocks x
(L/D0)^(a-1), the depth-D0 proxy's init). Reported per side: the optimal LR per depth (grid and
parabola), its drift in octaves, deeper-is-better at the optimum, and the regret at each depth of
the LR tuned at the base depth.

    python benchmarks/transfer/depth.py                 # CPU sweep (depths 2-16)
    python benchmarks/transfer/depth.py --config tiny   # end-to-end check, ~1 min
    python benchmarks/transfer/depth.py --gpu           # the large configuration on cuda

Outputs: benchmarks/results/transfer/depth[_<config>].{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402

import muprewrite  # noqa: E402
import transfer  # noqa: E402
from muprewrite.passes.capture import build_model  # noqa: E402

SIDES = {"mup": None, "completep": 1.0, "depth_mup": 0.5}  # side -> depth_alpha (None: no depth transfer)
LABELS = {"mup": "muP alone (the model as written at each depth)", "completep": "CompleteP (alpha = 1)",
          "depth_mup": "depth-muP (alpha = 1/2)"}
CONFIGS = {
    "tiny": dict(width=32, depths=[2, 4], log2_lrs=[-10, -8, -6], steps=20, batch_size=8, block_size=64,
                 n_head=1, eval_batches=2),
    "default": dict(width=64, depths=[2, 4, 8, 16], log2_lrs=list(range(-11, -4)), steps=400, batch_size=16,
                    block_size=64, n_head=1, eval_batches=8),
    "large": dict(width=256, depths=[2, 4, 8, 16, 32], log2_lrs=list(range(-13, -4)), steps=2000, batch_size=32,
                  block_size=256, n_head=4, eval_batches=32, corpus="full"),
}


def make_factory(cfg: transfer.Config):
    def make_model(width: int, depth: int = 2) -> transfer.GPT:
        return transfer.GPT(transfer.GPTConfig(d_model=width, n_head=cfg.n_head, vocab_size=transfer.VOCAB,
                                               block_size=cfg.block_size, n_layer=depth, dropout=0.0, attention="sdpa"))
    return make_model


def build_at_depth(cfg: transfer.Config, side: str, depth: int, lr: float, device):
    """The model and AdamW for one run at `depth` (transfer.train_run's `build`, depth in the width slot)."""
    factory, width, alpha = make_factory(cfg), cfg.base, SIDES[side]
    example = (torch.zeros(1, cfg.block_size, dtype=torch.long),)
    depths = {} if alpha is None else {"depth_base": cfg.depth_base, "depth_target": depth}
    plan = muprewrite.mupify(factory if alpha is not None else (lambda w: factory(w, depth)), base=width,
                             target=width, example_inputs=example, materialize=False, verify_width=False,
                             options={"depth_alpha": alpha} if alpha is not None else None, **depths).plan
    torch.manual_seed(cfg.seed)
    model = muprewrite.apply_plan(build_model(lambda w: factory(w, depth), width), plan, reinit=True, inplace=True)
    groups = muprewrite.param_groups(model.to(device), plan, lr=lr, weight_decay=cfg.weight_decay, optimizer="adamw")
    return model, torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.weight_decay, betas=cfg.betas, eps=cfg.eps)


def summarize(cfg: transfer.Config, runs: list) -> dict:
    sides = {}
    for side in SIDES:
        per_depth = {}
        for depth in cfg.depths:
            points = [(r["log2_lr"], transfer.loss_of(r)) for r in runs if r["side"] == side and r["depth"] == depth]
            if not points:
                continue
            best = min(points, key=lambda p: p[1])
            per_depth[depth] = {"best_log2_lr": best[0] if math.isfinite(best[1]) else None,
                                "best_val_loss": best[1] if math.isfinite(best[1]) else None,
                                "fitted_log2_lr": transfer.fitted_optimum(points)}
        optima = [v["fitted_log2_lr"] if v["fitted_log2_lr"] is not None else v["best_log2_lr"]
                  for v in per_depth.values() if v["best_log2_lr"] is not None]
        losses = [v["best_val_loss"] for v in per_depth.values() if v["best_val_loss"] is not None]
        tuned = per_depth.get(cfg.depth_base, {}).get("best_log2_lr")
        regret = {}
        for depth, v in per_depth.items():
            run = next((r for r in runs if r["side"] == side and r["depth"] == depth and r["log2_lr"] == tuned), None)
            if run is not None and v["best_val_loss"] is not None and math.isfinite(transfer.loss_of(run)):
                regret[depth] = transfer.loss_of(run) - v["best_val_loss"]
        sides[side] = {"per_depth": per_depth, "drift_octaves": max(optima) - min(optima) if optima else None,
                       "deeper_is_better": all(b <= a for a, b in zip(losses, losses[1:])) if losses else None,
                       "regret_at_base_lr": regret}
    return sides


def render(cfg: transfer.Config, data: dict, png: str, command: str) -> str:
    lines = ["# Depth transfer: LR sweep across depths at one width", "",
             f"`{command}` — width {cfg.base}, depths {', '.join(map(str, cfg.depths))} (base depth {cfg.depth_base}), "
             f"log2 LR {cfg.log2_lrs[0]}..{cfg.log2_lrs[-1]}, {cfg.steps} AdamW steps, batch {cfg.batch_size} x "
             f"{cfg.block_size} bytes, weight decay {cfg.weight_decay}; {data['seconds'] / 60:.1f} min on "
             f"{data['device']}.", "", f"![loss vs LR per depth]({png})", "",
             "| side | optimal log2 LR per depth (parabola) | drift (octaves) | deeper is better | regret at the deepest, LR tuned at the base depth |",
             "|---|---|---|---|---|"]
    deepest = cfg.depths[-1]
    for side, s in data["summary"].items():
        optima = ", ".join(f"{d}: {v['best_log2_lr']} ({_num(v['fitted_log2_lr'])})" for d, v in s["per_depth"].items())
        lines.append(f"| {LABELS[side]} | {optima} | {_num(s['drift_octaves'])} | {s['deeper_is_better']} | "
                     f"{_num(s['regret_at_base_lr'].get(deepest))} |")
    lines += ["", "| side | " + " | ".join(f"depth {d}: best loss" for d in cfg.depths) + " |",
              "|---|" + "---|" * len(cfg.depths)]
    for side, s in data["summary"].items():
        lines.append(f"| {side} | " + " | ".join(_num(s["per_depth"].get(d, {}).get("best_val_loss"), 4)
                                               for d in cfg.depths) + " |")
    return "\n".join(lines) + "\n"


def _num(x, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def plot(cfg: transfer.Config, data: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SIDES), figsize=(5 * len(SIDES), 4), sharey=True)
    for ax, side in zip(axes, SIDES):
        for depth in cfg.depths:
            points = sorted((r["log2_lr"], transfer.loss_of(r)) for r in data["runs"] if r["side"] == side and r["depth"] == depth)
            ax.plot([x for x, _ in points], [y if math.isfinite(y) else float("nan") for _, y in points], "o-", label=f"depth {depth}")
        ax.set_title(LABELS[side], fontsize=9)
        ax.set_xlabel("log2 learning rate")
    axes[0].set_ylabel("validation loss")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default=None)
    parser.add_argument("--gpu", action="store_true", help="the large configuration on cuda")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    name = args.config or ("large" if args.gpu else "default")
    preset = dict(CONFIGS[name])
    width, depths = preset.pop("width"), preset.pop("depths")
    cfg = transfer.Config(widths=[width], base=width, n_layer=depths[0], **preset)
    cfg.depths, cfg.depth_base = depths, depths[0]  # the depth axis, on the width sweep's settings
    device = torch.device("cuda" if args.gpu and torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.threads)
    batches = transfer.Batches(transfer.load_corpus(cfg), cfg, device)
    jobs = [(side, depth, lr) for depth in depths for side in SIDES for lr in cfg.log2_lrs]
    runs, start = [], time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        task = bar.add_task("depth sweep", total=len(jobs))
        for side, depth, log2_lr in jobs:
            bar.update(task, description=f"{side} depth {depth} lr 2^{log2_lr}")
            run = transfer.train_run(cfg, side, depth, log2_lr, batches, device, lambda n=1: None, build=build_at_depth)
            run["depth"] = run.pop("width")
            runs.append(run)
            bar.advance(task)
    command = "python benchmarks/transfer/depth.py" + (f" --config {args.config}" if args.config else "") + \
              (" --gpu" if args.gpu else "")
    data = {"config": {**asdict(replace(cfg)), "depths": depths, "depth_base": cfg.depth_base}, "runs": runs,
            "summary": summarize(cfg, runs), "seconds": time.perf_counter() - start, "device": str(device),
            "environment": transfer._common.environment()}
    stem = "depth" if name == "default" else f"depth_{name}"
    transfer.RESULTS.mkdir(parents=True, exist_ok=True)
    (transfer.RESULTS / f"{stem}.json").write_text(json.dumps(data, indent=1))
    plot(cfg, data, transfer.RESULTS / f"{stem}.png")
    markdown = render(cfg, data, f"{stem}.png", command)
    (transfer.RESULTS / f"{stem}.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
