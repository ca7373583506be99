"""Study specs: TOML parsing, validation and expansion into conditions and tasks.

A study file (``studies/<name>.toml``) names a true design, a grid of sample sizes, a number of
replications and one or more fitted configurations (``[[fit]]``), each run under one or more
protocols. Everything is validated before anything runs, and every problem of a file is
reported at once: :class:`SpecError` names the file and, for each problem, the key path and
what is allowed. The user documentation of the format is ``docs/studies.md``.

Format (every key not listed is an error)::

    [study]
    name = "topk_over"        # required; must equal the file stem (at most 100 bytes)
    description = "..."       # optional
    root_seed = 2024          # required, integer >= 0
    replications = 40         # required, integer >= 1
    metrics = ["D2", "hellinger", "err_a_1"]   # optional: metrics the reports focus on
    [design]
    name = "T"                # a named design: "T" or "S" ...
    K = 2                     # ... with an optional true-K override (design T only)
    # or an inline design: name (a free label, default "inline") plus
    # [design.params] beta0, beta1, a, b, v (variances), K, ref (0-based, default 0)
    # [design.inputs] law = "uniform", d, low, high
    [n_grid]
    min = 1000                # log-spaced integers (rounded; must be distinct) ...
    max = 100000
    num = 20
    # values = [1000, 3000]   # ... or an explicit list (distinct, >= 2)
    [em]                      # optional overrides of the protocols' settings, for every fit
    tol = 1e-8                # > 0
    grad_tol = 1e-6           # > 0
    max_iter = 5000           # >= 1
    acceleration = "squarem"  # or "none", "lbfgs", "newton" (lbfgs, newton need grad_tol)
    var_floor = 1e-6          # > 0
    max_seconds = 600         # > 0: per-fit time budget; a fit that runs out is stored with
                              # status "timeout" (needs an estimator with this option)
    [[fit]]                   # one or more
    label = "over"            # required, unique
    true_K = 1                # optional, named design T only: this fit's true model has this K
    k = 4                     # required: fitted experts, k = k* + len(extra_atoms)
    K = 3                     # required: fitted K, 1 <= K <= k
    extra_atoms = [1]         # true experts (numbered from 1) that get one extra atom per
                              # entry ([1, 1]: two on expert 1); never the reference expert
    init = "near_truth"       # or "data"
    init_noise = 0.1          # optional (>= 0): overrides the protocol's noise scale
    n_init = 5                # optional (>= 1): overrides the protocol's number of starts
    beta1_bound = 20.0        # optional (> 0): bound |beta1_i| <= B in the fit (needs an
                              # estimator with the option beta1_bound)
    protocols = ["papers", "strict"]   # required, at least one of papers, strict,
                              # shrinking_strict, fixed_tol (simstudy.estimation.protocols)
    [limits]                  # optional: raise the size limits on purpose (LIMITS)
    replications = 100000
    n_values = 2000
    tasks = 5000000
    n = 100000000

A *condition* is one (design, n, fit, protocol) combination. Its id is a short sha256 of the
canonical JSON of its content (design parameters and input law, n, fit settings without the
label, protocol, ``[em]`` overrides, root seed): renaming a label or reordering the file leaves
it unchanged, while any change that alters what is computed changes it. ``spec_hash`` hashes the
whole spec (labels and description included; not ``[limits]``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simstudy.estimation.protocols import PROTOCOLS
from simstudy.model.designs import DESIGNS, get_design
from simstudy.model.inputs import UniformBox, input_law_from_dict
from simstudy.model.params import MoEParams

__all__ = [
    "SpecError",
    "DesignSpec",
    "FitSpec",
    "Condition",
    "Task",
    "StudySpec",
    "load_spec",
    "parse_spec",
    "canonical_json",
    "content_hash",
    "PROTOCOLS",
    "INITS",
    "EM_KEYS",
    "METRIC_BASES",
    "LIMITS",
    "MAX_NAME_BYTES",
    "N_MIN",
]

INITS = ("near_truth", "data")
ACCELERATIONS = ("none", "squarem", "lbfgs", "newton")
EM_KEYS = ("tol", "grad_tol", "max_iter", "acceleration", "var_floor", "max_seconds")
# metric names of compute_metrics; per-expert ones take a suffix _j (spec numbering)
METRIC_GLOBAL = ("D1", "D2", "hellinger", "tv")
METRIC_PER_EXPERT = ("err_beta1", "err_a", "err_b", "err_v", "mass", "cell_size")
METRIC_BASES = METRIC_GLOBAL + METRIC_PER_EXPERT
#: default size limits; a spec raises one on purpose in its [limits] table
LIMITS = {"replications": 10_000, "n_values": 1_000, "tasks": 1_000_000, "n": 10_000_000}
#: a study name is a file name: the store adds ".<time>-<i>.old.sqlite" (< 40 bytes) to it
MAX_NAME_BYTES = 100
#: the smallest sample size the estimator fits (it needs two data points)
N_MIN = 2

_SECTIONS = {
    "study": ("name", "description", "root_seed", "replications", "metrics"),
    "design": ("name", "K", "params", "inputs"),
    "n_grid": ("min", "max", "num", "values"),
    "em": EM_KEYS,
    "fit": ("label", "true_K", "k", "K", "extra_atoms", "init", "init_noise", "n_init",
            "beta1_bound", "protocols"),
    "limits": tuple(LIMITS),
}
_TOP = ("study", "design", "n_grid", "em", "fit", "limits")
_PARAM_KEYS = ("beta0", "beta1", "a", "b", "v", "K", "ref")
_INPUT_KEYS = ("law", "d", "low", "high")


class SpecError(ValueError):
    """An invalid study spec.

    ``file`` and ``key`` say where (either may be None); ``reason`` is the message without
    them; ``problems`` lists every problem found (each a SpecError; one for a single one), and
    ``detail`` is the message without the file name.
    """

    def __init__(self, message: str, file: str | Path | None = None, key: str | None = None,
                 problems: list[SpecError] | None = None):
        self.file = None if file is None else str(file)
        self.key = key
        self.reason = message
        self.problems = list(problems) if problems else [self]
        self.detail = f"key '{key}': {message}" if key else message
        where = ": ".join(p for p in (self.file, f"key '{key}'" if key else None) if p)
        super().__init__(f"{where}: {message}" if where else message)

    @classmethod
    def combine(cls, errors: list[SpecError], file) -> SpecError:
        """One error that reports every problem of ``errors`` (in order)."""
        if len(errors) == 1:
            return errors[0]
        text = f"{len(errors)} problems: " + "; ".join(e.detail for e in errors)
        err = cls(text, file, None, problems=errors)
        err.key = errors[0].key
        return err


# -- hashing -------------------------------------------------------------------------------------
def canonical_json(obj) -> str:
    """Deterministic JSON (sorted keys, no spaces, NaN refused) used for every content hash."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def content_hash(obj, length: int | None = None) -> str:
    """sha256 hex digest of :func:`canonical_json` of ``obj``, optionally truncated."""
    digest = hashlib.sha256(canonical_json(obj).encode()).hexdigest()
    return digest if length is None else digest[:length]


