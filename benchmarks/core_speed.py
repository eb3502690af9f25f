"""Core training speed of keras_slim vs stock Keras.

Measures, with interleaved repeats (the machine is noisy; median and
p10/p90 are reported):

(a) a slim model trained at full width only vs the stock model it came from
    (3-conv CNN 32-64-128 + BN on 32x32x3, batch 128; digits CNN, batch 64);
(b) one sandwich step (n=4) vs the sum of single train steps of stock models
    built natively at the same widths (fixed widths 1.0, 0.25, 0.5, 0.75),
    plus the real random-width sandwich step;
(c) first-step and first-epoch overhead of sandwich training on digits
    (first call minus a steady one; first epoch minus the median steady
    epoch), medians over fresh models.

A/B variants measured in the same run: `slim_norm_old` traces the BN
moving-statistics update through the previous gather/scatter path.

Usage:
    python -m benchmarks.core_speed --repeats 10 --output_dir results/core_speed
"""

import argparse
import json
import os
import time

import numpy as np

import keras
import tensorflow as tf

import keras_slim
from keras_slim.layers import normalization as norm_lib

from benchmarks.common import spread

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
FIXED_WIDTHS = [1.0, 0.25, 0.5, 0.75]


# ------------------------------------------------------------------ models
def cifar_cnn(counts=(32, 64, 128)):
    layers = [keras.Input((32, 32, 3))]
    for i, c in enumerate(counts):
        layers += [
            keras.layers.Conv2D(c, 3, padding="same"),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
        ]
        if i < len(counts) - 1:
            layers.append(keras.layers.MaxPooling2D())
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)]
    return keras.Sequential(layers)


def digits_cnn(counts=(32, 64, 64)):
    c1, c2, c3 = counts
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(c1, 3, padding="same"),
        keras.layers.BatchNormalization(), keras.layers.ReLU(),
        keras.layers.Conv2D(c2, 3, padding="same"),
        keras.layers.BatchNormalization(), keras.layers.ReLU(),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(c3, 3, padding="same"),
        keras.layers.BatchNormalization(), keras.layers.ReLU(),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10),
    ])


def digits_data():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images[..., None] / 16).astype("float32")[:1408]
    return x, d.target[:1408].astype("int32")


def cifar_like_data(n=1024, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 32, 32, 3), dtype=np.float32)
    return x, rng.integers(0, 10, n).astype("int32")


SPECS = {
    "cifar_cnn": (cifar_cnn, cifar_like_data, 128),
    "digits_cnn": (digits_cnn, digits_data, 64),
}


def dataset(data, batch):
    x, y = data
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    return ds.batch(batch, drop_remainder=True).repeat().prefetch(8)


def _fixed_width_model(model, widths):
    """Trains the given Python-float widths every step (static shapes)."""
    # Widths without logging slots are trained, not logged.
    model.training_widths = lambda: list(widths)
    return model


def slim_model(builder, mode):
    """mode: 'full' | 'fixed4' | 'random4'."""
    model = keras_slim.slim(builder(), width_range=(0.25, 1.0))
    model.compile("adam", LOSS, metrics=["accuracy"], sandwich_size=4)
    if mode == "full":
        _fixed_width_model(model, [1.0])
    elif mode == "fixed4":
        _fixed_width_model(model, FIXED_WIDTHS)
    return model


def stock_model(builder, counts=None):
    model = builder() if counts is None else builder(tuple(counts))
    model.compile("adam", LOSS, metrics=["accuracy"])
    return model


class Runner:
    """One compiled train function fed by its own iterator."""

    def __init__(self, name, make_model, data, batch, warmup_steps):
        self.name = name
        t = time.perf_counter()
        self.model = make_model()
        self.iterator = iter(dataset(data, batch))
        self.model.make_train_function()
        self.fn = self.model.train_function
        for _ in range(warmup_steps):
            logs = self.fn(self.iterator)
        float(logs["loss"])
        self.warmup_seconds = time.perf_counter() - t

    def time_steps(self, steps):
        t = time.perf_counter()
        for _ in range(steps):
            logs = self.fn(self.iterator)
        float(logs["loss"])  # wait for the last step
        return (time.perf_counter() - t) / steps * 1000.0


def interleaved(runners, repeats, steps):
    times = {r.name: [] for r in runners}
    for i in range(repeats):
        order = runners if i % 2 == 0 else runners[::-1]
        for r in order:
            times[r.name].append(r.time_steps(steps))
    return times


