"""Tests for keras_slim.repr: ranking, re-initialisation, the schedule, and
dropped filters being truly out under model.fit, the trainers' loop (with
an exact resume) and MirroredStrategy."""

import json
import pathlib
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_slim
import keras_slim.graph
from keras_slim import compat
from keras_slim import repr as repr_lib
from keras_slim.repr import reinit
from keras_slim.repr import schedule as repr_schedule
from tests.testing import digits

REPO = pathlib.Path(__file__).resolve().parents[1]


def kernel_model(kernels, input_channels):
    """A functional model of unpadded 1x1-or-larger convs with given kernels.

    `kernels` is a list of arrays `(kh, kw, in, out)`; layer `i` is named
    `conv{i}`. The first layer reads `input_channels` channels.
    """
    inputs = keras.Input((8, 8, input_channels))
    x = inputs
    for i, kernel in enumerate(kernels):
        layer = keras.layers.Conv2D(
            kernel.shape[-1], kernel.shape[:2], padding="same",
            use_bias=False, name=f"conv{i}",
        )
        x = layer(x)
        layer.kernel.assign(kernel)
    return keras.Model(inputs, x)


# ------------------------------------------------------------- ranking
def test_orthogonal_filters_score_zero_and_duplicates_score_highest():
    rng = np.random.default_rng(0)
    # Layer 1: 6 orthogonal filters (rows of a random orthogonal matrix).
    q, _ = np.linalg.qr(rng.normal(size=(54, 54)))
    orthogonal = q[:6].T.reshape(3, 3, 6, 6) * 3.0  # scale is irrelevant
    # Layer 2: random filters, filters 2 and 5 the same direction.
    random = rng.normal(size=(1, 1, 6, 6))
    random[..., 5] = -2.0 * random[..., 2]  # |cosine| = 1
    model = kernel_model([rng.normal(size=(3, 3, 1, 6)), orthogonal, random],
                         input_channels=1)
    ranking = repr_lib.rank_filters(model, normalization="paper")
    assert ranking.layer_names == ["conv1", "conv2"]  # the first is excluded
    # Zero up to the kernel's float32 rounding.
    np.testing.assert_allclose(ranking.scores["conv1"], 0.0, atol=1e-7)
    top = ranking.scores["conv2"]
    assert set(np.argsort(top)[-2:]) == {2, 5}
    # The global order starts with the duplicates and ends with conv1.
    assert {ranking.order[0], ranking.order[1]} == {("conv2", 2), ("conv2", 5)}
    assert all(name == "conv1" for name, _ in ranking.order[-6:])
    assert len(ranking) == 12
    # A 1/6 cut-off (2 of 12 filters) drops exactly the duplicates.
    dropped = ranking.select(2 / 12)
    assert list(dropped) == ["conv2"]
    np.testing.assert_array_equal(dropped["conv2"], [2, 5])
    everything = repr_lib.rank_filters(model, exclude_first=False)
    assert everything.layer_names == ["conv0", "conv1", "conv2"]


def test_score_is_the_row_sum_of_abs_gram_minus_identity_over_n():
    # Filters e0, e0 + e1 (45 degrees), e2 in 3-D; one dead filter.
    weights = np.array([[1.0, 0, 0], [1.0, 1.0, 0], [0, 0, 5.0], [0, 0, 0]])
    c = 1 / np.sqrt(2)  # |cosine| of the first two; N = 4
    expected = [c / 4, c / 4, 0.0, repr_lib.ranking.DEAD_FILTER_SCORE]
    np.testing.assert_allclose(
        repr_lib.orthogonality_scores(weights), expected, atol=1e-12
    )


def test_global_ranking_compares_layers_and_norm_rankings_drop_small_first():
    rng = np.random.default_rng(1)
    # conv1: 4 nearly parallel filters (redundant); conv2: orthogonal ones.
    base = rng.normal(size=(1, 1, 4, 1))
    parallel = base + 0.01 * rng.normal(size=(1, 1, 4, 4))
    orthogonal = np.eye(4).reshape(1, 1, 4, 4)
    model = kernel_model([rng.normal(size=(1, 1, 4, 4)), parallel, orthogonal],
                         input_channels=4)
    ranking = repr_lib.rank_filters(model, normalization="paper")
    assert [name for name, _ in ranking.order[:4]] == ["conv1"] * 4
    # min_kept: a layer is never emptied by the global cut-off.
    assert len(ranking.select(0.5)["conv1"]) == 3
    assert len(ranking.select(0.5)["conv2"]) == 1
    # A per-layer cut-off takes the same share of each layer.
    per_layer = ranking.select(0.5, cutoff="per_layer")
    assert {k: len(v) for k, v in per_layer.items()} == {"conv1": 2,
                                                         "conv2": 2}
    # L2: the smallest filters first, across layers.
    scaled = orthogonal * np.array([0.1, 5.0, 5.0, 5.0])
    model = kernel_model([rng.normal(size=(1, 1, 4, 4)), parallel, scaled],
                         input_channels=4)
    l2 = repr_lib.rank_filters(model, "l2")
    assert l2.order[0] == ("conv2", 0)
    np.testing.assert_allclose(l2.scores["conv2"], [0.1, 5, 5, 5])
    l1 = repr_lib.rank_filters(model, "l1")
    np.testing.assert_allclose(
        l1.scores["conv1"], np.abs(parallel).reshape(4, 4).sum(0)
    )


def test_slim_layers_rank_like_the_stock_model():
    base = keras_slim.models.lenet_3c1l(
        input_shape=(8, 8, 1), n=8, padding="same", slimmable=False
    )
    slim = keras_slim.slim(base, width_range=(0.25, 1.0))
    for layer in slim.network.layers:
        if layer.weights:
            for ours, theirs in zip(layer.weights,
                                    base.get_layer(layer.name).weights):
                ours.assign(theirs)
    stock, ours = repr_lib.rank_filters(base), repr_lib.rank_filters(slim)
    assert ours.layer_names == stock.layer_names == ["conv2", "conv3"]
    assert ours.order == stock.order
    for name in stock.layer_names:
        np.testing.assert_allclose(ours.scores[name], stock.scores[name])


# -------------------------------------------------------- re-init math
def test_orthogonal_directions_modes():
    rng = np.random.default_rng(2)
    kept, previous = rng.normal(size=(5, 20)), rng.normal(size=(3, 20))
    new, mode = reinit.orthogonal_directions(kept, 3, previous, rng)
    assert mode == reinit.KEPT_AND_PREVIOUS
    assert repr_lib.max_abs_cosine(new, kept) < 1e-12
    assert repr_lib.max_abs_cosine(new, previous) < 1e-12
    np.testing.assert_allclose(new @ new.T, np.eye(3), atol=1e-12)
    # No room for the previous values: orthogonal to the kept ones only.
    new, mode = reinit.orthogonal_directions(
        kept[:, :10], 3, previous[:, :10], rng)
    assert mode == reinit.KEPT
    assert repr_lib.max_abs_cosine(new, kept[:, :10]) < 1e-12
    # Dependent kept filters leave a null space despite their number.
    dependent = np.repeat(kept[:2, :6], 4, axis=0)  # 8 rows of rank 2
    new, mode = reinit.orthogonal_directions(dependent, 3, None, rng)
    assert mode == reinit.KEPT
    assert repr_lib.max_abs_cosine(new, dependent) < 1e-12
    # Too many filters for the fan-in: the least-seen directions.
    square = rng.normal(size=(6, 6))
    new, mode = reinit.orthogonal_directions(square[:4], 3, None, rng)
    assert mode == reinit.CLOSEST
    np.testing.assert_allclose(new @ new.T, np.eye(3), atol=1e-12)
    singular = np.linalg.svd(square[:4], compute_uv=False)
    # Two null-space directions (response 0) and the smallest singular one.
    np.testing.assert_allclose(
        np.sort(np.linalg.norm(square[:4] @ new.T, axis=0)),
        [0.0, 0.0, singular[-1]], atol=1e-10,
    )


