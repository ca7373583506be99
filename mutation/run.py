"""Mutation testing of the modules that decide results, with cosmic-ray (``make mutate``).

Usage::

    python -m mutation.run                          # every module of mutation/modules.toml
    python -m mutation.run --module engine/seeds.py # one module (path under simstudy/)
    python -m mutation.run --fresh                  # forget the cache, rerun every mutant
    python -m mutation.run --list                   # modules, test files, mutant counts
    python -m mutation.run --jobs 2                 # two modules side by side

How it works (docs/testing.md says how to read the output):

* The working tree's files (tracked and untracked, not ignored) are copied to
  ``.mutate/trees/<module>``; cosmic-ray rewrites the module there, one mutant at a time, and
  runs the module's test files (``mutation/modules.toml``) in a fresh process; any failure or
  a timeout kills the mutant. Your own tree is never modified.
* The unmutated tests run first (the baseline): they must pass, and their time sets the timeout.
* Results are cached in ``.mutate/cache/``, keyed by the text of the function (or top-level
  statement) that holds the mutant, the operator and its occurrence inside that text. A
  killed mutant is reused while its function is unchanged; a surviving one is rerun whenever a
  test file changes. So a rerun after editing one function, or after adding a test, runs only
  the mutants that can have changed outcome. An interrupted run keeps what it finished.
  ``--fresh`` reruns everything (do it before resolving an issue).
* Mutants left out: operators excluded in the config, lines marked ``# pragma: no mutate``,
  and the equivalent mutants listed with their reason in ``mutation/equivalent.toml``.

Exit status: 0 when no mutant survived, 1 when some did, 2 on a usage or baseline error.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "mutation" / "modules.toml"
EQUIVALENT = ROOT / "mutation" / "equivalent.toml"
WORK = ROOT / ".mutate"
TREES = WORK / "trees"
CACHE = WORK / "cache"
PRAGMA = re.compile(r"#.*pragma:.*no mutate")


class UsageError(Exception):
    """A bad argument or configuration: one line, exit status 2."""


@dataclass
class ModuleConfig:
    name: str  # path under simstudy/, e.g. "engine/seeds.py"
    tests: list[str]
    pytest_args: list[str]
    exclude: list[re.Pattern]
    env: dict = field(default_factory=dict)
    timeout_factor: float = 4.0
    timeout_min: float = 30.0
    fork_server: bool = True

    @property
    def path(self) -> str:
        return f"simstudy/{self.name}"

    @property
    def slug(self) -> str:
        return self.name.replace("/", "_").removesuffix(".py")


def load_config() -> dict[str, ModuleConfig]:
    raw = tomllib.loads(CONFIG.read_text())
    d = raw.get("defaults", {})
    out = {}
    for name, m in raw.get("modules", {}).items():
        out[name] = ModuleConfig(
            name=name,
            tests=list(m["tests"]),
            pytest_args=list(m.get("pytest_args", d.get("pytest_args", []))),
            exclude=[re.compile(p) for p in [*d.get("exclude_operators", []),
                                             *m.get("exclude_operators", [])]],
            env={k: str(v) for k, v in m.get("env", {}).items()},
            timeout_factor=float(m.get("timeout_factor", d.get("timeout_factor", 4.0))),
            timeout_min=float(m.get("timeout_min", d.get("timeout_min", 30.0))),
            fork_server=bool(m.get("fork_server", d.get("fork_server", True))),
        )
    return out


@dataclass(frozen=True)
class Equivalent:
    module: str
    line: str  # the stripped source line holding the mutant
    mutant: str  # the same line, stripped, as the mutant has it
    reason: str
    operator: str | None = None  # optional: only that operator


def load_equivalents() -> list[Equivalent]:
    if not EQUIVALENT.exists():
        return []
    raw = tomllib.loads(EQUIVALENT.read_text())
    out = []
    for i, e in enumerate(raw.get("mutant", [])):
        missing = [k for k in ("module", "line", "mutant", "reason") if not e.get(k)]
        if missing:
            raise UsageError(f"{EQUIVALENT.name}: mutant[{i}] lacks {', '.join(missing)}")
        out.append(Equivalent(e["module"], e["line"].strip(), e["mutant"].strip(), e["reason"],
                              e.get("operator")))
    return out


def mutated_line(source: str, mutation) -> str:
    """The stripped line holding the mutant, as the mutant has it."""
    import cosmic_ray.plugins
    from cosmic_ray.mutating import mutate_code

    op = cosmic_ray.plugins.get_operator(mutation.operator_name)()
    code = mutate_code(source, op, mutation.occurrence)
    if code is None:
        return ""
    lines = code.splitlines()
    i = mutation.start_pos[0] - 1
    return lines[i].strip() if i < len(lines) else ""


# -- the copy of the tree ------------------------------------------------------------------------
def sync_tree(tree: Path) -> None:
    """Mirror the tracked and untracked (not ignored) files into ``tree`` (one per module, so
    modules can run side by side; numba caches under __pycache__ stay)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    files = {f for f in listed if f and (ROOT / f).is_file()}
    tree.mkdir(parents=True, exist_ok=True)
    for f in files:
        src, dst = ROOT / f, tree / f
        data = src.read_bytes()
        if not dst.exists() or dst.read_bytes() != data:
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(data)
    for p in tree.rglob("*"):  # files gone from the tree (caches under __pycache__ stay)
        rel = p.relative_to(tree).as_posix()
        if p.is_file() and "__pycache__" not in p.parts and rel not in files:
            p.unlink()


