"""RePr vs standard training on CIFAR-10: the paper's small ConvNet, ResNet-20.

Trains on 45,000 CIFAR-10 training images (the last 500 images of every
class are held out for validation), each run starting from the same seeded
weights and data order as its baseline, three rows per network:

- standard training;
- RePr with the library's defaults (`keras_slim.repr.RePrCallback`: ranking
  relative to chance, at most half of a layer dropped, overcomplete layers
  skipped, BN channels preserved, BN statistics measured on 512 fixed
  training images at each event and refined from the next steps) on a
  schedule that passes its checks;
- RePr as in the paper (`**keras_slim.repr.PAPER`: the paper's score, one
  global cut-off without ceiling, BN zeroed / reset to the initializers)
  on the paper's schedule proportions (S1 = 20%, S2 = 10% of the run, 3
  cycles, the last re-initialisation after 90%).

Networks:

- The paper's small ConvNet (as in the author's code): three 5x5
  convolutions of 32 filters with ReLU, each followed by a 3x3 stride-2
  max-pool, one dense layer; no BN, no augmentation; plain SGD from 0.05,
  batch 64, the learning rate halved twice (the author halves it every 25k
  steps of a 100-epoch run: after 35.6% and 71.1% of it, kept as shares
  of a shorter run).
- ResNet-20 (`keras_slim.models.resnet20`, BN, pad/crop/flip
  augmentation, SGD with Nesterov momentum 0.9, cosine learning rate from
  0.1, weight decay 5e-4 on kernels, batch 128).

Recorded per RePr run: the events (step, learning rate, filters dropped
per layer and the largest share of one layer), and the hold-out accuracy
(inference mode, 2,000 hold-out images) just before each event, right
after it and after the first 50 or more steps (the first batch boundary
at least 50 steps later; events fall between batches of
`steps_per_execution` steps). Also measured (RePr's own cost): the time
its events and BN corrections take as a share of the baseline's training
time, the per-step cost of holding dropped filters (interleaved repeats of
the same steps with and without it), and how long ranking every filter of
ResNet-56 takes.

Outputs (in `--output_dir`): `results.json`, `results.md` and
`repr_cifar10.png` (hold-out accuracy per epoch, mean of the seeds, events
marked, drop windows shaded).

Usage:

    python -m benchmarks.repr_cifar10 --quick     # < 20 min on 2 cores
    python -m benchmarks.repr_cifar10 --seeds 0,1,2   # full: see README
    python -m benchmarks.repr_cifar10 --seeds 0 --runs resnet20_standard,resnet20_repr

An interrupted run restarted with the same arguments trains only the runs
it had not finished.

Reference:
    Prakash, Storer, Florencio & Zhang, RePr: Improved Training of
    Convolutional Filters, CVPR 2019 (https://arxiv.org/abs/1811.07275).
"""

import argparse
import json
import os
import pathlib
import platform
import sys
import time

import numpy as np

from benchmarks.common import DEFAULT_ARCHIVE, DEFAULT_CACHE, REPO, log, spread, write_atomic

from benchmarks.any_width_cifar10 import load_cifar10, normalize, split, train_dataset

RUNS = ("convnet_standard", "convnet_repr", "convnet_repr_paper",
        "resnet20_standard", "resnet20_repr", "resnet20_repr_paper")
DEFAULT_RUNS = RUNS
LABELS = {
    "convnet_standard": "ConvNet, standard",
    "convnet_repr": "ConvNet, RePr (defaults)",
    "convnet_repr_paper": "ConvNet, RePr (as in the paper)",
    "resnet20_standard": "ResNet-20, standard",
    "resnet20_repr": "ResNet-20, RePr (defaults)",
    "resnet20_repr_paper": "ResNet-20, RePr (as in the paper)",
}
# RePr rows: which preset.
VARIANTS = {"convnet_repr": "defaults", "convnet_repr_paper": "paper",
            "resnet20_repr": "defaults", "resnet20_repr_paper": "paper"}
# The paper's proportions: S1 = 20, S2 = 10 of 100 epochs, 3 cycles.
PAPER_SCHEDULE = (0.2, 0.1, 3)
# Per family: epochs and, per preset, (S1, S2) as shares of the run and
# the number of cycles (rounded to whole executions of steps). The
# ConvNet's learning rate stays high (halved twice), so the paper's
# proportions pass the library's checks; under ResNet-20's cosine decay
# they put the last events at 2-10% of the peak learning rate, so the
# defaults run early cycles instead (the checks' limit: 20% of the peak,
# reached after 70%). On all 45k images one cycle (drop at 20%, back at
# 30%) matched standard training over 3 seeds (-0.00 +- 0.95 points) where
# two cycles cost 4.3 points (seed 0; results_full/repr_full_seed0 and
# repr_resnet20_one_cycle), so the full setting runs one.
FULL = {
    "convnet": {"epochs": 10, "defaults": PAPER_SCHEDULE,
                "paper": PAPER_SCHEDULE},
    "resnet20": {"epochs": 3, "defaults": (0.2, 0.1, 1),
                 "paper": PAPER_SCHEDULE},
    "train_per_class": 4500, "val_per_class": 500,
}
QUICK = {
    "convnet": {"epochs": 10, "defaults": PAPER_SCHEDULE,
                "paper": PAPER_SCHEDULE},
    "resnet20": {"epochs": 5, "defaults": (0.2, 0.1, 2),
                 "paper": PAPER_SCHEDULE},
    "train_per_class": 1000, "val_per_class": 200,
    "resnet_train_per_class": 500,
}
PROBE_IMAGES_PER_CLASS = 200  # hold-out images for the per-event probes
PROBE_STEPS = 50  # "50 steps later"


