"""The mutation-testing configuration (make mutate) is well formed: every configured module and
test file exists, every listed equivalent mutant names a configured module and says why, and
mutants are keyed by the function that holds them (so editing one function reruns only its
mutants)."""

from pathlib import Path

from mutation.run import ROOT, load_config, load_equivalents, segment_of, segments


def test_modules_and_test_files_exist():
    config = load_config()
    assert {"engine/seeds.py", "engine/spec.py", "reports/theory.py", "model/kernels.py"} <= set(
        config)
    for name, cfg in config.items():
        assert (ROOT / cfg.path).is_file(), name
        assert cfg.tests and all((ROOT / t).is_file() for t in cfg.tests), (name, cfg.tests)


def test_equivalents_name_a_module_and_a_reason():
    config = load_config()
    for e in load_equivalents():
        assert e.module in config, e
        assert e.line != e.mutant and len(e.reason) > 10, e


def test_mutants_are_keyed_by_their_function():
    source = Path(ROOT / "simstudy" / "engine" / "seeds.py").read_text()
    segs = segments(source)
    lines = source.splitlines()
    body = next(i for i, ln in enumerate(lines, 1) if "return int(hex_digest[:16], 16)" in ln)
    start, end, text = segment_of(segs, body)
    assert text.startswith("def _hash_int(") and start < body <= end
    top = next(i for i, ln in enumerate(lines, 1) if ln.startswith("_DATA, _FIT"))
    assert segment_of(segs, top)[2] == "_DATA, _FIT = 0, 1"
