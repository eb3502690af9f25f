"""Tests for the model zoo (keras_slim.models)."""

import keras
import numpy as np
import pytest

import keras_slim
from keras_slim import models
from keras_slim import width as width_lib

# Small inputs keep the suite fast; parameter counts do not depend on them.
ZOO = {
    "lenet_3c1l": dict(input_shape=(20, 20, 3)),
    "mobilenet_v2": dict(input_shape=(32, 32, 3)),
    "resnet20": dict(input_shape=(16, 16, 3)),
}
SNET_WIDTHS = {"lenet_3c1l": [0.25, 0.5, 1.0], "mobilenet_v2": [0.35, 1.0],
               "resnet20": [0.25, 0.5, 1.0]}


def randomize_bn(model, seed=0):
    """Non-trivial BN parameters and statistics (init would be identity)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.gamma.shape[-1]
            layer.gamma.assign(rng.uniform(0.5, 1.5, channels))
            layer.beta.assign(rng.normal(0, 0.2, channels))
            layer.moving_mean.assign(rng.normal(0, 0.2, channels))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, channels))


def images(shape, n=2, seed=0):
    return np.random.default_rng(seed).random((n, *shape)).astype("float32")


def slim_conv_outputs(model, width, x):
    """Output channels of every slimmable convolution at `width`."""
    layers = [
        layer for layer in model.network.layers
        if isinstance(layer, keras_slim.layers.SlimConv2D)
    ]
    probe = keras.Model(model.network.inputs[0], [l.output for l in layers])
    channels = dict(zip(model.channel_groups, model.channels_for(width)))
    with keras_slim.layers.active_width(
        keras_slim.layers.ActiveWidth(channels=channels)
    ):
        outputs = probe(x, training=False)
    return {l.name: int(o.shape[-1]) for l, o in zip(layers, outputs)}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_us_net_and_s_net_forward_at_several_widths(name):
    kwargs = ZOO[name]
    x = images(kwargs["input_shape"])
    us = models.get(name, num_classes=7, **kwargs)
    assert isinstance(us, keras_slim.SlimmableModel)
    assert us.widths is None
    low = us.width_range[0]
    for width in (low, (low + 1) / 2, 0.8):
        # A US-Net's sub-widths need BN calibration, and it says so.
        with pytest.warns(UserWarning, match="calibrate_bn"):
            us.set_width(width)
        # Eager calls: tracing `predict` for a 17-block network costs ~10 s.
        assert us(x, training=False).shape == (2, 7)
    us.set_width(1.0)
    assert us(x, training=False).shape == (2, 7)
    s = models.get(name, num_classes=7, widths=SNET_WIDTHS[name], **kwargs)
    assert s.widths == SNET_WIDTHS[name]
    assert any(
        isinstance(l, keras_slim.layers.SwitchableBatchNormalization)
        for l in s.network.layers
    )
    for width in SNET_WIDTHS[name]:
        s.set_width(width)
        assert s(x, training=False).shape == (2, 7)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_width_one_equals_the_stock_model(name):
    kwargs = ZOO[name]
    stock = models.get(name, slimmable=False, **kwargs)
    assert not isinstance(stock, keras_slim.SlimmableModel)
    randomize_bn(stock)
    # The zoo converts with slim(); converting the stock model the same way
    # must keep every weight, so width 1.0 computes the stock function.
    slimmed = keras_slim.slim(stock, width_range=(0.35, 1.0),
                              divisor=8 if name == "mobilenet_v2" else 1)
    x = images(kwargs["input_shape"], n=4)
    expected = np.asarray(stock(x, training=False))
    np.testing.assert_allclose(
        np.asarray(slimmed(x, training=False)), expected, atol=1e-4, rtol=1e-4
    )


@pytest.mark.parametrize(
    "name, divisor, width",
    [("lenet_3c1l", 1, 0.33), ("resnet20", 1, 0.42),
     ("mobilenet_v2", 8, 0.35), ("mobilenet_v2", 8, 0.6)],
)
def test_channel_counts_follow_make_divisible(name, divisor, width):
    kwargs = ZOO[name]
    stock = models.get(name, slimmable=False, **kwargs)
    model = models.get(name, **kwargs)
    assert model.divisor == divisor
    got = slim_conv_outputs(model, width, images(kwargs["input_shape"]))
    for layer_name, channels in got.items():
        full = stock.get_layer(layer_name).filters
        expected = width_lib.make_divisible(full * width, divisor)
        assert channels == min(expected, full), layer_name
        assert channels % divisor == 0


def test_plain_width_multiplier_matches_the_sub_network():
    # The individually trained reference networks must have exactly the
    # layer sizes of the slimmable network at the same width.
    for width in (0.25, 0.5, 0.75):
        plain = models.lenet_3c1l(width_multiplier=width, slimmable=False)
        slimmable = models.lenet_3c1l()
        counts = dict(zip(slimmable.channel_groups,
                          slimmable.channels_for(width)))
        for name in ("conv1", "conv2", "conv3"):
            group = slimmable.get_layer(name).channel_group
            assert plain.get_layer(name).filters == counts[group]
    plain = models.resnet20(width_multiplier=0.5, slimmable=False)
    assert plain.get_layer("stem_conv").filters == 8
    assert plain.get_layer("stage3_block3_2_conv").filters == 32


def trainable_params(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_published_parameter_counts():
    # He et al.: ResNet-20 0.27M, ResNet-56 0.85M (option A); option-B
    # projections add 2 * (16*32 + 32*64 + BN) = 2,752.
    r20 = trainable_params(models.resnet20(slimmable=False))
    r56 = trainable_params(models.resnet56(slimmable=False))
    assert r20 == 269_722 + 2_752
    assert r56 == 853_018 + 2_752
    assert abs(r20 / 0.27e6 - 1) < 0.02 and abs(r56 / 0.85e6 - 1) < 0.01
    cifar = trainable_params(models.mobilenet_v2(slimmable=False))
    assert 2.2e6 <= cifar <= 2.3e6
    # At 224x224 with 1000 classes it is exactly Keras' MobileNetV2.
    imagenet = models.mobilenet_v2(
        input_shape=(224, 224, 3), num_classes=1000, slimmable=False
    )
    assert imagenet.count_params() == 3_538_984
    lenet = models.lenet_3c1l(slimmable=False)
    assert trainable_params(lenet) == (
        3 * 3 * 3 * 32 + 3 * 3 * 32 * 32 + 5 * 5 * 32 * 32  # convs
        + 3 * 2 * 32  # BN gamma, beta
        + 5 * 5 * 32 * 10 + 10  # classifier on 5x5x32
    )


def test_mobilenet_v2_strides_follow_the_input_size():
    cifar = models.mobilenet_v2(slimmable=False)
    assert cifar.get_layer("head").output.shape[1:3] == (4, 4)
    imagenet = models.mobilenet_v2(input_shape=(224, 224, 3), slimmable=False)
    assert imagenet.get_layer("head").output.shape[1:3] == (7, 7)
    # Residual Add only where stride 1 keeps the channel count: 10 blocks.
    adds = [l for l in cifar.layers if isinstance(l, keras.layers.Add)]
    assert len(adds) == 10


def test_mobilenet_v2_runs_at_224():
    model = models.mobilenet_v2(
        input_shape=(224, 224, 3), num_classes=5, widths=[0.35, 1.0]
    )
    model.set_width(0.35)
    assert model(images((224, 224, 3), n=1), training=False).shape == (1, 5)


def test_lenet_expand_sqrt2_and_triangular():
    model = models.lenet_3c1l(triangular=True, expand_sqrt2=True)
    assert model.full_channels == [45, 45, 45]
    assert model.exact_without_calibration
    assert models.lenet_3c1l(n=16, expand_sqrt2=True).full_channels == [23] * 3


def test_get_lists_names_for_an_unknown_model():
    assert models.names() == [
        "lenet_3c1l", "mobilenet_v2", "resnet20", "resnet56", "resnet_exits"
    ]
    with pytest.raises(ValueError, match="Unknown model 'vgg16'.*lenet_3c1l, "
                       "mobilenet_v2, resnet20, resnet56, resnet_exits"):
        models.get("vgg16")
    assert isinstance(models.get("LeNet-3C1L", slimmable=False), keras.Model)


def test_invalid_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="6 \\* n \\+ 2"):
        models.resnet_cifar(depth=21)
    with pytest.raises(ValueError, match="at least 18x18"):
        models.lenet_3c1l(input_shape=(8, 8, 1))
    with pytest.raises(ValueError, match="width_multiplier"):
        models.lenet_3c1l(width_multiplier=0)
    # Small images work with padding="same".
    small = models.lenet_3c1l(input_shape=(8, 8, 1), padding="same")
    assert small(images((8, 8, 1))).shape == (2, 10)
