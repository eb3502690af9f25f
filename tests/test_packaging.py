"""How keras_slim installs: its packages, and no generic top-level names."""

import pathlib
import subprocess
import sys
import tomllib

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_for_installation():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"][
        "setuptools"]
    listed = set(config["packages"])
    found = {
        ".".join(path.parent.relative_to(REPO).parts)
        for path in (REPO / "keras_slim").rglob("__init__.py")
    }
    assert found <= listed, sorted(found - listed)
    assert config["package-dir"] == {"keras_slim.trainers": "trainers"}
    assert all(name.startswith("keras_slim") for name in listed)


def test_installed_trainers_live_under_keras_slim(tmp_path):
    # Outside the repository (no `trainers` folder on the path): the trainers
    # import as keras_slim.trainers, and no top-level `trainers` exists.
    code = (
        "import importlib.util, keras_slim.trainers.train as t;"
        "print(t.__name__, importlib.util.find_spec('trainers'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
        text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["keras_slim.trainers.train", "None"]