# -- typed access that records problems ----------------------------------------------------------
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", list: "an array",
               dict: "a table", bool: "a boolean"}


class _Bad:
    """The value of a key that had a problem (already recorded): checks that need it skip."""

    def __bool__(self):
        return False

    def __repr__(self):
        return "<invalid>"


BAD = _Bad()


def _ok(*values) -> bool:
    return not any(v is BAD for v in values)


def _given(value) -> bool:
    """A key that was present and valid."""
    return value is not None and value is not BAD


class _Problems:
    """Every problem found in one file."""

    def __init__(self, file: Path):
        self.file = file
        self.errors: list[SpecError] = []

    def add(self, key: str | None, message: str) -> _Bad:
        if not any(e.key == key and e.reason == message for e in self.errors):
            self.errors.append(SpecError(message, self.file, key))
        return BAD

    def raise_if_any(self) -> None:
        if self.errors:
            raise SpecError.combine(self.errors, self.file)


class _Reader:
    """Reads one TOML table; a bad key is recorded and read as ``BAD``."""

    def __init__(self, problems: _Problems, path: str, data):
        self.problems, self.path = problems, path
        self.is_table = isinstance(data, dict)
        self.data = data if self.is_table else {}
        if not self.is_table:
            problems.add(path or None, f"expected a table, got {_describe(data)}")

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str | None, message: str) -> _Bad:
        return self.problems.add(self.key(name) if name else self.path or None, message)

    def check_keys(self, allowed) -> None:
        for name in self.data:
            if name not in allowed:
                self.error(name, f"unknown key; allowed keys: {', '.join(sorted(allowed))}")

    def get(self, name, kind, *, required=False, default=None):
        if not self.is_table:
            return BAD
        if name not in self.data:
            if required:
                return self.error(name, f"missing required key (expected {_TYPE_NAMES[kind]})")
            return default
        value = self.data[name]
        ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if not ok:
            return self.error(name, f"expected {_TYPE_NAMES[kind]}, got {_describe(value)}")
        if kind is float and not math.isfinite(value):
            return self.error(name, f"expected a finite number, got {value}")
        return value

    def int_list(self, name, *, required=False, default=None):
        value = self.get(name, list, required=required, default=default)
        if not value:
            return value
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, int):
                return self.error(name, f"expected an array of integers, got {_describe(item)} "
                                  f"at [{i}]")
        return list(value)

    def str_list(self, name, *, required=False, default=None):
        value = self.get(name, list, required=required, default=default)
        if not value:
            return value
        for i, item in enumerate(value):
            if not isinstance(item, str):
                return self.error(name, f"expected an array of strings, got {_describe(item)} "
                                  f"at [{i}]")
        return list(value)

    def number_array(self, name, ndim: int):
        """A 1-d or 2-d array of finite numbers (no booleans, no strings); BAD otherwise."""
        value = self.get(name, list, required=True)
        if value is BAD:
            return BAD
        rows = value if ndim == 2 else [value]
        for i, row in enumerate(rows):
            if ndim == 2 and not isinstance(row, list):
                return self.error(name, f"expected an array of arrays (k rows of d numbers), got "
                                  f"{_describe(row)} at [{i}]")
            for j, x in enumerate(row):
                at = f"[{i}][{j}]" if ndim == 2 else f"[{j}]"
                if isinstance(x, bool) or not isinstance(x, int | float):
                    return self.error(name, f"expected numbers, got {_describe(x)} at {at}")
                if not math.isfinite(x):
                    return self.error(name, f"expected finite numbers, got {x} at {at}")
        if ndim == 2 and len({len(r) for r in rows}) > 1:
            return self.error(name, f"rows of different lengths {[len(r) for r in rows]}")
        return [[float(x) for x in r] for r in rows] if ndim == 2 else [float(x) for x in value]


