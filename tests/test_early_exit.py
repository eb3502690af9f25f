"""Early-exit building blocks, boosted and plain training, saving."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_slim
from keras_slim.early_exit.graph import ExitStructure
from keras_slim.layers import EnsembleLogits
from keras_slim.layers import ExitConfidence
from keras_slim.layers import ExitHead
from keras_slim.layers import GradientRescale
from keras_slim.training import boosting
from tests.early_exit_testing import backbone
from tests.early_exit_testing import early_exit_model
from tests.early_exit_testing import head_weights
from tests.testing import assert_close
from tests.testing import digits
from tests.testing import LayerTestCase

CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


class TestExitHead(LayerTestCase):
    def test_layer_contract(self, tmp_path):
        # Trainable: 2 kernels, 2 x (gamma, beta), 2 dense kernels + biases;
        # the two BN layers' moving statistics.
        self.run_layer_test(
            ExitHead,
            {"num_classes": 5, "filters": (4, 6), "hidden_units": (7,)},
            (8, 8, 3), tmp_path, expected_output_shape=(5,),
            expected_num_trainable_weights=10,
            expected_num_non_trainable_weights=4)


def test_exit_head_layer():
    head = ExitHead(num_classes=5, filters=(4, 6), hidden_units=(7,))
    head(np.zeros((2, 8, 8, 3), "float32"))
    names = [layer.name for layer in head.head_layers]
    assert [type(layer).__name__ for layer in head.head_layers] == [
        "Conv2D", "BatchNormalization", "Activation",
        "Conv2D", "BatchNormalization", "Activation",
        "GlobalAveragePooling2D", "Dense", "Dense",
    ]
    assert names[0].endswith("_conv1") and names[-1].endswith("_logits")
    assert head.compute_output_shape((None, 8, 8, 3)) == (None, 5)
    with pytest.raises(ValueError, match="pool must be 'avg' or 'max'"):
        ExitHead(10, pool="mean")
    with pytest.raises(ValueError, match="positive integers"):
        ExitHead(10, filters=(0,))


def test_gradient_rescale_is_identity_forward_and_scales_backward():
    layer = GradientRescale(0.25)
    x = tf.Variable(np.arange(6, dtype="float32").reshape(2, 3))
    with tf.GradientTape() as tape:
        y = layer(x)
        loss = tf.reduce_sum(3.0 * y)
    assert_close(y, x.numpy(), atol=0)
    assert_close(tape.gradient(loss, x), np.full((2, 3), 0.75), atol=0)
    assert GradientRescale.from_config(layer.get_config()).scale == 0.25
    with pytest.raises(ValueError, match="finite number >= 0"):
        GradientRescale(-1.0)


def test_ensemble_weights_formats_and_errors():
    resolve = boosting.resolve_ensemble_weights
    assert resolve(0.5, 3) == [0.5, 0.5, 0.5]
    assert resolve([0.2], 2) == [0.2, 0.2]
    assert_close(resolve((0.0, 1.0), 5), [0, 0.25, 0.5, 0.75, 1.0])
    assert resolve([0.1, 0.2, 0.3], 3) == [0.1, 0.2, 0.3]
    for bad in (-0.1, float("nan"), float("inf"), [0.5, -1, 0.5]):
        with pytest.raises(ValueError, match="finite and >= 0"):
            resolve(bad, 3)
    with pytest.raises(ValueError, match="one value per exit \\(3"):
        resolve([0.1, 0.2, 0.3, 0.4], 3)
    with pytest.raises(ValueError, match="must be a number"):
        resolve(True, 3)
    with pytest.raises(ValueError, match="finite and >= 0"):
        early_exit_model(ensemble_weight=-0.5)
    layer = EnsembleLogits(0.5)
    f, p = np.ones((2, 3), "float32"), np.full((2, 3), 2.0, "float32")
    assert_close(layer([f, p]), np.full((2, 3), 2.0))
    logits = np.random.default_rng(0).normal(size=(4, 10)).astype("float32")
    confidence, _ = boosting.softmax_confidence(logits)
    assert_close(ExitConfidence()(logits), confidence, atol=1e-6)
    assert_close(confidence, keras.ops.max(keras.ops.softmax(logits), -1),
                 atol=1e-6)


def test_add_exits_structure_and_cumulative_macs():
    base = backbone()
    model = keras_slim.add_exits(
        base, after=["b1", "b2"], head=ExitHead(filters=(8,))
    )
    assert model.num_exits == 3 and model.after == ["b1", "b2"]
    exits = model.exits
    assert [e["name"] for e in exits] == ["exit1", "exit2", "exit3"]
    assert [e["after"] for e in exits] == ["b1", "b2", None]
    assert [e["output"] for e in exits] == [
        "exit1_head_logits", "exit2_head_logits", "classifier"]
    # By hand: conv k*k*in*out*H*W, dense in*out.
    c1, c2, c3 = 9 * 1 * 8 * 64, 9 * 8 * 16 * 16, 9 * 16 * 16 * 16
    head1 = 9 * 8 * 8 * 16 + 8 * 10  # 8x8 -> stride 2 -> 4x4
    head2 = 9 * 16 * 8 * 4 + 8 * 10  # 4x4 -> 2x2
    stages = [c1 + head1, c2 + head2, c3 + 16 * 10]
    assert [e["stage_macs"] for e in exits] == stages
    assert [e["macs"] for e in exits] == list(np.cumsum(stages))
    assert exits[-1]["macs"] == keras_slim.profile(model)["macs"]
    # The backbone's weights are kept: the last exit is the backbone.
    x = digits(16)[0]
    raw = model.raw_exit_logits(x)
    assert len(raw) == 3
    assert_close(raw[-1], base.predict(x, verbose=0), atol=1e-5)
    structure = ExitStructure(model.network, model.after)
    assert "c2" in structure.stage_layers[1]
    assert all(n.startswith("exit1_head") for n in
               [call.layer.name for call in structure.head_calls[0]])


def test_ensemble_indexing_is_the_same_in_training_and_inference():
    """Exit n uses t_n in training and inference (the official code trains
    exit n with t_{n-1}: with per-exit weights that changes the logits)."""
    t = [0.9, 0.7, 0.2]
    model = early_exit_model(bn=False, head_bn=False, ensemble_weight=t)
    x, y = digits(64)
    f = [np.asarray(v) for v in model.raw_exit_logits(x)]
    by_hand = [f[0], f[1] + 0.7 * f[0]]
    by_hand.append(f[2] + 0.2 * by_hand[1])
    inference = model.predict(x, verbose=0)
    _, training = boosting.exit_losses(
        [tf.constant(v) for v in f], y, model.ensemble_weights, CE)
    for n in range(3):
        assert_close(inference[n], by_hand[n], atol=1e-5)
        assert_close(training[n], by_hand[n], atol=1e-5)
    off_by_one = f[1] + t[0] * f[0]  # exit 2 trained with t_1
    assert np.abs(off_by_one - by_hand[1]).max() > 0.01
    # The train step's per-exit losses are CE of the inference ensembles.
    model.compile(keras.optimizers.SGD(0.0))
    logs = model.train_step((tf.constant(x), tf.constant(y)))
    for n in range(3):
        assert float(logs[f"loss_exit{n + 1}"]) == pytest.approx(
            float(CE(y, by_hand[n])), rel=1e-5)


def test_exit_n_sends_no_gradient_into_earlier_heads():
    model = early_exit_model(bn=False, head_bn=False)
    x, y = digits(32)
    with tf.GradientTape(persistent=True) as tape:
        raw = model.raw_exit_logits(x, training=True)
        losses, _ = boosting.exit_losses(raw, y, model.ensemble_weights, CE)
        detached = [CE(y, p) for p in boosting.ensemble_logits(
            raw, model.ensemble_weights, stop_gradient=False)]
    for n in (2, 3):
        own = tape.gradient(losses[n - 1], head_weights(model, n))
        assert all(g is not None and np.abs(g).max() > 0 for g in own)
        for k in range(1, n):
            grads = tape.gradient(losses[n - 1], head_weights(model, k))
            assert all(g is None or not np.any(g) for g in grads), (n, k)
            # Without the stop-gradient the same loss would reach head k.
            leaked = tape.gradient(detached[n - 1], head_weights(model, k))
            assert any(g is not None and np.abs(g).max() > 0 for g in leaked)


def _copy_weights(source, target):
    for layer in target.network.layers:
        if layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())


def test_gradient_rescale_matches_hand_derived_gradient():
    """With gradient equilibrium, block j (1-based, N exits) receives the
    mean of the N - j + 1 exit losses that depend on it, not their sum;
    each head receives its own loss's gradient."""
    rescaled = early_exit_model(bn=False, head_bn=False, gradient_rescale=True)
    plain = early_exit_model(bn=False, head_bn=False, gradient_rescale=False)
    _copy_weights(rescaled, plain)
    assert any(isinstance(layer, GradientRescale)
               for layer in rescaled.network.layers)
    assert not any(isinstance(layer, GradientRescale)
                   for layer in plain.network.layers)
    x, y = digits(32)

    def exit_losses(model):
        raw = model.raw_exit_logits(x, training=True)
        return boosting.exit_losses(raw, y, model.ensemble_weights, CE)[0]

    with tf.GradientTape(persistent=True) as tape:
        per_exit = exit_losses(plain)  # no rescaling: one loss at a time
    with tf.GradientTape() as tape_rescaled:
        total = tf.add_n(exit_losses(rescaled))
    blocks = {1: "c1", 2: "c2", 3: "c3"}
    names = list(blocks.values())
    heads = [w for n in (1, 2) for w in head_weights(rescaled, n)]
    actual = tape_rescaled.gradient(
        total, [rescaled.get_layer(n).kernel for n in names] + heads)
    for j, name in blocks.items():
        kernel = plain.get_layer(name).kernel
        own = [np.asarray(tape.gradient(per_exit[k - 1], kernel))
               for k in range(j, 4)]
        expected = sum(own) / len(own)  # the mean over exits j..N
        assert_close(actual[j - 1], expected, atol=1e-6, msg=name)
        if len(own) > 1:  # and not the sum the plain network would get
            assert np.abs(sum(own) - expected).max() > 1e-4
    expected_heads = [
        g for n in (1, 2)
        for g in tape.gradient(per_exit[n - 1], head_weights(plain, n))
    ]
    for a, e in zip(actual[3:], expected_heads):
        assert_close(a, e, atol=1e-6)


