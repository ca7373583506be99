"""Test-session setup shared by every test module.

Each pytest-xdist worker gets its own numba cache folder: two processes compiling the same
kernel for different signatures at once can leave numba's cache index pointing at the other
signature's machine code, which segfaults on the next load (seen with ``-n 2``). Set before
any test module imports numba.
"""

import os
from pathlib import Path

_worker = os.environ.get("PYTEST_XDIST_WORKER")
if _worker and "NUMBA_CACHE_DIR" not in os.environ:
    os.environ["NUMBA_CACHE_DIR"] = str(Path(__file__).resolve().parent.parent / ".numba_cache"
                                        / _worker)