def _describe(value) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    for kind in (int, float, str, list, dict):
        if isinstance(value, kind):
            return f"{_TYPE_NAMES[kind]} ({value!r})" if kind is not dict else "a table"
    return type(value).__name__


# -- the parsed spec -----------------------------------------------------------------------------
@dataclass(frozen=True)
class DesignSpec:
    """The true model of a study: a name (label only), parameters and input law."""

    name: str
    params: MoEParams
    inputs: UniformBox

    def content(self) -> dict:
        """What determines the data: parameters and input law (not the name)."""
        law = self.inputs.to_dict()
        law.update(low=float(law["low"]), high=float(law["high"]))
        return {"params": self.params.to_dict(), "inputs": law}

    @property
    def hash(self) -> str:
        return content_hash(self.content())


@dataclass(frozen=True)
class FitSpec:
    """One ``[[fit]]`` entry. ``extra_atoms`` use the spec numbering (1-based)."""

    label: str
    k: int
    K: int
    extra_atoms: tuple[int, ...] = ()
    init: str = "near_truth"
    init_noise: float | None = None
    n_init: int | None = None
    protocols: tuple[str, ...] = ("strict",)
    true_K: int | None = None
    beta1_bound: float | None = None
    design: DesignSpec | None = field(default=None, repr=False, compare=False)

    def content(self) -> dict:
        """Fit settings that change the computation (no label, no protocol list)."""
        out = {
            "k": self.k,
            "K": self.K,
            "extra_atoms": list(self.extra_atoms),
            "init": self.init,
            "init_noise": self.init_noise,
            "n_init": self.n_init,
        }
        if self.true_K is not None:  # only when given, so other ids do not move
            out["true_K"] = self.true_K
        if self.beta1_bound is not None:  # likewise
            out["beta1_bound"] = self.beta1_bound
        return out


@dataclass(frozen=True)
class Condition:
    """One (design, n, fit, protocol) combination of a study."""

    condition_id: str
    label: str
    protocol: str
    design_name: str
    true_K: int
    n: int
    fit: FitSpec
    content: dict = field(repr=False)

    @property
    def k(self) -> int:
        return self.fit.k

    @property
    def K(self) -> int:
        return self.fit.K

    @property
    def init(self) -> str:
        return self.fit.init


@dataclass(frozen=True)
class Task:
    """One replication of one condition: all a worker needs, as plain picklable data.

    The data of replication ``rep`` at size ``n`` depends only on (root seed, design content,
    rep, n), so every fit of that replication sees the same data (common random numbers); the
    fit's own randomness depends on (root seed, condition id, rep).
    """

    study: str
    condition_id: str
    label: str
    protocol: str
    design_name: str
    design: dict
    n: int
    rep: int
    fit: dict
    em: dict
    root_seed: int
    design_hash: str

    @property
    def key(self) -> tuple[str, int]:
        return (self.condition_id, self.rep)

    def truth(self) -> MoEParams:
        return MoEParams.from_dict(self.design["params"])

    def inputs(self) -> UniformBox:
        return input_law_from_dict(self.design["inputs"])

    def data_seed(self) -> np.random.SeedSequence:
        from simstudy.engine.seeds import data_seed

        return data_seed(self.root_seed, self.design_hash, self.rep, self.n)

    def fit_seed(self) -> np.random.SeedSequence:
        from simstudy.engine.seeds import fit_seed

        return fit_seed(self.root_seed, self.condition_id, self.rep)


