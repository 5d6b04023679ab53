"""One place per fact: the research panel and the daemon use the SAME cross-sectional definitions (engines.xsection),
not copies that could drift apart."""
from __future__ import annotations

import engines.xsection as xs
import research.calibration as cal
import research.dataset as ds
import research.walkforward as wf


def test_research_uses_the_engines_definitions():
    assert ds.cross_section is xs.cross_section
    assert ds.cs_rank is xs.cs_rank
    assert wf.cs_zscore is xs.cs_zscore and cal.cs_zscore is xs.cs_zscore
    assert ds.FEATURE_NAMES is xs.FEATURE_NAMES and ds.CS_NAMES is xs.CS_NAMES
    assert (ds.EXTRA_RET, ds.DV_N, ds.BETA_N, ds.WARMUP) == (xs.EXTRA_RET, xs.DV_N, xs.BETA_N, xs.WARMUP)
    assert len(xs.FEATURE_NAMES) == len(set(xs.FEATURE_NAMES)) == len(xs.PS_NAMES) + len(xs.CS_NAMES)
