"""Tests for trainers/: flags, methods, optimizer, the custom loop, resuming.

Training runs that must start from a clean TensorFlow runtime (or be killed)
run `python -m trainers.train` in subprocesses, bounded by timeouts; the
rest runs in-process on tiny models. Data: the embedded digits and
`tfds.testing.mock_data` only (never the network).
"""

import dataclasses
import fcntl
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

import keras_slim
from keras_slim import data as data_lib
from keras_slim.layers import SlimConv2D
from keras_slim.layers import SwitchableBatchNormalization
from tests import testing
from trainers import flags as trainer_flags
from trainers import deploy
from trainers import loop
from trainers import methods

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 240  # seconds, per subprocess
# A small, deterministic run: 120 steps of 32 digits (about 3 epochs, so the
# resumed data stream crosses epoch boundaries), augmentation and label
# smoothing on (both must replay exactly after a restart).
RUN_FLAGS = [
    "--method=us",
    "--model=lenet_3c1l",
    '--model_kwargs={"padding": "same", "n": 8}',
    "--dataset=digits",
    "--batch_size=32",
    "--train_steps=120",
    "--steps_per_loop=2",
    "--checkpoint_every_steps=10",
    "--warmup_epochs=0.25",
    "--augment",
    "--label_smoothing=0.1",
    "--deterministic",
    "--seed=3",
    "--calibration_examples=256",
]


def tiny_cnn(input_shape=(8, 8, 1), num_classes=10, filters=8):
    """A stock Keras CNN with biases and BN, for `--model=module:tiny_cnn`."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(filters, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(2 * filters, 3, strides=2, padding="same")(x)
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    # Named: Keras would number a second unnamed model ("functional_1"),
    # and the exported files are named after the network.
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x),
                       name="tiny_cnn")


TINY = f"{__name__}:tiny_cnn"


def config_for(*args):
    """A `TrainConfig` parsed from command-line flags, as the CLI does."""
    trainer_flags.define_flags()
    flag_values = flags.FLAGS
    try:
        flag_values(["train", *args])
        return trainer_flags.config_from_flags(flag_values)
    finally:
        flag_values.unparse_flags()


def trainer_command(model_dir, *extra):
    return [sys.executable, "-m", "trainers.train",
            f"--model_dir={model_dir}", *RUN_FLAGS, *extra]


def subprocess_env(**extra):
    """The environment of a trainer subprocess (the repo importable)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    env.update(extra)
    return env


def checkpoint_values(path):
    """`{key: array}` of a checkpoint, bookkeeping entries left out."""
    reader = tf.train.load_checkpoint(str(path))
    return {
        key: reader.get_tensor(key)
        for key in reader.get_variable_to_shape_map()
        if key != "_CHECKPOINTABLE_OBJECT_GRAPH"
        and not key.startswith("save_counter")
    }


