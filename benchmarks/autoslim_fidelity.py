"""AutoSlim screening vs the exhaustive greedy step, on one trained supernet.

Uses the supernet, the search set and the targets of
`benchmarks.autoslim_cifar10` (same arguments), and three stages:

- `--stage exhaustive`: the exhaustive greedy search (every candidate on
  the whole search set), resumable; its history keeps every candidate's
  search accuracy at every step. Hours on 2 cores for MobileNetV2 1.5x:
  run it in the background.
- `--stage replay`: at every state of the exhaustive path, screens the
  candidates on `--screen_images` images (exact BN on that subset) and
  asks whether the screened search would pick the exhaustive step's group
  with `--finalists` finalists (the finalists' whole-set scores are the
  exhaustive ones, so no more evaluation is needed). Reports, per screening
  size, rule and number of finalists, the share of steps that pick the
  same group.
- `--stage resample`: the exhaustive search's own reproducibility. At
  every state of the exhaustive path, scores the candidates on another
  `--search_images` training images (disjoint from the search set) and
  counts the steps where that set's best candidate is the exhaustive
  pick: no search that reads other images (a subset, a cheaper score)
  can be expected to agree more often. Then runs `holdout`.
- `--stage holdout`: scores every configuration found so far (exhaustive
  and screened, at each target) on the 5,000 hold-out images, which no
  search has seen (minutes: one pass per configuration).
- `--stage screened`: runs the whole screened search from scratch (timed;
  run it alone for the speed figure) and compares its configurations'
  search accuracy at every target with the exhaustive ones (those reached
  so far), and whether it found the same configurations as the
  benchmark's own search (`search.json`) of the same settings.

    python -m benchmarks.autoslim_fidelity --stage replay \\
        --output_dir benchmarks/results_full/autoslim

Outputs `fidelity.json` in `--output_dir` (stages add their parts).
"""

import argparse
import json
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from benchmarks import autoslim_cifar10 as bench  # noqa: E402
from benchmarks.common import log  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", required=True,
                        choices=("exhaustive", "replay", "resample",
                                 "holdout", "screened"))
    parser.add_argument("--screen_images", default="64,128,256",
                        help="replay: screening sizes; screened: one size")
    parser.add_argument("--finalists", default="1,2,3,4,6",
                        help="replay: finalist counts; screened: one count")
    parser.add_argument("--picks_per_step", type=int, default=1,
                        help="screened: groups narrowed at once while far "
                        "from the next target")
    parser.add_argument("--screen_by", default="accuracy",
                        choices=("log_likelihood", "accuracy"),
                        help="screened: the screening score (accuracy: "
                        "log-likelihood breaks ties)")
    parser.add_argument("--max_steps", type=int, default=None,
                        help="exhaustive: steps in this call (resumable)")
    parser.add_argument("--fidelity_file", default="fidelity.json")
    parser.add_argument("--exhaustive_targets", default=None,
                        help="exhaustive: uniform widths whose MACs are its "
                        "targets (default the benchmark's --targets)")
    args, rest = parser.parse_known_args(argv)
    bench_args = bench.parse_args(rest)
    return args, bench_args


def load(bench_args, widths=None):
    import keras
    import keras_slim

    out = pathlib.Path(bench_args.output_dir)
    supernet = keras.models.load_model(out / "supernet.keras")
    images, labels, _ = bench.load_cifar10(bench_args.archive,
                                           bench_args.cache_dir)
    (x_train, y_train), _ = bench.split(
        images, labels, bench_args.train_per_class, 500)
    x, y = bench.search_set(x_train, y_train, bench_args)
    widths = widths or bench_args.targets
    targets = [keras_slim.profile(supernet, w)["macs"] for w in widths]
    names = [f"like_{w:g}x" for w in widths]
    return supernet, (x, y), targets, names, out


