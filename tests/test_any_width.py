"""Any-Width Networks (issue 4): staircase masks make every width exact.

With triangular (staircase) kernel masks and one shared BN, channel `c` of
every activation is the same function of the input at every width at which
it exists: the first `c(w)` channels at width `w` equal those at any wider
width. Consequences tested here: no BN calibration is needed, and both
k-width and random-sampling (sandwich) training work.
"""

import itertools

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

import keras_slim
from keras_slim import models

WIDTHS = (0.25, 0.4, 0.5, 0.63, 0.75, 1.0)
K_WIDTHS = [0.25, 0.5, 0.75, 1.0]
TOLERANCE = 1e-5


# ----------------------------------------------------------------- helpers
def digits():
    data = load_digits()
    x = (data.images[..., None] / 16).astype("float32")
    y = data.target.astype("int32")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def at_width(model, width):
    """The `ActiveWidth` scope of `model` at `width` (public API only)."""
    return keras_slim.layers.active_width(
        keras_slim.layers.ActiveWidth(
            channels=dict(zip(model.channel_groups, model.channels_for(width)))
        )
    )


def activations(model, width, x):
    """Every intermediate activation of `model.network` at `width`.

    All layer outputs except the input, `Flatten` (a reshape of the pooled
    features, which are checked) and the classifier (its output is not
    slimmed: logits of different widths differ by design).
    """
    layers = [
        layer for layer in model.network.layers
        if not isinstance(layer, (keras.layers.InputLayer, keras.layers.Flatten))
        and getattr(layer, "slim_out", True)
    ]
    probe = keras.Model(model.network.inputs[0], [l.output for l in layers])
    with at_width(model, width):
        outputs = probe(x, training=False)
    return {l.name: np.asarray(o) for l, o in zip(layers, outputs)}


def assert_width_exact(model, widths, x):
    """The first c(w) channels agree across every pair of widths."""
    acts = {w: activations(model, w, x) for w in widths}
    worst = 0.0
    for narrow, wide in itertools.combinations(sorted(widths), 2):
        for name, small in acts[narrow].items():
            large = acts[wide][name]
            channels = small.shape[-1]
            assert channels <= large.shape[-1], name
            diff = np.max(np.abs(small - large[..., :channels]))
            worst = max(worst, diff)
            assert diff <= TOLERANCE, (
                f"{name}: widths {narrow} and {wide} differ by {diff:.3g} "
                f"on their first {channels} channels"
            )
    # Not vacuous: narrow widths really have fewer channels.
    narrowest = acts[min(widths)]
    widest = acts[max(widths)]
    assert any(
        narrowest[n].shape[-1] < widest[n].shape[-1] for n in narrowest
    )
    return worst


def randomize_bn(model, seed=0):
    """Random shared-BN statistics: inference BN is then not the identity."""
    rng = np.random.default_rng(seed)
    for layer in model.bn_layers:
        channels = layer.moving_mean.shape[-1]
        layer.gamma.assign(rng.uniform(0.5, 1.5, channels))
        layer.beta.assign(rng.normal(0, 0.3, channels))
        layer.moving_mean.assign(rng.normal(0, 0.3, channels))
        layer.moving_variance.assign(rng.uniform(0.5, 2.0, channels))


