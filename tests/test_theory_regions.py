"""The region-by-region K-bar condition (spec section 4): the fitted K-bar must equal the
number of fitted atoms over every true top-K region, not merely bound the largest one."""

from simstudy.model import get_design
from simstudy.reports.theory import FitConfig, expectations, kbar_requirement, selection_regions

T = get_design("T")


def test_region_condition_fails_when_a_region_holds_fewer_atoms_than_kbar():
    """Design T (k* = 3, K = 2, reference expert 2), k = 5, K-bar = 4, extra atoms on experts
    1 and 3: cells |A| = (2, 1, 2). The global condition holds (K-bar = 4 = max over 2-subsets),
    but the region x > 0 selects experts {1, 2}, which hold 3 fitted atoms, not 4: no
    guarantee, and the reason names the region."""
    cfg = FitConfig("r", T.params, T.inputs, k=5, K=4, extra_atoms=(0, 2))
    assert kbar_requirement(cfg.cell_sizes, T.params.K) == 4  # the global check passes
    regions = selection_regions(T.params, T.inputs)
    assert set(regions) == {frozenset({0, 1}), frozenset({0, 2})}
    e = expectations(cfg)
    assert {x.kind for x in e.values()} == {"none"}
    for x in e.values():
        assert "region" in x.reason.lower(), x.reason
        assert "(1, 2)" in x.reason and "3" in x.reason, x.reason


def test_region_condition_holds_when_every_region_holds_kbar_atoms():
    """Control: k = 4, K-bar = 3, an extra atom on expert 1 (|A| = (2, 1, 1)): both regions
    hold 3 atoms, and the theory gives rates and bounds."""
    e = expectations(FitConfig("ok", T.params, T.inputs, k=4, K=3, extra_atoms=(0,)))
    assert e["D2"].kind == "rate" and e["err_a_1"].kind == "bound"
    assert not any("region" in x.reason.lower() for x in e.values())