def tests_hash(tree: Path, tests: list[str]) -> str:
    """Hash of every test file and helper (any change may kill a survivor)."""
    h = hashlib.sha256()
    for p in sorted((tree / "tests").rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            h.update(p.relative_to(tree).as_posix().encode() + b"\0" + p.read_bytes())
    h.update(json.dumps(tests).encode())
    return h.hexdigest()[:16]


# -- where a mutant lives: the enclosing function or top-level statement -------------------------
def segments(source: str) -> list[tuple[int, int, str]]:
    """(first line, last line, text) of every function (innermost first) and top-level
    statement, for keying mutants by the code that holds them."""
    tree = ast.parse(source)
    lines = source.splitlines()
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            out.append((start, node.end_lineno, "\n".join(lines[start - 1:node.end_lineno])))
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.append((node.lineno, node.end_lineno,
                        "\n".join(lines[node.lineno - 1:node.end_lineno])))
        elif isinstance(node, ast.ClassDef):  # class-level statements other than methods
            for sub in node.body:
                if not isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef):
                    out.append((sub.lineno, sub.end_lineno,
                                node.name + "\n" + "\n".join(lines[sub.lineno - 1:sub.end_lineno])))
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            out.append((start, node.lineno, "\n".join(lines[start - 1:node.lineno])))
    # innermost (shortest) segment first
    return sorted(out, key=lambda s: s[1] - s[0])


def segment_of(segs, line: int) -> tuple[int, int, str]:
    for s in segs:
        if s[0] <= line <= s[1]:
            return s
    return (0, 0, "<module>")


# -- one module ----------------------------------------------------------------------------------
def _cosmic(tree, *args, env=None, check=True):
    exe = Path(sys.executable).with_name("cosmic-ray")
    cmd = [str(exe) if exe.exists() else "cosmic-ray", *args]
    return subprocess.run(cmd, cwd=tree, env=env, check=check, stdout=subprocess.DEVNULL)


def test_command(cfg: ModuleConfig, tests: list[str], server: Path | None = None,
                 timeout: float = 0.0) -> str:
    """The mutant's test command: pytest in a fresh process, or a request to the fork server
    (which then stops a run at 0.9 timeout, before cosmic-ray's own timeout)."""
    import shlex

    args = [*cfg.pytest_args, *tests]
    if server is None:
        return shlex.join([sys.executable, "-m", "pytest", *args])
    client = ROOT / "mutation" / "forkclient.py"
    log = WORK / f"{cfg.slug}.last.log"
    return shlex.join([sys.executable, "-S", str(client), str(server), f"{0.9 * timeout:.1f}",
                       str(log), "--", *args])


