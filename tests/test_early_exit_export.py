"""Staged export of early-exit models, run_cascade, and the trainers."""

import json

import keras
import numpy as np
import pytest

import keras_slim
from keras_slim import export
from keras_slim.export.staged import stage_models
from trainers import loop
from trainers import methods
from tests.early_exit_testing import early_exit_model
from tests.testing import assert_close
from tests.testing import digits


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(7)
    x, y = digits()
    model = early_exit_model()
    model.compile(keras.optimizers.Adam(3e-3), metrics=["accuracy"])
    model.fit(x[:1000], y[:1000], epochs=3, batch_size=64, verbose=0)
    policy = keras_slim.calibrate_exit_thresholds(
        model, (x[1000:1400], y[1000:1400]),
        budget=0.6 * model.exits[-1]["macs"])
    return model, policy, x[1400:]


def test_stage_models_chain_to_the_ensembles(trained):
    model, _, x = trained
    stages, exits = stage_models(model, 1.0)
    assert [[t.name for t in s.inputs] for s in stages] == [
        ["images"], ["features", "previous_logits"],
        ["features", "previous_logits"]]
    expected = model.predict(x, verbose=0)
    out = stages[0](x)
    assert_close(out["logits"], expected[0], atol=1e-5)
    for k in (1, 2):
        out = stages[k]([out["next_features"], out["logits"]])
        assert_close(out["logits"], expected[k], atol=1e-5)
        assert_close(exits[k](x), expected[k], atol=1e-5)
    assert "next_features" not in out
    # Plain joint training (t = 0): stages hand on features only.
    plain = early_exit_model(ensemble_weight=0.0)
    stages, _ = stage_models(plain, 1.0)
    assert [[t.name for t in s.inputs] for s in stages] == [
        ["images"], ["features"], ["features"]]
    expected = plain.predict(x, verbose=0)
    out = stages[0](x)
    for k in (1, 2):
        out = stages[k](out["next_features"])
        assert_close(out["logits"], expected[k], atol=1e-5)


def test_staged_tflite_and_onnx_run_cascade_like_predict_dynamic(
        trained, tmp_path):
    model, policy, x = trained
    manifest = export.to_tflite(model, tmp_path, thresholds=policy,
                                representative_data=x[:32])
    files = {e["file"]: e for e in manifest["exports"]}
    assert len(files) == 6  # 3 stages + 3 single-exit files
    costs = [e["macs"] for e in model.exits]
    stage_macs = [e["stage_macs"] for e in model.exits]
    stages = [e for e in manifest["exports"] if e["kind"] == "stage"]
    assert [e["macs"] for e in stages] == stage_macs
    assert [e["cumulative_macs"] for e in stages] == costs
    assert all(e["max_abs_diff"] <= e["tolerance"] for e in files.values())
    info = json.loads((tmp_path / "manifest.json").read_text())["early_exit"]
    record = info["widths"]["w1"]
    assert record["thresholds"] == pytest.approx(policy.thresholds)
    assert record["cumulative_macs"] == costs
    assert info["ensemble_weights"] == model.ensemble_weights

    expected = model.predict_dynamic(x, policy)
    assert len(set(expected.exits)) > 1  # the cascade really branches
    result = export.run_cascade(tmp_path, x)
    np.testing.assert_array_equal(result.labels, expected.labels)
    np.testing.assert_array_equal(result.exits, expected.exits)
    assert result.mean_macs == pytest.approx(expected.mean_macs)
    assert np.all(result.latency_ms > 0)
    # One file per exit: images -> P_k.
    logits = export.run_tflite(tmp_path / "net_w1_exit2.tflite", x)
    assert_close(logits, model.predict(x, verbose=0)[1], atol=1e-4)

    export.to_onnx(model, tmp_path, thresholds=policy, per_exit=False)
    result = export.run_cascade(tmp_path, x, format="onnx")
    np.testing.assert_array_equal(result.labels, expected.labels)
    manifest = export.read_manifest(tmp_path)
    assert len(manifest["exports"]) == 9  # the TFLite entries are kept
    with pytest.raises(ValueError, match="stage by stage"):
        export.to_tflite_multi(model, tmp_path / "multi.tflite")
    with pytest.raises(ValueError, match="pass 2"):
        export.run_cascade(tmp_path, x, thresholds=[0.5])


