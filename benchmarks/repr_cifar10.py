"""RePr vs standard training on CIFAR-10: the paper's small ConvNet, ResNet-20.

Trains on 45,000 CIFAR-10 training images (the last 500 images of every
class are held out for validation), each run starting from the same seeded
weights and data order as its baseline:

- The paper's small ConvNet (as in the author's code): three 5x5
  convolutions of 32 filters with ReLU, each followed by a 3x3 stride-2
  max-pool, one dense layer; no BN, no augmentation; plain SGD, learning
  rate 0.05 halved every 25k steps, batch 64, 100 epochs. Rows: standard
  training; RePr (orthogonality ranking) with the paper's schedule (S1 = 20,
  S2 = 10 epochs, 3 cycles, then 10 ordinary epochs); RePr with L2-norm
  ranking (the paper's ablation).
- ResNet-20 (`keras_slim.models.resnet20`, BN, pad/crop/flip augmentation,
  SGD with Nesterov momentum 0.9, cosine learning rate from 0.1, weight
  decay 5e-4 on kernels, batch 128) over a shorter schedule with the same
  2:1 proportions: standard vs RePr.

Also measured (RePr's own cost): the time its events take (ranking,
dropping, re-initialising) as a share of the baseline's training time, the
per-step cost of holding the dropped filters (interleaved repeats of the
same steps with and without it), and how long ranking every filter of
ResNet-56 takes.

Outputs (in `--output_dir`): `results.json`, `results.md` and
`repr_cifar10.png` (validation accuracy per epoch, drop windows shaded).

Usage:

    python -m benchmarks.repr_cifar10 --quick     # < 20 min on 2 cores
    python -m benchmarks.repr_cifar10 --subset    # the paper's schedule, 10k images
    python -m benchmarks.repr_cifar10             # full: see README
    python -m benchmarks.repr_cifar10 --seeds 0,1,2 --runs convnet_standard,convnet_repr

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

RUNS = ("convnet_standard", "convnet_repr", "convnet_repr_l2",
        "resnet20_standard", "resnet20_repr", "resnet20_repr_per_layer")
DEFAULT_RUNS = RUNS[:5]
LABELS = {
    "convnet_standard": "ConvNet, standard",
    "convnet_repr": "ConvNet, RePr (orthogonality)",
    "convnet_repr_l2": "ConvNet, RePr (L2 ranking)",
    "resnet20_standard": "ResNet-20, standard",
    "resnet20_repr": "ResNet-20, RePr (orthogonality)",
    "resnet20_repr_per_layer": "ResNet-20, RePr (orthogonality, per-layer "
                               "cut-off)",
}
# RePr runs: (ranking, cut-off).
VARIANTS = {"convnet_repr": ("orthogonality", "global"),
            "convnet_repr_l2": ("l2", "global"),
            "resnet20_repr": ("orthogonality", "global"),
            "resnet20_repr_per_layer": ("orthogonality", "per_layer")}
# Schedules in epochs: (epochs, S1, S2, cycles). Both keep the paper's
# proportions: S1 = 2 * S2, ordinary training after the last cycle.
# ResNet-20 trains on a third of the training images in the full setting:
# on this shared 2-core machine a 45k-image epoch took ~9 min.
FULL = {"convnet": (100, 20, 10, 3), "resnet20": (10, 2, 1, 3),
        "train_per_class": 4500, "val_per_class": 500,
        "resnet_train_per_class": 1500}
QUICK = {"convnet": (10, 2, 1, 3), "resnet20": (7, 2, 1, 2),
         "train_per_class": 1000, "val_per_class": 200,
         "resnet_train_per_class": 500}
# The paper's full ConvNet schedule on a 10k-image subset (a 45k-image run
# of 100 epochs takes ~70 min here): what the schedule does, at a fifth of
# the data.
SUBSET = {"convnet": (100, 20, 10, 3), "resnet20": (10, 2, 1, 3),
          "train_per_class": 1000, "val_per_class": 500,
          "resnet_train_per_class": 500}


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
    parser.add_argument("--subset", action="store_true",
                        help="The paper's ConvNet schedule (100 epochs, "
                        "S1 = 20, S2 = 10, 3 cycles) on 10k training images.")
    parser.add_argument("--runs", default=",".join(DEFAULT_RUNS),
                        help=f"Comma-separated subset of {RUNS}.")
    parser.add_argument("--seeds", default="0",
                        help="Comma-separated seeds (each run per seed).")
    parser.add_argument("--drop_fraction", type=float, default=0.3,
                        help="Share of ranked filters RePr drops per cycle.")
    parser.add_argument("--perf_repeats", type=int, default=None,
                        help="Interleaved repeats of the hold-cost timing "
                        "(default 11; 5 with --quick).")
    parser.add_argument("--steps_per_execution", type=int, default=64,
                        help="At most this many training steps per traced "
                        "call (the largest divisor of an epoch's steps); "
                        "1 = Keras' default. Results do not depend on it.")
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
    if args.quick and args.subset:
        parser.error("Pass --quick or --subset, not both.")
    args.setting_name = ("quick" if args.quick
                         else "subset" if args.subset else "full")
    args.setting = {"quick": QUICK, "subset": SUBSET,
                    "full": FULL}[args.setting_name]
    if args.perf_repeats is None:
        args.perf_repeats = 5 if args.quick else 11
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
    config = {"quick": args.quick, "setting": args.setting_name,
              "schedule": list(setting[family]),
              "train_per_class": train,
              "val_per_class": setting["val_per_class"]}
    if name in VARIANTS:
        config["drop_fraction"] = args.drop_fraction
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


def build(family, steps_per_epoch, epochs, per_execution=1):
    """A compiled model of `family` ("convnet" or "resnet20")."""
    import keras
    import keras_slim

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if family == "convnet":
        model = paper_convnet()
        # The author's: 0.05, halved every 25k steps (staircase).
        schedule = keras.optimizers.schedules.ExponentialDecay(
            0.05, 25000, 0.5, staircase=True)
        optimizer = keras.optimizers.SGD(schedule)
    else:
        from trainers import loop

        model = keras_slim.models.resnet20(slimmable=False)
        config = loop.TrainConfig(
            optimizer="sgd", learning_rate=0.1, momentum=0.9, nesterov=True,
            lr_schedule="cosine", weight_decay=5e-4,
        )
        optimizer = loop.build_optimizer(config, steps_per_epoch,
                                         steps_per_epoch * epochs)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"],
                  steps_per_execution=per_execution)
    return model


def steps_per_execution(steps_per_epoch, limit):
    """The largest divisor of an epoch's steps that is at most `limit`.

    Several steps per traced call cut Keras' per-step overhead (about half
    of a ConvNet step here) without changing what is computed; RePr's
    events fall on epoch boundaries, so a divisor of the epoch keeps them
    between executions, where callbacks run.
    """
    return max(d for d in range(1, min(limit, steps_per_epoch) + 1)
               if steps_per_epoch % d == 0)


def datasets(family, data, batch_size, seed):
    import tensorflow as tf

    (x_train, y_train), _ = data
    if family == "resnet20":
        return train_dataset(x_train, y_train, batch_size, seed)
    ds = tf.data.Dataset.from_tensor_slices((normalize(x_train), y_train))
    ds = ds.shuffle(len(x_train), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(2)


# -------------------------------------------------------------------- runs
def run_one(name, seed, data, args):
    """Trains one run; returns its result dict."""
    import keras
    from keras_slim import repr as repr_lib

    family = name.split("_")[0]
    epochs, s1, s2, cycles = args.setting[family]
    batch_size = 64 if family == "convnet" else 128
    (x_train, _), (x_val, y_val) = data
    steps_per_epoch = len(x_train) // batch_size
    keras.utils.set_random_seed(seed)
    per_execution = steps_per_execution(steps_per_epoch,
                                        args.steps_per_execution)
    model = build(family, steps_per_epoch, epochs, per_execution)
    ds = datasets(family, data, batch_size, seed)
    callbacks, callback = [], None
    if name in VARIANTS:
        ranking, cutoff = VARIANTS[name]
        callback = repr_lib.RePrCallback(
            s1, s2, cycles, args.drop_fraction, ranking=ranking,
            cutoff=cutoff, seed=seed, verbose=1)
        callbacks.append(callback)
    epoch_times = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_times.append(time.perf_counter() - self.start)

    callbacks.append(EpochTimer())
    log(f"{name} seed {seed}: {epochs} epochs of {steps_per_epoch} steps"
        + (f", S1={s1} S2={s2} x{cycles}" if callback else ""))
    start, cpu = time.perf_counter(), time.process_time()
    history = model.fit(
        ds, epochs=epochs, validation_data=(normalize(x_val), y_val),
        validation_batch_size=500, callbacks=callbacks, verbose=2,
    )
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
    if callback is not None:
        controller = callback.controller
        result["schedule"] = {"s1": s1, "s2": s2, "cycles": cycles,
                              "drop_fraction": args.drop_fraction,
                              "ranking": ranking, "cutoff": cutoff}
        result["events"] = [
            {k: v for k, v in e.items() if k != "dropped"}
            for e in controller.history
        ]
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
    """{run: {"accuracies": [...], "mean": m, "std": s}} over seeds."""
    table = {}
    for key, result in results.items():
        name = key.rsplit("@", 1)[0]
        table.setdefault(name, []).append(result["final_val_accuracy"])
    return {name: {"accuracies": acc, "mean": float(np.mean(acc)),
                   "std": float(np.std(acc))} for name, acc in table.items()}


def train_images(result):
    if "train_images" in result:
        return result["train_images"]
    config = result.get("config", {})
    return 10 * config["train_per_class"] if config else ""


def markdown(report):
    results, perf = report["results"], report.get("performance", {})
    summary = summarize(results)
    lines = [
        f"# RePr on CIFAR-10 ({report.get('setting', 'full')} setting)", "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}; machine: {report['machine']}; "
        f"wall time {report['wall_seconds'] / 60:.1f} min.", "",
        "| Run | Train images | Epochs (S1/S2 x cycles) | Seeds | "
        "Final val accuracy | vs standard |",
        "|---|---|---|---|---|---|",
    ]
    for name in RUNS:
        if name not in summary:
            continue
        row = summary[name]
        family = name.split("_")[0]
        base = summary.get(f"{family}_standard")
        sample = next(r for k, r in results.items()
                      if k.rsplit("@", 1)[0] == name)
        schedule = sample.get("schedule")
        epochs = str(sample["epochs"]) + (
            f" ({schedule['s1']}/{schedule['s2']} x {schedule['cycles']}, "
            f"{schedule['drop_fraction']:.0%} dropped)" if schedule else "")
        accs = ", ".join(f"{a:.4f}" for a in row["accuracies"])
        delta = ""
        if base and name != f"{family}_standard":
            delta = f"{100 * (row['mean'] - base['mean']):+.2f} pt"
        lines.append(
            f"| {LABELS[name]} | {train_images(sample)} | "
            f"{epochs} | {len(row['accuracies'])} | "
            f"{row['mean']:.4f} ({accs}) | {delta} |")
    if perf:
        lines += ["", "RePr's own cost:", ""]
        for key, value in perf.get("events", {}).items():
            lines.append(
                f"- {key}: events (ranking, drop, re-init) "
                f"{value['event_seconds']:.2f} s = "
                f"{100 * value['share']:.3f}% of the standard run's "
                f"{value['standard_seconds'] / 60:.1f} min of training.")
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
                                                         4.5), squeeze=False)
    colors = {"convnet_standard": "black", "convnet_repr": "tab:red",
              "convnet_repr_l2": "tab:blue", "resnet20_standard": "black",
              "resnet20_repr": "tab:red",
              "resnet20_repr_per_layer": "tab:green"}
    for ax, family in zip(axes[0], families):
        shaded = False
        for name in RUNS:
            if not name.startswith(family):
                continue
            curves = [r["history"]["val_accuracy"] for k, r in results.items()
                      if k.rsplit("@", 1)[0] == name]
            if not curves:
                continue
            epochs = np.arange(1, len(curves[0]) + 1)
            for curve in curves if len(curves) > 1 else []:
                ax.plot(epochs, curve, color=colors[name], alpha=0.25, lw=0.8)
            mean = np.mean(curves, axis=0)
            ax.plot(epochs, mean, color=colors[name], lw=1.6,
                    label=f"{LABELS[name]} ({mean[-1]:.3f})")
            sample = next(r for k, r in results.items()
                          if k.rsplit("@", 1)[0] == name)
            if sample.get("schedule") and not shaded:
                s = sample["schedule"]
                for c in range(s["cycles"]):
                    start = c * (s["s1"] + s["s2"]) + s["s1"]
                    ax.axvspan(start + 0.5, start + s["s2"] + 0.5,
                               color="tab:orange", alpha=0.15,
                               label="sub-network (filters dropped)"
                               if c == 0 else None)
                shaded = True
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy (5k hold-out)"
                      if not report["quick"] else "validation accuracy")
        ax.set_title({"convnet": "Small ConvNet (no BN, no augmentation)",
                      "resnet20": "ResNet-20 (BN, augmentation)"}[family])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
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
        if held != args.setting_name:
            raise SystemExit(
                f"{results_path} holds a {held} run; use another "
                "--output_dir.")
    wall = time.time()
    report.update(
        quick=args.quick,
        setting=args.setting_name,
        command=" ".join(["python -m benchmarks.repr_cifar10",
                          *(argv if argv is not None else sys.argv[1:])]),
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
