"""Run every benchmark: ``python -m benchmarks [--quick]``; reports go to results/bench/."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks import bench_em, bench_engine, bench_losses, bench_store

BENCHMARKS = {"em": bench_em, "engine": bench_engine, "losses": bench_losses,
              "store": bench_store}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about a minute)")
    parser.add_argument("--only", choices=sorted(BENCHMARKS), help="run one benchmark")
    parser.add_argument("--out", default="results/bench", help="folder of the reports")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, module in BENCHMARKS.items():
        if args.only and name != args.only:
            continue
        report = module.run(quick=args.quick)
        print(report)
        (out / f"{name}.md").write_text(report)
        print(f"written to {out / f'{name}.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
