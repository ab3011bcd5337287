"""The rewrite options, declared once: `decide` checks and reads them, the CLI's `--option` help lists
them, the report shows the ones changed from their default, and README's table is generated from them
(tests/test_options.py checks that it is)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import MuRewriteError
from .optimizers import MUON_ADJUST_LR


@dataclass(frozen=True)
class Option:
    name: str
    default: object  # its type is the option's: a positive float, a bool, or one of `choices`
    help: str  # what it does, for README's table
    reference: str = ""  # where the choice comes from (a paper's section)
    choices: tuple = ()  # the values a string option takes, the default first

    @property
    def takes(self) -> str:
        """What `--option name=...` takes, for the CLI's help."""
        if isinstance(self.default, bool):
            return "true|false"
        if isinstance(self.default, float):
            return "<number above 0>"
        return "|".join(self.choices)


OPTIONS = (
    Option("alpha_out", 1.0, "readout multiplier, a tunable HP", "TP5 alpha_output"),
    Option("alpha_attn", 1.0, "attention-logit multiplier, a tunable HP", "TP5"),
    Option("alpha_in", 1.0, "input-weight multiplier, a tunable HP", "TP5"),
    Option("weight_decay", "independent", "`lr * weight_decay` constant per tensor (MuAdamW); `coupled` keeps "
           "torch's plain weight decay", choices=("independent", "coupled")),
    Option("attention_scale", "mup", "`sp` keeps 1/sqrt(d_head): reproduces its failure to transfer",
           "Lingle 2024", choices=("mup", "sp")),
    Option("zero_init_readout", False, "readout weight and its bias start at 0", "TP5 §D.2"),
    Option("zero_init_query", False, "the query projection starts at 0; only the query rows of a fused qkv "
           "(GPT-2 `c_attn`, `nn.MultiheadAttention.in_proj_weight`); a query that cannot be traced back to its "
           "own projection (one shared with k/v, or q through rotary embeddings) is refused",
           "TP5 §D.2; Lingle 2024: slightly better"),
    Option("norm_gains", "trainable", "`frozen` (requires_grad off, left out of the optimizer) or `removed` "
           "(fixed at 1): trainable gains break LR transfer", "Lingle 2024",
           choices=("trainable", "frozen", "removed")),
    Option("adam_eps", "constant", "`scaled`: Adam's eps divided by the fan_in multiplier; pass `eps=` to "
           "`param_groups`", "TP5 §B.3", choices=("constant", "scaled")),
    Option("muon_adjust_lr", "original", "the `adjust_lr_fn` of `torch.optim.Muon` the muon groups are planned "
           "for (`match_rms_adamw`); the groups carry it", choices=MUON_ADJUST_LR),
    Option("width_constants", "freeze", "a scalar the model itself puts on a readout's input or output that "
           "changes with width (T5's tied `d_model**-0.5`, a tied readout's `logits * dim**-0.5`) is held at its "
           "base value, so the readout's only width dependence is muP's 1/m; a one-element tensor there (a "
           "buffer) is read from a CPU build at each width, and refused where it cannot be; `keep` leaves them "
           "(and warns)", choices=("freeze", "keep")),
    Option("depth_alpha", 1.0, "with depth transfer (`depth_base`, `depth_target`): residual branches times "
           "m_L^-alpha, Adam LR inside the blocks times m_L^(alpha-1); 1 is CompleteP, 0.5 depth-muP",
           "Dey et al. 2025 (CompleteP), Table 1"),
    Option("unknown_ops", "error", "`sp`: a parameter used by an op with no rule, or an attention muprewrite "
           "cannot follow, keeps SP and is marked in the report instead of stopping the run",
           choices=("error", "sp")),
    Option("unresolved_init", "error", "`constant`: a small random tensor whose init the scan drew too few "
           "times (a model costly to build, the tensor in no repeated block) to tell whether its std grows or "
           "shrinks as width^1/2 is taken as width-independent and marked in the report instead of stopping the "
           "run", choices=("error", "constant")),
)
DEFAULTS = {option.name: option.default for option in OPTIONS}


def checked_options(options: dict | None) -> dict:
    """Every option: the given ones checked against their kind, the others at their default."""
    unknown = sorted(set(options or {}) - set(DEFAULTS))
    if unknown:
        raise MuRewriteError(f"unknown option(s) {', '.join(unknown)}; known options: {', '.join(DEFAULTS)}")
    options = {**DEFAULTS, **(options or {})}
    for option in OPTIONS:
        options[option.name] = _checked(option, options[option.name])
    return options


def _checked(option: Option, value):
    if isinstance(option.default, bool):
        if not isinstance(value, bool):
            raise MuRewriteError(f"option {option.name} takes true or false, got {value!r}")
        return value
    if isinstance(option.default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise MuRewriteError(f"option {option.name} takes a positive number, got {value!r}")
        return float(value)
    if value not in option.choices:
        raise MuRewriteError(f"option {option.name}={value!r} is not one of {', '.join(option.choices)}")
    return value


def changed_options(options: dict) -> list:
    """"name=value" of each option not at its default."""
    return [f"{name}={value}" for name, value in options.items() if DEFAULTS.get(name) != value]


def cli_help() -> str:
    return "a rewrite option, repeatable (see README): " + ", ".join(f"{o.name}={o.takes}" for o in OPTIONS)


def markdown_table() -> str:
    """README's table of the options."""
    rows = ["| option | default | effect |", "|---|---|---|"]
    for option in OPTIONS:
        default = str(option.default).lower() if isinstance(option.default, bool) else \
            str(option.default) if isinstance(option.default, float) else f"`{option.default}`"
        reference = f" ({option.reference})" if option.reference else ""
        rows.append(f"| `{option.name}` | {default} | {option.help}{reference} |")
    return "\n".join(rows)
