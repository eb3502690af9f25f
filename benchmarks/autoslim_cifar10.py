"""AutoSlim on CIFAR-10: searched channels vs uniform width at equal MACs.

1. Trains a slimmable supernet (zoo MobileNetV2 for CIFAR at 1.5x by
   default) briefly with the sandwich rule (US-Net, inplace distillation)
   on `--train_per_class` training images per class (the last 500 of every
   class are held out).
2. Searches (`keras_slim.search.autoslim`) on `--search_images` of those
   images (no augmentation) for the MACs of the uniform widths `--targets`,
   screening every candidate on `--screen_images` images first
   (`--screen_images 0`: the exhaustive greedy step).
3. Trains each searched configuration and the uniform-width network with
   at most the same MACs from scratch with one schedule, and evaluates them
   on the 5,000 held-out images.

Outputs (in `--output_dir`): `search.json` (the configurations, readable
with `keras_slim.search.load_configs`), `results.json`, `results.md`,
`channels.png`, `accuracy_vs_macs.png`. Every stage is resumable: the
search keeps a progress file and finished trainings are kept in
`results.json` (with each stage's seconds, so a resumed run still reports
the whole cost). `--stop_after supernet` stops after training the
supernet. When `fidelity.json` (from `benchmarks.autoslim_fidelity`: the
screened search against the exhaustive one on this supernet) is in the
folder, its figures are added to `results.json`. `--configs_from FILE`
retrains the configurations of another search file (for example one of
`benchmarks.autoslim_fidelity`'s searches) instead of steps 1-2; the file
must have been searched on this architecture.

Usage:

    python -m benchmarks.autoslim_cifar10 --quick   # ResNet-20
    python -m benchmarks.autoslim_cifar10           # MobileNetV2 1.5x

Reference:
    Yu & Huang, AutoSlim: Towards One-Shot Architecture Search for Channel
    Numbers, 2019 (https://arxiv.org/abs/1903.11728).
"""

import argparse
import json
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from benchmarks.any_width_cifar10 import accuracy  # noqa: E402
from benchmarks.any_width_cifar10 import compile_model  # noqa: E402
from benchmarks.any_width_cifar10 import load_cifar10  # noqa: E402
from benchmarks.any_width_cifar10 import normalize  # noqa: E402
from benchmarks.any_width_cifar10 import split  # noqa: E402
from benchmarks.any_width_cifar10 import train_dataset  # noqa: E402
from benchmarks.common import DEFAULT_ARCHIVE, DEFAULT_CACHE, log  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true",
                        help="ResNet-20, fewer images, epochs and bins")
    parser.add_argument("--model", default=None,
                        help="zoo model (default mobilenet_v2; quick "
                        "resnet20)")
    parser.add_argument("--width_range", default="0.35,1.5",
                        help="supernet min,max width")
    parser.add_argument("--targets", default="1.0,0.75,0.5",
                        help="uniform widths whose MACs are the targets")
    parser.add_argument("--supernet_epochs", type=int, default=None)
    parser.add_argument("--retrain_epochs", type=int, default=None)
    parser.add_argument("--retrain_targets", default=None,
                        help="the targets (of --targets) whose searched "
                        "and uniform networks are retrained (default all)")
    parser.add_argument("--train_per_class", type=int, default=None,
                        help="training images per class (max 4500)")
    parser.add_argument("--search_images", type=int, default=None)
    parser.add_argument("--bins", type=int, default=None)
    parser.add_argument("--screen_images", type=int, default=128,
                        help="screen every candidate on this many search "
                        "images first (0: exhaustive)")
    parser.add_argument("--finalists", type=int, default=3,
                        help="screened candidates scored on every search "
                        "image")
    parser.add_argument("--screen_by", default="accuracy",
                        choices=("accuracy", "log_likelihood"),
                        help="the screening score (see autoslim's "
                        "screen_by)")
    parser.add_argument("--picks_per_step", type=int, default=1,
                        help="groups narrowed at once while far from the "
                        "next target")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retrain_seeds", default=None,
                        help="seeds of the retrainings, e.g. 0,1 (default "
                        "--seed); a record's other seeds are kept")
    parser.add_argument("--archive", default=str(DEFAULT_ARCHIVE))
    parser.add_argument("--cache_dir", default=str(DEFAULT_CACHE))
    parser.add_argument("--output_dir", default=None)
    parser.add_argument("--configs_from", default=None,
                        help="retrain the configurations of this search "
                        "file (an autoslim output of this architecture) "
                        "instead of training a supernet and searching")
    parser.add_argument("--stop_after", choices=("supernet", "search"),
                        default=None,
                        help="stop after this stage (a later run resumes)")
    args = parser.parse_args(argv)
    quick = {"model": "resnet20", "supernet_epochs": 3, "retrain_epochs": 3,
             "train_per_class": 1000, "search_images": 256, "bins": 6}
    full = {"model": "mobilenet_v2", "supernet_epochs": 30,
            "retrain_epochs": 30, "train_per_class": 4500,
            "search_images": 1024, "bins": 12}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.width_range = tuple(float(v) for v in args.width_range.split(","))
    args.targets = [float(v) for v in args.targets.split(",")]
    args.retrain_targets = (args.targets if args.retrain_targets is None else
                            [float(v) for v in args.retrain_targets.split(",")])
    args.retrain_seeds = ([args.seed] if args.retrain_seeds is None else
                          [int(v) for v in args.retrain_seeds.split(",")])
    if not set(args.retrain_targets) <= set(args.targets):
        parser.error(f"--retrain_targets {args.retrain_targets} must be "
                     f"among --targets {args.targets}")
    if args.output_dir is None:
        args.output_dir = f"/tmp/autoslim_cifar10_{'quick' if args.quick else 'full'}"
    return args


