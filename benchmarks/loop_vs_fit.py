"""The trainers' custom loop vs `model.fit`, and the input pipeline's share.

Both drivers run the same `SlimmableModel.train_step` (US-Net sandwich rule,
4 widths per step, LeNet-3C1L) on the same model and data; the question is
what the driver itself costs. Two workloads: digits (8x8 images, batch 64,
~20 ms steps, where driver overhead would show) and CIFAR-10 (32x32, batch
128, compute-bound steps), each on one real batch repeated from memory, so
that both drivers get their data for free:

- fit: `model.fit`, one step per call (`steps_per_execution=1`), and 20
  steps per call (`steps_per_execution=20`);
- loop: `trainers.loop.make_train_function`, 1 and 20 steps per call
  (`--steps_per_loop`), reading the logs after every call as the trainer
  does.

Each measurement times `--steps` steps (10x on digits). The loop keeps one
iterator for the whole run; `fit` makes a new one per call, so its
measurement starts at the end of its first call. Repeats are interleaved in
rotating order (the machine is shared and noisy); ratios are taken within a
repeat, between adjacent measurements, so that load changes between repeats
cancel out. Reported: median and p10-p90 over repeats.

Input pipeline share, on the CIFAR-10 JPEG folder (`keras_slim.data.load(
"folder:...")`, 45k training images, augmentation on, batch 128), with the
custom loop at 20 steps per call:

- compute only: the same batch over and over (`Dataset.from_tensors`);
- cached: the trainer's pipeline (decoded images cached in memory after the
  first epoch, then shuffle, augment, batch, prefetch);
- uncached: the same pipeline with `cache=False` (JPEG decoding every step);
- input only: the pipelines iterated without training.

share = 1 - compute-only time / time with the pipeline: the part of a step
spent waiting for (or competing with) input.

The data is `shared/data/cifar10-jpeg-train.tar.gz`, extracted once to
`--cache_dir` (default `~/.cache/keras_slim/cifar10`, outside the repo).

Usage:
    python -m benchmarks.loop_vs_fit                # ~20 min on 2 cores
    python -m benchmarks.loop_vs_fit --repeats 3
Outputs: `--output_dir/loop_vs_fit.json` and `loop_vs_fit.md`.
"""

import argparse
import dataclasses
import json
import os
import pathlib
import time


import keras
import tensorflow as tf

from keras_slim import data as data_lib
from trainers import loop
from trainers import methods

from benchmarks.common import DEFAULT_ARCHIVE, DEFAULT_CACHE, cifar10_folder, log, spread

PER_CALL = 20  # steps per call of the multi-step variants


class _StepTimes(keras.callbacks.Callback):
    """Wall time at the end of every `fit` call (a batch or an execution)."""

    def __init__(self):
        super().__init__()
        self.marks = []

    def on_train_batch_end(self, batch, logs=None):
        self.marks.append((batch + 1, time.perf_counter()))


def fit_rate(model, dataset, steps):
    """Steps/s of `model.fit` after its first call."""
    times = _StepTimes()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0,
              callbacks=[times])
    (first_step, start), (last_step, end) = times.marks[0], times.marks[-1]
    return (last_step - first_step) / (end - start)


