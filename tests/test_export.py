"""Tests for keras_slim.export: TFLite / ONNX files per width, the manifest,
multi-signature TFLite and the width-dynamic ONNX graph.

Every file is run independently here (LiteRT interpreter, onnxruntime) and
compared with the slimmable model itself, not only with what the exporter
reported.
"""

import hashlib
import json
import os

import keras
import numpy as np
import pytest

import keras_slim
from keras_slim import export
from keras_slim.export import manifest as manifest_lib
from keras_slim.export import tflite as tflite_lib
from tests.test_strip import build
from tests.test_strip import inputs_for
from tests.test_strip import random_config
from tests.test_strip import random_widths
from tests.test_strip import slim_output
from tests.testing import assert_close
from tests.testing import digits

L = keras.layers


def listing(directory):
    return sorted(os.listdir(directory)) if os.path.exists(directory) else None


# ------------------------------------------------------- fidelity per width
@pytest.mark.parametrize(
    "kind", ["sequential", "residual", "concat", "flatten", "triangular",
             "snet"])
def test_exports_match_keras_on_every_architecture(kind, tmp_path):
    model = build(kind, seed=3)
    rng = np.random.default_rng(len(kind))
    widths = random_widths(model, rng, 1)
    if model.widths is None:
        widths.append(random_config(model, rng))
    tfl = export.to_tflite(model, tmp_path / "tflite", widths=widths)
    onx = export.to_onnx(model, tmp_path / "onnx", widths=widths)
    x = inputs_for(model, n=5, seed=7)  # not the exporter's check inputs
    for width, t_entry, o_entry in zip(widths, tfl["exports"],
                                       onx["exports"]):
        expected = slim_output(model, width, x)
        assert_close(export.run_tflite(tmp_path / "tflite" / t_entry["file"],
                                       x), expected, atol=1e-4)
        assert_close(export.run_onnx(tmp_path / "onnx" / o_entry["file"], x),
                     expected, atol=1e-4)
        assert t_entry["max_abs_diff"] <= 1e-4
        assert o_entry["max_abs_diff"] <= 1e-4


# ------------------------------------------------ quantization on digits
@pytest.fixture(scope="module")
def digits_model():
    """A small CNN trained on sklearn digits, slimmed (exact at width 1)."""
    keras.utils.set_random_seed(0)
    x, y = digits()
    base = keras.Sequential([
        keras.Input((8, 8, 1)),
        L.Conv2D(16, 3, padding="same"), L.BatchNormalization(momentum=0.9),
        L.ReLU(),
        L.Conv2D(32, 3, padding="same"), L.BatchNormalization(momentum=0.9),
        L.ReLU(), L.MaxPooling2D(),
        L.Conv2D(32, 3, padding="same"), L.BatchNormalization(momentum=0.9),
        L.ReLU(), L.GlobalAveragePooling2D(), L.Dense(10),
    ])
    base.compile(keras.optimizers.Adam(3e-3),
                 keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                 metrics=["accuracy"])
    base.fit(x[:1400], y[:1400], epochs=6, batch_size=64, verbose=0)
    model = keras_slim.slim(base, width_range=(0.5, 1.0))
    return model, x[:1400], x[1400:], y[1400:]


def test_float16_and_int8_keep_accuracy_within_two_points(digits_model,
                                                          tmp_path):
    model, x_train, x_test, y_test = digits_model
    accuracy, sizes = {}, {}
    for quantize in (None, "float16", "dynamic", "int8"):
        manifest = export.to_tflite(
            model, tmp_path, widths=[1.0], quantize=quantize,
            representative_data=x_train[:200])
        (entry,) = [e for e in manifest["exports"]
                    if e["quantization"] == (quantize or "float32")]
        logits = export.run_tflite(tmp_path / entry["file"], x_test)
        accuracy[quantize] = float(np.mean(logits.argmax(-1) == y_test))
        sizes[quantize] = entry["size_bytes"]
        assert entry["argmax_agreement"] >= 0.95, entry
    print("digits accuracy", accuracy, "sizes", sizes)
    assert accuracy[None] >= 0.9  # the fixture trained something
    for quantize in ("float16", "dynamic", "int8"):
        assert abs(accuracy[quantize] - accuracy[None]) <= 0.02, accuracy
    assert sizes["int8"] < 0.5 * sizes[None]
    assert sizes["float16"] < 0.75 * sizes[None]
    assert len(export.read_manifest(tmp_path)["exports"]) == 4


