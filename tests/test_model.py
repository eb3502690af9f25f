"""slim(), SlimmableModel widths, fit, saving, and calibrate_bn."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_slim
from keras_slim import layers
from tests.testing import assert_close
from tests.testing import digits


def small_cnn(channels=(8, 16), input_shape=(8, 8, 1), momentum=0.9):
    inputs = keras.Input(input_shape)
    x = inputs
    for c in channels:
        x = keras.layers.Conv2D(c, 3, padding="same")(x)
        x = keras.layers.BatchNormalization(momentum=momentum)(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def residual_cnn():
    inputs = keras.Input((8, 8, 3))
    stem = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = keras.layers.BatchNormalization()(stem)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(8, 3, padding="same", name="branch")(x)
    x = keras.layers.Add()([stem, x])
    y = keras.layers.Conv2D(6, 1, name="side")(x)
    x = keras.layers.Concatenate()([x, y])
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="head")(x))


def randomize_bn(model):
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape))
            layer.moving_variance.assign(
                rng.uniform(0.5, 2, size=layer.moving_variance.shape))


@pytest.mark.parametrize("builder", [small_cnn, residual_cnn])
def test_slim_keeps_the_original_function_at_full_width(builder):
    base = builder()
    randomize_bn(base)
    model = keras_slim.slim(base, width_range=(0.25, 1.0))
    x = np.random.default_rng(1).normal(
        size=(4,) + base.input_shape[1:]).astype("float32")
    assert_close(model.predict(x, verbose=0), base.predict(x, verbose=0))


def test_slim_ties_added_channels_and_follows_concatenate():
    model = keras_slim.slim(residual_cnn(), width_range=(0.25, 1.0))
    assert model.get_layer("stem").channel_group == "stem"
    assert model.get_layer("branch").channel_group == "stem"
    assert not model.get_layer("head").slim_out
    assert sorted(model.channel_groups) == ["side", "stem"]
    x = np.ones((2, 8, 8, 3), "float32")
    for width in (0.25, 0.4, 0.7):
        model.set_width(width)
        y = model(x)
        assert y.shape == (2, 5) and np.all(np.isfinite(y))


def test_sliced_network_equals_a_natively_built_narrow_network():
    """Width w of the slim model == a stock model built at width w."""
    base = small_cnn(channels=(8, 12))
    randomize_bn(base)
    model = keras_slim.slim(base, width_range=(0.25, 1.0))
    model.set_width(0.5)
    counts = dict(zip(model.channel_groups, model.channels_for(0.5)))
    narrow = small_cnn(channels=tuple(counts.values()))
    for src, dst in zip(base.layers, narrow.layers):
        dst.set_weights([
            w[tuple(slice(0, n) for n in target.shape)]
            for w, target in zip(src.get_weights(), dst.get_weights())
        ])
    x = np.random.default_rng(2).normal(size=(3, 8, 8, 1)).astype("float32")
    with pytest.warns(UserWarning, match="no calibrated"):
        model.set_width(0.5)
    assert_close(model.predict(x, verbose=0), narrow.predict(x, verbose=0))


def test_unsupported_layer_error_names_the_layer():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.Permute((3, 1, 2), name="swap")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    base = keras.Model(inputs, keras.layers.Dense(2)(x))
    with pytest.raises(ValueError, match="'swap' .*Permute.*register_layer"):
        keras_slim.slim(base)


def test_layers_before_the_first_convolution_may_be_anything():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Rescaling(2.0)(inputs)
    x = keras.layers.LayerNormalization()(x)
    x = keras.layers.Conv2D(4, 3)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras_slim.slim(keras.Model(inputs, keras.layers.Dense(2)(x)))
    model.set_width(0.25)
    assert model(np.ones((1, 8, 8, 1), "float32")).shape == (1, 2)


@pytest.mark.parametrize(
    "width, message",
    [
        (0.0, "finite positive"),
        (-0.5, "finite positive"),
        (float("nan"), "finite positive"),
        (1.5, "outside this model's range"),
        (0.1, "outside this model's range"),
        ("half", "must be a number"),
        (True, "must be a number"),
        ({"nope": 3}, "not a slimmable layer"),
        ({"conv2d_a": 99}, "1 to 8 channels"),
        ({"conv2d_a": 2.5}, "1 to 8 channels"),
    ],
)
def test_bad_widths_are_clear_errors(width, message):
    base = small_cnn()
    base.layers[1].name = "conv2d_a"
    model = keras_slim.slim(base, width_range=(0.25, 1.0))
    with pytest.raises(ValueError, match=message):
        model.set_width(width)


def test_snet_rejects_unlisted_widths():
    model = keras_slim.slim(small_cnn(), widths=[0.25, 0.5, 1.0])
    assert isinstance(model.bn_layers[0], layers.SwitchableBatchNormalization)
    with pytest.raises(ValueError, match="switches between the widths"):
        model.set_width(0.75)


def test_per_layer_configuration_sets_each_layer():
    base = residual_cnn()
    model = keras_slim.slim(base, width_range=(0.25, 1.0))
    model.set_width({"stem": 3, "side": 2})
    counts = model.channels_for({"branch": 3, "side": 2})
    assert dict(zip(model.channel_groups, counts)) == {"stem": 3, "side": 2}
    assert model.channels_for({"side": 2}) == [
        {"stem": 8, "side": 2}[g] for g in model.channel_groups]
    with pytest.raises(ValueError, match="tied"):
        model.set_width({"stem": 3, "branch": 4})
    assert model(np.ones((1, 8, 8, 3), "float32")).shape == (1, 5)


def test_channel_rounding_is_robust():
    assert keras_slim.make_divisible(0.3 * 10) == 3
    assert keras_slim.make_divisible(0.7 * 10) == 7
    widths = np.linspace(0.25, 1.0, 301)
    python = [keras_slim.make_divisible(w * 37, 4) for w in widths]
    graph = keras_slim.make_divisible(
        tf.constant(widths, tf.float32) * 37, 4).numpy()
    vector = keras_slim.make_divisible(widths * 37, 4)
    np.testing.assert_array_equal(python, graph)
    np.testing.assert_array_equal(python, vector)


def test_input_with_wrong_channel_count_is_an_error():
    model = keras_slim.slim(small_cnn())
    with pytest.raises(ValueError, match=r"expects inputs of shape \(None, 8, 8, 1\)"):
        model(np.ones((1, 8, 8, 3), "float32"))


def compiled(model, **kwargs):
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        **kwargs,
    )
    return model


def test_fit_logs_per_width_metrics_and_sandwich_widths_change():
    x, y = digits(256)
    model = compiled(keras_slim.slim(small_cnn()), sandwich_size=3)
    seen = []
    original = model.training_widths

    def spy():
        widths = original()
        seen.append(widths[2])
        return widths

    model.training_widths = spy
    history = model.fit(x, y, batch_size=64, epochs=2, verbose=0)
    for key in ("loss", "accuracy", "loss_w1.00", "loss_w0.25",
                "accuracy_w1.00", "accuracy_w0.25"):
        assert key in history.history, history.history.keys()
    # The random width is a tensor inside the traced step, so it is drawn
    # anew every step: replay the stream the step used.
    assert tf.is_tensor(seen[0])
    # Traced once: the optimizer and metrics are built before the first
    # trace (a second trace would double the first-epoch overhead).
    assert len(seen) == 1
    draws = [keras_slim.training.sandwich_widths((0.25, 1.0), 3, step)[2]
             for step in range(8)]
    assert len({round(float(d), 6) for d in draws}) == 8


def test_snet_fit_trains_every_listed_width():
    x, y = digits(256)
    model = compiled(keras_slim.slim(small_cnn(), widths=[0.5, 1.0]))
    history = model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    assert {"accuracy_w0.50", "accuracy_w1.00"} <= set(history.history)
    rows = model.bn_layers[0].moving_mean.numpy()
    # Each width updated its own row: the half-width row only in its
    # first half of the channels.
    assert np.any(rows[0, :4] != 0) and np.all(rows[0, 4:] == 0)
    assert np.any(rows[1, 4:] != 0)


def test_jit_compile_is_refused():
    with pytest.raises(ValueError, match="XLA"):
        compiled(keras_slim.slim(small_cnn()), jit_compile=True)


def _population_moments(model, x, width):
    """Reference statistics of the first BN's input, computed in numpy."""
    counts = model.channels_for(width)
    conv = model.network.layers[1]
    kernel = conv.kernel.numpy()[:, :, :, : counts[0]]
    stock = keras.layers.Conv2D(counts[0], 3, padding="same")
    stock.build((None, 8, 8, 1))
    stock.set_weights([kernel, conv.bias.numpy()[: counts[0]]])
    features = stock(x).numpy().reshape(-1, counts[0]).astype("float64")
    return features.mean(0), features.var(0)


