"""muTransfer benchmark: a learning-rate sweep at several widths, SP original vs the muP rewrite.

A small GPT (examples/nanogpt.py, byte-level vocabulary of 256, no dropout) is trained on the
bytes of the Python standard library's own .py files (every machine has them) with AdamW, at
each width and each learning rate on a log2 grid, once as the original model (SP: `factory(w)`,
`AdamW(model.parameters(), lr)`) and once rewritten by muprewrite (muP:
`mupify(factory, base=BASE, target=w)`, `AdamW(result.param_groups(lr, wd))`; its plan made from one
analysis of the model shared by every side, width and LR, `Analysis.plan_for`). Same init seed and
identical batches for every run. The final validation loss of every run is written to JSON; the
report gives the optimal LR per width, its drift across widths in log2 units, and checks "wider is
better" at the optimum (TP5 §8); the plot is TP5 Fig. 1 (loss vs log2 LR, one curve per width).

    python benchmarks/transfer/transfer.py                      # default CPU sweep (~25 min, 2 cores)
    python benchmarks/transfer/transfer.py --config tiny        # end-to-end check, ~1 min
    python benchmarks/transfer/transfer.py --gpu                # = --config large on cuda
    python benchmarks/transfer/transfer.py --ablation lingle    # Lingle 2024's muP ablations
    python benchmarks/transfer/transfer.py --replot             # redo .md/.png from the .json

Outputs: benchmarks/results/transfer/transfer.{md,json,png} (transfer_lingle.* with
--ablation lingle; transfer_<config>.* for a non-default --config). See README.md next to this
file for what every number means.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))            # benchmarks/_common.py
sys.path.insert(0, str(ROOT / "examples"))      # examples/nanogpt.py

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import _common  # noqa: E402
import muprewrite  # noqa: E402
from muprewrite.passes.capture import build_model  # noqa: E402
from nanogpt import GPT, GPTConfig  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "transfer"
VOCAB = 256

# ---------------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------------


@dataclass
class Config:
    widths: list
    base: int
    log2_lrs: list
    steps: int
    batch_size: int
    block_size: int
    n_layer: int
    n_head: int
    eval_batches: int
    corpus: str = "top"            # "top": *.py directly in the stdlib dir; "full": recursive
    warmup_frac: float = 0.1       # linear warmup, then cosine decay to 0
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.98)
    eps: float = 1e-9
    grad_clip: float = 1.0         # global gradient-norm clipping (0 = off), as nanoGPT and Lingle
    seed: int = 0
    val_frac: float = 0.1
    variants: dict = field(default_factory=dict)   # side name -> mupify options (None = SP)
    optimizer: str = "adamw"       # a muprewrite optimizer family (muon: Muon for hidden matrices + AdamW)


MAIN_VARIANTS = {"sp": None, "mup": {}}
LINGLE_VARIANTS = {
    "mup": {},
    "mup+coupled_wd": {"weight_decay": "coupled"},
    "mup+sp_attention": {"attention_scale": "sp"},
    "mup+frozen_gains": {"norm_gains": "frozen"},
}
# Sides that are the SP model bit for bit at the base width (every multiplier is 1 there), so
# their base-width runs are shared; frozen gains or zero-init readout change the base model.
SAME_AT_BASE = {side: {**MAIN_VARIANTS, **LINGLE_VARIANTS}[side]
                for side in ("sp", "mup", "mup+coupled_wd", "mup+sp_attention")}
VARIANT_LABELS = {
    "sp": "SP (original model, the plain optimizer: one LR for every tensor)",
    "mup": "muP (muprewrite defaults)",
    "mup+coupled_wd": "muP + weight decay coupled to the per-tensor LR",
    "mup+sp_attention": "muP + SP attention scale 1/sqrt(d_head)",
    "mup+frozen_gains": "muP + frozen norm gains",
}

CONFIGS = {
    # End-to-end check in about a minute.
    "tiny": dict(widths=[32, 64], base=32, log2_lrs=[-10, -8, -6], steps=20, batch_size=8,
                 block_size=64, n_layer=2, n_head=1, eval_batches=2),
    # The CPU sweep: 3 widths x 7 LRs x {SP, muP}, ~28 minutes on 2 idle cores. 1600 steps: at
    # 400 every width still sits on the same loss plateau and wider is not better (README.md).
    "default": dict(widths=[32, 64, 128], base=32, log2_lrs=list(range(-9, -2)), steps=1600,
                    batch_size=16, block_size=128, n_layer=2, n_head=1, eval_batches=8),
    # For a GPU: TP5 Fig. 4's regime for clean optima (depth 4, batch 32, seq 256, thousands of
    # steps, widths to 2048) on the whole stdlib (12 MB). n_head 4: d_head 32 at the base width.
    "large": dict(widths=[128, 256, 512, 1024, 2048], base=128, log2_lrs=list(range(-14, -5)),
                  steps=3000, batch_size=32, block_size=256, n_layer=4, n_head=4, eval_batches=32,
                  corpus="full"),
}
# The Lingle ablation on CPU: the default sweep's widths and steps, 6 LRs around its muP optima, 4 variants.
LINGLE_CPU = dict(log2_lrs=list(range(-8, -2)))


# ---------------------------------------------------------------------------------------------
# Data: the bytes of the standard library's .py files
# ---------------------------------------------------------------------------------------------

SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


def stdlib_files(corpus: str) -> tuple[Path, list]:
    """A deterministic, sorted list of the standard library's .py files.

    "top": every *.py directly in the directory of `os.py` (no packages, so no tests, no
    site-packages); "full": every *.py below it except site-packages and test directories.
    Sorted by relative path (POSIX form), so the list depends only on the Python version.
    """
    root = Path(os.__file__).resolve().parent
    if corpus == "top":
        files = [p for p in root.glob("*.py") if p.is_file()]
    elif corpus == "full":
        files = [p for p in root.rglob("*.py")
                 if p.is_file() and not (SKIP_DIRS & set(p.relative_to(root).parts[:-1]))]
    else:
        raise SystemExit(f"unknown corpus {corpus!r}")
    return root, sorted(files, key=lambda p: p.relative_to(root).as_posix())


def load_corpus(cfg: Config) -> dict:
    """Train/validation byte tensors: the last files in sorted order (>= val_frac of the bytes)
    are the validation set, so no file is in both."""
    root, files = stdlib_files(cfg.corpus)
    blobs = [p.read_bytes() for p in files]
    sizes = [len(b) for b in blobs]
    total = sum(sizes)
    if not 1_000_000 <= total <= 50_000_000:
        raise SystemExit(f"the stdlib corpus is {total / 1e6:.1f} MB, expected a few MB: {root}")
    n_val_files, val_bytes = 0, 0
    while val_bytes < cfg.val_frac * total:
        n_val_files += 1
        val_bytes += sizes[-n_val_files]
    train = b"".join(blobs[:-n_val_files])
    val = b"".join(blobs[-n_val_files:])
    as_tensor = lambda b: torch.frombuffer(bytearray(b), dtype=torch.uint8).long()  # noqa: E731
    names = [p.relative_to(root).as_posix() for p in files]
    return {
        "train": as_tensor(train), "val": as_tensor(val),
        "info": {
            "root": str(root), "python": sys.version.split()[0], "corpus": cfg.corpus,
            "n_files": len(files), "total_bytes": total,
            "train_files": len(files) - n_val_files, "train_bytes": len(train),
            "val_files": n_val_files, "val_bytes": len(val),
            "val_first_file": names[-n_val_files],
            "sha256_train": hashlib.sha256(train).hexdigest(),
            "sha256_val": hashlib.sha256(val).hexdigest(),
            "files": [[n, s] for n, s in zip(names, sizes)],
        },
    }


class Batches:
    """Random (batch, block) windows at offsets drawn once from seeded generators: every run sees
    the same training batches in the same order and is evaluated on the same validation windows."""

    def __init__(self, data: dict, cfg: Config, device):
        T = cfg.block_size
        self.train, self.val = data["train"].to(device), data["val"].to(device)
        g = torch.Generator().manual_seed(cfg.seed)
        self.train_offsets = torch.randint(0, len(self.train) - T - 1, (cfg.steps, cfg.batch_size), generator=g)
        g = torch.Generator().manual_seed(cfg.seed + 1)
        self.val_offsets = torch.randint(0, len(self.val) - T - 1, (cfg.eval_batches, cfg.batch_size), generator=g)
        self.arange = torch.arange(T + 1)
        self.device = device

    def _windows(self, data, offsets):
        idx = (offsets[:, None] + self.arange).to(self.device)
        chunk = data[idx]
        return chunk[:, :-1], chunk[:, 1:]

    def train_batch(self, step: int):
        return self._windows(self.train, self.train_offsets[step])

    def val_batches(self):
        for offsets in self.val_offsets:
            yield self._windows(self.val, offsets)


# ---------------------------------------------------------------------------------------------
# Model and one training run
# ---------------------------------------------------------------------------------------------


def make_factory(cfg: Config):
    def make_model(width: int) -> GPT:
        return GPT(GPTConfig(d_model=width, n_head=cfg.n_head, vocab_size=VOCAB, block_size=cfg.block_size,
                             n_layer=cfg.n_layer, dropout=0.0, attention="sdpa"))
    return make_model


_ANALYSES = {}  # the model's settings -> its analysis (the same for every side: options act at planning)


def analysis_for(cfg: Config):
    """The analysis of the benchmark's model, captured once at base, 2 x base and the widest width
    and shared by every side, width and LR (`mupify` per run captured it again every time)."""
    key = (cfg.n_layer, cfg.n_head, cfg.block_size, cfg.base, max(cfg.widths))
    if key not in _ANALYSES:
        example = (torch.zeros(1, cfg.block_size, dtype=torch.long),)
        _ANALYSES[key] = muprewrite.analyse_widths(make_factory(cfg), base=cfg.base, target=max(cfg.widths),
                                                   example_inputs=example)
    return _ANALYSES[key]


def build(cfg: Config, side: str, width: int, lr: float, device):
    """The model and optimizer for one run; the init seed is the same for every run."""
    factory = make_factory(cfg)
    options = cfg.variants[side]
    torch.manual_seed(cfg.seed)
    if options is None and cfg.optimizer == "adamw":  # SP: the original model with a plain optimizer
        model = factory(width).to(device)
        return model, torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay, betas=cfg.betas,
                                        eps=cfg.eps)
    # muP: muprewrite's rewrite and its per-tensor LR / weight decay; SP with another family: the
    # SP plan (every multiplier 1), which knows which tensors the family sends where (muon). The
    # plan is mupify's (`plan_for` draws no random numbers), the model built fresh as mupify's is.
    plan = analysis_for(cfg).plan_for(width, "sp" if options is None else "mup", options or None)
    model = muprewrite.apply_plan(build_model(factory, width), plan, reinit=True, inplace=True).to(device)
    if cfg.optimizer == "adamw":
        groups = muprewrite.param_groups(model, plan, lr=lr, weight_decay=cfg.weight_decay, optimizer="adamw")
        return model, torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.weight_decay, betas=cfg.betas, eps=cfg.eps)
    settings = {"adamw": {"betas": cfg.betas}} if cfg.optimizer == "muon" else {}
    return model, muprewrite.build_optimizer(model, plan, cfg.optimizer, lr=lr, weight_decay=cfg.weight_decay,
                                             eps=cfg.eps, **settings)


def lr_factor(cfg: Config):
    warmup = max(1, round(cfg.warmup_frac * cfg.steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, cfg.steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


@torch.no_grad()
def evaluate(model, batches: Batches) -> float:
    model.eval()
    losses = [F.cross_entropy(model(x).float().view(-1, VOCAB), y.reshape(-1)).item() for x, y in batches.val_batches()]
    model.train()
    return sum(losses) / len(losses)


def train_run(cfg: Config, side: str, width: int, log2_lr: float, batches: Batches, device, on_step,
              build=build) -> dict:
    """One run (`build`: the model and optimizer, as `build` below; depth.py passes its own). Diverged: a non-finite loss, or a final validation loss above the initial one.
    To save time a run stops early (and counts as diverged) when the training loss is non-finite,
    or when after 30% of the steps (and at least 50) its running mean is still above the initial
    validation loss."""
    lr = 2.0 ** log2_lr
    start = time.perf_counter()
    model, optimizer = build(cfg, side, width, lr, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))
    init_loss = evaluate(model, batches)
    ema, curve, stopped, reason = None, [], None, None
    every = max(1, cfg.steps // 50)
    train_start = time.perf_counter()
    for step in range(cfg.steps):
        x, y = batches.train_batch(step)
        loss = F.cross_entropy(model(x).float().view(-1, VOCAB), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        value = loss.item()
        on_step()
        ema = value if ema is None else 0.9 * ema + 0.1 * value
        if step % every == 0 or step == cfg.steps - 1:
            curve.append([step, value])
        if not math.isfinite(value):
            stopped, reason = step, "non-finite training loss"
        elif step >= max(50, 0.3 * cfg.steps) and ema > init_loss:
            stopped, reason = step, "training loss above the initial loss after 30% of the steps"
        if stopped is not None:
            on_step(cfg.steps - step - 1)
            break
    train_seconds = time.perf_counter() - train_start
    steps_done = (stopped + 1) if stopped is not None else cfg.steps
    final = evaluate(model, batches) if stopped is None else float("nan")
    if stopped is None and not math.isfinite(final):
        reason = "non-finite validation loss"
    elif stopped is None and final > init_loss:
        reason = "final validation loss above the initial loss"
    n_groups = len(optimizer.param_groups)
    return {
        "side": side, "width": width, "log2_lr": log2_lr, "lr": lr,
        "init_val_loss": init_loss, "final_val_loss": final if math.isfinite(final) else None,
        "final_train_loss_ema": ema if ema is not None and math.isfinite(ema) else None,
        "diverged": reason is not None, "diverged_reason": reason, "steps_done": steps_done,
        "seconds": time.perf_counter() - start, "seconds_per_step": train_seconds / steps_done,
        "param_groups": n_groups, "train_curve": curve,
    }


# ---------------------------------------------------------------------------------------------
# Analysis
# ---------------------------------------------------------------------------------------------


def loss_of(run) -> float:
    return run["final_val_loss"] if not run["diverged"] and run["final_val_loss"] is not None else math.inf


def fitted_optimum(points: list) -> float | None:
    """Vertex of the parabola through the best grid point and its two neighbours (log2 LR), or
    None when the best point is at the edge of the grid or a neighbour diverged."""
    points = sorted(points)
    losses = [l for _, l in points]
    i = min(range(len(points)), key=lambda k: losses[k])
    if i == 0 or i == len(points) - 1 or not all(math.isfinite(l) for l in losses[i - 1:i + 2]):
        return None
    (x0, y0), (x1, y1), (x2, y2) = points[i - 1:i + 2]
    denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
    b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / denom
    if a <= 0:
        return None
    return min(max(-b / (2 * a), x0), x2)


def _at_base_lr(cfg: Config, side: str, runs: list, per_width: dict) -> dict:
    """muTransfer's question: the LR tuned at the base width, used at every width. Per width:
    the loss there, and the regret = that loss - the width's own best loss."""
    tuned = per_width.get(cfg.base, {}).get("best_log2_lr")
    out = {}
    for w, v in per_width.items():
        run = next((r for r in runs if r["side"] == side and r["width"] == w and r["log2_lr"] == tuned), None)
        if run is None or v["best_val_loss"] is None:
            continue
        loss = loss_of(run)
        out[w] = {"log2_lr": tuned, "val_loss": loss if math.isfinite(loss) else None,
                  "regret": loss - v["best_val_loss"] if math.isfinite(loss) else None}
    return out


