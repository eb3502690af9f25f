"""The main job (`keras-slim-demo`, `trainers/demo.py`) end to end, in
subprocesses: digits (the default), a local image folder, and --help."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import testing

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 300


def demo(*flags, returncode=0):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-m", "trainers.demo", *flags], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert result.returncode == returncode, result.stderr[-3000:]
    return result


def test_digits_run_writes_everything_it_reports(tmp_path):
    out = tmp_path / "demo"
    result = demo(f"--output_dir={out}", "--epochs=3", "--latency_runs=3")
    for step in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):
        assert step in result.stdout
    assert "width  channels" in result.stdout
    # Long work says what it is doing: the first step's tracing, each
    # width's calibration and export.
    printed = result.stdout
    assert printed.index("tracing the training step") < printed.index(
        "first step done in") < printed.index("[3/5]")
    for i, width in enumerate(["0.25", "0.5", "0.75", "1"]):
        assert f"      width {width} ({i + 1}/4)" in printed
        for kind in ("tflite", "onnx"):
            assert f"      {kind} width {width} ({i + 1}/4)" in printed
    # ... and how to load the model it wrote (keras_slim must be imported).
    recipe = ("import keras, keras_slim; model = "
              f"keras.models.load_model('{out / 'model.keras'}')")
    assert f"Load the model with (keras_slim registers its layers):\n  " \
        f"{recipe}" in printed

    report = json.loads((out / "report.json").read_text())
    assert report["load_model"] == recipe
    rows = report["rows"]
    assert [r["width"] for r in rows] == [0.25, 0.5, 0.75, 1.0]
    macs = [r["macs"] for r in rows]
    assert macs == sorted(macs) and macs[0] < macs[-1] / 8
    assert all(r["accuracy"] >= 0.6 for r in rows), rows
    assert all(r["latency_median_ms"] > 0 for r in rows)
    for kind in ("tflite", "onnx"):
        manifest = json.loads((out / kind / "manifest.json").read_text())
        exports = manifest["exports"]
        assert [e["width"] for e in exports] == [0.25, 0.5, 0.75, 1.0]
        for entry in exports:
            assert (out / kind / entry["file"]).stat().st_size == (
                entry["size_bytes"])
            assert entry["max_abs_diff"] <= 1e-4
    assert (out / "accuracy_vs_macs.png").read_bytes()[:8] == (
        b"\x89PNG\r\n\x1a\n")

    # The saved model runs at every width with its calibrated statistics
    # and reproduces the reported accuracy.
    from keras_slim import data as data_lib

    model = keras.saving.load_model(out / "model.keras")
    _, validation, _ = data_lib.load("digits", batch_size=128, seed=0)
    x, y = (np.concatenate(parts) for parts in zip(*validation))
    for row in rows:
        model.set_width(row["width"])
        predicted = np.argmax(model.predict(x, verbose=0), -1)
        assert np.mean(predicted == y) == pytest.approx(row["accuracy"],
                                                        abs=1e-6)


def test_folder_dataset(tmp_path):
    # 3 classes of 16x16 images told apart by colour, with noise.
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for label, name in enumerate(["red", "green", "blue"]):
        (root / name).mkdir(parents=True)
        for i in range(24):
            image = rng.integers(0, 60, (16, 16, 3))
            image[..., label] += 180
            tf.io.write_file(str(root / name / f"{i}.png"),
                             tf.io.encode_png(image.astype(np.uint8)))
    out = tmp_path / "demo"
    demo(f"--output_dir={out}", f"--dataset=folder:{root}", "--epochs=2",
         "--report_widths=0.5,1.0", "--noonnx", "--latency_runs=2")
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"] == f"folder:{root}"
    assert [r["width"] for r in report["rows"]] == [0.5, 1.0]
    assert (out / "tflite" / "manifest.json").exists()
    assert not (out / "onnx").exists()


DEMO_FLAGS = ("--output_dir", "--dataset", "--epochs", "--report_widths",
              "--sandwich_size", "--[no]inplace_distillation")


def test_help_lists_the_flags():
    result = demo("--help", returncode=1)  # absl exits 1 after help
    for flag in DEMO_FLAGS:
        assert f"{flag}:" in result.stdout, flag


def test_console_script_help_lists_the_flags(tmp_path):
    # `keras-slim-demo --help` used to print only "Try --helpfull": absl
    # looks the key flags up under sys.argv[0], the wrapper pip writes.
    result = testing.run_console_script(
        tmp_path, "keras-slim-demo", "trainers.demo", "--help")
    assert result.returncode == 1, result.stderr[-3000:]  # as absl does
    assert "train a universally slimmable CNN" in result.stdout
    for flag in DEMO_FLAGS:
        assert f"{flag}:" in result.stdout, flag


@pytest.mark.parametrize("below", ["", "run"])
def test_output_dir_that_is_a_file_is_a_clear_error(tmp_path, below):
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a folder")
    out = a_file / below if below else a_file
    result = demo(f"--output_dir={out}", "--epochs=1", returncode=1)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"--output_dir={out}" in result.stderr
    assert "not a folder" in result.stderr
    assert a_file.read_text() == "not a folder"


def test_bad_data_is_a_clear_error_naming_it(tmp_path):
    images = tmp_path / "images"
    for name in ("a", "b"):
        (images / name).mkdir(parents=True)
        for i in range(4):
            tf.io.write_file(str(images / name / f"{i}.png"), tf.io.encode_png(
                np.full((8, 8, 3), 60 * i, np.uint8)))
    broken = images / "b" / "copy-failed.png"
    broken.write_bytes(b"\0" * 64)
    result = demo(f"--output_dir={tmp_path / 'demo'}",
                  f"--dataset=folder:{images}", "--epochs=1", returncode=2)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"ERROR: 1 of the 9 image files in '{images}'" in result.stderr
    assert str(broken) in result.stderr and "--skip_bad_images" in (
        result.stderr)
    result = demo(f"--output_dir={tmp_path / 'demo'}", "--dataset=tfds:mnist",
                  f"--data_dir={tmp_path / 'tfds'}", "--epochs=1",
                  returncode=2)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "'mnist' is not prepared" in result.stderr
    assert "--download" in result.stderr