def once_per_session(tmp_path_factory, name, compute):
    """`compute(directory) -> JSON-able result`, run once per test session.

    Module fixtures run once per pytest-xdist worker, and the subprocess
    runs behind them are the expensive part of these tests: the first
    worker computes the result under a file lock, the others read it.
    Without xdist it is an ordinary temporary directory.
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return compute(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent  # this session's, shared
    directory = shared / name
    done = shared / f"{name}.json"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            directory.mkdir(exist_ok=True)
            done.write_text(json.dumps(compute(directory)))
    return json.loads(done.read_text())


def read_scalars(directory):
    """`{tag: {step: value}}` from the event files in `directory`."""
    scalars = {}
    for path in sorted(pathlib.Path(directory).glob("events.out.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = float(
                    tf.make_ndarray(value.tensor)
                )
    return scalars


# ------------------------------------------------------------ in-process
def test_help_documents_every_flag_and_all_are_optional():
    # Importing the program defines its flags and adopts them as key flags.
    import trainers.train  # noqa: F401

    names = [f.name for f in flags.FLAGS.get_key_flags_for_module(
        trainer_flags)]
    help_text = flags.FLAGS.module_help(sys.modules["trainers.train"])
    expected = {
        "method", "model", "dataset", "data_dir", "widths", "width_range",
        "sandwich_size", "inplace_distillation", "epochs", "batch_size",
        "optimizer", "lr_schedule", "warmup_epochs", "weight_decay",
        "label_smoothing", "strategy", "num_cpu_devices", "model_dir",
        "seed", "steps_per_loop", "checkpoint_every_steps", "sync_bn",
        "per_replica_widths", "deterministic",
    }
    assert expected <= set(names)
    for name in names:
        assert f"--{name}" in help_text or f"--[no]{name}" in help_text
        assert len(flags.FLAGS[name].help) > 10, name
    # No flag is required: parsing nothing gives the library's defaults.
    assert config_for() == loop.TrainConfig()


def test_console_script_help_lists_the_trainer_flags(tmp_path):
    # `keras-slim-train --help` used to print only "Try --helpfull".
    result = testing.run_console_script(
        tmp_path, "keras-slim-train", "trainers.train", "--help")
    assert result.returncode == 1, result.stderr[-3000:]  # as absl does
    assert "Trains a slimmable network" in result.stdout
    for flag in ("--method", "--model", "--dataset", "--model_dir",
                 "--epochs", "--export", "--[no]augment"):
        assert f"{flag}:" in result.stdout, flag


@pytest.mark.parametrize("below", ["", "run"])
def test_model_dir_that_is_a_file_is_a_clear_error(tmp_path, below):
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a folder")
    model_dir = a_file / below if below else a_file
    # Flag validation: stopped before TensorFlow does anything.
    if below:  # the library call below covers it; one subprocess is enough
        with pytest.raises(ValueError, match="is a file, not a folder"):
            loop.train(loop.TrainConfig(model_dir=str(model_dir),
                                        train_steps=1))
        return
    result = subprocess.run(
        [sys.executable, "-m", "trainers.train", f"--model_dir={model_dir}",
         "--train_steps=1"], cwd=REPO, env=subprocess_env(),
        capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"--model_dir={model_dir}" in result.stderr
    assert "is a file, not a folder" in result.stderr or (
        "is an existing file, not a folder" in result.stderr)
    # The library call says the same.
    with pytest.raises(ValueError, match="not a folder"):
        loop.train(loop.TrainConfig(model_dir=str(model_dir), train_steps=1))
    assert a_file.read_text() == "not a folder"


def test_config_from_flags_parses_lists_and_rejects_bad_ones():
    config = config_for("--method=snet", "--widths=0.5,1", "--seed=7")
    assert config.widths == (0.5, 1.0) and config.seed == 7
    with pytest.raises(flags.ValidationError, match="width_range"):
        config_for("--width_range=0.25,0.5,1")


@pytest.mark.parametrize(
    "name, widths, switchable, triangular",
    [
        ("plain", [1.0], False, False),
        ("us", None, False, False),
        ("snet", [0.25, 0.5, 1.0], True, False),
        ("awn", [0.25, 0.5, 1.0], False, True),
        ("awn_rs", None, False, True),
    ],
)
def test_each_method_builds_its_network(name, widths, switchable, triangular):
    config = loop.TrainConfig(
        method=name, model="lenet_3c1l",
        model_kwargs='{"padding": "same", "n": 4}',
        widths=(0.25, 0.5, 1.0), width_range=(0.25, 1.0),
    )
    method = methods.get(name)
    model = method.build(config, (8, 8, 1), 10)
    assert isinstance(model, keras_slim.SlimmableModel)
    assert model.widths == widths
    layers = model.network.layers
    assert any(isinstance(l, SwitchableBatchNormalization)
               for l in layers) == switchable
    assert any(isinstance(l, SlimConv2D) and l.triangular
               for l in layers) == triangular
    compile_kwargs = method.compile_kwargs(
        loop.TrainConfig(method=name, per_replica_widths=True)
    )
    # Only methods that draw random widths can draw them per replica.
    assert compile_kwargs["per_replica_widths"] == (widths is None)
    assert compile_kwargs["inplace_distillation"] == (name != "plain")
    assert method.report_widths(config) == (widths or [0.25, 0.5, 0.75, 1.0])


def test_unknown_method_and_bad_model_kwargs_are_clear():
    with pytest.raises(ValueError, match="Known methods: awn, awn_rs"):
        methods.get("no_such_method")
    with pytest.raises(ValueError, match="JSON object"):
        methods.parse_model_kwargs("padding=same")
    with pytest.raises(ValueError, match="cannot import"):
        methods.get("us").build(
            loop.TrainConfig(model="no_such_module:builder"), (8, 8, 1), 10
        )


def test_incompatible_settings_fail_before_any_work(tmp_path):
    config = loop.TrainConfig(sync_bn=True, per_replica_widths=True,
                              model_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="cannot be combined"):
        loop.train(config)
    with pytest.raises(ValueError, match="batch_size=4096 is larger"):
        loop.train(loop.TrainConfig(batch_size=4096, model_dir=str(tmp_path)))
    assert not (tmp_path / "run").exists()


def colour_folder(root, per_class=12, size=8):
    """2 classes of small JPEGs told apart by colour."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(["red", "blue"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 60, (size, size, 3))
            image[..., 2 * label] += 180
            (root / name / f"{i}.jpg").write_bytes(tf.io.encode_jpeg(
                image.astype(np.uint8)).numpy())
    return root


