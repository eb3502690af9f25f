"""Any-Width Networks vs S-Net and US-Net: LeNet-3C1L on CIFAR-10.

Trains, on 45,000 CIFAR-10 training images (the last 500 images of every
class are held out for validation):

- S-Net: switchable BN, widths [0.25, 0.5, 0.75, 1.0] every step.
- US-Net: sandwich rule (4 widths per step) over [0.25, 1.0], BN calibrated
  after training at every test width.
- AWN: k-width training (the same 4 widths), staircase (triangular) masks,
  one shared BN, `expand_sqrt2` channels, no calibration.
- AWN+RS: AWN trained with the sandwich rule (random width sampling).
- Reference: plain LeNet-3C1L networks trained alone at 0.25/0.5/0.75/1.0.

and reports the validation accuracy at the paper's 10 test widths and the
area under the accuracy-vs-width curve (trapezoid over [0.25, 1.0]). S-Net
can only run its 4 trained widths: at another width it is reported at the
nearest trained width at or below it (marked `*`).

Outputs (in `--output_dir`): `results.json`, `results.md` and
`accuracy_vs_width.png`.

Usage:

    python -m benchmarks.any_width_cifar10 --quick      # < 15 min, 2 cores
    python -m benchmarks.any_width_cifar10              # full, ~1.3 h

The data is `shared/data/cifar10-jpeg-train.tar.gz`, extracted once to
`--cache_dir` (default `~/.cache/keras_slim/cifar10`, outside the repo).

Reference:
    Vu, Eder, Price & Frahm, Any-Width Networks, CVPR Workshops 2020
    (https://arxiv.org/abs/2012.03153).
"""

import argparse
import json
import os
import pathlib
import time

import numpy as np

from benchmarks.common import DEFAULT_ARCHIVE, DEFAULT_CACHE, cifar10_folder, log, write_atomic


# The paper's test widths and the widths of k-width training.
TEST_WIDTHS = (0.25, 0.33, 0.42, 0.5, 0.58, 0.67, 0.75, 0.83, 0.92, 1.0)
K_WIDTHS = (0.25, 0.5, 0.75, 1.0)
WIDTH_RANGE = (0.25, 1.0)
METHODS = ("snet", "usnet", "awn", "awn_rs", "reference")
LABELS = {
    "snet": "S-Net (switchable BN, 4 widths)",
    "usnet": "US-Net (sandwich, calibrated BN)",
    "awn": "AWN (k-width, triangular, shared BN)",
    "awn_rs": "AWN+RS (sandwich, triangular, shared BN)",
    "reference": "Individually trained (plain)",
}
# Per-channel statistics of CIFAR-10's training set.
MEAN = np.array([0.4914, 0.4822, 0.4465], "float32")
STD = np.array([0.2470, 0.2435, 0.2616], "float32")
VAL_PER_CLASS = 500
# Full setting: chosen so the whole run fits in 2.5 h on 2 CPU cores (see
# the estimate printed at the end of a --quick run).
FULL_EPOCHS = 6
QUICK = {"train_per_class": 500, "val_per_class": 200, "epochs": 3}
# Wall seconds per 45k-image training epoch on this 2-core machine, from
# the full run of 2026-11-27 (idle machine, batch 128).
EPOCH_SECONDS = {"snet": 138, "usnet": 148, "awn": 183, "awn_rs": 150,
                 "reference": 113}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true",
                        help="Small subset and few epochs (< 15 min).")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"Epochs (default {FULL_EPOCHS}; "
                        f"{QUICK['epochs']} with --quick).")
    parser.add_argument("--train_per_class", type=int, default=None,
                        help="Training images per class (default 4500; "
                        f"{QUICK['train_per_class']} with --quick).")
    parser.add_argument("--val_per_class", type=int, default=None,
                        help="Validation images per class, from the last "
                        f"{VAL_PER_CLASS} (default {VAL_PER_CLASS}; "
                        f"{QUICK['val_per_class']} with --quick).")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"Comma-separated subset of {METHODS}.")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=2e-3,
                        help="Peak Adam learning rate (cosine decay to 0).")
    parser.add_argument("--distill", action="store_true",
                        help="Inplace distillation for the narrower widths "
                        "(off: with few epochs the near-uniform early teacher "
                        "slows every method down, see benchmarks/README.md).")
    parser.add_argument("--calibration_images", type=int, default=2000,
                        help="Training images for US-Net BN calibration.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--archive", default=str(DEFAULT_ARCHIVE))
    parser.add_argument("--cache_dir", default=str(DEFAULT_CACHE))
    parser.add_argument("--output_dir", default=None,
                        help="Default: ./any_width_cifar10_results[_quick].")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else {
        "train_per_class": VAL_PER_CLASS * 9, "val_per_class": VAL_PER_CLASS,
        "epochs": FULL_EPOCHS,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.train_per_class + VAL_PER_CLASS > 5000:
        parser.error("--train_per_class must be <= 4500 (500 are held out).")
    if not 1 <= args.val_per_class <= VAL_PER_CLASS:
        parser.error(f"--val_per_class must be in [1, {VAL_PER_CLASS}].")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f"Unknown methods {unknown}; choose from {METHODS}.")
    if args.output_dir is None:
        args.output_dir = "any_width_cifar10_results" + (
            "_quick" if args.quick else ""
        )
    return args


