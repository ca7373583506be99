"""``simstudy neural {routers,jei-dnn,phatgoose}``: dispatch to each benchmark's own CLI."""

from __future__ import annotations

import argparse
import importlib
import sys

# each benchmark module exposes ``main(argv) -> int``; imported lazily so that torch is only
# needed when a neural benchmark actually runs
BENCHMARKS = {
    "routers": "simstudy.neural.routers_bench",
    "bridge": "simstudy.neural.bridge_bench",
    "jei-dnn": "simstudy.neural.jei_dnn.bench",
    "phatgoose": "simstudy.neural.phatgoose.bench",
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="simstudy neural", description="Neural gating benchmarks (needs simstudy[torch])."
    )
    parser.add_argument("benchmark", choices=sorted(BENCHMARKS))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="options of the benchmark")
    ns = parser.parse_args(argv)
    try:
        module = importlib.import_module(BENCHMARKS[ns.benchmark])
    except ModuleNotFoundError as exc:
        if exc.name == "torch":
            parser.error("the neural benchmarks need torch: pip install 'simstudy[torch]'")
        raise
    try:
        return int(module.main(ns.args) or 0)
    except ValueError as exc:  # a bad option or input: one line, no traceback
        print(f"simstudy neural {ns.benchmark}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"simstudy neural {ns.benchmark}: interrupted; rerun the same command to resume "
              "(finished stages are cached where the benchmark caches)", file=sys.stderr)
        return 130
