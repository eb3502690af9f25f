"""Runs benchmark suites and writes one record per suite.

Every suite runs its module in a fresh Python process (TensorFlow state,
memory and a crash stay inside it), with its output going to
`DIR/NAME/log.txt` and its files to `DIR/NAME/`. The harness then writes

- `DIR/NAME.json`: the record (schema `RECORD_FORMAT`, checked by
  `validate`): settings, package versions, machine, date, duration, the
  headline figures and the module's full results;
- `DIR/NAME.md`: a Markdown report (headline table, the module's own
  tables, its plots);
- `DIR/NAME.png`: the headline figures as a chart (ratios with their
  p10-p90 spread, accuracies).

A suite whose record already holds a finished run of the same settings is
kept, so an interrupted `--suite all` continues where it stopped.
"""

import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import re
import shlex
import subprocess
import sys
import threading
import time

from benchmarks import suites as suites_lib
from benchmarks.common import write_atomic

RECORD_FORMAT = "keras_slim.benchmark/1"
REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("keras_slim", "keras", "tensorflow", "numpy", "ai-edge-litert",
            "tf2onnx", "onnxruntime", "tensorflow-datasets")
REQUIRED = {
    "format": str, "suite": str, "title": str, "kind": str, "mode": str,
    "status": str, "command": str, "module_command": str, "cut": str,
    "started": str, "seconds": (int, float), "machine": dict,
    "versions": dict, "figures": list, "results": dict, "report": str,
    "plots": list, "log": str,
}
FIGURE_REQUIRED = {"name": str, "value": (int, float), "unit": str}


def versions():
    """Installed versions of the packages the figures depend on."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def machine():
    """What the figures were measured on."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def validate(record):
    """Raises ValueError naming every field of `record` that is wrong."""
    problems = []
    for key, kind in REQUIRED.items():
        if key not in record:
            problems.append(f"missing '{key}'")
        elif not isinstance(record[key], kind):
            problems.append(f"'{key}' is {type(record[key]).__name__}")
    if record.get("format") not in (None, RECORD_FORMAT):
        problems.append(f"format {record['format']!r} != {RECORD_FORMAT!r}")
    if record.get("mode") not in (None,) + suites_lib.MODES:
        problems.append(f"mode {record.get('mode')!r}")
    if record.get("status") not in (None, "ok", "failed"):
        problems.append(f"status {record.get('status')!r}")
    if record.get("status") == "ok" and not record.get("figures"):
        problems.append("a finished run without figures")
    for i, figure in enumerate(record.get("figures") or []):
        for key, kind in FIGURE_REQUIRED.items():
            if not isinstance(figure.get(key), kind):
                problems.append(f"figures[{i}].{key}")
        if "p10" in figure and not (
                figure["p10"] - 1e-9 <= figure["value"]
                <= figure["p90"] + 1e-9):
            problems.append(f"figures[{i}]: median outside p10-p90")
    if problems:
        raise ValueError("Invalid benchmark record: " + "; ".join(problems))
    return record


def _load(path):
    try:
        return json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError):
        return None


def command_line(names, mode, out):
    return (f"python -m benchmarks --suite {names} --{mode} "
            f"--out {shlex.quote(str(out))}")


class _Progress:
    """A Keras progress bar over the whole run, in estimated seconds."""

    def __init__(self, plan, mode, verbose):
        import keras

        self.estimates = [60 * s.minutes[mode] for s in plan]
        self.bar = keras.utils.Progbar(
            sum(self.estimates), verbose=verbose, unit_name="s")
        self.done = 0.0
        self._stop = threading.Event()
        self._thread = None

    def start(self, index, name):
        self._stop.clear()
        started = time.time()
        limit = 0.97 * self.estimates[index]

        def tick():
            while not self._stop.wait(5.0):
                elapsed = min(time.time() - started, limit)
                self.bar.update(self.done + elapsed)

        self._thread = threading.Thread(target=tick, daemon=True)
        self._thread.start()

    def finish(self, index):
        self._stop.set()
        self._thread.join()
        self.done += self.estimates[index]
        self.bar.update(self.done)


