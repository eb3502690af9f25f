"""The Colab notebooks run top to bottom (with fewer epochs) and produce
what their text promises."""

import json
import pathlib
import re

import numpy as np
import pytest

NOTEBOOKS = sorted(
    (pathlib.Path(__file__).resolve().parents[1] / "colab").glob("*.ipynb")
)


def code_of(path, epochs):
    """The notebook's code cells as one script; shell and magic lines (the
    Colab install step) are dropped, and EPOCHS is set to `epochs`."""
    notebook = json.loads(path.read_text())
    assert notebook["nbformat"] == 4
    lines = []
    for cell in notebook["cells"]:
        assert cell["cell_type"] in ("markdown", "code")
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"{path.name}: outputs committed"
            lines += [l for l in "".join(cell["source"]).splitlines()
                      if not l.lstrip().startswith(("!", "%"))]
    source = "\n".join(lines)
    source, count = re.subn(r"^EPOCHS = \d+", f"EPOCHS = {epochs}", source,
                            flags=re.M)
    assert count == 1, "the notebook sets EPOCHS once"
    return source


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["quickstart.ipynb"]


def test_quickstart_notebook_runs():
    path = NOTEBOOKS[0]
    namespace = {"__name__": "__main__"}
    exec(compile(code_of(path, epochs=4), str(path), "exec"), namespace)
    widths = namespace["widths"]
    accuracy, plain = namespace["accuracy"], namespace["plain"]
    assert all(accuracy[w] >= 0.8 for w in widths), accuracy
    # Calibration is what makes the narrowest width usable.
    assert accuracy[0.25] >= plain[0.25], (accuracy, plain)
    exports = namespace["manifest"]["exports"]
    assert [e["width"] for e in exports] == widths
    assert all(e["max_abs_diff"] <= 1e-4 for e in exports)
    model, small, x = namespace["model"], namespace["small"], namespace["x"]
    model.set_width(0.25)
    np.testing.assert_allclose(small(x), model(x), atol=1e-5)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_have_no_outputs_and_valid_structure(path):
    code_of(path, epochs=1)