# ---------------------------------------------------------------- sections
def section_full_width(spec_name, args):
    builder, data_fn, batch = SPECS[spec_name]
    data = data_fn()
    norm_lib._FAST_PREFIX_UPDATE = False
    old = Runner("slim_norm_old", lambda: slim_model(builder, "full"), data,
                 batch, args.warmup)
    norm_lib._FAST_PREFIX_UPDATE = True
    runners = [
        Runner("stock", lambda: stock_model(builder), data, batch, args.warmup),
        Runner("slim_full", lambda: slim_model(builder, "full"), data, batch,
               args.warmup),
        old,
    ]
    times = interleaved(runners, args.repeats, args.steps)
    out = {k: spread(v) for k, v in times.items()}
    # Ratio per repeat (same repeat = same machine load), then its median.
    for name in ("slim_full", "slim_norm_old"):
        ratio = np.asarray(times[name]) / np.asarray(times["stock"])
        out[f"{name}/stock"] = spread(ratio)
    return out


def section_sandwich(spec_name, args):
    builder, data_fn, batch = SPECS[spec_name]
    data = data_fn()
    probe = keras_slim.slim(builder(), width_range=(0.25, 1.0))
    runners = []
    for w in FIXED_WIDTHS:
        counts = probe.channels_for(w)
        runners.append(Runner(
            f"stock_w{w}", lambda c=counts: stock_model(builder, c), data,
            batch, args.warmup,
        ))
    runners.append(Runner("sandwich_fixed4",
                          lambda: slim_model(builder, "fixed4"), data, batch,
                          args.warmup))
    # Random widths: every new channel configuration costs a first run, so
    # warm longer before measuring the steady state.
    runners.append(Runner("sandwich_random4",
                          lambda: slim_model(builder, "random4"), data, batch,
                          args.warmup_random))
    times = interleaved(runners, args.repeats, args.steps)
    out = {k: spread(v) for k, v in times.items()}
    stock_sum = sum(np.asarray(times[f"stock_w{w}"]) for w in FIXED_WIDTHS)
    out["sum_stock_steps"] = spread(stock_sum)
    for name in ("sandwich_fixed4", "sandwich_random4"):
        out[f"{name}/sum_stock"] = spread(np.asarray(times[name]) / stock_sum)
    out["warmup_seconds"] = {r.name: r.warmup_seconds for r in runners}
    return out


def section_calibrate(spec_name, args):
    """BN calibration of one width vs one inference pass over the same data.

    Calibration is a forward pass that also accumulates exact BN
    statistics, so `model.predict` over the same images is its floor.
    """
    builder, data_fn, batch = SPECS[spec_name]
    x, _ = data_fn()
    model = keras_slim.slim(builder(), width_range=(0.25, 1.0))
    out = {}
    for w in FIXED_WIDTHS:
        def calibrate(w=w):
            keras_slim.calibrate_bn(model, x, widths=[w], batch_size=batch,
                                    verbose=0)

        def predict(w=w):
            model.set_width(w)
            model.predict(x, batch_size=batch, verbose=0)

        calibrate(), predict()  # trace both once
        times = {"calibrate": [], "predict": []}
        for r in range(args.repeats):
            order = [("calibrate", calibrate), ("predict", predict)]
            for name, fn in order[::1 if r % 2 == 0 else -1]:
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1e3)
        tag = f"w{w:g}"
        out[f"calibrate {tag} ({len(x)} images), ms"] = spread(
            times["calibrate"])
        out[f"predict {tag}, ms"] = spread(times["predict"])
        out[f"calibrate/predict {tag}"] = spread(
            np.asarray(times["calibrate"]) / np.asarray(times["predict"]))
    return out


