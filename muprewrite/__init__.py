"""muprewrite: compile a PyTorch model into its Maximal Update Parametrization (muP).

    result = muprewrite.mupify(make_model, base=64, target=1024)
    optimizer = torch.optim.AdamW(result.param_groups(lr=3e-3, weight_decay=0.1))
    sp_model = muprewrite.fold(result.model, result.plan)   # plain weights, no hooks, same outputs
    analysis = muprewrite.analyse_widths(make_model, base=64, target=1024)
    plan = analysis.plan_for(256)                            # = mupify(..., target=256).plan, no capture
"""

import warnings

# torch warns at import when numpy is missing; muprewrite never hands torch a numpy array
warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)

from .api import Analysis, Result, analyse_widths, apply_plan, fold, fold_report, mupify  # noqa: E402
from .errors import MuRewriteError, VerificationError  # noqa: E402
from .passes.emit import build_optimizer, param_groups  # noqa: E402
from .plan import Plan  # noqa: E402

__all__ = ["mupify", "analyse_widths", "Analysis", "apply_plan", "fold", "fold_report", "param_groups", "build_optimizer", "Plan", "Result", "MuRewriteError", "VerificationError"]
_SUBMODULES = ("hf", "coordcheck")  # imported on first use: muprewrite.hf needs transformers


def __getattr__(name: str):
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
