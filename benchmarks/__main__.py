"""`python -m benchmarks`: run benchmark suites, write records and reports.

    python -m benchmarks --list
    python -m benchmarks --suite all --quick --out benchmarks/results
    python -m benchmarks --suite early_exits,repr --full \
        --out benchmarks/results_full
    python -m benchmarks.report --readme README.md

Each suite writes `OUT/NAME.json`, `OUT/NAME.md` and `OUT/NAME.png`; see
`benchmarks/harness.py` for the record and `benchmarks/suites.py` for what
each suite runs in each mode.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the progress bar's Keras

from benchmarks import harness  # noqa: E402
from benchmarks import report  # noqa: E402
from benchmarks import suites  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default=None,
                        help="comma-separated suite names, or 'all'")
    mode = parser.add_mutually_exclusive_group()
    for name in suites.MODES:
        mode.add_argument(f"--{name}", dest="mode", action="store_const",
                          const=name)
    parser.add_argument("--out", default="benchmarks/results",
                        help="folder for NAME.json / NAME.md / NAME.png")
    parser.add_argument("--force", action="store_true",
                        help="rerun suites whose record is already finished")
    parser.add_argument("--readme", default=None,
                        help="afterwards, regenerate this README's results "
                        "section from the records in --out (and in "
                        "benchmarks/results[_full])")
    parser.add_argument("--list", action="store_true",
                        help="list the suites, their modes and minutes")
    args = parser.parse_args(argv)
    if args.list:
        for s in suites.SUITES.values():
            minutes = ", ".join(f"{m} ~{s.minutes[m]:g} min"
                                for m in s.modes())
            print(f"{s.name:18} {s.kind:9} {minutes}\n{'':28}{s.title}")
        return 0
    if args.suite is None or args.mode is None:
        parser.error("give --suite NAME[,NAME...]|all and one of "
                     + " / ".join(f"--{m}" for m in suites.MODES))
    try:
        records = harness.run(args.suite, args.mode, args.out,
                              force=args.force)
    except ValueError as error:
        parser.error(str(error))
    if args.readme:
        outs = [args.out] + [
            o for o in report.DEFAULT_OUTS if os.path.isdir(o)
            and os.path.abspath(o) != os.path.abspath(args.out)]
        report.update_readme(args.readme, outs)
    failed = [r["suite"] for r in records if r["status"] != "ok"]
    total = sum(r["seconds"] for r in records) / 60
    print(f"\n{len(records) - len(failed)} of {len(records)} suites ok "
          f"({total:.1f} min of measurement); records in {args.out}"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
