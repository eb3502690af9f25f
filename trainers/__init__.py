"""Command-line trainers for keras_slim networks.

- `trainers.train`: the training program (`python -m trainers.train` or
  `keras-slim-train`); its flags live in `trainers.flags`.
- `trainers.loop`: the custom `tf.distribute` loop, checkpoints, report.
- `trainers.methods`: the registry of training methods.
- `trainers.distribute`: the strategy built from `--strategy`.
"""