# ------------------------------------------------------------ schedule
def test_schedule_events_windows_and_errors():
    schedule = repr_lib.RePrSchedule(s1=3, s2=2, cycles=2)
    assert [(e.step, e.kind, e.cycle) for e in schedule.events] == [
        (3, "drop", 0), (5, "reinit", 0), (8, "drop", 1), (10, "reinit", 1)]
    assert schedule.drop_windows == [(3, 5), (8, 10)]
    assert [schedule.in_sub_network(s) for s in range(11)] == [
        False, False, False, True, True, False, False, False, True, True,
        False]
    assert schedule.next_event_step(3) == 5 and schedule.next_event_step(10) is None
    assert repr_lib.RePrSchedule.from_epochs(20, 10, 3, 703).events[0].step == 14060
    later = repr_lib.RePrSchedule(s1=3, s2=2, cycles=1, start=100)
    assert [(e.step, e.kind) for e in later.events] == [
        (103, "drop"), (105, "reinit")]
    assert later.total_steps == 105 and later.in_sub_network(104)
    # The tail after the last re-initialisation is a share of RePr's run
    # (from its start), not of the steps trained before it.
    assert repr_schedule.check_run(later, 115, start_step=100) == []
    assert "leaves 5 of the run's 10 steps" in repr_schedule.check_run(
        later, 110, start_step=100, min_tail_fraction=0.6)[0]
    for kwargs, match in [
        ({"s1": 0, "s2": 1, "cycles": 1}, "S1 must be an integer >= 1"),
        ({"s1": 1, "s2": 0, "cycles": 1}, "S2 must be an integer >= 1"),
        ({"s1": 1, "s2": 1, "cycles": 0}, "cycles must be an integer >= 1"),
        ({"s1": 1.5, "s2": 1, "cycles": 1}, "S1 must be an integer"),
        ({"s1": 1, "s2": 1, "cycles": 1, "start": -1},
         "start must be an integer >= 0"),
    ]:
        with pytest.raises(ValueError, match=match):
            repr_lib.RePrSchedule(**kwargs)