def summarize(cfg: Config, runs: list) -> dict:
    out = {}
    for side in cfg.variants:
        per_width = {}
        for w in cfg.widths:
            rs = [r for r in runs if r["side"] == side and r["width"] == w]
            if not rs:
                continue
            best = min(rs, key=loss_of)
            ok = math.isfinite(loss_of(best))
            grid = [r["log2_lr"] for r in rs]
            per_width[w] = {
                "best_log2_lr": best["log2_lr"] if ok else None,
                "best_val_loss": loss_of(best) if ok else None,
                "at_grid_edge": ok and best["log2_lr"] in (min(grid), max(grid)),
                "fitted_log2_lr": fitted_optimum([(r["log2_lr"], loss_of(r)) for r in rs]) if ok else None,
                "diverged": sorted(r["log2_lr"] for r in rs if r["diverged"]),
                "n_runs": len(rs),
            }
        bests = [v["best_log2_lr"] for v in per_width.values() if v["best_log2_lr"] is not None]
        fits = [v["fitted_log2_lr"] for v in per_width.values() if v["fitted_log2_lr"] is not None]
        losses = [v["best_val_loss"] for v in per_width.values() if v["best_val_loss"] is not None]
        # wider is better at every common LR (TP5 §8): per LR, is the loss non-increasing in width?
        per_lr = {}
        for lr in cfg.log2_lrs:
            ls = [loss_of(r) for w in cfg.widths for r in runs if r["side"] == side and r["width"] == w and r["log2_lr"] == lr]
            if len(ls) == len(cfg.widths) and all(math.isfinite(l) for l in ls):
                per_lr[lr] = all(b < a for a, b in zip(ls, ls[1:]))
        out[side] = {
            "per_width": per_width,
            "at_base_lr": _at_base_lr(cfg, side, runs, per_width),
            "drift_log2": (max(bests) - min(bests)) if len(bests) == len(per_width) and bests else None,
            "drift_fitted_log2": (max(fits) - min(fits)) if len(fits) == len(per_width) and fits else None,
            "optimum_shift_log2": (bests[-1] - bests[0]) if len(bests) == len(per_width) and bests else None,
            "wider_is_better_at_optimum": (len(losses) == len(per_width) and all(b < a for a, b in zip(losses, losses[1:]))),
            "wider_is_better_per_lr": per_lr,
        }
    # At the base width SP and muP (defaults) are the same model with the same optimizer state.
    # Runs reused from another sweep may have used another thread count: the same model then differs
    # only in floating-point summation order, which measures the noise of a single run.
    same, noise = [], {}
    if "sp" in cfg.variants and "mup" in cfg.variants:
        for lr in cfg.log2_lrs:
            pair = [r for r in runs if r["width"] == cfg.base and r["log2_lr"] == lr and r["side"] in ("sp", "mup")
                    and not r.get("same_model_as")]
            if len(pair) == 2 and pair[0]["final_val_loss"] is not None and pair[1]["final_val_loss"] is not None:
                diff = abs(pair[0]["final_val_loss"] - pair[1]["final_val_loss"])
                if bool(pair[0].get("reused_from")) == bool(pair[1].get("reused_from")):
                    same.append(diff)
                else:
                    noise[lr] = diff
    out["base_width_identity_max_abs_diff"] = max(same) if same else None
    out["base_width_reused_vs_fresh_abs_diff"] = noise
    return out


