"""``python -m pyvirtrpc``: command-line tools.

Contract: ``python -m pyvirtrpc SUBCOMMAND ...``; each subcommand is a
``(help, add_arguments, run)`` entry in :data:`SUBCOMMANDS`, ``run``
returning the exit status.  Subcommands:

* ``uri [URI] [--readonly] [--no-aliases]``: print :func:`pyvirtrpc.uri.plan`
  for URI (the default URI when omitted) as JSON with sorted keys; exit 0.
  A libvirtError prints ``error: <message>`` on stderr and exits 1, as
  virsh does.

Subcommand modules are imported only when that subcommand runs.
"""

from __future__ import annotations

import argparse
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Optional, Sequence


def _uri_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("uri", nargs="?", default=None, help="connection URI (default: as virConnectOpen(NULL))")
    p.add_argument("--readonly", "-r", action="store_true", help="plan a read-only open (VIR_CONNECT_RO)")
    p.add_argument("--no-aliases", action="store_true", help="do not resolve uri_aliases (VIR_CONNECT_NO_ALIASES)")


def _uri_run(args: argparse.Namespace) -> int:
    import json

    from ._gen import constants as C
    from .uri import plan

    flags = (C.VIR_CONNECT_RO if args.readonly else 0) | (C.VIR_CONNECT_NO_ALIASES if args.no_aliases else 0)
    p = plan(args.uri, flags)
    json.dump(p.as_dict(), sys.stdout, sort_keys=True, indent=2)
    sys.stdout.write("\n")
    return 0


#: name -> (help, add_arguments, run)
SUBCOMMANDS: dict[
    str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
] = {
    "uri": ("show what opening a URI would do (JSON)", _uri_args, _uri_run),
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyvirtrpc", description="pyvirtrpc tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, add_args, _run) in SUBCOMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    run = SUBCOMMANDS[args.command][2]
    from .errors import libvirtError

    try:
        return run(args)
    except libvirtError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
