"""Study specs: TOML parsing, validation and expansion into conditions and tasks.

A study file (``studies/<name>.toml``) names a true design, a grid of sample sizes, a number of
replications and one or more fitted configurations (``[[fit]]``), each run under one or more
protocols. Everything is validated before anything runs; every problem raises :class:`SpecError`
naming the file, the key path and what is allowed.

Format (every key not listed is an error)::

    [study]
    name = "topk_over"        # required; must equal the file stem
    description = "..."       # optional
    root_seed = 2024          # required, integer >= 0
    replications = 40         # required, integer >= 1
    metrics = ["D2", "hellinger", "err_a_1"]   # optional: metrics the reports focus on
                              # (D1, D2, hellinger, tv, err_beta1, err_a, err_b, err_v, mass,
                              # cell_size, the per-expert ones optionally suffixed _j)
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
    # values = [1000, 3000]   # ... or an explicit list (distinct, >= 1)
    [em]                      # optional overrides of the protocols' settings, for every fit
    tol = 1e-8                # > 0
    grad_tol = 1e-6           # > 0
    max_iter = 5000           # >= 1
    acceleration = "squarem"  # or "none", "lbfgs" (lbfgs needs grad_tol)
    var_floor = 1e-6          # > 0
    [[fit]]                   # one or more
    label = "over"            # required, unique
    true_K = 1                # optional, named design T only: this fit's true model has this K
                              # (a K sweep in one study); default: the [design] one
    k = 4                     # required: fitted experts, k = k* + len(extra_atoms)
    K = 3                     # required: fitted K, 1 <= K <= k
    extra_atoms = [1]         # true experts (numbered from 1 as in the spec) that get one extra
                              # atom per entry ([1, 1]: two extra atoms on expert 1); never the
                              # reference expert
    init = "near_truth"       # or "data"
    init_noise = 0.1          # optional (>= 0): overrides the protocol's noise scale
    n_init = 5                # optional (>= 1): overrides the protocol's number of starts
    beta1_bound = 20.0        # optional (> 0): bound |beta1_i| <= B in the fit (needs an
                              # estimator with the option `beta1_bound`)
    protocols = ["papers", "strict"]   # required, at least one of papers, strict,
                              # shrinking_strict, fixed_tol (simstudy.estimation.protocols)

A *condition* is one (design, n, fit, protocol) combination. Its id is a short sha256 of the
canonical JSON of its content (design parameters and input law, n, fit settings without the
label, protocol, ``[em]`` overrides, root seed): renaming a label or reordering the file leaves
it unchanged, while any change that alters what is computed changes it. ``spec_hash`` hashes the
whole spec (labels and description included).
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
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
    "canonical_json",
    "content_hash",
    "PROTOCOLS",
    "INITS",
    "EM_KEYS",
    "METRIC_BASES",
]

INITS = ("near_truth", "data")
ACCELERATIONS = ("none", "squarem", "lbfgs")
# [em] overrides: key -> (expected type description, validator)
EM_KEYS = ("tol", "grad_tol", "max_iter", "acceleration", "var_floor")
# metric names of compute_metrics; per-expert ones take a suffix _j (spec numbering)
METRIC_GLOBAL = ("D1", "D2", "hellinger", "tv")
METRIC_PER_EXPERT = ("err_beta1", "err_a", "err_b", "err_v", "mass", "cell_size")
METRIC_BASES = METRIC_GLOBAL + METRIC_PER_EXPERT

_SECTIONS = {
    "study": ("name", "description", "root_seed", "replications", "metrics"),
    "design": ("name", "K", "params", "inputs"),
    "n_grid": ("min", "max", "num", "values"),
    "em": EM_KEYS,
    "fit": ("label", "true_K", "k", "K", "extra_atoms", "init", "init_noise", "n_init",
            "beta1_bound", "protocols"),
}
_TOP = ("study", "design", "n_grid", "em", "fit")
_PARAM_KEYS = ("beta0", "beta1", "a", "b", "v", "K", "ref")
_INPUT_KEYS = ("law", "d", "low", "high")


class SpecError(ValueError):
    """An invalid study spec; ``file`` and ``key`` say where (either may be None)."""

    def __init__(self, message: str, file: str | Path | None = None, key: str | None = None):
        self.file = None if file is None else str(file)
        self.key = key
        self.reason = message
        where = ": ".join(p for p in (self.file, f"key '{key}'" if key else None) if p)
        super().__init__(f"{where}: {message}" if where else message)


# -- hashing -------------------------------------------------------------------------------------
def canonical_json(obj) -> str:
    """Deterministic JSON (sorted keys, no spaces, NaN refused) used for every content hash."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def content_hash(obj, length: int | None = None) -> str:
    """sha256 hex digest of :func:`canonical_json` of ``obj``, optionally truncated."""
    digest = hashlib.sha256(canonical_json(obj).encode()).hexdigest()
    return digest if length is None else digest[:length]


