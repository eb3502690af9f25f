"""Early-exit performance figures: training step, staged latency, thresholds.

Measures, for the zoo's multi-exit CIFAR ResNet (`keras_slim.models.
resnet_exits`, ResNet-20 with 5 exits, width 1.0):

(i)   boosted vs plain joint training step: the same network with
      `ensemble_weight=0.5` vs `0`, both with gradient equilibrium, batch
      `--batch_size` of random 32x32x3 images, through `model.fit`. Repeats
      alternate between the two models; each repeat times `--steps` steps
      (wall and process CPU time); the ratio is formed per repeat pair.
      Goal: boosted <= 1.05x plain.
(ii)  staged TFLite latency: a sample that leaves at exit k runs stages
      1..k (`keras_slim.export.run_cascade`, thresholds forcing exit k,
      every stage's confidence check included) vs the single file that
      ends at exit k (images -> P_k, and the label), LiteRT, batch 1,
      `--threads` threads, interleaved rounds; per round and file the
      median over images of the per-image latency. Goal: <= 1.1x. Also
      latency(k) / latency(K) divided by MACs(k) / MACs(K) (1.0: latency
      follows cumulative MACs).
(iii) thresholds for the whole budget curve from cached validation logits
      (5 exits, `--samples` samples, 10 classes): the 39-member `q^k` family
      and 39 target budgets (each a search over ~280 family members).
      Goal: < 1 s.

Usage:
    python -m benchmarks.early_exit_speed --output_dir results/ee_speed
    python -m benchmarks.early_exit_speed --repeats 3 --rounds 3  # faster
"""

import argparse
import json
import os
import platform
import shutil
import tempfile
import time

import numpy as np

from benchmarks.common import log, spread


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8,
                        help="Training steps per timed repeat.")
    parser.add_argument("--repeats", type=int, default=9,
                        help="Timed repeats per model (interleaved).")
    parser.add_argument("--rounds", type=int, default=9,
                        help="Latency rounds (interleaved over files).")
    parser.add_argument("--images", type=int, default=60,
                        help="Images per latency round.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--samples", type=int, default=5000,
                        help="Cached validation samples for thresholds.")
    parser.add_argument("--skip", default="",
                        help="Comma-separated parts to skip: train,latency,"
                        "thresholds.")
    parser.add_argument("--output_dir", default="early_exit_speed_results")
    return parser.parse_args(argv)


def train_step_ratio(args):
    import keras
    import tensorflow as tf

    import keras_slim

    rng = np.random.default_rng(0)
    n = args.batch_size * 4
    x = rng.random((n, 32, 32, 3), dtype="float32")
    y = rng.integers(0, 10, n).astype("int32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(
        args.batch_size, drop_remainder=True).repeat()
    models = {}
    for name, weight in (("boosted", 0.5), ("plain", 0.0)):
        keras.utils.set_random_seed(0)
        model = keras_slim.models.resnet_exits(
            depth=20, slimmable=False, ensemble_weight=weight)
        model.compile(keras.optimizers.SGD(0.01, momentum=0.9),
                      metrics=["accuracy"])
        model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)  # trace
        models[name] = model
    for model in models.values():  # untimed: a first call pays set-up
        model.fit(ds, steps_per_epoch=args.steps, epochs=1, verbose=0)
    times = {name: {"wall": [], "cpu": []} for name in models}
    ratios = {"wall": [], "cpu": []}
    for repeat in range(args.repeats):
        order = list(models) if repeat % 2 == 0 else list(models)[::-1]
        step = {}
        for name in order:
            wall, cpu = time.perf_counter(), time.process_time()
            models[name].fit(ds, steps_per_epoch=args.steps, epochs=1,
                             verbose=0)
            step[name] = {
                "wall": (time.perf_counter() - wall) / args.steps,
                "cpu": (time.process_time() - cpu) / args.steps,
            }
            for clock in ("wall", "cpu"):
                times[name][clock].append(step[name][clock])
        for clock in ("wall", "cpu"):
            ratios[clock].append(step["boosted"][clock] / step["plain"][clock])
        log(f"repeat {repeat + 1}: boosted/plain wall "
            f"{ratios['wall'][-1]:.3f}, cpu {ratios['cpu'][-1]:.3f}")
    return {
        "step_seconds": {
            name: {clock: spread(values) for clock, values in t.items()}
            for name, t in times.items()
        },
        "ratio_boosted_over_plain": {
            clock: spread(values) for clock, values in ratios.items()
        },
    }


