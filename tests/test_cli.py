"""The command line: artifacts, JSON, model loading, and one-line errors for bad input."""

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from muprewrite.cli import EXIT_USER_ERROR, main

ROOT = Path(__file__).parent.parent
FIXTURES = Path(__file__).parent / "fixtures"


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_out_writes_plan_and_reports(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = run_cli(capsys, ROOT / "examples" / "gpt_tied.py", "--out", tmp_path)
    assert code == 0
    assert "readout_multiplier" in out and "attention_scale" in out
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["target_width"] == 256 and plan["base_width"] == 32 and plan["delta_width"] == 64
    assert plan["parameters"]["wte.weight"]["infinite"] == [False, True]
    markdown = (tmp_path / "report.md").read_text()
    assert "| `wte.weight` |" in markdown and "```diff" in markdown
    assert "<html" in (tmp_path / "report.html").read_text().lower()
    umask = os.umask(0)
    os.umask(umask)
    for name in ("plan.json", "report.md", "report.html"):  # the permissions open() gives, not a temp file's 0600
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_json_prints_only_the_plan(capsys):
    code, out, err = run_cli(capsys, ROOT / "examples" / "mlp.py", "--json", "--target", "256")
    assert code == 0
    plan = json.loads(out)  # nothing else on stdout
    assert set(plan) >= {"parametrization", "base_width", "delta_width", "target_width", "parameters", "edits", "warnings"}
    assert plan["target_width"] == 256
    param = plan["parameters"]["fc2.weight"]
    assert set(param) >= {"shape", "base_shape", "infinite", "role", "init_std", "lr_mult", "wd_mult"}
    assert param["role"] == "hidden" and param["lr_mult"]["adam"] == pytest.approx(0.25)
    edit = plan["edits"][0]
    assert set(edit) >= {"kind", "module", "node", "old", "new", "realized_by"}


def test_sp_parametrization_changes_nothing(capsys):
    code, out, _ = run_cli(capsys, ROOT / "examples" / "gpt_sdpa.py", "--json", "--parametrization", "sp")
    plan = json.loads(out)
    assert code == 0 and plan["edits"] == []
    for name, p in plan["parameters"].items():
        assert set(p["lr_mult"].values()) == {1.0}, name
        assert p["init_std"]["before"] == p["init_std"]["after"], name


def test_sibling_import_inferred_inputs_and_other_factory(capsys):
    code, out, _ = run_cli(capsys, FIXTURES / "sibling" / "model.py", "--json")
    assert code == 0 and json.loads(out)["parameters"]["0.weight"]["role"] == "input"
    code, out, _ = run_cli(capsys, f"{FIXTURES / 'sibling' / 'model.py'}:narrow_model", "--json", "--base", "32", "--target", "128")
    assert code == 0 and json.loads(out)["parameters"]["2.weight"]["shape"] == [64, 64]


def test_keyword_example_inputs_and_dict_outputs(capsys):
    code, out, _ = run_cli(capsys, FIXTURES / "kwargs_inputs.py", "--json")
    plan = json.loads(out)
    assert code == 0
    assert plan["parameters"]["embed.weight"]["role"] == "input"
    assert plan["parameters"]["head.weight"]["role"] == "output"
    assert [e["realized_by"] for e in plan["edits"]] == ["forward_pre_hook"]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["missing.py"], "not found"),
        ([FIXTURES / "sibling" / "model.py:nope"], "defines no function nope(width)"),
        ([FIXTURES / "broken_import.py"], "importing"),
        ([FIXTURES / "ignores_width.py"], "seems to ignore its width"),
        ([FIXTURES / "finite_trap.py"], "is 16 at base and delta but 64 at target"),
        ([FIXTURES / "structure_changes.py"], "differs from the base graph at node"),
        ([FIXTURES / "data_dependent.py"], "in module '(root)' (Branchy), at {}:16: `if h.shape[-1] * h.new_ones(()) > 48:".format(
            FIXTURES / "data_dependent.py")),
        ([FIXTURES / "factory_fails.py"], "width must be a multiple of 32"),
        ([FIXTURES / "expert_hit_loop.py"], "for expert_idx in expert_hit:"),
        ([ROOT / "examples" / "mlp.py", "--base", "64", "--delta", "64"], "delta width must differ"),
        ([FIXTURES / "ignores_width.py", "--base", "0"], "positive integer"),
        ([ROOT / "examples" / "mlp.py", "--base", "128", "--target", "64"], "below the base width 128"),
    ],
)
def test_bad_input_is_one_line_error(capsys, args, expected):
    code, out, err = run_cli(capsys, *args)
    assert code == EXIT_USER_ERROR
    assert expected in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and out == ""


