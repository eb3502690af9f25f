"""The Colab notebooks run top to bottom in a real Jupyter kernel.

Each notebook is executed with nbclient (a fresh ipykernel per notebook, as
Colab runs it) with `KERAS_SLIM_QUICK=1`: the notebook then picks tiny
settings on the embedded digits (offline). Any error in any cell fails the
test, and each notebook's last cell asserts the figures its prose promises,
so a silent regression fails too. Committed notebooks carry no outputs
(`python tests/strip_notebooks.py colab/*.ipynb` strips them).
"""

import os
import pathlib
import time

import nbformat
import pytest

from tests import strip_notebooks

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "colab").glob("*.ipynb"))
EXPECTED = [
    "any_width.ipynb",
    "autoslim.ipynb",
    "early_exits.ipynb",
    "quickstart.ipynb",
    "repr.ipynb",
    "several_devices.ipynb",
    "your_own_model.ipynb",
]
# Seconds per cell; the slowest QUICK cell (your_own_model fit) takes ~50 s
# on 2 busy cores.
CELL_TIMEOUT = 300


def test_the_notebooks_are_all_there():
    assert [p.name for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_are_stripped_and_follow_the_pattern(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert strip_notebooks.stripped(notebook) == notebook, (
        f"{path.name} has outputs: run "
        f"python tests/strip_notebooks.py colab/{path.name}")
    code = [c.source for c in notebook.cells if c.cell_type == "code"]
    # 1. Installs the package in Colab only.
    assert '"google.colab" in sys.modules' in code[0]
    assert "%pip install" in code[0]
    # ... from an uploaded wheel or a git URL the user sets, with the
    # export extra; never a placeholder address.
    assert 'glob.glob("keras_slim-*.whl")' in code[0]
    assert "[export]" in code[0] and "<" not in code[0]
    # 2. A QUICK switch near the top, read from the environment.
    assert 'QUICK = os.environ.get("KERAS_SLIM_QUICK") == "1"' in code[1]
    # 3. The last cell checks what the prose promises.
    assert code[-1].count("assert ") >= 2, path.name
    # Prose between the cells.
    markdown = [c for c in notebook.cells if c.cell_type == "markdown"]
    assert len(markdown) >= len(code) - 2, path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_a_kernel(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    # The kernel inherits this environment: QUICK settings, this checkout
    # importable (also for the trainer subprocesses a notebook starts).
    monkeypatch.setenv("KERAS_SLIM_QUICK", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    notebook = nbformat.read(path, as_version=4)
    # Every figure drawn is checked for what a reader trips over (labels
    # over another panel, legends over data, invisible unlabelled bars);
    # the problems are asserted after the last cell.
    first = nbformat.v4.new_code_cell(
        "from tests import figure_checks\nfigure_checks.install()")
    last = nbformat.v4.new_code_cell(
        "assert not figure_checks.FOUND, '\\n'.join(figure_checks.FOUND)")
    notebook.cells = [first, *notebook.cells, last]
    client = NotebookClient(
        notebook, timeout=CELL_TIMEOUT, kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's cwd
    )
    start = time.perf_counter()
    try:
        client.execute()  # raises CellExecutionError on any failing cell
    finally:
        # Kept for inspection, outputs included (see pytest --basetemp).
        nbformat.write(notebook, tmp_path / path.name)
    seconds = time.perf_counter() - start
    images = [o for c in notebook.cells if c.cell_type == "code"
              for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, f"{path.name} shows no plot"
    # A cell that shows a plot shows it (a library switching matplotlib's
    # backend to "Agg" once silently blanked every later plt.show()).
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code" and "plt.show()" in cell.source:
            assert any("image/png" in o.get("data", {})
                       for o in cell.outputs), (
                f"{path.name}: cell {index - 1} calls plt.show() but shows "
                "no image")
    print(f"{path.name}: {seconds:.1f} s")
