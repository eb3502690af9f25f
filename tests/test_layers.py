"""Slim layers: Keras layer contract, and equality with stock layers."""

import keras
import numpy as np
import pytest

from keras_slim import layers
from tests.testing import assert_close
from tests.testing import LayerTestCase


def _scope(**channels):
    return layers.active_width(layers.ActiveWidth(channels=channels))


# ------------------------------------------------------ the layer contract
class TestSlimConvolutions(LayerTestCase):
    def test_conv2d(self, tmp_path):
        self.run_layer_test(
            layers.SlimConv2D,
            {"filters": 6, "kernel_size": 3, "padding": "same",
             "channel_group": "c"},
            (5, 5, 4), tmp_path, expected_output_shape=(5, 5, 6),
            expected_num_trainable_weights=2,
            expected_num_non_trainable_weights=0,
            narrow=({"c": 3}, (5, 5, 2), (5, 5, 3)))

    def test_triangular_conv2d(self, tmp_path):
        self.run_layer_test(
            layers.SlimConv2D,
            {"filters": 6, "kernel_size": 3, "triangular": True,
             "channel_group": "c"},
            (5, 5, 4), tmp_path, expected_output_shape=(3, 3, 6),
            expected_num_trainable_weights=2,
            expected_num_non_trainable_weights=1,  # the mask
            narrow=({"c": 3}, (5, 5, 2), (3, 3, 3)))

    def test_conv1d(self, tmp_path):
        self.run_layer_test(
            layers.SlimConv1D,
            {"filters": 6, "kernel_size": 3, "padding": "causal",
             "channel_group": "c"},
            (7, 4), tmp_path, expected_output_shape=(7, 6),
            expected_num_trainable_weights=2,
            expected_num_non_trainable_weights=0,
            narrow=({"c": 2}, (7, 3), (7, 2)))

    def test_conv3d(self, tmp_path):
        self.run_layer_test(
            layers.SlimConv3D,
            {"filters": 5, "kernel_size": 2, "channel_group": "c"},
            (3, 4, 4, 2), tmp_path, expected_output_shape=(2, 3, 3, 5),
            expected_num_trainable_weights=2,
            expected_num_non_trainable_weights=0,
            narrow=({"c": 2}, (3, 4, 4, 1), (2, 3, 3, 2)))

    def test_depthwise_conv2d(self, tmp_path):
        self.run_layer_test(
            layers.SlimDepthwiseConv2D, {"kernel_size": 3}, (5, 5, 4),
            tmp_path, expected_output_shape=(3, 3, 4),
            expected_num_trainable_weights=2,
            expected_num_non_trainable_weights=0,
            narrow=({}, (5, 5, 2), (3, 3, 2)))

    def test_separable_conv2d(self, tmp_path):
        self.run_layer_test(
            layers.SlimSeparableConv2D,
            {"filters": 6, "kernel_size": 3, "padding": "same",
             "triangular": True, "channel_group": "c"},
            (5, 5, 4), tmp_path, expected_output_shape=(5, 5, 6),
            expected_num_trainable_weights=3,
            expected_num_non_trainable_weights=1,
            narrow=({"c": 3}, (5, 5, 2), (5, 5, 3)))


class TestSlimDense(LayerTestCase):
    def test_dense(self, tmp_path):
        self.run_layer_test(
            layers.SlimDense, {"units": 7, "channel_group": "c"}, (5,),
            tmp_path, expected_output_shape=(7,),
            expected_num_trainable_weights=2,
            expected_num_non_trainable_weights=0,
            narrow=({"c": 3}, (2,), (3,)))

    def test_fixed_output_dense(self, tmp_path):
        self.run_layer_test(
            layers.SlimDense, {"units": 7, "slim_out": False}, (5,),
            tmp_path, expected_output_shape=(7,),
            expected_num_trainable_weights=2,
            expected_num_non_trainable_weights=0,
            narrow=({"c": 3}, (2,), (7,)))


class TestSlimNormalization(LayerTestCase):
    # gamma, beta; moving mean/variance, active mean/variance, the switch.
    def test_batch_normalization(self, tmp_path):
        self.run_layer_test(
            layers.SlimBatchNormalization, {"momentum": 0.9}, (3, 3, 4),
            tmp_path, expected_output_shape=(3, 3, 4),
            expected_num_trainable_weights=2,
            expected_num_non_trainable_weights=5,
            narrow=({}, (3, 3, 2), (3, 3, 2)))

    def test_switchable_batch_normalization(self, tmp_path):
        self.run_layer_test(
            layers.SwitchableBatchNormalization, {"num_widths": 3},
            (3, 3, 4), tmp_path, expected_output_shape=(3, 3, 4),
            expected_num_trainable_weights=2,
            expected_num_non_trainable_weights=5,
            narrow=({}, (3, 3, 2), (3, 3, 2)))

    def test_layer_normalization(self, tmp_path):
        self.run_layer_test(
            layers.SlimLayerNormalization, {"epsilon": 1e-6}, (3, 3, 4),
            tmp_path, expected_output_shape=(3, 3, 4),
            expected_num_trainable_weights=2,
            expected_num_non_trainable_weights=0,
            narrow=({}, (3, 3, 2), (3, 3, 2)))


