"""Study engine: specs, seeds, the parallel runner, the SQLite store and the tidy results.

>>> from simstudy.engine import load_spec, run_study, load_results   # doctest: +SKIP
>>> summary = run_study("studies/ci.toml", jobs=2)                  # doctest: +SKIP
>>> df = load_results("studies/ci.toml")                            # doctest: +SKIP
"""

from simstudy.engine.errors import EngineError
from simstudy.engine.results import TIDY_COLUMNS, load_results
from simstudy.engine.runner import RunSummary, run_study
from simstudy.engine.spec import Condition, FitSpec, SpecError, StudySpec, Task, load_spec
from simstudy.engine.store import (
    ProvenanceMismatchError,
    ResultStore,
    StoreMismatchError,
    default_store_dir,
    store_path,
)

__all__ = [
    "load_spec",
    "run_study",
    "load_results",
    "RunSummary",
    "StudySpec",
    "FitSpec",
    "Condition",
    "Task",
    "SpecError",
    "EngineError",
    "ResultStore",
    "StoreMismatchError",
    "ProvenanceMismatchError",
    "store_path",
    "default_store_dir",
    "TIDY_COLUMNS",
]