# ---------------------------------------------------------------- manifest
def test_manifest_describes_each_file(tmp_path):
    model = build("residual")
    widths = [0.25, 0.6]
    export.to_tflite(model, tmp_path, widths=widths)
    # A second export into the same directory keeps the first's entries.
    export.to_onnx(model, tmp_path, widths=[0.6])
    manifest = export.read_manifest(tmp_path)
    assert manifest["input_shape"] == [16, 16, 3]
    entries = manifest["exports"]
    assert [(e["format"], e["width"]) for e in entries] == [
        ("tflite", 0.25), ("tflite", 0.6), ("onnx", 0.6)]
    for entry in entries:
        path = tmp_path / entry["file"]
        assert entry["size_bytes"] == path.stat().st_size
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        counts = keras_slim.profile(model, entry["width"])
        assert entry["macs"] == counts["macs"] > 0
        assert entry["params"] == counts["params"]
        assert entry["channels"] == counts["channels"]
        assert entry["max_abs_diff"] <= entry["tolerance"]
        assert entry["tolerance"] >= 1e-4  # 1e-4 * max(1, max |output|)
        assert entry["quantization"] == "float32"
    narrow, wide = entries[0], entries[1]
    assert narrow["macs"] < wide["macs"]
    channels = dict(zip(model.channel_groups, model.channels_for(0.25)))
    for name, count in narrow["channels"].items():
        if name in channels:
            assert count == channels[name]
    # Only the exports and the manifest are left: no staging or temp files.
    assert listing(tmp_path) == sorted(
        [e["file"] for e in entries] + ["manifest.json"])