# -------------------------------------------------------- model.fit
def bn_and_bias_net():
    """conv0 (excluded) -> conv1 + BN (no bias) -> conv2 (bias, ReLU)."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv0")(inputs)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False,
                            name="conv1")(x)
    x = keras.layers.BatchNormalization(momentum=0.5, name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu",
                            name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def test_conv_bn_pairs_come_from_the_graph_not_from_past_calls():
    """The BN after each conv is found in a fresh trace of the model:
    profile() calling every layer again must not hide it, a SlimmableModel's
    network is searched, and a shared BN or a conv feeding two layers gets
    none."""
    def pairs(model):
        controller = repr_lib.RePrController(model, drop_fraction=0.3)
        return {u.name: u.bn.name if u.bn is not None else None
                for u in controller.units}

    model = bn_and_bias_net()
    model.compile(keras.optimizers.Adam(), "mse")
    keras_slim.profile(model)  # a second call of conv1 and bn1
    assert pairs(model) == {"conv1": "bn1", "conv2": None}
    # Tracing a compiled model builds no second optimizer.
    assert not keras_slim.graph.trace(model)[1].compiled
    slim = keras_slim.slim(bn_and_bias_net(), width_range=(0.5, 1.0))
    assert pairs(slim) == {"conv1": "bn1", "conv2": None}

    inputs = keras.Input((8, 8, 2))
    shared = keras.layers.BatchNormalization(name="shared")
    x = keras.layers.Conv2D(2, 1, name="first")(inputs)
    a = shared(keras.layers.Conv2D(2, 1, name="a")(x))
    b = shared(keras.layers.Conv2D(2, 1, name="b")(a))
    forked = keras.layers.Conv2D(2, 1, name="forked")(b)
    y = keras.layers.Add()([keras.layers.BatchNormalization()(forked),
                            keras.layers.ReLU()(forked)])
    assert pairs(keras.Model(inputs, y)) == {
        "a": None, "b": None, "forked": None}


class Recorder(keras.callbacks.Callback):
    """Weights, outputs and slots after `t` steps (and the events due then:
    it runs after `RePrCallback`, which fires them at batch begin)."""

    def __init__(self, probe_x):
        super().__init__()
        self.values = {}
        self.probe_x = probe_x

    def on_train_batch_begin(self, batch, logs=None):
        self.record()

    def on_train_end(self, logs=None):
        self.record()

    def record(self):
        model = self.model
        step = int(model.optimizer.iterations.numpy())
        record = {v.path: v.numpy().copy() for v in model.weights}
        probe = keras.Model(model.input, [
            model.get_layer(n).output for n in ("conv1", "bn1", "conv2")])
        record["inference"] = [o.numpy() for o in probe(self.probe_x)]
        saved = [v.numpy() for v in model.weights]
        record["training"] = [o.numpy() for o in probe(self.probe_x,
                                                       training=True)]
        for variable, value in zip(model.weights, saved):
            variable.assign(value)  # undo the probe's BN update
        record["slots"] = {
            v.path: [s.numpy().copy() for _, s in compat.optimizer_slots(
                model.optimizer, v)]
            for v in model.trainable_variables
        }
        self.values[step] = record


OPTIMIZERS = {
    "sgd_momentum_decay": lambda: keras.optimizers.SGD(
        0.05, momentum=0.9, weight_decay=0.05),
    "adam_decay": lambda: keras.optimizers.Adam(0.01, weight_decay=0.05),
}


@pytest.mark.parametrize("bn_mode", ["paper", "preserve"])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_dropped_filters_are_truly_out_then_reinitialised(optimizer, bn_mode):
    x, y = digits(256)
    model = bn_and_bias_net()
    model.compile(OPTIMIZERS[optimizer](),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    paper = bn_mode == "paper"
    callback = repr_lib.RePrCallback(3, 4, 1, 0.25, unit="steps", verbose=0,
                                     **(repr_lib.PAPER if paper else {}))
    recorder = Recorder(x[:16])
    model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0,
              callbacks=[callback, recorder])
    controller = callback.controller
    # The schedule fired after steps 3 and 7, nothing else.
    assert [(h["step"], h["event"]) for h in controller.history] == [
        (3, "drop"), (7, "reinit")]
    dropped = controller.history[0]["dropped"]
    assert sum(len(v) for v in dropped.values()) == 4  # 25% of 16
    values = recorder.values

    def entries(step, path, idx):
        return values[step][path][..., idx]

    names = {"conv1": ["conv1/kernel", "bn1/gamma", "bn1/beta",
                       "bn1/moving_mean", "bn1/moving_variance"],
             "conv2": ["conv2/kernel", "conv2/bias"]}
    output_index = {"conv1": (0, 1), "conv2": (2,)}
    for layer, idx in dropped.items():
        for path in names[layer]:
            for step in (4, 5, 6):  # S2 steps after the drop
                np.testing.assert_array_equal(
                    entries(step, path, idx), entries(3, path, idx),
                    err_msg=f"{path} moved at step {step}")
            if path == "bn1/beta" and not paper:
                # Preserved: the channel outputs its offset (its mean).
                held = controller.units[0].held_offset.numpy()[idx]
                np.testing.assert_array_equal(entries(3, path, idx), held)
                assert np.all(held != 0.0)
            elif "moving" not in path:
                assert np.all(entries(3, path, idx) == 0.0), path
        kept = np.setdiff1d(np.arange(8), idx)
        kernel = f"{layer}/kernel"
        assert not np.array_equal(entries(6, kernel, kept),
                                  entries(3, kernel, kept))
        for step in (3, 6):
            for mode in ("inference", "training"):
                for out in output_index[layer]:
                    got = values[step][mode][out][..., idx]
                    expected = 0.0
                    if out == 1 and not paper:  # bn1: its held offset
                        expected = np.broadcast_to(
                            entries(3, "bn1/beta", idx), got.shape)
                    np.testing.assert_allclose(got, expected, atol=1e-6,
                                               err_msg=f"{layer} {mode}")
                    assert np.any(values[step][mode][out][..., kept] != 0)
    if "conv1" in dropped:
        kept_stats = np.setdiff1d(np.arange(8), dropped["conv1"])
        assert not np.array_equal(
            entries(6, "bn1/moving_mean", kept_stats),
            entries(3, "bn1/moving_mean", kept_stats))

    # Re-initialised after step 7: orthogonal to the kept filters and to
    # their old values, at the initializer's scale; bias/BN reset; slots 0.
    record = controller.history[1]
    for layer, idx in dropped.items():
        assert record["modes"][layer] == reinit.KEPT_AND_PREVIOUS
        unit = next(u for u in controller.units if u.name == layer)
        kernel = values[7][f"{layer}/kernel"].reshape(-1, 8).T
        kept = np.setdiff1d(np.arange(8), idx)
        previous = unit.previous_kernel.numpy().reshape(-1, 8).T[idx]
        assert np.all(np.linalg.norm(previous, axis=1) > 0)
        assert repr_lib.max_abs_cosine(kernel[idx], kernel[kept]) < 1e-5
        assert repr_lib.max_abs_cosine(kernel[idx], previous) < 1e-5
        fan_in, fan_out = kernel.shape[1], 8 * 9
        glorot_norm = np.sqrt(fan_in * 2.0 / (fan_in + fan_out))
        norms = np.linalg.norm(kernel[idx], axis=1)
        if paper or layer == "conv2":  # a fresh filter's length
            assert np.all((norms > 0.5 * glorot_norm)
                          & (norms < 1.5 * glorot_norm))
        else:  # before a BN: the kept filters' median length
            np.testing.assert_allclose(
                norms, np.median(np.linalg.norm(kernel[kept], axis=1)),
                rtol=1e-5)
        if layer == "conv1" and paper:
            np.testing.assert_array_equal(values[7]["bn1/gamma"][idx], 1.0)
            np.testing.assert_array_equal(values[7]["bn1/beta"][idx], 0.0)
            np.testing.assert_array_equal(
                values[7]["bn1/moving_mean"][idx], 0.0)
            np.testing.assert_array_equal(
                values[7]["bn1/moving_variance"][idx], 1.0)
        elif layer == "conv1":
            # At its layer's scale, its offset kept, its variance estimated
            # from the kept filters' variance per squared norm.
            gamma = values[7]["bn1/gamma"]
            np.testing.assert_allclose(
                gamma[idx], np.median(np.abs(gamma[kept])), rtol=1e-6)
            np.testing.assert_array_equal(values[7]["bn1/beta"][idx],
                                          values[6]["bn1/beta"][idx])
            np.testing.assert_array_equal(
                values[7]["bn1/moving_mean"][idx], 0.0)
            squared = np.sum(kernel**2, axis=1)
            variance = values[7]["bn1/moving_variance"]
            np.testing.assert_allclose(
                variance[idx],
                np.median(variance[kept] / squared[kept]) * squared[idx],
                rtol=1e-4)
        else:
            np.testing.assert_array_equal(values[7]["conv2/bias"][idx], 0.0)
        for path in names[layer]:
            if "moving" in path:
                continue
            slots = values[7]["slots"][path]
            assert len(slots) == (1 if optimizer.startswith("sgd") else 2)
            for slot in slots:
                assert np.all(slot[..., idx] == 0.0), path
                if path != "bn1/beta" or paper:
                    assert np.any(values[6]["slots"][path][0][..., idx] != 0)
        # ... and they train again afterwards.
        assert not np.array_equal(entries(16, f"{layer}/kernel", idx),
                                  entries(7, f"{layer}/kernel", idx))
    assert all(u.mask.numpy().min() == 1.0 for u in controller.units)
    # fit runs the model's own train step again after the callback.
    assert "train_step" not in model.__dict__ and model.train_function is None


def test_hold_runs_inside_multi_step_executions():
    x, y = digits(320)
    model = bn_and_bias_net()
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=2)
    callback = repr_lib.RePrCallback(4, 4, 1, 0.25, unit="steps", verbose=0)
    recorder = Recorder(x[:4])
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0,
              callbacks=[callback, recorder])
    assert sorted(recorder.values) == [0, 2, 4, 6, 8, 10]
    assert [h["step"] for h in callback.controller.history] == [4, 8]
    for layer, idx in callback.controller.history[0]["dropped"].items():
        path = f"{layer}/kernel"
        # Step 5 moved them (momentum), the hold inside the execution put
        # them back before step 6 ended.
        np.testing.assert_array_equal(recorder.values[6][path][..., idx], 0.0)
    # An event between two executions runs at the next one, said.
    misaligned = repr_lib.RePrCallback(3, 4, 1, 0.25, unit="steps",
                                       verbose=0, schedule_check="off")
    with pytest.warns(UserWarning, match="1 step\\(s\\) after its schedule"):
        model.fit(x, y, batch_size=32, epochs=1, verbose=0,
                  callbacks=[misaligned])
    assert [(h["step"], h.get("late")) for h in
            misaligned.controller.history] == [(14, 1), (18, 1)]


def test_closest_fallback_warns_once_when_filters_exceed_fan_in():
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(3, 1, name="first")(inputs)
    x = keras.layers.Conv2D(8, 1, use_bias=False, name="wide")(x)  # fan-in 3
    model = keras.Model(inputs, x)
    controller = repr_lib.RePrController(
        model, repr_lib.RePrSchedule(1, 1, 2), drop_fraction=0.25,
        skip_overcomplete=False)
    for cycle in range(2):
        controller.drop(cycle)
        dropped = controller.units[0].dropped()
        assert len(dropped) == 2
        if cycle == 0:
            with pytest.warns(UserWarning, match="closest to orthogonal"):
                record = controller.reinitialize(cycle)
        else:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                record = controller.reinitialize(cycle)
            # Said once, not again.
            assert not [w for w in caught if "orthogonal" in str(w.message)]
        assert record["modes"] == {"wide": reinit.CLOSEST}
        kernel = model.get_layer("wide").kernel.numpy().reshape(3, 8).T
        new = kernel[dropped] / np.linalg.norm(kernel[dropped], axis=1,
                                               keepdims=True)
        np.testing.assert_allclose(new @ new.T, np.eye(2), atol=1e-6)


# ------------------------------------------------------------- errors
def test_clear_errors():
    for value in (0, 1, 1.5, -0.1, "0.3", True):
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            repr_lib.RePrCallback(2, 2, 1, value)
    for args, match in [((0, 2, 1), "S1"), ((2, 0, 1), "S2"),
                        ((2, 2, 0), "cycles"), ((2.5, 2, 1), "S1")]:
        with pytest.raises(ValueError, match=match + " must be an integer"):
            repr_lib.RePrCallback(*args, 0.3)
    with pytest.raises(ValueError, match="Unknown ranking method 'cosine'"):
        repr_lib.RePrCallback(2, 2, 1, 0.3, ranking="cosine")
    with pytest.raises(ValueError, match="Unknown cutoff 'layer'"):
        repr_lib.RePrCallback(2, 2, 1, 0.3, cutoff="layer")
    with pytest.raises(ValueError, match="'epochs' or 'steps'"):
        repr_lib.RePrCallback(2, 2, 1, 0.3, unit="batches")

    dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="no convolution to rank"):
        repr_lib.rank_filters(dense)
    one_conv = keras.Sequential([keras.Input((4, 4, 1)),
                                 keras.layers.Conv2D(2, 1)])
    with pytest.raises(ValueError, match="besides its first one"):
        repr_lib.RePrController(one_conv, drop_fraction=0.3)

    def net(*middle):
        inputs = keras.Input((4, 4, 2))
        x = keras.layers.Conv2D(2, 1, name="first")(inputs)
        for layer in middle:
            x = layer(x)
        return keras.Model(inputs, x)

    with pytest.raises(ValueError, match="'gate'.*maps 0 to 0.5"):
        repr_lib.RePrController(net(keras.layers.Conv2D(
            2, 1, activation="sigmoid", name="gate")), drop_fraction=0.3)
    with pytest.raises(ValueError, match="'c'.*renorm"):
        repr_lib.RePrController(net(
            keras.layers.Conv2D(2, 1, name="c"),
            keras.layers.BatchNormalization(renorm=True)), drop_fraction=0.3)
    lora = net(keras.layers.Conv2D(2, 1, name="lora"))
    lora.get_layer("lora").enable_lora(1)
    with pytest.raises(ValueError, match="'lora'.*LoRA"):
        repr_lib.RePrController(lora, drop_fraction=0.3)
    depthwise = net(keras.layers.DepthwiseConv2D(1, name="dw"))
    with pytest.raises(ValueError, match="'dw' cannot be ranked.*depthwise"):
        repr_lib.rank_filters(depthwise, layers=["dw"])
    grouped = net(keras.layers.Conv2D(2, 1, groups=2, name="grouped"))
    with pytest.raises(ValueError, match="'grouped'.*grouped convolution"):
        repr_lib.rank_filters(grouped)


# ------------------------------------------- trainers, resume, mirrored
LOOP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from trainers import distribute
    distribute.configure_cpu_devices(2)  # before any TensorFlow op
    import numpy as np
    import tensorflow as tf
    from trainers import loop
    from tests.test_trainers import checkpoint_values

    root = sys.argv[1]
    base = dict(
        method="repr", model="tests.test_trainers:tiny_cnn",
        dataset="digits", batch_size=64, epochs=5, lr_schedule="constant",
        learning_rate=0.05, repr_s1=1, repr_s2=1, repr_cycles=2,
        repr_drop_fraction=0.25, steps_per_loop=4, checkpoint_every_steps=10,
        deterministic=True, verbose=0, calibration_examples=64, seed=1,
    )
    full = loop.train(loop.TrainConfig(**base, model_dir=root + "/full"))
    # The same run, stopped in the middle of the first S2, then resumed.
    loop.train(loop.TrainConfig(**base, train_steps=35,
                                model_dir=root + "/resumed"))
    mid = checkpoint_values(root + "/resumed/ckpt-35")
    resumed = loop.train(loop.TrainConfig(**base,
                                          model_dir=root + "/resumed"))
    a = checkpoint_values(tf.train.latest_checkpoint(root + "/full"))
    b = checkpoint_values(tf.train.latest_checkpoint(root + "/resumed"))
    state = sorted(k for k in a if k.startswith("method/"))
    mirrored = distribute.get_strategy("mirrored")
    dist = loop.train(loop.TrainConfig(**{**base, "epochs": 3},
                                       model_dir=root + "/mirrored"),
                      mirrored)
    print(json.dumps({
        "same_keys": sorted(a) == sorted(b),
        "differences": [k for k in a if not np.array_equal(a[k], b[k])],
        "state_keys": state,
        "events_done": int(a["method/events_done/.ATTRIBUTES/VARIABLE_VALUE"]),
        "mid_events_done": int(
            mid["method/events_done/.ATTRIBUTES/VARIABLE_VALUE"]),
        "mid_dropped": int(sum((mid[k] == 0).sum() for k in mid
                               if k.startswith("method/masks/"))),
        "steps": [full["steps"], resumed["steps"]],
        "accuracy": full["widths"][0]["accuracy"],
        "mirrored": [dist["num_replicas"], dist["steps"]],
    }))
    """
)