def run_suite(suite, mode, out, names_for_command, force=False):
    """Runs one suite (or keeps its finished record) and returns the record."""
    out = pathlib.Path(out)
    folder = out / suite.name
    argv = list(suite.argv[mode])
    module_argv = [*argv, "--output_dir", str(folder)]
    module_command = " ".join(
        ["python", "-m", suite.module, *map(shlex.quote, module_argv)])
    old = _load(out / f"{suite.name}.json")
    if (not force and old and old.get("status") == "ok"
            and old.get("module_command") == module_command):
        # Figures are a function of the stored results: re-derive them, so
        # a changed headline needs no new measurement.
        old["figures"] = suite.headline(old["results"])
        _set_work_minutes(old, suite)
        _write_outputs(old, out)
        return old, True
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "log.txt"
    started = datetime.datetime.now(datetime.timezone.utc)
    start = time.perf_counter()
    load_start = os.getloadavg()[0]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join(
                   [str(REPO)] + [p for p in os.environ.get(
                       "PYTHONPATH", "").split(os.pathsep) if p]))
    with open(log_path, "w") as log:
        log.write(f"$ {module_command}\n")
        log.flush()
        process = subprocess.run(
            [sys.executable, "-m", suite.module, *module_argv], cwd=REPO,
            env=env, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    record = {
        "format": RECORD_FORMAT,
        "suite": suite.name,
        "title": suite.title,
        "kind": suite.kind,
        "mode": mode,
        "status": "ok",
        "command": command_line(names_for_command, mode, out),
        "module_command": module_command,
        "cut": suite.cut.get(mode, ""),
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "machine": dict(machine(), load_average_start=round(load_start, 2)),
        "versions": versions(),
        "figures": [],
        "results": {},
        "report": f"{suite.name}.md",
        "plots": [],
        "log": str(log_path.relative_to(out)),
    }
    try:
        if process.returncode != 0:
            text = log_path.read_text(errors="replace")
            # The cause first: the console prints the error's first line.
            raise RuntimeError(
                f"exit code {process.returncode}: {failure_cause(text)}\n"
                f"last lines of {log_path}:\n"
                + "".join(text.splitlines(True)[-15:]))
        results = suites_lib.read_results(suite, folder)
        record["results"] = results
        record["figures"] = suite.headline(results)
        _set_work_minutes(record, suite)
    except Exception as error:  # noqa: BLE001 - recorded, run goes on
        record["status"] = "failed"
        record["error"] = f"{type(error).__name__}: {error}"
    _write_outputs(record, out)
    return record, False


def _set_work_minutes(record, suite):
    """Records the minutes of the work the results hold, when the module
    reused stored work (more than this run's own duration)."""
    record.pop("work_minutes", None)
    minutes = suite.work_minutes and suite.work_minutes(record["results"])
    if minutes and minutes > record["seconds"] / 60 + 1:
        record["work_minutes"] = round(minutes, 2)


def duration(record):
    """This run's minutes, and those of the stored work it resumed."""
    text = f"{record['seconds'] / 60:.1f} min"
    if record.get("work_minutes"):
        text += (f" (resumed stored work: {record['work_minutes']:.0f} min "
                 "in all)")
    return text


# A Python exception line: "ValueError: ...", "tf.errors.NotFoundError: ..."
_EXCEPTION_LINE = re.compile(
    r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)|"
    r"KeyboardInterrupt)\b(:|$)")


def failure_cause(log_text):
    """The line of a failed module's log that says why it failed.

    The last exception line of the log (a traceback ends with it), else its
    last non-empty line (e.g. the message of `sys.exit("...")`), which
    native libraries' shutdown chatter may follow, so exception lines win.
    """
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line):
            return line
    return lines[-1] if lines else "(the log is empty)"


def _write_outputs(record, out):
    """Chart, record and report of one suite (the record is checked first)."""
    name = record["suite"]
    record["plots"] = sorted(
        str(p.relative_to(out)) for p in (out / name).glob("*.png"))
    chart = plot_figures(record, out / f"{name}.png")
    if chart:
        record["plots"].insert(0, chart.name)
    validate(record)
    write_atomic(out / f"{name}.json", json.dumps(record, indent=1))
    write_atomic(out / f"{name}.md", markdown(record, out))


