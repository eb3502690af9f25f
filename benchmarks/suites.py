"""The benchmark suites: which script, with which settings, and its figures.

Each suite is one benchmark module of this package run with the settings
of a mode (`smoke`, `quick` or `full`); its own results file is read back
and reduced to headline figures for the reports. No measurement lives
here: the modules measure, this file only chooses their arguments and
picks figures out of what they wrote.

A headline figure is a dict with `name`, `value` and `unit`, and for
measured spreads `p10`, `p90` and `n` (the number of interleaved repeats);
`goal` says what the issue asked for, when it did.
"""

import dataclasses
import json
import pathlib

MODES = ("smoke", "quick", "full")


@dataclasses.dataclass(frozen=True)
class Suite:
    """One benchmark module and its settings per mode.

    Attributes:
        name: The suite's name on the command line.
        title: One line saying what it measures.
        kind: "speed" (ratios measured side by side) or "accuracy".
        module: The benchmark module (`python -m <module>`).
        argv: Arguments per mode (the harness adds `--output_dir`).
        minutes: Expected minutes per mode on 2 idle cores.
        cut: Per mode, what was cut to fit its time budget.
        results: The JSON file the module writes in its output folder.
        headline: `results dict -> list of figures`.
        needs_cifar10: Whether it reads the CIFAR-10 archive.
        work_minutes: `results dict -> minutes` of all the work the
            results hold, or None. A module that resumes stored runs
            (RePr's seeds, AutoSlim's supernet) can finish in seconds;
            its record then says how long the work it reused took.
    """

    name: str
    title: str
    kind: str
    module: str
    argv: dict
    minutes: dict
    cut: dict
    results: str
    headline: object
    needs_cifar10: bool = False
    work_minutes: object = None

    def modes(self):
        return [m for m in MODES if m in self.argv]


def _figure(name, value, unit, goal=None, spread=None):
    row = {"name": name, "value": float(value), "unit": unit}
    if spread is not None:
        row.update(p10=float(spread["p10"]), p90=float(spread["p90"]),
                   n=int(spread["n"]))
    if goal:
        row["goal"] = goal
    return row


def _spread(name, spread, unit="ratio", goal=None):
    return _figure(name, spread["median"], unit, goal, spread)


# ------------------------------------------------------------ headlines
CORE_SECTIONS = {
    "(a) full width: slim vs stock": "train step at full width",
    "(b) sandwich n=4 vs sum of stock steps": "one 4-width step",
    "(d) BN calibration per width vs predict": "BN calibration of a width",
}


def core_speed_headline(report):
    rows = []
    for section, short in CORE_SECTIONS.items():
        for model, measured in report["results"].get(section, {}).items():
            for variant, spread in measured.items():
                if "/" not in variant or "slim_norm_old" in variant:
                    continue  # not a ratio, or an A/B of older code
                rows.append(_spread(f"{short} · {model} · {variant}",
                                    spread))
    for name, trace in report["results"].get("trace", {}).items():
        rows.append(_figure(f"first-epoch overhead · {name}",
                            trace["overhead_s"], "s"))
    return rows


def loop_vs_fit_headline(report):
    rows = [_spread(name, spread)
            for name, spread in report["loop_over_fit"].items()]
    for name, spread in report["input_share_of_step"].items():
        rows.append(_spread(f"input pipeline share of a step ({name})",
                            spread, unit="fraction"))
    return rows


def export_headline(report):
    rows = []
    for resolution, result in report["resolutions"].items():
        for row in result["widths"]:
            where = f"{resolution} px, width {row['width']:g}"
            rows.append(_spread(f"stripped / native TFLite latency · {where}",
                                row["latency_ratio_stripped_vs_native"]))
            rows.append(_spread(f"latency ratio / MACs ratio vs width 1.0 · "
                                f"{where}", row["latency_over_macs_ratio"]))
    return rows