def test_trainers_repr_resumes_exactly_and_runs_mirrored(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", LOOP_SCRIPT, str(tmp_path)], cwd=REPO,
        capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO),
             "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["steps"] == [110, 110]  # 22 steps per epoch, 5 epochs
    assert report["same_keys"] and report["differences"] == []
    assert any("masks" in k for k in report["state_keys"])
    assert any("previous_kernels" in k for k in report["state_keys"])
    assert report["events_done"] == 4
    # Stopped at 35: after the drop at 22, before the reinit at 44.
    assert report["mid_events_done"] == 1 and report["mid_dropped"] == 4  # 25% of 16
    assert report["accuracy"] > 0.3
    assert report["mirrored"] == [2, 66]


MIRRORED_FIT_SCRIPT = textwrap.dedent(
    """
    import json, os
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    from keras_slim import repr as repr_lib
    from tests.testing import digits

    keras.utils.set_random_seed(0)
    x, y = digits(256)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        inputs = keras.Input((8, 8, 1))
        h = keras.layers.Conv2D(4, 3, padding="same", name="c0")(inputs)
        h = keras.layers.Conv2D(8, 3, padding="same", name="c1")(h)
        h = keras.layers.BatchNormalization(name="b1")(h)
        h = keras.layers.ReLU()(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
        model = keras.Model(inputs, keras.layers.Dense(10)(h))
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                      keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True))
    callback = repr_lib.RePrCallback(2, 3, 1, 0.4, unit="steps", verbose=0)
    seen = {}

    class Spy(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            step = int(model.optimizer.iterations.numpy())
            seen[step] = {
                name: [v.numpy().tolist() for v in variable.value.values]
                for name, variable in [
                    ("kernel", model.get_layer("c1").kernel),
                    ("bias", model.get_layer("c1").bias),
                    ("mean", model.get_layer("b1").moving_mean)]}

    model.fit(x, y, batch_size=32, epochs=1, callbacks=[callback, Spy()],
              verbose=0)
    dropped = callback.controller.history[0]["dropped"]["c1"]
    out = {"dropped": dropped, "history": [
        h["step"] for h in callback.controller.history]}
    for step in (2, 3, 4, 5):
        replicas = {k: [np.asarray(r)[..., dropped] for r in v]
                    for k, v in seen[step].items()}
        out[step] = {
            "replicas_equal": all(np.array_equal(r[0], r[1])
                                  for r in replicas.values()),
            "kernel_max": float(np.abs(replicas["kernel"][0]).max()),
            "mean": replicas["mean"][0].tolist(),
        }
    print(json.dumps(out))
    """
)


def test_fit_under_mirrored_strategy_holds_dropped_filters():
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED_FIT_SCRIPT], cwd=REPO,
        capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO),
             "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["history"] == [2, 5] and len(report["dropped"]) == 3  # 0.4 * 8
    for step in ("2", "3", "4"):
        assert report[step]["replicas_equal"]
        assert report[step]["kernel_max"] == 0.0
        assert report[step]["mean"] == report["2"]["mean"]  # no drift
    assert report["5"]["kernel_max"] > 0  # re-initialised
    assert report["5"]["replicas_equal"]


# ------------------------------------------------- fair ranking (issue 18)
def random_conv_model(specs, seed=0):
    """`specs`: list of (kernel_size, in_channels, filters) after a stem;
    layers are named `l{i}`; kernels random normal (He-like)."""
    rng = np.random.default_rng(seed)
    inputs = keras.Input((8, 8, specs[0][1]))
    x = keras.layers.Conv2D(specs[0][1], 1, name="stem")(inputs)
    layers = []
    for i, (k, cin, filters) in enumerate(specs):
        if x.shape[-1] != cin:
            x = keras.layers.Conv2D(cin, 1, name=f"adapt{i}")(x)
        layer = keras.layers.Conv2D(filters, k, padding="same",
                                    use_bias=False, name=f"l{i}")
        x = layer(x)
        layers.append(layer)
    model = keras.Model(inputs, x)
    for layer in layers:
        layer.kernel.assign(rng.normal(size=layer.kernel.shape))
    return model, [layer.name for layer in layers]


def test_chance_scores_of_random_filters_do_not_depend_on_fan_in():
    """Random (unrelated) filters score alike whatever their fan-in and
    count, so one global cut-off takes about the same share of every
    layer; the paper's score takes the layers with the smallest fan-in."""
    specs = [(1, 16, 16), (3, 16, 16), (3, 16, 64), (3, 64, 64)]
    fan_ins = [16, 144, 144, 576]
    shares = {"chance": [], "paper": []}
    means = []
    for seed in range(6):
        model, names = random_conv_model(specs, seed)
        for normalization in ("chance", "paper"):
            ranking = repr_lib.rank_filters(model, layers=names,
                                            normalization=normalization)
            assert ranking.fan_in == dict(zip(names, fan_ins))
            dropped = ranking.select(0.3)
            shares[normalization].append(
                [len(dropped.get(n, ())) / len(ranking.scores[n])
                 for n in names])
            if normalization == "chance":
                means.append([ranking.scores[n] for n in names])
    # Standard errors above chance: about N(0, 1) in every layer.
    for i, name in enumerate(names):
        pooled = np.concatenate([m[i] for m in means])
        assert abs(np.mean(pooled)) < 0.3, (name, np.mean(pooled))
        assert 0.7 < np.std(pooled) < 1.3, (name, np.std(pooled))
    chance = np.mean(shares["chance"], axis=0)
    assert np.all((chance > 0.18) & (chance < 0.42)), chance
    paper = np.mean(shares["paper"], axis=0)
    assert paper[0] > 0.9 and paper[3] < 0.05, paper  # ranked by fan-in
    # The expectation itself: exact values and the large-d approximation.
    assert repr_lib.chance_overlap(1) == pytest.approx(1.0)
    assert repr_lib.chance_overlap(2) == pytest.approx(2 / np.pi)
    assert repr_lib.chance_overlap(576) == pytest.approx(
        np.sqrt(2 / (np.pi * 576)), rel=2e-3)