def run_signature(args):
    """The arguments that change results: a saved method is reused only if
    these match."""
    keys = ("epochs", "train_per_class", "val_per_class", "batch_size",
            "learning_rate", "distill", "calibration_images", "seed")
    return {k: getattr(args, k) for k in keys}


def load_finished(path, args):
    """Results of methods a previous run with the same settings finished."""
    if not path.exists():
        return {}
    saved = json.loads(path.read_text())
    if saved.get("config") != run_signature(args):
        raise SystemExit(
            f"{path} holds results of a run with different settings "
            f"({saved.get('config')}); use another --output_dir or delete it."
        )
    return {m: r for m, r in saved["results"].items() if m in args.methods}


def save_atomic(path, report):
    write_atomic(path, json.dumps(report, indent=2))


# --------------------------------------------------------------------- data
def load_cifar10(archive, cache_dir):
    """All 50,000 images as uint8 arrays, grouped by class, file order.

    Extracts the JPEG archive once and caches the decoded arrays as one
    `.npz` file, so later runs start in a second.

    Returns:
        `(images, labels, class_names)` with images `[50000, 32, 32, 3]`,
        sorted by class and then by file name within a class.
    """
    import tensorflow as tf

    cache_dir = pathlib.Path(cache_dir).expanduser()
    arrays = cache_dir / "cifar10_train_uint8.npz"
    if arrays.exists():
        data = np.load(arrays)
        return data["images"], data["labels"], list(data["class_names"])
    root = cifar10_folder(archive, cache_dir)
    class_names = sorted(p.name for p in root.iterdir() if p.is_dir())
    paths, labels = [], []
    for label, name in enumerate(class_names):
        files = sorted((root / name).glob("*.jpg"))
        paths += [str(f) for f in files]
        labels += [label] * len(files)
    log(f"Decoding {len(paths)} JPEG images (once)")
    ds = tf.data.Dataset.from_tensor_slices(paths).map(
        lambda p: tf.io.decode_jpeg(tf.io.read_file(p), channels=3),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).batch(2000)
    images = np.concatenate([batch.numpy() for batch in ds])
    labels = np.asarray(labels, "int32")
    np.savez(arrays, images=images, labels=labels,
             class_names=np.asarray(class_names))
    return images, labels, class_names


def split(images, labels, train_per_class, val_per_class):
    """First `train_per_class` and (of the last 500) `val_per_class` images
    of every class."""
    train, val = [], []
    for label in np.unique(labels):
        index = np.flatnonzero(labels == label)
        held_out = index[-VAL_PER_CLASS:]
        train.append(index[: len(index) - VAL_PER_CLASS][:train_per_class])
        val.append(held_out[:val_per_class])
    train, val = np.concatenate(train), np.concatenate(val)
    return (images[train], labels[train]), (images[val], labels[val])


def normalize(images):
    return (images.astype("float32") / 255.0 - MEAN) / STD


