"""slim() on real model structures: weights at any max width, frozen BN,
squeeze-and-excitation, separable, grouped and per-channel layers, the
layer registry, fixed layers, and the width kept by save/load."""

import warnings

import numpy as np
import pytest
import keras
import tensorflow as tf

import keras_slim
from keras_slim import registry
from keras_slim import width as width_lib
from tests.testing import assert_close
from tests.testing import digits


def _randomize_bn(model, seed=0):
    """Non-trivial BN statistics, so that copying them wrongly shows."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(size=channels))
            layer.moving_variance.assign(rng.uniform(0.5, 2, size=channels))
            layer.gamma.assign(rng.uniform(0.5, 1.5, size=channels))
            layer.beta.assign(rng.normal(size=channels))
    return model


def flatten_net():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def concat_net():
    inputs = keras.Input((8, 8, 1))
    a = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    b = keras.layers.Conv2D(6, 3, padding="same")(inputs)
    x = keras.layers.Concatenate()([a, b])
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(8, 1)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return _randomize_bn(keras.Model(inputs, keras.layers.Dense(10)(x)))


def concat_flatten_net():
    inputs = keras.Input((4, 4, 1))
    a = keras.layers.Conv2D(5, 3, padding="same")(inputs)
    b = keras.layers.DepthwiseConv2D(3, padding="same")(
        keras.layers.Conv2D(3, 1)(inputs))
    x = keras.layers.Flatten()(keras.layers.Concatenate()([a, b]))
    return keras.Model(inputs, keras.layers.Dense(4)(x))


def squeeze_excitation_net():
    """EfficientNet's block shape: SE with Reshape/Multiply, swish."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(16, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Activation("swish")(x)
    se = keras.layers.GlobalAveragePooling2D()(x)
    se = keras.layers.Reshape((1, 1, 16))(se)
    se = keras.layers.Conv2D(4, 1, activation="swish")(se)
    se = keras.layers.Conv2D(16, 1, activation="sigmoid")(se)
    x = keras.layers.Multiply()([x, se])
    # MobileNetV3's hard-swish, written with keras.ops on KerasTensors.
    x = x * keras.layers.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return _randomize_bn(keras.Model(inputs, keras.layers.Dense(5)(x)))


def separable_layer_norm_net():
    """Xception's separable convolutions, ConvNeXt's depthwise-as-groups,
    LayerNormalization and per-channel layer scale."""
    from keras.src.applications.convnext import LayerScale

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.SeparableConv2D(12, 3, padding="same")(inputs)
    shortcut = x
    x = keras.layers.Conv2D(12, 5, padding="same", groups=12)(x)
    x = keras.layers.LayerNormalization(epsilon=1e-6)(x)
    x = keras.layers.Dense(24, activation="gelu")(x)
    x = keras.layers.Dense(12)(x)
    x = LayerScale(0.5, 12)(x)
    x = keras.layers.Add()([shortcut, x])
    x = keras.layers.Conv2D(16, 3, padding="same", groups=4)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(5)(x))
    rng = np.random.default_rng(1)
    for layer in model.layers:
        for weight in layer.weights:
            if "gamma" in weight.path or "beta" in weight.path:
                weight.assign(rng.normal(size=weight.shape))
    return model


def residual_concat_net():
    """Inception-ResNet / NASNet: a concatenation added to one conv."""
    inputs = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 1)(inputs)
    b = keras.layers.Conv2D(6, 3, padding="same")(inputs)
    trunk = keras.layers.Concatenate()([a, b])
    branch = keras.layers.Conv2D(10, 3, padding="same")(trunk)
    x = keras.layers.Add()([trunk, branch])
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return _randomize_bn(keras.Model(inputs, keras.layers.Dense(3)(x)))


ARCHITECTURES = {
    "flatten": flatten_net,
    "concat": concat_net,
    "concat_flatten": concat_flatten_net,
    "squeeze_excitation": squeeze_excitation_net,
    "separable_layer_norm": separable_layer_norm_net,
    "residual_concat": residual_concat_net,
}


def _inputs(model, n=3, seed=0):
    shape = tuple(model.inputs[0].shape[1:])
    return np.random.default_rng(seed).normal(size=(n,) + shape).astype(
        "float32")