def default_archive():
    # The repository may be a worktree one level further down.
    for root in (REPO.parent, REPO.parent.parent):
        path = root / "shared" / "data" / "cifar10-jpeg-train.tar.gz"
        if path.exists():
            return path
    return DEFAULT_ARCHIVE


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true",
                        help="Subsets and short schedules (< 20 min).")
    parser.add_argument("--runs", default=",".join(DEFAULT_RUNS),
                        help=f"Comma-separated subset of {RUNS}.")
    parser.add_argument("--seeds", default="0,1,2",
                        help="Comma-separated seeds (each run per seed).")
    parser.add_argument("--epochs", default=None,
                        help="Override the epochs per family, e.g. "
                        "convnet=15,resnet20=6.")
    parser.add_argument("--cycles", default=None,
                        help="Override the cycles of the defaults preset "
                        "per family (S1 and S2 keep their shares), e.g. "
                        "resnet20=1.")
    parser.add_argument("--compensate_drop", action="store_true",
                        help="the defaults' runs refit the next layer at "
                        "each drop (RePr's compensate_drop)")
    parser.add_argument("--drop_fraction", type=float, default=0.3,
                        help="Share of ranked filters RePr drops per cycle.")
    parser.add_argument("--perf_repeats", type=int, default=None,
                        help="Interleaved repeats of the hold-cost timing "
                        "(default 7; 5 with --quick).")
    parser.add_argument("--steps_per_execution", type=int, default=64,
                        help="At most this many training steps per traced "
                        "call (the largest divisor of an epoch's steps); "
                        "1 = Keras' default. RePr's events are rounded to "
                        "whole executions.")
    parser.add_argument("--archive", default=str(default_archive()))
    parser.add_argument("--cache_dir", default=str(DEFAULT_CACHE))
    parser.add_argument("--output_dir", default=None,
                        help="Default: ./repr_cifar10_results[_quick].")
    args = parser.parse_args(argv)
    args.runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = sorted(set(args.runs) - set(RUNS))
    if unknown:
        parser.error(f"Unknown runs {unknown}; choose from {RUNS}.")
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not 0 < args.drop_fraction < 1:
        parser.error("--drop_fraction must be in (0, 1).")
    args.setting_name = "quick" if args.quick else "full"
    setting = {"quick": QUICK, "full": FULL}[args.setting_name]
    args.setting = {k: (dict(v) if isinstance(v, dict) else v)
                    for k, v in setting.items()}
    if args.epochs:
        for item in args.epochs.split(","):
            family, _, value = item.partition("=")
            if family not in ("convnet", "resnet20") or not value.isdigit():
                parser.error(f"--epochs: expected family=N, got {item!r}.")
            args.setting[family]["epochs"] = int(value)
    if args.cycles:
        for item in args.cycles.split(","):
            family, _, value = item.partition("=")
            if family not in ("convnet", "resnet20") or not (
                    value.isdigit() and int(value) >= 1):
                parser.error(f"--cycles: expected family=N (N >= 1), got "
                             f"{item!r}.")
            s1, s2, _ = args.setting[family]["defaults"]
            args.setting[family]["defaults"] = (s1, s2, int(value))
    if args.perf_repeats is None:
        args.perf_repeats = 5 if args.quick else 7
    if args.output_dir is None:
        args.output_dir = "repr_cifar10_results" + (
            "" if args.setting_name == "full" else "_" + args.setting_name)
    return args


def run_config(name, args):
    """Settings that change a run's result: a saved run is reused only if
    they are equal."""
    family = name.split("_")[0]
    setting = args.setting
    train = setting["train_per_class"]
    if family == "resnet20":
        train = setting.get("resnet_train_per_class", train)
    config = {"setting": args.setting_name,
              "epochs": setting[family]["epochs"],
              "train_per_class": train,
              "val_per_class": setting["val_per_class"],
              "steps_per_execution_limit": args.steps_per_execution,
              "execution_rule": "divisor <= limit and <= epoch / 4"}
    if name in VARIANTS:
        config["drop_fraction"] = args.drop_fraction
        config["preset"] = VARIANTS[name]
        config["schedule_shares"] = list(setting[family][VARIANTS[name]])
        config["calibration_images"] = 512
        if args.compensate_drop and VARIANTS[name] != "paper":
            # Only when on: records made before the option stay valid.
            config["compensate_drop"] = True
    return config