@contextlib.contextmanager
def fork_server(tree: Path, env: dict, sock: Path):
    """Run a fork server in ``tree``, listening on ``sock``, for the duration of the block."""
    from mutation.forkserver import request

    proc = subprocess.Popen([sys.executable, str(ROOT / "mutation" / "forkserver.py"),
                             str(sock)], cwd=tree, env=env)
    try:
        yield sock
    finally:
        with contextlib.suppress(Exception):
            request(str(sock), {"stop": True}, connect_timeout=5)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _keys(cfg: ModuleConfig, items, source: str) -> dict:
    """Cache key of every work item: module, operator, the text of the function (or top-level
    statement) holding the mutant, and the mutant's rank among that operator's in that text."""
    segs = segments(source)
    lines = source.splitlines()
    out, rank = {}, {}
    for item in sorted(items, key=lambda w: (w.mutations[0].operator_name,
                                             w.mutations[0].occurrence)):
        mut = item.mutations[0]
        line_no = mut.start_pos[0]
        seg = segment_of(segs, line_no)
        r = rank.setdefault((mut.operator_name, seg[0], seg[2]), [0])
        key = hashlib.sha256("\0".join(
            [cfg.name, mut.operator_name, str(r[0]), seg[2]]).encode()).hexdigest()[:24]
        r[0] += 1
        text = lines[line_no - 1].strip() if line_no <= len(lines) else ""
        end = lines[mut.end_pos[0] - 1] if mut.end_pos[0] <= len(lines) else ""
        out[item.job_id] = (key, mut.operator_name, line_no, text, end)
    return out


def _outcome(result) -> str | None:
    """"killed", "survived", "incompetent" or None (skipped, not run)."""
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    if result.worker_outcome == WorkerOutcome.SKIPPED:
        return None
    if result.worker_outcome != WorkerOutcome.NORMAL or result.test_outcome is None:
        return "incompetent"
    return {TestOutcome.KILLED: "killed", TestOutcome.SURVIVED: "survived"}.get(
        result.test_outcome, "incompetent")


def harvest(cfg: ModuleConfig, tree: Path, cache: dict, tests: list[str]) -> int:
    """Move the results of a previous (possibly interrupted) session into the cache, keyed on
    the module text that session mutated (the tree is not synced yet)."""
    from cosmic_ray.work_db import WorkDB, use_db

    session = WORK / f"{cfg.slug}.sqlite"
    # the module as it was when that session started (the tree's copy may hold a mutant left
    # by a killed run; the sync that follows restores it)
    snapshot = WORK / f"{cfg.slug}.source"
    if not session.exists() or not snapshot.exists():
        return 0
    thash = tests_hash(tree, tests)
    n = 0
    with use_db(str(session), WorkDB.Mode.open) as db:
        done = list(db.completed_work_items)
        # ranks inside a function count every mutant of the session, run or not
        keys = _keys(cfg, list(db.work_items), snapshot.read_text())
        for item, result in done:
            outcome = _outcome(result)
            if outcome not in ("killed", "survived") or result.output == "cached":
                continue
            key = keys[item.job_id][0]
            cache[key] = ({"outcome": "killed"} if outcome == "killed" else
                          {"outcome": "survived", "tests": thash, "diff": result.diff or ""})
            n += 1
    return n