def loop_rate(train_steps, iterator, steps, per_call):
    """Steps/s of the custom loop (its iterator lives across calls)."""
    num = tf.constant(per_call, tf.int32)
    calls = max(1, steps // per_call)
    start = time.perf_counter()
    for _ in range(calls):
        logs = train_steps(iterator, num)
        {k: float(v) for k, v in logs.items()}  # what the trainer reads
    return calls * per_call / (time.perf_counter() - start)


def input_rate(iterator, batches, drain=50):
    """Batches/s of a pipeline alone.

    The first `drain` batches are not timed: they empty the prefetch and
    map buffers that filled up while the pipeline was idle, which would
    otherwise be counted as free batches.
    """
    for _ in range(drain):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches / (time.perf_counter() - start)


def interleaved(measures, repeats):
    """Runs `{name: fn() -> rate}` `repeats` times in rotating order.

    Returns the raw rates per name: ratios are then taken within a repeat
    (`paired`), so that load changes between repeats cancel out.
    """
    names = list(measures)
    results = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            results[name].append(measures[name]())
        log(f"repeat {r + 1}/{repeats}: " + ", ".join(
            f"{n} {results[n][-1]:.2f}" for n in names))
    return results


def paired(results, numerator, denominator):
    """Summary of `numerator / denominator`, repeat by repeat."""
    return spread([a / b for a, b in zip(results[numerator],
                                          results[denominator])])


def build_model(config, info, train_ds, steps_per_execution=1):
    keras.utils.set_random_seed(config.seed)
    model = loop.build_compiled_model(config, info, 351, 100_000)
    if steps_per_execution != 1:
        # Same compile arguments, several steps per fit call.
        model.compile(
            optimizer=model.optimizer, loss=model.loss, metrics=["accuracy"],
            steps_per_execution=steps_per_execution,
            **methods.get(config.method).compile_kwargs(config),
        )
    return model


def compare_drivers(config, info, train_ds, steps, repeats):
    """Interleaved steps/s of fit and the loop, 1 and 20 steps per call.

    Returns the raw rates and the loop's `train_steps` function, for
    further measurements on the same (warm) model.
    """
    strategy = tf.distribute.get_strategy()
    # One real batch over and over: both drivers get their data for free,
    # so the comparison is of the drivers alone (the input pipeline's
    # share is measured separately). A real pipeline would also favour
    # `fit`: its iterator is new at every call, so its prefetch buffer is
    # full when its timing starts.
    stream = tf.data.Dataset.from_tensors(next(iter(train_ds))).repeat()
    model = build_model(config, info, train_ds)
    model_spe = build_model(config, info, train_ds,
                            steps_per_execution=PER_CALL)
    train_steps = loop.make_train_function(model, strategy)
    iterator = iter(strategy.experimental_distribute_dataset(stream))
    started = time.perf_counter()
    loop_rate(train_steps, iterator, 2, 1)
    loop_rate(train_steps, iterator, PER_CALL, PER_CALL)
    fit_rate(model, stream, 3)
    fit_rate(model_spe, stream, 2 * PER_CALL)
    log(f"Warm-up took {time.perf_counter() - started:.0f} s")
    rates = interleaved({
        "fit (1 step/call)": lambda: fit_rate(model, stream, steps),
        "loop (1 step/call)": lambda: loop_rate(
            train_steps, iterator, steps, 1),
        "fit (20 steps/call)": lambda: fit_rate(model_spe, stream, steps),
        "loop (20 steps/call)": lambda: loop_rate(
            train_steps, iterator, steps, PER_CALL),
    }, repeats)
    return rates, train_steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", default=str(DEFAULT_ARCHIVE))
    parser.add_argument("--cache_dir", default=str(DEFAULT_CACHE))
    parser.add_argument("--output_dir", default="loop_vs_fit_results")
    parser.add_argument("--model", default="lenet_3c1l")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40,
                        help="Steps per measurement.")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    if args.steps < 2 * PER_CALL:
        parser.error(f"--steps must be at least {2 * PER_CALL} (two calls "
                     f"of {PER_CALL} steps).")

    load_at_start = os.getloadavg()[0]
    folder = cifar10_folder(args.archive, args.cache_dir)
    spec = f"folder:{folder}"
    config = loop.TrainConfig(
        method="us", model=args.model, model_kwargs="{}", dataset=spec,
        batch_size=args.batch_size, seed=0, learning_rate=0.01,
        weight_decay=5e-4,
    )
    log(f"Loading {spec}")
    train_ds, _, info = data_lib.load(
        spec, batch_size=args.batch_size, augment=True, seed=0,
        drop_remainder=True,
    )
    uncached_ds, _, _ = data_lib.load(
        spec, batch_size=args.batch_size, augment=True, seed=0,
        drop_remainder=True, cache=False,
    )
    strategy = tf.distribute.get_strategy()

    # ---------------------------------------------------- loop vs fit
    # Digits: ~15 ms steps, where a driver's own overhead would show.
    digits_config = dataclasses.replace(
        config, dataset="digits", model_kwargs='{"padding": "same"}',
        batch_size=64,
    )
    digits_ds, _, digits_info = data_lib.load(
        "digits", batch_size=64, seed=0, drop_remainder=True
    )
    log("digits: loop vs fit")
    digits_drivers, _ = compare_drivers(
        digits_config, digits_info, digits_ds, 10 * args.steps, args.repeats
    )
    log("CIFAR-10: loop vs fit")
    drivers, train_steps = compare_drivers(
        config, info, train_ds, args.steps, args.repeats
    )

    # ------------------------------------------------- input pipeline
    stream = train_ds.repeat()
    iterator = iter(strategy.experimental_distribute_dataset(stream))
    fixed = tf.data.Dataset.from_tensors(next(iter(train_ds))).repeat()
    fixed_iterator = iter(strategy.experimental_distribute_dataset(fixed))
    uncached_stream = uncached_ds.repeat()
    uncached_iterator = iter(
        strategy.experimental_distribute_dataset(uncached_stream))
    input_cached = iter(stream)
    input_uncached = iter(uncached_stream)
    log("Warm-up: the pipelines' shuffle buffers (decodes every image)")
    next(input_cached)
    next(input_uncached)
    loop_rate(train_steps, iterator, 2, 1)
    loop_rate(train_steps, uncached_iterator, 2, 1)
    pipeline = interleaved({
        "compute only": lambda: loop_rate(
            train_steps, fixed_iterator, args.steps, PER_CALL),
        "cached pipeline": lambda: loop_rate(
            train_steps, iterator, args.steps, PER_CALL),
        "uncached pipeline": lambda: loop_rate(
            train_steps, uncached_iterator, args.steps, PER_CALL),
        "input only, cached": lambda: input_rate(input_cached, 200),
        "input only, uncached": lambda: input_rate(input_uncached, 200),
    }, args.repeats)

    ratio = {}
    for workload, rates in (("digits", digits_drivers), ("CIFAR-10", drivers)):
        for per_call in ("1 step/call", "20 steps/call"):
            ratio[f"{workload}: loop / fit, {per_call}"] = paired(
                rates, f"loop ({per_call})", f"fit ({per_call})")
    share = {}
    for name in ("cached", "uncached"):
        kept = paired(pipeline, f"{name} pipeline", "compute only")
        share[name] = spread([1 - v for v in kept["runs"]])
    result = {
        "config": {
            "model": args.model, "method": "us (sandwich, 4 widths/step)",
            "data": "CIFAR-10 JPEG folder, 45k train images, augment, batch "
                    f"{args.batch_size}, {args.steps} steps per measurement; "
                    f"digits (8x8, 'same' padding), batch 64, "
                    f"{10 * args.steps} steps",
            "repeats": args.repeats, "cpus": os.cpu_count(),
            "load_average_start": round(load_at_start, 2),
            "load_average_end": round(os.getloadavg()[0], 2),
            "tensorflow": tf.__version__, "keras": keras.__version__,
        },
        "steps_per_second": {
            **{f"digits: {name}": spread(rates)
               for name, rates in digits_drivers.items()},
            **{f"CIFAR-10: {name}": spread(rates)
               for name, rates in {**drivers, **pipeline}.items()},
        },
        "loop_over_fit": ratio,
        "input_share_of_step": share,
    }
    write(result, pathlib.Path(args.output_dir))