def test_run_cascade_errors(tmp_path, trained):
    model, _, x = trained
    with pytest.raises(ValueError, match="no staged early-exit export"):
        export.run_cascade(tmp_path, x)
    export.to_tflite(model, tmp_path, per_exit=False)
    with pytest.raises(ValueError, match="No thresholds"):
        export.run_cascade(tmp_path, x)
    with pytest.raises(ValueError, match="Staged TFLite export supports"):
        export.to_tflite(model, tmp_path, quantize="int8",
                         representative_data=x)
    # Inputs the stages would mis-read are refused before running them.
    export.to_tflite(model, tmp_path, per_exit=False, thresholds=[0.9] * (
        model.num_exits - 1), input_range=(0.0, 1.0))
    with pytest.raises(ValueError, match=r"takes float32 inputs in \[0, 1\]"):
        export.run_cascade(tmp_path, (x * 255).astype("uint8"))
    with pytest.raises(ValueError, match=r"takes inputs of shape"):
        export.run_cascade(tmp_path, x[..., 0])


def test_width_by_depth_staged_export_per_width(tmp_path):
    x, y = digits(800)
    model = early_exit_model(width_range=(0.5, 1.0))
    model.compile(keras.optimizers.Adam(3e-3), sandwich_size=2)
    model.fit(x[:400], y[:400], epochs=2, batch_size=64, verbose=0)
    keras_slim.calibrate_bn(model, x[:400], widths=[0.5, 1.0], verbose=0)
    # Thresholds from one split, the cascade on another: a validation
    # sample that defines a threshold sits exactly on it, where float
    # round-off of the exported file may tip it either way.
    policies = [
        keras_slim.calibrate_exit_thresholds(
            model, (x[400:600], y[400:600]),
            budget=0.6 * model.exit_costs(w)["macs"][-1], widths=[w])
        for w in (0.5, 1.0)
    ]
    manifest = export.to_tflite(model, tmp_path, widths=[0.5, 1.0],
                                thresholds=policies, per_exit=False)
    widths = manifest["early_exit"]["widths"]
    assert sorted(widths) == ["w0.5", "w1"]
    assert widths["w0.5"]["cumulative_macs"][-1] < (
        widths["w1"]["cumulative_macs"][-1] / 2)
    for width, policy in zip((0.5, 1.0), policies):
        expected = model.predict_dynamic(x[600:], policy)
        result = export.run_cascade(tmp_path, x[600:], width=width)
        np.testing.assert_array_equal(result.labels, expected.labels)
        assert result.width == width
    with pytest.raises(ValueError, match="several widths"):
        export.run_cascade(tmp_path, x[:5])


def test_trainers_boost_and_plain_methods(tmp_path):
    common = dict(
        model="resnet_exits",
        model_kwargs='{"depth": 8, "exit_every": 1, "head_filters": [8]}',
        dataset="digits", batch_size=64, train_steps=6, steps_per_loop=3,
        checkpoint_every_steps=0, optimizer="adam", learning_rate=3e-3,
        calibration_examples=128, verbose=0,
    )
    config = loop.TrainConfig(method="boost", model_dir=str(tmp_path / "b"),
                              **common)
    report = loop.train(config)
    (entry,) = report["widths"]
    assert len(entry["exit_accuracies"]) == 3
    assert entry["accuracy"] == entry["exit_accuracies"][-1]
    plain = methods.get("exits_plain").build(
        loop.TrainConfig(method="exits_plain", **common), (8, 8, 1), 10)
    assert isinstance(plain, keras_slim.EarlyExitModel) and not plain.boosted
    sliced = methods.get("boost_us").build(
        loop.TrainConfig(method="boost_us", **common), (8, 8, 1), 10)
    assert sliced.boosted and sliced.width_range == (0.25, 1.0)
    with pytest.raises(ValueError, match="--model=resnet_exits"):
        methods.get("boost").build(
            loop.TrainConfig(method="boost"), (8, 8, 1), 10)