def test_chance_scores_still_find_duplicates_and_orthogonal_filters():
    rng = np.random.default_rng(3)
    weights = rng.normal(size=(8, 50))
    weights[5] = -3 * weights[2]  # a duplicate (|cos| = 1)
    weights[7] = 0.0  # dead
    scores = repr_lib.orthogonality_scores(weights, "chance")
    assert scores[7] == scores.max()
    assert set(np.argsort(scores)[-3:-1]) == {2, 5}
    q, _ = np.linalg.qr(rng.normal(size=(50, 50)))
    orthogonal = repr_lib.orthogonality_scores(q[:8], "chance")
    chance = repr_lib.chance_overlap(50)
    spread = np.sqrt((1 / 50 - chance**2) / 7)
    np.testing.assert_allclose(orthogonal, -chance / spread, atol=1e-6)
    with pytest.raises(ValueError, match="Unknown normalization 'z'"):
        repr_lib.orthogonality_scores(weights, "z")


def test_ceiling_overcomplete_layers_and_summary():
    rng = np.random.default_rng(4)
    # conv1: four near-duplicates among 8 filters (very redundant);
    # conv2: random; wide: 8 filters for a fan-in of 4 (overcomplete).
    base = rng.normal(size=(1, 1, 4, 1))
    near = np.concatenate([base + 0.01 * rng.normal(size=(1, 1, 4, 6)),
                           rng.normal(size=(1, 1, 4, 2))], axis=-1)
    near = np.tile(near, (3, 3, 1, 1)) + 0.01 * rng.normal(size=(3, 3, 4, 8))
    model = kernel_model([rng.normal(size=(1, 1, 4, 4)), near,
                          rng.normal(size=(3, 3, 8, 4)),
                          rng.normal(size=(1, 1, 4, 8))], input_channels=4)
    ranking = repr_lib.rank_filters(model)
    assert ranking.layer_names == ["conv1", "conv2"]
    assert "8 filters for a fan-in of 4" in ranking.skipped["conv3"]
    free = ranking.select(0.5)
    assert len(free["conv1"]) == 6  # the global cut-off empties conv1 ...
    capped = ranking.select(0.5, max_drop_per_layer=0.25)
    # ... the ceiling keeps 6 of its 8 and takes the rest elsewhere.
    assert len(capped["conv1"]) == 2 and len(capped["conv2"]) == 1
    assert sum(len(v) for v in capped.values()) == 3  # 0.25 cap on conv2
    text = ranking.summary(0.5, max_drop_per_layer=0.25)
    assert "conv1" in text and "  2 (25%)" in text and "  1 (25%)" in text
    assert "conv3  not ranked: 8 filters for a fan-in of 4" in text
    assert "dropped 3 of 12 ranked filters" in text
    everything = repr_lib.rank_filters(model, skip_overcomplete=False)
    assert everything.layer_names == ["conv1", "conv2", "conv3"]
    for bad in (0, 1, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match="max_drop_per_layer must be"):
            ranking.select(0.3, max_drop_per_layer=bad)


# ------------------------------------- schedules users cannot get wrong
def tiny_bn_model(optimizer=None):
    model = bn_and_bias_net()
    model.compile(optimizer or keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _messages(caught, text):
    return [str(w.message) for w in caught if text in str(w.message)]


def test_fit_ending_at_the_last_reinit_brings_the_filters_back():
    """Issue 17.4: fit of exactly cycles * (s1 + s2) steps used to return
    with the dropped filters zeroed (the re-init waited for a next fit)."""
    x, y = digits(256)  # 8 steps per epoch at batch 32
    model = tiny_bn_model(keras.optimizers.SGD(0.05))
    callback = repr_lib.RePrCallback(1, 1, 2, 0.25, verbose=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=32, epochs=4, verbose=0,
                  callbacks=[callback])
    history = callback.controller.history
    assert [(h["step"], h["event"]) for h in history] == [
        (8, "drop"), (16, "reinit"), (24, "drop"), (32, "reinit")]
    assert not history[-1].get("early")
    for unit in callback.controller.units:
        assert unit.dropped().size == 0
        columns = unit.kernel.numpy().reshape(-1, unit.filters)
        assert np.all(np.linalg.norm(columns, axis=0) > 0)
    # ... and the run was told that the new filters get no training.
    assert _messages(caught, "leaves 0 of the run's 32 steps (0%)")


def test_schedule_longer_than_fit_warns_and_stopping_in_s2_reinitialises():
    x, y = digits(256)
    model = tiny_bn_model()
    callback = repr_lib.RePrCallback(1, 2, 3, 0.25, verbose=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=32, epochs=2, verbose=0,
                  callbacks=[callback])
    # Planned: drop 8, reinit 24, ... (72); fit ends after 16, in S2.
    assert _messages(caught, "does not fit a run that ends after step 16")
    early = _messages(caught, "Training stopped after step 16")
    assert early and "due after step 24" in early[0]
    assert [(h["step"], h["event"], h["early"]) for h in
            callback.controller.history if "early" in h] == [
        (16, "reinit", True)]
    assert all(u.dropped().size == 0 for u in callback.controller.units)
    # A schedule entirely after the end: said, nothing happens.
    later = repr_lib.RePrCallback(5, 5, 1, 0.25, verbose=0)
    with pytest.warns(UserWarning, match="2 of its events"):
        tiny_bn_model().fit(x, y, batch_size=32, epochs=1, verbose=0,
                            callbacks=[later])
    assert later.controller.history == []
    # Refused on request, before any step.
    strict = repr_lib.RePrCallback(1, 2, 3, 0.25, verbose=0,
                                   schedule_check="raise")
    model = tiny_bn_model()
    with pytest.raises(ValueError, match="does not fit a run"):
        model.fit(x, y, batch_size=32, epochs=2, verbose=0,
                  callbacks=[strict])
    assert int(model.optimizer.iterations.numpy()) == 0
    assert "train_step" not in model.__dict__ and model.train_function is None
    with pytest.raises(ValueError, match="Unknown schedule_check 'loud'"):
        repr_lib.RePrCallback(1, 1, 1, 0.3, schedule_check="loud")


def test_events_at_a_small_learning_rate_are_reported():
    x, y = digits(256)
    # Cosine decay to zero over 40 of the 48 steps: the last re-init
    # comes at 10% of the peak, the events before at 35% or more.
    schedule = keras.optimizers.schedules.CosineDecay(0.1, 40)
    model = tiny_bn_model(keras.optimizers.SGD(schedule))
    callback = repr_lib.RePrCallback(1, 1, 2, 0.25, verbose=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=32, epochs=6, verbose=0,
                  callbacks=[callback])
    found = _messages(caught, "at a learning rate below 20% of the run's "
                      "peak")
    assert len(found) == 1
    assert "reinit of cycle 2 after step 32" in found[0]
    assert "drop of cycle 1" not in found[0]
    rates = [h["learning_rate"] for h in callback.controller.history]
    np.testing.assert_allclose(
        rates, [float(schedule(s)) for s in (8, 16, 24, 32)], rtol=1e-5)
    # The paper's own schedule passes: constant rate halved every 25k
    # steps, 100 epochs of 703 steps, S1 = 20 and S2 = 10 epochs.
    paper = repr_lib.RePrSchedule.from_epochs(20, 10, 3, 703)
    rate = keras.optimizers.schedules.ExponentialDecay(0.05, 25000, 0.5,
                                                       staircase=True)
    assert repr_lib.check_run(paper, 70300, rate) == []
    cosine = keras.optimizers.schedules.CosineDecay(0.1, 70300)
    assert len(repr_lib.check_run(paper, 70300, cosine)) == 1


def test_statistics_restart_replaces_stale_bn_statistics():
    """After an event, the BN moving statistics are those of the batches
    trained since (bias-corrected), not 99% those of the network before."""
    x, y = digits(64)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, padding="same", name="c0")(inputs)
    h = keras.layers.Conv2D(8, 3, padding="same", use_bias=False,
                            name="c1")(h)
    h = keras.layers.BatchNormalization(momentum=0.99, name="b1")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Conv2D(8, 3, padding="same", use_bias=False,
                            name="c2")(h)
    h = keras.layers.BatchNormalization(momentum=0.99, name="b2")(h)
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(h))
    model = keras.Model(inputs, keras.layers.Dense(10)(h))
    model.compile(keras.optimizers.SGD(0.0),  # weights frozen in effect
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = repr_lib.RePrCallback(2, 3, 1, 0.4, unit="steps", verbose=0)
    probe = keras.Model(model.input, [model.get_layer("b2").input])
    seen = {}

    class Spy(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen[int(model.optimizer.iterations.numpy())] = (
                model.get_layer("b2").moving_mean.numpy().copy())

    # The same 64 images every step: the batch statistics after the drop
    # are one fixed value, which a restarted average matches at once.
    model.fit(x, y, batch_size=64, epochs=12, verbose=0, shuffle=False,
              callbacks=[callback, Spy()])
    assert [h["step"] for h in callback.controller.history] == [2, 5]
    batch_mean = np.mean(probe(x, training=True).numpy(), axis=(0, 1, 2))
    # The drop changed what b2 sees; one step later its statistics are
    # the new batch's (a plain momentum of 0.99 would be 1% of the way).
    # Channels of c2 that are dropped keep their held statistics.
    out = callback.controller.history[0]["dropped"].get("c2", [])
    live = np.setdiff1d(np.arange(8), out)
    np.testing.assert_allclose(seen[3][live], _after_drop_mean(
        model, x, callback)[live], rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(seen[3][out], seen[2][out])
    assert np.abs(seen[2] - seen[3]).max() > 1e-3
    np.testing.assert_allclose(seen[11], batch_mean, rtol=1e-4, atol=1e-6)
    plain = repr_lib.RePrCallback(2, 3, 1, 0.4, unit="steps", verbose=0,
                                  reestimate_bn=False)
    assert plain.reestimate_bn is False


def _after_drop_mean(model, x, callback):
    """b2's batch mean with the filters of the first event dropped."""
    controller = callback.controller
    saved = [v.numpy() for v in model.variables]
    for unit in controller.units:
        unit.drop(controller.history[0]["dropped"].get(unit.name, []))
    probe = keras.Model(model.input, [model.get_layer("b2").input])
    mean = np.mean(probe(x, training=True).numpy(), axis=(0, 1, 2))
    for variable, value in zip(model.variables, saved):
        variable.assign(value)
    for unit in controller.units:
        unit.mask.assign(np.ones(unit.filters, "float32"))
    return mean


def test_calibration_data_gives_exact_statistics_right_at_the_event():
    """With a few training images at hand, inference is right at once:
    every BN's moving statistics equal its batch statistics on them."""
    x, y = digits(128)
    model = tiny_bn_model()
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    controller = repr_lib.RePrController(
        model, repr_lib.RePrSchedule(1, 1, 1), 0.25, calibration_data=x[:64],
        calibration_batches=1, compensate_drop=False)
    controller.update(0)
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    controller.update(1)  # the drop
    probe = keras.Model(model.input, [model.get_layer("bn1").input])
    expected = probe(x[:64], training=True).numpy()
    bn = model.get_layer("bn1")
    live = np.flatnonzero(controller.units[0].mask.numpy() > 0)
    out = controller.units[0].dropped()
    np.testing.assert_allclose(bn.moving_mean.numpy()[live],
                               expected.mean((0, 1, 2))[live], atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy()[live],
                               expected.var((0, 1, 2))[live], rtol=1e-4)
    # The dropped channels keep their held statistics; no weight moved
    # but the dropped entries.
    np.testing.assert_array_equal(bn.moving_mean.numpy()[out],
                                  controller.units[0].held_mean.numpy()[out])
    kernel = model.get_layer("conv2").kernel.numpy()
    kept = controller.units[1].mask.numpy() > 0
    np.testing.assert_array_equal(kernel[..., kept],
                                  before["conv2/kernel"][..., kept])


# ------------------------------------- drops the next layer compensates
def _linear_chain(consumer):
    """conv0 -> conv1 (linear, bias) -> `consumer` path, and conv1's kernel
    with filter 3 = 2 * filter 0 - filter 1 (+ bias 0.5): channel 3 is
    exactly predictable from the others."""
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 3, padding="same", name="conv0")(inputs)
    conv1 = keras.layers.Conv2D(4, 3, padding="same", name="conv1")
    x = conv1(x)
    if consumer == "conv":
        # "valid": with zero padding the constant part is only right
        # away from the border (see `compensate.Consumer.refit`).
        x = keras.layers.Conv2D(5, 3, padding="valid", name="next")(x)
        x = keras.layers.Flatten()(x)
    elif consumer == "flatten_dense":
        x = keras.layers.AveragePooling2D(2)(x)
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dense(5, name="next")(x)
    else:  # global pooling
        x = keras.layers.GlobalAveragePooling2D()(x)
        x = keras.layers.Dense(5, name="next")(x)
    model = keras.Model(inputs, x)
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3, 3, 4)).astype("float32")
    kernel[..., 3] = 2 * kernel[..., 0] - kernel[..., 1]
    bias = np.array([0.1, -0.2, 0.3, 0.0], "float32")
    bias[3] = 2 * bias[0] - bias[1] + 0.5
    conv1.kernel.assign(kernel)
    conv1.bias.assign(bias)
    return model


