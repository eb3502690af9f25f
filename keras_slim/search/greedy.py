"""AutoSlim: a greedy one-shot search of per-layer channel counts.

(Named `greedy` so that `keras_slim.search.autoslim` is the function.)
"""

import hashlib
import json
import math
import os
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_slim import graph as graph_lib
from keras_slim.model import SlimmableModel
from keras_slim.search import configs as configs_lib
from keras_slim.search.cost import CostModel
from keras_slim.search.cost import fingerprint
from keras_slim.search.runner import Runner
from keras_slim.search.runner import search_arrays

METRICS = ("macs", "params", "latency")
SCREEN_SCORES = ("log_likelihood", "accuracy")
# The key of each metric in a result's configuration entries.
_ENTRY_KEY = {"macs": "macs", "params": "params", "latency": "latency_ms"}


def _human(value, metric):
    if metric == "latency":
        return f"{value:.3g}ms"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if value >= scale:
            return f"{value / scale:.4g}{suffix}"
    return f"{value:.4g}"


def _round_to(value, divisor):
    return max(divisor, int(round(value / divisor)) * divisor)


class _Search:
    """The search space: groups, bins, reachable costs.

    `min_width`: no group narrows below its channel count at this uniform
    width (None: the group's own minimum, down to one divisor).
    """

    def __init__(self, model, metric, bins, latency, min_width=None):
        self.model = model
        self.costs = CostModel(model)
        plan = model.channel_plan
        floors = np.asarray(plan.minimums, "int64")
        if min_width is not None:
            floors = np.maximum(floors, plan.counts(min_width))
        named = set(model._group_of_layer.values())
        self.groups = [
            g for g in plan.independent_groups
            if g in self.costs.cuts and g in named
            and floors[plan.index[g]] < plan.full[plan.index[g]]
        ]
        if not self.groups:
            floor_text = ("" if min_width is None else
                          f" or already at its count at min_width={min_width:g}")
            raise ValueError(
                f"Model '{model.name}' has no slimmable channel group to "
                "search (every group is fixed, derived from another or has "
                f"its minimum channel count already{floor_text}). Make it "
                "with keras_slim.slim(model, width_range=(low, high))."
            )
        self.metric = metric
        self.latency = latency
        self.minimum, self.step_size = {}, {}
        for g in self.groups:
            i = plan.index[g]
            divisor = int(plan.divisors[i])
            self.minimum[g] = int(floors[i])
            # One bin: 1/bins of the group, in whole multiples of its divisor.
            self.step_size[g] = _round_to(plan.full[i] / bins, divisor)

    def counts(self, chosen):
        """Counts of every group from the searched groups' counts."""
        return self.model.channel_plan.counts_for_groups(chosen)

    def cost(self, counts):
        priced = self.costs.cost(counts)
        if self.latency is not None:
            priced["latency"] = self.latency.predict(self.costs, counts)
        return priced

    def narrower(self, chosen, group):
        count = chosen[group]
        if count <= self.minimum[group]:
            return None
        return max(self.minimum[group], count - self.step_size[group])


def _weights_hash(model, x, labels):
    digest = hashlib.sha1()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(
            keras.ops.convert_to_numpy(weight)).tobytes())
    digest.update(np.ascontiguousarray(x).tobytes())
    digest.update(np.ascontiguousarray(labels).tobytes())
    return digest.hexdigest()[:16]


def _uniform_width(space, value):
    """The widest uniform width whose metric cost is at most `value`."""
    model = space.model
    low, high = model.width_range
    plan = model.channel_plan
    if space.cost(plan.counts(low).tolist())[space.metric] > value:
        return low
    for _ in range(40):
        mid = (low + high) / 2
        if space.cost(plan.counts(mid).tolist())[space.metric] <= value:
            low = mid
        else:
            high = mid
    # Floor, not round: rounding up could cross to the next channel count.
    return math.floor(low * 1e4) / 1e4


