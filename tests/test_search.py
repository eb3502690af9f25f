"""keras_slim.search: AutoSlim greedy channel search."""

import json

import keras
import numpy as np
import pytest

import keras_slim
from keras_slim import search
from keras_slim.search.cost import CostModel
from keras_slim.search.runner import Runner


def _base_model(input_shape=(8, 8, 1), classes=10):
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Conv2D(16, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    y = keras.layers.Conv2D(16, 3, padding="same", name="conv2")(x)
    y = keras.layers.BatchNormalization(name="bn2")(y)
    x = keras.layers.Add()([x, y])
    x = keras.layers.Conv2D(24, 3, strides=2, padding="same", name="conv3")(x)
    x = keras.layers.BatchNormalization(name="bn3")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.BatchNormalization(name="bn_dw")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes, name="classifier")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    return x, data.target.astype("int64")


def _train(digits, epochs=3):
    keras.utils.set_random_seed(0)
    model = keras_slim.slim(_base_model(), width_range=(0.25, 1.5), divisor=4)
    model.compile("adam", "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    x, y = digits
    model.fit(x[:1200], y[:1200], batch_size=64, epochs=epochs, verbose=0)
    return model


@pytest.fixture(scope="module")
def trained(digits):
    return _train(digits)


def _search_set(digits):
    x, y = digits
    return x[1200:1456], y[1200:1456]


def test_cost_model_matches_profile(trained):
    costs = CostModel(trained)
    rng = np.random.default_rng(0)
    config = {}
    for name, group in trained._group_of_layer.items():
        full = trained.full_channels[trained.channel_groups.index(group)]
        config.setdefault(group, (name, int(rng.integers(1, full // 4)) * 4))
    config = {name: c for name, c in config.values()}
    for width in (1.5, 1.0, 0.25, config):
        profiled = keras_slim.profile(trained, width)
        priced = costs.cost(trained.channels_for(width))
        assert priced == {"macs": profiled["macs"],
                          "params": profiled["params"]}


def test_cached_prefix_equals_full_evaluation(trained, digits):
    costs = CostModel(trained)
    x, y = _search_set(digits)
    runner = Runner(trained, costs.program, costs.cuts, x, y)
    assert len(set(costs.cuts.values())) > 1  # there is a prefix to reuse
    current = list(trained.channels_for(1.0))
    candidates = []
    for group in costs.cuts:
        counts = list(current)
        counts[trained.channel_groups.index(group)] -= 4
        candidates.append((group, counts))
    scores, logits = runner.step(current, candidates, return_logits=True)
    for (group, counts), score, cached in zip(candidates, scores, logits):
        scratch = runner.logits(counts)
        np.testing.assert_array_equal(cached, scratch)
        assert score == runner.accuracy(counts)


def test_exact_bn_equals_calibrate_then_evaluate(trained, digits):
    costs = CostModel(trained)
    x, y = _search_set(digits)
    runner = Runner(trained, costs.program, costs.cuts, x, y)
    config = {"conv1": 8, "conv3": 12}
    counts = trained.channels_for(config)
    # One calibration batch: with several, calibrate_bn's deeper layers see
    # inputs normalised with per-batch statistics (1e-3 apart on logits).
    keras_slim.calibrate_bn(trained, x, widths=[config], batch_size=len(x),
                            verbose=0)
    trained.set_width(config)
    expected = trained.predict(x, verbose=0)
    trained.set_width(1.5)
    np.testing.assert_allclose(runner.logits(counts), expected, atol=1e-5)
    assert runner.accuracy(counts) == np.mean(expected.argmax(-1) == y)


def test_greedy_picks_the_least_harmful_group(digits):
    # Hand-made case: the classifier ignores the last bin of conv3's group
    # (its weights are zero), so removing that bin cannot change any
    # prediction, while every other candidate changes the network.
    model = _train(digits)
    kernel = model.get_layer("classifier").kernel
    zeroed = kernel.numpy()
    zeroed[-4:] = 0.0
    kernel.assign(zeroed)
    x, y = _search_set(digits)
    costs = CostModel(model)
    runner = Runner(model, costs.program, costs.cuts, x, y)
    full = runner.accuracy(model.full_channels)
    result = search.autoslim(model, (x, y), targets=[
        costs.cost(model.full_channels)["macs"] - 1], bins=9, verbose=0)
    first = result["history"][1]
    assert first["group"] == "conv3"
    assert first["chosen"]["conv3"] == 36 - 4
    assert first["accuracy"] == full
    assert result["configs"][0]["step"] == 1
