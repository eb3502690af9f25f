"""Boosted vs plain early-exit training, and width x depth, on CIFAR-10.

Trains, on CIFAR-10 training images with the last 500 of every class held
out (45k / 5k in the full setting), the zoo's multi-exit ResNet-20
(`keras_slim.models.resnet_exits`: exits after blocks 2, 4, 6, 8 and the
final classifier, 5 exits, gradient equilibrium on):

- boosted: BoostNet, ensemble weight t = 0.5 (exit n learns on
  CE(f_n + stop_gradient(t * P_{n-1}))), inference on the ensembles P_n;
- plain: plain joint training (t = 0, the MSDNet baseline), the same
  network, epochs, optimizer and seed;
- width_depth: the same network made slimmable over [0.25, 1.0], trained
  with the sandwich rule (every sandwich width trains all its exits) and
  boosting; BN calibrated at the evaluation widths.

Reported on the hold-out split: anytime accuracy of every exit (all 5,000
images), and budgeted batch classification as MSDNet evaluates it: the
39-member q^k family of thresholds chosen on one half of the hold-out (the
first 250 images of every class) and accuracy / expected MACs measured on
the other half. For width_depth: the width-only curve (every image at the
last exit, one point per width), the exit-only curve (thresholds at width
1.0) and the joint curve (width and thresholds chosen together for 39
budgets).

Outputs (`--output_dir`): results.json, results.md and budget_curves.png.

Usage:

    python -m benchmarks.early_exit_cifar10 --quick   # < 20 min on 2 cores
    python -m benchmarks.early_exit_cifar10           # full setting

The data is `shared/data/cifar10-jpeg-train.tar.gz`, decoded once into
`--cache_dir` (see any_width_cifar10.py, whose loading code this reuses).
"""

import argparse
import json
import os
import pathlib
import time

import numpy as np

from benchmarks.any_width_cifar10 import compile_model
from benchmarks.any_width_cifar10 import load_cifar10
from benchmarks.any_width_cifar10 import normalize
from benchmarks.any_width_cifar10 import save_atomic
from benchmarks.any_width_cifar10 import train_dataset
from benchmarks.common import DEFAULT_ARCHIVE, DEFAULT_CACHE, log

