"""slim() on every model of keras.applications: does it convert, exactly?

For each builder (`weights=None`, 10 classes, square inputs, `divisor=8`)
it runs the conversion check of the CI test (`tests/applications.py`):
width 1.0 against the original, `strip(model, w)` against the model at
three other widths, one sandwich `fit` step (eager: tracing the step of a
model with hundreds of layers costs more than the check), and a TFLite
export of width 0.5 verified against Keras. A restarted sweep keeps the
rows that converted and checks the others again. Writes `applications.json` and
`applications.md` (the README's table) to `--output_dir`.

Usage:
    python -m benchmarks.applications_sweep --output_dir results/applications
    python -m benchmarks.applications_sweep --models MobileNetV3Small,VGG16
"""

import argparse
import json
import pathlib
import platform
import sys
import time
import traceback

from benchmarks.common import log


def _sizes(name, size):
    # The Inception and Xception stems need at least 75 / 71 pixels.
    return max(size, {"InceptionV3": 75, "InceptionResNetV2": 75,
                      "Xception": 71}.get(name, 0))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="results/applications")
    parser.add_argument("--models", default="",
                        help="Comma-separated builder names (default: all).")
    parser.add_argument("--input_size", type=int, default=96)
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    from tests import applications

    names = sorted(applications.builders())
    if args.models:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
    out = pathlib.Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    done = {}
    if (out / "applications.json").exists():
        previous = json.loads((out / "applications.json").read_text())
        # Rows that failed are checked again (the code may have changed).
        done = {row["model"]: row for row in previous["rows"]
                if row["converts"] and row.get("input_size") == _sizes(
                    row["model"], args.input_size)}
    rows = []

    def save():
        (out / "applications.json").write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {platform.processor() or ''}"
                       f" {__import__('os').cpu_count()} cores",
            "versions": {"keras": keras.__version__,
                         "tensorflow": tf.__version__},
            "seconds": round(time.time() - started),
            "command": " ".join(["python"] + sys.argv),
            "rows": rows,
        }, indent=2))

    for i, name in enumerate(names):
        if name in done:
            rows.append(done[name])
            continue
        log(f"[{i + 1}/{len(names)}] {name}")
        size = _sizes(name, args.input_size)
        try:
            row = applications.check_in_temp_dir(name, size, run_eagerly=True)
        except Exception as error:  # noqa: BLE001 - the table reports it
            row = {"model": name, "input_size": size, "converts": False,
                   "error": f"{type(error).__name__}: {error}"[:300]}
            traceback.print_exc(limit=2)
        rows.append(row)
        keras.backend.clear_session()
        save()
    save()  # the rows kept from a previous run too
    lines = [
        "| model | converts | width 1.0 vs original | strip vs model "
        "| params | params at 0.5 | TFLite verified |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if not row["converts"]:
            lines.append(f"| {row['model']} | no: {row['error']} | | | | | |")
            continue
        lines.append(
            f"| {row['model']} | yes | {row['exact_diff']:.1e} "
            f"| {row['strip_diff']:.1e} | {row['params']:,} "
            f"| {row['params_at_half']:,} "
            f"| {'yes' if row['tflite_verified'] else 'no'} |"
        )
    (out / "applications.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    log(f"{len(rows)} models in {time.time() - started:.0f} s; wrote {out}")


if __name__ == "__main__":
    main()
