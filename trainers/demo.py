"""The main job: train a universally slimmable CNN, calibrate, export, report.

On the embedded digits data (offline) it trains a US-Net LeNet-3C1L with the
sandwich rule and inplace distillation, recalibrates BN exactly for each
report width, prints a table (width, channels, MACs, params, accuracy,
TFLite size and latency), plots accuracy against MACs, and writes the
`.keras` model, one verified `.tflite` and `.onnx` file per width and their
manifests into `--output_dir`.

Usage:

    keras-slim-demo --output_dir=/tmp/keras_slim_demo
    keras-slim-demo --dataset=folder:/data/cifar10/train --epochs=30
    keras-slim-demo --dataset=tfds:cifar10 --data_dir=~/tensorflow_datasets
"""

import functools
import json
import os
import sys
import time
import warnings

from absl import app
from absl import flags
from absl import logging

from . import cli

_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", "keras_slim_demo", "Where the model, exports, manifest, "
    "report and plot are written.")
cli.validate_output_dir("output_dir")
_DATASET = flags.DEFINE_string(
    "dataset", "digits", "'digits' (embedded, offline), 'tfds:NAME' or "
    "'folder:PATH' (one sub-folder per class).")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "TFDS data directory (for --dataset=tfds:NAME).")
_DOWNLOAD = flags.DEFINE_bool(
    "download", False, "For --dataset=tfds:NAME: download and prepare the "
    "data set if it is not prepared in --data_dir (needs a network).")
_SKIP_BAD_IMAGES = flags.DEFINE_bool(
    "skip_bad_images", False, "For --dataset=folder:PATH: leave out, with a "
    "warning naming them, image files that cannot be decoded.")
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", None, "Resize images to this square size (folder/tfds).")
_MODEL = flags.DEFINE_string(
    "model", "lenet_3c1l", "Zoo model: lenet_3c1l, mobilenet_v2, resnet20, "
    "resnet56.")
_MIN_WIDTH = flags.DEFINE_float("min_width", 0.25, "Smallest width.")
_MAX_WIDTH = flags.DEFINE_float("max_width", 1.0, "Largest width.")
_REPORT_WIDTHS = flags.DEFINE_list(
    "report_widths", ["0.25", "0.5", "0.75", "1.0"],
    "Widths that are calibrated, evaluated and exported.")