def staged_latency(args):
    import keras

    import keras_slim

    keras.utils.set_random_seed(0)
    model = keras_slim.models.resnet_exits(depth=20, slimmable=False)
    rng = np.random.default_rng(1)
    images = rng.standard_normal((args.images, 32, 32, 3)).astype("float32")
    out_dir = tempfile.mkdtemp(prefix="ee_latency_")
    try:
        return _staged_latency(args, model, images, out_dir)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def _staged_latency(args, model, images, out_dir):
    from keras_slim import export
    from keras_slim.early_exit import NEVER_EXIT
    from keras_slim.export.staged import _Runner

    started = time.time()
    manifest = export.to_tflite(model, out_dir)
    log(f"exported {len(manifest['exports'])} files in "
        f"{time.time() - started:.0f} s")
    record = manifest["early_exit"]["widths"]["w1"]
    num_exits = manifest["early_exit"]["num_exits"]
    macs = record["cumulative_macs"]
    singles = [
        _Runner(os.path.join(out_dir, name), "tflite", args.threads)
        for name in record["files"]["tflite"]["exits"]
    ]

    def forced(k):  # thresholds making every sample leave at exit k
        return [NEVER_EXIT] * k + [0.0] * (num_exits - 1 - k)

    # Per round and file: the median over images of the per-image latency
    # (robust to the preemptions of a shared machine).
    def single_ms(k):
        # What an app does with a file ending at exit k: one invoke and the
        # label (through buffer views, as run_cascade does).
        runner, times = singles[k], []
        runner.prepare({"images": (1,) + images.shape[1:]})
        (output,) = runner.output_names
        for i in range(len(images)):
            start = time.perf_counter()
            runner.view("images")[...] = images[i:i + 1]
            runner.invoke()
            runner.view(output)[0].argmax()
            times.append(time.perf_counter() - start)
        return 1e3 * float(np.median(times))

    def staged_ms(k):
        result = export.run_cascade(out_dir, images, thresholds=forced(k),
                                    num_threads=args.threads)
        assert set(result.exits) == {k + 1}
        return float(np.median(result.latency_ms))

    for k in range(num_exits):  # warm-up (allocation, caches)
        single_ms(k), staged_ms(k)
    staged = {k: [] for k in range(num_exits)}
    single = {k: [] for k in range(num_exits)}
    ratios = {k: [] for k in range(num_exits)}
    for r in range(args.rounds):
        plan = [(k, kind) for k in range(num_exits)
                for kind in ("staged", "single")]
        plan = plan[r % len(plan):] + plan[:r % len(plan)]  # rotate
        measured = {}
        for k, kind in plan:
            measured[(k, kind)] = staged_ms(k) if kind == "staged" else (
                single_ms(k))
        for k in range(num_exits):
            staged[k].append(measured[(k, "staged")])
            single[k].append(measured[(k, "single")])
            ratios[k].append(measured[(k, "staged")] /
                             measured[(k, "single")])
        log(f"round {r + 1}: staged/single " + ", ".join(
            f"exit{k + 1} {ratios[k][-1]:.3f}" for k in range(num_exits)))
    last = num_exits - 1
    proportionality = {
        k: [
            (staged[k][r] / staged[last][r]) / (macs[k] / macs[last])
            for r in range(args.rounds)
        ]
        for k in range(num_exits)
    }
    single_proportionality = {
        k: [
            (single[k][r] / single[last][r]) / (macs[k] / macs[last])
            for r in range(args.rounds)
        ]
        for k in range(num_exits)
    }
    return {
        "cumulative_macs": macs,
        "threads": args.threads,
        "staged_ms": {f"exit{k + 1}": spread(v) for k, v in staged.items()},
        "single_ms": {f"exit{k + 1}": spread(v) for k, v in single.items()},
        "ratio_staged_over_single": {
            f"exit{k + 1}": spread(v) for k, v in ratios.items()
        },
        "latency_share_over_macs_share_staged": {
            f"exit{k + 1}": spread(v) for k, v in proportionality.items()
        },
        "latency_share_over_macs_share_single": {
            f"exit{k + 1}": spread(v)
            for k, v in single_proportionality.items()
        },
    }