def run_module(cfg: ModuleConfig, equivalents: list[Equivalent], fresh: bool,
               list_only: bool = False, log=print) -> dict:
    import fcntl

    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    WORK.mkdir(parents=True, exist_ok=True)
    lock = open(WORK / f"{cfg.slug}.lock", "w")  # noqa: SIM115 (held for the whole run)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise UsageError(f"{cfg.name}: another mutation run of this module is going on") from None
    tree = TREES / cfg.slug
    cache_file = CACHE / f"{cfg.slug}.json"
    cache = {} if fresh or not cache_file.exists() else json.loads(cache_file.read_text())
    if not fresh:
        n = harvest(cfg, tree, cache, [t for t in cfg.tests if (tree / t).exists()])
        if n:
            log(f"  kept {n} results of the previous session")
    CACHE.mkdir(parents=True, exist_ok=True)
    cache_file.write_text(json.dumps(cache, indent=0, sort_keys=True))
    sync_tree(tree)

    tests = [t for t in cfg.tests if (tree / t).exists()]
    for t in cfg.tests:
        if t not in tests:
            log(f"  note: {t} (listed for {cfg.name}) does not exist; not run")
    if not tests:
        raise UsageError(f"{cfg.name}: none of its test files exists")
    if not (tree / cfg.path).exists():
        raise UsageError(f"{cfg.name}: no such module {cfg.path}")
    env = {**os.environ, **cfg.env, "PYTHONDONTWRITEBYTECODE": "1"}
    command = test_command(cfg, tests)

    session = WORK / f"{cfg.slug}.sqlite"
    conf = WORK / f"{cfg.slug}.toml"
    timeout = cfg.timeout_min
    if not list_only:
        t0 = time.perf_counter()
        base = subprocess.run(command, shell=True, cwd=tree, env=env, capture_output=True,
                              text=True)
        elapsed = time.perf_counter() - t0
        if base.returncode != 0:
            tail = (base.stdout + base.stderr).strip().splitlines()[-5:]
            raise UsageError(f"{cfg.name}: the unmutated tests fail (fix them first): "
                             + " | ".join(tail))
        timeout = max(cfg.timeout_min, cfg.timeout_factor * elapsed)
        log(f"  baseline {elapsed:.1f} s ({', '.join(tests)}); timeout {timeout:.0f} s")
    sock = Path("/tmp") / f"simstudy-mutate-{os.getpid()}-{cfg.slug}.sock"
    if cfg.fork_server:
        command = test_command(cfg, tests, sock, timeout)
    conf.write_text(
        "[cosmic-ray]\n"
        f"module-path = {json.dumps(cfg.path)}\n"
        f"timeout = {timeout:.1f}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(command)}\n"
        "[cosmic-ray.distributor]\nname = \"local\"\n"
    )
    session.unlink(missing_ok=True)
    _cosmic(tree, "init", str(conf), str(session), env=env)
    (WORK / f"{cfg.slug}.source").write_text((tree / cfg.path).read_text())

    thash = tests_hash(tree, tests)
    counts = {"excluded": 0, "pragma": 0, "equivalent": 0, "cached": 0}
    with use_db(str(session), WorkDB.Mode.open) as db:
        items = list(db.work_items)
        source = (tree / cfg.path).read_text()
        info = _keys(cfg, items, source)
        mine = [e for e in equivalents if e.module == cfg.name]
        matched = set()
        for item in items:
            key, op, _line_no, text, end = info[item.job_id]
            skip = None
            if any(p.search(op) for p in cfg.exclude):
                skip = "excluded"
            elif PRAGMA.search(end):
                skip = "pragma"
            elif any(e.line == text and e.operator in (None, op) for e in mine):
                after = mutated_line(source, item.mutations[0])
                for e in mine:
                    if e.line == text and e.operator in (None, op) and e.mutant == after:
                        skip = "equivalent"
                        matched.add(e)
            if skip:
                counts[skip] += 1
                db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED,
                                                      output=skip))
                continue
            hit = cache.get(key)
            if hit and (hit["outcome"] == "killed" or hit.get("tests") == thash):
                counts["cached"] += 1
                db.set_result(item.job_id, WorkResult(
                    worker_outcome=WorkerOutcome.NORMAL, output="cached",
                    test_outcome=hit["outcome"], diff=hit.get("diff", "")))
        pending = db.num_work_items - db.num_results
        total = db.num_work_items
    for e in mine:
        if e not in matched:
            log(f"  note: equivalent.toml entry matches no mutant (re-judge it): {e.line!r} -> "
                f"{e.mutant!r}")
    log(f"  {total} mutants: {counts['excluded']} excluded operators, {counts['pragma']} "
        f"'pragma: no mutate', {counts['equivalent']} listed equivalent, {counts['cached']} "
        f"cached; {pending} to run")
    if list_only:
        return {"module": cfg.name, "total": total, "pending": pending, **counts}

    if pending and cfg.fork_server:
        with fork_server(tree, env, sock):
            # the unmutated tests must pass under the server too, or every mutant would die
            base = subprocess.run(command, shell=True, cwd=tree, env=env, capture_output=True,
                                  text=True)
            if base.returncode != 0:
                raise UsageError(f"{cfg.name}: the unmutated tests fail under the fork server "
                                 "(set fork_server = false for this module): "
                                 + " | ".join(base.stdout.strip().splitlines()[-3:]))
            _cosmic(tree, "exec", str(conf), str(session), env=env)
    elif pending:
        _cosmic(tree, "exec", str(conf), str(session), env=env)

    summary = {"module": cfg.name, "total": total, **counts, "killed": 0, "survived": 0,
               "incompetent": 0, "survivors": []}
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            outcome = _outcome(result)
            if outcome is None:
                continue
            if outcome == "incompetent":
                summary["incompetent"] += 1
                continue
            key, op, line_no, text, _ = info[item.job_id]
            if outcome == "killed":
                summary["killed"] += 1
                cache[key] = {"outcome": "killed"}
            else:
                summary["survived"] += 1
                cache[key] = {"outcome": "survived", "tests": thash, "diff": result.diff or ""}
                summary["survivors"].append({"line": line_no, "operator": op, "code": text,
                                             "diff": result.diff or ""})
    cache_file.write_text(json.dumps(cache, indent=0, sort_keys=True))
    scored = summary["killed"] + summary["survived"]
    summary["kill_rate"] = summary["killed"] / scored if scored else float("nan")
    summary["survivors"].sort(key=lambda s: s["line"])
    write_report(cfg, summary)
    return summary