def test_fit_logs_per_exit_metrics_evaluate_predict_and_save(tmp_path):
    x, y = digits()
    model = early_exit_model()
    model.compile(keras.optimizers.Adam(3e-3), metrics=["accuracy"])
    assert len({m.name for m in model.metrics}) == len(model.metrics)
    history = model.fit(x[:1200], y[:1200], validation_data=(x[1200:],
                        y[1200:]), epochs=4, batch_size=64, verbose=0)
    keys = set(history.history)
    for k in (1, 2, 3):
        assert {f"loss_exit{k}", f"accuracy_exit{k}",
                f"val_accuracy_exit{k}"} <= keys
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert history.history["val_accuracy_exit3"][-1] > 0.5
    logs = model.evaluate(x[1200:], y[1200:], verbose=0, return_dict=True)
    assert set(logs) == {"loss"} | {
        f"{m}_exit{k}" for m in ("loss", "accuracy") for k in (1, 2, 3)}
    assert logs["loss"] == pytest.approx(
        sum(logs[f"loss_exit{k}"] for k in (1, 2, 3)), rel=1e-4)
    predictions = model.predict(x[1200:], verbose=0)
    assert len(predictions) == 3
    assert logs["accuracy_exit3"] == pytest.approx(
        np.mean(predictions[2].argmax(-1) == y[1200:]), abs=1e-6)

    path = tmp_path / "exits.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, keras_slim.EarlyExitModel)
    assert loaded.after == model.after
    assert loaded.ensemble_weights == model.ensemble_weights
    for a, b in zip(loaded.predict(x[:50], verbose=0),
                    model.predict(x[:50], verbose=0)):
        assert_close(a, b, atol=0)
    assert loaded.evaluate(x[1200:], y[1200:], verbose=0,
                           return_dict=True) == pytest.approx(logs)
    # Compiled state comes back: training resumes with per-exit metrics.
    more = loaded.fit(x[:256], y[:256], epochs=1, batch_size=64, verbose=0)
    assert "accuracy_exit2" in more.history