METHODS = ("boosted", "plain", "width_depth")
LABELS = {
    "boosted": "Boosted (BoostNet, t = 0.5)",
    "plain": "Plain joint training (t = 0)",
    "width_depth": "Width x depth (sandwich + boosting)",
}
HOLD_OUT_PER_CLASS = 500
QUICK = {"train_per_class": 500, "val_per_class": 200, "epochs": 3}
FULL_EPOCHS = 4
EVAL_WIDTHS = (0.25, 0.5, 0.75, 1.0)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true",
                        help="5k training / 2k hold-out images, 3 epochs.")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--train_per_class", type=int, default=None)
    parser.add_argument("--val_per_class", type=int, default=None,
                        help="Hold-out images per class (from the last 500);"
                        " the first half of them choose the thresholds.")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--exit_every", type=int, default=2)
    parser.add_argument("--head_filters", type=int, default=32)
    parser.add_argument("--ensemble_weight", type=float, default=0.5)
    parser.add_argument("--sandwich_size", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=2e-3,
                        help="Peak Adam learning rate (cosine decay to 0).")
    parser.add_argument("--calibration_images", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--archive", default=str(DEFAULT_ARCHIVE))
    parser.add_argument("--cache_dir", default=str(DEFAULT_CACHE))
    parser.add_argument("--output_dir", default=None)
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else {
        "train_per_class": 5000 - HOLD_OUT_PER_CLASS,
        "val_per_class": HOLD_OUT_PER_CLASS, "epochs": FULL_EPOCHS,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.train_per_class + HOLD_OUT_PER_CLASS > 5000:
        parser.error("--train_per_class must be <= 4500.")
    if not 2 <= args.val_per_class <= HOLD_OUT_PER_CLASS:
        parser.error(f"--val_per_class must be in [2, {HOLD_OUT_PER_CLASS}].")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if sorted(set(args.methods) - set(METHODS)):
        parser.error(f"Unknown methods; choose from {METHODS}.")
    if args.output_dir is None:
        args.output_dir = "early_exit_cifar10_results" + (
            "_quick" if args.quick else "")
    return args


def run_signature(args):
    keys = ("epochs", "train_per_class", "val_per_class", "depth",
            "exit_every", "head_filters", "ensemble_weight", "sandwich_size",
            "batch_size", "learning_rate", "calibration_images", "seed")
    return {k: getattr(args, k) for k in keys}


def split(images, labels, train_per_class, val_per_class):
    """Training images, and the hold-out split in halves A and B."""
    train, half_a, half_b = [], [], []
    for label in np.unique(labels):
        index = np.flatnonzero(labels == label)
        held = index[-HOLD_OUT_PER_CLASS:][:val_per_class]
        train.append(index[:-HOLD_OUT_PER_CLASS][:train_per_class])
        half_a.append(held[: len(held) // 2])
        half_b.append(held[len(held) // 2:])
    pick = [np.concatenate(p) for p in (train, half_a, half_b)]
    return [(images[p], labels[p]) for p in pick]


def build(method, args):
    from keras_slim import models

    common = dict(depth=args.depth, exit_every=args.exit_every,
                  head_filters=(args.head_filters,))
    if method == "width_depth":
        return models.resnet_exits(
            width_range=(EVAL_WIDTHS[0], EVAL_WIDTHS[-1]),
            ensemble_weight=args.ensemble_weight, **common)
    weight = args.ensemble_weight if method == "boosted" else 0.0
    return models.resnet_exits(slimmable=False, ensemble_weight=weight,
                               **common)


def curve_points(policies, caches_b):
    """Evaluates thresholds chosen on half A on half B (same width)."""
    from keras_slim import early_exit

    by_width = {str(c.width): c for c in caches_b}
    points = []
    for policy in policies:
        figures = early_exit.evaluate_policy(by_width[str(policy.width)],
                                             policy)
        points.append({
            "width": policy.width,
            "q": policy.q,
            "budget": policy.budget,
            "thresholds": policy.thresholds,
            "expected_macs": figures["expected_macs"],
            "accuracy": figures["accuracy"],
            "exit_shares": figures["exit_shares"],
            "validation_accuracy": policy.accuracy,
        })
    return points


def evaluate(model, method, data):
    import keras_slim
    from keras_slim import early_exit

    _, (x_a, y_a), (x_b, y_b) = data
    widths = list(EVAL_WIDTHS) if method == "width_depth" else [1.0]
    caches_a = early_exit.exit_logits(model, (normalize(x_a), y_a), widths)
    caches_b = early_exit.exit_logits(model, (normalize(x_b), y_b), widths)
    result = {"anytime": {}, "macs": {}}
    for cache_a, cache_b in zip(caches_a, caches_b):
        both = early_exit.ExitLogits(
            width=cache_a.width,
            logits=np.concatenate([cache_a.logits, cache_b.logits], axis=1),
            labels=np.concatenate([cache_a.labels, cache_b.labels]),
            cumulative_macs=cache_a.cumulative_macs,
        )
        result["anytime"][str(cache_a.width)] = early_exit.anytime_accuracy(
            both)
        result["macs"][str(cache_a.width)] = cache_a.cumulative_macs
    widest = [caches_a[-1]]
    result["budget_curve"] = curve_points(
        keras_slim.calibrate_exit_thresholds(model, widest), caches_b)
    if method == "width_depth":
        result["width_only"] = [
            dict(curve_points([early_exit.last_exit_policy(c)], caches_b)[0])
            for c in caches_a
        ]
        low = min(c.cumulative_macs[0] for c in caches_a)
        high = max(c.cumulative_macs[-1] for c in caches_a)
        budgets = [float(b) for b in np.linspace(low, high, 39)]
        result["joint"] = curve_points(
            keras_slim.calibrate_exit_thresholds(model, caches_a,
                                                 budget=budgets),
            caches_b)
    return result


def run_method(method, data, args):
    import keras

    import keras_slim

    (x_train, y_train), _, _ = data
    keras.utils.set_random_seed(args.seed)
    ds = train_dataset(x_train, y_train, args.batch_size, args.seed)
    steps = args.epochs * (len(x_train) // args.batch_size)
    model = build(method, args)
    kwargs = {}
    if method == "width_depth":
        kwargs = {"sandwich_size": args.sandwich_size,
                  "inplace_distillation": False}
    compile_model(model, steps, args.learning_rate, **kwargs)
    start, cpu = time.time(), time.process_time()
    history = model.fit(ds, epochs=args.epochs, verbose=2, shuffle=False)
    result = {
        "label": LABELS[method],
        "train_seconds": time.time() - start,
        "train_cpu_seconds": time.process_time() - cpu,
        "history": {k: [float(v) for v in vals]
                    for k, vals in history.history.items()},
        "exits": [{k: e[k] for k in ("name", "after", "macs")}
                  for e in model.exits],
    }
    if method == "width_depth":
        chosen = np.random.default_rng(args.seed).permutation(len(x_train))
        keras_slim.calibrate_bn(
            model, normalize(x_train[chosen[: args.calibration_images]]),
            widths=list(EVAL_WIDTHS), batch_size=250, verbose=0)
    start = time.time()
    result.update(evaluate(model, method, data))
    result["eval_seconds"] = time.time() - start
    log(f"{method}: anytime accuracy " + ", ".join(
        f"{a['accuracy']:.4f}" for a in result["anytime"]["1.0"]))
    return result


def comparison(results):
    """Per-exit boosted - plain differences (anytime, hold-out)."""
    if not {"boosted", "plain"} <= set(results):
        return None
    boosted = [a["accuracy"] for a in results["boosted"]["anytime"]["1.0"]]
    plain = [a["accuracy"] for a in results["plain"]["anytime"]["1.0"]]
    diffs = [100 * (b - p) for b, p in zip(boosted, plain)]
    early = float(np.mean(diffs[:-1]))
    return {
        "per_exit_points": diffs,
        "mean_early_exits_points": early,
        "last_exit_points": diffs[-1],
        "goal_met": bool(early >= 1.0 and diffs[-1] >= -0.3),
    }


def markdown(results, args, compare):
    lines = []
    if {"boosted", "plain"} & set(results):
        some = results.get("boosted") or results["plain"]
        macs = some["macs"]["1.0"]
        header = ["Exit", "MACs (M)"] + [
            LABELS[m] for m in ("plain", "boosted") if m in results]
        if compare:
            header.append("boosted - plain (points)")
        lines += ["| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]
        for k in range(len(macs)):
            row = [f"{k + 1}", f"{macs[k] / 1e6:.1f}"]
            for m in ("plain", "boosted"):
                if m in results:
                    acc = results[m]["anytime"]["1.0"][k]["accuracy"]
                    row.append(f"{100 * acc:.2f}")
            if compare:
                row.append(f"{compare['per_exit_points'][k]:+.2f}")
            lines.append("| " + " | ".join(row) + " |")
        if compare:
            lines.append(
                f"\nMean over exits 1..N-1: {compare['mean_early_exits_points']:+.2f}"
                f" points; last exit: {compare['last_exit_points']:+.2f} "
                f"points (goal: >= +1 and >= -0.3: "
                f"{'met' if compare['goal_met'] else 'not met'}).")
        lines.append("")
        lines.append("Budgeted (thresholds on hold-out half A, measured on "
                     "half B), accuracy at a few q of the q^k family:")
        lines.append("")
        lines.append("| q | " + " | ".join(
            f"{LABELS[m]} MACs (M) / acc (%)" for m in ("plain", "boosted")
            if m in results) + " |")
        lines.append("|---|" + "---|" * sum(
            m in results for m in ("plain", "boosted")))
        for q_index in (0, 4, 9, 14, 19, 29, 38):
            row = []
            for m in ("plain", "boosted"):
                if m in results:
                    p = results[m]["budget_curve"][q_index]
                    row.append(f"{p['expected_macs'] / 1e6:.1f} / "
                               f"{100 * p['accuracy']:.2f}")
            q = results.get("boosted", results.get("plain"))[
                "budget_curve"][q_index]["q"]
            lines.append(f"| {q:g} | " + " | ".join(row) + " |")
    if "width_depth" in results:
        wd = results["width_depth"]
        lines += ["", "Width x depth: anytime accuracy (%) on the whole "
                  "hold-out per width and exit, MACs (M) in brackets:", ""]
        num = len(wd["anytime"]["1.0"])
        lines.append("| Width | " + " | ".join(
            f"exit {k + 1}" for k in range(num)) + " |")
        lines.append("|---|" + "---|" * num)
        for width, points in wd["anytime"].items():
            lines.append(f"| {width} | " + " | ".join(
                f"{100 * p['accuracy']:.2f} ({p['macs'] / 1e6:.1f})"
                for p in points) + " |")
        lines += ["", "Joint budget (width and thresholds chosen on half A "
                  "for a target MACs), a few of the 39 budgets:", "",
                  "| Budget (M) | width | expected MACs (M) | accuracy (%) |",
                  "|---|---|---|---|"]
        for p in wd["joint"][::6]:
            lines.append(
                f"| {p['budget'] / 1e6:.1f} | {p['width']} | "
                f"{p['expected_macs'] / 1e6:.1f} | {100 * p['accuracy']:.2f} |")
    lines += ["", (
        f"Trained on {10 * args.train_per_class} images for {args.epochs} "
        f"epochs (Adam {args.learning_rate:g}, cosine, batch "
        f"{args.batch_size}, pad-crop + flip, seed {args.seed}); hold-out "
        f"{10 * args.val_per_class} images. ResNet-{args.depth}, exit every "
        f"{args.exit_every} blocks, heads conv {args.head_filters} + pool + "
        "dense, gradient equilibrium on. Train time: " + ", ".join(
            f"{m} {r['train_seconds'] / 60:.1f} min (CPU "
            f"{r['train_cpu_seconds'] / 60:.1f} min)"
            for m, r in results.items()) + ".")]
    return "\n".join(lines) + "\n"


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_slim.early_exit import plot_budget_curve

    panels = int(bool({"boosted", "plain"} & set(results))) + int(
        "width_depth" in results)
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.8))
    axes = np.atleast_1d(axes)
    index = 0
    if {"boosted", "plain"} & set(results):
        curves = {f"{LABELS[m]}: budgeted": results[m]["budget_curve"]
                  for m in ("plain", "boosted") if m in results}
        anytime = {f"{LABELS[m]}: anytime (exit k)":
                   results[m]["anytime"]["1.0"]
                   for m in ("plain", "boosted") if m in results}
        plot_budget_curve(None, curves, anytime=anytime, ax=axes[index],
                          title="Boosted vs plain early exits")
        index += 1
    if "width_depth" in results:
        wd = results["width_depth"]
        plot_budget_curve(
            None,
            {"width only (last exit)": wd["width_only"],
             "exits only (width 1.0)": wd["budget_curve"],
             "joint width x exits": wd["joint"]},
            anytime={"anytime, width 1.0": wd["anytime"]["1.0"]},
            anytime_colors=["C1"],
            ax=axes[index], title="Width x depth (sandwich + boosting)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    load = round(os.getloadavg()[0], 1)
    started = time.time()
    images, labels, _ = load_cifar10(args.archive, args.cache_dir)
    data = split(images, labels, args.train_per_class, args.val_per_class)
    log(f"Data: {len(data[0][0])} training, {len(data[1][0])} + "
        f"{len(data[2][0])} hold-out images; {args.epochs} epochs; methods "
        f"{args.methods}; load average {load}")
    output = pathlib.Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    partial = output / "partial.json"
    results = {}
    if partial.exists():
        saved = json.loads(partial.read_text())
        if saved.get("config") != run_signature(args):
            raise SystemExit(f"{partial} holds another run's results; use "
                             "another --output_dir or delete it.")
        results = {m: r for m, r in saved["results"].items()
                   if m in args.methods}
    for method in args.methods:
        if method in results:
            log(f"=== {LABELS[method]}: finished earlier, kept ===")
            continue
        log(f"=== {LABELS[method]} ===")
        results[method] = run_method(method, data, args)
        save_atomic(partial, {"config": run_signature(args),
                              "results": results})
    results = {m: results[m] for m in args.methods}
    compare = comparison(results)
    table = markdown(results, args, compare)
    report = {
        "config": {k: v for k, v in vars(args).items() if k != "archive"},
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_average_at_start": load,
        "load_average_at_end": round(os.getloadavg()[0], 1),
        "results": results,
        "comparison": compare,
        "elapsed_seconds": time.time() - started,
    }
    (output / "results.json").write_text(json.dumps(report, indent=2))
    (output / "results.md").write_text(table)
    plot(results, output / "budget_curves.png")
    print()
    print(table)
    log(f"Total {(time.time() - started) / 60:.1f} min. Outputs in "
        f"{output.resolve()}")


if __name__ == "__main__":
    main()