def test_calibration_computes_exact_population_statistics(tmp_path):
    x, _ = digits(300)
    model = keras_slim.slim(small_cnn(), width_range=(0.25, 1.0))
    for layer in model.network.layers:
        layer.trainable = False  # must not matter
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(64)  # uneven
    keys = keras_slim.calibrate_bn(model, dataset, widths=[0.25, 0.5],
                                   verbose=0)
    bn = model.bn_layers[0]
    for width, key in zip([0.25, 0.5], keys):
        mean, variance = _population_moments(model, x, width)
        c = len(mean)
        stored_mean, stored_var = (v.numpy() for v in bn.calibrated[key])
        np.testing.assert_allclose(stored_mean[:c], mean, atol=1e-5)
        np.testing.assert_allclose(stored_var[:c], variance, rtol=1e-4,
                                   atol=1e-6)
    # set_width selects them; saving keeps them.
    model.set_width(0.25)
    before = model.predict(x[:16], verbose=0)
    path = tmp_path / "calibrated.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert_close(loaded.predict(x[:16], verbose=0), before, atol=0)
    loaded.set_width(0.5)
    model.set_width(0.5)
    assert_close(loaded.predict(x[:16], verbose=0),
                 model.predict(x[:16], verbose=0), atol=0)


def test_calibration_traces_once_for_every_width_and_call():
    x, _ = digits(100)
    model = keras_slim.slim(small_cnn(), width_range=(0.25, 1.0))
    keras_slim.calibrate_bn(model, x, widths=[0.25, 0.5], batch_size=50,
                            verbose=0)
    first = model.calibration_key(0.75)
    keras_slim.calibrate_bn(model, x, widths=[0.75, 1.0], batch_size=50,
                            verbose=0)
    run = model._calibration_program.run
    assert run.experimental_get_tracing_count() == 1
    assert first in model.calibrations
    # The kept trace still computes the exact statistics of a new width.
    mean, variance = _population_moments(model, x, 0.75)
    stored_mean, stored_var = (
        v.numpy() for v in model.bn_layers[0].calibrated[first])
    np.testing.assert_allclose(stored_mean[:len(mean)], mean, atol=1e-5)
    np.testing.assert_allclose(stored_var[:len(mean)], variance, rtol=1e-4,
                               atol=1e-6)