def _other_images(bench_args):
    """`(other search set, hold-out set)`: as many training images as the
    search set, none of them in it (seeded), and the hold-out split."""
    images, labels, _ = bench.load_cifar10(bench_args.archive,
                                           bench_args.cache_dir)
    (x_train, y_train), (x_val, y_val) = bench.split(
        images, labels, bench_args.train_per_class, 500)
    chosen = bench.search_indices(len(x_train), bench_args)
    rest = np.setdiff1d(np.arange(len(x_train)), chosen)
    other = np.sort(np.random.default_rng(bench_args.seed + 1).choice(
        rest, bench_args.search_images, replace=False))
    return ((bench.normalize(x_train[other]), y_train[other]),
            (bench.normalize(x_val), y_val))


def resample(args, bench_args):
    from keras_slim.search import greedy
    from keras_slim.search.runner import Runner

    supernet, (x, _), _, _, out = load(bench_args)
    (x_other, y_other), _ = _other_images(bench_args)
    history, reference, finished = _reference(out)
    space = greedy._Search(supernet, "macs", bench_args.bins, None,
                           supernet.width_range[0])
    path = out / "resample_raw.json"
    raw = json.loads(path.read_text()) if path.exists() else []
    runner = Runner(supernet, space.costs.program, space.costs.cuts,
                    x_other, y_other)
    start = time.perf_counter()
    for step in range(len(raw) + 1, len(history)):
        chosen = {g: int(c) for g, c in history[step - 1]["chosen"].items()}
        raw.append(runner.step(space.counts(chosen),
                               _candidates(space, chosen)))
        path.write_text(json.dumps(raw))
    log(f"resample: {len(raw)} states ({time.perf_counter() - start:.0f} s "
        "this call)")
    same, losses, gaps = 0, [], []
    for step, scores in enumerate(raw, start=1):
        row = history[step]
        chosen = {g: int(c) for g, c in history[step - 1]["chosen"].items()}
        candidates = _candidates(space, chosen)
        costs = [space.cost(c)["macs"] for _, c in candidates]
        full_scores = [row["scores"][g] for g, _ in candidates]
        # The greedy's own rule (best score, then cheaper, then first).
        pick = candidates[min(range(len(candidates)), key=lambda i: (
            -scores[i], costs[i], i))][0]
        same += pick == row["group"]
        groups = [g for g, _ in candidates]
        losses.append(max(full_scores) - full_scores[groups.index(pick)])
        ranked = sorted(scores, reverse=True)
        gaps.append(round((ranked[0] - ranked[1]) * len(x)) if len(
            ranked) > 1 else None)
    steps = len(raw)
    log(f"another {len(x)} images pick the exhaustive step's group at "
        f"{same}/{steps} steps ({same / max(1, steps):.3f}); search-set "
        f"accuracy lost where they differ: mean "
        f"{100 * np.mean(losses or [0]):.3f}, max "
        f"{100 * np.max(losses or [0]):.2f} points")
    update(out, args, "resample", {
        "images": len(x), "exhaustive_steps": len(history) - 1,
        "exhaustive_finished": finished, "steps": steps,
        "same_pick": same / max(1, steps),
        "accuracy_lost_mean": float(np.mean(losses or [0])),
        "accuracy_lost_max": float(np.max(losses or [0])),
        "best_minus_runner_up_images": gaps})
    holdout(args, bench_args, supernet=supernet)


