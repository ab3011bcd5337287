"""The plan: every decision the compiler makes, in one JSON-serialisable record.

The report, `plan.json`, the optimizer parameter groups and the realization all read the plan;
nothing is stored on tensors. A plan holds concrete numbers for one target width and can be
saved and re-applied to a fresh or checkpoint-loaded model of that width.
"""

from __future__ import annotations

import json
import math
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import MuRewriteError
from .optimizers import FAMILIES

@dataclass
class ParamPlan:
    shape: list
    base_shape: list
    infinite: list
    role: str
    init_std: dict  # {"before": the model's own std at target, "after": the stored tensor's std}
    lr_mult: dict  # optimizer family -> LR multiplier (muprewrite/optimizers.py; None: no exact rule)
    wd_mult: dict  # optimizer family -> weight-decay multiplier
    uses: list = field(default_factory=list)  # [{"node", "op", "module", "role", ...}]
    aliases: list = field(default_factory=list)  # other names of a tied tensor
    weight_multiplier: float = 1.0  # applied at every use site; the stored tensor is divided by it
    eps_mult: float = 1.0  # on Adam's eps (option adam_eps="scaled")
    trainable: bool = True  # False: excluded from the optimizer groups (norm_gains="frozen")
    fill: float | None = None  # set to this constant whenever the plan is applied (norm_gains="removed")
    zero: list = field(default_factory=list)  # [{"dim", "start", "stop"}] zeroed at init (zero-init options)
    zero_mean: bool = True  # centred init: rescale the whole tensor; else only its deviation from its mean
    routes: dict = field(default_factory=dict)  # family -> the optimizer it goes to, where not the family's own
    depth_lr_mult: float = 1.0  # depth transfer: the factor in the Adam LR for a tensor inside the repeating blocks

    @property
    def init_ratio(self) -> float:
        """Factor on the tensor (on its deviation from its mean if not `zero_mean`) giving the
        effective (multiplied) std; exactly 1.0 when nothing needs to change."""
        before, effective = self.init_std["before"], self.init_std["after"] * self.weight_multiplier
        if before <= 0 or math.isclose(effective, before, rel_tol=1e-9):
            return 1.0
        return effective / before


@dataclass
class Edit:
    kind: str  # "readout_multiplier" | "weight_multiplier" | "attention_scale" | "branch_multiplier" (depth)
    module: str  # path of the module whose forward runs the op ("" = root)
    node: str  # graph node of the op
    old: float
    new: float
    realized_by: str  # "forward_pre_hook" | "call_interception"
    family: str  # "linear" | "matmul" | "sdpa" | "embedding" | "norm" | "conv": the op's kind of call
    occurrence: int  # index of this op among the `family` calls made during one call of `module`
    apply_to: str  # "input" (scale the activation operand `operand`) or "scale_kwarg" (SDPA's scale=)
    operand: str | None = None  # the op's argument slot of the scaled activation (apply_to == "input"; see ops)
    call: int = 0  # which call of `module` in one forward runs the op (a module may run several times)
    calls: int = 1  # how many times `module` runs in one forward
    param: str | None = None  # the weight of a readout or weight multiplier
    # a readout multiplier that also undoes the model's own width-dependent scalar on the readout's
    # input (T5's d_model**-0.5): {"node", "base", "now"}, the scalar at base and at this width
    frozen_constant: dict | None = None
    # where the edit goes when the model is folded to SP (passes/foldable.py): {"into": [{"param", "node",
    # "dim", "ranges", "untie"?}]} or {"error": why not}; None in a plan written before fold existed
    fold: dict | None = None

    @property
    def factor(self) -> float:
        return self.new / self.old


@dataclass
class PlanWarning:
    code: str
    message: str
    reference: str
    subjects: list = field(default_factory=list)  # parameter names, or graph nodes (then in `locations`)
    locations: dict = field(default_factory=dict)  # graph node -> {"module": its module path, "op": the op}


