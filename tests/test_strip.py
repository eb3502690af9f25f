"""Tests for keras_slim.strip: the plain Keras model of one width.

Every architecture feature the converter supports (plain chain, residual
`Add`, `Concatenate`, `Flatten -> Dense`, triangular masks, S-Net switchable
BN) is stripped at seeded random widths and per-layer configurations and
must reproduce `model.set_width(w); model.predict(x)`.
"""

import warnings
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_slim
from keras_slim.layers import scope
from keras_slim.stripping import fold_batch_norm
from keras_slim.stripping import strip
from tests.testing import assert_close

L = keras.layers


# ---------------------------------------------------------------- builders
def sequential_cnn():
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        L.Conv2D(8, 3, padding="same"), L.BatchNormalization(), L.ReLU(),
        L.Conv2D(16, 3, strides=2, padding="same"), L.BatchNormalization(),
        L.ReLU(),
        L.DepthwiseConv2D(3, padding="same"), L.BatchNormalization(),
        L.ReLU(),
        L.GlobalAveragePooling2D(), L.Dense(10),
    ], name="seq")


def residual_cnn():
    inputs = keras.Input((16, 16, 3))
    x = L.Conv2D(12, 3, padding="same")(inputs)
    x = L.ReLU()(L.BatchNormalization()(x))
    y = L.Conv2D(12, 3, padding="same")(x)
    y = L.BatchNormalization()(y)
    x = L.ReLU()(L.Add()([x, y]))
    x = L.Conv2D(20, 1, use_bias=False)(x)
    x = L.ReLU()(L.BatchNormalization()(x))
    outputs = L.Dense(10)(L.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs, name="res")


def concat_cnn():
    inputs = keras.Input((8, 8, 1))
    a = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, padding="same")(inputs)))
    b = L.ReLU()(L.Conv2D(6, 1)(a))
    x = L.BatchNormalization()(L.Concatenate()([a, b]))
    x = L.DepthwiseConv2D(3, padding="same")(x)
    x = L.Conv2D(10, 1)(L.ReLU()(x))
    outputs = L.Dense(10)(L.GlobalMaxPooling2D()(x))
    return keras.Model(inputs, outputs, name="cat")


def flatten_mlp():
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        L.Conv2D(6, 3), L.BatchNormalization(), L.ReLU(),
        L.MaxPooling2D(), L.Flatten(),
        L.Dense(24), L.BatchNormalization(), L.ReLU(), L.Dropout(0.1),
        L.Dense(10),
    ], name="flat")


def randomize_bn(model, seed=0):
    """Non-trivial BN parameters and statistics, so that mistakes show."""
    rng = np.random.default_rng(seed)
    for layer in model.bn_layers:
        for name, low, high in (("gamma", 0.5, 1.5), ("beta", -0.5, 0.5),
                                ("moving_mean", -0.5, 0.5),
                                ("moving_variance", 0.5, 2.0)):
            variable = getattr(layer, name)
            variable.assign(rng.uniform(low, high, variable.shape)
                            .astype("float32"))
    return model


# name -> (builder, slim() kwargs)
KINDS = {
    "sequential": (sequential_cnn, dict(width_range=(0.25, 1.0))),
    "residual": (residual_cnn, dict(width_range=(0.25, 1.0))),
    "concat": (concat_cnn, dict(width_range=(0.25, 1.0))),
    "flatten": (flatten_mlp, dict(width_range=(0.25, 1.0))),
    "triangular": (sequential_cnn, dict(width_range=(0.25, 1.0),
                                        triangular=True)),
    "snet": (residual_cnn, dict(widths=[0.25, 0.5, 0.75, 1.0])),
}


def build(kind, seed=0):
    builder, kwargs = KINDS[kind]
    keras.utils.set_random_seed(seed)
    return randomize_bn(keras_slim.slim(builder(), **kwargs), seed)


def inputs_for(model, n=6, seed=1):
    shape = tuple(model.network.inputs[0].shape[1:])
    return np.random.default_rng(seed).normal(size=(n,) + shape).astype(
        "float32")