def holdout(args, bench_args, supernet=None):
    """Every configuration found so far, on images no search has seen."""
    from keras_slim.search import greedy
    from keras_slim.search.runner import Runner

    if supernet is None:
        supernet = load(bench_args)[0]
    out = pathlib.Path(bench_args.output_dir)
    _, (x_val, y_val) = _other_images(bench_args)
    history, reference, finished = _reference(out)
    space = greedy._Search(supernet, "macs", bench_args.bins, None,
                           supernet.width_range[0])
    runner = Runner(supernet, space.costs.program, space.costs.cuts,
                    x_val, y_val)
    found = {"exhaustive": reference}
    for other in sorted(out.glob("screened_*.json")):
        if not other.stem.endswith("_progress"):
            found[other.stem] = json.loads(other.read_text())["configs"]
    rows = []
    for search_name, configs in found.items():
        for config in configs:
            counts = space.counts({g: int(config["channels"][g])
                                   for g in space.groups})
            rows.append({
                "search": search_name, "name": config["name"],
                "macs": config["macs"],
                "search_accuracy": config["search_accuracy"],
                "holdout_accuracy": runner.accuracy(counts),
            })
            log(f"{search_name:20s} {config['name']:10s} "
                f"{config['macs'] / 1e6:7.2f}M search "
                f"{config['search_accuracy']:.4f} hold-out "
                f"{rows[-1]['holdout_accuracy']:.4f}")
    update(out, args, "holdout", {
        "images": len(x_val), "exhaustive_steps": len(history) - 1,
        "exhaustive_finished": finished, "configs": rows})


def exhaustive(args, bench_args):
    from keras_slim import search

    widths = ([float(w) for w in args.exhaustive_targets.split(",")]
              if args.exhaustive_targets else None)
    supernet, data, targets, names, out = load(bench_args, widths)
    start = time.perf_counter()
    result = search.autoslim(
        supernet, data, targets=targets, names=names, bins=bench_args.bins,
        num_images=None, output_path=out / "exhaustive.json",
        progress_path=out / "exhaustive_progress.json",
        max_steps=args.max_steps, verbose=2)
    log(f"exhaustive: {len(result['history']) - 1} steps, finished "
        f"{result['finished']}, this call {time.perf_counter() - start:.0f} s")


def _reference(out):
    """The exhaustive history (finished or not) and its configurations."""
    path = out / "exhaustive.json"
    progress = out / "exhaustive_progress.json"
    if path.exists():
        data = json.loads(path.read_text())
        return data["history"], data["configs"], data["finished"]
    data = json.loads(progress.read_text())
    return data["history"], data["recorded"], False


def _candidates(space, chosen):
    candidates = []
    for group in space.groups:
        count = space.narrower(chosen, group)
        if count is not None:
            candidates.append((group, space.counts(dict(chosen,
                                                        **{group: count}))))
    return candidates


def _pick(candidates, full_scores, order, costs, finalists):
    """The screened step's pick: the `finalists` first of the screening
    `order`, the best of them by whole-set score (then cost, then
    order)."""
    kept = order[:finalists]
    best = min(kept, key=lambda i: (-full_scores[i], costs[i], i))
    return candidates[best][0]


# Screening rules: whether accuracy on the subset ranks first (the
# log-likelihood then breaks ties; `greedy.screen_order`).
RULES = {"log_likelihood": False, "accuracy_then_log_likelihood": True}