class TestSlimChannelwise(LayerTestCase):
    def test_wrapped_prelu(self, tmp_path):
        self.run_layer_test(
            layers.SlimChannelwise,
            lambda: {"layer": keras.layers.PReLU(shared_axes=[1, 2])},
            (3, 3, 4), tmp_path, expected_output_shape=(3, 3, 4),
            expected_num_trainable_weights=1,
            expected_num_non_trainable_weights=0,
            narrow=({}, (3, 3, 2), (3, 3, 2)))


def _random_case(rng):
    full_in, full_out = rng.integers(2, 12, size=2)
    active_in = int(rng.integers(1, full_in + 1))
    active_out = int(rng.integers(1, full_out + 1))
    return int(full_in), int(full_out), active_in, active_out


@pytest.mark.parametrize("seed", range(6))
def test_slim_conv_equals_stock_conv_with_sliced_weights(seed):
    rng = np.random.default_rng(seed)
    full_in, full_out, c_in, c_out = _random_case(rng)
    slim = layers.SlimConv2D(full_out, 3, padding="same", strides=2,
                             channel_group="g")
    slim.build((None, 7, 7, full_in))
    for w in slim.weights:
        w.assign(rng.normal(size=w.shape).astype("float32"))
    x = rng.normal(size=(2, 7, 7, c_in)).astype("float32")
    with _scope(g=c_out):
        y = slim(x)
    stock = keras.layers.Conv2D(c_out, 3, padding="same", strides=2)
    stock.build((None, 7, 7, c_in))
    stock.set_weights([slim.kernel.numpy()[:, :, :c_in, :c_out],
                       slim.bias.numpy()[:c_out]])
    assert_close(y, stock(x))


@pytest.mark.parametrize("seed", range(6))
def test_slim_dense_and_depthwise_equal_stock(seed):
    rng = np.random.default_rng(seed)
    full_in, full_out, c_in, c_out = _random_case(rng)
    dense = layers.SlimDense(full_out, channel_group="d")
    dense.build((None, full_in))
    for w in dense.weights:
        w.assign(rng.normal(size=w.shape).astype("float32"))
    x = rng.normal(size=(3, c_in)).astype("float32")
    with _scope(d=c_out):
        y = dense(x)
    stock = keras.layers.Dense(c_out)
    stock.build((None, c_in))
    stock.set_weights([dense.kernel.numpy()[:c_in, :c_out],
                       dense.bias.numpy()[:c_out]])
    assert_close(y, stock(x))

    depthwise = layers.SlimDepthwiseConv2D(3, padding="same")
    depthwise.build((None, 6, 6, full_in))
    for w in depthwise.weights:
        w.assign(rng.normal(size=w.shape).astype("float32"))
    images = rng.normal(size=(2, 6, 6, c_in)).astype("float32")
    stock_dw = keras.layers.DepthwiseConv2D(3, padding="same")
    stock_dw.build((None, 6, 6, c_in))
    stock_dw.set_weights([depthwise.kernel.numpy()[:, :, :c_in],
                          depthwise.bias.numpy()[:c_in]])
    assert_close(depthwise(images), stock_dw(images))


@pytest.mark.parametrize("seed", range(4))
def test_slim_batch_norm_equals_stock(seed):
    rng = np.random.default_rng(seed)
    full = int(rng.integers(3, 12))
    active = int(rng.integers(1, full + 1))
    bn = layers.SlimBatchNormalization()
    bn.build((None, 4, 4, full))
    for w in (bn.gamma, bn.beta, bn.moving_mean):
        w.assign(rng.normal(size=w.shape).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.5, 2, size=full))
    stock = keras.layers.BatchNormalization()
    stock.build((None, 4, 4, active))
    stock.set_weights([bn.gamma.numpy()[:active], bn.beta.numpy()[:active],
                       bn.moving_mean.numpy()[:active],
                       bn.moving_variance.numpy()[:active]])
    x = rng.normal(size=(8, 4, 4, active)).astype("float32")
    assert_close(bn(x, training=False), stock(x, training=False))
    assert_close(bn(x, training=True), stock(x, training=True), atol=1e-4)


