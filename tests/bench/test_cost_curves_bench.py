"""bench/cost_curves.py's report on made-up timings: per-shape errors, the worst, and the 25% verdict (no model)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # the script lives in bench/, outside the installed package

from bench.cost_curves import TARGET, Shape, summarize, table  # noqa: E402


def test_the_worst_shape_decides_the_verdict_and_the_table_shows_every_shape():
    shapes = [Shape("prefill a", 0.11, 0.10), Shape("decode b", 0.07, 0.10), Shape("generate c", 1.0, 1.0)]
    assert [s.error for s in shapes] == pytest.approx([0.10, -0.30, 0.0])
    summary = summarize(shapes)
    assert summary.worst.name == "decode b" and not summary.within and summary.target == TARGET == 0.25
    assert summarize(shapes, target=0.31).within
    text = table(shapes)
    assert all(s.name in text for s in shapes)
    assert "+10.0%" in text and "-30.0%" in text
    assert text.splitlines()[-1] == "worst error -30.0% (decode b); within 25%: no"
    assert table(shapes[:1]).endswith("within 25%: yes")


def test_no_shapes_is_an_error_not_a_pass():
    with pytest.raises(ValueError, match="no held-out shapes"):
        summarize([])