_EPOCHS = flags.DEFINE_integer("epochs", 30, "Training epochs.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Batch size.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 2e-3, "Adam step size.")
_SANDWICH_SIZE = flags.DEFINE_integer(
    "sandwich_size", 4, "Widths per step: max, min and n-2 random.")
_DISTILL = flags.DEFINE_bool(
    "inplace_distillation", True, "Sub-widths learn from the max width.")
_CALIBRATION_BATCHES = flags.DEFINE_integer(
    "calibration_batches", None, "Batches per width for BN calibration "
    "(default: the whole training split).")
_ONNX = flags.DEFINE_bool("onnx", True, "Also export ONNX files.")
_LATENCY_RUNS = flags.DEFINE_integer(
    "latency_runs", 50, "Timed LiteRT runs per width.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")


def _table(rows):
    header = ("width", "channels", "MACs", "params", "accuracy",
              "tflite KiB", "latency ms")
    lines = [header] + [
        (
            f"{r['width']:.2f}",
            "-".join(str(c) for c in r["channels"]),
            f"{r['macs']:,}",
            f"{r['params']:,}",
            f"{r['accuracy']:.4f}",
            f"{r['tflite_bytes'] / 1024:.1f}",
            f"{r['latency_median_ms']:.3f}",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.rjust(w) for cell, w in zip(line, widths))
        for line in lines
    )


def _plot(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["macs"] / 1e6 for r in rows], [r["accuracy"] for r in rows],
            "o-")
    for r in rows:
        ax.annotate(f"{r['width']:.2f}x", (r["macs"] / 1e6, r["accuracy"]),
                    textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set_xlabel("MMACs")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _first_step_notice():
    """A callback saying the first training step is being traced, then its
    time: `fit(verbose=2)` prints once per epoch, and the first step alone
    (tracing and compiling the sandwich step) takes tens of seconds on CPU;
    without a word the job looks hung."""
    import keras

    class FirstStepNotice(keras.callbacks.Callback):
        started = None
        reported = False

        def on_train_batch_begin(self, batch, logs=None):
            if self.started is None:
                self.started = time.time()
                print("      tracing the training step (its first call "
                      "compiles it; this can take a minute)...", flush=True)

        def on_train_batch_end(self, batch, logs=None):
            if not self.reported:
                self.reported = True
                print(f"      first step done in "
                      f"{time.time() - self.started:.0f} s", flush=True)

    return FirstStepNotice()


def main(argv):
    """Runs the job; bad data is a clear error, not a traceback."""
    del argv
    import tensorflow as tf

    from keras_slim import data as data_lib

    try:
        _job()
    except tf.errors.InvalidArgumentError as err:
        explained = data_lib.explain_decode_error(_DATASET.value, err)
        if explained is None:
            raise
        print(f"ERROR: {explained}", file=sys.stderr)
        return 2
    except data_lib.DataError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    return 0


def _job():
    # TensorFlow's converters log every step at INFO; keep the output to
    # this job's progress.
    logging.set_verbosity(logging.WARNING)
    warnings.filterwarnings("ignore", message="The structure of `inputs`")
    import keras

    import keras_slim

    keras.utils.set_random_seed(_SEED.value)
    started = time.time()
    output_dir = os.path.abspath(os.path.expanduser(_OUTPUT_DIR.value))
    os.makedirs(output_dir, exist_ok=True)
    widths = sorted(float(w) for w in _REPORT_WIDTHS.value)

    print(f"[1/5] Loading {_DATASET.value}")
    load = functools.partial(
        keras_slim.data.load, _DATASET.value, batch_size=_BATCH_SIZE.value,
        data_dir=_DATA_DIR.value, image_size=_IMAGE_SIZE.value,
        seed=_SEED.value, download=_DOWNLOAD.value,
        skip_bad_images=_SKIP_BAD_IMAGES.value,
    )
    train, validation, info = load(augment=_DATASET.value != "digits")
    calibration_data, _, _ = load(augment=False, shuffle=False)
    print(f"      {info.num_train} training / {info.num_validation} "
          f"validation images of shape {info.input_shape}, "
          f"{info.num_classes} classes")

    model = keras_slim.models.get(
        _MODEL.value,
        input_shape=info.input_shape,
        num_classes=info.num_classes,
        width_range=(_MIN_WIDTH.value, _MAX_WIDTH.value),
        **({"padding": "same"} if _MODEL.value == "lenet_3c1l" else {}),
    )
    model.compile(
        keras.optimizers.Adam(_LEARNING_RATE.value),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        sandwich_size=_SANDWICH_SIZE.value,
        inplace_distillation=_DISTILL.value,
        width_seed=_SEED.value,
    )
    print(f"[2/5] Training a US-Net {_MODEL.value} for {_EPOCHS.value} "
          f"epochs (sandwich of {_SANDWICH_SIZE.value} widths)")
    # `train` shuffles itself every epoch; fit's own shuffle would only warn.
    model.fit(train, epochs=_EPOCHS.value, verbose=2, shuffle=False,
              callbacks=[_first_step_notice()])

    print(f"[3/5] Calibrating BatchNormalization for widths {widths}")
    for i, width in enumerate(widths):
        print(f"      width {width:g} ({i + 1}/{len(widths)})")
        keras_slim.calibrate_bn(model, calibration_data, widths=[width],
                                num_batches=_CALIBRATION_BATCHES.value)
    model.set_width(_MAX_WIDTH.value)
    model_path = os.path.join(output_dir, "model.keras")
    model.save(model_path)

    print("[4/5] Exporting and verifying one TFLite"
          f"{' and ONNX' if _ONNX.value else ''} file per width")
    for kind, export in (("tflite", keras_slim.export.to_tflite),
                         ("onnx", keras_slim.export.to_onnx)):
        if kind == "onnx" and not _ONNX.value:
            continue
        # One width per call (the manifest keeps the others' entries), so
        # each conversion of a few seconds is announced.
        for i, width in enumerate(widths):
            print(f"      {kind} width {width:g} ({i + 1}/{len(widths)})")
            manifest = export(model, os.path.join(output_dir, kind),
                              widths=[width],
                              input_range=keras_slim.data.INPUT_RANGE)
        if kind == "tflite":
            exports = {float(e["width"]): e for e in manifest["exports"]}

    print("[5/5] Evaluating and timing each width")
    rows = []
    for width in widths:
        model.set_width(width)
        accuracy = model.evaluate(validation, verbose=0)[1]
        entry = exports[width]
        path = os.path.join(output_dir, "tflite", entry["file"])
        latency = keras_slim.profile_latency(
            path, num_runs=_LATENCY_RUNS.value)
        rows.append({
            "width": width,
            "channels": model.channels_for(width),
            "macs": int(entry["macs"]),
            "params": int(entry["params"]),
            "accuracy": float(accuracy),
            "tflite_bytes": int(entry["size_bytes"]),
            "tflite_max_abs_diff": entry.get("max_abs_diff"),
            "latency_median_ms": latency["median_ms"],
            "latency_p10_ms": latency["p10_ms"],
            "latency_p90_ms": latency["p90_ms"],
        })
    _plot(rows, os.path.join(output_dir, "accuracy_vs_macs.png"),
          f"US-Net {_MODEL.value} on {_DATASET.value}")
    # keras_slim's layers are found through the registry its import fills:
    # without it `load_model` fails with "Could not locate class".
    load_recipe = ("import keras, keras_slim; "
                   f"model = keras.models.load_model({model_path!r})")
    with open(os.path.join(output_dir, "report.json"), "w") as f:
        json.dump({"dataset": _DATASET.value, "model": _MODEL.value,
                   "epochs": _EPOCHS.value, "rows": rows,
                   "load_model": load_recipe}, f, indent=2)
    print()
    print(_table(rows))
    print(f"\nWrote {output_dir} in {time.time() - started:.0f} s: "
          "model.keras, tflite/, onnx/, report.json, accuracy_vs_macs.png")
    print(f"Load the model with (keras_slim registers its layers):\n  "
          f"{load_recipe}")


def run():
    """Console entry point (`keras-slim-demo`)."""
    cli.show_on_help(sys.modules[__name__])
    app.run(main)


if __name__ == "__main__":
    run()
