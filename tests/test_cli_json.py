"""--json keeps stdout for the plan, whatever the model's own code prints; --grow is for hf: models."""

import json
from pathlib import Path

import pytest

from muprewrite.cli import EXIT_USER_ERROR, main

FIXTURES = Path(__file__).parent / "fixtures"


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_sends_the_models_own_prints_to_stderr(capsys):
    code, out, err = run_cli(capsys, FIXTURES / "prints.py", "--json")
    assert code == 0
    plan = json.loads(out)  # stdout is the plan and nothing else
    assert plan["base_width"] == 16 and plan["target_width"] == 64
    assert "chatty make_model(16)" in err and "chatty forward" in err
    assert "chatty" not in out


def test_json_with_out_still_prints_only_the_plan(capsys, tmp_path):
    code, out, err = run_cli(capsys, FIXTURES / "prints.py", "--json", "--out", tmp_path)
    assert code == 0
    assert json.loads(out) == json.loads((tmp_path / "plan.json").read_text())


def test_without_json_the_prints_stay_on_stdout(capsys):
    code, out, err = run_cli(capsys, FIXTURES / "prints.py", "--no-verify")
    assert code == 0
    assert "chatty make_model(16)" in out


def test_grow_on_a_model_file_is_a_one_line_error(capsys):
    code, out, err = run_cli(capsys, FIXTURES / "prints.py", "--grow", "heads")
    assert code == EXIT_USER_ERROR
    assert out == "" and len(err.strip().splitlines()) == 1
    assert "--grow" in err and "Traceback" not in err


def test_grow_rejects_other_values(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["hf:llama", "--grow", "width"])
    assert exit_info.value.code == 2
