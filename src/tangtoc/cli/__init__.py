"""The ``tangtoc`` command: one module per subcommand, each with ``register(subparsers)`` and ``run(args)``.

The CLI is the only layer that prints. Library errors become a one-line message and an exit code:
2 for a usage problem (a bad flag, a device that does not exist here), 1 for a run that failed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tangtoc import __version__
from tangtoc.cli import advise, audit, bench, doctor, export, profile, sample, train
from tangtoc.errors import DeviceUnavailableError, InvalidDeviceError, TangtocError
from tangtoc.train.signals import Terminated

COMMANDS = (doctor, bench, train, sample, export, advise, audit, profile)
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tangtoc",
        description="Make PyTorch training on the GPU correct and fast (tăng tốc: 'speed up').",
    )
    parser.add_argument("--version", action="version", version=f"tangtoc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.run(args))
    except (InvalidDeviceError, DeviceUnavailableError) as e:
        print(f"tangtoc {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except TangtocError as e:
        print(f"tangtoc {args.command}: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except Terminated:
        print(f"tangtoc {args.command}: terminated (SIGTERM)", file=sys.stderr)
        return 143  # 128 + SIGTERM, as a shell reports a process that SIGTERM ended
    except KeyboardInterrupt:
        print(f"tangtoc {args.command}: interrupted", file=sys.stderr)
        return 130
