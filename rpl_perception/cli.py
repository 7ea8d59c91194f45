"""``rpl-perception`` command line: one sub-command per module in :mod:`rpl_perception.commands`.

Each command module defines ``register(subparsers)``, which adds its parser and sets
``func(args) -> int`` as the default; heavy imports happen inside ``func`` so that ``--help``
stays fast.
"""

import argparse
import importlib
import logging
import sys

#: command modules, in the order ``--help`` lists them
COMMAND_MODULES = [
    "rpl_perception.commands.demo",
    "rpl_perception.commands.predict",
    "rpl_perception.commands.convert_checkpoint",
    "rpl_perception.commands.bag",
    "rpl_perception.commands.evaluate",
    "rpl_perception.commands.export",
    "rpl_perception.commands.build_engine",
    "rpl_perception.commands.bench",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rpl-perception", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args) or 0
    except (FileNotFoundError, ValueError) as exc:  # bad input: a clear message, no traceback
        print(f"rpl-perception {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
