r"""Trains a slimmable network: `python -m trainers.train --help`.

Wires the flags of `trainers/flags.py` to the library: the distribution
strategy (`trainers/distribute.py`), the custom training loop with its
checkpoints and final report (`trainers/loop.py`). Re-running the same
command resumes from the latest checkpoint in `--model_dir`.

Example:

    python -m trainers.train --method=us --model=resnet20 \
        --dataset=folder:$HOME/.cache/keras_slim/cifar10/train --augment \
        --epochs=200 --model_dir=/tmp/us_resnet20

    # Two data-parallel replicas on one CPU (testing):
    python -m trainers.train --strategy=mirrored --num_cpu_devices=2 --sync_bn
"""

import logging as logging_lib
import os
import sys

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf

from keras_slim import data as data_lib
from . import cli
from . import distribute
from . import flags as trainer_flags
from . import loop

trainer_flags.define_flags()
# `--help` lists the main module's key flags: make the trainers' ones so.
flags.adopt_module_key_flags(trainer_flags)
FLAGS = flags.FLAGS


class _QuietTensorFlowInfo(logging_lib.Filter):
    """Drops INFO records logged from inside the TensorFlow package."""

    def filter(self, record):
        return record.levelno > logging_lib.INFO or (
            f"{os.sep}tensorflow{os.sep}" not in record.pathname
        )


def main(argv):
    """Runs one training job from the parsed flags."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    # TensorFlow's own INFO chatter (e.g. a report on every checkpoint
    # save) would drown the progress bar; warnings and errors still show.
    logging.get_absl_handler().addFilter(_QuietTensorFlowInfo())
    tf.get_logger().setLevel(logging_lib.WARNING)
    # Logical devices must exist before TensorFlow runs its first op.
    distribute.configure_cpu_devices(FLAGS.num_cpu_devices)
    strategy = distribute.get_strategy(
        FLAGS.strategy, tpu_address=FLAGS.tpu,
        heartbeat_timeout=FLAGS.heartbeat_timeout)
    config = trainer_flags.config_from_flags(FLAGS)
    try:
        loop.train(config, strategy)
    except (loop.CheckpointError, data_lib.DataError) as err:
        # A clear message and a non-zero exit, not a traceback.
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    return 0


def run():
    """Console entry point `keras-slim-train`."""
    cli.show_on_help(sys.modules[__name__], [trainer_flags])
    app.run(main)


if __name__ == "__main__":
    run()
