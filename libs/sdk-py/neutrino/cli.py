"""The `neutrino` command line (a stub until the local stack runner lands)."""

from __future__ import annotations

import sys


def main() -> None:
    print("neutrino: the command line is not implemented yet", file=sys.stderr)
    raise SystemExit(2)
