"""What every command shares: exit codes, one-line errors (--debug: tracebacks), --option parsing,
a model file's example inputs. The commands (cli.py, coordcheck_cli.py, fold_cli.py) import this;
it imports none of them."""

from __future__ import annotations

import inspect
import json

from rich.console import Console
from rich.markup import escape

from .errors import MuRewriteError

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def guarded(run_command, args) -> int:
    """Run a command: bad input is one line and exit 2, our bugs one line and exit 3 (--debug: tracebacks)."""
    try:
        return run_command(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        _error("interrupted")
        return EXIT_INTERRUPTED
    except MuRewriteError as exc:
        if args.debug:
            raise
        _error(str(exc))
        return EXIT_USER_ERROR
    except Exception as exc:  # a bug of ours: still one line, unless --debug
        if args.debug:
            raise
        _error(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback and report it)")
        return EXIT_INTERNAL_ERROR


def parse_options(pairs: list) -> dict | None:
    """['alpha_out=2', 'zero_init_readout=true', 'norm_gains=frozen'] -> {...} (JSON values, else strings)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise MuRewriteError(f"--option takes KEY=VALUE, got {pair!r}")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options or None


def example_inputs(module):
    make_inputs = getattr(module, "example_inputs", None)
    if make_inputs is None:
        return None
    if inspect.signature(make_inputs).parameters:  # example_inputs(width): inputs that grow with width
        return make_inputs
    try:
        return make_inputs()
    except Exception as exc:
        raise MuRewriteError(f"example_inputs() in the model file failed: {type(exc).__name__}: {exc}; fix it or remove it") from exc


def _error(message: str) -> None:
    # the message is text, not markup: `pip install 'muprewrite[plots]'` must keep its brackets
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}", markup=True)