@dataclass(frozen=True)
class StudySpec:
    """A validated study; :meth:`conditions` and :meth:`iter_tasks` expand it."""

    path: Path
    name: str
    description: str
    root_seed: int
    replications: int
    design: DesignSpec
    n_values: tuple[int, ...]
    em: dict
    fits: tuple[FitSpec, ...]
    metrics: tuple[str, ...] | None = None
    spec_hash: str = ""
    limits: dict = field(default_factory=lambda: dict(LIMITS), compare=False, repr=False)

    def content(self) -> dict:
        """The whole spec as canonical data (what ``spec_hash`` hashes)."""
        return {
            "name": self.name,
            "description": self.description,
            "root_seed": self.root_seed,
            "replications": self.replications,
            "design": {"name": self.design.name, **self.design.content()},
            "n_values": list(self.n_values),
            "em": self.em,
            "fits": [{"label": f.label, "protocols": list(f.protocols), **f.content()}
                     for f in self.fits],
            "metrics": None if self.metrics is None else list(self.metrics),
        }

    def fit_design(self, fit: FitSpec) -> DesignSpec:
        """The true design of a fit: the study's, or its own true-K variant."""
        return self.design if fit.design is None else fit.design

    @functools.cached_property
    def _conditions(self) -> tuple[Condition, ...]:
        out = []
        for fit in self.fits:
            design = self.fit_design(fit)
            design_content = design.content()
            for protocol in fit.protocols:
                for n in self.n_values:
                    content = {
                        "design": design_content,
                        "n": n,
                        "fit": fit.content(),
                        "protocol": protocol,
                        # the protocol's resolved settings are part of the condition, so a
                        # change of a protocol's tolerances changes the ids and the store
                        # refuses to mix old and new fits
                        "protocol_settings": _protocol_settings(
                            protocol, n, fit.content()["k"] > design.params.k
                        ),
                        "em": self.em,
                        "root_seed": self.root_seed,
                    }
                    out.append(
                        Condition(
                            condition_id=content_hash(content, 12),
                            label=fit.label,
                            protocol=protocol,
                            design_name=design.name,
                            true_K=design.params.K,
                            n=n,
                            fit=fit,
                            content=content,
                        )
                    )
        return tuple(out)

    def conditions(self) -> list[Condition]:
        """Every condition, in file order: fits, then protocols, then n."""
        return list(self._conditions)

    def condition_ids(self, max_n: int | None = None) -> frozenset[str]:
        return frozenset(c.condition_id for c in self._staged(max_n))

    def condition(self, condition_id: str) -> Condition:
        """Look a condition up by id (a unique prefix is accepted)."""
        matches = [c for c in self._conditions if c.condition_id.startswith(condition_id)]
        if len(matches) != 1:
            why = "no condition" if not matches else f"{len(matches)} conditions"
            raise SpecError(f"{why} with id {condition_id!r}", self.path, "condition")
        return matches[0]

    def make_task(self, cond: Condition, rep: int) -> Task:
        fit = cond.fit.content()
        # the estimator numbers experts from 0
        fit["extra_atoms"] = [j - 1 for j in cond.fit.extra_atoms]
        return Task(
            study=self.name,
            condition_id=cond.condition_id,
            label=cond.label,
            protocol=cond.protocol,
            design_name=cond.design_name,
            design=cond.content["design"],
            n=cond.n,
            rep=rep,
            fit=fit,
            em=dict(self.em),
            root_seed=self.root_seed,
            design_hash=content_hash(cond.content["design"]),
        )

    def _staged(self, max_n: int | None):
        return [c for c in self._conditions if max_n is None or c.n <= max_n]

    def n_tasks(self, max_reps: int | None = None, max_n: int | None = None) -> int:
        """Number of tasks (of replications below ``max_reps`` and n <= ``max_n`` when given)."""
        reps = self.replications if max_reps is None else min(max_reps, self.replications)
        return len(self._staged(max_n)) * reps

    def iter_tasks(self, max_reps: int | None = None,
                   max_n: int | None = None) -> Iterator[Task]:
        """Every task, made one at a time: conditions x replications, replication-major.

        Replication-major order means a run stopped part-way (a time limit, a killed session)
        leaves whole replications of every condition, a balanced design across n and fits,
        rather than some conditions complete and others empty. ``max_reps`` and ``max_n`` stage
        a run: only replications below ``max_reps`` of the conditions with n <= ``max_n``.
        """
        reps = self.replications if max_reps is None else min(max_reps, self.replications)
        conditions = self._staged(max_n)
        for r in range(reps):
            for c in conditions:
                yield self.make_task(c, r)

    def tasks(self) -> list[Task]:
        """Every task as a list (see :meth:`iter_tasks`, which a large study should use)."""
        return list(self.iter_tasks())