def test_calibration_errors():
    model = keras_slim.slim(small_cnn())
    empty = tf.data.Dataset.from_tensor_slices(
        np.zeros((0, 8, 8, 1), "float32")).batch(8)
    with pytest.raises(ValueError, match="no batches"):
        keras_slim.calibrate_bn(model, empty, widths=[0.5], verbose=0)
    with pytest.raises(ValueError, match="empty"):
        keras_slim.calibrate_bn(model, np.zeros((0, 8, 8, 1)), verbose=0)
    with pytest.raises(ValueError, match="outside"):
        keras_slim.calibrate_bn(model, np.zeros((4, 8, 8, 1)),
                                widths=[2.0], verbose=0)
    with pytest.raises(ValueError, match="infinite"):
        keras_slim.calibrate_bn(
            model, tf.data.Dataset.from_tensors(
                np.zeros((1, 8, 8, 1), "float32")).repeat(), verbose=0)


def test_save_and_load_at_every_width(tmp_path):
    x, y = digits(128)
    model = compiled(keras_slim.slim(residual_cnn_gray(), widths=[0.5, 1.0]))
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    path = tmp_path / "snet.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, keras_slim.SlimmableModel)
    assert loaded.widths == [0.5, 1.0]
    for width in (0.5, 1.0):
        model.set_width(width)
        loaded.set_width(width)
        assert_close(loaded.predict(x[:8], verbose=0),
                     model.predict(x[:8], verbose=0), atol=0)


def residual_cnn_gray():
    inputs = keras.Input((8, 8, 1))
    stem = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(stem)
    x = keras.layers.Conv2D(8, 3, padding="same")(keras.layers.ReLU()(x))
    x = keras.layers.Add()([stem, x])
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def test_set_width_is_followed_by_an_already_traced_function():
    model = keras_slim.slim(small_cnn())
    x = np.ones((2, 8, 8, 1), "float32")

    @tf.function
    def run(images):
        return model(images, training=False)

    model.set_width(1.0)
    full = run(x).numpy()
    with pytest.warns(UserWarning):
        model.set_width(0.25)
    narrow = run(x).numpy()
    assert run.experimental_get_tracing_count() == 1
    assert not np.allclose(full, narrow)
    assert_close(narrow, model.predict(x, verbose=0))