def threshold_speed(args):
    import keras_slim
    from keras_slim.early_exit import ExitLogits

    rng = np.random.default_rng(0)
    num_exits, count = 5, args.samples
    labels = rng.integers(0, 10, count)
    logits = rng.normal(size=(num_exits, count, 10)).astype("float32")
    for k in range(num_exits):
        right = rng.random(count) < 0.4 + 0.1 * k
        logits[k, right, labels[right]] += 3.0
    costs = [10e6, 20e6, 30e6, 39e6, 44e6]
    model = keras_slim.models.resnet_exits(depth=20, slimmable=False)
    results = {"family": [], "budgets": [], "cache": []}
    budgets = list(np.linspace(costs[0], costs[-1], 39))
    for _ in range(5):
        start = time.perf_counter()
        cache = ExitLogits(width=1.0, logits=logits, labels=labels,
                           cumulative_macs=costs)
        results["cache"].append(time.perf_counter() - start)
        start = time.perf_counter()
        curve = keras_slim.calibrate_exit_thresholds(model, cache)
        results["family"].append(time.perf_counter() - start)
        start = time.perf_counter()
        chosen = keras_slim.calibrate_exit_thresholds(model, cache,
                                                      budget=budgets)
        results["budgets"].append(time.perf_counter() - start)
    assert len(curve) == 39 and len(chosen) == 39
    log("thresholds: cache {:.3f} s, 39-member family {:.3f} s, 39 budgets "
        "{:.3f} s (medians)".format(*(np.median(results[k]) for k in (
            "cache", "family", "budgets"))))
    return {
        "samples": count,
        "exits": num_exits,
        "seconds": {k: spread(v) for k, v in results.items()},
    }


def main(argv=None):
    args = parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    os.makedirs(args.output_dir, exist_ok=True)
    report = {
        "config": vars(args),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_at_start": os.getloadavg(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    started = time.time()
    if "thresholds" not in skip:
        report["thresholds"] = threshold_speed(args)
    if "train" not in skip:
        report["train_step"] = train_step_ratio(args)
    if "latency" not in skip:
        report["staged_latency"] = staged_latency(args)
    report["machine"]["load_at_end"] = os.getloadavg()
    report["elapsed_seconds"] = time.time() - started
    path = os.path.join(args.output_dir, "results.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    lines = ["| Figure | Median | p10-p90 | Goal |", "|---|---|---|---|"]
    if "train_step" in report:
        for clock in ("wall", "cpu"):
            s = report["train_step"]["ratio_boosted_over_plain"][clock]
            lines.append(
                f"| boosted / plain training step ({clock}) | "
                f"{s['median']:.3f} | {s['p10']:.3f}-{s['p90']:.3f} | "
                "<= 1.05 |")
    if "staged_latency" in report:
        lat = report["staged_latency"]
        for key, s in lat["ratio_staged_over_single"].items():
            lines.append(
                f"| staged / single file, leaving at {key} | "
                f"{s['median']:.3f} | {s['p10']:.3f}-{s['p90']:.3f} | "
                "<= 1.1 |")
        for key, s in lat["latency_share_over_macs_share_staged"].items():
            lines.append(
                f"| latency share / MACs share, staged {key} | "
                f"{s['median']:.3f} | {s['p10']:.3f}-{s['p90']:.3f} | ~1 |")
    if "thresholds" in report:
        for key in ("family", "budgets"):
            s = report["thresholds"]["seconds"][key]
            lines.append(
                f"| thresholds, 39 {'q values' if key == 'family' else 'budgets'}"
                f" from cached logits (s) | {s['median']:.3f} | "
                f"{s['p10']:.3f}-{s['p90']:.3f} | < 1 |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        f.write(table)
    print(table)
    log(f"Done in {report['elapsed_seconds'] / 60:.1f} min; "
        f"{os.path.abspath(path)}")


if __name__ == "__main__":
    main()
