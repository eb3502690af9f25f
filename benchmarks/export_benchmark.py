"""Export benchmark: stripped TFLite models vs natively built ones, and
latency vs MACs across widths.

For a universally slimmable CIFAR MobileNetV2 (`keras_slim.models.
mobilenet_v2`, widths 0.35-1.0, divisor 8) at each input resolution:

(i) the stripped width-w float32 TFLite file (`keras_slim.export.to_tflite`)
    vs the same architecture built natively at width w (the stripped model's
    config rebuilt with fresh layers by `keras.Model.from_config`, holding
    the same weights) and vs the zoo's plain MobileNetV2 at alpha = w
    (paper-style channels: expansion from the block's input width,
    1280-channel head kept), all converted the same way
    (`TFLiteConverter.from_keras_model`, float32): file size, MACs and
    latency ratio;
(ii) latency(w) / latency(1.0) divided by MACs(w) / MACs(1.0): 1.0 means
    latency falls exactly with MACs; above 1.0 narrow models are slower than
    their MACs predict (fixed per-op overhead, memory-bound depthwise ops);
(iii) size of one multi-signature TFLite file (all widths) vs the separate
    files.

Latencies come from the LiteRT interpreter (`keras_slim.profile_latency`,
batch 1, `--threads` threads). Files are timed in interleaved rounds (the
order rotates every round) so that machine noise hits every file alike;
each round gives one median per file, and ratios are formed per round.
Reported: median and p10/p90 over rounds.

Usage:
    python -m benchmarks.export_benchmark --output_dir results/export
    python -m benchmarks.export_benchmark --resolutions 32 --rounds 3 \
        --output_dir /tmp/export_quick
"""

import argparse
import filecmp
import json
import os
import platform
import time

import numpy as np

import keras
import tensorflow as tf

import keras_slim
from keras_slim import export
from keras_slim.models import mobilenet_v2

from benchmarks.common import log, spread


def write_tflite(keras_model, path):
    content = export.convert_keras_model(keras_model)
    with open(path, "wb") as f:
        f.write(content)
    return os.path.getsize(path)


def prepare(resolution, widths, out_dir, log):
    """Exports the slimmable model's widths and builds the reference files."""
    shape = (resolution, resolution, 3)
    model = mobilenet_v2(input_shape=shape, num_classes=10,
                         width_range=(min(widths), max(widths)))
    # Freshly initialised BN statistics (0 / 1) let activations vanish
    # through the network (outputs ~1e-8), which would make the export
    # check meaningless; calibrate them on random images, per width.
    images = np.random.default_rng(0).uniform(
        size=(64,) + shape).astype("float32")
    keras_slim.calibrate_bn(model, images, widths=widths, batch_size=32,
                            verbose=0)
    directory = os.path.join(out_dir, f"models_{resolution}")
    start = time.perf_counter()
    manifest = export.to_tflite(model, directory, widths=widths)
    log(f"[{resolution}] exported {len(widths)} verified widths in "
        f"{time.perf_counter() - start:.0f}s")
    rows = {}
    for entry in manifest["exports"]:
        width = entry["width"]
        stripped = keras_slim.strip(model, width)
        # The same architecture built by Keras from scratch, given the same
        # weights (fresh weights would differ in size only because the
        # converter shares identical constants such as all-zero biases).
        native = keras.Model.from_config(stripped.get_config())
        native.set_weights(stripped.get_weights())
        native_path = os.path.join(directory, f"native_w{width:g}.tflite")
        zoo = mobilenet_v2(input_shape=shape, num_classes=10,
                           width_multiplier=width, slimmable=False)
        zoo_path = os.path.join(directory, f"zoo_alpha{width:g}.tflite")
        rows[width] = {
            "width": width,
            "macs": entry["macs"],
            "params": entry["params"],
            "max_abs_diff": entry["max_abs_diff"],
            "output_scale": entry["output_scale"],
            "files": {
                "stripped": os.path.join(directory, entry["file"]),
                "native": native_path,
                "zoo_alpha": zoo_path,
            },
            "size_bytes": {
                "stripped": entry["size_bytes"],
                "native": write_tflite(native, native_path),
                "zoo_alpha": write_tflite(zoo, zoo_path),
            },
            "identical_bytes": filecmp.cmp(
                os.path.join(directory, entry["file"]), native_path,
                shallow=False),
            "native_macs": keras_slim.profile(native)["macs"],
            "zoo_alpha_macs": keras_slim.profile(zoo)["macs"],
            "zoo_alpha_params": zoo.count_params(),
        }
        assert rows[width]["native_macs"] == entry["macs"]
    log(f"[{resolution}] built reference files")
    multi = None
    if resolution <= 64:
        info = export.to_tflite_multi(
            model, os.path.join(directory, "multi.tflite"), widths)
        separate = sum(r["size_bytes"]["stripped"] for r in rows.values())
        multi = {
            "multi_size_bytes": info["size_bytes"],
            "separate_size_bytes": separate,
            "ratio": info["size_bytes"] / separate,
            "max_abs_diff": max(s["max_abs_diff"]
                                for s in info["signatures"].values()),
        }
    return rows, multi


def time_files(rows, rounds, runs, warmup, threads, log):
    """Interleaved rounds; returns {(width, kind): [median per round]}."""
    keys = [(w, kind) for w in rows for kind in rows[w]["files"]]
    timings = {key: [] for key in keys}
    for round_index in range(rounds):
        shift = round_index % len(keys)
        order = keys[shift:] + keys[:shift]
        if round_index % 2:
            order = order[::-1]
        for width, kind in order:
            result = keras_slim.profile_latency(
                rows[width]["files"][kind], num_runs=runs, warmup=warmup,
                num_threads=threads)
            timings[(width, kind)].append(result["median_ms"])
        log(f"  round {round_index + 1}/{rounds} done")
    return timings