def write(result, output_dir):
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "loop_vs_fit.json").write_text(json.dumps(result, indent=2))
    config = result["config"]
    lines = [
        "# Custom loop vs model.fit; input pipeline share",
        "",
        f"{config['model']}, {config['method']}; {config['data']}; "
        f"{config['repeats']} interleaved repeats; {config['cpus']} CPUs, "
        "load average "
        f"{config['load_average_start']} -> {config['load_average_end']}; "
        f"TF {config['tensorflow']}, Keras {config['keras']}.",
        "",
        "| Variant | steps/s (median) | p10 - p90 |",
        "|---|---|---|",
    ]
    for name, s in result["steps_per_second"].items():
        unit = " (batches/s)" if "input only" in name else ""
        lines.append(f"| {name}{unit} | {s['median']:.2f} | "
                     f"{s['p10']:.2f} - {s['p90']:.2f} |")
    lines += [
        "",
        "Ratios are taken within each repeat (adjacent measurements), then "
        "summarised over repeats.",
        "",
        "| Ratio | median | p10 - p90 |",
        "|---|---|---|",
    ]
    for name, s in result["loop_over_fit"].items():
        lines.append(f"| {name} | {s['median']:.3f} | "
                     f"{s['p10']:.3f} - {s['p90']:.3f} |")
    for name, s in result["input_share_of_step"].items():
        lines.append(f"| input share of a step, {name} | "
                     f"{100 * s['median']:.1f}% | {100 * s['p10']:.1f}% - "
                     f"{100 * s['p90']:.1f}% |")
    text = "\n".join(lines) + "\n"
    (output_dir / "loop_vs_fit.md").write_text(text)
    print(text)
    log(f"Wrote {output_dir / 'loop_vs_fit.json'} and loop_vs_fit.md")


if __name__ == "__main__":
    main()