def early_exit_speed_headline(report):
    rows = []
    if "train_step" in report:
        for clock in ("wall", "cpu"):
            rows.append(_spread(
                f"boosted / plain training step ({clock})",
                report["train_step"]["ratio_boosted_over_plain"][clock],
                goal="<= 1.05"))
    if "staged_latency" in report:
        for key, spread in report["staged_latency"][
                "ratio_staged_over_single"].items():
            rows.append(_spread(f"staged / single file, leaving at {key}",
                                spread, goal="<= 1.1"))
        for key, spread in report["staged_latency"][
                "latency_share_over_macs_share_single"].items():
            rows.append(_spread(f"latency ratio / MACs ratio vs the last "
                                f"exit · {key}", spread))
    if "thresholds" in report:
        seconds = report["thresholds"]["seconds"]
        rows.append(_spread("thresholds: the 39-member q^k family",
                            seconds["family"], unit="s", goal="< 1"))
        rows.append(_spread("thresholds: 39 target budgets",
                            seconds["budgets"], unit="s", goal="< 1"))
    return rows


def autoslim_speed_headline(report):
    rows = [_figure("seconds per greedy step (cached prefixes)",
                    sum(report["seconds_per_step"])
                    / max(1, len(report["seconds_per_step"])), "s")]
    if "measured_ratio" in report:
        rows.append(_spread("cached / uncached step",
                            report["measured_ratio"]))
    if "screened_ratio" in report:
        rows.append(_spread(
            f"screened ({report['screen_images']} images, "
            f"{report['finalists']} finalists) / exhaustive step",
            report["screened_ratio"]))
    rows.append(_figure("MAC work ratio (cached / uncached)",
                        report["work_ratio_macs"], "ratio"))
    if "whole_search_minutes_bounds" in report:
        bounds = report["whole_search_minutes_bounds"]
        images = report["images"]
        rows.append(_figure(
            f"exhaustive search at {images} images, fewest-steps path "
            "(projected from the MACs)", bounds["fewest_steps"], "min"))
        rows.append(_figure(
            f"exhaustive search at {images} images, most-steps path "
            "(projected)", bounds["most_steps"], "min"))
    return rows


def autoslim_latency_headline(report):
    return [
        _figure("latency table: mean absolute relative error",
                100 * report["mean_abs_relative_error"], "%"),
        _figure("latency table: max absolute relative error",
                100 * report["max_abs_relative_error"], "%"),
        _figure("time to measure the table", report["table_seconds"], "s"),
    ]


def any_width_headline(report):
    rows = []
    results = report["results"]
    reference = {float(w): a for w, a in
                 results.get("reference", {}).get("accuracy", {}).items()}
    for method, result in results.items():
        accuracy = {float(w): a for w, a in result["accuracy"].items()}
        label = result.get("label", method)
        for width in (min(accuracy), max(accuracy)):
            rows.append(_figure(f"{label} · accuracy at width {width:g}",
                                accuracy[width], "accuracy"))
            if method != "reference" and width in reference:
                rows.append(_figure(
                    f"{label} - trained alone, at width {width:g}",
                    100 * (accuracy[width] - reference[width]), "points"))
        if method != "reference":
            rows.append(_figure(f"{label} · mean accuracy over the range",
                                result["auc"] / 0.75, "accuracy"))
    return rows


def early_exits_headline(report):
    rows = []
    for method, result in report["results"].items():
        for k, point in enumerate(result["anytime"]["1.0"], 1):
            rows.append(_figure(f"{result['label']} · exit {k} accuracy",
                                point["accuracy"], "accuracy"))
    compare = report.get("comparison")
    if compare:
        rows.append(_figure("boosted - plain, mean of the early exits",
                            compare["mean_early_exits_points"], "points",
                            goal=">= 1.0"))
    return rows


def _cycles(results, name):
    """The label's " · N cycles" for a RePr run: presets (and settings)
    run different numbers of cycles, which the figures depend on."""
    for key, result in results.items():
        shares = result.get("config", {}).get("schedule_shares")
        if key.rsplit("@", 1)[0] == name and shares:
            return f" · {shares[2]} cycle{'s' * (shares[2] > 1)}"
    return ""


