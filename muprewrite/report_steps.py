"""The report's "next steps": the exact calls that train this model with its plan.

Reads the plan and the report's `origin` — where the run came from, which the plan does not
hold: {"model": the command line's MODEL, "grow", "out": the --out folder, "command": the
command line to rerun with --out} or, from Python, {"factory": "module.make_model",
"materialized": whether result.model exists}.
"""

from __future__ import annotations

import shlex

from .plan import Plan
from .report_view import families

DEFAULT_OUT = "muprewrite-out"
LR, WD = "3e-3", "0.1"  # placeholders in the calls: the values tuned at the base width


def next_steps(plan: Plan, origin: dict) -> tuple:
    """(sentences, code lines)."""
    intro = [f"Tune lr and weight_decay on the model at the base width {plan.base_width} as it is (muP at the base "
             f"width is the model itself), then train width {plan.target_width} with the same values:"]
    if origin.get("model"):
        return intro, _command_line_steps(plan, origin)
    if origin.get("factory"):
        return intro, _python_steps(plan, origin)
    return intro, _plan_steps(plan)


def _command_line_steps(plan: Plan, origin: dict) -> list:
    out = origin.get("out")
    lines = [] if out else [f"# first save the plan: {_rerun(origin)}"]
    path = f"{(out or DEFAULT_OUT).rstrip('/')}/plan.json"
    grow = f", {origin['grow']!r}" if origin.get("grow") else ""
    lines += ["import torch", "import muprewrite", "from muprewrite.loading import load_model_file", "",
              f"make_model, _ = load_model_file({origin['model']!r}{grow})",
              f"plan = muprewrite.Plan.load({path!r})",
              f"model = muprewrite.apply_plan(make_model({plan.target_width}), plan, reinit=True)",
              "# reinit=True: muP's init; on a model loaded from a checkpoint leave it out (keeps the weights)"]
    return lines + _optimizer_lines(plan, "muprewrite.param_groups(model, plan, ")


def _python_steps(plan: Plan, origin: dict) -> list:
    factory = origin["factory"].rpartition(".")[2]
    path = f"{DEFAULT_OUT}/plan.json"
    if origin.get("materialized", True):
        lines = _optimizer_lines(plan, "result.param_groups(")
    else:
        lines = [f"model = muprewrite.apply_plan({factory}({plan.target_width}), result.plan, reinit=True)"]
        lines += _optimizer_lines(plan, "muprewrite.param_groups(model, result.plan, ")
    return lines + [f"result.save({DEFAULT_OUT!r})  # plan.json, report.md, report.html",
                    "# later, on a model loaded from a checkpoint (its weights kept):",
                    f"model = muprewrite.apply_plan({factory}({plan.target_width}), {path!r})"]


def _plan_steps(plan: Plan) -> list:
    return ["model = muprewrite.apply_plan(model, plan, reinit=True)  # a freshly built model of the width"] + \
        _optimizer_lines(plan, "muprewrite.param_groups(model, plan, ")


def _optimizer_lines(plan: Plan, call: str) -> list:
    eps = ", eps=1e-8" if any(p.eps_mult != 1.0 for p in plan.parameters.values()) else ""
    first = (families(plan) or ["adam"])[0]
    if first != "adam":  # the first family the user named builds the optimizer (muon: Muon and AdamW as one)
        builder = call.replace("result.param_groups(", "result.optimizer(").replace(
            "muprewrite.param_groups(", "muprewrite.build_optimizer(")
        return [f"optimizer = {builder}{first!r}, lr={LR}, weight_decay={WD})"]
    lines = [f"groups = {call}lr={LR}, weight_decay={WD}{eps})", "optimizer = torch.optim.AdamW(groups)"]
    others = [repr(f) for f in families(plan) if f != "adam"]
    if others:
        lines.append(f"# param_groups(..., optimizer={' | '.join(others)}) for that family's multipliers "
                     "(the default 'adamw' takes the adam family's)")
    return lines


def _rerun(origin: dict) -> str:
    command = origin.get("command") or ["muprewrite", origin["model"]]
    return shlex.join([*command, "--out", DEFAULT_OUT])