def test_plain_joint_training_is_the_same_code_path_with_t_zero():
    model = early_exit_model(ensemble_weight=0.0)
    assert not model.boosted and model.ensemble_weights == [0.0] * 3
    x, y = digits(256)
    raw = model.raw_exit_logits(x)
    for p, f in zip(model.predict(x, verbose=0), raw):
        assert_close(p, f, atol=0)  # P_n = f_n
    model.compile("adam", metrics=["accuracy"])
    history = model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    assert {"loss_exit1", "accuracy_exit3"} <= set(history.history)


def test_clear_errors():
    with pytest.raises(ValueError, match="at least one layer name"):
        keras_slim.add_exits(backbone(), after=[])
    with pytest.raises(ValueError, match="no layer 'nope'"):
        keras_slim.add_exits(backbone(), after=["nope"])
    with pytest.raises(ValueError, match="not in the order|bypasses"):
        keras_slim.add_exits(backbone(), after=["b2", "b1"])
    with pytest.raises(ValueError, match="backbone's output layer"):
        keras_slim.add_exits(backbone(), after=["classifier"])
    # An exit inside a residual block: the skip connection bypasses it.
    inputs = keras.Input((8, 8, 4))
    h = keras.layers.Conv2D(4, 3, padding="same", name="inner")(inputs)
    h = keras.layers.ReLU(name="inner_relu")(h)
    h = keras.layers.Add(name="add")([inputs, h])
    h = keras.layers.Conv2D(4, 3, padding="same", name="after_add")(h)
    out = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(h))
    residual = keras.Model(inputs, out)
    with pytest.raises(ValueError, match="bypasses"):
        keras_slim.add_exits(residual, after=["inner_relu"])
    keras_slim.add_exits(residual, after=["add"])  # a block output is fine
    with pytest.raises(ValueError, match="at least 2 outputs"):
        keras_slim.EarlyExitModel(backbone(), after=[])
    model = early_exit_model()
    with pytest.raises(ValueError, match="from_logits=True"):
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy())
    with pytest.raises(ValueError, match="ONE loss"):
        model.compile("adam", loss=["mse", "mse", "mse"])