def build(args, widths=None):
    import keras_slim

    kwargs = {"width_range": args.width_range}
    if widths is not None:
        kwargs.update(widths=widths, switchable_bn=False)
    return keras_slim.models.get(args.model, **kwargs)


def search_indices(num_train, args):
    """Indices of the search images among `num_train` (seeded, sorted)."""
    rng = np.random.default_rng(args.seed)
    return np.sort(rng.choice(num_train, args.search_images, replace=False))


def search_set(x_train, y_train, args):
    """The search images: `args.search_images` training images (seeded),
    normalised, without augmentation."""
    chosen = search_indices(len(x_train), args)
    return normalize(x_train[chosen]), y_train[chosen]


def train(model, x, y, epochs, args, seed=None, **compile_kwargs):
    steps = epochs * (len(x) // args.batch_size)
    compile_model(model, steps, args.learning_rate, **compile_kwargs)
    seed = args.seed if seed is None else seed
    # The dataset shuffles itself (seeded); fit's own shuffle only warns.
    model.fit(train_dataset(x, y, args.batch_size, seed),
              epochs=epochs, verbose=2, shuffle=False)


def main(argv=None):
    import keras
    import keras_slim
    from keras_slim import search

    args = parse_args(argv)
    out = pathlib.Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = (json.loads(results_path.read_text())
               if results_path.exists() else {"retrained": {}})
    # The seed the record's rows of one seed were trained with.
    first_seed = results.get("args", {}).get("seed", args.seed)
    keras.utils.set_random_seed(args.seed)
    images, labels, _ = load_cifar10(args.archive, args.cache_dir)
    (x_train, y_train), (x_val, y_val) = split(
        images, labels, args.train_per_class, 500)
    log(f"{len(x_train)} training, {len(x_val)} held-out images")

    if args.configs_from:
        found, supernet = configs_from(args)
        log(f"retraining the configurations of {args.configs_from}")
        results["configs_from"] = args.configs_from
        results["search_seconds"] = found["stats"]["seconds"]
        results["search_stats"] = found["stats"]
    else:
        found, supernet = train_and_search(args, out, results, x_train,
                                           y_train, results_path)
        if found is None:
            return
    search.plots.plot_channels(found, supernet, out / "channels.png")

    retrain_names = {f"like_{w:g}x" for w in args.retrain_targets}
    for entry in found["configs"]:
        if entry["name"] not in retrain_names:
            continue
        runs = {
            "searched": entry["channels"],
            "uniform": search.config_from_counts(
                supernet, supernet.channels_for(entry["uniform"]["width"])),
        }
        # Seeds outermost: an interrupted run leaves pairs complete.
        for seed in args.retrain_seeds:
            for kind, config in runs.items():
                key = f"{entry['name']}/{kind}"
                row = results["retrained"].get(key)
                if row is not None and row.get("channels", config) != config:
                    raise ValueError(
                        f"{results_path} holds a {key} row trained with other "
                        "channels than this search's: retrain into another "
                        "--output_dir.")
                if row is not None and str(seed) in _by_seed(row, first_seed):
                    continue
                log(f"training {key} from scratch (seed {seed})")
                keras.utils.set_random_seed(seed)
                model = build(args, widths=[config])
                start = time.perf_counter()
                train(model, x_train, y_train, args.retrain_epochs, args,
                      seed=seed)
                profiled = keras_slim.profile(model, config)
                by_seed = dict(_by_seed(row, first_seed) if row else {})
                by_seed[str(seed)] = accuracy(model, normalize(x_val), y_val)
                results["retrained"][key] = {
                    "macs": profiled["macs"], "params": profiled["params"],
                    # The mean over seeds; each seed's in accuracy_by_seed.
                    "accuracy": float(np.mean(list(by_seed.values()))),
                    "accuracy_by_seed": by_seed,
                    "seconds": (row or {}).get("seconds", 0.0)
                    + time.perf_counter() - start,
                    "uniform_width": (entry["uniform"]["width"]
                                      if kind == "uniform" else None),
                    "channels": dict(config),
                }
                results_path.write_text(json.dumps(results, indent=1))
    retrained = {"searched": [], "uniform": []}
    for key, row in results["retrained"].items():
        retrained[key.split("/")[1]].append((row["macs"], row["accuracy"]))
    search.plots.plot_accuracy(found, out / "accuracy_vs_macs.png", retrained)
    results["args"] = {k: v for k, v in vars(args).items()}
    results["total_minutes"] = (
        results.get("supernet_seconds", 0) + results["search_seconds"]
        + sum(r["seconds"] for r in results["retrained"].values())) / 60
    fidelity = out / "fidelity.json"
    if fidelity.exists():
        results["fidelity"] = json.loads(fidelity.read_text())
    results_path.write_text(json.dumps(results, indent=1))
    lines = ["| target | kind | MACs | params | accuracy (mean of seeds) | "
             "by seed |", "|---|---|---|---|---|---|"]
    for key, row in results["retrained"].items():
        name, kind = key.split("/")
        seeds = " / ".join(f"{seed}: {value:.4f}" for seed, value
                           in sorted(_by_seed(row, first_seed).items()))
        lines.append(f"| {name} | {kind} | {row['macs'] / 1e6:.1f}M | "
                     f"{row['params'] / 1e6:.2f}M | {row['accuracy']:.4f} | "
                     f"{seeds} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def train_and_search(args, out, results, x_train, y_train, results_path):
    """Steps 1-2: the supernet (trained or loaded) and its search.

    Returns `(search results, supernet)`, or `(None, None)` when
    `--stop_after` stops here.
    """
    import keras
    import keras_slim
    from keras_slim import search

    supernet_path = out / "supernet.keras"
    if supernet_path.exists():
        supernet = keras.models.load_model(supernet_path)
    else:
        start = time.perf_counter()
        supernet = build(args)
        train(supernet, x_train, y_train, args.supernet_epochs, args,
              sandwich_size=4, inplace_distillation=True)
        supernet.save(supernet_path)
        results["supernet_seconds"] = time.perf_counter() - start
        results_path.write_text(json.dumps(results, indent=1))
    if args.stop_after == "supernet":
        return None, None
    searched_on = search_set(x_train, y_train, args)
    targets = [keras_slim.profile(supernet, w)["macs"] for w in args.targets]
    start = time.perf_counter()
    found = search.autoslim(
        supernet, searched_on, targets=targets, bins=args.bins,
        num_images=None, names=[f"like_{w:g}x" for w in args.targets],
        output_path=out / "search.json",
        progress_path=out / "search_progress.json",
        screen_images=args.screen_images or None, finalists=args.finalists,
        picks_per_step=args.picks_per_step,
        screen_by=args.screen_by,
        verbose=2)
    log(f"search: {len(found['history']) - 1} steps, "
        f"{found['stats']['seconds'] / 60:.1f} min of steps "
        f"({time.perf_counter() - start:.0f} s in this call)")
    # The steps' own seconds: a resumed search still reports its whole
    # time.
    results["search_seconds"] = found["stats"]["seconds"]
    results["search_stats"] = found["stats"]
    if args.stop_after == "search":
        results_path.write_text(json.dumps(results, indent=1))
        return None, None
    return found, supernet


def configs_from(args):
    """Another search's results and an untrained supernet of its
    architecture (all the retraining needs of it: the channel counts).

    Raises:
        ValueError: if the file was searched on another architecture
            (model, width range or input size).
    """
    from keras_slim.search.configs import read_results
    from keras_slim.search.cost import fingerprint

    found = read_results(args.configs_from)
    supernet = build(args)
    if found["fingerprint"] != fingerprint(supernet):
        raise ValueError(
            f"{args.configs_from} was searched on another architecture "
            f"(fingerprint {found['fingerprint']}; --model {args.model} "
            f"--width_range {args.width_range} gives "
            f"{fingerprint(supernet)}): pass the --model and --width_range "
            "of its supernet.")
    return found, supernet


def _by_seed(row, first_seed):
    """A retrained row's accuracy per seed (records of one seed kept only
    "accuracy", trained with the record's --seed, `first_seed`)."""
    if "accuracy_by_seed" in row:
        return row["accuracy_by_seed"]
    return {str(first_seed): row["accuracy"]}


if __name__ == "__main__":
    main()
