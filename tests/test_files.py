"""keras_slim.files: a result file is written whole or not at all."""

import json
import os

import pytest

from keras_slim import files


def test_write_atomic_replaces_the_file_whole(tmp_path):
    path = tmp_path / "sub" / "report.json"
    files.write_json_atomic(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    files.write_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert os.listdir(path.parent) == ["report.json"]  # no temporary left


def test_an_interrupted_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "model.keras"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="crash"):
        with files.atomic_path(path) as temporary:
            assert temporary.endswith(".keras")
            with open(temporary, "w") as f:
                f.write("half a fi")
            raise RuntimeError("crash")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["model.keras"]