@pytest.mark.parametrize("max_width", [1.0, 1.5, 2.0])
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_width_one_equals_the_original_at_every_max_width(name, max_width):
    base = ARCHITECTURES[name]()
    x = _inputs(base)
    model = keras_slim.slim(base, width_range=(0.25, max_width), divisor=2)
    with _no_check():
        model.set_width(1.0)
    assert_close(model(x), base(x), atol=1e-5)
    assert_close(model(x, training=True), base(x, training=True), atol=1e-4)
    # strip() at random widths computes what the slimmable model does.
    for width in np.random.default_rng(3).uniform(0.25, max_width, 2):
        with _no_check():
            model.set_width(float(width))
        stripped = keras_slim.strip(model, float(width))
        assert_close(stripped(x), model(x), atol=1e-5, msg=f"w={width}")


class _no_check:
    """Silences the 'no calibrated statistics' warning of set_width."""

    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)


def test_squeeze_excitation_ties_the_excitation_to_its_block():
    model = keras_slim.slim(squeeze_excitation_net())
    stem, squeeze, excite = [
        layer for layer in model.network.layers
        if isinstance(layer, keras_slim.layers.SlimConv2D)
    ]
    # The excitation's channels follow the block it multiplies; the
    # squeeze slims with the width on its own.
    assert excite.channel_group == stem.channel_group
    assert squeeze.channel_group != stem.channel_group
    counts = dict(zip(model.channel_groups, model.channels_for(0.5)))
    assert counts[stem.channel_group] == 8 and counts[squeeze.channel_group] == 2


def test_a_concatenation_added_to_one_conv_splits_the_conv_output():
    model = keras_slim.slim(residual_concat_net(), width_range=(0.25, 1.5))
    branch = [layer for layer in model.network.layers
              if isinstance(layer, keras_slim.layers.SlimConv2D)][2]
    groups = [g for g, _ in branch.output_layout["blocks"]]
    a, b = [layer.channel_group for layer in model.network.layers[1:3]]
    assert groups == [a, b]


# ------------------------------------------------------------ frozen BN
def frozen_bn_net():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3)(inputs)
    x = keras.layers.BatchNormalization(name="frozen")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    model = _randomize_bn(keras.Model(inputs, keras.layers.Dense(10)(x)))
    model.get_layer("frozen").trainable = False
    return model


def test_frozen_batch_norm_runs_in_inference_mode_when_training():
    base = frozen_bn_net()
    x = _inputs(base, 4)
    model = keras_slim.slim(base, width_range=(0.25, 1.0))
    bn = model.get_layer("frozen")
    assert bn.trainable is False
    assert_close(model(x, training=True), base(x, training=True), atol=1e-5)
    # At a narrower width too: the moving statistics, not batch ones.
    with _no_check():
        model.set_width(0.5)
    assert_close(model(x, training=True), model(x, training=False),
                 atol=1e-5)
    before = [v.numpy().copy() for v in (bn.moving_mean, bn.moving_variance)]
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), sandwich_size=3)
    model.fit(x, np.arange(4) % 10, epochs=1, verbose=0)
    for old, new in zip(before, (bn.moving_mean, bn.moving_variance)):
        np.testing.assert_array_equal(old, new.numpy())


