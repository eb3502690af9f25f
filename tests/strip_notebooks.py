"""Strips outputs from the Colab notebooks before they are committed.

Committed notebooks carry no outputs, execution counts or per-cell run
metadata: a diff then shows only what the author changed, and the notebook
test (`tests/test_notebooks.py`) checks it.

Usage:

    python tests/strip_notebooks.py colab/*.ipynb          # rewrite in place
    python tests/strip_notebooks.py --check colab/*.ipynb  # exit 1 if not
"""

import argparse
import copy
import sys

import nbformat

# Kept in a code cell's metadata; anything else (execution timings that
# nbclient / Jupyter add, "scrolled", widget state) is run-specific.
KEPT_CELL_METADATA = ("id", "tags")
# Notebook-level metadata kept (Colab and Jupyter need these to open it).
KEPT_NOTEBOOK_METADATA = ("colab", "kernelspec", "language_info")


def stripped(notebook):
    """A copy of `notebook` (an `nbformat.NotebookNode`) without outputs.

    Example:

    >>> clean = stripped(nbformat.read("colab/quickstart.ipynb", 4))
    >>> all(c.get("outputs", []) == [] for c in clean.cells)
    True
    """
    notebook = copy.deepcopy(notebook)
    notebook.metadata = nbformat.from_dict({
        key: value for key, value in notebook.metadata.items()
        if key in KEPT_NOTEBOOK_METADATA
    })
    if "language_info" in notebook.metadata:
        # Only the name: the version is the machine's that last ran it.
        notebook.metadata.language_info = nbformat.from_dict(
            {"name": notebook.metadata.language_info.get("name", "python")})
    for cell in notebook.cells:
        cell.metadata = nbformat.from_dict({
            key: value for key, value in cell.metadata.items()
            if key in KEPT_CELL_METADATA
        })
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return notebook


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="notebooks (.ipynb)")
    parser.add_argument("--check", action="store_true",
                        help="only report notebooks that need stripping")
    args = parser.parse_args(argv)
    dirty = []
    for path in args.paths:
        notebook = nbformat.read(path, as_version=4)
        clean = stripped(notebook)
        if clean == notebook:
            continue
        dirty.append(path)
        if not args.check:
            nbformat.write(clean, path)
            print(f"stripped {path}")
    if args.check and dirty:
        print("not stripped: " + ", ".join(dirty), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
