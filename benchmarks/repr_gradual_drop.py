"""Does fading RePr's dropped filters out, instead of cutting them, help?

An experiment, not a library option. RePr's drop takes 30% of the ranked
filters out at once, and the paper's ConvNet loses 10-14 points of
hold-out accuracy that 74 steps of training do not win back
(`repr_cifar10.py`). Gradual pruning keeps accuracy better than one-shot
pruning elsewhere, so here the dropped filters (the library's default
ranking and cut-off) are faded out linearly over N steps while the network
trains, then held at zero:

- trains the paper's ConvNet (the `repr_cifar10` full setting: 45k images,
  SGD 0.05, batch 64) for S1 = 20% of its 10 epochs;
- from there, the same weights, data order and steps, once per variant:
  no drop (standard training), the drop at once (N = 0) and fades of
  N = 50, 100 and 200 steps;
- the probe (2,000 hold-out images, inference mode) every 25 steps for
  400 steps.

What it found (seeds 0 and 1, 2026-12-05): a fade only moves the fall to
where the filters reach zero; the network does not take over a fading
filter's work while the filter is still there (the gradient has no reason
to), so 50 steps after the fade ends it is as far down as 50 steps after
an abrupt drop.

Usage:

    python -m benchmarks.repr_gradual_drop --seed 0 --output /tmp/fade.json
"""

import argparse
import json
import pathlib

import numpy as np

from benchmarks import repr_cifar10
from benchmarks.any_width_cifar10 import load_cifar10, split
from benchmarks.common import DEFAULT_CACHE, log, write_atomic

FADES = (None, 0, 50, 100, 200)  # None: no drop (standard training)
PROBE_EVERY = 25
PROBE_STEPS = 400


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--drop_fraction", type=float, default=0.3)
    parser.add_argument("--archive",
                        default=str(repr_cifar10.default_archive()))
    parser.add_argument("--cache_dir", default=str(DEFAULT_CACHE))
    parser.add_argument("--output", default="repr_gradual_drop.json")
    return parser.parse_args(argv)


def fade_callback(layers, selection, steps):
    """Scales the selected filters (kernel and bias) so that after `t`
    steps they are `max(0, 1 - t / steps)` of what training made them;
    `steps=0` holds them at zero from the start."""
    import keras

    def scale(ratio):
        for name, indices in selection.items():
            for variable in (layers[name].kernel, layers[name].bias):
                value = keras.ops.convert_to_numpy(variable).copy()
                value[..., indices] *= ratio
                variable.assign(value)

    class Fade(keras.callbacks.Callback):
        done = 0

        def on_train_batch_end(self, batch, logs=None):
            self.done += 1
            left = steps - self.done
            # The ratio of this step's target to the last one's.
            scale(left / (left + 1) if left > 0 else 0.0)

    fade = Fade()
    fade.scale = scale
    return fade


def main(argv=None):
    args = parse_args(argv)
    from keras_slim.repr import ranking as ranking_lib
    import keras

    images, labels, _ = load_cifar10(args.archive, args.cache_dir)
    data = split(images, labels, 4500, 500)
    (x_train, _), (x_val, y_val) = data
    steps_per_epoch = len(x_train) // 64
    epochs = repr_cifar10.FULL["convnet"]["epochs"]
    keras.utils.set_random_seed(args.seed)
    model = repr_cifar10.build("convnet", steps_per_epoch, epochs)
    ds = repr_cifar10.datasets("convnet", data, 64, args.seed).repeat()
    x_probe, y_probe = repr_cifar10.probe_split(x_val, y_val)

    def accuracy():
        logits = model.predict(x_probe, batch_size=500, verbose=0)
        return float(np.mean(np.argmax(logits, -1) == y_probe))

    s1 = int(0.2 * steps_per_epoch * epochs)
    log(f"seed {args.seed}: {s1} steps of standard training")
    model.fit(ds, steps_per_epoch=s1, epochs=1, verbose=0)
    start = [keras.ops.convert_to_numpy(w).copy() for w in model.weights]
    step = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    convs, _ = ranking_lib.rankable_layers(model)
    names = [layer.name for layer in convs]
    selection = ranking_lib.rank_filters(model, layers=names).select(
        args.drop_fraction, 1, "global", 0.5)
    layers = {name: model.get_layer(name) for name in selection}
    log(f"dropping {({k: len(v) for k, v in selection.items()})}")
    curves = {}
    for steps in FADES:
        for variable, value in zip(model.weights, start):
            variable.assign(value)
        # Plain SGD: the step count (learning rate) is its only state.
        model.optimizer.iterations.assign(step)
        callbacks = []
        if steps is not None:
            callbacks = [fade_callback(layers, selection, steps)]
            if steps == 0:
                callbacks[0].scale(0.0)
        curve = {0: accuracy()}
        for k in range(PROBE_STEPS // PROBE_EVERY):
            # Each fit restarts the same data order at step s1 + 25 k.
            model.fit(ds.skip(s1 + PROBE_EVERY * k),
                      steps_per_epoch=PROBE_EVERY, epochs=1, verbose=0,
                      callbacks=callbacks)
            curve[PROBE_EVERY * (k + 1)] = accuracy()
        label = "no drop" if steps is None else f"fade {steps}"
        curves[label] = curve
        log(label + ": " + " ".join(f"{s}:{a:.3f}" for s, a in curve.items()))
    summary = {}
    for steps in FADES[1:]:
        curve, base = curves[f"fade {steps}"], curves["no drop"]
        end, later = steps, steps + 50
        summary[f"fade {steps}"] = {
            "at fade end": curve[end] - base[end],
            "50 steps after fade end": curve[later] - base[later],
        }
        log(f"fade {steps}: vs no drop at the fade's end "
            f"{100 * (curve[end] - base[end]):+.1f} points, 50 steps later "
            f"{100 * (curve[later] - base[later]):+.1f}")
    write_atomic(pathlib.Path(args.output), json.dumps(
        {"seed": args.seed, "s1": s1, "selection": {
            k: v.tolist() for k, v in selection.items()},
         "curves": curves, "vs_no_drop": summary}, indent=2))


if __name__ == "__main__":
    main()
