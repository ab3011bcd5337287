"""emit: the artifacts users take away, all read from the plan.

Reads:  a `Plan` (and a model, for parameter groups).
Writes: optimizer parameter groups — plain dicts any `torch.optim` optimizer, LR scheduler or
        FSDP accepts — and the files `plan.json`, `report.md`, `report.html`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from torch import nn

from ..errors import MuRewriteError
from .. import optimizers
from ..plan import Plan
from .repeats import inside


def param_groups(model: nn.Module, plan: Plan, lr: float, weight_decay: float = 0.0,
                 optimizer: str = "adamw", eps: float | None = None):
    """One group per distinct (LR, weight decay[, eps]) triple, in parameter order.

    Frozen parameters (requires_grad False) are left out. With `eps` (Adam), each group gets
    eps times the plan's eps multiplier (1 unless the plan has adam_eps="scaled"). At base
    width every multiplier is 1, so this is a single group with model.parameters() in order —
    the same optimizer state as a plain optimizer. A family whose tensors go to two optimizers
    (muon: Muon for the hidden matrices, AdamW for the rest) gives {optimizer: groups}.
    """
    family = optimizers.family(optimizer)
    routed, prefix = {}, []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        entry = _entry(plan, name, prefix)
        if family.name not in entry.lr_mult:
            raise MuRewriteError(f"the plan has no {family.name} multipliers (made by an older muprewrite); "
                                 "make the plan again")
        lr_mult, wd_mult = entry.lr_mult[family.name], entry.wd_mult[family.name]
        if lr_mult is None:
            raise MuRewriteError(_no_rule(plan, name, entry, family.name))
        route = entry.routes.get(family.name, family.name)
        takes_eps = eps is not None and (family.takes_eps and route != "muon")
        key = (lr * lr_mult, weight_decay * wd_mult, eps * entry.eps_mult if takes_eps else None)
        groups = routed.setdefault(route, {})
        group = groups.setdefault(key, {"params": [], "lr": key[0], "weight_decay": key[1], "names": []})
        if takes_eps:
            group["eps"] = key[2]
        if route == "muon":
            group["adjust_lr_fn"] = plan.options.get("muon_adjust_lr", "original")
        group["params"].append(param)
        group["names"].append(name)
    lists = {route: list(groups.values()) for route, groups in routed.items()}
    if len(family.route_names) > 1:
        return {route: lists.get(route, []) for route in family.route_names}
    return lists.get(family.name, [])


def build_optimizer(model: nn.Module, plan: Plan, optimizer: str, lr: float, weight_decay: float = 0.0,
                    eps: float | None = None, **settings):
    """The torch optimizer of `optimizer`'s family over the plan's groups (muon: Muon and AdamW
    stepped as one); `settings` (betas, momentum, ...) go to its constructor."""
    family = optimizers.family(optimizer)
    groups = param_groups(model, plan, lr, weight_decay, optimizer, eps)
    routed = groups if isinstance(groups, dict) else {family.name: groups}
    return family.build(routed, **settings)


def _no_rule(plan: Plan, name: str, entry, family: str) -> str:
    planned = next(key for key, value in plan.parameters.items() if value is entry)
    depth = plan.depth or {}
    if depth.get("multiplier", 1.0) != 1.0 and any(inside(planned, block) for block in depth["blocks"]):
        return (f"parameter '{name}' is inside the blocks that repeat with depth, and {family} has no stated depth "
                "rule (CompleteP's and depth-muP's are Adam's); use optimizer='adamw'")
    return (f"parameter '{name}': no exact {family} rule (its init is not centred, so muP changes its RMS by an "
            "amount the plan does not know); use optimizer='adamw'")


# components that wrappers add to parameter names: DDP/FSDP1 ("module", "_fsdp_wrapped_module"),
# torch.compile ("_orig_mod"), activation checkpointing ("_checkpoint_wrapped_module")
WRAPPER_PARTS = ("module", "_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")


def _entry(plan: Plan, name: str, prefix: list):
    """The plan's entry for a parameter seen through wrappers and inside a parent module (a
    LightningModule's `self.model`): wrapper components are dropped, then the one leading path
    (`prefix`, shared by every parameter of the model, found at the first match) is."""
    parts = [p for p in name.split(".") if p not in WRAPPER_PARTS]
    for candidate in (name.split("."), parts):
        entry = plan.param(".".join(candidate))
        if entry is not None and not prefix:
            return entry
    if prefix and parts[:len(prefix[0])] == prefix[0]:
        entry = plan.param(".".join(parts[len(prefix[0]):]))
        if entry is not None:
            return entry
    if not prefix:
        for drop in range(1, len(parts)):
            entry = plan.param(".".join(parts[drop:]))
            if entry is not None:
                prefix.append(parts[:drop])
                return entry
    raise MuRewriteError(f"parameter '{name}' is not in the plan; pass the model the plan was made for "
                         "(or the module holding it)")


# what `--out` / `Result.save` write: file name -> its text, from the plan and the report (a new output is one entry)
ARTIFACTS = {
    "plan.json": lambda plan, report: plan.to_json(),
    "report.md": lambda plan, report: report.to_markdown(),
    "report.html": lambda plan, report: report.to_html(),
}


def check_out_dir(out_dir, artifacts=ARTIFACTS) -> Path:
    """The folder the artifacts will go to, created; a one-line error now (before any work) when
    it is a file, cannot be created, or an artifact's name there is taken by a folder."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise MuRewriteError(f"--out {out_dir}: not a folder (a file of that name is in the way); pick another path")
    except OSError as exc:
        raise MuRewriteError(f"--out {out_dir}: cannot create it ({exc.strerror}); pick a writable path") from exc
    taken = [name for name in artifacts if (out / name).is_dir()]
    if taken:
        raise MuRewriteError(f"--out {out_dir}: {taken[0]} there is a folder; remove it or pick another folder")
    if not os.access(out, os.W_OK):
        raise MuRewriteError(f"--out {out_dir}: not writable; pick a writable folder")
    return out


def write_artifacts(plan: Plan, report, out_dir) -> list:
    """Every artifact (plan.json, report.md, report.html), each written whole or not at all."""
    out = check_out_dir(out_dir)
    texts = {name: render(plan, report) for name, render in ARTIFACTS.items()}
    return [write_atomically(out / name, lambda f, text=text: f.write(text.encode("utf-8"))) for name, text in texts.items()]


def write_atomically(path: Path, write) -> Path:
    """`write(binary file)` into a temp file beside `path`, then renamed onto it: the file is whole
    or absent, never half-written; it gets the permissions a plain open() would (the umask's)."""
    with tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        try:
            write(tmp)
        except BaseException:
            os.unlink(tmp.name)
            raise
    os.chmod(tmp.name, 0o666 & ~_umask())
    os.replace(tmp.name, path)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
