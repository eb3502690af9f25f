"""How well the per-layer latency table predicts whole-network latency.

Measures `keras_slim.search.latency_table` for the zoo MobileNetV2 (CIFAR,
1.5x supernet) with the LiteRT interpreter, then compares its prediction
with the measured latency (`keras_slim.profile_latency`, median) of whole
networks: uniform widths and non-uniform configurations (each group at a
random bin, as searched networks are; or the configurations of a search
result with `--search_json`). Reports the relative error of each.

    python -m benchmarks.autoslim_latency --output_dir autoslim_latency_results
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
import keras_slim  # noqa: E402
from keras_slim import search  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max_width", type=float, default=1.5)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--random_configs", type=int, default=6)
    parser.add_argument("--search_json", default=None)
    parser.add_argument("--num_runs", type=int, default=30)
    parser.add_argument("--table", default=None,
                        help="a latency table to load (one measured on a "
                        "phone); default: measure one into --output_dir")
    parser.add_argument("--output_dir", default="autoslim_latency_results")
    args = parser.parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    if args.table is None:
        args.table = os.path.join(args.output_dir, "latency_table.json")
        if os.path.exists(args.table):
            os.remove(args.table)  # measured by this run, not an old one

    model = keras_slim.models.mobilenet_v2(width_range=(0.35, args.max_width))
    start = time.perf_counter()
    table = search.latency_table(model, args.table, levels=args.levels,
                                 num_runs=args.num_runs)
    table_seconds = time.perf_counter() - start
    common.log(f"latency table: {len(table.layers)} layers, "
               f"{table_seconds:.0f} s, overhead {table.overhead_ms:.3f} ms")
    costs = search.CostModel(model)
    rng = np.random.default_rng(0)
    cases = [(f"uniform {w:g}", w) for w in (0.5, 0.75, 1.0, 1.25)]
    if args.search_json:
        for name, config in search.load_configs(args.search_json).items():
            cases.append((name, config))
    plan = model.channel_plan
    for i in range(args.random_configs):
        chosen = {}
        for g in plan.independent_groups:
            j = plan.index[g]
            levels = np.arange(plan.minimums[j], plan.full[j] + 1,
                               plan.divisors[j])
            chosen[g] = int(rng.choice(levels))
        counts = plan.counts_for_groups(chosen)
        cases.append((f"random {i}",
                      search.config_from_counts(model, counts)))
    rows = []
    for name, width in cases:
        predicted = table.predict(costs, model.channels_for(width))
        measured = keras_slim.profile_latency(
            model, width=width, num_runs=args.num_runs)["median_ms"]
        error = (predicted - measured) / measured
        rows.append({"name": name, "macs": costs.cost(
            model.channels_for(width))["macs"], "predicted_ms": predicted,
            "measured_ms": measured, "relative_error": error})
        common.log(f"{name:>14}: predicted {predicted:.3f} ms, measured "
                   f"{measured:.3f} ms, error {100 * error:+.1f}%")
    errors = np.abs([r["relative_error"] for r in rows])
    report = {"table_seconds": table_seconds, "rows": rows,
              "mean_abs_relative_error": float(errors.mean()),
              "max_abs_relative_error": float(errors.max())}
    common.log(f"mean |error| {100 * errors.mean():.1f}%, max "
               f"{100 * errors.max():.1f}%")
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