def autoslim(
    model,
    search_data,
    targets,
    metric="macs",
    bins=12,
    num_images=1024,
    names=None,
    output_path=None,
    progress_path=None,
    latency_table=None,
    max_steps=None,
    seed=0,
    verbose=1,
    min_width=None,
    screen_images=None,
    finalists=3,
    picks_per_step=1,
    screen_by="accuracy",
):
    """Searches per-layer channel counts for resource targets (AutoSlim).

    Starts from the full (max-width) network. At every step each searchable
    channel group (layers tied by `Add` / `Concatenate` / squeeze-excitation
    move together; depthwise layers and derived groups follow their
    producer; the input and the classifier's outputs never change) is
    narrowed by one bin (`full / bins` channels rounded to its divisor,
    never below the group's count at `min_width`), every such candidate is
    scored on the fixed search set, and the best one is kept: highest
    accuracy, then the lowest cost, then the group order. Whenever the cost
    first drops to or below a target (largest first) that configuration is
    recorded; the search stops below the smallest target. No training
    happens inside.

    Candidates are scored with exact BatchNormalization statistics: the
    whole search set runs as one batch and every BN layer normalises with
    that batch's statistics of the candidate's own activations, which is
    what `keras_slim.calibrate_bn` followed by `evaluate` computes on the
    same images. A sub-network's BN statistics differ from the full
    width's, so scoring with the supernet's moving statistics would rank
    candidates by how closely they match the full width instead of by
    their accuracy.

    Each candidate shares every layer before the first one its group
    affects with the current network: those tensors are computed once per
    step and only each candidate's suffix runs (see
    `keras_slim.search.runner`). The result's "stats" report the saved
    work.

    Screening (`screen_images`): every candidate is first scored on a fixed
    subset of `screen_images` images of the search set (seeded by `seed`;
    exact BN on that subset), ranked by accuracy on that subset (the mean
    log-probability of the true class breaking ties; see `screen_by`), and
    only the `finalists` best are scored on the whole search set, where the
    usual rule picks among them. A step then costs about
    `screen_images / num_images` of an exhaustive step plus the finalists'
    share; it picks what the exhaustive step picks whenever the exhaustive
    winner is among the finalists (the rule and the scores of the
    finalists are the exhaustive ones). `benchmarks/autoslim_fidelity.py`
    measures how often that holds.

    Several picks per step (`picks_per_step`): far from the next target,
    the step also narrows the runners-up of its ranking (distinct groups),
    assuming that what ranks second now would rank first after the best is
    narrowed; the step count drops by up to that factor. Targets are still
    crossed by single-pick steps.

    Args:
        model: A `keras_slim.SlimmableModel` (e.g. a 1.5x supernet trained
            with the sandwich rule).
        search_data: `(x, y)` numpy arrays or a `tf.data.Dataset` of
            `(x, y)` batches (held-out training images, no augmentation);
            labels are class indices in `[0, num_classes)` or one-hot rows.
            Images must have the model's input shape. A dataset is read
            in order up to `num_images` images (its first images: shuffle
            it once with a fixed seed and `reshuffle_each_iteration=False`,
            or a dataset sorted by class gives a search set of a few
            classes and one that reshuffles gives another search set at
            every call, which no progress file can resume); one of
            infinite or unknown size is refused if it repeats an image
            before that.
        targets: Resource targets in `metric` units (MACs, parameters, or
            milliseconds), each within the reachable range.
        metric: "macs", "params" or "latency" (needs `latency_table`).
        bins: Channels removed per step: 1/bins of a group.
        num_images: Search-set size (an integer >= 1); larger `(x, y)`
            arrays are subsampled with `seed`; None uses all of it.
        names: Names of the configurations, aligned with `targets`
            (default e.g. "macs_40M").
        output_path: Where to write the JSON result (see `load_configs`).
        progress_path: A JSON file holding the search's progress, written
            after every step; a search started again with the same model,
            data and settings continues from its last finished step.
        latency_table: A `LatencyTable` (see `latency_table`) or a path to
            one, for `metric="latency"` or to report predicted latency.
        max_steps: Stop after this many steps in this call (progress is
            kept; call again to continue). None: run to the end.
        seed: Seed of the search-set subsample and of the screening subset.
        verbose: 0 = silent, 1 = a Keras progress bar, 2 = one line per
            step (for logs); both show the estimated number of steps (the
            remaining cost over the average cost a step has removed) and
            the time left.
        min_width: No group narrows below its channel count at this
            uniform width. None (default): the narrowest width the
            supernet was trained at (`model.width_range[0]`), below which
            its accuracy says little about a sub-network. A lower value is
            allowed, with a warning.
        screen_images: None (default): score every candidate on the whole
            search set (the exhaustive greedy step). A number of images:
            screen every candidate on that many images first (see above).
        finalists: With `screen_images`, how many screened candidates are
            scored on the whole search set.
        picks_per_step: While the next target is far (more than twice what
            these picks remove), narrow the `picks_per_step` best-scored
            candidates (distinct groups) at once and score the result on
            the whole search set (one more pass); near a target, one at a
            time. 1 (default): always one.
        screen_by: With `screen_images`, the screening score: "accuracy"
            (default; the whole-set rule's own score, the mean
            log-probability of the true class breaking ties) or
            "log_likelihood" (that log-probability alone; the earlier
            default, smoother on few images). Measured on two supernets,
            ranking by accuracy first picks the exhaustive step's group
            about twice as often (benchmarks/autoslim_fidelity.py).

    Returns:
        A dict with "configs" (per target, largest first: name, target,
        metric, macs, params, latency_ms, search_accuracy, step, channels
        (layer name -> channels) and "uniform": the widest uniform width
        with at most the same cost (or the model's min width, with
        "within_cost" False) and its search accuracy, and "below_uniform":
        whether that uniform width scores higher, which also warns),
        "history" (one row per step, with "scores": the search-set accuracy
        of every candidate scored on the whole search set and, when
        screening, "screen": every candidate's mean log-likelihood on the
        subset and, with `screen_by="accuracy"`, "screen_accuracy": its
        accuracy there), "range"
        (the reachable costs),
        "finished" and "stats" (seconds per step, the work done / the work
        of scoring every candidate from the input).

    Raises:
        ValueError: for a target outside the reachable range (the message
            gives the range), empty search data, labels outside
            `[0, num_classes)`, an infinite dataset that repeats, a model
            without a slimmable group, an unknown metric or a latency table
            measured on another model.

    Example:

    >>> supernet = keras_slim.slim(base, width_range=(0.35, 1.5))
    >>> ...  # train briefly with the sandwich rule
    >>> result = keras_slim.search.autoslim(
    ...     supernet, (x_held_out, y_held_out), targets=[80e6, 60e6, 40e6],
    ...     output_path="search.json", progress_path="search_progress.json")
    >>> configs = keras_slim.search.load_configs("search.json")
    >>> supernet.set_width(configs["macs_40M"])

    Reference:
        Yu & Huang, AutoSlim: Towards One-Shot Architecture Search for
        Channel Numbers, 2019 (https://arxiv.org/abs/1903.11728).
    """
    if not isinstance(model, SlimmableModel):
        raise ValueError(
            "autoslim() searches a keras_slim.SlimmableModel (made by "
            f"keras_slim.slim or the model zoo); got {type(model).__name__}."
        )
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}; got {metric!r}.")
    if isinstance(bins, bool) or not isinstance(
            bins, (int, np.integer)) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2; got {bins!r}.")
    bins = int(bins)
    for value, label in ((num_images, "num_images"), (max_steps, "max_steps")):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, np.integer))
            or value < 1
        ):
            raise ValueError(
                f"{label} must be an integer >= 1 or None; got {value!r}.")
    min_width = _check_min_width(model, min_width)
    for value, label in ((screen_images, "screen_images"),
                         (finalists, "finalists"),
                         (picks_per_step, "picks_per_step")):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, np.integer))
            or value < 1
        ):
            raise ValueError(
                f"{label} must be a positive integer"
                f"{' or None' if label == 'screen_images' else ''}; got "
                f"{value!r}."
            )
    if screen_by not in SCREEN_SCORES:
        raise ValueError(
            f"screen_by must be one of {SCREEN_SCORES}; got {screen_by!r}.")
    if screen_images is not None and picks_per_step > finalists:
        raise ValueError(
            f"picks_per_step={picks_per_step} needs at least as many "
            f"finalists (scored on the whole search set); got "
            f"finalists={finalists}."
        )
    if isinstance(targets, (int, float, np.integer, np.floating)):
        targets = [targets]
    targets = list(targets)
    if not targets:
        raise ValueError("Pass at least one target.")
    for target in targets:
        if isinstance(target, bool) or not isinstance(
            target, (int, float, np.integer, np.floating)
        ) or not math.isfinite(target):
            raise ValueError(
                f"Targets must be finite numbers in {metric} units; got "
                f"{target!r}."
            )
    if names is not None and len(names) != len(targets):
        raise ValueError(
            f"names has {len(names)} entries for {len(targets)} targets."
        )
    if names is not None and len(set(names)) != len(names):
        raise ValueError(f"names must be distinct; got {names}.")
    # A dataset is read up to num_images; arrays are subsampled with seed.
    is_dataset = isinstance(search_data, tf.data.Dataset)
    x, labels = search_arrays(search_data, num_images if is_dataset else None,
                              num_classes=_num_classes(model))
    if num_images is not None and len(x) > int(num_images):
        order = np.random.default_rng(seed).permutation(len(x))
        chosen = np.sort(order[: int(num_images)])
        x, labels = x[chosen], labels[chosen]
    _check_search_set(model, x, labels, is_dataset)

    latency = None
    if latency_table is not None:
        from keras_slim.search.latency import LatencyTable

        latency = (latency_table if isinstance(latency_table, LatencyTable)
                   else LatencyTable.load(latency_table))
    if metric == "latency" and latency is None:
        raise ValueError(
            'metric="latency" needs latency_table= (a LatencyTable from '
            "keras_slim.search.latency_table, or a path to its JSON file)."
        )
    space = _Search(model, metric, bins, latency, min_width)
    if latency is not None:
        latency.check(model, space.costs.program)

    full_counts = list(model.full_channels)
    full_chosen = {g: full_counts[model.channel_plan.index[g]]
                   for g in space.groups}
    min_counts = space.counts(dict(space.minimum))
    full_cost = space.cost(full_counts)[metric]
    min_cost = space.cost(min_counts)[metric]
    for target in targets:
        if not min_cost <= target <= full_cost:
            raise ValueError(
                f"Target {target:g} ({metric}) is outside the reachable "
                f"range [{min_cost:g}, {full_cost:g}] of this model: the "
                "smallest cost has every searchable group at its count at "
                f"min_width={min_width:g} (the narrowest width the "
                "supernet was trained at, unless you pass min_width), the "
                "largest is the full network."
            )
    order = sorted(range(len(targets)), key=lambda i: -targets[i])
    if names is None:
        names = [f"{metric}_{_human(t, metric)}" for t in targets]
        if len(set(names)) != len(names):
            names = [f"{n}_{i}" for i, n in enumerate(names)]
    plan_targets = [(names[i], float(targets[i])) for i in order]

    # Screening only helps when it leaves candidates out on fewer images.
    screening = (screen_images is not None and int(screen_images) < len(x)
                 and int(finalists) < len(space.groups))
    if screen_images is not None and not screening:
        why = [f"screen_images={screen_images} is not below the {len(x)} "
               "search images"] if int(screen_images) >= len(x) else []
        if int(finalists) >= len(space.groups):
            why.append(f"finalists={finalists} is not below the "
                       f"{len(space.groups)} searchable groups")
        warnings.warn(
            f"Screening is off ({' and '.join(why)}): every candidate is "
            "scored on the whole search set (the exhaustive step).",
            stacklevel=2)
    settings = {
        "fingerprint": fingerprint(model, space.costs.program),
        "weights_and_data": _weights_hash(model, x, labels),
        "metric": metric, "bins": bins, "targets": plan_targets,
        "min_width": min_width,
        "screen": ({"images": int(screen_images), "finalists": int(finalists),
                    "seed": int(seed)} if screening else None),
    }
    if latency is not None:  # (absent: searches without a table)
        settings["latency_table"] = hashlib.sha1(json.dumps(
            latency.to_json(), sort_keys=True).encode()).hexdigest()[:12]
    if picks_per_step > 1:  # (absent: progress files of one pick per step)
        settings["picks_per_step"] = int(picks_per_step)
    if screening and screen_by != "log_likelihood":
        settings["screen"]["by"] = screen_by
    progress = None
    if progress_path is not None and os.path.isfile(progress_path):
        with open(progress_path) as f:
            progress = json.load(f)
        expected = json.loads(json.dumps(settings))
        stored = progress.get("settings") or {}
        if "latency_table" not in stored:  # saved before tables were kept
            expected.pop("latency_table", None)
        if stored != expected:
            differ = _differences(stored, expected)
            hint = ""
            if "weights_and_data" in [name for name, _, _ in differ]:
                hint = (" (The supernet's weights or the search images "
                        "differ: a dataset that reshuffles at every "
                        "iteration gives other images at every call; pass "
                        "arrays or shuffle once with a fixed seed and "
                        "reshuffle_each_iteration=False.)")
            if [name for name, _, _ in differ] == ["screen.by"]:
                # Screened searches saved before screen_by existed.
                hint = (f" To resume it, pass screen_by="
                        f"{stored['screen'].get('by', 'log_likelihood')!r}.")
            raise ValueError(
                f"The progress file '{progress_path}' belongs to another "
                "search (different model, weights, data or settings: "
                + "; ".join(f"{name} stored {a!r}, this call {b!r}"
                            for name, a, b in differ)
                + f").{hint} Delete it or pass another progress_path."
            )
    _check_memory(space.costs.program, len(x))
    runner = Runner(model, space.costs.program, space.costs.cuts, x, labels)
    screener = None
    if screening:
        subset = np.sort(np.random.default_rng(seed).permutation(len(x))[
            : int(screen_images)])
        screener = Runner(model, space.costs.program, space.costs.cuts,
                          x[subset], labels[subset])

    def entry(name, target, chosen, accuracy, step):
        counts = space.counts(chosen)
        priced = space.cost(counts)
        return {
            "name": name, "target": target, "metric": metric,
            "macs": priced["macs"], "params": priced["params"],
            "latency_ms": priced.get("latency"),
            "search_accuracy": accuracy, "step": step,
            "channels": configs_lib.config_from_counts(model, counts),
        }

    if progress is None:
        start = time.perf_counter()
        accuracy = runner.accuracy(full_counts)
        progress = {
            "settings": settings, "recorded": [],
            "history": [{
                "step": 0, "group": None, "chosen": full_chosen,
                "accuracy": accuracy,
                **space.cost(full_counts),
                "seconds": time.perf_counter() - start,
                "work_cached": 0.0, "work_uncached": 0.0,
            }],
        }
    recorded = {e["name"] for e in progress["recorded"]}

    def record(row):
        cost = space.cost(space.counts(row["chosen"]))[metric]
        for name, target in plan_targets:
            if name not in recorded and cost <= target:
                progress["recorded"].append(entry(
                    name, target, row["chosen"], row["accuracy"], row["step"]
                ))
                recorded.add(name)

    def save_progress():
        if progress_path is not None:
            configs_lib.write_json(progress_path, progress)

    def next_target():
        return max(t for name, t in plan_targets if name not in recorded)

    record(progress["history"][-1])
    save_progress()
    smallest = min(t for _, t in plan_targets)
    bar = keras.utils.Progbar(
        _steps_left(progress["history"], metric, smallest),
        verbose=1 if verbose == 1 else 0, unit_name="step",
        stateful_metrics=["accuracy", _BAR_UNIT[metric][0]],
    )
    step_seconds = []
    steps_done = 0
    while len(recorded) < len(plan_targets) and (
        max_steps is None or steps_done < int(max_steps)
    ):
        last = progress["history"][-1]
        chosen = {g: int(c) for g, c in last["chosen"].items()}
        current = space.counts(chosen)
        candidates, picks = [], []
        for g in space.groups:
            count = space.narrower(chosen, g)
            if count is not None:
                picks.append((g, dict(chosen, **{g: count})))
                candidates.append((g, space.counts(picks[-1][1])))
        if not candidates:
            break
        priced = [space.cost(counts) for _, counts in candidates]
        start = time.perf_counter()
        scored, screen, screen_hits = list(range(len(candidates))), None, None
        cached = 0.0
        if screener is not None and len(candidates) > int(finalists):
            _, logits = screener.step(current, candidates, return_logits=True)
            ranked, screen, screen_hits = screen_ranking(
                screener, logits, [c[metric] for c in priced], screen_by)
            scored = sorted(ranked[: int(finalists)])
            cached += _work(space, runner.cuts, current, candidates)[0] * (
                len(screener.labels) / len(runner.labels))
        scores = runner.step(current, [candidates[i] for i in scored])
        by_candidate = dict(zip(scored, scores))
        ranked = sorted(
            scored,
            key=lambda i: (-by_candidate[i], priced[i][metric], i),
        )
        best = ranked[0]
        taken = _far_picks(ranked[: int(picks_per_step)], priced, metric,
                           space.cost(current)[metric], next_target())
        # Work in MACs per image: the current network up to the last cut
        # used, plus each scored candidate's suffix (screening counted at
        # its share of the images), against a full pass per candidate on
        # the whole search set.
        cached += _work(space, runner.cuts, current,
                        [candidates[i] for i in scored])[0]
        uncached = _work(space, runner.cuts, current, candidates)[1]
        new_chosen, accuracy = picks[best][1], by_candidate[best]
        if len(taken) > 1:
            new_chosen = dict(chosen)
            for i in taken:
                new_chosen[picks[i][0]] = picks[i][1][picks[i][0]]
            together = space.counts(new_chosen)
            accuracy = runner.accuracy(together)
            cached += _work(space, runner.cuts, current,
                            [(None, together)], cut=0)[0]
        seconds = time.perf_counter() - start
        row = {
            "step": last["step"] + 1, "group": picks[best][0],
            "chosen": new_chosen, "accuracy": accuracy,
            **space.cost(space.counts(new_chosen)), "seconds": seconds,
            "work_cached": cached, "work_uncached": uncached,
            "scores": {candidates[i][0]: by_candidate[i] for i in scored},
        }
        if len(taken) > 1:
            row["groups"] = [picks[i][0] for i in taken]
        if screen is not None:
            row["screen"] = {g: value
                             for (g, _), value in zip(candidates, screen)}
        if screen_hits is not None:
            row["screen_accuracy"] = {
                g: value for (g, _), value in zip(candidates, screen_hits)}
        progress["history"].append(row)
        record(row)
        save_progress()
        steps_done += 1
        left = _steps_left(progress["history"], metric, smallest)
        if len(recorded) == len(plan_targets):
            left = 0
        bar.target = steps_done + left if left is not None else None
        name, scale = _BAR_UNIT[metric]
        bar.update(steps_done, values=[
            (name, row[metric] / scale), ("accuracy", row["accuracy"])],
            finalize=len(recorded) == len(plan_targets))
        step_seconds.append(seconds)
        if verbose == 2:  # one line per step, for logs
            print(_step_line(
                row, metric, left, step_seconds), flush=True)
    finished = len(recorded) == len(plan_targets)
    if verbose == 1 and steps_done and not finished:
        print()  # the bar stopped before its end (max_steps): end its line
    result = _result(space, runner, progress, plan_targets, finished, metric)
    if output_path is not None:
        configs_lib.save_configs(output_path, result)
    return result


