"""Tests for keras_slim.profile (MACs, params) and profile_latency."""

import math

import keras
import numpy as np
import pytest

import keras_slim
from keras_slim.profiling import profile
from keras_slim.export.latency import profile_latency
from tests.test_strip import build

L = keras.layers


def tiny():
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        L.Conv2D(4, 3),                        # 8x8 -> 6x6, valid
        L.BatchNormalization(), L.ReLU(),
        L.DepthwiseConv2D(3, padding="same"),
        L.Conv2D(8, 1),
        L.GlobalAveragePooling2D(),
        L.Dense(10),
    ], name="tiny")


def test_macs_and_params_of_a_known_model_by_hand():
    result = profile(tiny())
    conv = 3 * 3 * 1 * 4 * 6 * 6          # k_h k_w C_in C_out H W
    depthwise = 3 * 3 * 4 * 6 * 6         # k_h k_w C H W
    pointwise = 1 * 1 * 4 * 8 * 6 * 6
    dense = 8 * 10
    assert result["macs"] == conv + depthwise + pointwise + dense == 3824
    params = (9 + 1) * 4 + 4 * 4 + (9 + 1) * 4 + (4 + 1) * 8 + (8 + 1) * 10
    assert result["params"] == params == tiny().count_params() == 226
    # BN's moving statistics are weights but not trainable.
    assert result["trainable_params"] == params - 8
    by_name = {row["type"]: row for row in result["layers"]}
    assert by_name["DepthwiseConv2D"]["macs"] == depthwise
    assert by_name["BatchNormalization"]["macs"] == 0
    assert by_name["BatchNormalization"]["params"] == 16
    assert sum(row["macs"] for row in result["layers"]) == result["macs"]
    assert list(result["channels"].values()) == [4, 4, 8, 10]


def test_slimmed_model_is_counted_at_its_width():
    model = keras_slim.slim(tiny(), width_range=(0.25, 1.0))
    assert profile(model, 1.0)["macs"] == 3824
    half = profile(model, 0.5)
    # 2 and 4 channels instead of 4 and 8.
    macs = 9 * 1 * 2 * 36 + 9 * 2 * 36 + 2 * 4 * 36 + 4 * 10
    assert half["macs"] == macs == 1624
    assert half["params"] == (9 + 1) * 2 + 4 * 2 + (9 + 1) * 2 + (2 + 1) * 4 \
        + (4 + 1) * 10
    assert half["width"] == 0.5
    # A per-layer configuration.
    conv_name = model.network.layers[1].name  # [0] is the InputLayer
    config = profile(model, {conv_name: 1})
    assert config["channels"][conv_name] == 1
    assert config["macs"] == 9 * 1 * 36 + 9 * 36 + 1 * 8 * 36 + 80


def test_macs_scale_roughly_with_width_squared():
    model = build("residual")
    full = profile(model, 1.0)["macs"]
    for width in (0.25, 0.5, 0.75):
        ratio = profile(model, width)["macs"] / full
        exponent = math.log(ratio) / math.log(width)
        # The first layer (fixed input channels) and the classifier (fixed
        # outputs) scale linearly, the rest quadratically.
        assert 1.6 < exponent < 2.1, (width, ratio)


def test_input_shape_rescales_spatial_macs():
    at_8 = profile(tiny())["macs"]
    at_16 = profile(tiny(), input_shape=(16, 16, 1))
    # Conv layers cost 4x with 4x the positions (14x14 vs 6x6 for the
    # valid conv); the dense layer is unchanged.
    assert at_16["macs"] == (3824 - 80) * 14 * 14 // 36 + 80
    assert at_16["input_shape"] == [16, 16, 1]
    assert at_8 == 3824


def test_unknown_spatial_size_needs_input_shape():
    model = keras.Sequential([keras.Input((None, None, 3)), L.Conv2D(4, 3)])
    with pytest.raises(ValueError, match="input_shape"):
        profile(model)
    assert profile(model, input_shape=(10, 10, 3))["macs"] == 27 * 4 * 64


def test_profile_errors():
    with pytest.raises(ValueError, match="SlimmableModel only"):
        profile(tiny(), width=0.5)
    model = keras_slim.slim(tiny(), width_range=(0.25, 1.0))
    with pytest.raises(ValueError, match="outside"):
        profile(model, 2.0)


@pytest.fixture(scope="module")
def tflite_file(tmp_path_factory):
    model = keras_slim.slim(tiny(), width_range=(0.25, 1.0))
    out_dir = tmp_path_factory.mktemp("latency")
    manifest = keras_slim.export.to_tflite(model, out_dir, widths=[0.5])
    return out_dir / manifest["exports"][0]["file"], model


def test_profile_latency_of_a_file(tflite_file):
    path, _ = tflite_file
    result = profile_latency(path, num_runs=12, warmup=2)
    assert len(result["runs_ms"]) == 12
    assert all(t > 0 for t in result["runs_ms"])
    assert result["p10_ms"] <= result["median_ms"] <= result["p90_ms"]
    assert result["min_ms"] <= result["p10_ms"]
    assert result["num_threads"] == 1


def test_profile_latency_of_a_model_and_errors(tflite_file):
    _, model = tflite_file
    result = profile_latency(model, width=0.25, num_runs=5, warmup=1,
                             num_threads=2)
    assert result["num_runs"] == 5 and result["num_threads"] == 2
    assert np.isfinite(result["median_ms"])
    with pytest.raises(ValueError, match="num_runs"):
        profile_latency(model, num_runs=0)
    with pytest.raises(ValueError, match="No TFLite file"):
        profile_latency("/nonexistent/model.tflite")
    with pytest.raises(ValueError, match="outside"):
        profile_latency(model, width=3.0)
