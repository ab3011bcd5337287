"""The depth coordinate check: CompleteP's plan keeps the residual stream and its update flat across
depth, plain muP's update grows with the number of blocks, and the verdict says which."""

import json

import pytest

from muprewrite.cli import main
from muprewrite.coordcheck_depth import coordcheck_depth
from muprewrite.errors import MuRewriteError

from test_depth import Gpt, ids


def make_model(width, depth=2):
    return Gpt(width, depth)


@pytest.fixture(scope="module")
def checked():
    return coordcheck_depth(make_model, width=32, depths=(2, 4, 8), example_inputs=ids(), steps=3, seeds=2)


def test_completep_passes_and_plain_mup_grows_with_depth(checked):
    assert checked.passed, checked.verdict()
    assert checked.block == "blocks.7"  # the last block at the deepest depth
    assert checked.slope("mup", "update")[0] > 0.5  # every block's update adds up
    assert "PASS" in checked.verdict() and "muP alone: update +" in checked.verdict()


def test_the_verdict_fails_when_the_judged_side_grows(checked):
    wrong = type(checked)(**{**checked.__dict__, "sizes": {"depth": checked.sizes["mup"]}})
    assert not wrong.passed and wrong.verdict().startswith("FAIL")


def test_fewer_than_three_depths_is_a_one_line_error():
    with pytest.raises(MuRewriteError, match="at least three positive depths"):
        coordcheck_depth(make_model, width=32, depths=(2, 4), example_inputs=ids())


def test_the_command_writes_json_and_exits_by_the_verdict(tmp_path, capsys):
    model_file = tmp_path / "model.py"
    model_file.write_text("import sys\nsys.path.insert(0, %r)\nfrom test_depth import Gpt, ids\n"
                          "BASE_WIDTH = 32\n\ndef make_model(width, depth=2):\n    return Gpt(width, depth)\n\n"
                          "def example_inputs():\n    return ids()\n" % str(__import__("pathlib").Path(__file__).parent))
    code = main(["coordcheck", str(model_file), "--depths", "2,4,8", "--steps", "2", "--seeds", "1", "--no-sp",
                 "--json", "--out", str(tmp_path / "out")])
    result = json.loads(capsys.readouterr().out)
    assert code == (0 if result["passed"] else 1) and result["depths"] == [2, 4, 8]
    assert (tmp_path / "out" / "coordcheck_depth.png").stat().st_size > 0