def test_bad_data_is_a_clear_error_naming_it(tmp_path):
    images = colour_folder(tmp_path / "images")
    broken = images / "red" / "broken.jpg"
    broken.write_bytes(b"<html>Service Unavailable</html>")
    empty_tfds = tmp_path / "tfds"
    empty_tfds.mkdir()
    for dataset, extra, expected in (
        (f"folder:{images}", [], [str(broken), "--skip_bad_images"]),
        ("tfds:mnist", [f"--data_dir={empty_tfds}"],
         ["'mnist' is not prepared", "--download", "tfds build mnist"]),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "trainers.train", f"--dataset={dataset}",
             f"--model_dir={tmp_path / 'run'}", "--train_steps=2",
             "--batch_size=4", *extra], cwd=REPO, env=subprocess_env(),
            capture_output=True, text=True, timeout=TIMEOUT)
        assert result.returncode == 2, result.stderr[-3000:]
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        assert "ERROR: " in result.stderr
        for text in expected:
            assert text in result.stderr, (text, result.stderr[-3000:])
        assert not (tmp_path / "run").exists()


def test_skip_bad_images_trains_and_undecodable_files_are_named(tmp_path):
    images = colour_folder(tmp_path / "images")
    (images / "blue" / "empty.jpg").write_bytes(b"")
    config = loop.TrainConfig(
        method="plain", model=TINY, model_kwargs='{"filters": 4}',
        dataset=f"folder:{images}", batch_size=4, train_steps=2,
        steps_per_loop=2, checkpoint_every_steps=0, verbose=0,
        calibration_examples=8, validation_split=0.25,
        model_dir=str(tmp_path / "run"), skip_bad_images=True,
    )
    report = loop.train(config)
    assert report["num_validation"] == 6  # 24 good files, 25% held out
    # A file whose start and end look fine but whose middle is corrupt
    # passes the quick check and fails inside a training step, where
    # TensorFlow names no file: the trainer names it.
    (images / "blue" / "empty.jpg").unlink()
    corrupt = images / "red" / "3.jpg"
    content = bytearray(corrupt.read_bytes())
    start = content.index(b"\xff\xda")  # start of scan
    content[start - 40:start + 40] = bytes(range(80))
    corrupt.write_bytes(bytes(content))
    config = dataclasses.replace(config, skip_bad_images=False,
                                 model_dir=str(tmp_path / "run2"))
    with pytest.raises(data_lib.BadImageError) as error:
        loop.train(config)
    assert [p for p, _ in error.value.bad] == [str(corrupt)]
    assert "--skip_bad_images" in str(error.value)
    assert isinstance(error.value.__cause__, tf.errors.InvalidArgumentError)