def analyse(rows, timings, widths):
    full = max(widths)
    results = []
    for width in widths:
        row = rows[width]
        lat = {kind: np.asarray(timings[(width, kind)]) for kind in
               row["files"]}
        lat_full = np.asarray(timings[(full, "stripped")])
        mac_ratio = row["macs"] / rows[full]["macs"]
        results.append({
            "width": width,
            "macs": row["macs"],
            "params": row["params"],
            "export_max_abs_diff": row["max_abs_diff"],
            "export_output_scale": row["output_scale"],
            "size_bytes": row["size_bytes"],
            "zoo_alpha_macs": row["zoo_alpha_macs"],
            "zoo_alpha_params": row["zoo_alpha_params"],
            "latency_ms": {k: spread(v) for k, v in lat.items()},
            "latency_ratio_stripped_vs_native": spread(
                lat["stripped"] / lat["native"]),
            "latency_ratio_stripped_vs_zoo_alpha": spread(
                lat["stripped"] / lat["zoo_alpha"]),
            "stripped_file_identical_to_native": row["identical_bytes"],
            "size_ratio_stripped_vs_native": (
                row["size_bytes"]["stripped"] / row["size_bytes"]["native"]),
            "macs_ratio": mac_ratio,
            "latency_ratio_vs_full": spread(lat["stripped"] / lat_full),
            "latency_over_macs_ratio": spread(
                lat["stripped"] / lat_full / mac_ratio),
        })
    return results


def markdown(report):
    lines = [
        "# Export benchmark",
        "",
        f"Model: CIFAR MobileNetV2 (keras_slim.models.mobilenet_v2, US-Net "
        f"0.35-1.0, divisor 8), float32 TFLite, LiteRT interpreter, "
        f"{report['config']['threads']} thread(s), batch 1; "
        f"{report['config']['rounds']} interleaved rounds x "
        f"{report['config']['runs']} runs. Machine: "
        f"{report['machine']['cpu_count']} CPUs, load average at start "
        f"{report['machine']['load_average_start']}.",
        "",
        "Values are median [p10, p90] over rounds.",
        "",
    ]
    for resolution, block in report["resolutions"].items():
        lines += [
            f"## {resolution}x{resolution}",
            "",
            "| width | MACs (M) | params | size stripped / native (KB, "
            "byte-identical?) | "
            "latency stripped (ms) | stripped / native latency | "
            "stripped / zoo alpha latency (zoo MACs M) | lat(w)/lat(1) | "
            "MACs(w)/MACs(1) | (lat ratio)/(MACs ratio) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in block["widths"]:
            def fmt(s, digits=2):
                return (f"{s['median']:.{digits}f} [{s['p10']:.{digits}f}, "
                        f"{s['p90']:.{digits}f}]")
            lines.append(
                f"| {r['width']:g} | {r['macs'] / 1e6:.1f} | {r['params']:,} "
                f"| {r['size_bytes']['stripped'] / 1024:.0f} / "
                f"{r['size_bytes']['native'] / 1024:.0f} "
                f"({'yes' if r['stripped_file_identical_to_native'] else 'no'}) "
                f"| {fmt(r['latency_ms']['stripped'])} "
                f"| {fmt(r['latency_ratio_stripped_vs_native'], 3)} "
                f"| {fmt(r['latency_ratio_stripped_vs_zoo_alpha'], 3)} "
                f"({r['zoo_alpha_macs'] / 1e6:.1f}) "
                f"| {fmt(r['latency_ratio_vs_full'], 3)} "
                f"| {r['macs_ratio']:.3f} "
                f"| {fmt(r['latency_over_macs_ratio'], 3)} |")
        multi = block.get("multi_signature")
        if multi:
            lines += [
                "",
                f"Multi-signature file (all widths): "
                f"{multi['multi_size_bytes'] / 1024:.0f} KB vs "
                f"{multi['separate_size_bytes'] / 1024:.0f} KB for the "
                f"separate files (ratio {multi['ratio']:.3f}); max |diff| to "
                f"Keras {multi['max_abs_diff']:.2e}.",
            ]
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--output_dir", required=True,
                        help="Where to write results.json, results.md and "
                             "the exported files.")
    parser.add_argument("--resolutions", type=int, nargs="+",
                        default=[32, 224])
    parser.add_argument("--widths", type=float, nargs="+",
                        default=[0.35, 0.5, 0.75, 1.0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30,
                        help="Timed invocations per file per round.")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if 1.0 not in args.widths:
        parser.error("--widths must include 1.0 (the reference width).")
    os.makedirs(args.output_dir, exist_ok=True)
    keras.utils.set_random_seed(0)

    report = {
        "config": vars(args),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_start": [round(v, 2) for v in os.getloadavg()],
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
        "resolutions": {},
    }
    widths = sorted(args.widths)
    for resolution in args.resolutions:
        rows, multi = prepare(resolution, widths, args.output_dir, log)
        timings = time_files(rows, args.rounds, args.runs, args.warmup,
                             args.threads, log)
        report["resolutions"][str(resolution)] = {
            "widths": analyse(rows, timings, widths),
            "multi_signature": multi,
            "raw_round_medians_ms": {
                f"w{w:g}/{kind}": v for (w, kind), v in timings.items()},
        }
    report["machine"]["load_average_end"] = [
        round(v, 2) for v in os.getloadavg()]
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(report, f, indent=2)
    text = markdown(report)
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    return report


if __name__ == "__main__":
    main()
