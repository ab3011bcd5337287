"""`muprewrite coordcheck model.py`: the coordinate check (TP5 §D.1) from the command line.

Exit status: 0 when the check passes, 1 when it ran and failed (some activation of the
rewritten model grows with width), 2 on bad input (one line; --debug for the traceback),
3 on an internal error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from .coordcheck import DEFAULT_LR, DEFAULT_MULTIPLIERS, DEFAULT_SEEDS, DEFAULT_STEPS, DEFAULT_THRESHOLD, OPTIMIZERS, coordcheck
from .coordcheck_depth import coordcheck_depth
from .cli_common import EXIT_INTERNAL_ERROR, EXIT_USER_ERROR, example_inputs, guarded, parse_options  # noqa: F401 (exit codes re-exported)
from .errors import MuRewriteError
from .rules import PARAMETRIZATIONS

EXIT_PASS = 0
EXIT_FAIL = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="muprewrite coordcheck",
        description="Coordinate check (Tensor Programs V, §D.1 / Fig. 5): train the model for a few steps "
        "at several widths, as built (SP) and as rewritten by muprewrite, and check that no activation "
        "of the rewritten graph grows with width. Exit status 0: PASS, 1: FAIL, 2: bad input.",
    )
    parser.add_argument("model", metavar="MODEL[:FACTORY]", help="path to model.py, optionally :factory_name")
    parser.add_argument("--base", type=int, help="base width (default: BASE_WIDTH in the model file, else the smallest width)")
    parser.add_argument("--delta", type=int, help="second small width of the analysis (default: 2 x base)")
    widths = parser.add_mutually_exclusive_group()
    widths.add_argument("--widths", type=_int_list, help="widths to check, e.g. 32,64,128")
    widths.add_argument("--multipliers", type=_number_list,
                        help=f"widths as multiples of the base (default: {','.join(map(str, DEFAULT_MULTIPLIERS))})")
    widths.add_argument("--depths", type=_int_list, help="the depth check instead, at the base width: depths to check, "
                        "e.g. 2,4,8,16 (make_model(width, depth=L); the plans of depth transfer from the first)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"training steps (default {DEFAULT_STEPS})")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    parser.add_argument("--lr", type=float, help="learning rate (default: " +
                        ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + ")")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help=f"largest slope of log mean|x| vs log width that passes (default {DEFAULT_THRESHOLD:g})")
    parser.add_argument("--parametrization", choices=PARAMETRIZATIONS, default="mup")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a plan option, e.g. alpha_out=2.0 (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS,
                        help=f"average mean|x| over this many initialisations (default {DEFAULT_SEEDS})")
    parser.add_argument("--no-sp", action="store_true", help="skip the SP comparison (halves the time)")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--out", metavar="DIR", help="write coordcheck.json and coordcheck.png into DIR")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout and nothing else")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    return parser


def main(argv=None) -> int:
    return guarded(run, build_parser().parse_args(argv))


def run(args) -> int:
    from .loading import load_model_file

    factory, module = load_model_file(args.model)
    base = args.base if args.base is not None else getattr(module, "BASE_WIDTH", None)
    if base is None:
        if not args.widths:
            raise MuRewriteError("no base width: pass --base N or --widths, or define BASE_WIDTH in the model file")
        base = min(args.widths)
    if args.depths:
        return _depth_check(args, factory, module, base)
    result = coordcheck(
        factory, base=base, delta=args.delta, widths=args.widths,
        multipliers=args.multipliers or DEFAULT_MULTIPLIERS, example_inputs=example_inputs(module),
        steps=args.steps, optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
        threshold=args.threshold, parametrization=args.parametrization, options=parse_options(args.option),
        compare_sp=not args.no_sp, seed=args.seed, seeds=args.seeds, device=args.device,
        progress=not args.json and sys.stderr.isatty(), name=Path(args.model.partition(":")[0]).name,
    )
    if args.json:
        print(result.to_json())
    else:
        Console().print(result.table())
    if args.out:
        paths = result.save(args.out)
        if not args.json:
            Console(stderr=True).print(f"wrote {', '.join(str(p) for p in paths)}", markup=False)
    return EXIT_PASS if result.passed else EXIT_FAIL


def _depth_check(args, factory, module, width: int) -> int:
    if args.optimizer != "adam" or args.parametrization != "mup":
        raise MuRewriteError("the depth check trains with Adam on muP's plans (depth rules are Adam's); drop "
                             "--optimizer/--parametrization")
    result = coordcheck_depth(factory, width=width, depths=args.depths, example_inputs=example_inputs(module),
                              steps=args.steps, lr=args.lr, seeds=args.seeds, seed=args.seed, threshold=args.threshold,
                              options=parse_options(args.option), compare=not args.no_sp,
                              progress=not args.json and sys.stderr.isatty())
    if args.json:
        print(result.to_json())
    else:
        Console().print(result.table())
        Console(highlight=False).print(result.verdict(), markup=False)
    if args.out:
        paths = result.save(args.out)
        if not args.json:
            Console(stderr=True).print(f"wrote {', '.join(str(p) for p in paths)}", markup=False)
    return EXIT_PASS if result.passed else EXIT_FAIL


def _int_list(text: str) -> list:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 32,64,128, got {text!r}") from None


def _number_list(text: str) -> list:
    try:
        return [float(x) if "." in x else int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 1,2,4,8, got {text!r}") from None