def test_weight_decay_skips_bn_and_biases():
    config = loop.TrainConfig(
        optimizer="sgd", learning_rate=0.1, weight_decay=0.5,
        lr_schedule="constant",
    )
    model = keras_slim.slim(tiny_cnn(), width_range=(0.25, 1.0))
    optimizer = loop.build_optimizer(config, 10, 100)
    optimizer.build(model.trainable_variables)
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    # Zero gradients: with momentum SGD, only weight decay moves a weight.
    optimizer.apply_gradients(
        [(tf.zeros_like(v), v) for v in model.trainable_variables]
    )
    decayed = kept = 0
    for variable in model.trainable_variables:
        old, new = before[variable.path], variable.numpy()
        if variable.name in loop.NO_DECAY_NAMES:
            np.testing.assert_array_equal(new, old, err_msg=variable.path)
            kept += 1
        else:
            np.testing.assert_allclose(new, old * (1 - 0.1 * 0.5), rtol=1e-6)
            decayed += 1
    assert decayed == 3 and kept == 7  # 3 kernels; 3 biases + 2 x (gamma, beta)


def test_learning_rate_schedules_with_warmup():
    def rates(schedule, steps):
        config = loop.TrainConfig(
            learning_rate=0.1, lr_schedule=schedule, warmup_epochs=1.0,
            lr_step_boundaries=(0.5, 0.75), lr_step_factor=0.1,
        )
        fn = loop.learning_rate_schedule(config, steps_per_epoch=10,
                                         total_steps=110)
        return [float(fn(step)) for step in steps]

    # Linear warmup over the first epoch (10 steps), then 100 decay steps.
    np.testing.assert_allclose(rates("cosine", [0, 4, 9]), [0.01, 0.05, 0.1],
                               rtol=1e-5)
    np.testing.assert_allclose(rates("cosine", [10, 60, 110]),
                               [0.1, 0.05, 0.0], atol=1e-6)
    np.testing.assert_allclose(rates("linear", [10, 35, 110]),
                               [0.1, 0.075, 0.0], atol=1e-6)
    np.testing.assert_allclose(rates("step", [10, 59, 61, 86]),
                               [0.1, 0.1, 0.01, 0.001], rtol=1e-5)
    np.testing.assert_allclose(rates("constant", [3, 50]), [0.04, 0.1],
                               rtol=1e-5)


def test_custom_loop_runs_the_same_steps_as_fit():
    config = loop.TrainConfig(
        model=TINY, batch_size=64, learning_rate=0.05, weight_decay=1e-3,
    )
    strategy = tf.distribute.get_strategy()

    def fresh_model_and_data():
        # A new pipeline per driver: a second pass over the same one would
        # be reshuffled. Seeded first: the shuffle order also depends on
        # TensorFlow's global seed when the pipeline is built.
        keras.utils.set_random_seed(5)
        train_ds, _, info = data_lib.load(
            "digits", batch_size=64, seed=0, drop_remainder=True
        )
        model = loop.build_compiled_model(config, info, 22, 100)
        return model, train_ds

    reference, train_ds = fresh_model_and_data()
    history = reference.fit(train_ds.take(6), epochs=1, verbose=0)

    model, train_ds = fresh_model_and_data()
    train_steps = loop.make_train_function(model, strategy)
    iterator = iter(strategy.experimental_distribute_dataset(train_ds))
    logs = train_steps(iterator, tf.constant(6))
    assert int(model.optimizer.iterations) == 6
    for ours, theirs in zip(model.weights, reference.weights):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-6,
                                   err_msg=ours.path)
    # Both average the same per-step values over the 6 steps.
    for key in ("loss", "loss_w0.25", "accuracy_w1.00"):
        assert logs[key].numpy() == pytest.approx(history.history[key][0],
                                                  rel=1e-5)
    # Calls of another length reuse the trace (num_steps is a tensor).
    train_steps(iterator, tf.constant(2))
    assert train_steps.experimental_get_tracing_count() == 1