@pytest.mark.parametrize("consumer", ["conv", "flatten_dense", "global"])
def test_compensated_drop_keeps_a_predictable_channel(consumer):
    """A dropped channel that is a linear function of the kept ones is
    taken over exactly by the next layer (conv, Dense after Flatten, Dense
    after global pooling); the drop itself is unchanged."""
    from keras_slim.repr import compensate

    model = _linear_chain(consumer)
    x = np.random.default_rng(1).normal(size=(32, 6, 6, 2)).astype("float32")
    expected = model(x).numpy()
    found = compensate.consumers(model, [model.get_layer("conv1")])["conv1"]
    assert found.layer is model.get_layer("next")
    before = found.read([x])
    conv1 = model.get_layer("conv1")
    kernel, bias = conv1.kernel.numpy(), conv1.bias.numpy()
    kernel[..., 3] = 0
    bias[3] = 0
    conv1.kernel.assign(kernel)
    conv1.bias.assign(bias)
    dropped = model(x).numpy()
    after = found.read([x])
    # From one batch, without reading every image again.
    np.testing.assert_allclose(found.read_after_drop(before, [3], x[:4]),
                               after, atol=1e-6)
    explained = found.refit(before, after, [3], np.random.default_rng(0))
    assert explained > 0.9999
    scale = np.abs(expected).max()
    assert np.abs(dropped - expected).max() > 0.1 * scale  # the drop hurt
    np.testing.assert_allclose(model(x).numpy(), expected,
                               atol=1e-2 * scale)  # the ridge
    # Only the kept channels' weights and the bias of "next" moved.
    np.testing.assert_array_equal(conv1.kernel.numpy()[..., 3], 0)


def test_find_consumer_says_why_it_cannot_compensate():
    from keras_slim.repr import compensate

    inputs = keras.Input((6, 6, 4))
    a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same", name="b")(a)
    residual = keras.layers.Add()([a, b])
    c = keras.layers.Conv2D(4, 3, padding="same", name="c")(residual)
    d = keras.layers.Conv2D(4, 1, groups=2, name="d")(c)
    e = keras.layers.Conv2D(4, 1, name="e")(d)
    f = keras.layers.Conv2D(6, 1, name="f")(keras.layers.Permute(
        (1, 3, 2))(e))
    shared = keras.layers.Conv2D(6, 1, name="shared")
    g = keras.layers.Conv2D(6, 1, name="g")(inputs)
    h = keras.layers.Conv2D(6, 1, name="h")(inputs)
    lora = keras.layers.Conv2D(2, 1, name="lora")
    i = keras.layers.Conv2D(6, 1, name="i")(inputs)
    outputs = [f, shared(g), shared(h), lora(i)]
    lora.enable_lora(1)
    model = keras.Model(inputs, outputs)
    found = compensate.consumers(
        model, [model.get_layer(n) for n in "acdefgi"])
    assert "shared" in found["g"]
    assert "LoRA" in found["i"]
    assert "residual sum" in found["a"]
    assert "grouped" in found["c"]
    assert isinstance(found["d"], compensate.Consumer)
    assert "Permute" in found["e"] and "may mix channels" in found["e"]
    assert "reaches 0 layers" in found["f"]


