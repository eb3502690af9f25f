#!/bin/bash
# Runs the colab/ notebooks as a fresh Colab session would: a new virtual
# environment without keras_slim (protobuf preinstalled, as in Colab), the
# package's wheel in the kernel's working folder (what a user uploads),
# `google.colab` importable, so each notebook's first cell installs the
# wheel with its export extra. QUICK settings. Needs the package index
# (TensorFlow and the rest are downloaded into the new environment).
#
#     tests/colab_fresh_install.sh [WORK_DIR] [NOTEBOOK ...]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d)}"
shift || true
notebooks=("$@")
if [ ${#notebooks[@]} -eq 0 ]; then
  notebooks=($(cd "$repo/colab" && ls *.ipynb | sed 's/\.ipynb$//'))
fi
rm -rf "$work/content" "$work/fake" "$work/venv"
mkdir -p "$work/content" "$work/fake/google/colab"
touch "$work/fake/google/colab/__init__.py"
python -m venv "$work/venv"
"$work/venv/bin/pip" install -q nbclient nbformat ipykernel protobuf
(cd "$repo" && pip wheel -q --no-deps . -w "$work/content")
for name in "${notebooks[@]}"; do
  (cd "$work/content" && KERAS_SLIM_QUICK=1 PYTHONPATH="$work/fake" \
    MPLBACKEND=module://matplotlib_inline.backend_inline \
    "$work/venv/bin/python" - "$repo/colab/$name.ipynb" <<'PY'
import sys

import nbformat
from nbclient import NotebookClient

notebook = nbformat.read(sys.argv[1], as_version=4)
notebook.cells.insert(0, nbformat.v4.new_code_cell("import google.colab"))
NotebookClient(notebook, timeout=1800, kernel_name="python3").execute()
print("ok", sys.argv[1])
PY
  )
done
(cd "$work/content" && "$work/venv/bin/python" -c \
  "import keras_slim; print('keras_slim installed at', keras_slim.__file__)")
