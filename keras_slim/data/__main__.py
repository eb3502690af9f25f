"""`python -m keras_slim.data` (`keras-slim-data`): prepare or check folders.

    python -m keras_slim.data prepare SOURCE DESTINATION [--split=train]
        [--data_dir=DIR] [--download]
    python -m keras_slim.data check FOLDER [--decode]

`prepare` makes the image folder a `folder:PATH` spec reads, from an archive
or `tfds:NAME` (see `keras_slim.data.prepare_image_folder`), and prints the
`--dataset=folder:...` flag to use. `check` lists the image files that
TensorFlow cannot decode (exit code 1 if there are any).
"""

import argparse
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None):
    """Runs the command line; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_slim.data",
        description="Prepare or check image folders for 'folder:PATH' "
        "dataset specs.")
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser(
        "prepare", help="make an image folder from an archive or tfds:NAME",
        description="Extracts an archive of class sub-folders (.tar[.gz|"
        ".bz2|.xz], .tgz, .zip), or writes a TFDS split as PNG files, into "
        "DESTINATION, atomically and once.")
    prepare.add_argument("source", help="archive file, or tfds:NAME")
    prepare.add_argument("destination", help="folder to create")
    prepare.add_argument("--split", default="train",
                         help="tfds: split to write (default: train)")
    prepare.add_argument("--data_dir", default=None,
                         help="tfds: TensorFlow Datasets directory")
    prepare.add_argument("--download", action="store_true",
                         help="tfds: download the data set if it is not "
                         "prepared (needs a network)")
    check = commands.add_parser(
        "check", help="list image files that cannot be decoded")
    check.add_argument("folder")
    check.add_argument("--decode", action="store_true",
                       help="decode every file (slower; also finds files "
                       "corrupt in the middle)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from keras_slim import data

    try:
        if args.command == "prepare":
            folder = data.prepare_image_folder(
                args.source, args.destination, split=args.split,
                data_dir=args.data_dir, download=args.download)
            print(f"Use --dataset=folder:{folder}")
            return 0
        bad = data.find_bad_images(args.folder, decode=args.decode)
    except (ValueError, OSError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    for path, reason in bad:
        print(f"{path}: {reason}")
    print(f"{len(bad)} bad image file(s) in {args.folder}.")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
