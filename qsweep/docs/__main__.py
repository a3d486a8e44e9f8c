"""`python -m qsweep.docs`: write docs/metrics.md from the code's names; `--check`: exit 1 when it is stale."""

import argparse
import sys

from qsweep import console
from qsweep.docs import reference


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m qsweep.docs", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when docs/metrics.md is stale")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not reference.OUT.parent.is_dir():  # an installed package has no docs/ beside it
        console.refuse(f"no {reference.OUT.parent}: run it in a source checkout of qsweep", prefix="qsweep.docs")
        return 2
    try:
        if args.check:
            if reference.stale():
                console.refuse(f"{reference.OUT} is stale: run `{reference.COMMAND}`", prefix="qsweep.docs")
                return 1
            return 0
        console.say(f"wrote {reference.write()}", prefix="qsweep.docs")
    except reference.MissingMeaning as err:
        console.refuse(str(err), prefix="qsweep.docs")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