def replay(args, bench_args):
    from keras_slim.search import greedy
    from keras_slim.search.runner import Runner

    supernet, (x, y), targets, names, out = load(bench_args)
    history, _, finished = _reference(out)
    space = greedy._Search(supernet, "macs", bench_args.bins, None,
                           supernet.width_range[0])
    sizes = [int(v) for v in args.screen_images.split(",")]
    counts = [int(v) for v in args.finalists.split(",")]
    path = out / "replay_raw.json"
    raw = json.loads(path.read_text()) if path.exists() else {}
    for size in sizes:
        subset = np.sort(np.random.default_rng(bench_args.seed).permutation(
            len(x))[:size])
        runner = None
        steps = raw.setdefault(str(size), [])
        start = time.perf_counter()
        for step in range(len(steps) + 1, len(history)):
            if runner is None:
                runner = Runner(supernet, space.costs.program,
                                space.costs.cuts, x[subset], y[subset])
            row = history[step]
            if "scores" not in row:
                raise ValueError("The exhaustive history has no per-candidate "
                                 "scores (made by an older version).")
            chosen = {g: int(c) for g, c in history[step - 1]["chosen"].items()}
            current = space.counts(chosen)
            candidates = _candidates(space, chosen)
            _, logits = runner.step(current, candidates, return_logits=True)
            steps.append({
                "accuracy": [runner.accuracy_of(l) for l in logits],
                "log_likelihood": [runner.log_likelihood(l) for l in logits],
            })
            path.write_text(json.dumps(raw))
        log(f"replay {size} images: {len(steps)} states "
            f"({time.perf_counter() - start:.0f} s this call)")
    # Agreement with the exhaustive picks.
    table = []
    for size in sizes:
        for rule, by_accuracy in RULES.items():
            for finalists in counts:
                same, work, full_work, losses = 0, 0.0, 0.0, []
                for step, screened in enumerate(raw[str(size)], start=1):
                    row = history[step]
                    chosen = {g: int(c)
                              for g, c in history[step - 1]["chosen"].items()}
                    candidates = _candidates(space, chosen)
                    full_scores = [row["scores"][g] for g, _ in candidates]
                    costs = [space.cost(c)["macs"] for _, c in candidates]
                    order = greedy.screen_order(
                        screened["log_likelihood"], costs,
                        screened["accuracy"] if by_accuracy else None)
                    pick = _pick(candidates, full_scores, order, costs,
                                 finalists)
                    same += pick == row["group"]
                    # What a different pick costs on the search set.
                    groups = [g for g, _ in candidates]
                    losses.append(max(full_scores)
                                  - full_scores[groups.index(pick)])
                    # Work of the screened step (MACs per search image).
                    current = space.counts(chosen)
                    everything = greedy._work(space, space.costs.cuts,
                                              current, candidates)[0]
                    kept = [candidates[i] for i in sorted(order[:finalists])]
                    work += everything * size / len(x) + greedy._work(
                        space, space.costs.cuts, current, kept)[0]
                    full_work += everything
                steps = len(raw[str(size)])
                table.append({
                    "screen_images": size, "rule": rule,
                    "finalists": finalists, "steps": steps,
                    "same_pick": same / max(1, steps),
                    # Search-set accuracy of the exhaustive pick minus that
                    # of the screened pick, at the same state.
                    "accuracy_lost_mean": float(np.mean(losses or [0])),
                    "accuracy_lost_max": float(np.max(losses or [0])),
                    "work_vs_exhaustive": work / max(full_work, 1e-9),
                })
                log(f"{size:4d} images, {rule:30s} {finalists} finalists: "
                    f"same pick {same}/{steps} = {same / max(1, steps):.3f}, "
                    f"accuracy lost mean {100 * np.mean(losses or [0]):.3f} "
                    f"max {100 * np.max(losses or [0]):.2f} points, "
                    f"work {work / max(full_work, 1e-9):.3f} of exhaustive")
    # Several picks per step assume the runner-up of step t is what step
    # t+1 picks; the exhaustive path says how often that holds, and how
    # far apart the best and the runner-up are (in search images).
    runner_up, gaps = [], []
    for step in range(1, len(history) - 1):
        ranked = sorted(history[step]["scores"].items(),
                        key=lambda t: -t[1])
        gaps.append(round((ranked[0][1] - ranked[1][1]) * len(x)))
        runner_up.append(history[step + 1]["group"] == ranked[1][0])
    log(f"runner-up of step t picked at step t+1: {sum(runner_up)}/"
        f"{len(runner_up)}; best - runner-up: median {np.median(gaps or [0])}"
        f" images of {len(x)} (0 = tie broken by cost)")
    update(out, args, "replay", {
        "exhaustive_steps": len(history) - 1,
        "exhaustive_finished": finished, "table": table,
        "runner_up_picked_next": (sum(runner_up) / len(runner_up)
                                  if runner_up else None),
        "best_minus_runner_up_images": gaps})


