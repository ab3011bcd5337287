"""`muprewrite fold MODEL --plan plan.json --checkpoint ckpt.pt --out DIR`: a trained muP model as a
plain SP checkpoint that loads without muprewrite (see passes/fold.py).

MODEL is the model file (or hf:...) the plan was made from; the checkpoint is a `torch.save`d
state_dict of the muP model (`torch.save(model.state_dict(), path)`). DIR receives model.pt, the
folded state_dict for the model file's own class — or, for hf: models, the `save_pretrained`
files (config.json, model.safetensors, ...) — and fold.md, what went where. The folded model is
checked against the muP model on the model file's example inputs (--no-check skips it).
Exit status 0; 2 on bad input (one line; --debug for the traceback); 3 on an internal error.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.text import Text

from .api import apply_plan, fold, fold_report
from .cli_common import example_inputs, guarded
from .errors import MuRewriteError
from .hf import GROWS
from .loading import infer_example_inputs, load_model_file
from .passes.capture import build_model
from .passes.emit import check_out_dir, write_atomically
from .passes.fold import describe, planned_targets
from .plan import Plan

STATE_DICT = "model.pt"
REPORT = "fold.md"
HF_FILES = ("config.json", "model.safetensors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="muprewrite fold",
        description="Fold a trained muP model into a plain (SP) checkpoint: every muP multiplier and attention "
        "scale multiplied into the weights, so the model's own class (or from_pretrained, for hf: models) "
        "loads it without muprewrite and computes the same outputs. Training the folded model with a plain "
        "optimizer is SP, not muP: to continue in muP, apply_plan(folded, plan, from_folded=True).",
    )
    parser.add_argument("model", metavar="MODEL[:FACTORY]", help="the model file (or hf:...) the plan was made from")
    parser.add_argument("--plan", required=True, help="plan.json written by `muprewrite MODEL --out DIR`")
    parser.add_argument("--checkpoint", required=True, help="the muP model's state_dict, saved with torch.save")
    parser.add_argument("--out", required=True, metavar="DIR", help=f"write {STATE_DICT} (hf: the save_pretrained "
                        f"files) and {REPORT} into DIR")
    parser.add_argument("--grow", choices=GROWS, help="hf: models only: as when the plan was made")
    parser.add_argument("--no-check", action="store_true", help="skip comparing the folded model with the muP "
                        "model on the example inputs")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    return parser


def main(argv=None) -> int:
    return guarded(run, build_parser().parse_args(argv))


def run(args) -> int:
    is_hf = args.model.startswith("hf:")
    plan = Plan.load(args.plan)
    planned_targets(plan)  # an edit that cannot be folded stops here, before any work
    out = check_out_dir(args.out, (*(HF_FILES if is_hf else (STATE_DICT,)), REPORT))
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise MuRewriteError(f"--checkpoint {checkpoint} does not exist; pass the muP model's state_dict "
                             "saved with torch.save(model.state_dict(), path)")
    factory, module = load_model_file(args.model, args.grow)
    if not is_hf:
        _check_state_dict_holds_untied(factory, plan)
    model = build_model(factory, plan.target_width)
    _load_checkpoint(model, checkpoint, plan.target_width)
    mup_model = apply_plan(model, plan, inplace=True)
    inputs = None if args.no_check else (example_inputs(module) or infer_example_inputs(model))
    folded = fold(mup_model, plan, example_inputs=inputs, inplace=True)
    paths = _save_hf(folded, out) if is_hf else [write_atomically(out / STATE_DICT, lambda f: torch.save(folded.state_dict(), f))]
    paths.append(write_atomically(out / REPORT, lambda f: f.write(fold_report(plan).encode() + b"\n")))
    Console().print(_summary(plan))
    Console(stderr=True).print(f"wrote {', '.join(str(p) for p in paths)}", markup=False)
    return 0


def _check_state_dict_holds_untied(factory, plan: Plan) -> None:
    """A model that ties its readout in __init__ ties it again when the folded state_dict is loaded."""
    _, unties = planned_targets(plan)
    if not unties:
        return
    fresh = build_model(factory, plan.target_width, "meta")
    for own, (tied_to, _) in unties.items():
        if fresh.get_parameter(own) is fresh.get_parameter(tied_to):
            raise MuRewriteError(
                f"folding unties '{own}' from '{tied_to}', but the model's class ties them again when built, so a "
                f"state_dict cannot hold the folded model; call muprewrite.fold in Python and save the model object "
                "(torch.save(model)), or make the tie optional in the model's code")


def _load_checkpoint(model, path: Path, width: int) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [""])[0]
        raise MuRewriteError(f"--checkpoint {path}: cannot read it ({type(exc).__name__}: {reason}); pass a state_dict "
                             "saved with torch.save(model.state_dict(), path)") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MuRewriteError(f"--checkpoint {path} is not a state_dict (a dict of tensors); save one with "
                             "torch.save(model.state_dict(), path)")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise MuRewriteError(f"--checkpoint {path} does not fit the model at width {width}: {first}") from exc
    wrong = result.missing_keys or result.unexpected_keys
    if wrong:
        what = "lacks" if result.missing_keys else "has the unknown key"
        raise MuRewriteError(f"--checkpoint {path} {what} '{wrong[0]}'; pass the state_dict of the muP model the "
                             "plan was made for")


def _save_hf(model, out: Path) -> list:
    """save_pretrained into a temporary folder beside the files, then each file moved into place."""
    if hasattr(getattr(model, "config", None), "use_cache"):
        model.config.use_cache = True  # muprewrite's factory turned the cache off for capture
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".fold-"))
    try:
        model.save_pretrained(staging)
        paths = []
        for item in sorted(staging.iterdir()):
            os.replace(item, out / item.name)
            paths.append(out / item.name)
        return paths
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _summary(plan: Plan) -> Text:
    """What went where, a short block per edit that wraps between words (never inside a name)."""
    text = Text(f"fold: {len(plan.edits)} edits into the weights\n", style="bold")
    for row in describe(plan):
        text.append(f"{row['edit']} at {row['where']}, factor {row['factor']:.6g}\n")
        text.append(f"  into {row['into']}\n", style="dim")
    return text