def test_trains_on_tfds_mock_data_in_process(tmp_path):
    import tensorflow_datasets as tfds

    config = loop.TrainConfig(
        method="plain", model=TINY, model_kwargs='{"filters": 4}',
        dataset="tfds:mnist", batch_size=8, train_steps=4, steps_per_loop=3,
        checkpoint_every_steps=0, label_smoothing=0.1,
        model_dir=str(tmp_path), verbose=0, calibration_examples=16,
    )
    with tfds.testing.mock_data(num_examples=24):
        report = loop.train(config)
    assert report["steps"] == 4 and report["num_replicas"] == 1
    assert [w["width"] for w in report["widths"]] == [1.0]
    assert report["widths"][0]["channels"] == [4, 8]
    assert 0.0 <= report["widths"][0]["accuracy"] <= 1.0
    # Loops stop at checkpoint steps and at the end: 3 + 1 steps.
    assert sorted(read_scalars(tmp_path / "train")["loss"]) == [3, 4]
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-4")


def test_a_finished_run_leaves_a_deployable_model_and_exports(tmp_path):
    config = loop.TrainConfig(
        method="us", model=TINY, model_kwargs='{"filters": 4}',
        dataset="digits", batch_size=32, train_steps=6, steps_per_loop=3,
        checkpoint_every_steps=0, model_dir=str(tmp_path), verbose=0,
        calibration_examples=64, report_widths=(0.5, 1.0),
        export=("tflite", "onnx"), quantize="float16",
    )
    report = loop.train(config)
    loaded = keras.models.load_model(tmp_path / "model.keras")
    _, val_ds, _ = data_lib.load("digits", batch_size=64, seed=0,
                                 validation_split=0.1)
    for entry in report["widths"]:
        # The saved model carries the calibrated statistics of every width.
        accuracy = loop.evaluate_widths(loaded, val_ds, [entry["width"]])[0]
        assert accuracy == pytest.approx(entry["accuracy"])
    for fmt, suffix in (("tflite", "_float16.tflite"), ("onnx", ".onnx")):
        manifest = keras_slim.export.read_manifest(tmp_path / fmt)
        files = sorted(e["file"] for e in manifest["exports"])
        assert files == sorted(
            f"{loaded.network.name}_w{w:g}{suffix}" for w in (0.5, 1.0))
        assert all(e["max_abs_diff"] <= e["tolerance"]
                   for e in manifest["exports"])
    assert not list(tmp_path.glob("**/*.partial"))
    # The report says how to load the model; the recipe works as written,
    # and `import keras_slim` is what makes it work.
    recipe = report["load_model"]
    assert recipe == ("import keras, keras_slim; model = "
                      f"keras.models.load_model('{tmp_path / 'model.keras'}')")
    check = (
        "import keras\n"
        f"try:\n    keras.models.load_model('{tmp_path / 'model.keras'}')\n"
        "except Exception as err:\n    print('without:', type(err).__name__)\n"
        f"{recipe}\n"
        "print('with:', type(model).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", check], cwd=REPO,
                          env=subprocess_env(), capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "without: TypeError" in done.stdout
    assert "with: SlimmableModel" in done.stdout
    # Running the finished command again trains nothing and rewrites
    # nothing.
    stamp = (tmp_path / "model.keras").stat().st_mtime_ns
    assert loop.train(config) == report
    assert (tmp_path / "model.keras").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="--export: unknown format"):
        loop.train(loop.TrainConfig(export=("tflite", "coreml"),
                                    model_dir=str(tmp_path / "other")))


def figures(report):
    """A report without its file records (model.keras is not byte-stable:
    Keras stamps the save date into it)."""
    return {k: v for k, v in report.items() if k != "outputs"}