def _convnet(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu",
                            name="conv0"),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu",
                            name="conv1"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu",
                            name="conv2"),
        keras.layers.Flatten(),
        keras.layers.Dense(10, name="classifier"),
    ])
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def test_compensated_drop_loses_less_and_keeps_the_filters_out():
    """On trained digits: the same filters dropped, the network with the
    compensated drop stays far closer to its outputs before the drop; the
    dropped filters are still exactly out after training steps."""
    x, y = digits(512)
    model = _convnet()
    model.fit(x, y, batch_size=32, epochs=3, verbose=0)
    weights = model.get_weights()
    reference = model.predict(x, verbose=0)
    errors = {}
    for compensate_drop in (False, True):
        model.set_weights(weights)
        controller = repr_lib.RePrController(
            model, repr_lib.RePrSchedule(1, 4, 1), 0.4,
            calibration_data=x[:256], compensate_drop=compensate_drop)
        record = controller.drop()
        logits = model.predict(x, verbose=0)
        errors[compensate_drop] = np.mean((logits - reference) ** 2)
        if compensate_drop:
            assert set(record["compensated"]) == {
                u.name for u in controller.units if u.dropped().size}
            assert record["compensated"]
            assert all(0.0 <= r <= 1.0 for r in
                       record["compensated"].values())
        else:
            assert record["compensated"] == {}
    # Measured: 7.0 vs 10.7 (accuracy 0.77 vs 0.69 on these images).
    assert errors[True] < 0.8 * errors[False], errors
    # Held out during S2 as without compensation.
    model.train_step = controller.wrap_train_step(model.train_step)
    model.make_train_function(force=True)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    for unit in controller.units:
        out = unit.dropped()
        assert out.size
        np.testing.assert_array_equal(unit.kernel.numpy()[..., out], 0)


def test_compensation_without_calibration_data_warns_once():
    x, y = digits(64)
    model = _convnet()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        controller = repr_lib.RePrController(
            model, repr_lib.RePrSchedule(1, 1, 2), 0.3, compensate_drop=True)
        for step in range(5):
            controller.update(step)
    assert len(_messages(caught, "needs calibration_data")) == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paper = repr_lib.RePrController(
            _convnet(), repr_lib.RePrSchedule(1, 1, 1), 0.3, **repr_lib.PAPER)
        paper.update(1)
    assert not _messages(caught, "needs calibration_data")
    assert repr_lib.PAPER["compensate_drop"] is False
    # Off by default: the defaults need no calibration data.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain = repr_lib.RePrController(
            _convnet(), repr_lib.RePrSchedule(1, 1, 1), 0.3)
        plain.update(1)
    assert not _messages(caught, "needs calibration_data")
    assert plain.history[0]["compensated"] == {}


def test_trainers_flag_compensates_and_refuses_the_paper_with_it():
    from trainers import loop
    from trainers import methods

    x, _ = digits(64)
    both = loop.TrainConfig(method="repr", repr_paper=True,
                            repr_compensate_drop=True)
    with pytest.raises(ValueError, match="not part of the paper's method"):
        methods.repr_controller(both, _convnet(), 10, x[:32])
    config = loop.TrainConfig(method="repr", repr_compensate_drop=True)
    controller = methods.repr_controller(config, _convnet(), 10, x[:32])
    assert controller.compensate_drop and len(controller.calibration) == 1
    plain = methods.repr_controller(loop.TrainConfig(method="repr"),
                                    _convnet(), 10, x[:32])
    assert not plain.compensate_drop