# ------------------------------------------------------------------ models
def paper_convnet():
    """The small ConvNet of the RePr paper (author's code: SAME padding,
    ReLU, biases, truncated-normal(0.04) initialisation)."""
    import keras

    init = keras.initializers.TruncatedNormal(stddev=0.04)
    inputs = keras.Input((32, 32, 3), name="images")
    x = inputs
    for i in range(1, 4):
        x = keras.layers.Conv2D(32, 5, padding="same", activation="relu",
                                kernel_initializer=init, name=f"conv{i}")(x)
        x = keras.layers.MaxPooling2D(3, strides=2, padding="same",
                                      name=f"pool{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(10, kernel_initializer=init,
                                 name="classifier")(x)
    return keras.Model(inputs, outputs, name="repr_convnet")


# The author's ConvNet schedule: halved every 25k of 70.3k steps.
CONVNET_HALVING_SHARE = 25000 / 70300


def build(family, steps_per_epoch, epochs, per_execution=1):
    """A compiled model of `family` ("convnet" or "resnet20")."""
    import keras
    import keras_slim

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    total = steps_per_epoch * epochs
    if family == "convnet":
        model = paper_convnet()
        schedule = keras.optimizers.schedules.ExponentialDecay(
            0.05, max(1, int(round(CONVNET_HALVING_SHARE * total))), 0.5,
            staircase=True)
        optimizer = keras.optimizers.SGD(schedule)
    else:
        from trainers import loop

        model = keras_slim.models.resnet20(slimmable=False)
        config = loop.TrainConfig(
            optimizer="sgd", learning_rate=0.1, momentum=0.9, nesterov=True,
            lr_schedule="cosine", weight_decay=5e-4,
        )
        optimizer = loop.build_optimizer(config, steps_per_epoch, total)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"],
                  steps_per_execution=per_execution)
    return model