# What the progress bar shows of the cost: name and scale.
_BAR_UNIT = {"macs": ("MMACs", 1e6), "params": ("Mparams", 1e6),
             "latency": ("ms", 1.0)}


def _step_line(row, metric, left, step_seconds):
    """A log line: step, estimated total, cost, accuracy, time left."""
    name, scale = _BAR_UNIT[metric]
    # The first step of a call traces the network: leave it out when
    # there are others.
    recent = step_seconds[1:] or step_seconds
    per_step = sum(recent) / len(recent)
    total = "?" if left is None else str(row["step"] + left)
    remaining = "?" if left is None else _duration(left * per_step)
    return (f"step {row['step']}/~{total} - {row['group']} - "
            f"{row[metric] / scale:.4g} {name} - accuracy "
            f"{row['accuracy']:.4f} - {per_step:.1f} s/step - "
            f"about {remaining} left")


def _duration(seconds):
    """`H:MM:SS`, hours unbounded (a search may take days)."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def screen_ranking(screener, logits, costs, screen_by):
    """Orders screened candidates, best first.

    Args:
        screener: The `Runner` of the screening subset.
        logits: Each candidate's logits on that subset.
        costs: Each candidate's cost (lower breaks ties).
        screen_by: "accuracy" (then the log-likelihood) or
            "log_likelihood".

    Returns:
        `(order, log_likelihoods, accuracies)`; accuracies is None with
        "log_likelihood".
    """
    likelihoods = [screener.log_likelihood(l) for l in logits]
    hits = (None if screen_by == "log_likelihood"
            else [screener.accuracy_of(l) for l in logits])
    return screen_order(likelihoods, costs, hits), likelihoods, hits


def screen_order(likelihoods, costs, accuracies=None):
    """Candidate indices, best first: by `accuracies` when given, then the
    log-likelihoods, then the lower cost, then the index."""
    if accuracies is None:
        return sorted(range(len(likelihoods)),
                      key=lambda i: (-likelihoods[i], costs[i], i))
    return sorted(range(len(likelihoods)), key=lambda i: (
        -accuracies[i], -likelihoods[i], costs[i], i))


def _differences(stored, expected):
    """`(name, stored, expected)` of every differing setting, one level into
    dict settings (e.g. "screen.by")."""
    rows = []
    for key in sorted(set(stored) | set(expected)):
        a, b = stored.get(key), expected.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            rows += [(f"{key}.{k}", a.get(k), b.get(k))
                     for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        else:
            rows.append((key, a, b))
    return rows


def _steps_left(history, metric, smallest_target):
    """Estimated steps until the cost is at most `smallest_target`.

    The remaining cost divided by the average cost one step has removed so
    far (None before the first step: nothing to average yet).
    """
    cost = history[-1][metric]
    if cost <= smallest_target:
        return 0
    steps = len(history) - 1
    if steps == 0:
        return None
    removed = (history[0][metric] - cost) / steps
    if removed <= 0:
        return None
    return int(math.ceil((cost - smallest_target) / removed))


def _check_search_set(model, x, labels, from_dataset):
    """Refuses images of another shape than the model's input; warns about
    a search set too small or too narrow for its accuracy to rank
    candidates."""
    expected = tuple(model.network.inputs[0].shape[1:])
    got = tuple(x.shape[1:])
    if not graph_lib.shapes_match(expected, got):
        hint = ("Resize them as for training (costs are priced at the "
                "model's input size).")
        if len(got) == len(expected) - 1:
            hint = ("One axis is missing: batch a dataset of single "
                    "examples (dataset.batch(256)), or add the channel axis.")
        raise ValueError(
            f"The search images have shape {got}; the model takes "
            f"{expected}. {hint}"
        )
    present = len(np.unique(labels))
    num_classes = _num_classes(model)
    if len(x) < 100 or present < 2:
        warnings.warn(
            f"The search set holds {len(x)} images of {present} "
            f"class(es): its accuracy can hardly tell candidates apart "
            "(about 1,000 held-out training images of every class is "
            "usual).", stacklevel=3)
    elif num_classes and len(x) >= 10 * num_classes and (
            present < 0.9 * num_classes):
        warnings.warn(
            f"The search set holds labels of {present} of the model's "
            f"{num_classes} classes"
            + (" (a dataset is read in order: its first images; shuffle it "
               "once with a fixed seed)" if from_dataset else "")
            + ": the search would keep only what those classes need.",
            stacklevel=3)


def _available_memory():
    """Bytes of memory available to this process now, or None if the
    system does not say (Linux's MemAvailable: free plus reclaimable)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _check_memory(program, num_images):
    """Warns when the search set's activations will not fit in memory.

    A step holds the current network's tensors at a cut while a candidate
    runs from there, about twice one forward pass's peak (measured: 1.85x
    on MobileNetV2 1.5x at 64x64, 512 images), all images at once (exact
    BN statistics need the whole set in one batch).
    """
    needed = 2 * program.peak_bytes_per_image() * int(num_images)
    available = _available_memory()
    if available is not None and needed > 0.8 * available:
        per_image = needed / int(num_images)
        fits = max(1, int(0.8 * available // per_image))
        warnings.warn(
            f"The search holds all {num_images} search images' activations "
            f"at once (exact BN statistics need them in one batch): about "
            f"{needed / 2**30:.1f} GiB, and {available / 2**30:.1f} GiB of "
            f"memory is available. It may be killed for lack of memory; "
            f"num_images={fits} or fewer would fit (smaller images too).",
            stacklevel=3)


def _num_classes(model):
    """Classes of the network's output (its last axis)."""
    shape = model.network.outputs[0].shape
    return int(shape[-1]) if shape[-1] is not None else None


def _check_min_width(model, min_width):
    """The narrowest uniform width a group may reach (a float)."""
    low, high = model.width_range
    if min_width is None:
        return float(low)
    if isinstance(min_width, bool) or not isinstance(
        min_width, (int, float, np.integer, np.floating)
    ) or not math.isfinite(min_width) or not 0 < min_width <= high:
        raise ValueError(
            f"min_width must be a number in (0, {high:g}] (the supernet's "
            f"widest width); got {min_width!r}."
        )
    if min_width < low:
        warnings.warn(
            f"min_width={min_width:g} is below the narrowest width the "
            f"supernet was trained at ({low:g}): its accuracy there says "
            "little about how a sub-network would do once trained, so the "
            "search may prefer groups for the wrong reason.",
            stacklevel=3,
        )
    return float(min_width)


def _far_picks(ranked, priced, metric, cost, target):
    """The candidates (indices, best first) one step narrows at once.

    All of `ranked` while the next target is far: more than twice what
    they remove together away; else only the best.
    """
    removed = sum(cost - priced[i][metric] for i in ranked)
    if len(ranked) > 1 and cost - removed - target > removed:
        return list(ranked)
    return list(ranked[:1])


def _work(space, cuts, current, candidates, cut=None):
    """MACs per image of one step with cached prefixes, and without.

    `cuts`: group -> index of the first call the group affects (`cut`:
    one index for every candidate instead).
    """
    def suffix_macs(counts, cut):
        return sum(macs for row, macs, _ in space.costs.layer_costs(counts)
                   if row["index"] >= cut)

    starts = [cuts[g] if cut is None else cut for g, _ in candidates]
    cached = suffix_macs(current, 0) - suffix_macs(current, max(starts))
    uncached = 0.0
    for (group, counts), cut in zip(candidates, starts):
        cached += suffix_macs(counts, cut)
        uncached += suffix_macs(counts, 0)
    return float(cached), float(uncached)


def _result(space, runner, progress, plan_targets, finished, metric):
    by_name = {e["name"]: e for e in progress["recorded"]}
    configs = []
    for name, _ in plan_targets:
        if name not in by_name:
            continue
        found = dict(by_name[name])
        width = _uniform_width(space, found[_ENTRY_KEY[metric]])
        counts = space.model.channel_plan.counts(width).tolist()
        priced = space.cost(counts)
        found["uniform"] = {
            "width": width, "macs": priced["macs"],
            "params": priced["params"], "latency_ms": priced.get("latency"),
            "search_accuracy": runner.accuracy(counts),
            # False when even the narrowest uniform width costs more.
            "within_cost": priced[metric] <= found[_ENTRY_KEY[metric]],
        }
        uniform = found["uniform"]
        found["below_uniform"] = bool(
            uniform["within_cost"]
            and uniform["search_accuracy"] > found["search_accuracy"])
        configs.append(found)
    below = [c for c in configs if c["below_uniform"]]
    if below:
        # The greedy path only knows its own steps; a configuration that
        # scores below the plain uniform network of no higher cost is
        # not worth retraining, and the user should hear it.
        warnings.warn(
            "AutoSlim found configurations that score below the uniform "
            "width of no higher cost on the search set: " + "; ".join(
                f"'{c['name']}' {c['search_accuracy']:.4f} vs uniform "
                f"width {c['uniform']['width']:g} "
                f"{c['uniform']['search_accuracy']:.4f}" for c in below)
            + ". An undertrained supernet, or noisy picks (screening, "
            "several picks per step), can lead the greedy path there; "
            "train the supernet longer, search exhaustively, or use the "
            "uniform width. Their entries say \"below_uniform\": true.",
            stacklevel=3,
        )
    steps = progress["history"][1:]
    cached = sum(r["work_cached"] for r in steps)
    uncached = sum(r["work_uncached"] for r in steps)
    full_cost = progress["history"][0]
    return {
        "model": space.model.name,
        "fingerprint": progress["settings"]["fingerprint"],
        "metric": metric,
        "bins": progress["settings"]["bins"],
        "num_images": int(len(runner.labels)),
        "range": {"min": space.cost(space.counts(dict(space.minimum)))[metric],
                  "max": full_cost[metric]},
        "finished": finished,
        "targets": [name for name, _ in plan_targets],
        "configs": configs,
        "history": progress["history"],
        "stats": {
            "steps": len(steps),
            "seconds": float(sum(r["seconds"] for r in steps)),
            "seconds_per_step": (
                float(np.mean([r["seconds"] for r in steps])) if steps
                else None),
            "work_ratio": cached / uncached if uncached else None,
        },
    }
