import sys
from pathlib import Path

# Examples import their siblings (`from nanogpt import ...`) the way `python examples/x.py`
# would, and tests import examples (`import mlp`) and the twins (`import mup_twins`) by name.
sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))
sys.path.insert(0, str(Path(__file__).parent))