def section_trace(args):
    """First-call and first-epoch overhead on digits with `model.fit`.

    For each model, `--trace_repeats` fresh copies:
    - first step: the first `train_on_batch` (tracing, graph optimization
      and the first run of every width's kernels) minus a steady step;
    - first epoch: the first epoch minus the median steady epoch. With
      random widths this also pays the first run of each new channel
      configuration met during the epoch (oneDNN primitive creation), which
      is not tracing.
    """
    x, y = digits_data()
    out = {}
    makers = {
        "stock": lambda: stock_model(digits_cnn),
        "sandwich_fixed4": lambda: slim_model(digits_cnn, "fixed4"),
        "sandwich_random4": lambda: slim_model(digits_cnn, "random4"),
    }
    runs = {name: [] for name in makers}
    for _ in range(args.trace_repeats):
        for name, make in makers.items():
            model = make()
            t = time.perf_counter()
            model.train_on_batch(x[:64], y[:64])
            first_step = time.perf_counter() - t
            steps = []
            for _ in range(5):
                t = time.perf_counter()
                model.train_on_batch(x[:64], y[:64])
                steps.append(time.perf_counter() - t)
            model = make()
            t = time.perf_counter()
            model.fit(x, y, batch_size=64, epochs=1, verbose=0)
            first = time.perf_counter() - t
            epochs = []
            for _ in range(args.trace_epochs):
                t = time.perf_counter()
                model.fit(x, y, batch_size=64, epochs=1, verbose=0)
                epochs.append(time.perf_counter() - t)
            steady = float(np.median(epochs[-3:]))
            runs[name].append({
                "first_step_s": first_step,
                "step_overhead_s": first_step - float(np.median(steps)),
                "first_epoch_s": first,
                "steady_epoch_s": steady,
                "overhead_s": first - steady,
            })
    for name, values in runs.items():
        out[name] = {
            key: float(np.median([v[key] for v in values]))
            for key in values[0]
        }
        out[name]["runs"] = values
    return out


# ----------------------------------------------------------------- report
def fmt(s):
    return f"{s['median']:8.2f} [{s['p10']:7.2f}, {s['p90']:7.2f}]"


def markdown(results, command):
    lines = ["# keras_slim core speed", "", f"`{command}`", "",
             f"TF {tf.__version__}, Keras {keras.__version__}, "
             f"{os.cpu_count()} CPUs, TF_ENABLE_ONEDNN_OPTS="
             f"{os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'default')}, "
             f"grappler {tf.config.optimizer.get_experimental_options()}", ""]
    for section, per_model in results.items():
        if section == "trace":
            lines += ["## (c) first-step and first-epoch overhead "
                      "(digits, medians of fresh models)", "",
                      "| model | first step s | first-step overhead s | "
                      "first epoch s | steady epoch s | first-epoch "
                      "overhead s |", "|---|---|---|---|---|---|"]
            for name, r in per_model.items():
                lines.append(f"| {name} | {r['first_step_s']:.2f} | "
                             f"{r['step_overhead_s']:.2f} | "
                             f"{r['first_epoch_s']:.2f} | "
                             f"{r['steady_epoch_s']:.2f} | "
                             f"{r['overhead_s']:.2f} |")
            lines.append("")
            continue
        for model_name, rows in per_model.items():
            lines += [f"## {section} — {model_name}", "",
                      "| variant | median | p10 | p90 | unit |",
                      "|---|---|---|---|---|"]
            for name, s in rows.items():
                if not isinstance(s, dict) or "median" not in s:
                    continue
                unit = ("ratio" if "/" in name else
                        "ms" if name.endswith("ms") else "ms/step")
                lines.append(f"| {name} | {s['median']:.3f} | {s['p10']:.3f} "
                             f"| {s['p90']:.3f} | {unit} |")
            lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output_dir", default="results/core_speed")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10,
                        help="steps per timed block")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--warmup_random", type=int, default=150)
    parser.add_argument("--trace_epochs", type=int, default=4)
    parser.add_argument("--trace_repeats", type=int, default=3)
    parser.add_argument("--models", default="cifar_cnn,digits_cnn")
    parser.add_argument("--sections", default="full,sandwich,calibrate,trace")
    parser.add_argument("--grappler", default="default",
                        choices=["default", "off", "no_remap"],
                        help="tf.config.optimizer setting for this process")
    args = parser.parse_args(argv)
    if args.grappler == "off":
        tf.config.optimizer.set_experimental_options(
            {"disable_meta_optimizer": True})
    elif args.grappler == "no_remap":
        tf.config.optimizer.set_experimental_options({"remapping": False})
    command = "python -m benchmarks.core_speed " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items())
    sections = args.sections.split(",")
    models = args.models.split(",")
    results = {}
    if "full" in sections:
        results["(a) full width: slim vs stock"] = {
            m: section_full_width(m, args) for m in models}
    if "sandwich" in sections:
        results["(b) sandwich n=4 vs sum of stock steps"] = {
            m: section_sandwich(m, args) for m in models}
    if "calibrate" in sections:
        results["(d) BN calibration per width vs predict"] = {
            m: section_calibrate(m, args) for m in models}
    if "trace" in sections:
        results["trace"] = section_trace(args)
    text = markdown(results, command)
    print(text)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "core_speed.json"), "w") as f:
        json.dump({"command": command, "results": results}, f, indent=1)
    with open(os.path.join(args.output_dir, "core_speed.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