BAD_CALLS = {
    "width above range": dict(widths=[0.5, 1.5]),
    "width below range": dict(widths=[0.1]),
    "unknown layer in config": dict(widths=[{"nope": 3}]),
    "duplicate widths": dict(widths=[0.5, 0.5]),
    "empty widths": dict(widths=[]),
    "unknown quantize": dict(widths=[0.5], quantize="int4"),
    "int8 without data": dict(widths=[0.5], quantize="int8"),
    "data of the wrong shape": dict(
        widths=[0.5], quantize="int8",
        representative_data=np.zeros((4, 9, 9, 1), "float32")),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_arguments_fail_before_writing_anything(case, tmp_path):
    model = build("sequential")
    out_dir = tmp_path / "out"
    with pytest.raises(ValueError):
        export.to_tflite(model, out_dir, **BAD_CALLS[case])
    assert not out_dir.exists()


def test_bad_onnx_arguments_fail_before_writing_anything(tmp_path):
    model = build("snet")
    out_dir = tmp_path / "out"
    with pytest.raises(ValueError, match="opset"):
        export.to_onnx(model, out_dir, widths=[0.5], opset=21)
    with pytest.raises(ValueError, match="switches between the widths"):
        export.to_onnx(model, out_dir, widths=[0.6])
    with pytest.raises(ValueError, match="SlimmableModel"):
        export.to_onnx(model.network, out_dir)
    assert not out_dir.exists()


def test_unwritable_out_dir_raises_oserror_before_converting(tmp_path,
                                                           monkeypatch):
    model = build("sequential")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    calls = []
    monkeypatch.setattr(tflite_lib, "convert_keras_model",
                        lambda *a, **k: calls.append(1))
    with pytest.raises(OSError):
        export.to_tflite(model, blocker, widths=[0.5])
    with pytest.raises(OSError):
        export.to_tflite(model, blocker / "sub", widths=[0.5])
    assert calls == []
    assert blocker.read_text() == "not a directory"


def test_failed_verification_leaves_no_success_manifest(tmp_path,
                                                        monkeypatch):
    model = build("sequential")
    fresh, used = tmp_path / "fresh", tmp_path / "used"
    export.to_tflite(model, used, widths=[0.5])
    before = (used / "manifest.json").read_text()
    files_before = listing(used)

    real_run = tflite_lib.run_tflite

    def corrupt_second(path, inputs, **kwargs):
        corrupt_second.calls += 1
        out = real_run(path, inputs, **kwargs)
        return out + 1.0 if corrupt_second.calls == 2 else out

    for out_dir in (fresh, used):
        corrupt_second.calls = 0
        monkeypatch.setattr(tflite_lib, "run_tflite", corrupt_second)
        with pytest.raises(export.ExportVerificationError, match="max"):
            export.to_tflite(model, out_dir, widths=[0.25, 1.0])
        assert corrupt_second.calls == 2
    # Fresh directory: nothing at all (the first, good file is not kept
    # either, nor the staging directory).
    assert listing(fresh) == []
    # Directory of an earlier export: untouched.
    assert listing(used) == files_before
    assert (used / "manifest.json").read_text() == before


def test_manifest_write_failure_leaves_no_manifest(tmp_path, monkeypatch):
    model = build("sequential")

    def broken_dump(value, f, **kwargs):
        f.write('{"exports": [')  # a partial write, then a crash
        raise OSError("disk full")

    monkeypatch.setattr(manifest_lib.json, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        export.to_tflite(model, tmp_path, widths=[0.5])
    names = listing(tmp_path)
    assert "manifest.json" not in names
    assert not any(n.startswith(".") for n in names), names
    monkeypatch.undo()
    # The next successful export writes a complete manifest.
    export.to_tflite(model, tmp_path, widths=[0.5])
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert [e["width"] for e in data["exports"]] == [0.5]


# ------------------------------------------------- multi-signature TFLite
def test_multi_signature_tflite_runs_every_width(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    model = build("concat")
    widths = [0.25, 1.0]
    info = export.to_tflite_multi(model, tmp_path / "multi.tflite", widths)
    keys = [export.signature_key(w) for w in widths]
    assert keys == ["w0_25", "w1"]
    assert set(Interpreter(str(tmp_path / "multi.tflite"))
               .get_signature_list()) == set(keys)
    x = inputs_for(model, n=4, seed=11)
    for width, key in zip(widths, keys):
        assert_close(
            export.run_tflite(tmp_path / "multi.tflite", x, signature_key=key),
            slim_output(model, width, x), atol=1e-4)
        assert info["signatures"][key]["max_abs_diff"] <= 1e-4
    separate = export.to_tflite(model, tmp_path / "separate", widths=widths)
    sizes = [e["size_bytes"] for e in separate["exports"]]
    print("multi-signature", info["size_bytes"], "separate", sizes)
    # Weights are not shared between signatures: the one file holds every
    # width's constants, minus the per-file overhead.
    assert max(sizes) < info["size_bytes"] < sum(sizes)
    assert listing(tmp_path) == ["multi.tflite", "separate"]


# --------------------------------------------------- width-dynamic ONNX
def test_dynamic_onnx_is_exact_for_a_triangular_model(tmp_path):
    model = build("triangular")
    info = export.to_onnx_dynamic(model, tmp_path / "any.onnx")
    assert info["exact"]
    x = inputs_for(model, n=4, seed=5)
    for width in (0.25, 0.33, 0.55, 0.8, 1.0):
        assert_close(
            export.run_onnx(tmp_path / "any.onnx", x,
                            np.array(width, np.float32)),
            slim_output(model, width, x), atol=1e-4, msg=str(width))
    # Widths are clipped to the model's range.
    assert_close(
        export.run_onnx(tmp_path / "any.onnx", x, np.array(3.0, np.float32)),
        slim_output(model, 1.0, x), atol=1e-4)


def test_dynamic_onnx_follows_uncalibrated_model_with_gathers(tmp_path):
    model = build("concat")  # Concatenate -> BN, depthwise with gathers
    info = export.to_onnx_dynamic(model, tmp_path / "any.onnx")
    assert not info["exact"]
    x = inputs_for(model, n=4, seed=5)
    for width in (0.3, 0.7):
        expected = keras.ops.convert_to_numpy(
            model(x, training=False, width=width))
        assert_close(
            export.run_onnx(tmp_path / "any.onnx", x,
                            np.array(width, np.float32)),
            expected, atol=1e-4)


def test_dynamic_onnx_switches_snet_bn_rows(tmp_path):
    model = build("snet")
    info = export.to_onnx_dynamic(model, tmp_path / "any.onnx", opset=15,
                                  check_widths=[0.25, 1.0])
    assert info["exact"] and set(info["checks"]) == {"w0.25", "w1"}
    x = inputs_for(model, n=4, seed=5)
    for width in model.widths:
        assert_close(
            export.run_onnx(tmp_path / "any.onnx", x,
                            np.array(width, np.float32)),
            slim_output(model, width, x), atol=1e-4)
    # An unlisted width snaps to the nearest listed one.
    assert_close(
        export.run_onnx(tmp_path / "any.onnx", x, np.array(0.6, np.float32)),
        slim_output(model, 0.5, x), atol=1e-4)
    with pytest.raises(ValueError, match="not a per-layer|configuration"):
        export.to_onnx_dynamic(model, tmp_path / "x.onnx",
                               check_widths=[{"a": 1}])


# ------------------------------------------------------- running the files
def test_running_a_file_refuses_inputs_preprocessed_otherwise(digits_model,
                                                              tmp_path):
    # uint8 0-255 images used to be cast and give wrong labels silently; a
    # wrong shape gave a LiteRT reshape error.
    model, _, x_test, y_test = digits_model
    x_test = x_test[:50]
    tfl = export.to_tflite(model, tmp_path / "tflite", widths=[1.0],
                           input_range=(0.0, 1.0))
    onx = export.to_onnx(model, tmp_path / "onnx", widths=[1.0],
                         input_range=(0.0, 1.0))
    assert tfl["input"] == {"dtype": "float32", "range": [0.0, 1.0],
                            "range_source": "declared"}
    tfl_path = tmp_path / "tflite" / tfl["exports"][0]["file"]
    onx_path = tmp_path / "onnx" / onx["exports"][0]["file"]
    raw = np.round(x_test * 255).astype("uint8")
    for run, path in ((export.run_tflite, tfl_path),
                      (export.run_onnx, onx_path)):
        good = run(path, x_test)
        assert np.mean(good.argmax(-1) == y_test[:50]) > 0.8
        with pytest.raises(ValueError, match=r"takes float32 inputs in "
                           r"\[0, 1\].*astype\('float32'\) / 255"):
            run(path, raw)
        with pytest.raises(ValueError, match=r"trained on inputs in \[0, 1\]"
                           r".*these range over \[0, 255\]"):
            run(path, raw.astype("float32"))
        with pytest.raises(ValueError, match=r"takes inputs of shape "
                           r"\('batch', 8, 8, 1\); got an array of shape "
                           r"\(50, 8, 8\)"):
            run(path, x_test[..., 0])
        with pytest.raises(ValueError, match=r"shape \(50, 9, 9, 1\)"):
            run(path, np.zeros((50, 9, 9, 1), "float32"))
        # Integers inside the recorded range are exact as floats: accepted.
        binary = (x_test > 0.5).astype("int64")
        assert_close(run(path, binary), run(path, binary.astype("float32")))
    with pytest.raises(ValueError, match=r"input_range.*low < high"):
        export.to_tflite(model, tmp_path / "bad", input_range=(1, 0))
    assert not (tmp_path / "bad").exists()
    # Without a declared range, the representative data's range is recorded.
    manifest = export.to_tflite(model, tmp_path / "rep", widths=[1.0],
                                representative_data=x_test)
    assert manifest["input"]["range_source"] == "representative_data"
    assert manifest["input"]["range"] == [float(x_test.min()),
                                          float(x_test.max())]
