"""Command-line interface: ``simstudy {run,status,replay,export,list,check,neural} ...``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["neural"]:
        from simstudy.neural.cli import main as neural_main

        return neural_main(argv[1:])
    parser = argparse.ArgumentParser(prog="simstudy", description=__doc__)
    parser.add_subparsers(dest="command", required=True)
    parser.parse_args(argv)
    return 0