def test_unclassifiable_use_stops_naming_parameter_op_and_line(capsys):
    code, out, err = run_cli(capsys, FIXTURES / "unclassified.py", "--json")
    assert code == EXIT_USER_ERROR and out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert "'offsets'" in err and "cumsum" in err and "unknown_ops=sp" in err
    assert "unclassified.py:15" in err  # the line of the model that calls torch.cumsum


def test_unclassifiable_use_kept_in_sp_when_asked(capsys):
    code, out, _ = run_cli(capsys, FIXTURES / "unclassified.py", "--json", "--option", "unknown_ops=sp")
    plan = json.loads(out)
    assert code == 0
    offsets = plan["parameters"]["offsets"]
    assert offsets["role"] == "unclassified"
    assert set(offsets["lr_mult"].values()) == {1.0}
    assert offsets["init_std"]["before"] == offsets["init_std"]["after"]
    warning = next(w for w in plan["warnings"] if w["code"] == "unclassified-use")
    assert warning["subjects"] == ["offsets"] and "cumsum" in warning["message"]


def test_console_script_and_debug_traceback():
    cmd = [sys.executable, "-m", "muprewrite.cli", str(FIXTURES / "finite_trap.py")]
    plain = subprocess.run(cmd, capture_output=True, text=True)
    assert plain.returncode == EXIT_USER_ERROR and "Traceback" not in plain.stderr
    debug = subprocess.run(cmd + ["--debug"], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "WidthError" in debug.stderr


def test_rewrite_options_from_the_command_line(capsys):
    code, out, _ = run_cli(capsys, ROOT / "examples" / "gpt_sdpa.py", "--json", "--option", "zero_init_query=true",
                           "--option", "norm_gains=frozen", "--option", "alpha_out=2")
    plan = json.loads(out)
    assert code == 0 and plan["options"]["alpha_out"] == 2.0 and plan["options"]["norm_gains"] == "frozen"
    assert plan["parameters"]["blocks.0.attn.c_attn.weight"]["zero"] == [{"dim": 0, "start": 0, "stop": 256}]
    assert plan["parameters"]["blocks.0.ln_1.weight"]["trainable"] is False
    for bad, message in (("foo=1", "unknown option"), ("foo", "KEY=VALUE"), ("zero_init_query=yes", "true or false"),
                         ("alpha_out=-1", "positive number")):
        code, out, err = run_cli(capsys, ROOT / "examples" / "mlp.py", "--option", bad)
        assert code == EXIT_USER_ERROR and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("blocker", ["file", "report.md folder"])
def test_unusable_out_is_refused_before_the_work_and_leaves_nothing(tmp_path, capsys, blocker):
    out = tmp_path / "out"
    if blocker == "file":
        out.write_text("in the way")
    else:
        (out / "report.md").mkdir(parents=True)
    code, stdout, err = run_cli(capsys, FIXTURES / "ignores_width.py", "--out", out)  # would fail later
    assert code == EXIT_USER_ERROR and "--out" in err and len(err.strip().splitlines()) == 1, err
    assert "seems to ignore its width" not in err  # refused before compiling
    assert not (out.is_dir() and (out / "plan.json").exists())


def test_interrupt_is_one_line_and_exit_130():
    # a background job's shell may ignore SIGINT, and Python then never raises KeyboardInterrupt: restore it
    done = subprocess.run([sys.executable, "-m", "muprewrite.cli", str(FIXTURES / "interrupts.py")],
                          capture_output=True, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().endswith("interrupted") and "Traceback" not in done.stderr


def test_hf_is_reachable_after_import_muprewrite():
    code = "import muprewrite; print(callable(muprewrite.hf.factory))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr


def test_an_error_keeps_its_square_brackets(capsys):
    from muprewrite.cli_common import _error

    _error("needs matplotlib: pip install 'muprewrite[plots]' (parameter blocks[0].w)")
    assert "'muprewrite[plots]' (parameter blocks[0].w)" in capsys.readouterr().err