# -- typed access with named errors --------------------------------------------------------------
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", list: "an array",
               dict: "a table", bool: "a boolean"}


class _Reader:
    """Reads one TOML table, raising SpecError that names the file and key path."""

    def __init__(self, file: Path, path: str, data):
        self.file, self.path, self.data = file, path, data

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str | None, message: str) -> SpecError:
        return SpecError(message, self.file, self.key(name) if name else self.path or None)

    def check_keys(self, allowed) -> None:
        if not isinstance(self.data, dict):
            raise SpecError(f"expected a table, got {_describe(self.data)}", self.file, self.path)
        for name in self.data:
            if name not in allowed:
                raise self.error(
                    name, f"unknown key; allowed keys: {', '.join(sorted(allowed))}"
                )

    def get(self, name, kind, *, required=False, default=None):
        if name not in self.data:
            if required:
                raise self.error(name, f"missing required key (expected {_TYPE_NAMES[kind]})")
            return default
        value = self.data[name]
        ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if not ok:
            raise self.error(name, f"expected {_TYPE_NAMES[kind]}, got {_describe(value)}")
        if kind is float and not math.isfinite(value):
            raise self.error(name, f"expected a finite number, got {value}")
        return value

    def int_list(self, name, *, required=False, default=None):
        value = self.get(name, list, required=required, default=default)
        if value is None:
            return None
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int):
                raise self.error(name, f"expected an array of integers, got {_describe(item)}")
        return list(value)

    def str_list(self, name, *, required=False, default=None):
        value = self.get(name, list, required=required, default=default)
        if value is None:
            return None
        for item in value:
            if not isinstance(item, str):
                raise self.error(name, f"expected an array of strings, got {_describe(item)}")
        return list(value)


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
    """A validated study; :meth:`conditions` and :meth:`tasks` expand it."""

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

    def conditions(self) -> list[Condition]:
        """Every condition, in file order: fits, then protocols, then n."""
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
        return out

    def condition(self, condition_id: str) -> Condition:
        """Look a condition up by id (a unique prefix is accepted)."""
        matches = [c for c in self.conditions() if c.condition_id.startswith(condition_id)]
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

    def tasks(self) -> list[Task]:
        """Every task: conditions x replications 0..replications-1, replication-major.

        Replication-major order means a run stopped part-way (a time limit, a killed session)
        leaves whole replications of every condition, a balanced design across n and fits,
        rather than some conditions complete and others empty.
        """
        conditions = self.conditions()
        return [self.make_task(c, r) for r in range(self.replications) for c in conditions]


def _protocol_settings(protocol: str, n: int, over_specified: bool) -> dict:
    from simstudy.estimation import protocol_options

    return protocol_options(protocol, n, over_specified=over_specified)