def screened(args, bench_args):
    import os as _os

    from keras_slim import search

    supernet, data, targets, names, out = load(bench_args)
    size = int(args.screen_images.split(",")[0])
    finalists = int(args.finalists.split(",")[0])
    picks = args.picks_per_step
    # The rule only matters when something is screened.
    screen_by = args.screen_by if size else None
    stem = (f"screened_{size}_{finalists}" + (f"_{picks}" if picks > 1 else "")
            + ("_acc" if screen_by == "accuracy" else ""))
    progress = out / f"{stem}_progress.json"
    if progress.exists():
        progress.unlink()  # a timed run starts from scratch
    load_average = _os.getloadavg()
    start = time.perf_counter()
    result = search.autoslim(
        supernet, data, targets=targets, names=names, bins=bench_args.bins,
        num_images=None, screen_images=size or None, finalists=finalists,
        picks_per_step=picks, screen_by=args.screen_by,
        output_path=out / f"{stem}.json",
        progress_path=progress, verbose=2)
    seconds = time.perf_counter() - start
    history, reference, finished = _reference(out)
    by_name = {c["name"]: c for c in reference}
    rows = []
    for config in result["configs"]:
        exhaustive_config = by_name.get(config["name"])
        rows.append({
            "name": config["name"], "macs": config["macs"],
            "search_accuracy": config["search_accuracy"],
            "step": config["step"],
            "exhaustive_macs": (exhaustive_config or {}).get("macs"),
            "exhaustive_search_accuracy": (
                (exhaustive_config or {}).get("search_accuracy")),
            "exhaustive_step": (exhaustive_config or {}).get("step"),
            "same_channels": (exhaustive_config is not None
                              and exhaustive_config["channels"]
                              == config["channels"]),
        })
        log(f"{config['name']}: screened {config['search_accuracy']:.4f} at "
            f"{config['macs'] / 1e6:.2f}M (step {config['step']}), "
            f"exhaustive {rows[-1]['exhaustive_search_accuracy']} at step "
            f"{rows[-1]['exhaustive_step']}")
    path = result["history"][1:]
    # Time to reach each target: the first evaluation plus the steps up to
    # the one that recorded it.
    for row in rows:
        row["minutes_to_reach"] = (result["history"][0]["seconds"] + sum(
            r["seconds"] for r in path[: row["step"]])) / 60
        log(f"{row['name']} reached after {row['minutes_to_reach']:.1f} min")
    benchmark = out / "search.json"
    same_as_benchmark = None
    settings = [json.loads(path.read_text())["settings"]
                for path in (progress, out / "search_progress.json")
                if path.exists()]
    if (benchmark.exists() and len(settings) == 2
            and settings[0] == settings[1]):
        # Another process, same settings: determinism across runs.
        theirs = json.loads(benchmark.read_text())
        same_as_benchmark = [c["channels"] for c in theirs["configs"]] == [
            c["channels"] for c in result["configs"]]
        log(f"same configurations as the benchmark's search: "
            f"{same_as_benchmark}")
    common = 0
    for mine, theirs in zip(path, history[1:]):
        if mine["group"] != theirs["group"]:
            break
        common += 1
    log(f"screened search: {seconds / 60:.1f} min, {len(path)} steps, load "
        f"at start {load_average}; same path as exhaustive for the first "
        f"{common} steps")
    update(out, args, stem, {
        "screen_images": size, "finalists": finalists,
        "picks_per_step": picks, "screen_by": screen_by,
        "minutes": seconds / 60, "steps": len(path),
        "load_average_at_start": list(load_average),
        "seconds_per_step": result["stats"]["seconds_per_step"],
        "work_ratio": result["stats"]["work_ratio"],
        "steps_on_the_exhaustive_path": common,
        "same_configs_as_the_benchmark_search": same_as_benchmark,
        "exhaustive_finished": finished,
        "configs": rows,
    })


def update(out, args, key, value):
    path = out / args.fidelity_file
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    path.write_text(json.dumps(data, indent=1))


def main(argv=None):
    args, bench_args = parse_args(argv)
    {"exhaustive": exhaustive, "replay": replay, "resample": resample,
     "holdout": holdout, "screened": screened}[args.stage](args, bench_args)


if __name__ == "__main__":
    main()