def train_dataset(x, y, batch_size, seed):
    """Shuffled, augmented (4-pixel pad + random 32x32 crop + flip)."""
    import tensorflow as tf

    def augment(image, label):
        image = tf.image.pad_to_bounding_box(image, 4, 4, 40, 40)
        image = tf.image.random_crop(image, (32, 32, 3))
        return tf.image.random_flip_left_right(image), label

    ds = tf.data.Dataset.from_tensor_slices((normalize(x), y))
    ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True).prefetch(2)


# ------------------------------------------------------------------ models
def compile_model(model, steps, learning_rate, **kwargs):
    import keras

    # Adam: insensitive to the 4 per-width losses being summed into one
    # step (SGD would need its learning rate retuned per method).
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, steps)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        **kwargs,
    )


def effective_params(model):
    """Trainable parameters, not counting weights a triangular mask zeroes."""
    from keras_slim import graph

    total = 0
    for weight in model.trainable_weights:
        total += int(np.prod(weight.shape))
    for layer in graph.all_layers(getattr(model, "network", model)):
        mask = getattr(layer, "triangular_mask", None)
        if mask is not None:
            spatial = int(np.prod(layer.kernel.shape[:-2]))
            total -= spatial * int(np.sum(np.asarray(mask) == 0))
    return total


def accuracy(model, x, y, batch_size=500):
    logits = model.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(logits, -1) == y))


def snet_width(width):
    """The trained S-Net width used for `width`: nearest at or below."""
    return max(w for w in K_WIDTHS if w <= width + 1e-9)


