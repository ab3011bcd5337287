"""`muprewrite model.py`: compile a model file's factory into muP and report what changed."""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import replace

from rich.console import Console

from . import coordcheck_cli, fold_cli
from .api import mupify
from .cli_common import EXIT_INTERNAL_ERROR, EXIT_USER_ERROR, example_inputs, guarded, parse_options  # noqa: F401
from .errors import MuRewriteError
from .hf import GROWS
from .loading import load_model_file
from .optimizers import NAMES
from .options import cli_help
from .passes.emit import check_out_dir
from .rules import PARAMETRIZATIONS

SUBCOMMANDS = {"coordcheck": coordcheck_cli.main, "fold": fold_cli.main}  # the default command: compile MODEL


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="muprewrite",
        description="Rewrite a PyTorch model into its Maximal Update Parametrization (muP). MODEL is a "
        "Python file defining make_model(width) -> nn.Module, and optionally example_inputs(), "
        "BASE_WIDTH and TARGET_WIDTH; MODEL:NAME picks another factory.",
        epilog="See also: muprewrite coordcheck MODEL --help (the coordinate check of TP5 §D.1), muprewrite fold "
        "MODEL --help (a trained muP model as a plain SP checkpoint).",
    )
    parser.add_argument("model", metavar="MODEL[:FACTORY]", help="path to model.py, optionally :factory_name")
    parser.add_argument("--base", type=int, help="base width (default: BASE_WIDTH in the model file)")
    parser.add_argument("--delta", type=int, help="second small width that tells which dims grow (default: 2 x base)")
    parser.add_argument("--target", type=int, help="target width (default: TARGET_WIDTH in the model file)")
    parser.add_argument("--depth-base", type=int, metavar="L", help="depth transfer (CompleteP): the proxy's depth; "
                        "make_model(width, depth=L) builds the model at any depth")
    parser.add_argument("--depth-target", type=int, metavar="L", help="depth transfer: the depth the plan is for")
    parser.add_argument("--depth-delta", type=int, metavar="L", help="depth transfer: a second small depth that tells "
                        "which blocks repeat with depth (default: 2 x --depth-base)")
    parser.add_argument("--parametrization", choices=PARAMETRIZATIONS, default="mup")
    parser.add_argument("--grow", choices=GROWS, help="hf: models only: what grows with width, head_dim (the "
                        "default: head counts fixed) or heads (head sizes fixed)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help=cli_help())
    parser.add_argument("--optimizer", action="append", choices=sorted(NAMES), metavar="NAME",
                        help="an optimizer family you will train with, repeatable (the report shows its LR and WD "
                        "multipliers): " + ", ".join(sorted(NAMES)) + " (default: adamw and sgd)")
    parser.add_argument("--out", metavar="DIR", help="write plan.json, report.md and report.html into DIR")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON on stdout and nothing else")
    parser.add_argument("--full", action="store_true", help="report every parameter, edit and diff hunk (repeated "
                        "layers are collapsed into one row by default) and the graph nodes")
    parser.add_argument("--every-block", action="store_true", help="analyse every block, not each distinct "
                        "repeated block once (its plan entries written onto the copies)")
    parser.add_argument("--no-verify", action="store_true", help="skip checking the realized model against the edited graph")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    if argv[:1] and argv[0] in SUBCOMMANDS:  # `muprewrite coordcheck MODEL ...`, `muprewrite fold MODEL ...`
        return SUBCOMMANDS[argv[0]](argv[1:])
    return guarded(run, build_parser().parse_args(argv))


def run(args) -> int:
    # With --json, stdout carries the plan only: whatever the model's own code prints goes to stderr.
    if args.out:
        check_out_dir(args.out)  # before the work, not after it
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        result = compile_model(args)
        result.report = replace(result.report, full=args.full, origin=command_line_origin(args))
        paths = result.save(args.out) if args.out else []
    if args.json:
        print(result.plan.to_json())
        return 0
    Console().print(result.report)
    if paths:
        Console(stderr=True).print(f"wrote {', '.join(str(p) for p in paths)}", markup=False)
    return 0


def compile_model(args):
    """Load the model file (or hf: model) and run mupify with the command line's settings."""
    factory, module = load_model_file(args.model, args.grow)
    base = _width(args.base, module, "BASE_WIDTH", "--base")
    target = _width(args.target, module, "TARGET_WIDTH", "--target")
    if isinstance(base, int) and isinstance(target, int) and target < base:  # coordcheck may plan below the base
        raise MuRewriteError(f"target width {target} is below the base width {base}: muP transfers from a narrow "
                             "base to a wider target; swap them")
    inputs = example_inputs(module)
    return mupify(factory, base=base, delta=args.delta, target=target, example_inputs=inputs,
                  parametrization=args.parametrization, options=parse_options(args.option),
                  optimizers=args.optimizer or ("adam", "sgd"),
                  verify_width=not args.no_verify, share_blocks=not args.every_block,
                  depth_base=args.depth_base, depth_target=args.depth_target, depth_delta=args.depth_delta,
                  materialize=False, progress=not args.json and sys.stderr.isatty())


def command_line_origin(args) -> dict:
    """What the report's next steps need to know about this run: the model, --out, the command."""
    command = ["muprewrite", args.model]
    for flag, value in (("--base", args.base), ("--delta", args.delta), ("--target", args.target),
                        ("--depth-base", args.depth_base), ("--depth-delta", args.depth_delta),
                        ("--depth-target", args.depth_target), ("--grow", args.grow)):
        command += [flag, str(value)] if value is not None else []
    command += ["--parametrization", args.parametrization] if args.parametrization != "mup" else []
    command += [part for pair in args.option for part in ("--option", pair)]
    command += [part for name in args.optimizer or () for part in ("--optimizer", name)]
    return {"model": args.model, "grow": args.grow, "out": args.out, "command": command}


def _width(flag_value, module, attribute: str, flag: str) -> int:
    value = flag_value if flag_value is not None else getattr(module, attribute, None)
    if value is None:
        raise MuRewriteError(f"no {flag.strip('-')} width: pass {flag} N or define {attribute} in the model file")
    return value


if __name__ == "__main__":
    sys.exit(main())