def repr_headline(report):
    from benchmarks import repr_cifar10

    rows = []
    results = report["results"]
    summary = report.get("summary") or repr_cifar10.summarize(results)
    goals = {"resnet20": ">= -0.5", "convnet": ">= +1.0"}
    for name in repr_cifar10.RUNS:
        row = summary.get(name)
        if row is None:
            continue
        n = len(row["accuracies"])
        label = repr_cifar10.LABELS[name] + _cycles(results, name)
        rows.append(_figure(
            f"{label} (mean of {n} seed{'s' * (n > 1)})", row["mean"],
            "accuracy", spread=_seed_spread(row["accuracies"])))
        if "delta_mean" in row:
            family = name.split("_")[0]
            rows.append(_figure(
                f"{label} - standard (mean of {n} paired seeds)",
                row["delta_mean"], "points",
                goal=goals[family] if name.endswith("_repr") else None,
                spread=_seed_spread(row["delta_points"])))
        if "max_layer_share" in row:
            rows.append(_figure(
                f"{label}: largest share of one layer dropped at once",
                row["max_layer_share"], "share",
                goal="<= 0.5" if name.endswith("_repr") else None))
            rows.append(_figure(
                f"{label}: worst accuracy change 50+ steps after an event",
                row["worst_probe_points"], "points",
                goal=">= -2.0" if name.endswith("_repr") else None))
        if "worst_probe_vs_standard" in row:
            rows.append(_figure(
                f"{label}: the same, minus the standard run's change over "
                "those steps", row["worst_probe_vs_standard"], "points"))
    perf = report.get("performance", {})
    shares = {}
    for run, event in perf.get("events", {}).items():
        shares.setdefault(run.rsplit("@", 1)[0], []).append(
            100 * event["share"])
    for name, values in shares.items():
        rows.append(_figure(
            f"RePr events / training time · {name} (max over seeds)",
            max(values), "%", goal="<= 5" if name.endswith("_repr") else None))
    for family, hold in perf.get("hold", {}).items():
        rows.append(_spread(f"step holding dropped filters / plain step · "
                            f"{family}", hold["ratio"]))
    return rows


def _seed_spread(values):
    """min / max over seeds as the figure's spread (n = seeds)."""
    if len(values) < 2:
        return None
    return {"p10": min(values), "p90": max(values), "n": len(values)}


def autoslim_headline(report):
    rows = []
    retrained = report["retrained"]
    for name, result in retrained.items():
        by_seed = result.get("accuracy_by_seed", {})
        seeds = f", mean of {len(by_seed)} seeds" if len(by_seed) > 1 else ""
        rows.append(_figure(f"{name} ({result['macs'] / 1e6:.1f}M MACs"
                            f"{seeds})", result["accuracy"], "accuracy"))
        target, kind = name.rsplit("/", 1)
        uniform = retrained.get(f"{target}/uniform")
        if kind == "searched" and uniform is not None:
            theirs = uniform.get("accuracy_by_seed", {})
            paired = [100 * (value - theirs[seed])
                      for seed, value in sorted(by_seed.items())
                      if seed in theirs]
            if paired:  # only seeds both kinds trained with
                value = sum(paired) / len(paired)
                suffix = ("" if len(by_seed) == len(theirs) == 1 else
                          f" (mean of {len(paired)} paired seed"
                          f"{'s' if len(paired) > 1 else ''})")
            else:  # records of one seed each
                value = 100 * (result["accuracy"] - uniform["accuracy"])
                suffix = ""
            rows.append(_figure(f"{target}: searched - uniform{suffix}",
                                value, "points", goal=">= 1.0",
                                spread=_seed_spread(paired)))
    stats = report.get("search_stats")
    if stats:
        rows.append(_figure("search seconds per greedy step",
                            stats["seconds_per_step"], "s"))
    if "search_seconds" in report:
        rows.append(_figure("search minutes (its steps, wherever they ran)",
                            report["search_seconds"] / 60, "min"))
    if "total_minutes" in report:
        rows.append(_figure("supernet + search + retraining minutes",
                            report["total_minutes"], "min"))
    rows += _fidelity_rows(report.get("fidelity", {}))
    return rows