# -- parsing -------------------------------------------------------------------------------------
def load_spec(path) -> StudySpec:
    """Read and validate a study TOML file.

    Raises
    ------
    SpecError
        For a missing file, invalid TOML or any invalid entry; the message names the file,
        the key path and what is allowed.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SpecError("no such spec file", path) from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"invalid TOML: {exc}", path) from None
    return parse_spec(raw, path)


def parse_spec(raw: dict, path) -> StudySpec:
    """Validate an already-parsed TOML document (``path`` names the file in errors)."""
    path = Path(path)
    top = _Reader(path, "", raw)
    top.check_keys(_TOP)
    if "study" not in raw:
        raise SpecError("missing required section [study]", path, "study")
    study = _Reader(path, "study", raw["study"])
    study.check_keys(_SECTIONS["study"])
    name = study.get("name", str, required=True)
    if name != path.stem:
        raise study.error("name", f"must equal the file stem {path.stem!r}, got {name!r}")
    description = study.get("description", str, default="")
    root_seed = study.get("root_seed", int, required=True)
    if root_seed < 0:
        raise study.error("root_seed", f"must be >= 0, got {root_seed}")
    replications = study.get("replications", int, required=True)
    if replications < 1:
        raise study.error("replications", f"must be >= 1, got {replications}")
    for section in ("design", "n_grid"):
        if section not in raw:
            raise SpecError(f"missing required section [{section}]", path, section)

    design = _parse_design(_Reader(path, "design", raw["design"]))
    n_values = _parse_grid(_Reader(path, "n_grid", raw["n_grid"]))
    em = _parse_em(_Reader(path, "em", raw.get("em", {})))

    fits_raw = raw.get("fit")
    if fits_raw is None:
        raise SpecError("missing required [[fit]] entries (at least one)", path, "fit")
    if not isinstance(fits_raw, list) or not fits_raw:
        raise SpecError("expected an array of tables [[fit]] (at least one)", path, "fit")
    fits = tuple(
        _parse_fit(_Reader(path, f"fit[{i}]", f), design, raw["design"])
        for i, f in enumerate(fits_raw)
    )
    labels = [f.label for f in fits]
    for i, label in enumerate(labels):
        if labels.index(label) != i:
            raise SpecError(f"duplicate label {label!r}; labels must be unique", path,
                            f"fit[{i}].label")
    contents = [canonical_json(f.content()) for f in fits]
    for i, c in enumerate(contents):
        j = contents.index(c)
        if j != i and set(fits[i].protocols) & set(fits[j].protocols):
            raise SpecError(
                f"fit {fits[i].label!r} has the same settings as fit {fits[j].label!r} under a "
                "shared protocol (their conditions would coincide)", path, f"fit[{i}]")

    metrics_list = study.str_list("metrics")
    metrics = None
    if metrics_list is not None:
        for m in metrics_list:
            if not _known_metric(m, design.params.k):
                raise study.error(
                    "metrics",
                    f"unknown metric {m!r}; allowed: {', '.join(METRIC_GLOBAL)} and "
                    f"{', '.join(METRIC_PER_EXPERT)} (optionally suffixed _j, "
                    f"j = 1..{design.params.k})")
        metrics = tuple(metrics_list)

    spec = StudySpec(path=path, name=name, description=description, root_seed=root_seed,
                     replications=replications, design=design, n_values=n_values, em=em,
                     fits=fits, metrics=metrics)
    object.__setattr__(spec, "spec_hash", content_hash(spec.content(), 16))
    return spec


def _known_metric(name: str, k_true: int) -> bool:
    if name in METRIC_BASES:
        return True
    base, _, j = name.rpartition("_")
    return base in METRIC_PER_EXPERT and j.isdigit() and 1 <= int(j) <= k_true


def _parse_design(r: _Reader) -> DesignSpec:
    r.check_keys(_SECTIONS["design"])
    inline = "params" in r.data or "inputs" in r.data
    if not inline:
        name = r.get("name", str, required=True)
        if name not in DESIGNS:
            raise r.error("name", f"unknown design {name!r}; allowed: {', '.join(sorted(DESIGNS))}"
                          " (or inline tables [design.params] and [design.inputs])")
        K = r.get("K", int)
        try:
            d = get_design(name, K)
        except ValueError as exc:
            raise r.error("K", str(exc)) from None
        return DesignSpec(name=d.name, params=d.params, inputs=d.inputs)
    for part in ("params", "inputs"):
        if part not in r.data:
            raise r.error(part, "an inline design needs both [design.params] and [design.inputs]")
    name = r.get("name", str, default="inline")
    if name in DESIGNS:
        raise r.error("name", f"{name!r} names a built-in design; give an inline design "
                      "another name or drop [design.params]/[design.inputs]")
    if "K" in r.data:
        raise r.error("K", "with an inline design put K in [design.params]")
    pr = _Reader(r.file, "design.params", r.data["params"])
    pr.check_keys(_PARAM_KEYS)
    for key in ("beta0", "beta1", "a", "b", "v", "K"):
        if key not in pr.data:
            raise pr.error(key, "missing required key")
    pr.get("K", int)
    pr.get("ref", int)
    v = pr.data["v"]
    if isinstance(v, list) and any(
        isinstance(x, int | float) and not isinstance(x, bool) and x <= 0 for x in v
    ):
        raise pr.error("v", f"variances must be > 0, got {v}")
    try:
        params = MoEParams.from_dict(dict(pr.data))
    except ValueError as exc:
        key = str(exc).split(":", 1)[0]
        raise pr.error(key if key in _PARAM_KEYS else None, str(exc)) from None
    ir = _Reader(r.file, "design.inputs", r.data["inputs"])
    ir.check_keys(_INPUT_KEYS)
    law = ir.get("law", str, default="uniform")
    if law != "uniform":
        raise ir.error("law", f"unknown input law {law!r}; allowed: uniform")
    d = ir.get("d", int, required=True)
    low = ir.get("low", float, required=True)
    high = ir.get("high", float, required=True)
    try:
        inputs = UniformBox(d, low, high)
    except ValueError as exc:
        raise ir.error(None, str(exc)) from None
    if inputs.d != params.d:
        raise ir.error("d", f"the input law has d={inputs.d} but the parameters have "
                       f"d={params.d}")
    return DesignSpec(name=name, params=params, inputs=inputs)


def _parse_grid(r: _Reader) -> tuple[int, ...]:
    r.check_keys(_SECTIONS["n_grid"])
    if "values" in r.data:
        for other in ("min", "max", "num"):
            if other in r.data:
                raise r.error(other, "give either values = [...] or min/max/num, not both")
        values = r.int_list("values")
        if not values:
            raise r.error("values", "needs at least one sample size")
        for n in values:
            if n < 1:
                raise r.error("values", f"sample sizes must be >= 1, got {n}")
        if len(set(values)) != len(values):
            raise r.error("values", f"duplicate sample sizes in {values}")
        return tuple(sorted(values))
    lo = r.get("min", int, required=True)
    hi = r.get("max", int, required=True)
    num = r.get("num", int, required=True)
    if lo < 1:
        raise r.error("min", f"sample sizes must be >= 1, got {lo}")
    if hi < lo:
        raise r.error("max", f"must be >= min = {lo}, got {hi}")
    if num < 1:
        raise r.error("num", f"must be >= 1, got {num}")
    if num == 1:
        if lo != hi:
            raise r.error("num", "num = 1 needs min == max")
        return (lo,)
    grid = np.unique(np.rint(np.geomspace(lo, hi, num)).astype(np.int64))
    if grid.size != num:
        raise r.error("num", f"{num} log-spaced integers between {lo} and {hi} are not distinct;"
                      " use fewer values or a wider range")
    return tuple(int(n) for n in grid)


def _parse_em(r: _Reader) -> dict:
    r.check_keys(_SECTIONS["em"])
    em = {}
    for key in ("tol", "grad_tol", "var_floor"):
        value = r.get(key, float)
        if value is not None:
            if value <= 0:
                raise r.error(key, f"must be > 0, got {value}")
            em[key] = value
    max_iter = r.get("max_iter", int)
    if max_iter is not None:
        if max_iter < 1:
            raise r.error("max_iter", f"must be >= 1, got {max_iter}")
        em["max_iter"] = max_iter
    acc = r.get("acceleration", str)
    if acc is not None:
        if acc not in ACCELERATIONS:
            raise r.error("acceleration", f"unknown acceleration {acc!r}; allowed: "
                          f"{', '.join(ACCELERATIONS)}")
        em["acceleration"] = None if acc == "none" else acc
    return em


def _parse_fit(r: _Reader, design: DesignSpec, design_raw: dict) -> FitSpec:
    r.check_keys(_SECTIONS["fit"])
    label = r.get("label", str, required=True)
    if not label:
        raise r.error("label", "must be a non-empty string")
    true_K = r.get("true_K", int)
    fit_design = None
    if true_K is not None:
        if "params" in design_raw:
            raise r.error("true_K", "only with a named design; an inline design sets K in "
                          "[design.params]")
        try:
            d = get_design(design_raw["name"], true_K)
        except ValueError as exc:
            raise r.error("true_K", str(exc)) from None
        fit_design = DesignSpec(name=d.name, params=d.params, inputs=d.inputs)
        design = fit_design
    k = r.get("k", int, required=True)
    K = r.get("K", int, required=True)
    if k < 1:
        raise r.error("k", f"must be >= 1, got {k}")
    if not 1 <= K <= k:
        raise r.error("K", f"must satisfy 1 <= K <= k = {k}, got K = {K}")
    k_true = design.params.k
    ref = design.params.ref + 1
    extra = r.int_list("extra_atoms", default=[])
    for j in extra:
        if not 1 <= j <= k_true:
            raise r.error("extra_atoms", f"true experts are numbered 1..{k_true} (spec "
                          f"numbering), got {j}")
        if j == ref:
            raise r.error("extra_atoms", f"expert {j} is the reference expert; its cell must "
                          "hold exactly one fitted atom, put extra atoms on other experts")
    if k != k_true + len(extra):
        raise r.error("extra_atoms", f"k = {k} must equal k* + len(extra_atoms) = {k_true} + "
                      f"{len(extra)}")
    init = r.get("init", str, default="near_truth")
    if init not in INITS:
        raise r.error("init", f"unknown init {init!r}; allowed: {', '.join(INITS)}")
    init_noise = r.get("init_noise", float)
    if init_noise is not None and init_noise < 0:
        raise r.error("init_noise", f"must be >= 0, got {init_noise}")
    n_init = r.get("n_init", int)
    if n_init is not None and n_init < 1:
        raise r.error("n_init", f"must be >= 1, got {n_init}")
    beta1_bound = r.get("beta1_bound", float)
    if beta1_bound is not None:
        if beta1_bound <= 0:
            raise r.error("beta1_bound", f"must be > 0, got {beta1_bound}")
        if not _estimator_has("beta1_bound"):
            raise r.error("beta1_bound", "this installation's estimator (TopKMoEEM) has no "
                          "bounded-slope option beta1_bound")
    protocols = r.str_list("protocols", required=True)
    if not protocols:
        raise r.error("protocols", f"needs at least one protocol; allowed: {', '.join(PROTOCOLS)}")
    for p in protocols:
        if p not in PROTOCOLS:
            raise r.error("protocols", f"unknown protocol {p!r}; allowed: {', '.join(PROTOCOLS)}")
    if len(set(protocols)) != len(protocols):
        raise r.error("protocols", f"duplicate protocol in {protocols}")
    return FitSpec(label=label, k=k, K=K, extra_atoms=tuple(extra), init=init,
                   init_noise=init_noise, n_init=n_init, protocols=tuple(protocols),
                   true_K=true_K, beta1_bound=beta1_bound, design=fit_design)


def _estimator_has(option: str) -> bool:
    """Whether :class:`~simstudy.estimation.TopKMoEEM` takes the keyword ``option``."""
    import inspect

    from simstudy.estimation import TopKMoEEM

    return option in inspect.signature(TopKMoEEM).parameters