def run_method(method, data, args):
    """Trains one method; returns its result dict."""
    import keras
    import keras_slim
    from keras_slim import models

    (x_train, y_train), (x_val, y_val) = data
    x_val = normalize(x_val)
    keras.utils.set_random_seed(args.seed)
    ds = train_dataset(x_train, y_train, args.batch_size, args.seed)
    steps = args.epochs * (len(x_train) // args.batch_size)
    result = {"label": LABELS[method]}
    start = time.time()
    cpu_start = time.process_time()

    def fit(model, **compile_kwargs):
        if isinstance(model, keras_slim.SlimmableModel):
            compile_kwargs["inplace_distillation"] = args.distill
        compile_model(model, steps, args.learning_rate, **compile_kwargs)
        # The dataset shuffles itself each epoch.
        history = model.fit(ds, epochs=args.epochs, verbose=2, shuffle=False)
        return {k: [float(v) for v in vals] for k, vals in history.history.items()}

    if method == "reference":
        result["accuracy"], result["params"], result["train_seconds"] = {}, {}, {}
        for width in K_WIDTHS:
            t0 = time.time()
            log(f"reference: plain LeNet-3C1L at width {width}")
            model = models.lenet_3c1l(width_multiplier=width, slimmable=False)
            fit(model)
            result["train_seconds"][str(width)] = time.time() - t0
            result["accuracy"][str(width)] = accuracy(model, x_val, y_val)
            result["params"][str(width)] = effective_params(model)
            log(f"reference {width}: {result['accuracy'][str(width)]:.4f}")
        result["train_seconds_total"] = time.time() - start
        result["train_cpu_seconds"] = time.process_time() - cpu_start
        return result

    if method == "snet":
        model = models.lenet_3c1l(widths=list(K_WIDTHS))
        result["history"] = fit(model)
        evaluated = model
    elif method == "usnet":
        model = models.lenet_3c1l(width_range=WIDTH_RANGE)
        result["history"] = fit(model, sandwich_size=4)
        evaluated = model
    elif method == "awn":
        # Trained at the 4 listed widths; with one shared BN (no switchable
        # rows) its staircase covers the whole range, so it runs, exactly,
        # at any width in [0.25, 1].
        model = models.lenet_3c1l(
            widths=list(K_WIDTHS), triangular=True, expand_sqrt2=True
        )
        result["history"] = fit(model)
        evaluated = model
    elif method == "awn_rs":
        model = models.lenet_3c1l(
            width_range=WIDTH_RANGE, triangular=True, expand_sqrt2=True
        )
        result["history"] = fit(model, sandwich_size=4)
        evaluated = model
    result["train_seconds_total"] = time.time() - start
    result["train_cpu_seconds"] = time.process_time() - cpu_start

    if method == "usnet":
        t0 = time.time()
        # A random subset: the training arrays are sorted by class, so
        # their first images would all be airplanes (one class's BN
        # statistics, wrong for the others).
        chosen = np.random.default_rng(args.seed).permutation(len(x_train))
        calibration = normalize(x_train[chosen[: args.calibration_images]])
        keras_slim.calibrate_bn(
            model, calibration, widths=list(TEST_WIDTHS), batch_size=500,
            verbose=0,
        )
        result["calibration_seconds"] = time.time() - t0
    result["accuracy"] = {}
    for width in TEST_WIDTHS:
        run_at = snet_width(width) if method == "snet" else width
        evaluated.set_width(run_at)
        result["accuracy"][str(width)] = accuracy(evaluated, x_val, y_val)
    evaluated.set_width(1.0)
    result["params"] = effective_params(evaluated)
    result["exact_without_calibration"] = bool(
        evaluated.exact_without_calibration
    )
    log(f"{method}: " + ", ".join(
        f"{w}: {a:.4f}" for w, a in result["accuracy"].items()
    ))
    return result


# ---------------------------------------------------------------- reporting
def area_under_curve(points):
    """Trapezoid area of accuracy over width for `{width: accuracy}`."""
    widths = sorted(points, key=float)
    x = np.array([float(w) for w in widths])
    y = np.array([points[w] for w in widths])
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def markdown_table(results, args):
    span = WIDTH_RANGE[1] - WIDTH_RANGE[0]
    header = ["Method"] + [f"{w:g}" for w in TEST_WIDTHS] + [
        "AUC", "AUC / 0.75", "Params @1.0", "Train s", "Train CPU s"
    ]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for method in [m for m in METHODS if m in results]:
        result = results[method]
        acc = result["accuracy"]
        cells = []
        for w in TEST_WIDTHS:
            if str(w) in acc:
                star = "*" if method == "snet" and snet_width(w) != w else ""
                cells.append(f"{100 * acc[str(w)]:.2f}{star}")
            else:
                cells.append("–")
        auc = result["auc"]
        params = result["params"]
        if isinstance(params, dict):
            params = params.get("1.0", "")
        lines.append(
            "| " + " | ".join(
                [LABELS[method]] + cells + [
                    f"{auc:.4f}", f"{100 * auc / span:.2f}", str(params),
                    f"{result['train_seconds_total']:.0f}",
                    f"{result['train_cpu_seconds']:.0f}",
                ]
            ) + " |"
        )
    notes = [
        "",
        f"Validation accuracy (%) on {10 * args.val_per_class} held-out "
        f"CIFAR-10 images (last {VAL_PER_CLASS} per class"
        + (f", first {args.val_per_class} of them" if args.val_per_class
           < VAL_PER_CLASS else "")
        + f"); trained on {10 * args.train_per_class} images for "
        f"{args.epochs} epochs (Adam {args.learning_rate:g}, cosine, batch "
        f"{args.batch_size}, pad-crop + flip, inplace distillation "
        f"{'on' if args.distill else 'off'}).",
        "`*` S-Net runs only its trained widths 0.25/0.5/0.75/1.0: it is "
        "reported at the nearest trained width at or below.",
        "AUC: trapezoid area under accuracy vs width over [0.25, 1.0] (max "
        "0.75); AUC / 0.75 is the mean accuracy over the range, in %. The "
        "reference row's AUC uses its 4 widths only.",
        "Params: trainable parameters at width 1.0, excluding weights a "
        "triangular mask zeroes.",
        "Train s: wall-clock training time (all 4 networks for the "
        "reference row); Train CPU s: CPU time of this process, which does "
        "not grow when other jobs share the machine (load average at the "
        f"start {args.load_at_start}).",
    ]
    return "\n".join(lines + notes) + "\n"


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"snet": "s--", "usnet": "o-", "awn": "^-", "awn_rs": "v-"}
    for method, style in styles.items():
        if method not in results:
            continue
        acc = results[method]["accuracy"]
        widths = [float(w) for w in acc]
        values = [100 * v for v in acc.values()]
        kwargs = {"drawstyle": "steps-post"} if method == "snet" else {}
        ax.plot(widths, values, style, label=LABELS[method], markersize=4,
                **kwargs)
    if "reference" in results:
        acc = results["reference"]["accuracy"]
        ax.plot([float(w) for w in acc], [100 * v for v in acc.values()],
                "k*", markersize=11, label=LABELS["reference"])
    ax.set_xlabel("width multiplier")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("LeNet-3C1L on CIFAR-10: accuracy vs width")
    ax.set_xticks(TEST_WIDTHS)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    args.load_at_start = round(os.getloadavg()[0], 1)
    started = time.time()
    images, labels, class_names = load_cifar10(args.archive, args.cache_dir)
    data = split(images, labels, args.train_per_class, args.val_per_class)
    log(
        f"Data: {len(data[0][0])} training / {len(data[1][0])} validation "
        f"images, {len(class_names)} classes; {args.epochs} epochs; methods "
        f"{args.methods}"
    )
    planned = sum(EPOCH_SECONDS[m] for m in args.methods) * args.epochs * (
        len(data[0][0]) / (10 * VAL_PER_CLASS * 9)
    )
    log(f"Estimated training time on 2 dedicated cores: {planned / 60:.0f} "
        f"min (+ evaluation; more if other jobs share the machine)")
    output = pathlib.Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    results = load_finished(output / "partial.json", args)
    for method in args.methods:
        if method in results:
            log(f"=== {LABELS[method]}: finished earlier, kept "
                f"(delete {output / 'partial.json'} to retrain) ===")
            continue
        log(f"=== {LABELS[method]} ===")
        results[method] = run_method(method, data, args)
        results[method]["auc"] = area_under_curve(results[method]["accuracy"])
        # Each finished method is saved at once, so an interrupted run
        # restarted with the same arguments only trains what is missing.
        save_atomic(output / "partial.json", {
            "config": run_signature(args), "results": results,
        })
    results = {m: results[m] for m in args.methods}  # table order

    # Cost of one training image-epoch per method, to size the full run.
    # Wall time includes other jobs on the machine; CPU time / 2 is what
    # 2 dedicated cores would need if TensorFlow kept both busy.
    images_seen = len(data[0][0]) * args.epochs
    full_images = 10 * VAL_PER_CLASS * 9
    estimate = {}
    for clock, key in (("wall", "train_seconds_total"),
                       ("cpu_over_2_cores", "train_cpu_seconds")):
        scale = 1.0 if clock == "wall" else 0.5
        per_image = {
            m: scale * r[key] / images_seen for m, r in results.items()
        }
        estimate[clock] = {
            "seconds_per_epoch_at_45k": {
                m: per_image[m] * full_images for m in per_image
            },
            "full_run_hours_at_epochs": {
                str(e): sum(per_image.values()) * full_images * e / 3600
                for e in sorted({FULL_EPOCHS, 6, 8, 10})
            },
        }
    elapsed = time.time() - started
    table = markdown_table(results, args)
    report = {
        "config": {
            k: v for k, v in vars(args).items() if k not in ("archive",)
        },
        "test_widths": list(TEST_WIDTHS),
        "k_widths": list(K_WIDTHS),
        "results": results,
        "estimate": estimate,
        "elapsed_seconds": elapsed,
    }
    (output / "results.json").write_text(json.dumps(report, indent=2))
    (output / "results.md").write_text(table)
    plot(results, output / "accuracy_vs_width.png")
    print()
    print(table)
    log(f"Total {elapsed / 60:.1f} min. Outputs in {output.resolve()}")
    log("Extrapolated from this run (one-time tracing included, so small "
        "runs overestimate; the start-up estimate uses steady-state times):")
    for clock, numbers in estimate.items():
        log(f"[{clock}] one 45k-image epoch: " + ", ".join(
            f"{m} {s:.0f} s"
            for m, s in numbers["seconds_per_epoch_at_45k"].items()
        ))
        log(f"[{clock}] full run, training only: " + ", ".join(
            f"{e} epochs {h:.2f} h"
            for e, h in numbers["full_run_hours_at_epochs"].items()
        ))


if __name__ == "__main__":
    main()