# ------------------------------------------------------------ save / load
def test_width_survives_save_and_load(tmp_path):
    model = keras_slim.models.lenet_3c1l(input_shape=(8, 8, 1),
                                        padding="same")
    x, _ = digits(64)
    keras_slim.calibrate_bn(model, x, widths=[0.25, 1.0], verbose=0)
    model.set_width(0.25)
    path = tmp_path / "lenet.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.width == 0.25
    assert_close(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    expected = keras_slim.strip(model, 0.25).count_params()
    assert keras_slim.strip(loaded).count_params() == expected
    assert expected < keras_slim.strip(model, 1.0).count_params()
    assert keras_slim.profile(loaded)["params"] == expected
    keras_slim.calibrate_bn(loaded, x, widths=[0.5], verbose=0)
    assert loaded.width == 0.25  # calibration keeps the current width

    config = {"conv1": 8, "conv2": 16, "conv3": 24}
    model.set_width(config)
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.width == config
    assert_close(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


# ------------------------------------------------------------- bad input
def test_a_rank_three_input_is_an_error_like_conv2d():
    model = keras_slim.slim(flatten_net())
    with pytest.raises(ValueError, match=r"expects inputs of shape"):
        model(np.zeros((2, 8, 8), "float32"))


def test_calibration_refuses_non_finite_statistics_and_keeps_the_old():
    model = keras_slim.models.lenet_3c1l(input_shape=(8, 8, 1),
                                        padding="same")
    x, _ = digits(64)
    keras_slim.calibrate_bn(model, x, widths=[0.5], verbose=0)
    model.set_width(0.5)
    before = model.predict(x, verbose=0)
    poisoned = x.copy()
    poisoned[3, 2, 2, 0] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        keras_slim.calibrate_bn(model, poisoned, widths=[0.25, 0.5],
                                verbose=0)
    assert_close(model.predict(x, verbose=0), before, atol=0)
    assert len(model.calibrations) == 1


def test_synchronized_bn_with_per_replica_widths_is_refused_in_compile():
    model = keras_slim.slim(concat_net(), synchronized_bn=True)
    with pytest.raises(ValueError, match="cannot be combined"):
        model.compile("sgd", "mse", per_replica_widths=True)
    model.compile("sgd", "mse", per_replica_widths=True, sandwich_size=2)


# ---------------------------------------------------------- public names
def test_public_names_do_not_shadow_modules():
    import keras_slim.profiling
    import keras_slim.stripping

    assert keras_slim.fold_batch_norm is keras_slim.stripping.fold_batch_norm
    assert callable(keras_slim.strip) and callable(keras_slim.profile)
    assert keras_slim.profile is keras_slim.profiling.profile
    assert keras_slim.register_layer is registry.register_layer


# -------------------------------------------------------------- registry
class ChannelScale(keras.layers.Layer):
    """A user's per-channel layer: `x * scale`."""

    def build(self, input_shape):
        self.scale = self.add_weight(
            shape=(input_shape[-1],), initializer="random_normal")

    def call(self, x):
        return x * self.scale


class Swish(keras.layers.Layer):
    def call(self, x):
        return x * keras.ops.sigmoid(x)


def custom_layer_net():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    x = ChannelScale(name="scale")(x)
    x = Swish(name="swish")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


def test_users_declare_how_their_layers_treat_channels():
    base = custom_layer_net()
    with pytest.raises(ValueError, match="'scale' .*ChannelScale.*register"):
        keras_slim.slim(base)
    try:
        keras_slim.register_layer(ChannelScale, "per_channel")
        keras_slim.register_layer(Swish, "elementwise")
        model = keras_slim.slim(base, width_range=(0.25, 1.5))
    finally:
        registry._RULES.pop(ChannelScale, None)
        registry._RULES.pop(Swish, None)
    x = _inputs(base)
    with _no_check():
        model.set_width(1.0)
    assert_close(model(x), base(x), atol=1e-5)
    model.set_width(0.5)
    stripped = keras_slim.strip(model, 0.5)
    assert isinstance(stripped.get_layer("scale"), ChannelScale)
    assert stripped.get_layer("scale").scale.shape == (4,)
    assert_close(stripped(x), model(x), atol=1e-6)


def test_register_layer_checks_its_arguments():
    with pytest.raises(ValueError, match="Unknown kind 'mixes'"):
        keras_slim.register_layer(ChannelScale, "mixes")
    with pytest.raises(ValueError, match="Layer .*subclass"):
        keras_slim.register_layer(object, "elementwise")


def test_layers_that_mix_channels_are_refused_by_name():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.Lambda(lambda t: t[..., ::-1], name="reverse")(x)
    base = keras.Model(inputs, keras.layers.Dense(2)(
        keras.layers.GlobalAveragePooling2D()(x)))
    with pytest.raises(ValueError, match="'reverse' \\(Lambda\\)"):
        keras_slim.slim(base)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = x * np.arange(4, dtype="float32")  # a per-channel constant
    base = keras.Model(inputs, keras.layers.Dense(2)(
        keras.layers.GlobalAveragePooling2D()(x)))
    with pytest.raises(ValueError, match="constant array of shape \\(4,\\)"):
        keras_slim.slim(base)


# ------------------------------------------------- fixed and ratio layers
def test_fixed_layers_keep_their_channels_at_every_width():
    base = concat_net()
    name = base.layers[6].name  # the 1x1 conv after the concatenation
    model = keras_slim.slim(base, fixed_layers=[name])
    x = _inputs(base)
    with _no_check():
        model.set_width(0.25)
    assert keras_slim.strip(model).get_layer(name).filters == 8
    with pytest.raises(ValueError, match="not Conv2D.*layers"):
        keras_slim.slim(base, fixed_layers=["no_such_layer"])
    assert np.all(np.isfinite(model(x)))


def test_official_mobilenet_v2_channels_match_the_papers_macs():
    model = keras_slim.models.mobilenet_v2(
        input_shape=(224, 224, 3), num_classes=1000, width_range=(0.35, 1.0),
        official_channels=True,
    )
    # The official US-MobileNetV2: 59.3M MACs at 0.35, 300.8M at 1.0.
    assert round(keras_slim.profile(model, 0.35)["macs"] / 1e6, 1) == 59.3
    assert round(keras_slim.profile(model, 1.0)["macs"] / 1e6, 1) == 300.8
    counts = dict(zip(model.channel_groups, model.channels_for(0.35)))
    expand = model.get_layer("block5_expand").channel_group
    project = model.get_layer("block4_project").channel_group
    assert counts[expand] == 6 * counts[project]
    assert keras_slim.strip(model, 0.35).get_layer("head").filters == 1280


def test_a_nested_backbone_called_on_a_preprocessed_tensor_converts():
    # The transfer-learning set-up: inputs -> preprocessing -> backbone
    # (a nested functional model whose input is not the model's Input).
    inner_in = keras.Input((8, 8, 4))
    y = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(inner_in)
    y = keras.layers.BatchNormalization()(y)
    backbone = keras.Model(inner_in, y, name="backbone")
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(0.5)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same")(x)
    x = backbone(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    base = _randomize_bn(keras.Model(inputs, keras.layers.Dense(3)(x)))
    x = _inputs(base)
    model = keras_slim.slim(base, width_range=(0.25, 1.5))
    with _no_check():
        model.set_width(1.0)
        assert_close(model(x), base(x), atol=1e-5)
        model.set_width(0.5)
        assert_close(keras_slim.strip(model, 0.5)(x), model(x), atol=1e-5)


def test_counts_the_divisor_rounds_down_stay_exact_at_width_one():
    # make_divisible(26, 8) is 24: EfficientNetV2-B2's 26-channel squeeze
    # crashed the weight copy (and width 1.0 would not be the original).
    assert width_lib.channel_count(26, 1.0, divisor=8) == 26
    assert width_lib.channel_count(26, 0.99, divisor=8) == 24
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(26, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    base = keras.Model(inputs, keras.layers.Dense(3)(x))
    x = _inputs(base)
    for max_width in (1.0, 1.5):
        model = keras_slim.slim(base, width_range=(0.25, max_width),
                                divisor=8)
        model.set_width(1.0)
        assert model.channels_for(1.0) == [26]
        assert model.channel_plan.counts_tensor(
            tf.constant(1.0)).numpy().tolist() == [26]
        assert_close(model(x), base(x), atol=1e-5)


def test_one_width_rule_for_plain_and_slimmable_networks():
    assert width_lib.channel_count(30, 0.99, divisor=8) == 30
    assert width_lib.channel_count(30, 1.0, divisor=8) == 30
    assert width_lib.channel_count(30, 1.5, divisor=8) == 48
    slimmable = keras_slim.models.lenet_3c1l(
        input_shape=(8, 8, 1), padding="same", n=30, divisor=8)
    plain = keras_slim.models.lenet_3c1l(
        input_shape=(8, 8, 1), padding="same", n=30, divisor=8,
        width_multiplier=0.99, slimmable=False)
    assert plain.get_layer("conv1").filters == slimmable.channels_for(0.99)[0]
    plan = slimmable.channel_plan
    assert plan.counts_tensor(tf.constant(0.99)).numpy().tolist() == (
        slimmable.channels_for(0.99))


def _sequential(*layers_, input_shape=(8, 8, 3)):
    return keras.Sequential([keras.Input(input_shape), *layers_])


@pytest.mark.parametrize("kind", ["conv1d", "conv3d"])
def test_conv1d_and_conv3d_models_slim(kind):
    # A Conv1D model used to come back "slimmable" with MACs at 0.25 equal
    # to MACs at 1.0 (nothing slimmed).
    L = keras.layers
    if kind == "conv1d":
        base = _sequential(
            L.Conv1D(16, 3, padding="causal"), L.BatchNormalization(),
            L.ReLU(), L.Conv1D(16, 3), L.MaxPooling1D(),
            L.GlobalAveragePooling1D(), L.Dense(5), input_shape=(20, 4))
    else:
        base = _sequential(
            L.Conv3D(8, 3, padding="same"), L.ReLU(), L.Conv3D(8, 1),
            L.GlobalAveragePooling3D(), L.Dense(3), input_shape=(4, 6, 6, 2))
    _randomize_bn(base)
    model = keras_slim.slim(base, width_range=(0.25, 1.0))
    x = np.random.default_rng(0).normal(
        size=(2,) + base.input_shape[1:]).astype("float32")
    assert_close(model(x), base(x))
    assert (keras_slim.profile(model, 0.25)["macs"]
            < 0.3 * keras_slim.profile(model, 1.0)["macs"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # uncalibrated BN: fine here
        model.set_width(0.25)
    assert_close(keras_slim.strip(model, 0.25)(x), model(x))


@pytest.mark.parametrize(
    "layers_, input_shape, message",
    [
        ([keras.layers.LSTM(8), keras.layers.Dense(2)], (5, 3),
         r"nothing in model .* 'lstm' \(LSTM\)"),
        ([keras.layers.Flatten(), keras.layers.Dense(2)], (5, 3),
         r"nothing in model .*keep their channels"),
        ([keras.layers.Conv1DTranspose(4, 3), keras.layers.Flatten(),
          keras.layers.Dense(2)], (5, 3), r"Conv1DTranspose.*transposed"),
        ([keras.layers.Conv2D(4, 3), keras.layers.Conv2DTranspose(4, 3),
          keras.layers.Flatten(), keras.layers.Dense(2)], (8, 8, 3),
         r"Conv2DTranspose.*transposed"),
        ([keras.layers.Conv1D(4, 3, groups=1), keras.layers.SeparableConv1D(
            4, 3), keras.layers.Flatten(), keras.layers.Dense(2)], (8, 3),
         r"SeparableConv1D"),
    ],
)
def test_models_nothing_would_slim_are_refused(layers_, input_shape, message):
    # These returned a model whose set_width(0.25) changed nothing.
    with pytest.raises(ValueError, match=message):
        keras_slim.slim(_sequential(*layers_, input_shape=input_shape))


def test_glu_halves_channels_and_is_refused():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3)(inputs)
    x = keras.ops.glu(x)  # 8 -> 4 channels: not element-wise
    x = keras.layers.Flatten()(x)
    base = keras.Model(inputs, keras.layers.Dense(2)(x))
    with pytest.raises(ValueError, match=r"'glu' \(Glu\) cannot be slimmed"):
        keras_slim.slim(base)


def test_renorm_and_masked_batch_norm_are_refused():
    L = keras.layers
    with pytest.raises(ValueError, match="renorm=True"):
        keras_slim.slim(_sequential(
            L.Conv2D(8, 3), L.BatchNormalization(renorm=True), L.Flatten(),
            L.Dense(2)))
    inputs = keras.Input((5, 3))
    x = L.Dense(8)(L.Masking()(inputs))
    x = L.Flatten()(L.BatchNormalization()(x))
    with pytest.raises(ValueError, match="carries a mask"):
        keras_slim.slim(keras.Model(inputs, L.Dense(2)(x)))


def test_triangular_separable_convolutions_are_exact_at_every_width():
    # slim(triangular=True) left SeparableConv2D layers without their mask,
    # so a narrow width's activations depended on the inactive channels.
    L = keras.layers
    base = _sequential(
        L.Conv2D(8, 3, padding="same"), L.SeparableConv2D(8, 3, name="sep"),
        L.GlobalAveragePooling2D(), L.Dense(2))
    model = keras_slim.slim(base, triangular=True)
    assert model.get_layer("sep").triangular
    assert model.exact_without_calibration
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    probe = keras.Model(model.network.input,
                        model.get_layer("sep").output)
    wide = probe(x)
    from keras_slim.layers import scope as aw

    counts = dict(zip(model.channel_groups, model.channels_for(0.5)))
    with aw.active_width(aw.ActiveWidth(counts)):
        narrow = probe(x)
    assert_close(narrow, wide[..., : narrow.shape[-1]], atol=1e-5)
    model.set_width(0.5)
    assert_close(keras_slim.strip(model, 0.5)(x), model(x))


def test_a_max_width_below_one_is_refused():
    # Layers are built at the max width and hold the original weights: a
    # max width below 1.0 used to fail with an IndexError in the copy.
    base = _sequential(keras.layers.Conv2D(8, 3),
                       keras.layers.GlobalAveragePooling2D(),
                       keras.layers.Dense(2))
    for kwargs in ({"widths": [0.9374, 0.4583], "width_range": (0.25, 1.5)},
                   {"width_range": (0.25, 0.5)}):
        with pytest.raises(ValueError, match="max width must be at least"):
            keras_slim.slim(base, **kwargs)