def steps_per_execution(steps_per_epoch, limit):
    """The largest divisor of an epoch's steps that is at most `limit` and
    at most a quarter of the epoch.

    Several steps per traced call cut Keras' per-step overhead (about half
    of a ConvNet step here) without changing what is computed; RePr's
    events are rounded to whole executions, where callbacks run, so an
    execution must stay small against S1 and S2.
    """
    limit = max(1, min(limit, steps_per_epoch // 4))
    return max(d for d in range(1, limit + 1) if steps_per_epoch % d == 0)


def repr_schedule(shares, total_steps, per_execution):
    """(S1, S2, cycles) in steps from shares of the run, each a whole
    number of executions (at least one)."""
    s1_share, s2_share, cycles = shares

    def steps(share):
        return per_execution * max(
            1, int(round(share * total_steps / per_execution)))

    return steps(s1_share), steps(s2_share), int(cycles)


def datasets(family, data, batch_size, seed):
    import tensorflow as tf

    (x_train, y_train), _ = data
    if family == "resnet20":
        return train_dataset(x_train, y_train, batch_size, seed)
    ds = tf.data.Dataset.from_tensor_slices((normalize(x_train), y_train))
    ds = ds.shuffle(len(x_train), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(2)


def probe_split(x_val, y_val, per_class=PROBE_IMAGES_PER_CLASS):
    """The first `per_class` hold-out images of every class."""
    index = np.concatenate([np.flatnonzero(y_val == c)[:per_class]
                            for c in np.unique(y_val)])
    return normalize(x_val[index]), y_val[index]


def probe_accuracy(model, x_probe, y_probe):
    """Inference-mode accuracy of `model` on the probe images."""
    logits = model.predict(x_probe, batch_size=500, verbose=0)
    return float(np.mean(np.argmax(logits, -1) == y_probe))


def event_probes(controller_of, x_probe, y_probe, after=PROBE_STEPS):
    """Two callbacks recording the probe accuracy around RePr's events.

    `before` goes before the RePr callback in fit's list and `after`
    behind it: at the batch where an event runs, `before` sees the network
    just before it and `after` right after it. `before` also measures each
    event's "later" accuracy at the first batch boundary at least `after`
    steps after it, before RePr acts there (so the next event never
    counts).
    """
    import keras

    records = []

    def accuracy(model):
        return probe_accuracy(model, x_probe, y_probe)

    def step_of(model):
        return int(keras.ops.convert_to_numpy(model.optimizer.iterations))

    class Before(keras.callbacks.Callback):
        pending = None

        def on_train_batch_begin(self, batch, logs=None):
            step = step_of(self.model)
            for record in records:
                if "later" not in record and step >= record["step"] + after:
                    record["later"] = accuracy(self.model)
                    record["later_steps"] = step - record["step"]
            controller = controller_of()
            self.pending = None
            if controller is not None and (
                    controller.schedule.next_event_step(step - 1) == step):
                self.pending = accuracy(self.model)

    before = Before()

    class After(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            controller = controller_of()
            if controller is None:
                return
            step = step_of(self.model)
            for event in controller.history:
                if event["step"] == step and not event.get("probed"):
                    event["probed"] = True
                    records.append({
                        "step": step, "event": event["event"],
                        "cycle": event["cycle"], "before": before.pending,
                        "right_after": accuracy(self.model),
                    })

    return before, After(), records


def event_steps(family, args, total_steps, per_execution):
    """`{step: later step}` for every event of both presets' schedules of
    `family`: where a standard run is probed, so each RePr probe has the
    standard run's accuracy over the same steps beside it."""
    from keras_slim import repr as repr_lib

    later = per_execution * -(-PROBE_STEPS // per_execution)
    steps = {}
    for preset in ("defaults", "paper"):
        schedule = repr_lib.RePrSchedule(*repr_schedule(
            args.setting[family][preset], total_steps, per_execution))
        for event in schedule.events:
            if event.step + later <= total_steps:
                steps[event.step] = event.step + later
    return steps


def standard_probes(steps, x_probe, y_probe, record):
    """A callback writing the probe accuracy into `record[str(step)]` at
    every step of `steps` and their later steps (from `event_steps`), at
    the batch boundary where a RePr run measures "before" and "later".

    How much a standard run moves over the same steps is the yardstick
    for RePr's "within 2 points 50 steps later": without any event the
    probe moves too (the ConvNet's by -1.8 to +2.8 points over 74 steps,
    ResNet-20's by up to 15 early in its run).
    """
    import keras

    wanted = set(steps) | set(steps.values())

    class Probe(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            step = int(keras.ops.convert_to_numpy(
                self.model.optimizer.iterations))
            if step in wanted and str(step) not in record:
                record[str(step)] = probe_accuracy(self.model, x_probe,
                                                   y_probe)

    return Probe()


# -------------------------------------------------------------------- runs
def run_one(name, seed, data, args):
    """Trains one run; returns its result dict."""
    import keras
    from keras_slim import repr as repr_lib

    family = name.split("_")[0]
    epochs = args.setting[family]["epochs"]
    batch_size = 64 if family == "convnet" else 128
    (x_train, _), (x_val, y_val) = data
    steps_per_epoch = len(x_train) // batch_size
    total_steps = steps_per_epoch * epochs
    keras.utils.set_random_seed(seed)
    per_execution = steps_per_execution(steps_per_epoch,
                                        args.steps_per_execution)
    model = build(family, steps_per_epoch, epochs, per_execution)
    ds = datasets(family, data, batch_size, seed)
    callbacks, callback, records = [], None, []
    if name in VARIANTS:
        preset = VARIANTS[name]
        s1, s2, cycles = repr_schedule(args.setting[family][preset],
                                       total_steps, per_execution)
        # The defaults measure BN statistics on 512 fixed training images
        # at each event (the paper's preset does not re-estimate them).
        calibration = normalize(x_train[np.random.default_rng(seed)
                                        .permutation(len(x_train))[:512]])
        callback = repr_lib.RePrCallback(
            s1, s2, cycles, args.drop_fraction, unit="steps", seed=seed,
            verbose=1,
            calibration_data=None if preset == "paper" else calibration,
            **(repr_lib.PAPER if preset == "paper" else
               {"compensate_drop": args.compensate_drop}))
        x_probe, y_probe = probe_split(x_val, y_val)
        before, after, records = event_probes(
            lambda: callback.controller, x_probe, y_probe)
        callbacks += [before, callback, after]
    standard_records = None
    if name.endswith("_standard"):
        standard_records = {}
        callbacks.append(standard_probes(
            event_steps(family, args, total_steps, per_execution),
            *probe_split(x_val, y_val), standard_records))
    epoch_times = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_times.append(time.perf_counter() - self.start)

    callbacks.append(EpochTimer())
    log(f"{name} seed {seed}: {epochs} epochs of {steps_per_epoch} steps"
        + (f", S1={s1} S2={s2} steps x{cycles}" if callback else ""))
    start, cpu = time.perf_counter(), time.process_time()
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(
            ds, epochs=epochs, validation_data=(normalize(x_val), y_val),
            validation_batch_size=500, callbacks=callbacks, verbose=2,
        )
    repr_warnings = [str(w.message) for w in caught
                     if "RePr" in str(w.message)]
    for message in repr_warnings:
        log(f"warning: {message}")
    result = {
        "label": LABELS[name], "seed": seed, "epochs": epochs,
        "train_images": len(x_train),
        "steps_per_epoch": steps_per_epoch, "batch_size": batch_size,
        "steps_per_execution": per_execution,
        "train_seconds": time.perf_counter() - start,
        "train_cpu_seconds": time.process_time() - cpu,
        "epoch_seconds": epoch_times,
        "history": {k: [float(v) for v in vals]
                    for k, vals in history.history.items()},
    }
    result["final_val_accuracy"] = result["history"]["val_accuracy"][-1]
    if standard_records is not None:
        result["probes_at"] = dict(sorted(standard_records.items(),
                                          key=lambda item: int(item[0])))
    if callback is not None:
        controller = callback.controller
        result["schedule"] = {"s1": s1, "s2": s2, "cycles": cycles,
                              "unit": "steps",
                              "drop_fraction": args.drop_fraction,
                              "preset": preset}
        result["warnings"] = repr_warnings
        sizes = {u.name: u.filters for u in controller.units}
        events = []
        for e in controller.history:
            event = {k: v for k, v in e.items()
                     if k not in ("dropped", "probed")}
            if e["event"] == "drop":
                event["max_layer_share"] = max(
                    (n / sizes[k] for k, n in e["filters"].items()),
                    default=0.0)
            events.append(event)
        result["events"] = events
        result["probes"] = records
        result["skipped_layers"] = dict(controller.skipped)
        result["event_seconds"] = controller.event_seconds
    log(f"{name} seed {seed}: final val accuracy "
        f"{result['final_val_accuracy']:.4f} "
        f"({result['train_seconds'] / 60:.1f} min)")
    return result


# ----------------------------------------------------------- performance
def time_hold(family, data, args):
    """Per-step cost of RePr's hold: the same steps with and without it.

    Two identically seeded models; one runs the wrapped step with a drop
    in effect (every S2 step's work). Interleaved repeats of `steps` steps.
    """
    import keras
    from keras_slim import repr as repr_lib

    steps = 100 if family == "convnet" else 10
    if args.quick:
        steps //= 2
    batch_size = 64 if family == "convnet" else 128
    ds = datasets(family, data, batch_size, 0).repeat()
    import tensorflow as tf

    models, hold_fn = {}, None
    for kind in ("plain", "hold"):
        keras.utils.set_random_seed(0)
        model = build(family, 100, 10)
        if kind == "hold":
            controller = repr_lib.RePrController(
                model, repr_lib.RePrSchedule(1, 1, 1), args.drop_fraction)
            controller.drop()
            model.train_step = controller.wrap_train_step(model.train_step)

            @tf.function
            def hold_fn(n=tf.constant(100)):
                for _ in tf.range(n):
                    controller.hold()
        model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0)  # trace
        models[kind] = model
    times = {"plain": [], "hold": []}
    for _ in range(args.perf_repeats):
        for kind, model in models.items():
            start = time.perf_counter()
            model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
            times[kind].append((time.perf_counter() - start) / steps)
    ratios = [h / p for h, p in zip(times["hold"], times["plain"])]
    # The hold alone (what the wrapper adds to a step), 100 times per call.
    hold_fn()
    alone = []
    for _ in range(args.perf_repeats):
        start = time.perf_counter()
        hold_fn()
        alone.append((time.perf_counter() - start) / 100)
    share = [a / p for a, p in zip(alone, times["plain"])]
    return {"steps": steps, "plain_step_seconds": spread(times["plain"]),
            "hold_step_seconds": spread(times["hold"]),
            "ratio": spread(ratios), "hold_alone_seconds": spread(alone),
            "hold_alone_share": spread(share)}


def time_ranking(repeats=7):
    """Seconds to rank every filter of ResNet-56 (stock and slim layers)."""
    import keras_slim
    from keras_slim import repr as repr_lib

    result = {}
    for kind, model in (
        ("stock", keras_slim.models.resnet56(slimmable=False)),
        ("slim", keras_slim.models.resnet56(widths=[1.0],
                                            switchable_bn=False)),
    ):
        repr_lib.rank_filters(model)  # warm up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            ranking = repr_lib.rank_filters(model, exclude_first=False)
            times.append(time.perf_counter() - start)
        result[kind] = {"seconds": spread(times), "filters": len(ranking),
                        "layers": len(ranking.layer_names)}
    return result


# ----------------------------------------------------------------- report
def summarize(results):
    """Per run (over seeds): accuracies, mean, std; per RePr run also the
    difference to standard (per seed and mean), the largest share of a
    layer dropped at once, and the worst probe (accuracy after the first
    50+ steps minus just before an event, in points)."""
    table = {}
    for key, result in results.items():
        name = key.rsplit("@", 1)[0]
        table.setdefault(name, {})[result["seed"]] = result
    summary = {}
    for name, by_seed in table.items():
        seeds = sorted(by_seed)
        acc = [by_seed[s]["final_val_accuracy"] for s in seeds]
        row = {"seeds": seeds, "accuracies": acc,
               "mean": float(np.mean(acc)), "std": float(np.std(acc))}
        family = name.split("_")[0]
        base = table.get(f"{family}_standard", {})
        paired = [s for s in seeds if s in base]
        if name in VARIANTS and paired:
            deltas = [100 * (by_seed[s]["final_val_accuracy"]
                             - base[s]["final_val_accuracy"]) for s in paired]
            row.update(delta_points=deltas,
                       delta_mean=float(np.mean(deltas)),
                       delta_std=float(np.std(deltas)))
        if name in VARIANTS:
            shares = [e.get("max_layer_share", 0.0) for s in seeds
                      for e in by_seed[s].get("events", [])
                      if e["event"] == "drop"]
            row["max_layer_share"] = float(max(shares, default=0.0))
            changes = [100 * (p["later"] - p["before"])
                       for s in seeds for p in by_seed[s].get("probes", [])
                       if p.get("later") is not None
                       and p.get("before") is not None]
            row["worst_probe_points"] = float(min(changes, default=0.0))
            row["probe_changes"] = changes
            relative = []
            for s in seeds:
                for p in by_seed[s].get("probes", []):
                    standard = standard_change(base.get(s), p)
                    if None not in (p.get("later"), p.get("before"),
                                    standard):
                        relative.append(
                            100 * (p["later"] - p["before"]) - standard)
            if relative:
                # The same change minus the standard run's over the same
                # steps (same seed, same data order up to the first event).
                row["worst_probe_vs_standard"] = float(min(relative))
                row["probe_changes_vs_standard"] = relative
        summary[name] = row
    return summary


def standard_change(standard, probe):
    """Points the standard run `standard` (a result dict, or None) moved
    from a RePr `probe`'s "before" step to its "later" step, or None when
    the standard run was not probed there."""
    at = (standard or {}).get("probes_at", {})
    start, end = str(probe["step"]), str(probe["step"] + probe.get(
        "later_steps", 0))
    if start not in at or end not in at:
        return None
    return 100 * (at[end] - at[start])


def train_images(result):
    if "train_images" in result:
        return result["train_images"]
    config = result.get("config", {})
    return 10 * config["train_per_class"] if config else ""


def _schedule_text(sample):
    schedule = sample.get("schedule")
    if not schedule:
        return str(sample["epochs"])
    per_epoch = sample["steps_per_epoch"]
    return (f"{sample['epochs']} (S1 {schedule['s1'] / per_epoch:.2g} / "
            f"S2 {schedule['s2'] / per_epoch:.2g} ep. x "
            f"{schedule['cycles']}, {schedule['drop_fraction']:.0%})")


def _standard_text(standard, probe):
    change = standard_change(standard, probe)
    if change is None:
        return ""
    at = standard["probes_at"]
    return (f"{at[str(probe['step'])]:.3f} -> "
            f"{at[str(probe['step'] + probe['later_steps'])]:.3f} "
            f"({change:+.1f})")


def markdown(report):
    results, perf = report["results"], report.get("performance", {})
    summary = summarize(results)
    lines = [
        f"# RePr on CIFAR-10 ({report.get('setting', 'full')} setting)", "",
        "Command" + ("s" if len(report.get("commands", [])) > 1 else "")
        + ": " + ", then ".join(
            f"`{c}`" for c in report.get("commands", [report["command"]]))
        + "  ",
        f"Date: {report['date']}; machine: {report['machine']}; "
        f"wall time {report['wall_seconds'] / 60:.1f} min.", "",
        *([report["note"], ""] if report.get("note") else []),
        "| Run | Train images | Epochs (S1 / S2 x cycles, dropped) | "
        "Seeds | Hold-out accuracy: mean ± std (per seed) | vs standard "
        "(mean ± std of paired differences) |",
        "|---|---|---|---|---|---|",
    ]
    for name in RUNS:
        if name not in summary:
            continue
        row = summary[name]
        sample = next(r for k, r in results.items()
                      if k.rsplit("@", 1)[0] == name)
        accs = ", ".join(f"{a:.4f}" for a in row["accuracies"])
        delta = ""
        if "delta_mean" in row:
            delta = (f"{row['delta_mean']:+.2f} ± {row['delta_std']:.2f} pt")
        lines.append(
            f"| {LABELS[name]} | {train_images(sample)} | "
            f"{_schedule_text(sample)} | {len(row['accuracies'])} | "
            f"{row['mean']:.4f} ± {row['std']:.4f} ({accs}) | {delta} |")
    probes = [(k, r) for k, r in results.items() if r.get("probes")]
    if probes:
        lines += ["", "Events (hold-out probe of "
                  f"{10 * PROBE_IMAGES_PER_CLASS} images, inference mode: "
                  "just before, right after, and after the first 50+ "
                  "steps; learning rate at the event; largest share of one "
                  "layer dropped):", "",
                  "| Run | Event | Step | Learning rate | Before | Right "
                  "after | Later (steps) | Largest layer share | Standard "
                  "run over the same steps |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for key, result in probes:
            name, seed = key.rsplit("@", 1)
            standard = results.get(f"{name.split('_')[0]}_standard@{seed}")
            events = {(e["step"], e["event"]): e for e in result["events"]}
            for probe in result["probes"]:
                event = events.get((probe["step"], probe["event"]), {})
                rate = event.get("learning_rate")
                later = probe.get("later")
                lines.append(
                    f"| {key} | {probe['event']} {probe['cycle'] + 1} | "
                    f"{probe['step']} | "
                    f"{'' if rate is None else f'{rate:.3g}'} | "
                    f"{probe['before']:.3f} | {probe['right_after']:.3f} | "
                    + ("" if later is None else
                       f"{later:.3f} (+{probe['later_steps']})")
                    + " | " + (f"{event['max_layer_share']:.2f}"
                               if "max_layer_share" in event else "")
                    + " | " + _standard_text(standard, probe) + " |")
        lines.append("")
        for name in RUNS:
            row = summary.get(name, {})
            if "probe_changes" not in row:
                continue
            text = (f"- {LABELS[name]}: worst change 50+ steps after an "
                    f"event {row['worst_probe_points']:+.1f} points")
            if "probe_changes_vs_standard" in row:
                text += (f"; minus the standard run's change over the same "
                         f"steps: worst {row['worst_probe_vs_standard']:+.1f}"
                         f", median "
                         f"{np.median(row['probe_changes_vs_standard']):+.1f}")
            lines.append(text + ".")
    probed = [(k, r["probes_at"]) for k, r in results.items()
              if r.get("probes_at")]
    if probed:
        lines += ["", "Standard runs, probe accuracy at the events' steps "
                  "(step: accuracy):", ""]
        for key, at in probed:
            lines.append(f"- {key}: " + ", ".join(
                f"{step}: {value:.3f}" for step, value in at.items()))
    warned = [(k, r["warnings"]) for k, r in results.items()
              if r.get("warnings")]
    if warned:
        lines += ["", "Warnings RePr gave (schedule checks):", ""]
        for key, messages in warned:
            for message in messages:
                lines.append(f"- {key}: {message}")
    if perf:
        lines += ["", "RePr's own cost:", ""]
        for key, value in perf.get("events", {}).items():
            lines.append(
                f"- {key}: events (ranking, drop, re-init, BN corrections) "
                f"{value['event_seconds']:.2f} s = "
                f"{100 * value['share']:.3f}% of the standard run's "
                f"{value['standard_seconds'] / 60:.1f} min of training "
                f"(whole run / standard run: "
                f"{value['total_time_ratio']:.3f}).")
        for family, value in perf.get("hold", {}).items():
            ratio = value["ratio"]
            lines.append(
                f"- {family}: step with the dropped filters held / plain "
                f"step = {ratio['median']:.3f} (p10 {ratio['p10']:.3f}, p90 "
                f"{ratio['p90']:.3f}, {ratio['n']} interleaved repeats of "
                f"{value['steps']} steps; plain step "
                f"{1000 * value['plain_step_seconds']['median']:.1f} ms); "
                "the hold alone: "
                f"{1000 * value['hold_alone_seconds']['median']:.2f} ms per "
                f"step = {100 * value['hold_alone_share']['median']:.2f}% "
                "of a plain step.")
        for kind, value in perf.get("ranking_resnet56", {}).items():
            lines.append(
                f"- Ranking all {value['filters']} filters of ResNet-56 "
                f"({value['layers']} conv layers, {kind} layers): "
                f"{1000 * value['seconds']['median']:.1f} ms (median of "
                f"{value['seconds']['n']}).")
    return "\n".join(lines) + "\n"


def plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    families = [f for f in ("convnet", "resnet20")
                if any(k.startswith(f) for k in results)]
    fig, axes = plt.subplots(1, len(families), figsize=(6.5 * len(families),
                                                         4.8), squeeze=False)
    colors = {"standard": "black", "repr": "tab:red",
              "repr_paper": "tab:blue"}
    for ax, family in zip(axes[0], families):
        for name in RUNS:
            if not name.startswith(family):
                continue
            runs = [r for k, r in results.items()
                    if k.rsplit("@", 1)[0] == name]
            if not runs:
                continue
            color = colors[name.split("_", 1)[1]]
            curves = [r["history"]["val_accuracy"] for r in runs]
            epochs = np.arange(1, len(curves[0]) + 1)
            for curve in curves if len(curves) > 1 else []:
                ax.plot(epochs, curve, color=color, alpha=0.25, lw=0.8)
            mean = np.mean(curves, axis=0)
            ax.plot(epochs, mean, color=color, lw=1.6, marker=".",
                    label=f"{LABELS[name]} ({mean[-1]:.3f}, "
                    f"{len(curves)} seed{'s' * (len(curves) > 1)})")
            sample = runs[0]
            schedule = sample.get("schedule")
            if schedule:
                per_epoch = sample["steps_per_epoch"]
                # Event e runs after step e: at epoch e / per_epoch.
                for event in sample.get("events", []):
                    x = event["step"] / per_epoch
                    ax.axvline(x, color=color, lw=0.8,
                               ls="--" if event["event"] == "drop" else ":")
                for c in range(schedule["cycles"]):
                    start = (c * (schedule["s1"] + schedule["s2"])
                             + schedule["s1"]) / per_epoch
                    ax.axvspan(start, start + schedule["s2"] / per_epoch,
                               color=color, alpha=0.08)
        ax.plot([], [], color="gray", ls="--", lw=0.8, label="drop")
        ax.plot([], [], color="gray", ls=":", lw=0.8,
                label="re-initialisation (shaded: filters out)")
        ax.set_xlabel("epoch (events at their step / steps per epoch)")
        ax.set_ylabel("hold-out accuracy (end of each epoch)")
        ax.set_title({"convnet": "Small ConvNet (no BN, no augmentation)",
                      "resnet20": "ResNet-20 (BN, augmentation)"}[family])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    out = pathlib.Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    report = {"results": {}}
    if results_path.exists():
        report = json.loads(results_path.read_text())
        held = report.get("setting",
                          "quick" if report.get("quick") else "full")
        if report.get("results") and "setting" not in report and not any(
                "preset" in r.get("config", {})
                for r in report["results"].values()):
            raise SystemExit(
                f"{results_path} holds results of the RePr benchmark before "
                "the defaults / paper rows; use another --output_dir.")
        if held != args.setting_name:
            raise SystemExit(
                f"{results_path} holds a {held} run; use another "
                "--output_dir.")
    wall = time.time()
    command = " ".join(["python -m benchmarks.repr_cifar10",
                        *(argv if argv is not None else sys.argv[1:])])
    # A record filled by several invocations keeps every command.
    commands = report.get("commands") or (
        [report["command"]] if "command" in report else [])
    if commands[-1:] != [command]:
        commands.append(command)
    report.update(
        quick=args.quick,
        setting=args.setting_name,
        command=command,
        commands=commands,
        date=time.strftime("%Y-%m-%d"),
        machine=f"{platform.machine()}, {os.cpu_count()} CPUs",
    )

    images, labels, _ = load_cifar10(args.archive, args.cache_dir)
    setting = args.setting
    data = split(images, labels, setting["train_per_class"],
                 setting["val_per_class"])
    resnet_data = data
    if "resnet_train_per_class" in setting:
        resnet_data = split(images, labels, setting["resnet_train_per_class"],
                            setting["val_per_class"])
    log(f"{len(data[0][0])} training ({len(resnet_data[0][0])} for "
        f"ResNet-20) / {len(data[1][0])} validation images")

    for seed in args.seeds:
        for name in args.runs:
            key = f"{name}@{seed}"
            config = run_config(name, args)
            if key in report["results"]:
                if report["results"][key].get("config") != config:
                    raise SystemExit(
                        f"{results_path} holds {key} trained with other "
                        f"settings ({report['results'][key].get('config')}, "
                        f"now {config}); use another --output_dir.")
                log(f"{key}: done earlier, reused")
                continue
            family_data = resnet_data if name.startswith("resnet") else data
            report["results"][key] = run_one(name, seed, family_data, args)
            report["results"][key]["config"] = config
            report["wall_seconds"] = report.get("wall_seconds", 0) + (
                time.time() - wall)
            wall = time.time()
            write_atomic(results_path, json.dumps(report, indent=2))

    perf = report.setdefault("performance", {})
    events = {}
    for key, result in report["results"].items():
        name, seed = key.rsplit("@", 1)
        base = report["results"].get(f"{name.split('_')[0]}_standard@{seed}")
        if "event_seconds" in result and base:
            events[key] = {
                "event_seconds": result["event_seconds"],
                "standard_seconds": base["train_seconds"],
                "share": result["event_seconds"] / base["train_seconds"],
                "total_time_ratio": result["train_seconds"]
                / base["train_seconds"],
            }
    perf["events"] = events
    report["summary"] = summarize(report["results"])
    hold = perf.setdefault("hold", {})
    for family in ("convnet", "resnet20"):
        if family not in hold and any(r.startswith(family) for r in args.runs):
            log(f"{family}: timing the per-step hold (interleaved repeats)")
            hold[family] = time_hold(
                family, resnet_data if family == "resnet20" else data, args)
    if "ranking_resnet56" not in perf:
        perf["ranking_resnet56"] = time_ranking()
    report["wall_seconds"] = report.get("wall_seconds", 0) + (
        time.time() - wall)
    write_atomic(results_path, json.dumps(report, indent=2))
    write_atomic(out / "results.md", markdown(report))
    plot(report, out / "repr_cifar10.png")
    print(markdown(report))


if __name__ == "__main__":
    main()