def _fidelity_rows(fidelity):
    """Screened search vs the exhaustive one (benchmarks.autoslim_fidelity).

    The exhaustive configurations come from the screened stage's own rows
    or, for targets the exhaustive search reached later, from the hold-out
    stage's (which also scores both on images no search has seen).
    """
    rows = []
    replay = fidelity.get("replay")
    holdout = (fidelity.get("holdout", {}).get("configs")
               # Records before the stage of its own kept it in resample.
               or fidelity.get("resample", {}).get("holdout", []))
    exhaustive = {r["name"]: r for r in holdout if r["search"] == "exhaustive"}
    for key, run in sorted(fidelity.items()):
        if not key.startswith("screened_"):
            continue
        by_accuracy = run.get("screen_by") == "accuracy"
        label = (f"screened ({run['screen_images']} images, "
                 f"{run['finalists']} finalists"
                 + (f", {run['picks_per_step']} picks per step"
                    if run.get("picks_per_step", 1) > 1 else "")
                 + (", accuracy first" if by_accuracy else "") + ")")
        rule = ("accuracy_then_log_likelihood" if by_accuracy
                else "log_likelihood")
        if replay:
            for row in replay["table"]:
                if (row["screen_images"], row["finalists"],
                        row["rule"]) == (run["screen_images"],
                                         run["finalists"], rule):
                    rows.append(_figure(
                        f"{label}: steps picking the exhaustive group "
                        f"({row['steps']} exhaustive states)",
                        100 * row["same_pick"], "%", goal=">= 90"))
        last = run["configs"][-1]
        rows.append(_figure(
            f"{label}: search to {last['name']}, alone (load "
            f"{run['load_average_at_start'][0]:.2f} at start)",
            last["minutes_to_reach"], "min", goal="< 30"))
        mine = {r["name"]: r for r in holdout if r["search"] == key}
        for config in run["configs"]:
            name = config["name"]
            reference = config["exhaustive_search_accuracy"]
            if reference is None and name in exhaustive:
                reference = exhaustive[name]["search_accuracy"]
            if reference is not None:
                rows.append(_figure(
                    f"{label}: {name} search accuracy - exhaustive",
                    100 * (config["search_accuracy"] - reference), "points",
                    goal=">= -0.5"))
            if name in mine and name in exhaustive:
                rows.append(_figure(
                    f"{label}: {name} hold-out accuracy - exhaustive",
                    100 * (mine[name]["holdout_accuracy"]
                           - exhaustive[name]["holdout_accuracy"]),
                    "points", goal=">= -0.5"))
    return rows


def applications_headline(report):
    rows = report["rows"]
    converted = [r for r in rows if r.get("converts")]
    rows_out = [_figure("models converted", len(converted), "models"),
                _figure("models tried", len(rows), "models")]
    if converted:
        rows_out += [
            _figure("max abs difference, width 1.0 vs original",
                    max(r["exact_diff"] for r in converted), "abs"),
            _figure("max abs difference, strip(m, w) vs m at w",
                    max(r["strip_diff"] for r in converted), "abs"),
            _figure("TFLite verified",
                    sum(bool(r.get("tflite_verified")) for r in converted),
                    "models"),
        ]
    return rows_out