def test_max_width_above_one_builds_wider_layers():
    base = small_cnn(channels=(8, 16))
    randomize_bn(base)
    model = keras_slim.slim(base, width_range=(0.5, 1.5))
    assert model.full_channels == [12, 24]
    assert model.channels_for(1.0) == [8, 16]
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 1)).astype("float32")
    # Width 1.0 of a 1.5x supernet uses exactly the original weights.
    with pytest.warns(UserWarning, match="no calibrated"):
        model.set_width(1.0)
    assert_close(model.predict(x, verbose=0), base.predict(x, verbose=0))


def test_fit_adds_the_regularisation_losses_once_per_step():
    # The widest width's loss carries the model's regularisation losses;
    # the other widths add only their compiled loss.
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(
        8, 3, kernel_regularizer=keras.regularizers.L2(0.5))(inputs)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    model = keras_slim.slim(
        keras.Model(inputs, keras.layers.Dense(10)(x)), widths=[0.5, 1.0])
    x, y = digits(32)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.SGD(0.0), loss_fn,
                  inplace_distillation=False)
    history = model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    cross_entropy = 0.0
    for width in (0.5, 1.0):
        model.set_width(width)
        cross_entropy += float(loss_fn(y, model(x, training=True)))
    regularisation = float(tf.add_n(model.losses))
    assert regularisation > 0.1
    assert_close(history.history["loss"][0], cross_entropy + regularisation,
                 atol=1e-5)


def test_an_empty_configuration_is_refused():
    # set_width({}) meant full width and left `.width == {}`.
    model = keras_slim.slim(small_cnn())
    model.set_width(0.5)
    with pytest.raises(ValueError, match=r"empty configuration"):
        model.set_width({})
    assert model.width == 0.5


def test_input_shape_is_checked_after_the_first_call():
    # After one good call Keras retraces predict with relaxed shapes; the
    # check used to pass (28x28 gave (8, 10)) or fail on an unknown rank.
    model = keras_slim.slim(small_cnn(input_shape=(8, 8, 1)))
    with pytest.raises(ValueError, match=r"expects inputs of shape"):
        model.predict(np.zeros((4, 6, 6, 1)), verbose=0)
    assert model.predict(np.zeros((4, 8, 8, 1)), verbose=0).shape == (4, 10)
    for bad in ((4, 6, 6, 1), (4, 5, 5, 1), (4, 8, 8), (4, 8, 8, 1, 1)):
        with pytest.raises(
            (ValueError, tf.errors.InvalidArgumentError),
            match=r"expects inputs of shape|expected shape \[\?,8,8,1\]",
        ):
            model.predict(np.zeros(bad), verbose=0)
    assert model.predict(np.zeros((3, 8, 8, 1)), verbose=0).shape == (3, 10)


@pytest.mark.parametrize(
    "loss, ends_in_softmax, warns",
    [
        ("sparse_categorical_crossentropy", False, True),
        (keras.losses.SparseCategoricalCrossentropy(), False, True),
        (keras.losses.CategoricalCrossentropy(), False, True),
        (keras.losses.sparse_categorical_crossentropy, False, True),
        (keras.losses.SparseCategoricalCrossentropy(from_logits=True), False,
         False),
        ("sparse_categorical_crossentropy", True, False),
        (keras.losses.SparseCategoricalCrossentropy(from_logits=True), True,
         True),
        ("mse", False, False),
    ],
)
def test_compile_warns_when_the_loss_reads_the_wrong_outputs(
        loss, ends_in_softmax, warns):
    base = small_cnn()
    if ends_in_softmax:
        base = keras.Model(base.input, keras.layers.Softmax()(base.output))
    model = keras_slim.slim(base)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.compile("adam", loss)
    messages = [str(w.message) for w in caught if "expects" in str(w.message)]
    assert bool(messages) == warns, messages
    if warns:
        assert "from_logits" in messages[0]


def test_a_logits_loss_trains_where_a_probability_loss_does_not():
    # What the warning protects against, measured: the README's AutoSlim
    # example compiled a logits model with "sparse_categorical_crossentropy".
    x, y = digits()
    accuracy = {}
    for name, loss in (
        ("probabilities", "sparse_categorical_crossentropy"),
        ("logits", keras.losses.SparseCategoricalCrossentropy(
            from_logits=True)),
    ):
        keras.utils.set_random_seed(0)
        model = keras_slim.slim(small_cnn(), width_range=(0.25, 1.0))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.compile(keras.optimizers.Adam(3e-3), loss,
                          metrics=["accuracy"], sandwich_size=2)
        model.fit(x[:1400], y[:1400], epochs=3, batch_size=64, verbose=0)
        accuracy[name] = model.evaluate(x[1400:], y[1400:], verbose=0)[1]
    assert accuracy["logits"] > accuracy["probabilities"] + 0.2, accuracy
