"""keras_slim.search: AutoSlim greedy channel search."""

import json
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_slim
import keras_slim.width
from keras_slim import search
from keras_slim.search import greedy
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


def test_cost_model_follows_concatenate_and_flatten():
    inputs = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(8, 3, padding="same", name="a")(inputs)
    b = keras.layers.Conv2D(12, 3, padding="same", name="b")(inputs)
    x = keras.layers.BatchNormalization()(keras.layers.Concatenate()([a, b]))
    x = keras.layers.Conv2D(16, 1, name="d")(x)
    outputs = keras.layers.Dense(10)(keras.layers.Flatten()(x))
    model = keras_slim.slim(keras.Model(inputs, outputs), width_range=(0.25, 1))
    costs = CostModel(model)
    assert costs.cuts == {"a": 0, "b": 1, "d": 4}
    for width in (1.0, 0.5, {"a": 3, "b": 12, "d": 5}):
        profiled = keras_slim.profile(model, width)
        assert costs.cost(model.channels_for(width)) == {
            "macs": profiled["macs"], "params": profiled["params"]}


def test_search_sets_too_large_for_memory_are_warned_about(
        trained, digits, monkeypatch):
    inputs = keras.Input((8, 8, 1))
    a = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    b = keras.layers.Conv2D(6, 3, padding="same")(a)
    outputs = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(b))
    model = keras_slim.slim(keras.Model(inputs, outputs), width_range=(0.5, 1))
    # At the second convolution: its input (8*8*4 floats) and its output
    # (8*8*6), the network's largest moment.
    assert CostModel(model).program.peak_bytes_per_image() == 4 * 64 * (4 + 6)
    inputs = keras.Input((8, 8, 16))  # here the input is the largest
    a = keras.layers.Conv2D(4, 1)(inputs)
    outputs = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(a))
    model = keras_slim.slim(keras.Model(inputs, outputs), width_range=(0.5, 1))
    assert CostModel(model).program.peak_bytes_per_image() == 4 * 64 * (16 + 4)
    full = CostModel(trained).cost(trained.full_channels)["macs"]
    per_image = 2 * CostModel(trained).program.peak_bytes_per_image()
    monkeypatch.setattr(greedy, "_available_memory", lambda: 100 * per_image)
    with pytest.warns(UserWarning, match="num_images=80 or fewer would fit"):
        search.autoslim(trained, _search_set(digits), targets=[full],
                        verbose=0)
    monkeypatch.setattr(greedy, "_available_memory", lambda: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        search.autoslim(trained, _search_set(digits), targets=[full],
                        verbose=0)


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


@pytest.fixture(scope="module")
def searched(trained, digits, tmp_path_factory):
    folder = tmp_path_factory.mktemp("search")
    full = CostModel(trained).cost(trained.full_channels)["macs"]
    targets = [0.5 * full, 0.8 * full]
    result = search.autoslim(
        trained, _search_set(digits), targets=targets, bins=6,
        output_path=folder / "search.json", verbose=0,
    )
    return result, targets, folder


def test_targets_recorded_largest_first_below_target(searched):
    result, targets, _ = searched
    assert result["finished"]
    configs = result["configs"]
    assert [c["target"] for c in configs] == sorted(targets, reverse=True)
    for config in configs:
        assert config["macs"] <= config["target"]
        # Recorded at the first step whose cost reached the target.
        previous = result["history"][config["step"] - 1]
        assert previous["macs"] > config["target"]
        uniform = config["uniform"]
        assert uniform["within_cost"] == (uniform["macs"] <= config["macs"])
        assert uniform["within_cost"] or uniform["width"] == 0.25
    assert configs[0]["step"] < configs[1]["step"]
    # It stops at the first step below the smallest target.
    assert result["history"][-1]["step"] == configs[-1]["step"]
    # Two groups: the shared prefix is computed once either way.
    assert 0 < result["stats"]["work_ratio"] <= 1


def test_search_is_deterministic(trained, digits, searched):
    result, targets, _ = searched
    again = search.autoslim(trained, _search_set(digits), targets=targets,
                            bins=6, verbose=0)
    assert [c["channels"] for c in again["configs"]] == [
        c["channels"] for c in result["configs"]]
    assert [r["group"] for r in again["history"]] == [
        r["group"] for r in result["history"]]


def test_resume_after_interruption(trained, digits, searched, tmp_path):
    result, targets, _ = searched
    progress = tmp_path / "progress.json"
    partial = search.autoslim(trained, _search_set(digits), targets=targets,
                              bins=6, progress_path=progress, max_steps=2,
                              verbose=0, output_path=tmp_path / "part.json")
    assert not partial["finished"] and len(partial["history"]) == 3
    # Its output file says it is unfinished and which targets are missing.
    missing = [n for n in partial["targets"]
               if n not in [c["name"] for c in partial["configs"]]]
    assert missing
    with pytest.warns(UserWarning, match="unfinished search .* not reached "
                      f"yet: {', '.join(missing)}"):
        search.load_configs(tmp_path / "part.json")
    resumed = search.autoslim(trained, _search_set(digits), targets=targets,
                              bins=6, progress_path=progress, verbose=0)
    assert resumed["finished"]
    assert [c["channels"] for c in resumed["configs"]] == [
        c["channels"] for c in result["configs"]]
    # A progress file of another search is refused.
    with pytest.raises(ValueError, match="another search"):
        search.autoslim(trained, _search_set(digits), targets=targets,
                        bins=4, progress_path=progress, verbose=0)


def test_configs_round_trip_and_are_accepted_everywhere(
        trained, searched, tmp_path):
    result, _, folder = searched
    configs = search.load_configs(folder / "search.json")
    assert list(configs) == [c["name"] for c in result["configs"]]
    name = list(configs)[-1]
    config = configs[name]
    entry = result["configs"][-1]
    assert config == entry["channels"]
    profiled = keras_slim.profile(trained, config)
    assert (profiled["macs"], profiled["params"]) == (
        entry["macs"], entry["params"])
    stripped = keras_slim.strip(trained, config)
    for layer, channels in config.items():
        assert stripped.get_layer(layer).get_config().get(
            "filters", channels) == channels
    keras_slim.calibrate_bn(trained, np.zeros((8, 8, 8, 1), "float32"),
                            widths=[config], verbose=0)
    trained.set_width(config)
    assert trained.predict(np.zeros((2, 8, 8, 1)), verbose=0).shape == (2, 10)
    trained.set_width(trained.width_range[1])
    keras_slim.export.to_tflite(trained, tmp_path / "tflite", widths=[config])
    manifest = json.loads((tmp_path / "tflite" / "manifest.json").read_text())
    (export,) = manifest["exports"]
    assert export["macs"] == entry["macs"]


def test_plots_are_written(trained, searched, tmp_path):
    result, _, folder = searched
    search.plots.plot_channels(folder / "search.json", trained,
                               tmp_path / "channels.png")
    search.plots.plot_accuracy(result, tmp_path / "accuracy.png",
                               retrained={"searched": [(1e5, 0.9)]})
    for name in ("channels.png", "accuracy.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_errors(trained, digits, tmp_path):
    costs = CostModel(trained)
    full = costs.cost(trained.full_channels)["macs"]
    with pytest.raises(ValueError, match=r"reachable range \[\d+, \d+\]"):
        search.autoslim(trained, _search_set(digits), targets=[full * 2],
                        verbose=0)
    with pytest.raises(ValueError, match="reachable range"):
        search.autoslim(trained, _search_set(digits), targets=[1], verbose=0)
    x, y = _search_set(digits)
    with pytest.raises(ValueError, match="empty"):
        search.autoslim(trained, (x[:0], y[:0]), targets=[full], verbose=0)
    with pytest.raises(ValueError, match="latency_table"):
        search.autoslim(trained, (x, y), targets=[1.0], metric="latency",
                        verbose=0)
    with pytest.raises(ValueError, match="metric must be"):
        search.autoslim(trained, (x, y), targets=[full], metric="flops",
                        verbose=0)
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Dense(10)(keras.layers.Flatten()(inputs))
    with pytest.raises(ValueError, match="nothing in model"):
        keras_slim.slim(keras.Model(inputs, outputs))  # refused up front
    fixed = keras_slim.SlimmableModel(keras.Model(inputs, outputs))
    with pytest.raises(ValueError, match="no slimmable channel group"):
        search.autoslim(fixed, (x, y), targets=[1], verbose=0)
    with pytest.raises(ValueError, match="not a slimmable layer"):
        trained.set_width({"nonexistent": 4})
    with pytest.raises(ValueError, match="can have 1 to"):
        trained.set_width({"conv1": 400})
    with pytest.raises(ValueError, match="not a keras_slim.search result"):
        (tmp_path / "bad.json").write_text("{}")
        search.load_configs(tmp_path / "bad.json")
    other = search.LatencyTable("0123456789ab", {"conv1": [[1.0, 0.1]]})
    with pytest.raises(ValueError, match="another model"):
        search.autoslim(trained, (x, y), targets=[full], latency_table=other,
                        verbose=0)


def test_whole_network_fit_is_exact_at_both_widths():
    # Layers timed alone at 2/3 of their share in the network, + 0.5 ms.
    scale, overhead = search.latency.fit_whole_network([1.0, 4.0],
                                                        [2.0, 6.5])
    assert scale == pytest.approx(1.5) and overhead == pytest.approx(0.5)
    assert overhead + scale * 2.0 == pytest.approx(3.5)  # in between
    # Timings that cannot tell the widths apart: scale 1, mean gap.
    assert search.latency.fit_whole_network([1.0, 4.0], [2.0, 2.0]) == (
        1.0, pytest.approx(-0.5))


def test_latency_table_predicts_and_is_checked(tmp_path):
    model = keras_slim.slim(_base_model(), width_range=(0.5, 1.0), divisor=4)
    path = tmp_path / "latency.json"
    table = search.latency_table(model, path, levels=2, num_runs=5,
                                 warmup=1, verbose=0)
    assert path.exists()
    loaded = search.latency_table(model, path)
    assert loaded.layers == table.layers
    # Fitted on the whole network at min and max width: their mean error
    # is zero by construction, each within the measurements' spread.
    gaps = [table.predict_config(model, check["width"]) - check["measured_ms"]
            for check in table.checks]
    assert [c["width"] for c in table.checks] == [0.5, 1.0]
    assert abs(sum(gaps)) < 1e-9
    if table.scale != 1.0:  # both points fitted exactly
        assert max(abs(g) for g in gaps) < 1e-9
    assert set(table.layers) == {"conv1", "conv2", "conv3", "dw",
                                 "classifier"}
    other = keras_slim.slim(_base_model(classes=5), width_range=(0.5, 1.0))
    with pytest.raises(ValueError, match="another model"):
        search.latency_table(other, path)
    # A search by predicted latency, on a table "measured elsewhere" with
    # fixed figures (1 ms per MMAC): timings of layers this small are mostly
    # noise, which can leave less than 1% between the min and max widths.
    data = table.to_json()
    data["layers"] = {name: [[macs, macs * 1e-6] for macs, _ in points]
                      for name, points in data["layers"].items()}
    data["overhead_ms"] = 0.01
    with open(path, "w") as f:
        json.dump(data, f)
    table = search.LatencyTable.load(path)
    full = table.predict_config(model, 1.0)
    assert table.predict_config(model, 0.5) < 0.5 * full
    rng = np.random.default_rng(0)
    data = (rng.random((32, 8, 8, 1), dtype=np.float32),
            rng.integers(0, 10, 32))
    result = search.autoslim(model, data, targets=[0.9 * full],
                             metric="latency", latency_table=path, verbose=0)
    (found,) = result["configs"]
    assert found["latency_ms"] <= 0.9 * full < result["history"][
        found["step"] - 1]["latency"]
    assert found["latency_ms"] == pytest.approx(
        table.predict_config(model, found["channels"]))


def test_slimmable_model_trains_configurations_as_widths(digits, tmp_path):
    small = {"conv1": 8, "conv3": 12}
    large = {"conv1": 16, "conv3": 24}
    model = keras_slim.slim(_base_model(), width_range=(0.25, 1.5),
                            widths=[large, small], divisor=4)
    assert model.switchable and model.widths == [small, large]
    assert model.training_widths() == [large, small]
    assert model.width_index(small) == 0 and model.width_index(large) == 1
    model.compile("adam", "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    x, y = digits
    history = model.fit(x[:256], y[:256], epochs=1, verbose=0)
    tag = keras_slim.width.width_tag(small)
    assert f"loss_{tag}" in history.history
    model.set_width(small)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.widths == model.widths
    np.testing.assert_allclose(
        loaded.predict(x[:8], verbose=0), model.predict(x[:8], verbose=0),
        atol=1e-6)
    with pytest.raises(ValueError, match="mixes numbers and configurations"):
        keras_slim.slim(_base_model(), widths=[small, 1.0])


def tiny_named_cnn(input_shape=(8, 8, 1), num_classes=10):
    """A stock CNN with named layers, for `--model=test_search:...`."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv_a")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same",
                            name="conv_b")(x)
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


@pytest.mark.parametrize("method,names", [
    ("plain", ["small"]), ("snet", ["small", "large"])])
def test_trainers_train_searched_configs(tmp_path, method, names):
    from keras_slim.search import configs as configs_lib
    from trainers import loop

    found = {"small": {"conv_a": 4, "conv_b": 8},
             "large": {"conv_a": 8, "conv_b": 12}}
    path = tmp_path / "search.json"
    configs_lib.save_configs(path, {"configs": [
        {"name": n, "channels": c} for n, c in found.items()]})
    config = loop.TrainConfig(
        method=method, model=f"{__name__}:tiny_named_cnn", dataset="digits",
        width_range=(0.25, 1.0), searched_config=f"{path}:{','.join(names)}",
        batch_size=32, train_steps=4, steps_per_loop=2,
        checkpoint_every_steps=0, model_dir=str(tmp_path / "run"),
        verbose=0, calibration_examples=64,
        export=("tflite",) if method == "plain" else (),
    )
    report = loop.train(config)
    assert [w["width"] for w in report["widths"]] == [found[n] for n in names]
    # Rows and files are named by the configurations' names.
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [w["name"] for w in saved["widths"]] == names
    if method == "plain":
        manifest = json.loads(
            (tmp_path / "run" / "tflite" / "manifest.json").read_text())
        assert [e["file"].rsplit("_", 1)[-1] for e in manifest["exports"]
                ] == [f"{n}.tflite" for n in names]
    channels = {n: [c["conv_a"], c["conv_b"]] for n, c in found.items()}
    assert [w["channels"] for w in report["widths"]] == [
        channels[n] for n in names]
    model = keras.models.load_model(tmp_path / "run" / "model.keras")
    assert model.switchable == (len(names) > 1)
    assert sorted(map(str, model.widths)) == sorted(
        str(found[n]) for n in names)


def test_trainers_searched_config_errors(tmp_path):
    from keras_slim.search import configs as configs_lib
    from trainers import loop
    from trainers import methods

    path = tmp_path / "search.json"
    configs_lib.save_configs(path, {"configs": [
        {"name": "a", "channels": {"conv_a": 4}}]})
    config = loop.TrainConfig(searched_config=f"{path}:b")
    with pytest.raises(ValueError, match=r"\['b'\] not in"):
        methods.get("snet").slim_kwargs(config)
    config = loop.TrainConfig(searched_config=f"{path}:a,a")
    with pytest.raises(ValueError, match="Use --method=snet"):
        methods.get("plain").slim_kwargs(config)
    with pytest.raises(ValueError, match="does not"):
        methods.get("us").slim_kwargs(config)


# ------------------------------------------------- the supernet's range
def test_search_stays_within_the_supernets_trained_range(trained, digits):
    # The smallest reachable target is every group at its count at the
    # supernet's narrowest trained width (0.25); no group goes below it.
    floor = trained.channel_plan.counts(0.25)
    costs = CostModel(trained)
    lowest = costs.cost(floor.tolist())["macs"]
    result = search.autoslim(trained, _search_set(digits), targets=[lowest],
                             bins=3, verbose=0)
    assert result["finished"] and result["range"]["min"] == lowest
    index = trained.channel_plan.index
    for row in result["history"]:
        for group, count in row["chosen"].items():
            assert count >= floor[index[group]], (row["step"], group)
    # Below it, a target is refused and the message names min_width.
    with pytest.raises(ValueError, match="min_width"):
        search.autoslim(trained, _search_set(digits), targets=[lowest - 1],
                        verbose=0)
    # An explicit lower min_width reaches lower, with a warning.
    with pytest.warns(UserWarning, match="below the narrowest width"):
        lower = search.autoslim(trained, _search_set(digits),
                                targets=[lowest - 1], min_width=0.1, bins=3,
                                verbose=0)
    assert lower["finished"] and lower["configs"][0]["macs"] <= lowest - 1
    with pytest.raises(ValueError, match="min_width must be"):
        search.autoslim(trained, _search_set(digits), targets=[lowest],
                        min_width=2.0, verbose=0)


# ------------------------------------------------------------ bad data
def test_labels_outside_the_classes_are_refused(trained, digits):
    x, y = _search_set(digits)
    full = CostModel(trained).cost(trained.full_channels)["macs"]
    for labels in (y + 10, y - 1):
        with pytest.raises(ValueError, match=r"outside \[0, 10\)"):
            search.autoslim(trained, (x, labels), targets=[full], verbose=0)
    with pytest.raises(ValueError, match="one-hot rows of 12 classes"):
        search.autoslim(trained, (x, np.eye(12)[y]), targets=[full],
                        verbose=0)
    with pytest.raises(ValueError, match="whole numbers"):
        search.autoslim(trained, (x, y + 0.5), targets=[full], verbose=0)
    names = np.array(["zero", "one", "two"] * 4 + ["three"] * (len(y) - 12))
    with pytest.raises(ValueError, match="Map class names to indices"):
        search.autoslim(trained, (x, names), targets=[full], verbose=0)
    # One-hot rows of the right width are class indices.
    one_hot = search.autoslim(trained, (x, np.eye(10)[y]), targets=[full],
                              verbose=0)
    plain = search.autoslim(trained, (x, y), targets=[full], verbose=0)
    assert one_hot["history"][0]["accuracy"] == plain["history"][0]["accuracy"]
    # Numbers in an object array (e.g. from pandas) are numbers.
    as_objects = search.autoslim(trained, (x, y.astype(object)),
                                 targets=[full], verbose=0)
    assert [h["accuracy"] for h in as_objects["history"]] == [
        h["accuracy"] for h in plain["history"]]


def test_infinite_dataset_that_repeats_is_refused(trained, digits):
    import tensorflow as tf

    x, y = _search_set(digits)
    full = CostModel(trained).cost(trained.full_channels)["macs"]
    repeating = tf.data.Dataset.from_tensor_slices((x[:64], y[:64])).batch(
        16).repeat()
    with pytest.raises(ValueError, match="repeats image 0 as image 64"):
        search.autoslim(trained, repeating, targets=[full], num_images=128,
                        verbose=0)
    # An infinite dataset with enough distinct images is read to exactly
    # num_images images.
    enough = tf.data.Dataset.from_tensor_slices((x, y)).batch(24).repeat()
    result = search.autoslim(trained, enough, targets=[full], num_images=100,
                             verbose=0)
    assert result["num_images"] == 100


# ------------------------------------------------------ progress bar
def test_steps_left_from_the_cost_removed_per_step():
    from keras_slim.search.greedy import _steps_left

    history = [{"macs": 100.0}]
    assert _steps_left(history, "macs", 50) is None  # nothing to average
    history += [{"macs": 90.0}, {"macs": 80.0}]
    assert _steps_left(history, "macs", 50) == 3  # 30 left at 10 a step
    assert _steps_left(history, "macs", 75) == 1
    assert _steps_left(history + [{"macs": 40.0}], "macs", 50) == 0


def test_progress_bar_shows_an_estimated_total(trained, digits, capsys):
    full = CostModel(trained).cost(trained.full_channels)["macs"]
    result = search.autoslim(trained, _search_set(digits),
                             targets=[0.6 * full], bins=6, verbose=1)
    shown = capsys.readouterr().out
    steps = len(result["history"]) - 1
    assert steps > 2
    assert "Unknown" not in shown
    # The last update shows the final count as the total.
    assert f"{steps}/{steps}" in shown
    # Earlier updates show an estimated total and the time left.
    assert any(f"{i}/" in part and "s/step" in part
               for i in range(1, steps) for part in shown.split("\r"))


# --------------------------------------------------------- screening
def test_screening_with_every_candidate_a_finalist_is_exhaustive(
        trained, digits, searched):
    result, targets, _ = searched
    screened = search.autoslim(trained, _search_set(digits), targets=targets,
                               bins=6, screen_images=64, finalists=100,
                               verbose=0)
    assert [r["group"] for r in screened["history"]] == [
        r["group"] for r in result["history"]]


def test_screening_picks_the_exhaustive_winner_when_it_is_a_finalist(
        trained, digits, searched, tmp_path):
    result, targets, _ = searched
    screened = search.autoslim(
        trained, _search_set(digits), targets=targets, bins=6,
        screen_images=48, finalists=1, progress_path=tmp_path / "p.json",
        verbose=0)
    assert screened["finished"]
    for config in screened["configs"]:  # targets met
        assert config["macs"] <= config["target"]
    first, reference = screened["history"][1], result["history"][1]
    # Every candidate screened (two groups), one scored on the whole set,
    # with the exhaustive step's score.
    assert len(first["screen"]) == len(reference["scores"]) == 2
    assert len(first["scores"]) == 1
    for group, score in first["scores"].items():
        assert score == reference["scores"][group]
    if reference["group"] in first["scores"]:
        assert first["group"] == reference["group"]
    # Cheaper than the exhaustive step (MACs per search image).
    assert first["work_cached"] < reference["work_cached"]
    # Deterministic, and resumable.
    partial = search.autoslim(
        trained, _search_set(digits), targets=targets, bins=6,
        screen_images=48, finalists=1, progress_path=tmp_path / "q.json",
        max_steps=2, verbose=0)
    assert not partial["finished"]
    resumed = search.autoslim(
        trained, _search_set(digits), targets=targets, bins=6,
        screen_images=48, finalists=1, progress_path=tmp_path / "q.json",
        verbose=0)
    assert [r["group"] for r in resumed["history"]] == [
        r["group"] for r in screened["history"]]
    # Another screening is another search.
    with pytest.raises(ValueError, match="another search"):
        search.autoslim(trained, _search_set(digits), targets=targets,
                        bins=6, screen_images=32, finalists=1,
                        progress_path=tmp_path / "q.json", verbose=0)
    with pytest.raises(ValueError, match="screen_images must be"):
        search.autoslim(trained, _search_set(digits), targets=targets,
                        screen_images=0, verbose=0)


@pytest.mark.parametrize("screen_by", [None, "accuracy", "log_likelihood"])
def test_screening_ranks_by_its_score(trained, digits, tmp_path, screen_by):
    # None: the default, accuracy on the subset with the log-likelihood
    # breaking ties.
    by_accuracy = screen_by in (None, "accuracy")
    x, y = _search_set(digits)
    targets = [0.6 * CostModel(trained).cost(trained.full_channels)["macs"]]
    kwargs = dict(targets=targets, bins=6, screen_images=48, finalists=1,
                  verbose=0)
    chosen_by = {} if screen_by is None else {"screen_by": screen_by}
    result = search.autoslim(trained, (x, y), progress_path=tmp_path / "a.json",
                             **chosen_by, **kwargs)
    # The finalist of every screened step, recomputed here on the subset.
    space = greedy._Search(trained, "macs", 6, None, trained.width_range[0])
    subset = np.sort(np.random.default_rng(0).permutation(len(x))[:48])
    screener = Runner(trained, space.costs.program, space.costs.cuts,
                      x[subset], y[subset])
    for previous, row in zip(result["history"], result["history"][1:]):
        chosen = {g: int(c) for g, c in previous["chosen"].items()}
        candidates = [(g, space.counts(dict(chosen, **{g: n})))
                      for g in space.groups
                      if (n := space.narrower(chosen, g)) is not None]
        _, logits = screener.step(space.counts(chosen), candidates,
                                  return_logits=True)
        keys = {g: (screener.accuracy_of(l), screener.log_likelihood(l))
                if by_accuracy else (screener.log_likelihood(l),)
                for (g, _), l in zip(candidates, logits)}
        assert list(row["scores"]) == [max(keys, key=lambda g: keys[g])]
        assert ("screen_accuracy" in row) == by_accuracy
    # Another screening score is another search: the progress file says
    # so, what differs, and how to resume it.
    other = "log_likelihood" if by_accuracy else "accuracy"
    mine = "accuracy" if by_accuracy else "log_likelihood"
    with pytest.raises(ValueError, match=(
            f"another search.*screen.by stored .*pass screen_by='{mine}'")):
        search.autoslim(trained, (x, y), progress_path=tmp_path / "a.json",
                        screen_by=other, **kwargs)
    with pytest.raises(ValueError, match="screen_by must be one of"):
        search.autoslim(trained, (x, y), screen_by="loss", **kwargs)


# ------------------------------------------------- named configurations
def test_loaded_configurations_name_files_and_rows(trained, searched,
                                                   tmp_path):
    _, _, folder = searched
    configs = search.load_configs(folder / "search.json")
    name, config = list(configs.items())[-1]
    assert config.name == name and config == dict(config)
    assert keras_slim.width.width_suffix(config) == name
    manifest = keras_slim.export.to_tflite(trained, tmp_path,
                                           widths=[config])
    assert manifest["exports"][0]["file"] == (
        f"{trained.network.name}_{name}.tflite")


def test_log_lines_show_the_estimate(trained, digits, capsys):
    full = CostModel(trained).cost(trained.full_channels)["macs"]
    result = search.autoslim(trained, _search_set(digits),
                             targets=[0.6 * full], bins=6, verbose=2)
    lines = capsys.readouterr().out.strip().splitlines()
    steps = len(result["history"]) - 1
    assert len(lines) == steps
    # From the first step on: an estimated total and the time left.
    for number, line in enumerate(lines[:-1], start=1):
        total = line.split("/~")[1].split()[0]
        assert line.startswith(f"step {number}/~") and total.isdigit()
        assert "left" in line
    assert lines[-1].startswith(f"step {steps}/~{steps} ")


def test_several_picks_per_step_while_far_from_the_target(trained, digits):
    full = CostModel(trained).cost(trained.full_channels)["macs"]
    targets = [0.3 * full]
    result = search.autoslim(trained, _search_set(digits), targets=targets,
                             bins=12, verbose=0)
    both = search.autoslim(trained, _search_set(digits), targets=targets,
                           bins=12, picks_per_step=2, verbose=0)
    assert both["finished"]
    rows = both["history"][1:]
    multi = [r for r in rows if "groups" in r]
    assert multi, "no step narrowed two groups"
    first = rows[0]
    # The first step narrows the exhaustive step's pick and the runner-up.
    reference = result["history"][1]
    ranked = sorted(reference["scores"].items(), key=lambda t: -t[1])
    assert first["group"] == reference["group"]
    assert set(first["groups"]) == {g for g, _ in ranked[:2]}
    previous = both["history"][0]["chosen"]
    for group in first["groups"]:
        assert first["chosen"][group] < previous[group]
    # Its accuracy is that of both narrowings together, on the whole set.
    costs = CostModel(trained)
    runner = Runner(trained, costs.program, costs.cuts, *_search_set(digits))
    counts = trained.channel_plan.counts_for_groups(first["chosen"])
    assert first["accuracy"] == runner.accuracy(counts)
    # The target is crossed by a single step, and fewer steps are needed.
    (config,) = both["configs"]
    assert config["macs"] <= config["target"]
    assert "groups" not in both["history"][config["step"]]
    assert len(rows) < len(result["history"]) - 1
    with pytest.raises(ValueError, match="picks_per_step=3 needs"):
        search.autoslim(trained, _search_set(digits), targets=targets,
                        screen_images=32, finalists=2, picks_per_step=3,
                        verbose=0)


def test_a_configuration_below_the_uniform_width_warns(
        trained, digits, monkeypatch):
    from keras_slim.search import runner as runner_lib

    full = CostModel(trained).cost(trained.full_channels)["macs"]
    targets = [0.5 * full]
    plain = runner_lib.Runner.accuracy
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = search.autoslim(trained, _search_set(digits),
                                targets=targets, bins=6, verbose=0)
    config = found["configs"][0]
    below = config["uniform"]["within_cost"] and (
        config["uniform"]["search_accuracy"] > config["search_accuracy"])
    assert config["below_uniform"] == below
    assert any("below the uniform" in str(w.message) for w in caught) == below

    # Whole-network scores (the uniform width's, not the steps') made
    # higher than any step's: the found configuration is now below it.
    def higher(self, counts):
        return plain(self, counts) + 1.0

    monkeypatch.setattr(runner_lib.Runner, "accuracy", higher)
    with pytest.warns(UserWarning, match="below the uniform width"):
        lower = search.autoslim(trained, _search_set(digits),
                                targets=targets, bins=6, verbose=0)
    assert lower["configs"][0]["below_uniform"]


def test_search_sets_that_cannot_rank_candidates_are_refused_or_said(
        trained, digits):
    full = CostModel(trained).cost(trained.full_channels)["macs"]
    x, y = _search_set(digits)
    for name, value in (("num_images", 0), ("num_images", -5),
                        ("max_steps", 0), ("max_steps", 0.5)):
        with pytest.raises(ValueError, match=f"{name} must be an integer"):
            search.autoslim(trained, (x, y), targets=[full], verbose=0,
                            **{name: value})
    with pytest.raises(ValueError, match=r"shape \(16, 16, 1\); the model "
                       r"takes \(8, 8, 1\)"):
        search.autoslim(trained, (np.tile(x, (1, 2, 2, 1)), y),
                        targets=[full], verbose=0)
    unbatched = tf.data.Dataset.from_tensor_slices((x, y))
    with pytest.raises(ValueError, match=r"dataset.batch\(256\)"):
        search.autoslim(trained, unbatched, targets=[full], verbose=0)
    # A dataset of unknown size that repeats is refused as an infinite one.
    repeated = tf.data.Dataset.from_tensor_slices((x[:64], y[:64])).repeat(
    ).filter(lambda image, label: True).batch(32)
    with pytest.raises(ValueError, match="repeats image 0 as image 64"):
        search.autoslim(trained, repeated, targets=[full], num_images=128,
                        verbose=0)
    # ... but real duplicates in a finite one of unknown size are fine.
    copied = x.copy()
    copied[100] = copied[5]
    filtered = tf.data.Dataset.from_tensor_slices((copied, y)).filter(
        lambda image, label: True).batch(32)
    assert search.autoslim(trained, filtered, targets=[full], num_images=256,
                           verbose=0)["finished"]
    # One class: accuracy cannot tell candidates apart.
    with pytest.warns(UserWarning, match="256 images of 1 class"):
        search.autoslim(trained, (x, np.zeros_like(y)), targets=[full],
                        verbose=0)
    # A dataset sorted by class is read in order: its first classes only.
    order = np.argsort(y, kind="stable")
    in_order = tf.data.Dataset.from_tensor_slices(
        (x[order], y[order])).batch(32)
    with pytest.warns(UserWarning, match=r"labels of \d of the model's 10 "
                      r"classes \(a dataset is read in order"):
        search.autoslim(trained, in_order, targets=[full], num_images=128,
                        verbose=0)
    with pytest.warns(UserWarning, match="Screening is off .finalists=3 is "
                      "not below the 2 searchable groups"):
        search.autoslim(trained, (x, y), targets=[full], screen_images=64,
                        verbose=0)


def test_a_configuration_of_another_model_is_said(trained):
    full = dict(search.config_from_counts(trained, trained.full_channels))
    name = sorted(full)[0]
    partial = search.Configuration("other", {name: full[name]},
                                   searched=True)
    with pytest.warns(UserWarning, match=f"'other' does not name "
                      f"{len(full) - 1} of this model's {len(full)}"):
        trained.channels_for(partial)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        trained.channels_for(search.Configuration("whole", full,
                                                  searched=True))
        # Hand-made configurations may name some layers only, by design.
        trained.channels_for(search.Configuration("mine", {name: 4}))
        trained.channels_for({name: full[name]})


def test_step_lines_count_hours_past_a_day():
    row = {"step": 3, "group": "conv1", "macs": 2e6, "accuracy": 0.5}
    line = greedy._step_line(row, "macs", 300, [5.0, 320.0, 330.0])
    assert line.endswith("about 27:05:00 left")