# ---------------------------------------------------------------------------------------------
# Report: Markdown, JSON, PNG
# ---------------------------------------------------------------------------------------------


def fmt_lr(x) -> str:
    return "—" if x is None else (f"2^{x:g}" if float(x).is_integer() else f"2^{x:.2f}")


def fmt_loss(x) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.4f}"


def render_markdown(data: dict, png_name: str) -> str:
    cfg = Config(**data["config"])
    summary, runs, env = data["summary"], data["runs"], data["env"]
    sides = list(cfg.variants)
    title = "Lingle 2024 ablations with muprewrite options" if data["ablation"] == "lingle" else "muTransfer: SP vs muP rewrite"
    lines = [f"# {title}", ""]
    lines += [
        f"nanoGPT (`examples/nanogpt.py`): n_layer {cfg.n_layer}, n_head {cfg.n_head} (fixed, so d_head = width/{cfg.n_head} "
        f"grows), block {cfg.block_size}, byte vocabulary {VOCAB}, dropout 0, untied readout. "
        f"Widths {', '.join(map(str, cfg.widths))} (muP base {cfg.base}). {_optimizer_words(cfg)}, "
        f"weight decay {cfg.weight_decay:g}, grad-norm clip {cfg.grad_clip:g}, {cfg.steps} steps of {cfg.batch_size}x{cfg.block_size} tokens, "
        f"{cfg.warmup_frac:.0%} linear warmup then cosine decay to 0; LR grid {fmt_lr(min(cfg.log2_lrs))} … "
        f"{fmt_lr(max(cfg.log2_lrs))} in steps of 2x. Validation loss = mean cross-entropy (nats/byte) over "
        f"{cfg.eval_batches} fixed batches of held-out files.",
        "",
        "Sides: " + "; ".join(f"`{s}` = {VARIANT_LABELS.get(s, s)} (options {json.dumps(cfg.variants[s])})" for s in sides),
        "",
    ]
    d = data["data"]
    lines += [
        f"Data: {d['n_files']} `.py` files of the Python {d['python']} standard library ({d['corpus']!r} list, "
        f"{d['total_bytes'] / 1e6:.2f} MB), sorted; train = the first {d['train_files']} files ({d['train_bytes'] / 1e6:.2f} MB), "
        f"validation = the last {d['val_files']} files from `{d['val_first_file']}` on ({d['val_bytes'] / 1e6:.2f} MB). "
        f"sha256 train {d['sha256_train'][:16]}…, val {d['sha256_val'][:16]}… (full list in the JSON).",
        "",
        "## Optimal learning rate per width",
        "",
    ]
    headers = ["side", "width", "best LR (grid)", "fitted LR*", "val loss at best", "diverged LRs"]
    rows = []
    for s in sides:
        for w, v in summary[s]["per_width"].items():
            edge = " (grid edge)" if v["at_grid_edge"] else ""
            rows.append([f"`{s}`", w, fmt_lr(v["best_log2_lr"]) + edge, fmt_lr(v["fitted_log2_lr"]),
                         fmt_loss(v["best_val_loss"]), ", ".join(fmt_lr(x) for x in v["diverged"]) or "none"])
    lines += [_common.md_table(headers, rows), ""]
    headers = ["side", "drift of LR* (grid, max−min, log2)", "drift (fitted)", "shift narrowest→widest (grid)",
               "wider is better at the optimum", "wider is better at each LR"]
    rows = []
    for s in sides:
        v = summary[s]
        per_lr = v["wider_is_better_per_lr"]
        per_lr_txt = f"{sum(per_lr.values())}/{len(per_lr)} LRs" if per_lr else "—"
        rows.append([f"`{s}`", _num(v["drift_log2"]), _num(v["drift_fitted_log2"]), _num(v["optimum_shift_log2"]),
                     "yes" if v["wider_is_better_at_optimum"] else "**no**", per_lr_txt])
    lines += ["## Transfer summary", "", _common.md_table(headers, rows), ""]
    headers = ["side", "LR tuned at the base width"] + [f"width {w}: loss (regret)" for w in cfg.widths]
    rows = []
    for s in sides:
        at_base = {int(w): v for w, v in summary[s].get("at_base_lr", {}).items()}
        if not at_base:
            continue
        tuned = next(iter(at_base.values()))["log2_lr"]
        rows.append([f"`{s}`", fmt_lr(tuned)] + [
            "—" if w not in at_base else ("diverged" if at_base[w]["val_loss"] is None
                                          else f"{at_base[w]['val_loss']:.4f} (+{at_base[w]['regret']:.4f})")
            for w in cfg.widths])
    if rows:
        lines += ["The LR tuned at the base width, used as is at every width (what muTransfer does); regret = "
                  "the loss there minus that width's best loss on the grid.", "", _common.md_table(headers, rows), ""]
    if summary.get("base_width_identity_max_abs_diff") is not None:
        lines += [f"At the base width {cfg.base} SP and muP are the same model: max |Δ final val loss| over the LRs "
                  f"where both were trained = {summary['base_width_identity_max_abs_diff']:.3g}.", ""]
    noise = summary.get("base_width_reused_vs_fresh_abs_diff") or {}
    if noise:
        lines += [f"At the base width {cfg.base}, the same model trained in this sweep and in the sweep its runs were "
                  "reused from (another thread count, so another floating-point summation order) ends at losses "
                  "differing by " + ", ".join(f"{d:.3f} at {fmt_lr(lr)}" for lr, d in sorted(noise.items()))
                  + ": the run-to-run noise of a single run; loss differences of this size mean nothing.", ""]
    shared = {}
    for r in runs:
        if r.get("same_model_as"):
            shared.setdefault((r["side"], r["same_model_as"]), []).append(r["log2_lr"])
    for (side, partner), lrs in shared.items():
        lines += [f"At the base width `{side}` is the `{partner}` model bit for bit (every multiplier is 1; "
                  f"`tests/test_transfer_benchmark.py`): it shares `{partner}`'s runs (log2 LR "
                  f"{', '.join(map(str, sorted(lrs)))}) instead of repeating them.", ""]
    lines += ["## Validation loss, every run", "",
              "Rows: log2 LR; columns: width. `div` = diverged (non-finite, or above the initial loss); "
              "**bold** = best per width.", ""]
    for s in sides:
        lines += [f"### `{s}`", ""]
        headers = ["log2 LR"] + [str(w) for w in cfg.widths]
        rows = []
        for lr in cfg.log2_lrs:
            row = [f"{lr:g}"]
            for w in cfg.widths:
                r = next((r for r in runs if r["side"] == s and r["width"] == w and r["log2_lr"] == lr), None)
                if r is None:
                    row.append("")
                elif r["diverged"]:
                    row.append("div")
                else:
                    best = summary[s]["per_width"].get(w, {}).get("best_log2_lr") == lr
                    row.append(f"**{fmt_loss(r['final_val_loss'])}**" if best else fmt_loss(r["final_val_loss"]))
            rows.append(row)
        lines += [_common.md_table(headers, rows), ""]
    secs = {}
    for r in runs:
        secs.setdefault(r["width"], []).append(r["seconds_per_step"])
    lines += ["## Run time", "",
              f"Wall time {data['wall_seconds'] / 60:.1f} min for {len(runs) - data.get('reused_runs', 0)} runs on device `{data['device']}` "
              + (f"({data['reused_runs']} further runs reused from `{Path(next(r['reused_from'] for r in runs if r.get('reused_from'))).name}`, "
                 "same settings) " if data.get("reused_runs") else "")
              + "(median seconds per training step by width: "
              + ", ".join(f"{w}: {sorted(v)[len(v) // 2]:.3f}" for w, v in sorted(secs.items())) + ").", ""]
    lines += [f"![plot]({png_name})", "", "## Environment", "", _common.env_md(env)]
    lines += [f"- muprewrite imported from `{env.get('muprewrite')}`", ""]
    return "\n".join(lines)