def run(names, mode, out, force=False, verbose=1):
    """Runs the suites `names` ("all" or comma-separated) in `mode`.

    Returns the list of records; failed suites are recorded and the others
    still run.
    """
    if mode not in suites_lib.MODES:
        raise ValueError(f"mode must be one of {suites_lib.MODES}; got "
                         f"{mode!r}.")
    plan = suites_lib.get(names)
    missing = [s.name for s in plan if mode not in s.argv]
    if missing:
        raise ValueError(
            f"Suite(s) {missing} have no {mode} setting (modes: " + "; ".join(
                f"{s.name}: {'/'.join(s.modes())}" for s in plan
                if s.name in missing) + ").")
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    progress = _Progress(plan, mode, verbose)
    records = []
    for index, suite in enumerate(plan):
        _say(verbose, f"[{index + 1}/{len(plan)}] {suite.name}: "
                      f"{suite.title} (~{suite.minutes[mode]:g} min)")
        progress.start(index, suite.name)
        try:
            record, kept = run_suite(suite, mode, out, names, force)
        finally:
            progress.finish(index)
        status = "kept from an earlier run" if kept else record["status"]
        _say(verbose, f"    {suite.name}: {status}, "
                      f"{record['seconds'] / 60:.1f} min"
             + (f" - {record['error'].splitlines()[0]}"
                if record["status"] == "failed" else ""))
        records.append(record)
    return records


def _say(verbose, text):
    if verbose:
        print(f"\n{text}", flush=True)


# --------------------------------------------------------------- reports
def _number(value, unit):
    if unit == "accuracy":
        return f"{100 * value:.2f}%"
    if unit == "points":
        return f"{value:+.2f}"
    if unit in ("abs",):
        return f"{value:.2g}"
    if unit in ("models",):
        return f"{value:g}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}" if unit != "ratio" else f"{value:.3f}"


def figures_table(figures, limit=None):
    """The headline figures as a Markdown table."""
    lines = ["| Figure | Value | p10 – p90 (n) | Unit | Goal |",
             "|---|---|---|---|---|"]
    for figure in figures[:limit]:
        spread = (f"{_number(figure['p10'], figure['unit'])} – "
                  f"{_number(figure['p90'], figure['unit'])} "
                  f"({figure['n']})" if "p10" in figure else "")
        unit = "" if figure["unit"] == "accuracy" else figure["unit"]
        name = figure["name"].replace("|", "\\|")
        lines.append(f"| {name} | "
                     f"{_number(figure['value'], figure['unit'])} | {spread}"
                     f" | {unit} | {figure.get('goal', '')} |")
    if limit is not None and len(figures) > limit:
        lines.append(f"| ... {len(figures) - limit} more in the suite's "
                     "report | | | | |")
    return "\n".join(lines)


def provenance(record):
    """One line: command, machine, date, duration, what was cut."""
    m = record["machine"]
    line = (f"`{record['command']}` · {m['cpus']} CPUs, {m['processor']}, "
            f"load {m.get('load_average_start', '?')} at start · "
            f"{record['started'][:16].replace('T', ' ')} UTC · "
            f"{duration(record)} · TF "
            f"{record['versions'].get('tensorflow')}, Keras "
            f"{record['versions'].get('keras')}")
    if record.get("cut"):
        line += f" · cut to fit: {record['cut']}"
    return line


def markdown(record, out):
    """The suite's Markdown report."""
    out = pathlib.Path(out)
    lines = [f"# {record['suite']}: {record['title']}", "",
             provenance(record), "",
             f"Module: `{record['module_command']}`", ""]
    if record["status"] != "ok":
        lines += ["**Failed:**", "", "```", record.get("error", ""), "```",
                  ""]
    else:
        lines += [figures_table(record["figures"]), ""]
    for plot in record["plots"]:
        lines += [f"![{pathlib.Path(plot).stem}]({plot})", ""]
    folder = out / record["suite"]
    for own in sorted(folder.glob("*.md")):
        lines += [f"## The module's report (`{own.relative_to(out)}`)", "",
                  own.read_text().strip(), ""]
    return "\n".join(lines) + "\n"


def plot_figures(record, path):
    """Bar chart of the ratio / accuracy figures; None when there are none."""
    chosen = [f for f in record["figures"]
              if f["unit"] in ("ratio", "accuracy")]
    if not chosen:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.32 * len(chosen) + 1.2))
    y = range(len(chosen))
    values = [f["value"] for f in chosen]
    errors = [[f["value"] - f.get("p10", f["value"]) for f in chosen],
              [f.get("p90", f["value"]) - f["value"] for f in chosen]]
    ax.barh(list(y), values, xerr=errors, color="#4c72b0", capsize=2)
    ax.set_yticks(list(y), [f["name"][:70] for f in chosen], fontsize=7)
    ax.invert_yaxis()
    if any(f["unit"] == "ratio" for f in chosen):
        ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel("ratio (median, p10-p90)" if chosen[0]["unit"] == "ratio"
                  else "hold-out accuracy")
    ax.set_title(f"{record['suite']} ({record['mode']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return pathlib.Path(path)