class _StopInS2(keras.callbacks.Callback):
    """Raises during an epoch's end, as Ctrl-C or a failing callback would:
    Keras then skips `on_train_end`."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt


def _zero_filters(callback):
    return {u.name: int(np.sum(np.linalg.norm(
        u.kernel.numpy().reshape(-1, u.filters), axis=0) == 0))
        for u in callback.controller.units}


def _stopped_in_s2(x, y):
    """A model whose fit an exception stopped after step 16, in S2 (drop
    after step 8, re-initialisation due after step 40)."""
    model = tiny_bn_model(keras.optimizers.SGD(0.05))
    callback = repr_lib.RePrCallback(1, 4, 1, 0.25, verbose=0,
                                     schedule_check="off")
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, batch_size=32, epochs=6, verbose=0,
                  callbacks=[callback, _StopInS2()])
    return model, callback


def test_a_fit_stopped_by_an_exception_is_undone_before_the_next_training():
    x, y = digits(256)  # 8 steps per epoch at batch 32
    model, callback = _stopped_in_s2(x, y)
    assert sum(_zero_filters(callback).values()) > 0
    assert "train_step" in model.__dict__
    with pytest.warns(UserWarning, match="stopped without ending"):
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert sum(_zero_filters(callback).values()) == 0
    assert callback.controller.history[-1]["event"] == "reinit"
    assert callback.controller.history[-1]["early"]
    assert "train_step" not in model.__dict__
    assert "make_train_function" not in model.__dict__
    # A later plain fit trains every filter (no hold left in the step).
    before = [u.kernel.numpy().copy() for u in callback.controller.units]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert all(np.all(np.abs(u.kernel.numpy() - b).sum(axis=tuple(range(
        b.ndim - 1))) > 0) for u, b in zip(callback.controller.units, before))


def test_a_stopped_fit_continues_with_its_callback_or_ends_with_finish():
    x, y = digits(256)
    model, callback = _stopped_in_s2(x, y)
    # The same callback again: the window goes on, re-initialised on time.
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.fit(x, y, batch_size=32, epochs=4, verbose=0,
                  callbacks=[callback])
    assert [(h["step"], h["event"]) for h in callback.controller.history] == [
        (8, "drop"), (40, "reinit")]
    assert "train_step" not in model.__dict__
    # finish(): at once, e.g. before evaluating an interrupted model.
    model, callback = _stopped_in_s2(x, y)
    with pytest.warns(UserWarning, match="Training stopped after step 16"):
        record = callback.finish()
    assert record["event"] == "reinit" and record["early"]
    assert sum(_zero_filters(callback).values()) == 0
    assert "train_step" not in model.__dict__
    assert callback.finish() is None  # nothing left to do


def test_a_model_trained_before_starts_its_schedule_at_the_first_fit(
        tmp_path):
    """Fine-tuning with RePr: S1 counts from the fit that adds it, not
    from the optimizer's step 0 (that used to shorten S1 silently, or fail
    once the pre-training was longer than S1)."""
    x, y = digits(256)  # 8 steps per epoch at batch 32
    model = tiny_bn_model(keras.optimizers.SGD(0.05))
    model.fit(x, y, batch_size=32, epochs=3, verbose=0)  # 24 steps
    callback = repr_lib.RePrCallback(1, 1, 2, 0.25, verbose=0,
                                     schedule_check="off")
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[callback])
    model.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=[callback])
    assert [(h["step"], h["event"]) for h in callback.controller.history] == [
        (32, "drop"), (40, "reinit"), (48, "drop"), (56, "reinit")]
    assert not any(h.get("early") for h in callback.controller.history)
    assert int(callback.state.schedule_start.numpy()) == 24
    # The start is part of RePr's state: a restored run keeps it.
    restored = tiny_bn_model(keras.optimizers.SGD(0.05))
    again = repr_lib.RePrCallback(1, 1, 2, 0.25, verbose=0)
    path = tf.train.Checkpoint(repr=callback.state).write(
        str(tmp_path / "repr"))
    tf.train.Checkpoint(repr=again.attach(restored)).read(path).assert_consumed()
    assert int(again.state.schedule_start.numpy()) == 24
    assert [e.step for e in again.schedule(8).events] == [32, 40, 48, 56]
    # A fit refused at its start leaves no start behind.
    strict = repr_lib.RePrCallback(1, 2, 3, 0.25, verbose=0,
                                   schedule_check="raise")
    with pytest.raises(ValueError, match="does not fit a run"):
        model.fit(x, y, batch_size=32, epochs=1, verbose=0,
                  callbacks=[strict])
    assert int(strict.state.schedule_start.numpy()) == -1
    # A fit that ends at a drop's step leaves the drop to the next fit,
    # whose refusal must not have dropped (events run after the check).
    fresh = tiny_bn_model()
    at_drop = repr_lib.RePrCallback(1, 2, 1, 0.25, verbose=0,
                                    schedule_check="off")
    fresh.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[at_drop])
    assert at_drop.controller.history == []  # due after step 8: next fit
    at_drop.schedule_check = "raise"
    with pytest.raises(ValueError, match="does not fit"):
        fresh.fit(x, y, batch_size=32, epochs=1, verbose=0,
                  callbacks=[at_drop])
    assert at_drop.controller.history == []
    assert sum(_zero_filters(at_drop).values()) == 0
    # ... also when the callback cannot build its schedule.
    unknown = tf.data.Dataset.from_generator(
        lambda: iter([(x[:32], y[:32])] * 4),
        output_signature=(tf.TensorSpec((None, 8, 8, 1), tf.float32),
                          tf.TensorSpec((None,), tf.int64)))
    epochs = repr_lib.RePrCallback(1, 1, 1, 0.25, verbose=0)
    with pytest.raises(ValueError, match="needs the number of batches"):
        model.fit(unknown, epochs=1, verbose=0, shuffle=False,
                  callbacks=[epochs])
    assert int(epochs.state.schedule_start.numpy()) == -1
    assert "train_step" not in model.__dict__
    # A fit that continues the epochs (initial_epoch) with a new callback
    # may be a resumed RePr run whose state was not restored: said.
    resumed = repr_lib.RePrCallback(1, 1, 1, 0.25, verbose=0)
    with pytest.warns(UserWarning, match="restore RePr's state"):
        model.fit(x, y, batch_size=32, epochs=3, initial_epoch=2, verbose=0,
                  callbacks=[resumed])
    # Loops that set the schedule themselves keep their state as before
    # (their checkpoints do not hold a start).
    controller = repr_lib.RePrController(tiny_bn_model())
    assert not hasattr(controller.state, "schedule_start")


def test_events_between_executions_run_at_the_next_one():
    """fit runs callbacks every steps_per_execution steps from each
    epoch's start and at each epoch's end, which the callback cannot
    always know in advance (a repeated dataset with steps_per_epoch not a
    multiple of it runs whole executions): an event between two runs
    late, by less than one execution, never refused or overdue."""
    x, y = digits(320)  # 10 steps per epoch at batch 32
    model = bn_and_bias_net()
    model.compile(keras.optimizers.SGD(0.05),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=4)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # to step 10
    # From step 10: callbacks after steps 14, 18, 20 (epoch end), 24, ...
    late = repr_lib.RePrCallback(8, 4, 1, 0.25, unit="steps", verbose=0,
                                 schedule_check="off")
    with pytest.warns(UserWarning, match="reinit of cycle 1 ran after step "
                      "24, 2 step"):
        model.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=[late])
    assert [(h["step"], h["event"], h.get("late")) for h in
            late.controller.history] == [(18, "drop", None),
                                         (24, "reinit", 2)]
    repeated = tf.data.Dataset.from_tensor_slices((x, y)).batch(32).repeat()
    model = bn_and_bias_net()
    model.compile(keras.optimizers.SGD(0.05),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=4)
    exact = repr_lib.RePrCallback(12, 12, 1, 0.25, unit="steps", verbose=0,
                                  schedule_check="off")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.fit(repeated, steps_per_epoch=10, epochs=3, shuffle=False,
                  verbose=0,
                  callbacks=[exact])
    assert [h["step"] for h in exact.controller.history] == [12, 24]
    assert all(u.dropped().size == 0 for u in exact.controller.units)
    # A drop due inside a fit's last execution runs first in the next fit
    # (with any steps_per_execution).
    model = bn_and_bias_net()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.SGD(0.05), loss, steps_per_execution=4)
    inside = repr_lib.RePrCallback(9, 6, 1, 0.25, unit="steps", verbose=0,
                                   schedule_check="off")
    with pytest.warns(UserWarning, match="fell inside this fit's last"):
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[inside])
    assert inside.controller.history == []
    model.compile(model.optimizer, loss, steps_per_execution=1)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[inside])
    assert [(h["step"], h["event"], h.get("late")) for h in
            inside.controller.history] == [(10, "drop", 1), (15, "reinit", None)]
    model.compile(model.optimizer, loss, steps_per_execution=4)
    short = repr_lib.RePrCallback(8, 2, 1, 0.25, unit="steps", verbose=0)
    with pytest.raises(ValueError, match="must be at least steps_per_exec"):
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[short])
    assert "train_step" not in model.__dict__


def test_learning_rates_set_by_callbacks_or_callables_are_read_right():
    x, y = digits(256)
    model = tiny_bn_model(keras.optimizers.SGD(0.1))
    callback = repr_lib.RePrCallback(1, 1, 1, 0.25, verbose=0)
    lower = keras.callbacks.LearningRateScheduler(
        lambda epoch, lr: 0.1 if epoch == 0 else 0.001)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=32, epochs=3, verbose=0,
                  callbacks=[lower, callback])
    found = _messages(caught, "of the highest seen in this run (0.1")
    assert len(found) == 2 and "drop of cycle 1 (after step 8)" in found[0]
    # Mixed precision wraps the optimizer: its schedule is looked through.
    schedule = keras.optimizers.schedules.CosineDecay(0.1, 40)
    wrapped = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(
        schedule))
    assert compat.optimizer_learning_rate(wrapped) is schedule
    model = tiny_bn_model(wrapped)
    controller = repr_lib.RePrController(
        model, repr_lib.RePrSchedule(8, 8, 2), 0.25)
    assert len(controller.check_run(48)) == 1  # last re-init at 10%
    # A callable of no argument (Keras calls it at every step).
    assert repr_schedule.learning_rate_at(lambda: 0.25, 100) == 0.25
    assert repr_schedule.learning_rate_at(schedule, 20) == pytest.approx(
        float(schedule(20)))


def test_drops_that_take_nothing_and_summaries_say_what_happened():
    x, y = digits(256)
    model = tiny_bn_model()
    # 8-filter layers with a ceiling of 10%: nothing can go.
    nothing = repr_lib.RePrCallback(1, 1, 1, 0.3, verbose=0,
                                    max_drop_per_layer=0.1)
    with pytest.warns(UserWarning, match="takes out no filter"):
        model.fit(x, y, batch_size=32, epochs=3, verbose=0,
                  callbacks=[nothing])
    # A dataset of unknown length: the start cannot check, the end says.
    unknown = tf.data.Dataset.from_tensor_slices((x, y)).batch(32).filter(
        lambda images, labels: True)
    later = repr_lib.RePrCallback(100, 100, 1, 0.3, unit="steps", verbose=0)
    with pytest.warns(UserWarning, match=r"No RePr event ran in this fit: "
                      r"it ended after step \d, the next event is due after "
                      r"step 100"):
        tiny_bn_model().fit(unknown, epochs=1, verbose=0, shuffle=False,
                            callbacks=[later])
    callback = repr_lib.RePrCallback(1, 1, 1, 0.3, verbose=0,
                                     max_drop_per_layer=0.5)
    assert callback.controller is None
    model = tiny_bn_model()
    model.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=[callback])
    dropped = callback.controller.history[0]["filters"]
    summary = callback.controller.last_summary()
    for name, count in dropped.items():
        line = next(l for l in summary.splitlines() if l.startswith(name))
        assert line.split()[-2] == str(count), (line, dropped)
    # Depthwise and separable convolutions are listed as not ranked.
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3, name="c1")(inputs)
    h = keras.layers.DepthwiseConv2D(3, name="dw")(h)
    h = keras.layers.Conv2D(8, 1, name="pw")(h)
    h = keras.layers.SeparableConv2D(8, 3, name="sep")(h)
    ranking = repr_lib.rank_filters(keras.Model(inputs, h))
    assert ranking.layer_names == ["pw"]
    assert "depthwise" in ranking.skipped["dw"]
    assert "separable" in ranking.skipped["sep"]


def test_callback_arguments_are_checked_when_made():
    x, y = digits(64)
    with pytest.raises(ValueError, match=r"layers=\['conv'\]"):
        repr_lib.RePrCallback(1, 1, 1, 0.3, layers="conv").attach(
            tiny_bn_model())
    with pytest.raises(ValueError, match="with unit='steps' S1 and S2 are "
                       "steps already"):
        repr_lib.RePrCallback(1, 1, 1, 0.3, unit="steps", steps_per_epoch=8)
    with pytest.warns(UserWarning, match="calibration_data is not used"):
        repr_lib.RePrCallback(1, 1, 1, 0.3, calibration_data=x,
                              **repr_lib.PAPER).attach(tiny_bn_model())
    callback = repr_lib.RePrCallback(np.int64(1), np.int32(1), np.int64(1),
                                     0.3, min_kept=np.int64(1))
    assert (callback.s1, callback.min_kept) == (1, 1)
    # (inputs, labels) as calibration data: the labels are not used.
    model = tiny_bn_model()
    repr_lib.RePrCallback(1, 1, 1, 0.3, calibration_data=(x, y)).attach(model)
    with pytest.raises(ValueError, match=r"shape \(4, 4, 1\) per example"):
        repr_lib.RePrCallback(1, 1, 1, 0.3,
                              calibration_data=x[:, :4, :4]).attach(model)