def test_width_by_depth_set_width_heads_and_sandwich_training():
    model = early_exit_model(bn=False, head_bn=False, width_range=(0.5, 1.0))
    assert model.width_range == (0.5, 1.0)
    assert "exit1_head_conv1" in model.channel_groups
    full = [e["macs"] for e in model.exits]
    model.set_width(0.5)
    half = [e["macs"] for e in model.exits]
    assert all(h < 0.4 * f for h, f in zip(half, full))
    stripped = keras_slim.strip(model, 0.5)
    assert stripped.get_layer("exit2_head_conv1").filters == 4
    assert stripped.get_layer("c2").filters == 8
    x, y = digits(64)
    assert_close(
        boosting.ensemble_logits(stripped.predict(x, verbose=0),
                                 model.ensemble_weights)[2],
        model.predict(x, verbose=0)[2], atol=1e-5)
    # Every sandwich width trains all its exits: with sandwich_size=2 the
    # step's loss is the sum over widths {1.0, 0.5} and exits 1..3.
    model.compile(keras.optimizers.SGD(0.0), metrics=["accuracy"],
                  sandwich_size=2, inplace_distillation=False)
    logs = model.train_step((tf.constant(x), tf.constant(y)))
    expected = sum(
        float(CE(y, p)) for w in (1.0, 0.5)
        for p in model(x, training=True, width=w)
    )
    assert float(logs["loss"]) == pytest.approx(expected, rel=1e-5)
    assert {"loss_exit1", "accuracy_exit3", "loss_w0.50",
            "accuracy_w0.50"} <= set(logs)


def test_fit_adds_the_regularisation_losses_once_per_step():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", name="b1",
                            kernel_regularizer=keras.regularizers.L2(0.5))(
                                inputs)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    model = keras_slim.add_exits(
        keras.Model(inputs, keras.layers.Dense(10)(x)), after=["b1"],
        head=ExitHead(filters=(8,), use_bn=False))
    model.compile(keras.optimizers.SGD(0.0))
    x, y = digits(32)
    history = model.fit(x, y, batch_size=32, epochs=1, verbose=0).history
    regularisation = float(tf.add_n(model.losses))
    assert regularisation > 0.1
    per_exit = history["loss_exit1"][0] + history["loss_exit2"][0]
    assert_close(history["loss"][0], per_exit + regularisation, atol=1e-5)


def _options_backbone():
    L = keras.layers
    inputs = keras.Input((8, 8, 3), name="images")
    x = L.ReLU(name="r1")(L.Conv2D(8, 3, padding="same", name="c1")(inputs))
    x = L.ReLU(name="r2")(L.Conv2D(16, 1, name="expand1")(x))
    x = L.ReLU(name="r3")(L.Conv2D(8, 3, padding="same", name="c2")(x))
    x = L.Dense(12, name="head")(L.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, L.Dense(4, name="out")(x))


def test_add_exits_keeps_every_slim_option(tmp_path):
    # add_exits rebuilt slim()'s arguments and dropped fixed_layers and
    # keep_ratio: the fixed `head` became slimmable, `expand1` lost its ratio.
    model = keras_slim.slim(_options_backbone(), width_range=(0.25, 1.0),
                            fixed_layers=["head"], keep_ratio=["expand1"],
                            bn_momentum=0.9)
    assert model.slim_options["fixed_layers"] == ["head"]
    exits = keras_slim.add_exits(model, after=["r2"])
    assert exits.slim_options == model.slim_options
    assert "head" not in exits.channel_groups
    for width in (0.25, 0.5, 1.0):
        counts = dict(zip(exits.channel_groups, exits.channels_for(width)))
        assert counts["expand1"] == 2 * counts["c1"]
        assert ({g: counts[g] for g in model.channel_groups}
                == dict(zip(model.channel_groups, model.channels_for(width))))
    # The options are part of the saved model.
    path = tmp_path / "model.keras"
    model.save(path)
    assert keras.models.load_model(path).slim_options == model.slim_options


def test_an_exit_after_the_input_is_named_as_such():
    with pytest.raises(ValueError, match="'images' is the backbone's input"):
        keras_slim.add_exits(_options_backbone(), after=["images"])