def write_report(cfg: ModuleConfig, s: dict) -> None:
    out = [f"# Mutation testing: simstudy/{cfg.name}", "",
           f"killed {s['killed']} / {s['killed'] + s['survived']} "
           f"({100 * s['kill_rate']:.1f}%), survived {s['survived']}, incompetent "
           f"{s['incompetent']}; not run: {s['excluded']} excluded operators, {s['pragma']} "
           f"pragma, {s['equivalent']} listed equivalent", ""]
    for sv in s["survivors"]:
        out += [f"## line {sv['line']}: {sv['operator']}", "", "```diff", sv["diff"].strip(),
                "```", ""]
    (WORK / f"{cfg.slug}.report.md").write_text("\n".join(out))


def print_summary(rows: list[dict]) -> None:
    print("\n| module | mutants | not run (excluded / pragma / equivalent) | killed | survived "
          "| incompetent | kill rate |")
    print("|---|---|---|---|---|---|---|")
    for s in rows:
        rate = f"{100 * s['kill_rate']:.1f}%" if s["kill_rate"] == s["kill_rate"] else "-"
        print(f"| {s['module']} | {s['total']} | {s['excluded']} / {s['pragma']} / "
              f"{s['equivalent']} | {s['killed']} | {s['survived']} | {s['incompetent']} "
              f"| {rate} |")
    for s in rows:
        for sv in s["survivors"]:
            print(f"SURVIVED simstudy/{s['module']}:{sv['line']} {sv['operator']}: {sv['code']}")
    print(f"\nreports: {WORK.relative_to(ROOT)}/<module>.report.md (diff of every survivor)")


def run_all(cfgs, equivalents, fresh, list_only, jobs) -> list[dict]:
    """Run the modules, ``jobs`` at a time; lines are prefixed by the module when parallel."""
    from concurrent.futures import ThreadPoolExecutor

    if jobs < 1:
        raise UsageError(f"--jobs: must be >= 1, got {jobs}")

    def one(cfg):
        def log(msg):
            print(msg if jobs == 1 else f"[{cfg.name}] {msg.strip()}", flush=True)

        log(f"{cfg.name}:")
        return run_module(cfg, equivalents, fresh, list_only, log)

    if jobs == 1:
        return [one(c) for c in cfgs]
    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(one, cfgs))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mutation.run", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--module", action="append", default=[],
                        help="path under simstudy/ (repeatable); default: every module")
    parser.add_argument("--fresh", action="store_true", help="ignore the cache")
    parser.add_argument("--list", action="store_true", help="count mutants, run nothing")
    parser.add_argument("--jobs", type=int, default=1,
                        help="modules mutated side by side (each in its own tree)")
    args = parser.parse_args(argv)
    try:
        config = load_config()
        names = [m.removeprefix("simstudy/") for m in args.module] or list(config)
        unknown = [m for m in names if m not in config]
        if unknown:
            raise UsageError(f"--module: unknown module {unknown[0]!r}; configured: "
                             f"{', '.join(config)} (add it to {CONFIG.relative_to(ROOT)})")
        equivalents = load_equivalents()
        if shutil.which("git") is None:
            raise UsageError("git is needed to list the files of the tree")
        rows = run_all([config[n] for n in names], equivalents, args.fresh, args.list,
                       args.jobs)
    except UsageError as exc:
        print(f"mutate: {exc}", file=sys.stderr)
        return 2
    if args.list:
        for r in rows:
            print(f"{r['module']}: {r['total']} mutants, {r['pending']} to run")
        return 0
    print_summary(rows)
    return 1 if any(r["survived"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
