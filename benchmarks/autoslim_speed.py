"""AutoSlim search speed: zoo MobileNetV2 (CIFAR), 1.5x supernet, 1,024 images.

Untrained weights are fine for speed (the work per step does not depend on
them). Runs `--max_steps` greedy steps of `keras_slim.search.autoslim` with
cached prefixes and reports seconds per step, then times the same step
without reuse (every candidate from the input) and reports the measured
ratio, the MAC-count work ratio, and how many steps the three MAC targets
need at most and at least (a cost-only walk that always removes the
smallest / largest MAC bin), to bound the total search time. With
`--screen_images`, also times a screened step (every candidate on that many
images, the `--finalists` best on all of them) against the exhaustive one,
interleaved.

    python -m benchmarks.autoslim_speed --max_steps 2 --screen_images 128 \
        --output_dir autoslim_speed_results

`--max_steps 0` runs the whole search to the smallest target.
"""

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
import keras_slim  # noqa: E402
from keras_slim.search import greedy as autoslim_lib  # noqa: E402


def cost_only_steps(space, targets, pick):
    """Greedy steps to reach min(targets) when `pick` chooses by MACs.

    Returns the step at which each target is reached and the MACs per
    search image that the search's steps along that path compute with
    cached prefixes (what `autoslim` reports as "work_cached").
    """
    chosen = {g: int(space.model.full_channels[
        space.model.channel_plan.index[g]]) for g in space.groups}
    steps, work = 0, 0.0
    reached = {}
    while True:
        current = space.counts(chosen)
        macs = space.cost(current)["macs"]
        for target in targets:
            if macs <= target and target not in reached:
                reached[target] = steps
        if macs <= min(targets):
            return reached, work
        options, candidates = [], []
        for g in space.groups:
            count = space.narrower(chosen, g)
            if count is not None:
                trial = dict(chosen, **{g: count})
                candidates.append((g, space.counts(trial)))
                options.append((space.cost(candidates[-1][1])["macs"], g,
                                trial))
        work += autoslim_lib._work(space, space.costs.cuts, current,
                                  candidates)[0]
        chosen = pick(options)[2]
        steps += 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--max_width", type=float, default=1.5)
    parser.add_argument("--targets", default="1.25,1.0,0.75",
                        help="uniform widths whose MACs are the targets")
    parser.add_argument("--bins", type=int, default=12)
    parser.add_argument("--max_steps", type=int, default=2,
                        help="greedy steps to time (0 = the whole search)")
    parser.add_argument("--uncached", type=int, default=1,
                        help="interleaved repeats of one step with and "
                        "without prefix reuse (0 = skip)")
    parser.add_argument("--screen_images", type=int, default=128,
                        help="also time a screened step (0 = skip)")
    parser.add_argument("--finalists", type=int, default=3)
    parser.add_argument("--output_dir", default="autoslim_speed_results")
    args = parser.parse_args(argv)

    model = keras_slim.models.mobilenet_v2(width_range=(0.35, args.max_width))
    rng = np.random.default_rng(0)
    x = rng.random((args.images, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, args.images)
    widths = [float(w) for w in args.targets.split(",")]
    targets = [keras_slim.profile(model, w)["macs"] for w in widths]
    common.log(f"targets (MACs of uniform widths {widths}): {targets}")

    start = time.perf_counter()
    # The search never narrows a group below the supernet's narrowest
    # trained width (autoslim's default min_width).
    space = autoslim_lib._Search(model, "macs", args.bins, None,
                                 model.width_range[0])
    setup = time.perf_counter() - start
    most, most_work = cost_only_steps(
        space, targets, lambda o: max(o, key=lambda t: t[0]))
    fewest, fewest_work = cost_only_steps(
        space, targets, lambda o: min(o, key=lambda t: t[0]))
    common.log(f"cost model {setup:.1f} s; {len(space.groups)} groups; steps "
               f"to the targets: {fewest} (largest bins) .. {most} "
               "(smallest bins)")

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        result = keras_slim.search.autoslim(
            model, (x, y), targets=targets, bins=args.bins,
            num_images=args.images, max_steps=args.max_steps or None,
            progress_path=os.path.join(folder, "progress.json"), verbose=1)
        total = time.perf_counter() - start
    steps = result["history"][1:]
    common.log(f"search call {total:.1f} s for {len(steps)} steps; "
               f"s/step {[round(r['seconds'], 1) for r in steps]}; MAC work "
               f"ratio {result['stats']['work_ratio']:.3f}")
    report = {
        "images": args.images, "max_width": args.max_width,
        "groups": len(space.groups), "targets": targets,
        "target_widths": widths, "bins": args.bins,
        "cost_model_seconds": setup,
        "steps_to_targets_bounds": {"fewest": fewest, "most": most},
        "search_call_seconds": total,
        "seconds_per_step": [r["seconds"] for r in steps],
        "work_ratio_macs": result["stats"]["work_ratio"],
        "finished": result["finished"],
    }
    # The whole search's time from the MACs it must compute: each step's
    # cached work (MACs per image, from the cost model) times the images,
    # at the MAC rate the timed steps reached. The greedy path depends on
    # the scores, so the two cost-only paths bound it.
    rate = (sum(r["work_cached"] for r in steps) * args.images
            / sum(r["seconds"] for r in steps)) if steps else None
    if rate:
        report["measured_macs_per_second"] = rate
        report["whole_search_minutes_bounds"] = {
            "fewest_steps": fewest_work * args.images / rate / 60,
            "most_steps": most_work * args.images / rate / 60,
        }
        common.log(
            f"{rate / 1e9:.1f} GMAC/s; the whole search at this rate: "
            f"{report['whole_search_minutes_bounds']['fewest_steps']:.0f} to "
            f"{report['whole_search_minutes_bounds']['most_steps']:.0f} min")
    if args.uncached:
        runner = keras_slim.search.runner.Runner(
            model, space.costs.program, space.costs.cuts,
            x, y)
        chosen = {g: int(c) for g, c in result["history"][-1]["chosen"].items()}
        current = space.counts(chosen)
        candidates = []
        for g in space.groups:
            count = space.narrower(chosen, g)
            if count is not None:
                candidates.append((g, space.counts(dict(chosen, **{g: count}))))
        runner.step(current, candidates[:1])  # trace the segments
        cached, uncached = [], []
        for repeat in range(args.uncached):
            # Interleaved, alternating order: load changes hit both alike.
            order = ("cached", "uncached")[::1 if repeat % 2 == 0 else -1]
            for kind in order:
                start = time.perf_counter()
                if kind == "cached":
                    cached_scores = runner.step(current, candidates)
                    cached.append(time.perf_counter() - start)
                else:
                    scratch = [runner.accuracy(counts)
                               for _, counts in candidates]
                    uncached.append(time.perf_counter() - start)
            assert scratch == cached_scores, "reuse changed a score"
        ratio = common.spread(np.asarray(cached) / np.asarray(uncached))
        common.log(f"one step: cached {np.median(cached):.1f} s, uncached "
                   f"{np.median(uncached):.1f} s, measured ratio "
                   f"{ratio['median']:.3f}")
        report.update(step_cached_seconds=common.spread(cached),
                      step_uncached_seconds=common.spread(uncached),
                      measured_ratio=ratio)
    if args.uncached and args.screen_images and args.screen_images < len(x):
        # One screened step (every candidate on screen_images images, the
        # finalists on all) against the exhaustive step, same state,
        # interleaved. Untrained weights: which candidates are finalists
        # is arbitrary here, so this is a typical step, not the trained
        # supernet's.
        subset = np.sort(np.random.default_rng(0).permutation(len(x))[
            : args.screen_images])
        screener = keras_slim.search.runner.Runner(
            model, space.costs.program, space.costs.cuts, x[subset],
            y[subset])

        def screened_step():
            _, logits = screener.step(current, candidates, return_logits=True)
            order, _, _ = autoslim_lib.screen_ranking(
                screener, logits,
                [space.cost(counts)["macs"] for _, counts in candidates],
                "accuracy")
            kept = order[: args.finalists]
            runner.step(current, [candidates[i] for i in sorted(kept)])

        screened_step()  # trace the screener's segments
        exhaustive, screened = [], []
        for repeat in range(args.uncached):
            order = ("exhaustive", "screened")[::1 if repeat % 2 == 0 else -1]
            for kind in order:
                start = time.perf_counter()
                if kind == "exhaustive":
                    runner.step(current, candidates)
                    exhaustive.append(time.perf_counter() - start)
                else:
                    screened_step()
                    screened.append(time.perf_counter() - start)
        ratio = common.spread(np.asarray(screened) / np.asarray(exhaustive))
        common.log(f"one step: exhaustive {np.median(exhaustive):.1f} s, "
                   f"screened ({args.screen_images} images, "
                   f"{args.finalists} finalists) {np.median(screened):.1f} "
                   f"s, ratio {ratio['median']:.3f}")
        report.update(screen_images=args.screen_images,
                      finalists=args.finalists,
                      step_screened_seconds=common.spread(screened),
                      screened_ratio=ratio)
    print(json.dumps(report, indent=1))
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