# --------------------------------------------------------------- suites
SUITES = {s.name: s for s in [
    Suite(
        "core_speed", "Slim layers vs stock Keras: full-width step, "
        "sandwich step vs the sum of plain steps, BN calibration per width",
        "speed", "benchmarks.core_speed",
        argv={
            "smoke": ["--sections", "calibrate", "--models", "digits_cnn",
                      "--repeats", "2"],
            "quick": ["--repeats", "5", "--warmup", "5",
                      "--warmup_random", "60", "--trace_epochs", "3",
                      "--trace_repeats", "1"],
            "full": ["--repeats", "15"],
        },
        minutes={"smoke": 0.3, "quick": 3.5, "full": 14},
        cut={"quick": "5 interleaved repeats instead of 15, shorter warm-up, "
                      "one fresh model per first-epoch overhead",
             "full": ""},
        results="core_speed.json", headline=core_speed_headline),
    Suite(
        "loop_vs_fit", "The trainers' custom loop vs model.fit, and the "
        "input pipeline's share", "speed", "benchmarks.loop_vs_fit",
        argv={"quick": ["--repeats", "3", "--steps", "40"],
              "full": ["--repeats", "11"]},
        minutes={"quick": 6, "full": 20},
        cut={"quick": "3 repeats instead of 11", "full": ""},
        results="loop_vs_fit.json", headline=loop_vs_fit_headline,
        needs_cifar10=True),
    Suite(
        "export", "TFLite: stripped vs natively built files, latency vs "
        "MACs per width, one multi-signature file", "speed",
        "benchmarks.export_benchmark",
        argv={"quick": ["--resolutions", "32", "--rounds", "3",
                        "--runs", "20"],
              "full": ["--rounds", "7"]},
        minutes={"quick": 3, "full": 15},
        cut={"quick": "32 px only, 3 rounds of 20 runs", "full": ""},
        results="results.json", headline=export_headline),
    Suite(
        "early_exit_speed", "Early exits: boosted vs plain training step, "
        "staged vs single-file latency per exit, threshold search",
        "speed", "benchmarks.early_exit_speed",
        argv={"smoke": ["--skip", "train,latency", "--samples", "500"],
              "quick": ["--repeats", "5", "--rounds", "5", "--images", "30"],
              "full": []},
        minutes={"smoke": 0.3, "quick": 1.5, "full": 4},
        cut={"quick": "5 repeats / rounds, 30 images per round", "full": ""},
        results="results.json", headline=early_exit_speed_headline),
    Suite(
        "autoslim_speed", "AutoSlim greedy step on MobileNetV2 1.5x: "
        "cached prefixes vs every candidate from the input", "speed",
        "benchmarks.autoslim_speed",
        argv={"quick": ["--images", "128", "--max_steps", "1",
                        "--uncached", "2", "--screen_images", "32"],
              "full": ["--images", "1024", "--max_steps", "2",
                       "--uncached", "3", "--screen_images", "128"]},
        minutes={"quick": 3, "full": 32},
        cut={"quick": "128 search images instead of 1,024 (32 screened), "
                      "one timed step, 2 repeats",
             "full": "2 greedy steps timed, not the whole search (the "
                     "autoslim suite runs it)"},
        results="results.json", headline=autoslim_speed_headline),
    Suite(
        "autoslim_latency", "AutoSlim latency table: predicted vs measured "
        "latency of whole networks", "speed", "benchmarks.autoslim_latency",
        argv={"quick": ["--levels", "3", "--random_configs", "3",
                        "--num_runs", "30"],
              "full": ["--levels", "3", "--random_configs", "6",
                       "--num_runs", "30"]},
        minutes={"quick": 3.5, "full": 8},
        cut={"quick": "3 random configurations instead of 6",
             "full": ""},
        results="results.json", headline=autoslim_latency_headline),
    Suite(
        "any_width", "S-Net / US-Net / AWN vs networks trained alone "
        "(LeNet-3C1L, CIFAR-10)", "accuracy",
        "benchmarks.any_width_cifar10",
        argv={"quick": ["--train_per_class", "300", "--val_per_class",
                        "200", "--epochs", "2"],
              "full": []},
        minutes={"quick": 2.5, "full": 80},
        cut={"quick": "3,000 training / 2,000 hold-out images, 2 epochs",
             "full": "6 epochs (the paper trains hundreds)"},
        results="results.json", headline=any_width_headline,
        needs_cifar10=True),
    Suite(
        "early_exits", "Boosted vs plain early exits (ResNet-20, 5 exits, "
        "CIFAR-10)", "accuracy", "benchmarks.early_exit_cifar10",
        argv={"quick": ["--quick", "--methods", "boosted,plain"],
              "full": []},
        minutes={"quick": 3, "full": 100},
        cut={"quick": "5,000 / 2,000 images, 3 epochs, no width x depth row",
             "full": "4 epochs"},
        results="results.json", headline=early_exits_headline,
        needs_cifar10=True),
    Suite(
        "repr", "RePr vs standard training (the paper's ConvNet, "
        "ResNet-20, CIFAR-10): library defaults and the paper's method, "
        "accuracy around each event, RePr's own cost", "accuracy",
        "benchmarks.repr_cifar10",
        argv={"quick": ["--quick", "--seeds", "0", "--perf_repeats", "3"],
              "full": ["--seeds", "0,1,2"]},
        minutes={"quick": 8, "full": 90},
        cut={"quick": "10k / 2k images (ResNet-20: 5k), 10 ConvNet and 5 "
                      "ResNet-20 epochs, one seed",
             "full": "epochs, not seeds: the ConvNet trains 10 epochs (the "
                     "paper: 100) and ResNet-20 3, on all 45k images, 3 "
                     "seeds; RePr's schedule keeps its shares of the run"},
        results="results.json", headline=repr_headline,
        needs_cifar10=True,
        work_minutes=lambda r: r.get("wall_seconds", 0) / 60 or None),
    Suite(
        "autoslim", "AutoSlim searched channels vs uniform width at equal "
        "MACs, retrained from scratch (CIFAR-10)", "accuracy",
        "benchmarks.autoslim_cifar10",
        argv={"quick": ["--quick", "--supernet_epochs", "2",
                        "--retrain_epochs", "2", "--targets", "1.0,0.5"],
              "full": ["--model", "mobilenet_v2", "--width_range",
                       "0.35,1.5", "--targets", "1.25,1.0,0.75",
                       "--supernet_epochs", "5", "--retrain_epochs", "5",
                       "--train_per_class", "1000", "--search_images",
                       "1024", "--bins", "12", "--screen_images", "128",
                       "--finalists", "3", "--picks_per_step", "3",
                       "--screen_by", "log_likelihood"]},
        minutes={"quick": 9, "full": 150},
        cut={"quick": "ResNet-20 supernet, 10k images, 2 epochs, 2 targets",
             "full": "10k training images, supernet 5 epochs, retraining 5 "
                     "epochs (30 in the paper's schedule), one seed (the "
                     "record adds a second: --retrain_seeds 0,1, its note)"},
        results="results.json", headline=autoslim_headline,
        needs_cifar10=True,
        work_minutes=lambda r: r.get("total_minutes")),
    Suite(
        "applications", "slim() on keras.applications: exact at width 1.0, "
        "strip, fit step, TFLite", "accuracy",
        "benchmarks.applications_sweep",
        argv={"quick": ["--models", "MobileNetV3Small,ResNet50,DenseNet121"],
              "full": []},
        minutes={"quick": 1.5, "full": 50},
        cut={"quick": "3 of the 40 models", "full": ""},
        results="applications.json", headline=applications_headline),
]}


def get(names):
    """Suites by comma-separated names or "all"; raises for unknown ones."""
    if names == "all":
        return list(SUITES.values())
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in SUITES]
    if unknown or not chosen:
        raise ValueError(
            f"Unknown suite(s) {unknown or names!r}; choose from "
            f"{', '.join(SUITES)} or 'all'.")
    return [SUITES[n] for n in chosen]


def read_results(suite, folder):
    """The module's own results file in `folder`, as a dict."""
    return json.loads((pathlib.Path(folder) / suite.results).read_text())