@dataclass
class Plan:
    parametrization: str
    base_width: int
    delta_width: int
    target_width: int
    options: dict
    parameters: dict  # name -> ParamPlan
    edits: list  # [Edit]
    warnings: list  # [PlanWarning]
    # how the model was obtained and captured: a factory's width rule (Hugging Face configs: which
    # fields were scaled), the capture mode and any fallback taken — one line each
    notes: list = field(default_factory=list)
    # the optimizer families the user will train with (the report shows their multipliers; every
    # family's are in lr_mult / wd_mult)
    optimizers: list = field(default_factory=lambda: ["adam", "sgd"])
    # repeated blocks analysed once: copy module path -> the representative whose parameters, uses
    # and edits were written onto it under the copy's names (passes/repeats.py)
    repeats: dict = field(default_factory=dict)
    # depth transfer: {"base", "delta", "target" (depths), "multiplier" (m_L), "alpha", "blocks" (module paths
    # of the blocks that repeat with depth)}; None without depth arguments
    depth: dict | None = None

    def graph_edits(self) -> list:
        """The edits of the captured graph's own nodes: a copy's edits name its representative's nodes."""
        return [e for e in self.edits if not any(e.module == c or e.module.startswith(c + ".") for c in self.repeats)]

    def param(self, name: str) -> ParamPlan | None:
        if name in self.parameters:
            return self.parameters[name]
        return next((p for p in self.parameters.values() if name in p.aliases), None)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save(self, path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        try:
            _check_fields(Plan, data, "the plan", ("options", "notes", "optimizers", "repeats", "depth"))
            parameters = {k: ParamPlan(**_check_fields(ParamPlan, v, f"parameter {k!r}")) for k, v in
                          data["parameters"].items()}
            edits = [Edit(**_check_fields(Edit, e, f"edit {i}")) for i, e in enumerate(data["edits"])]
            unknown = [f for f in data.get("optimizers", []) if f not in FAMILIES]
            if unknown:
                raise ValueError(f"optimizers names {unknown[0]!r}, not one of {', '.join(FAMILIES)}")
            warnings = [PlanWarning(**_check_fields(PlanWarning, w, f"warning {i}"))
                        for i, w in enumerate(data["warnings"])]
            return cls(**{k: data[k] for k in ("parametrization", "base_width", "delta_width", "target_width")},
                       options=data.get("options", {}), parameters=parameters, edits=edits, warnings=warnings,
                       notes=list(data.get("notes", [])), optimizers=list(data.get("optimizers", ["adam", "sgd"])),
                       repeats=dict(data.get("repeats", {})), depth=data.get("depth"))
        except (KeyError, TypeError, ValueError) as exc:
            raise MuRewriteError(f"not a muprewrite plan: {exc}; pass a plan.json written by muprewrite") from exc

    @classmethod
    def load(cls, path) -> "Plan":
        path = Path(path)
        if not path.is_file():
            raise MuRewriteError(f"plan file {path} does not exist; pass the plan.json written by `muprewrite --out`")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise MuRewriteError(f"{path} is not valid JSON ({exc}); pass a plan.json written by muprewrite") from exc
        return cls.from_dict(data)


# Loading: every field has the type its dataclass declares, every kind is one muprewrite writes.
_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "list": (list,), "dict": (dict,)}
_KINDS = {  # field -> the values muprewrite writes
    "role": ("input", "hidden", "output", "vector", "scalar", "unclassified"),
    "kind": ("readout_multiplier", "weight_multiplier", "attention_scale", "branch_multiplier"),
    "realized_by": ("forward_pre_hook", "call_interception"),
    "apply_to": ("input", "scale_kwarg"),
}


def _check_fields(cls, values, what: str, optional=()) -> dict:
    """`values` (a JSON object) as `cls` declares it: required fields present, no unknown ones,
    each of its declared type, kinds among muprewrite's."""
    if not isinstance(values, dict):
        raise TypeError(f"{what} is a {type(values).__name__}, not an object")
    declared = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise ValueError(f"{what} has unknown field {unknown[0]!r}")
    for name, spec in declared.items():
        required = spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
        if name not in values:
            if required and name not in optional:
                raise KeyError(f"{what} lacks {name!r}")
            continue
        value, types = values[name], str(spec.type).split(" | ")
        allowed = tuple(t for name_ in types if name_ != "None" for t in _TYPES.get(name_, (object,)))
        if (value is None and "None" in types) or (isinstance(value, allowed) and
                                                   not (isinstance(value, bool) and bool not in allowed)):
            if spec.name in _KINDS and cls is not PlanWarning and value not in _KINDS[spec.name]:
                raise ValueError(f"{what}: {name} {value!r} is not one of {', '.join(_KINDS[spec.name])}")
            continue
        raise TypeError(f"{what}: {name} is {value!r}, expected {spec.type}")
    return values