def test_batch_norm_updates_only_active_moving_statistics():
    bn = layers.SlimBatchNormalization(momentum=0.5)
    bn.build((None, 6))
    x = np.full((4, 2), 3.0, "float32")
    bn(x, training=True)
    mean = bn.moving_mean.numpy()
    np.testing.assert_allclose(mean[:2], 1.5)
    np.testing.assert_allclose(mean[2:], 0.0)


def test_switchable_batch_norm_uses_the_row_of_the_active_width():
    bn = layers.SwitchableBatchNormalization(num_widths=2, center=False)
    bn.build((None, 3))
    bn.gamma.assign(np.array([[1, 1, 1], [5, 5, 5]], "float32"))
    x = np.ones((2, 2), "float32")
    bn.moving_mean.assign(np.zeros((2, 3), "float32"))
    with layers.active_width(layers.ActiveWidth(width_index=0)):
        narrow = keras.ops.convert_to_numpy(bn(x))
    wide = keras.ops.convert_to_numpy(bn(x))  # default: the last row
    np.testing.assert_allclose(wide / narrow, 5.0, rtol=1e-6)


def test_fixed_input_rejects_wrong_channel_count():
    conv = layers.SlimConv2D(4, 3, slim_in=False)
    conv.build((None, 8, 8, 3))
    with pytest.raises(ValueError, match="exactly 3 channels"):
        conv(np.zeros((1, 8, 8, 1), "float32"))


def test_too_many_input_channels_is_an_error():
    dense = layers.SlimDense(4)
    dense.build((None, 5))
    with pytest.raises(ValueError, match="at most 5 input channels"):
        dense(np.zeros((1, 9), "float32"))


def test_triangular_mask_is_lower_triangular_for_square_kernels():
    conv = layers.SlimConv2D(5, 1, triangular=True)
    conv.build((None, 3, 3, 5))
    mask = conv.triangular_mask.numpy()
    np.testing.assert_array_equal(mask, np.tril(np.ones((5, 5))).T)


@pytest.mark.parametrize("padding", ["valid", "causal"])
def test_slim_conv1d_equals_stock_conv1d_with_sliced_weights(padding):
    rng = np.random.default_rng(0)
    slim = layers.SlimConv1D(6, 3, padding=padding, channel_group="c")
    slim.build((None, 9, 5))
    slim.set_weights([rng.normal(size=w.shape) for w in slim.get_weights()])
    x = rng.normal(size=(2, 9, 2)).astype("float32")
    with _scope(c=4):
        y = slim(x)
    stock = keras.layers.Conv1D(4, 3, padding=padding)
    stock.build((None, 9, 2))
    kernel, bias = slim.get_weights()
    stock.set_weights([kernel[:, :2, :4], bias[:4]])
    assert_close(y, stock(x))


def test_symbolic_calls_report_the_active_width():
    # An eager call at 8 of 32 channels gives 8; the symbolic call must too
    # (it reported 32, the full width).
    for layer, inputs in (
        (layers.SlimConv2D(32, 3, channel_group="c"), keras.Input((8, 8, 16))),
        (layers.SlimDense(32, channel_group="c"), keras.Input((16,))),
        (layers.SlimConv1D(32, 3, channel_group="c"), keras.Input((8, 16))),
        (layers.SlimSeparableConv2D(32, 3, channel_group="c"),
         keras.Input((8, 8, 16))),
    ):
        with _scope(c=8):
            symbolic = layer(inputs)
            eager = layer(np.zeros((1,) + inputs.shape[1:], "float32"))
        assert symbolic.shape[-1] == eager.shape[-1] == 8
        assert layer(inputs).shape[-1] == 32  # no scope: full width


def test_separable_conv_keeps_triangular():
    # SlimSeparableConv2D(triangular=True) used to drop the argument.
    layer = layers.SlimSeparableConv2D(4, 3, triangular=True)
    assert layer.triangular
    assert layer.get_config()["triangular"] is True
    layer.build((None, 5, 5, 4))
    mask = keras.ops.convert_to_numpy(layer.triangular_mask)
    assert_close(mask, np.tril(np.ones((4, 4))).T)


def test_batch_norm_refuses_renorm_and_masks():
    with pytest.raises(ValueError, match="renorm=True"):
        layers.SlimBatchNormalization(renorm=True)
    bn = layers.SlimBatchNormalization()
    x = np.ones((2, 3, 4), "float32")
    with pytest.raises(ValueError, match="received a mask"):
        bn(x, mask=np.ones((2, 3), bool))