def slim_output(model, width, x, predict=False):
    """What the slimmable model computes at `width` (after set_width)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no calibrated statistics"
        model.set_width(width)
    if predict:
        return model.predict(x, verbose=0)
    # The same computation as predict, without compiling a predict function.
    return keras.ops.convert_to_numpy(model(x, training=False))


def random_widths(model, rng, n):
    if model.widths is not None:
        return list(rng.choice(model.widths, size=n))
    low, high = model.width_range
    return [float(w) for w in rng.uniform(low, high, size=n).round(3)]


def random_config(model, rng):
    """A per-layer configuration naming one layer of each channel group."""
    config = {}
    for name, group in model._group_of_layer.items():
        if group in {model._group_of_layer[n] for n in config}:
            continue
        full = model.full_channels[model.channel_groups.index(group)]
        if rng.random() < 0.7 or not config:  # never empty (refused)
            config[name] = int(rng.integers(1, full + 1))
    return config


# ------------------------------------------------------------------- tests
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_strip_matches_slimmable_model_at_random_widths(kind):
    model = build(kind)
    x = inputs_for(model)
    rng = np.random.default_rng(zlib.crc32(kind.encode()))  # stable seed
    widths = random_widths(model, rng, 3) + [model.width_range[1]]
    if model.widths is None:
        widths += [random_config(model, rng), random_config(model, rng)]
    for i, width in enumerate(widths):
        stripped = strip(model, width)
        expected = slim_output(model, width, x, predict=i == 0)
        assert_close(stripped(x, training=False), expected, atol=1e-5,
                     msg=f"{kind} at {width}")


@pytest.mark.parametrize("kind", ["sequential", "concat", "flatten"])
def test_stripped_model_is_stock_and_has_no_gather_or_slice(kind):
    model = build(kind)
    stripped = strip(model, 0.5)
    for layer in stripped.layers:
        assert type(layer).__module__.startswith("keras."), layer
    function = tf.function(lambda x: stripped(x, training=False))
    graph = function.get_concrete_function(
        tf.TensorSpec(stripped.inputs[0].shape)).graph
    ops = graph.get_operations()
    types = {op.type for op in ops}
    assert not types & {"GatherV2", "Where", "Tile", "SelectV2", "Slice"}
    # Keras' Flatten reads the batch size with Shape + StridedSlice; no
    # other tensor may be sliced.
    for op in ops:
        if op.type == "StridedSlice":
            assert op.inputs[0].op.type == "Shape", op.name


def test_stripped_model_is_the_native_model_at_that_width():
    model = build("sequential")
    width = 0.5
    counts = dict(zip(model.channel_groups, model.channels_for(width)))
    stripped = strip(model, width)
    conv1, conv2 = [layer for layer in stripped.layers
                    if isinstance(layer, L.Conv2D)]
    native = keras.Sequential([
        keras.Input((8, 8, 1)),
        L.Conv2D(counts[conv1.name], 3, padding="same"),
        L.BatchNormalization(), L.ReLU(),
        L.Conv2D(counts[conv2.name], 3, strides=2, padding="same"),
        L.BatchNormalization(), L.ReLU(),
        L.DepthwiseConv2D(3, padding="same"), L.BatchNormalization(),
        L.ReLU(),
        L.GlobalAveragePooling2D(), L.Dense(10),
    ])
    assert [type(a) for a in native.layers] == [
        type(b) for b in stripped.layers[1:]]
    assert [w.shape for w in native.weights] == [
        w.shape for w in stripped.weights]
    assert native.count_params() == stripped.count_params()
    native.set_weights(stripped.get_weights())
    x = inputs_for(model)
    assert_close(native(x), stripped(x), atol=1e-6)
    assert stripped.inputs[0].shape == model.network.inputs[0].shape


def test_strip_takes_calibrated_statistics_when_stored():
    model = build("residual")
    x = inputs_for(model, n=32)
    keras_slim.calibrate_bn(model, x, widths=[0.5], verbose=0)
    calibrated = strip(model, 0.5)
    assert set(calibrated.bn_sources.values()) == {"calibrated"}
    assert_close(calibrated(x, training=False), slim_output(model, 0.5, x),
                 atol=1e-5)
    # An uncalibrated width falls back to the moving statistics, as
    # set_width does.
    moving = strip(model, 0.6)
    assert set(moving.bn_sources.values()) == {"moving"}
    assert_close(moving(x, training=False), slim_output(model, 0.6, x),
                 atol=1e-5)
    # The two differ: calibration changed what width 0.5 computes.
    bn = calibrated.get_layer(model.bn_layers[0].name)
    key = model.calibration_key(0.5)
    stored = model.bn_layers[0].calibrated[key][0].numpy()
    mean = stored[: bn.moving_mean.shape[0]]
    assert_close(bn.moving_mean.numpy(), mean, atol=0)


def test_strip_selects_the_switchable_bn_row_of_each_width():
    model = build("snet")
    x = inputs_for(model)
    outputs = {}
    for index, width in enumerate(model.widths):
        stripped = strip(model, width)
        bn_name = model.bn_layers[0].name
        rows = model.bn_layers[0].gamma.numpy()
        active = stripped.get_layer(bn_name).gamma.numpy()
        assert_close(active, rows[index, : active.shape[0]], atol=0)
        outputs[width] = stripped(x, training=False)
        assert_close(outputs[width], slim_output(model, width, x), atol=1e-5)
    with pytest.raises(ValueError, match="switches between the widths"):
        strip(model, 0.6)


def test_triangular_mask_is_multiplied_into_the_kernel():
    model = build("triangular")
    stripped = strip(model, 1.0)
    slim_layer = [layer for layer in model.network.layers
                  if getattr(layer, "triangular", False)][0]
    kernel = stripped.get_layer(slim_layer.name).kernel.numpy()
    mask = slim_layer.triangular_mask.numpy()
    assert np.all(kernel[..., mask == 0] == 0)
    assert np.any(slim_layer.kernel.numpy()[..., mask == 0] != 0)


def test_layout_indices_match_the_in_graph_version():
    layout = {"blocks": [["a", 4], [None, 2], ["b", 3]], "repeat": 3}
    counts = {"a": 2, "b": 1}
    tensors = {g: tf.constant(c) for g, c in counts.items()}
    with scope.active_width(scope.ActiveWidth(channels=tensors)):
        expected = scope.input_channel_indices(layout, 27).numpy()
    numpy_indices = scope.input_channel_indices(layout, 27, counts=counts)
    assert isinstance(numpy_indices, np.ndarray)
    np.testing.assert_array_equal(numpy_indices, expected)


@pytest.mark.parametrize("kind", ["sequential", "residual", "flatten"])
def test_fold_bn_removes_bn_after_conv_and_keeps_outputs(kind):
    model = build(kind)
    x = inputs_for(model)
    plain = strip(model, 0.5)
    folded = strip(model, 0.5, fold_bn=True)
    assert_close(folded(x, training=False), plain(x, training=False),
                 atol=1e-5)
    n_bn = sum(isinstance(layer, L.BatchNormalization)
               for layer in plain.layers)
    n_bn_folded = sum(isinstance(layer, L.BatchNormalization)
                      for layer in folded.layers)
    assert n_bn > 0
    if kind == "residual":
        # Both BNs right after a conv fold; the post-Add one stays unused.
        assert n_bn_folded == 0
    else:
        assert n_bn_folded < n_bn
    # The input model is unchanged.
    assert len(fold_batch_norm(plain).layers) == len(folded.layers)
    assert sum(isinstance(layer, L.BatchNormalization)
               for layer in plain.layers) == n_bn


def test_fold_bn_skips_bn_whose_input_is_shared():
    inputs = keras.Input((8, 8, 2))
    conv = L.Conv2D(4, 3, padding="same")(inputs)
    outputs = L.Add()([L.BatchNormalization()(conv), conv])
    model = keras.Model(inputs, outputs)
    folded = fold_batch_norm(model)
    assert any(isinstance(layer, L.BatchNormalization)
               for layer in folded.layers)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 2)).astype("float32")
    assert_close(folded(x), model(x), atol=1e-6)


def test_strip_errors():
    model = build("sequential")
    with pytest.raises(ValueError, match="outside this model's range"):
        strip(model, 1.5)
    with pytest.raises(ValueError, match="not a slimmable layer"):
        strip(model, {"no_such_layer": 3})
    with pytest.raises(ValueError, match="SlimmableModel"):
        strip(sequential_cnn(), 0.5)


def test_strip_default_width_is_the_current_width():
    model = build("sequential")
    slim_output(model, 0.5, inputs_for(model))
    counts = dict(zip(model.channel_groups, model.channels_for(0.5)))
    stripped = strip(model)
    for layer in stripped.layers:
        if layer.name in counts:
            config = layer.get_config()
            channels = config.get("filters", config.get("units"))
            assert channels == counts[layer.name]