def residual_cnn():
    """A stock model with an Add tie, a depthwise conv and a dense layer."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    y = keras.layers.Conv2D(16, 3, padding="same")(x)
    y = keras.layers.BatchNormalization()(y)
    x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.Conv2D(24, 3, strides=2, padding="same")(x)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(20, activation="relu")(x)
    outputs = keras.layers.Dense(10)(x)
    return keras.Model(inputs, outputs)


def small_lenet(**kwargs):
    return models.lenet_3c1l(
        input_shape=(8, 8, 1), padding="same", n=24, triangular=True,
        **kwargs,
    )


def compile_and_fit(model, data, epochs, **compile_kwargs):
    (x, y), _ = data
    keras.utils.set_random_seed(1)
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        **compile_kwargs,
    )
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return model


def accuracy(model, width, x, y):
    model.set_width(width)
    logits = model.predict(x, batch_size=512, verbose=0)
    return float(np.mean(np.argmax(logits, -1) == y))


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(scope="module")
def k_width_model(data):
    """AWN k-width: 4 listed widths every step, one shared BN."""
    keras.utils.set_random_seed(0)
    model = small_lenet(widths=K_WIDTHS, switchable_bn=False)
    return compile_and_fit(model, data, epochs=10)


@pytest.fixture(scope="module")
def sandwich_model(data):
    """AWN+RS: the sandwich rule over [0.25, 1.0], one shared BN."""
    keras.utils.set_random_seed(0)
    model = small_lenet(width_range=(0.25, 1.0))
    return compile_and_fit(model, data, epochs=10, sandwich_size=4)


# ---------------------------------------------------------------- exactness
def test_slim_triangular_is_exact_at_init(data):
    keras.utils.set_random_seed(0)
    model = keras_slim.slim(
        residual_cnn(), width_range=(0.25, 1.0), triangular=True
    )
    randomize_bn(model)
    worst = assert_width_exact(model, WIDTHS, data[1][0][:64])
    assert worst <= TOLERANCE


def test_lenet_triangular_is_exact_at_init(data):
    keras.utils.set_random_seed(0)
    model = small_lenet(width_range=(0.25, 1.0))
    randomize_bn(model)
    assert_width_exact(model, WIDTHS, data[1][0][:64])


def test_exact_after_k_width_training(k_width_model, data):
    # Trained at 4 listed widths, one shared BN: exact at the listed widths
    # AND at widths it never trained (WIDTHS has 0.4 and 0.63).
    assert not k_width_model.switchable
    assert_width_exact(k_width_model, WIDTHS, data[1][0][:128])


def test_exact_after_sandwich_training(sandwich_model, data):
    assert_width_exact(sandwich_model, WIDTHS, data[1][0][:128])


def test_dense_slim_model_is_not_exact(data):
    # The check has teeth: without masks narrow widths read fewer inputs.
    keras.utils.set_random_seed(0)
    model = models.lenet_3c1l(
        input_shape=(8, 8, 1), padding="same", n=24, width_range=(0.25, 1.0)
    )
    with pytest.raises(AssertionError, match="differ by"):
        assert_width_exact(model, (0.5, 1.0), data[1][0][:16])


# -------------------------------------------------------- no calibration
@pytest.mark.parametrize("fixture", ["k_width_model", "sandwich_model"])
def test_no_calibration_needed(fixture, data, request):
    model = request.getfixturevalue(fixture)
    assert model.exact_without_calibration
    (x_train, _), (x_test, y_test) = data
    widths = list(WIDTHS)
    before = {w: accuracy(model, w, x_test, y_test) for w in widths}
    keras_slim.calibrate_bn(model, x_train, widths=widths, verbose=0)
    after = {w: accuracy(model, w, x_test, y_test) for w in widths}
    for w in widths:
        assert abs(before[w] - after[w]) <= 0.01, (w, before[w], after[w])
    # Stronger: exact calibration finds the SAME statistics for a channel
    # at every width, so one set of statistics serves all widths.
    keys = [model.calibration_key(w) for w in (widths[0], widths[-1])]
    for layer in model.bn_layers:
        narrow_mean, narrow_var = (np.asarray(v) for v in layer.calibrated[keys[0]])
        wide_mean, wide_var = (np.asarray(v) for v in layer.calibrated[keys[1]])
        active = model.channels_for(widths[0])[
            model.channel_groups.index(input_group(layer))
        ]
        np.testing.assert_allclose(
            narrow_mean[:active], wide_mean[:active], atol=1e-5
        )
        np.testing.assert_allclose(
            narrow_var[:active], wide_var[:active], atol=1e-5, rtol=1e-5
        )


def input_group(layer):
    """The channel group of a layer's input: that of the nearest slimmable
    convolution upstream (through BN, ReLU, pooling)."""
    while True:
        layer = layer._inbound_nodes[0].input_tensors[0]._keras_history.operation
        if getattr(layer, "slim_out", False):
            return layer.channel_group


# ------------------------------------------------------------ mask shapes
def triangular_layers(model):
    return [
        l for l in model.network.layers
        if getattr(l, "triangular", False)
    ]


@pytest.mark.parametrize("kind", ["range", "widths"])
def test_masks_are_staircases(kind):
    if kind == "range":
        model = small_lenet(width_range=(0.25, 1.0))
        grid = np.linspace(0.25, 1.0, 301)
    else:
        # Shared BN: the listed widths are the training widths; the
        # staircase must be exact over their whole range.
        model = small_lenet(widths=K_WIDTHS, switchable_bn=False)
        grid = np.linspace(0.25, 1.0, 301)
    layers = triangular_layers(model)
    assert [l.name for l in layers] == ["conv2", "conv3"]
    for layer in layers:
        mask = np.asarray(layer.triangular_mask)
        limits = mask.sum(axis=0).astype(int)
        rows = np.arange(mask.shape[0])[:, None]
        np.testing.assert_array_equal(mask, (rows < limits[None, :]))
        assert np.all(np.diff(limits) >= 0), limits
        assert limits[0] >= 1 and limits[-1] == mask.shape[0]
        # Exactness condition: at any width, every active output reads only
        # active inputs.
        for width in grid:
            counts = dict(zip(model.channel_groups, model.channels_for(width)))
            c_out = counts[layer.channel_group]
            c_in = counts[input_group(layer)]
            assert limits[:c_out].max() <= c_in, (layer.name, width)


def test_first_layer_dense_and_classifier_not_triangular():
    model = small_lenet(width_range=(0.25, 1.0))
    first = model.get_layer("conv1")
    assert not first.slim_in and not first.triangular
    assert first.triangular_mask is None
    head = model.get_layer("classifier")
    assert not head.slim_out and not head.triangular
    assert head.triangular_mask is None
    # Every layer with slimmed inputs and outputs is triangular.
    for layer in model.network.layers:
        if getattr(layer, "slim_in", False) and getattr(layer, "slim_out", False):
            assert layer.triangular, layer.name


# ---------------------------------------------------------------- training
@pytest.mark.parametrize("fixture", ["k_width_model", "sandwich_model"])
def test_trains_to_90_percent_at_every_width(fixture, data, request):
    model = request.getfixturevalue(fixture)
    (_, _), (x_test, y_test) = data
    for w in WIDTHS:
        assert accuracy(model, w, x_test, y_test) >= 0.9, w