def damage(model_dir, what):
    """Breaks one output of a finished run, as a user or a disk might."""
    tflite = sorted((model_dir / "tflite").glob("*.tflite"))
    onnx = sorted((model_dir / "onnx").glob("*.onnx"))
    if what == "truncate model.keras":
        model_file = model_dir / "model.keras"
        model_file.write_bytes(model_file.read_bytes()[:1000])
    elif what == "delete model.keras":
        (model_dir / "model.keras").unlink()
    elif what == "delete a tflite file":
        tflite[0].unlink()
    elif what == "flip a byte of an onnx file":
        content = bytearray(onnx[-1].read_bytes())
        content[len(content) // 2] ^= 0xFF
        onnx[-1].write_bytes(bytes(content))
    elif what == "delete the tflite manifest":
        (model_dir / "tflite" / "manifest.json").unlink()
    elif what == "corrupt report.json":
        (model_dir / "report.json").write_text("{")
    else:
        raise ValueError(what)


@pytest.mark.slow
def test_a_finished_run_rebuilds_what_is_missing_or_damaged(tmp_path,
                                                            caplog):
    # A finished run used to say "nothing to do" as long as report.json
    # and the manifests existed, whatever their files had become.
    config = loop.TrainConfig(
        method="us", model=TINY, model_kwargs='{"filters": 4}',
        dataset="digits", batch_size=32, train_steps=6, steps_per_loop=3,
        checkpoint_every_steps=0, model_dir=str(tmp_path), verbose=0,
        calibration_examples=64, report_widths=(0.5, 1.0),
        export=("tflite", "onnx"),
    )
    report = loop.train(config)
    def outputs():
        return sorted(str(p.relative_to(tmp_path)) for p in (
            *tmp_path.glob("tflite/*"), *tmp_path.glob("onnx/*"),
            *tmp_path.glob("*.*")))

    files = outputs()
    for what in ("truncate model.keras", "delete model.keras",
                 "delete a tflite file", "flip a byte of an onnx file",
                 "delete the tflite manifest", "corrupt report.json"):
        damage(tmp_path, what)
        caplog.clear()
        with caplog.at_level("WARNING"):
            rebuilt = loop.train(config)
        assert "Calibrating, evaluating and exporting again" in caplog.text
        # Same figures, same files, all intact again.
        assert figures(rebuilt) == figures(report), what
        assert outputs() == files
        assert deploy.check_outputs(tmp_path, config.export) == [], what
        keras.models.load_model(tmp_path / "model.keras")
    # Complete again: nothing to do, nothing rewritten.
    stamp = (tmp_path / "model.keras").stat().st_mtime_ns
    assert figures(loop.train(config)) == figures(report)
    assert (tmp_path / "model.keras").stat().st_mtime_ns == stamp
    # Asking for another --quantize is not "finished" either; the float32
    # files of the first export are gone, not listed.
    float16 = dataclasses.replace(config, quantize="float16")
    assert figures(loop.train(float16)) == figures(report)
    assert sorted(p.name for p in (tmp_path / "tflite").glob("*")) == [
        "manifest.json", "tiny_cnn_w0.5_float16.tflite",
        "tiny_cnn_w1_float16.tflite"]


# ------------------------------------------------------------- subprocess
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run, and the same run killed (-9) and restarted."""
    result = once_per_session(tmp_path_factory, "trainer_runs", _kill_and_resume)
    for key in ("full", "killed"):
        result[key] = pathlib.Path(result[key])
    return result


def _kill_and_resume(root):
    full, killed = root / "full", root / "killed"
    env = subprocess_env()
    with open(root / "full.log", "w") as full_log, \
            open(root / "killed.log", "w") as killed_log:
        uninterrupted = subprocess.Popen(
            trainer_command(full), cwd=REPO, env=env, stdout=full_log,
            stderr=subprocess.STDOUT,
        )
        victim = subprocess.Popen(
            trainer_command(killed), cwd=REPO, env=env, stdout=killed_log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + TIMEOUT
            # The index file is written after the checkpoint it names.
            while not (killed / "checkpoint").exists():
                assert victim.poll() is None, (
                    "the run ended before writing a checkpoint:\n"
                    + (root / "killed.log").read_text()[-3000:]
                )
                assert time.monotonic() < deadline, "no checkpoint in time"
                time.sleep(0.005)
            finished_early = victim.poll() is not None
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=30)
        finally:
            if victim.poll() is None:
                victim.kill()
        killed_at = int(re.search(
            r"ckpt-(\d+)$", tf.train.latest_checkpoint(str(killed))
        ).group(1))
        resumed = subprocess.run(
            trainer_command(killed), cwd=REPO, env=env, capture_output=True,
            text=True, timeout=TIMEOUT,
        )
        uninterrupted.wait(timeout=TIMEOUT)
    return {
        "full": str(full),
        "killed": str(killed),
        "killed_at": killed_at,
        "finished_early": finished_early,
        "resumed_returncode": resumed.returncode,
        "resumed_log": resumed.stderr,
        "full_returncode": uninterrupted.returncode,
        "full_log": (root / "full.log").read_text(),
    }


@pytest.fixture(scope="module")
def rerun_after_last_checkpoint(tmp_path_factory):
    """A finished run, and the same run killed after its last checkpoint
    (during calibration or export), then restarted."""
    result = once_per_session(tmp_path_factory, "after_last_checkpoint",
                              _rerun_after_last_checkpoint)
    for key in ("full", "rerun"):
        result[key] = pathlib.Path(result[key])
    return result


def _rerun_after_last_checkpoint(root):
    # No augmentation: the final calibration then used to read the training
    # pipeline itself, whose shuffle order depends on how many passes over
    # it were started, which differs between the two processes.
    flags_used = [f for f in RUN_FLAGS if f != "--augment"] + [
        "--export=tflite", "--nodeterministic"]
    full, rerun = root / "full", root / "rerun"
    env = subprocess_env()
    first = subprocess.run(
        [sys.executable, "-m", "trainers.train", f"--model_dir={full}",
         *flags_used], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=TIMEOUT)
    assert first.returncode == 0, first.stderr[-3000:]
    # What a kill after the last checkpoint leaves: no report, no model,
    # no (or a partial) export.
    shutil.copytree(full, rerun)
    (rerun / "report.json").unlink()
    (rerun / "model.keras").unlink()
    shutil.rmtree(rerun / "tflite")
    second = subprocess.run(
        [sys.executable, "-m", "trainers.train", f"--model_dir={rerun}",
         *flags_used], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=TIMEOUT)
    assert second.returncode == 0, second.stderr[-3000:]
    return {"full": str(full), "rerun": str(rerun),
            "full_log": first.stderr + first.stdout,
            "rerun_log": second.stderr + second.stdout}


def test_a_run_killed_after_its_last_checkpoint_writes_identical_files(
        rerun_after_last_checkpoint):
    runs = rerun_after_last_checkpoint
    full = json.loads((runs["full"] / "report.json").read_text())
    rerun = json.loads((runs["rerun"] / "report.json").read_text())
    assert "report.json is missing" in runs["rerun_log"]
    assert "Training lenet_3c1l" not in runs["rerun_log"]  # nothing to train
    assert [w["accuracy"] for w in rerun["widths"]] == [
        w["accuracy"] for w in full["widths"]]
    assert {k: v for k, v in rerun.items() if k not in ("outputs",
                                                        "load_model")} == {
        k: v for k, v in full.items() if k not in ("outputs", "load_model")}
    names = sorted(p.name for p in (runs["full"] / "tflite").glob("*.tflite"))
    assert len(names) == 4
    for name in names:
        assert (runs["rerun"] / "tflite" / name).read_bytes() == (
            runs["full"] / "tflite" / name).read_bytes(), name


def test_long_work_says_what_it_is_doing(rerun_after_last_checkpoint):
    log = rerun_after_last_checkpoint["full_log"]
    # Before the first update (tens of seconds of tracing) ...
    tracing = log.index("Tracing the training step")
    assert tracing < log.index("Traced; the first 2 step(s) took")
    # ... and through the final calibration and export, width by width.
    for i, width in enumerate(["0.25", "0.5", "0.75", "1"]):
        assert (f"Calibrating BN statistics for width {width} ({i + 1}/4)"
                in log)
        assert (f"Exporting and verifying tflite for width {width} "
                f"({i + 1}/4)") in log
    assert log.index("Calibrating BN statistics for width 1 (4/4)") < (
        log.index("Exporting and verifying tflite for width 0.25 (1/4)"))
    # The final message says how to load the model.
    model = rerun_after_last_checkpoint["full"] / "model.keras"
    assert ("Load the model with:\n  import keras, keras_slim; model = "
            f"keras.models.load_model('{model}')") in log


def test_killed_run_resumes_to_the_uninterrupted_weights(runs):
    assert runs["full_returncode"] == 0, runs["full_log"][-3000:]
    assert runs["resumed_returncode"] == 0, runs["resumed_log"][-3000:]
    # Killed mid-run, after a checkpoint and before the end.
    assert not runs["finished_early"]
    assert 10 <= runs["killed_at"] < 120
    assert f"Resumed from step {runs['killed_at']}" in runs["resumed_log"]
    ours = checkpoint_values(runs["killed"] / "ckpt-120")
    reference = checkpoint_values(runs["full"] / "ckpt-120")
    assert sorted(ours) == sorted(reference)
    assert any("momentum" in k or "optimizer" in k for k in reference)
    for key, value in reference.items():
        np.testing.assert_array_equal(ours[key], value, err_msg=key)


def test_summaries_and_report(runs):
    full = runs["full"]
    report = json.loads((full / "report.json").read_text())
    assert report["steps"] == 120 and report["method"] == "us"
    assert [w["width"] for w in report["widths"]] == [0.25, 0.5, 0.75, 1.0]
    assert [w["channels"] for w in report["widths"]] == [
        [2, 2, 2], [4, 4, 4], [6, 6, 6], [8, 8, 8]]
    accuracies = [w["accuracy"] for w in report["widths"]]
    assert all(0.0 <= a <= 1.0 for a in accuracies)
    assert accuracies[-1] > 0.3  # chance is 0.1: it learned something
    # The table is printed too.
    assert re.search(r"width\s+channels\s+val accuracy", runs["full_log"])

    train = read_scalars(full / "train")
    for tag in ("loss", "loss/w1.00", "loss/w0.25", "accuracy/w1.00",
                "accuracy/w0.25", "learning_rate"):
        assert sorted(train[tag]) == list(range(2, 121, 2)), tag
    # Warmup for 11 steps (a quarter of 44 steps per epoch), then cosine.
    lr = train["learning_rate"]
    assert lr[2] == pytest.approx(0.1 * 3 / 11, rel=1e-5)
    assert lr[2] < lr[6] < lr[10] == pytest.approx(0.1)
    assert lr[10] > lr[12] > lr[60] > lr[120]
    assert lr[120] == pytest.approx(0.0, abs=1e-7)
    evaluation = read_scalars(full / "eval")
    for entry in report["widths"]:
        tag = f"accuracy/w{entry['width']:.2f}"
        assert evaluation[tag][120] == pytest.approx(entry["accuracy"])


def test_corrupt_checkpoint_is_an_error_not_a_fresh_start(runs, tmp_path):
    model_dir = tmp_path / "corrupt"
    shutil.copytree(runs["full"], model_dir)
    data_file = model_dir / "ckpt-120.data-00000-of-00001"
    data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size
                                                  // 2])
    before = {p.name: p.stat().st_size for p in model_dir.iterdir()}

    result = subprocess.run(
        trainer_command(model_dir), cwd=REPO, env=subprocess_env(),
        capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Cannot resume from checkpoint" in result.stderr
    assert "ckpt-120" in result.stderr and "Traceback" not in result.stderr
    # Nothing was overwritten or added.
    assert {p.name: p.stat().st_size for p in model_dir.iterdir()} == before


def test_checkpoint_of_another_run_is_an_error(runs, tmp_path):
    model_dir = tmp_path / "other"
    shutil.copytree(runs["full"], model_dir)
    flags_for = [a if not a.startswith("--model_kwargs") else
                 '--model_kwargs={"padding": "same", "n": 16}'
                 for a in RUN_FLAGS]
    config = config_for(*flags_for, f"--model_dir={model_dir}",
                        "--nodeterministic")
    # The run's recorded settings differ: refused before any work.
    with pytest.raises(loop.CheckpointError, match="model_kwargs"):
        loop.train(config)
    # Without that record, restoring the checkpoint itself fails loudly.
    (model_dir / "run_config.json").unlink()
    with pytest.raises(loop.CheckpointError, match="Cannot resume"):
        loop.train(config)
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-120")