def _num(x) -> str:
    return "—" if x is None else f"{x:.2f}".rstrip("0").rstrip(".")


def plot(data: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    cfg = Config(**data["config"])
    sides = list(cfg.variants)
    runs, summary = data["runs"], data["summary"]
    nrows = 2 if len(sides) > 2 else 1
    ncols = math.ceil(len(sides) / nrows)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.0 * nrows + 0.4), sharey=True, squeeze=False)
    axes = [list(axes.flat)]
    cmap = plt.get_cmap("viridis")
    colors = {w: cmap(i / max(1, len(cfg.widths) - 1) * 0.9) for i, w in enumerate(cfg.widths)}
    finite = [loss_of(r) for r in runs if math.isfinite(loss_of(r))]
    lo = min(finite) if finite else 0.0
    init = min((r["init_val_loss"] for r in runs), default=lo + 2)
    hi = min(init, sorted(finite)[int(0.8 * (len(finite) - 1))] + 0.3) if finite else lo + 1
    for ax, s in zip(axes[0], sides):
        for w in cfg.widths:
            rs = sorted((r for r in runs if r["side"] == s and r["width"] == w), key=lambda r: r["log2_lr"])
            xs = [r["log2_lr"] for r in rs if math.isfinite(loss_of(r))]
            ys = [loss_of(r) for r in rs if math.isfinite(loss_of(r))]
            ax.plot(xs, ys, "-o", color=colors[w], ms=3.5, lw=1.6, label=f"width {w}")
            div = [r["log2_lr"] for r in rs if not math.isfinite(loss_of(r))]
            if div:
                ax.plot(div, [hi] * len(div), "x", color=colors[w], ms=7, mew=1.8)
            best = summary[s]["per_width"].get(w, {})
            if best.get("best_log2_lr") is not None:
                ax.plot([best["best_log2_lr"]], [best["best_val_loss"]], "*", color=colors[w], ms=15,
                        markeredgecolor="black", markeredgewidth=0.7, zorder=5)
        drift = summary[s]["drift_log2"]
        ax.set_title(f"{VARIANT_LABELS.get(s, s).split(' (')[0]}\nLR* drift {_num(drift)} (log2)", fontsize=10)
        ax.set_xlabel("log2 learning rate")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.set_ylim(lo - 0.03 * (hi - lo), hi + 0.03 * (hi - lo))
    for k, ax in enumerate(axes[0]):
        if k % ncols == 0:
            ax.set_ylabel("validation loss (nats/byte)")
        if k >= len(sides):
            ax.set_visible(False)
    axes[0][len(sides) - 1].legend(fontsize=8, loc="upper right")
    fig.suptitle(f"GPT on stdlib bytes, {cfg.steps} steps, n_layer {cfg.n_layer}; star = optimum, x = diverged",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write_outputs(data: dict, name: str) -> list:
    RESULTS.mkdir(parents=True, exist_ok=True)
    md, js, png = RESULTS / f"{name}.md", RESULTS / f"{name}.json", RESULTS / f"{name}.png"
    js.write_text(json.dumps(data, indent=1) + "\n")
    plot(data, png)
    md.write_text(render_markdown(data, png.name))
    return [md, js, png]


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default=None, help="preset (default: default; --gpu: large)")
    p.add_argument("--gpu", action="store_true", help="the large configuration on cuda")
    p.add_argument("--ablation", choices=["lingle"], default=None, help="Lingle 2024's muP ablations instead of SP vs muP")
    p.add_argument("--optimizer", default=None, help="optimizer family: adamw (default), muon, lion, adafactor, sgd")
    p.add_argument("--variants", default=None, help="comma-separated subset of the sides to run")
    p.add_argument("--widths", default=None, help="e.g. 32,64,128")
    p.add_argument("--base", type=int, default=None)
    p.add_argument("--lrs", default=None, help="log2 LRs: 'lo:hi' (inclusive, step 1) or a comma list; write --lrs=-12:-4")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--block-size", type=int, default=None)
    p.add_argument("--n-layer", type=int, default=None)
    p.add_argument("--n-head", type=int, default=None)
    p.add_argument("--eval-batches", type=int, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--grad-clip", type=float, default=None, help="global grad-norm clip (default 1.0; 0 = off)")
    p.add_argument("--corpus", choices=["top", "full"], default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="default: cuda with --gpu / --config large when available, else cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--name", default=None, help="output name (default transfer[_<config>][_lingle])")
    p.add_argument("--resume", action="store_true", help="skip runs already in results/transfer/<name>.partial.json")
    p.add_argument("--reuse", default=None, metavar="JSON",
                   help="take matching runs (same settings, same side name and options) from another results file, "
                        "e.g. the muP baseline of the Lingle sweep from results/transfer/transfer.json")
    p.add_argument("--replot", action="store_true", help="rewrite .md/.png from the existing .json, no training")
    p.add_argument("--estimate", action="store_true", help="time a few steps per width and print the sweep's estimated runtime")
    return p.parse_args(argv)


def make_config(args) -> tuple[Config, str]:
    preset = args.config or ("large" if args.gpu else "default")
    values = dict(CONFIGS[preset])
    if args.ablation == "lingle" and preset == "default":
        values.update(LINGLE_CPU)
    values["variants"] = dict(LINGLE_VARIANTS if args.ablation == "lingle" else MAIN_VARIANTS)
    if args.variants:
        wanted = args.variants.split(",")
        unknown = [v for v in wanted if v not in values["variants"]]
        if unknown:
            raise SystemExit(f"unknown variant(s) {unknown}; choose from {list(values['variants'])}")
        values["variants"] = {k: values["variants"][k] for k in wanted}
    if args.widths:
        values["widths"] = [int(w) for w in args.widths.split(",")]
    if args.lrs:
        if ":" in args.lrs:
            lo, hi = (int(x) for x in args.lrs.split(":"))
            values["log2_lrs"] = list(range(lo, hi + 1))
        else:
            values["log2_lrs"] = [float(x) if "." in x else int(x) for x in args.lrs.split(",")]
    for key in ("base", "steps", "batch_size", "block_size", "n_layer", "n_head", "eval_batches", "weight_decay",
                "grad_clip", "corpus", "seed", "optimizer"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    values["widths"] = sorted(values["widths"])
    if values["base"] not in values["widths"]:
        values["widths"] = sorted(values["widths"] + [values["base"]])
    name = args.name or "transfer" + ("" if preset == "default" else f"_{preset}") + ("_lingle" if args.ablation else "") \
        + (f"_{args.optimizer}" if args.optimizer and args.optimizer != "adamw" else "")
    return Config(**values), name


def _optimizer_words(cfg: Config) -> str:
    adamw = f"AdamW betas {tuple(cfg.betas)}, eps {cfg.eps:g}"
    if cfg.optimizer == "adamw":
        return adamw
    if cfg.optimizer == "muon":
        return (f"Optimizer: muon (torch.optim.Muon, adjust_lr_fn 'original', for the 2-D hidden matrices, on both sides; "
                f"{adamw} for the rest, at the same lr)")
    return f"Optimizer: {cfg.optimizer} (muprewrite's family, on both sides)"


def base_partner(cfg: Config, side: str, width: int) -> str | None:
    """The side whose run `side` shares at the base width, where both are the same model bit
    for bit (SAME_AT_BASE, checked by tests/test_transfer_benchmark.py): it is trained once."""
    if width != cfg.base or side not in SAME_AT_BASE or cfg.variants[side] != SAME_AT_BASE[side]:
        return None
    first = next(s for s in cfg.variants if s in SAME_AT_BASE and cfg.variants[s] == SAME_AT_BASE[s])
    return None if first == side else first


def share_base_runs(cfg: Config, runs: list, jobs: list) -> None:
    """Append, for each job whose base partner has a run, a copy of that run under its own side."""
    have = {(r["side"], r["width"], r["log2_lr"]): r for r in runs}
    for side, w, lr in jobs:
        partner = base_partner(cfg, side, w)
        if partner and (side, w, lr) not in have and (partner, w, lr) in have:
            runs.append(dict(have[(partner, w, lr)], side=side, same_model_as=partner, seconds=0.0))


def check_variants(cfg: Config) -> None:
    """Fail fast (before any training) if muprewrite does not know a variant's options."""
    factory = make_factory(cfg)
    example = (torch.zeros(1, cfg.block_size, dtype=torch.long),)
    for side, options in cfg.variants.items():
        if options:
            try:
                muprewrite.mupify(factory, base=cfg.base, target=2 * cfg.base, example_inputs=example,
                                  options=options, verify_width=False, materialize=False)
            except muprewrite.MuRewriteError as exc:
                raise SystemExit(f"variant {side!r} (options {options}) is not supported by this muprewrite: {exc}")


def estimate(cfg: Config, batches: Batches, device, n_steps: int = 6) -> dict:
    """Measured seconds per training step at each width (SP model, after 2 warm-up steps)."""
    out = {}
    for w in cfg.widths:
        model, opt = build(cfg, next(iter(cfg.variants)), w, 1e-4, device)
        for i in range(n_steps + 2):
            if i == 2:
                _sync(device)
                t = time.perf_counter()
            x, y = batches.train_batch(i % cfg.steps)
            loss = F.cross_entropy(model(x).float().view(-1, VOCAB), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(device)
        out[w] = (time.perf_counter() - t) / n_steps
    return out


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg, name = make_config(args)
    if args.replot:
        data = json.loads((RESULTS / f"{name}.json").read_text())
        data["summary"] = summarize(Config(**data["config"]), data["runs"])
        for path in write_outputs(data, name):
            print(os.path.relpath(path, ROOT))
        return 0

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console()
    torch.set_num_threads(args.threads)
    large = (args.config or ("large" if args.gpu else "default")) == "large"
    device = torch.device(args.device or ("cuda" if large and torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    data = load_corpus(cfg)
    batches = Batches(data, cfg, device)
    check_variants(cfg)
    env = _common.environment()
    env["muprewrite"] = str(Path(muprewrite.__file__).resolve().parent)
    jobs = [(s, w, lr) for w in cfg.widths for s in cfg.variants for lr in cfg.log2_lrs]
    console.print(f"[bold]{name}[/]: {len(jobs)} runs ({len(cfg.widths)} widths x {len(cfg.log2_lrs)} LRs x "
                  f"{len(cfg.variants)} sides), {cfg.steps} steps each, device {device}; data "
                  f"{data['info']['train_bytes'] / 1e6:.2f} MB train / {data['info']['val_bytes'] / 1e6:.2f} MB val")
    partial = RESULTS / f"{name}.partial.json"
    runs = []
    source = partial if partial.exists() else RESULTS / f"{name}.json"
    if args.reuse:
        source = Path(args.reuse)
    if (args.resume or args.reuse) and source.exists():
        # Runs from a sweep with the same settings are reused; the grid (widths, LRs, sides) may differ.
        old = json.loads(source.read_text())
        grid = ("widths", "log2_lrs", "variants")
        same = lambda c: {k: v for k, v in c.items() if k not in grid}  # noqa: E731
        if same(old["config"]) == same(json.loads(json.dumps(asdict(cfg)))):
            runs = [r for r in old["runs"] if (r["side"], r["width"], r["log2_lr"]) in set(jobs)
                    and old["config"]["variants"].get(r["side"], "?") == cfg.variants.get(r["side"], "!")]
            if args.reuse:
                runs = [dict(r, reused_from=str(source)) for r in runs]
            console.print(f"{'reusing' if args.reuse else 'resuming'}: {len(runs)} runs from {source}")
        else:
            console.print("[yellow]not resuming: the partial results were made with other settings[/]")
    share_base_runs(cfg, runs, jobs)
    done = {(r["side"], r["width"], r["log2_lr"]) for r in runs}
    todo = [j for j in jobs if j not in done and base_partner(cfg, *j[:2]) is None]
    per_step = estimate(cfg, batches, device)
    est = sum(cfg.steps * per_step[w] for _, w, _ in todo)
    console.print("seconds per step: " + ", ".join(f"{w}: {t:.3f}" for w, t in per_step.items())
                  + f"; estimated time for the {len(todo)} runs to do: {est / 60:.1f} min (without early stops and evaluation)")
    if args.estimate:
        return 0
    start = time.perf_counter() - sum(r["seconds"] for r in runs if not r.get("reused_from"))
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[eta]}")]
    with Progress(*columns, console=console) as progress:
        # Progress in estimated seconds of work, so the bar and ETA account for wider runs' cost.
        overall = progress.add_task("sweep", total=len(jobs), completed=len(jobs) - len(todo), eta="")
        current = progress.add_task("", total=cfg.steps, eta="")
        remaining = sum(cfg.steps * per_step[w] for _, w, _ in todo)
        for side, w, lr in todo:
            progress.reset(current, total=cfg.steps, description=f"  {side} width {w} lr 2^{lr}")
            t0 = time.perf_counter()

            def on_step(n=1):
                progress.advance(current, n)
                left = max(0.0, remaining - (time.perf_counter() - t0))
                progress.update(overall, eta=f"~{left / 60:.1f} min left")

            run = train_run(cfg, side, w, lr, batches, device, on_step)
            remaining -= cfg.steps * per_step[w]
            runs.append(run)
            share_base_runs(cfg, runs, jobs)
            progress.advance(overall)
            loss_txt = "diverged" if run["diverged"] else f"{run['final_val_loss']:.4f}"
            progress.console.print(f"{side:>18} w={w:<5} lr=2^{lr:<4} val {loss_txt:>9}  ({run['seconds']:.0f} s)")
            RESULTS.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps({"config": asdict(cfg), "runs": runs}) + "\n")
    _common.mark_end(env)
    out = {
        "ablation": args.ablation, "config": asdict(cfg), "device": str(device), "env": env,
        "data": data["info"], "estimated_seconds_per_step": per_step,
        "wall_seconds": time.perf_counter() - start, "runs": runs,
        "reused_runs": sum(1 for r in runs if r.get("reused_from")),
    }
    out["summary"] = summarize(cfg, runs)
    paths = write_outputs(out, name)
    partial.unlink(missing_ok=True)
    print_summary(console, cfg, out)
    for path in paths:
        console.print(os.path.relpath(path, ROOT))
    return 0


def print_summary(console, cfg: Config, data: dict) -> None:
    from rich.table import Table

    table = Table(title="optimal log2 LR per width (val loss)")
    table.add_column("side")
    for w in cfg.widths:
        table.add_column(str(w), justify="right")
    table.add_column("drift", justify="right")
    table.add_column("wider better", justify="center")
    for s in cfg.variants:
        v = data["summary"][s]
        cells = [f"{fmt_lr(p['best_log2_lr'])} ({fmt_loss(p['best_val_loss'])})" for p in v["per_width"].values()]
        table.add_row(s, *cells, _num(v["drift_log2"]), "yes" if v["wider_is_better_at_optimum"] else "no")
    console.print(table)
    console.print(f"wall time {data['wall_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    sys.exit(main())