def _protocol_settings(protocol: str, n: int, over_specified: bool) -> dict:
    from simstudy.estimation import protocol_options

    return protocol_options(protocol, n, over_specified=over_specified)


# -- parsing -------------------------------------------------------------------------------------
def load_spec(path, *, estimator_checks: bool = True) -> StudySpec:
    """Read and validate a study TOML file.

    Parameters
    ----------
    path : path-like
    estimator_checks : bool, default=True
        Also check every (fit, protocol) against the estimator's options (e.g. "lbfgs" needs
        a grad_tol). Off for runs with a custom task function, which brings its own fit.

    Raises
    ------
    SpecError
        For a missing or unreadable file, a file that is not TOML text, or any invalid entry;
        every problem is reported at once, each naming the key path and what is allowed.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SpecError("no such spec file", path) from None
    except IsADirectoryError:
        raise SpecError("is a folder, not a study file", path) from None
    except OSError as exc:
        raise SpecError(f"cannot read the file ({exc.strerror})", path) from None
    nul = data.find(b"\0")
    if nul >= 0:
        raise SpecError(f"not a text file (a NUL byte at offset {nul}); a study file is TOML "
                        "text", path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"not a UTF-8 text file (invalid byte at offset {exc.start}); a study "
                        "file is TOML text", path) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"invalid TOML: {exc}", path) from None
    return parse_spec(raw, path, estimator_checks=estimator_checks)


def parse_spec(raw: dict, path, *, estimator_checks: bool = True) -> StudySpec:
    """Validate an already-parsed TOML document (``path`` names the file in errors)."""
    path = Path(path)
    P = _Problems(path)
    top = _Reader(P, "", raw)
    top.check_keys(_TOP)
    limits = _parse_limits(_Reader(P, "limits", raw.get("limits", {})))
    for section in ("study", "design", "n_grid"):
        if section not in raw:
            P.add(section, f"missing required section [{section}]")
    study = _Reader(P, "study", raw.get("study", {}))
    study.check_keys(_SECTIONS["study"])
    name = study.get("name", str, required="study" in raw)
    if _given(name) and name != path.stem:
        study.error("name", f"must equal the file stem {path.stem!r}, got {name!r}")
    elif _given(name) and len(name.encode()) > MAX_NAME_BYTES:
        study.error("name", f"is {len(name.encode())} bytes long; at most {MAX_NAME_BYTES} "
                    "(the name is part of the store's file names); rename the file")
    description = study.get("description", str, default="")
    root_seed = study.get("root_seed", int, required="study" in raw)
    if _given(root_seed) and root_seed < 0:
        study.error("root_seed", f"must be >= 0, got {root_seed}")
    replications = study.get("replications", int, required="study" in raw)
    if _given(replications):
        if replications < 1:
            replications = study.error("replications", f"must be >= 1, got {replications}")
        elif replications > limits["replications"]:
            replications = study.error(
                "replications", f"{replications} replications exceed the limit of "
                f"{limits['replications']}; raise it on purpose with [limits] replications = "
                f"{replications}")

    design = (_parse_design(_Reader(P, "design", raw["design"])) if "design" in raw else BAD)
    n_values = (_parse_grid(_Reader(P, "n_grid", raw["n_grid"]), limits) if "n_grid" in raw
                else BAD)
    em = _parse_em(_Reader(P, "em", raw.get("em", {})))

    fits_raw = raw.get("fit")
    fits = BAD
    if fits_raw is None:
        P.add("fit", "missing required [[fit]] entries (at least one)")
    elif not isinstance(fits_raw, list) or not fits_raw:
        P.add("fit", "expected an array of tables [[fit]] (at least one)")
    else:
        parsed = [_parse_fit(_Reader(P, f"fit[{i}]", f), design, raw.get("design", {}))
                  for i, f in enumerate(fits_raw)]
        if _ok(*parsed):
            fits = tuple(parsed)
            _check_fits_distinct(P, fits)

    metrics = None
    metrics_list = study.str_list("metrics")
    if metrics_list and design is not BAD:
        for m in metrics_list:
            if not _known_metric(m, design.params.k):
                study.error("metrics",
                            f"unknown metric {m!r}; allowed: {', '.join(METRIC_GLOBAL)} and "
                            f"{', '.join(METRIC_PER_EXPERT)} (optionally suffixed _j, "
                            f"j = 1..{design.params.k})")
        metrics = tuple(metrics_list)
    elif _given(metrics_list):
        metrics = tuple(metrics_list)

    if _ok(fits, n_values, replications) and replications:
        n_tasks = sum(len(f.protocols) for f in fits) * len(n_values) * replications
        if n_tasks > limits["tasks"]:
            study.error("replications",
                        f"{n_tasks // replications} conditions x {replications} replications = "
                        f"{n_tasks} tasks exceed the limit of {limits['tasks']}; raise it on "
                        f"purpose with [limits] tasks = {n_tasks}")
    P.raise_if_any()

    spec = StudySpec(path=path, name=name, description=description, root_seed=root_seed,
                     replications=replications, design=design, n_values=n_values, em=em,
                     fits=fits, metrics=metrics, limits=limits)
    object.__setattr__(spec, "spec_hash", content_hash(spec.content(), 16))
    if estimator_checks:
        _check_estimator(P, spec)
        P.raise_if_any()
    return spec


def _parse_limits(r: _Reader) -> dict:
    r.check_keys(_SECTIONS["limits"])
    limits = dict(LIMITS)
    for key in LIMITS:
        value = r.get(key, int)
        if _given(value):
            if value < 1:
                r.error(key, f"must be >= 1, got {value}")
            else:
                limits[key] = value
    return limits


def _check_fits_distinct(P: _Problems, fits) -> None:
    labels = [f.label for f in fits]
    for i, label in enumerate(labels):
        if labels.index(label) != i:
            P.add(f"fit[{i}].label", f"duplicate label {label!r}; labels must be unique")
    contents = [canonical_json(f.content()) for f in fits]
    for i, c in enumerate(contents):
        j = contents.index(c)
        if j != i and set(fits[i].protocols) & set(fits[j].protocols):
            P.add(f"fit[{i}]", f"fit {fits[i].label!r} has the same settings as fit "
                  f"{fits[j].label!r} under a shared protocol (their conditions would coincide)")


def _check_estimator(P: _Problems, spec: StudySpec) -> None:
    """Every (fit, protocol) must be a valid estimator configuration (before anything runs)."""
    from simstudy.engine.task import check_fit_options

    fit_keys = set(_SECTIONS["fit"])
    seen = set()
    for cond in spec.conditions():
        if (cond.label, cond.protocol) in seen:
            continue  # the options' validity does not depend on n
        seen.add((cond.label, cond.protocol))
        problem = check_fit_options(spec.make_task(cond, 0))
        if problem is None:
            continue
        option, message = problem
        i = spec.fits.index(cond.fit)
        if option in spec.em:
            key = f"em.{option}"
        elif option in fit_keys and option in ("init_noise", "n_init", "init", "k", "K",
                                               "extra_atoms", "beta1_bound"):
            key = f"fit[{i}].{option}"
        else:
            key = f"fit[{i}]"
        P.add(key, f"fit {cond.label!r} with protocol {cond.protocol!r}: {message}")


def _known_metric(name: str, k_true: int) -> bool:
    if name in METRIC_BASES:
        return True
    base, _, j = name.rpartition("_")
    return base in METRIC_PER_EXPERT and j.isdigit() and 1 <= int(j) <= k_true


def _parse_design(r: _Reader):
    r.check_keys(_SECTIONS["design"])
    if not r.is_table:
        return BAD
    inline = "params" in r.data or "inputs" in r.data
    if not inline:
        name = r.get("name", str, required=True)
        K = r.get("K", int)
        if not name:
            return BAD
        if name not in DESIGNS:
            return r.error("name", f"unknown design {name!r}; allowed: "
                           f"{', '.join(sorted(DESIGNS))} (or inline tables [design.params] "
                           "and [design.inputs])")
        if K is BAD:
            return BAD
        try:
            d = get_design(name, K)
        except ValueError as exc:
            return r.error("K", str(exc))
        return DesignSpec(name=d.name, params=d.params, inputs=d.inputs)
    ok = True
    for part in ("params", "inputs"):
        if part not in r.data:
            ok = r.error(part, "an inline design needs both [design.params] and "
                         "[design.inputs]")
    name = r.get("name", str, default="inline")
    if name in DESIGNS:
        ok = r.error("name", f"{name!r} names a built-in design; give an inline design "
                     "another name or drop [design.params]/[design.inputs]")
    if "K" in r.data:
        ok = r.error("K", "with an inline design put K in [design.params]")
    inputs = _parse_inputs(_Reader(r.problems, "design.inputs", r.data["inputs"])) \
        if "inputs" in r.data else BAD
    params = _parse_params(_Reader(r.problems, "design.params", r.data["params"]),
                           None if inputs is BAD else inputs.d) if "params" in r.data else BAD
    if not (ok and _ok(name, inputs, params)):
        return BAD
    if inputs.d != params.d:
        return r.problems.add("design.inputs.d", f"the input law has d={inputs.d} but the "
                              f"parameters have d={params.d}")
    return DesignSpec(name=name, params=params, inputs=inputs)


def _majority(sizes: dict[str, int | None]) -> int | None:
    """The value most arrays agree on (ties: the first one listed)."""
    values = [v for v in sizes.values() if v is not None]
    if not values:
        return None
    return max(dict.fromkeys(values), key=values.count)


def _parse_params(pr: _Reader, d_inputs: int | None):
    pr.check_keys(_PARAM_KEYS)
    if not pr.is_table:
        return BAD
    arrays = {"beta0": pr.number_array("beta0", 1), "beta1": pr.number_array("beta1", 2),
              "a": pr.number_array("a", 2), "b": pr.number_array("b", 1),
              "v": pr.number_array("v", 1)}
    K = pr.get("K", int, required=True)
    ref = pr.get("ref", int, default=0)
    if not _ok(*arrays.values(), K, ref):
        return BAD
    # blame the array that disagrees with the others, not the first one checked
    k_sizes = {name: len(value) for name, value in arrays.items()}
    k = _majority(k_sizes)
    bad = False
    for name, size in k_sizes.items():
        if size != k:
            bad = pr.error(name, f"has {size} entries but the other parameters describe "
                           f"k = {k} experts")
    d_sizes = {"beta1": len(arrays["beta1"][0]) if arrays["beta1"] else None,
               "a": len(arrays["a"][0]) if arrays["a"] else None}
    d = _majority({**d_sizes, "inputs": d_inputs} if d_inputs is not None else d_sizes)
    for name, size in d_sizes.items():
        if size is not None and size != d:
            bad = pr.error(name, f"has rows of length {size} but the design has d = {d} inputs")
    if any(x <= 0 for x in arrays["v"]):
        bad = pr.error("v", f"variances must be > 0, got {arrays['v']}")
    if bad is BAD:
        return BAD
    try:
        return MoEParams.from_dict({**arrays, "K": K, "ref": ref})
    except ValueError as exc:
        key = str(exc).split(":", 1)[0]
        return pr.error(key if key in _PARAM_KEYS else None, str(exc))


def _parse_inputs(ir: _Reader):
    ir.check_keys(_INPUT_KEYS)
    law = ir.get("law", str, default="uniform")
    if _given(law) and law != "uniform":
        law = ir.error("law", f"unknown input law {law!r}; allowed: uniform")
    d = ir.get("d", int, required=True)
    low = ir.get("low", float, required=True)
    high = ir.get("high", float, required=True)
    if not _ok(law, d, low, high):
        return BAD
    try:
        return UniformBox(d, low, high)
    except ValueError as exc:
        key = str(exc).split(":", 1)[0]
        return ir.error(key if key in _INPUT_KEYS else None, str(exc))


def _parse_grid(r: _Reader, limits: dict):
    r.check_keys(_SECTIONS["n_grid"])
    if not r.is_table:
        return BAD
    n_max = limits["n"]

    def too_big(key, n):
        return r.error(key, f"sample size {n} exceeds the limit of {n_max}; raise it on "
                       f"purpose with [limits] n = {n}")

    if "values" in r.data:
        for other in ("min", "max", "num"):
            if other in r.data:
                r.error(other, "give either values = [...] or min/max/num, not both")
        values = r.int_list("values", required=True)
        if values is BAD:
            return BAD
        if not values:
            return r.error("values", "needs at least one sample size")
        if len(values) > limits["n_values"]:
            return r.error("values", f"{len(values)} sample sizes exceed the limit of "
                           f"{limits['n_values']}; raise it on purpose with [limits] n_values = "
                           f"{len(values)}")
        small = [n for n in values if n < N_MIN]
        if small:
            return r.error("values", f"sample sizes must be >= {N_MIN} (a fit needs at least "
                           f"{N_MIN} data points), got {small[0]}")
        if max(values) > n_max:
            return too_big("values", max(values))
        if len(set(values)) != len(values):
            return r.error("values", f"duplicate sample sizes in {values}")
        return tuple(sorted(values))
    lo = r.get("min", int, required=True)
    hi = r.get("max", int, required=True)
    num = r.get("num", int, required=True)
    if _given(lo) and lo < N_MIN:
        lo = r.error("min", f"sample sizes must be >= {N_MIN} (a fit needs at least {N_MIN} "
                     f"data points), got {lo}")
    if _given(hi) and hi > n_max:
        hi = too_big("max", hi)
    if _given(num):
        if num < 1:
            num = r.error("num", f"must be >= 1, got {num}")
        elif num > limits["n_values"]:
            # checked before anything is allocated
            num = r.error("num", f"{num} sample sizes exceed the limit of {limits['n_values']}; "
                          f"raise it on purpose with [limits] n_values = {num}")
    if not _ok(lo, hi, num):
        return BAD
    if hi < lo:
        return r.error("max", f"must be >= min = {lo}, got {hi}")
    if num == 1:
        if lo != hi:
            return r.error("num", "num = 1 needs min == max")
        return (lo,)
    grid = np.unique(np.rint(np.geomspace(lo, hi, num)).astype(np.int64))
    if grid.size != num:
        return r.error("num", f"{num} log-spaced integers between {lo} and {hi} are not "
                       "distinct; use fewer values or a wider range")
    return tuple(int(n) for n in grid)


def _parse_em(r: _Reader) -> dict:
    r.check_keys(_SECTIONS["em"])
    em = {}
    for key in ("tol", "grad_tol", "var_floor", "max_seconds"):
        value = r.get(key, float)
        if _given(value):
            if value <= 0:
                r.error(key, f"must be > 0, got {value}")
            else:
                em[key] = value
    max_iter = r.get("max_iter", int)
    if _given(max_iter):
        if max_iter < 1:
            r.error("max_iter", f"must be >= 1, got {max_iter}")
        else:
            em["max_iter"] = max_iter
    acc = r.get("acceleration", str)
    if _given(acc):
        if acc not in ACCELERATIONS:
            r.error("acceleration", f"unknown acceleration {acc!r}; allowed: "
                    f"{', '.join(ACCELERATIONS)}")
        else:
            em["acceleration"] = None if acc == "none" else acc
    return em


def _parse_fit(r: _Reader, design, design_raw):
    r.check_keys(_SECTIONS["fit"])
    if not r.is_table:
        return BAD
    label = r.get("label", str, required=True)
    if label == "":
        label = r.error("label", "must be a non-empty string")
    true_K = r.get("true_K", int)
    fit_design = None
    if _given(true_K):
        if not isinstance(design_raw, dict) or "params" in design_raw:
            true_K = r.error("true_K", "only with a named design; an inline design sets K in "
                             "[design.params]")
        elif isinstance(design_raw.get("name"), str) and design_raw["name"] in DESIGNS:
            try:
                d = get_design(design_raw["name"], true_K)
                fit_design = DesignSpec(name=d.name, params=d.params, inputs=d.inputs)
                design = fit_design
            except ValueError as exc:
                true_K = r.error("true_K", str(exc))
    k = r.get("k", int, required=True)
    K = r.get("K", int, required=True)
    if k is not BAD and k < 1:
        k = r.error("k", f"must be >= 1, got {k}")
    if _ok(k, K) and not 1 <= K <= k:
        K = r.error("K", f"must satisfy 1 <= K <= k = {k}, got K = {K}")
    extra = r.int_list("extra_atoms", default=[])
    if _ok(design, extra, true_K):
        k_true = design.params.k
        ref = design.params.ref + 1
        for j in extra:
            if not 1 <= j <= k_true:
                extra = r.error("extra_atoms", f"true experts are numbered 1..{k_true} (spec "
                                f"numbering), got {j}")
                break
            if j == ref:
                extra = r.error("extra_atoms", f"expert {j} is the reference expert; its cell "
                                "must hold exactly one fitted atom, put extra atoms on other "
                                "experts")
                break
        if _ok(k, extra) and k != k_true + len(extra):
            extra = r.error("extra_atoms", f"k = {k} must equal k* + len(extra_atoms) = "
                            f"{k_true} + {len(extra)}")
    init = r.get("init", str, default="near_truth")
    if _given(init) and init not in INITS:
        init = r.error("init", f"unknown init {init!r}; allowed: {', '.join(INITS)}")
    init_noise = r.get("init_noise", float)
    if _given(init_noise) and init_noise < 0:
        init_noise = r.error("init_noise", f"must be >= 0, got {init_noise}")
    n_init = r.get("n_init", int)
    if _given(n_init) and n_init < 1:
        n_init = r.error("n_init", f"must be >= 1, got {n_init}")
    beta1_bound = r.get("beta1_bound", float)
    if _given(beta1_bound) and beta1_bound <= 0:
        beta1_bound = r.error("beta1_bound", f"must be > 0, got {beta1_bound}")
    protocols = r.str_list("protocols", required=True)
    if protocols == []:
        protocols = r.error("protocols", f"needs at least one protocol; allowed: "
                            f"{', '.join(PROTOCOLS)}")
    elif protocols:
        unknown = [p for p in protocols if p not in PROTOCOLS]
        if unknown:
            protocols = r.error("protocols", f"unknown protocol {unknown[0]!r}; allowed: "
                                f"{', '.join(PROTOCOLS)}")
        elif len(set(protocols)) != len(protocols):
            protocols = r.error("protocols", f"duplicate protocol in {protocols}")
    if not _ok(label, true_K, k, K, extra, init, init_noise, n_init, beta1_bound, protocols,
               design):
        return BAD
    return FitSpec(label=label, k=k, K=K, extra_atoms=tuple(extra), init=init,
                   init_noise=init_noise, n_init=n_init, protocols=tuple(protocols),
                   true_K=true_K, beta1_bound=beta1_bound, design=fit_design)
