"""bench/structured_outputs.py's pure parts: label mapping, agreement, parsing, data and tables (no model)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # the script lives in bench/, outside the installed package

from bench.structured_outputs import (  # noqa: E402
    LABELS,
    TICKETS,
    ClassifyRow,
    JsonRow,
    agreement,
    classify_table,
    field_accuracy,
    invoices,
    is_exact_label,
    json_table,
    label_of,
    parsed,
    target_line,
)


def test_a_free_answer_maps_to_the_one_label_it_names():
    assert label_of("Billing") == "billing"
    assert label_of("  bug.") == "bug"
    assert label_of("The category is shipping.") == "shipping"
    assert label_of("Billing, bug, shipping or other") is None  # the options repeated: no answer
    assert label_of("The app crashes when I open settings.") is None
    assert label_of("bugs") is None  # whole words only
    assert is_exact_label("Other.") and is_exact_label(" billing\n")
    assert not is_exact_label("The category is shipping.")


def test_agreement_counts_equal_labels_and_none_agrees_with_nothing():
    assert agreement(["bug", "billing", None, "other"], ["bug", "shipping", None, "other"]) == 0.5
    assert agreement(["bug"], ["bug"]) == 1.0
    with pytest.raises(ValueError, match="equally long"):
        agreement(["bug"], ["bug", "other"])
    with pytest.raises(ValueError, match="non-empty"):
        agreement([], [])


def test_the_data_is_fixed_and_balanced():
    assert set(TICKETS) == set(LABELS) and all(len(v) == 16 for v in TICKETS.values())
    assert len({t for v in TICKETS.values() for t in v}) == 64
    docs = invoices()
    assert len(docs) == 64 and len({d.text for d in docs}) == 64
    assert docs == invoices()  # deterministic
    for d in docs:
        assert set(d.fields) == {"vendor", "total", "currency", "date"}
        assert d.fields["vendor"] in d.text and f"{d.fields['total']:.2f}" in d.text


def test_json_parsing_and_field_accuracy():
    truth = [{"vendor": "ACME", "total": 12.5}, {"vendor": "Globex", "total": 3.0}]
    assert parsed('{"vendor": "ACME", "total": 12.5}') == truth[0]
    assert parsed('{"vendor": "AC') is None
    assert field_accuracy([truth[0], {"vendor": "Globex", "total": 3}], truth) == 1.0  # 3 == 3.0
    assert field_accuracy([truth[0], None], truth) == 0.5
    assert field_accuracy([{"vendor": "ACME", "total": 1}, ["x"]], truth) == 0.25


def test_the_tables_show_every_row_and_the_target_verdict():
    rows = [
        ClassifyRow("free", 2.0, 9, 3000, 500, 0.5, 0.25, 0.5, ["bug", None]),
        ClassifyRow("choices greedy", 1.0, 5, 3000, 64, 0.0, 0.0, 0.75, ["bug", "other"]),
        ClassifyRow("choices score", 0.5, 4, 3200, 0, 0.0, 0.0, 0.75, ["bug", "other"]),
    ]
    text = classify_table(rows, {"free / choices greedy": 0.5})
    assert all(r.mode in text for r in rows)
    assert "agreement: free / choices greedy 50%" in text
    assert "choices greedy 2.00x" in text and "choices score 4.00x" in text
    jrows = [
        JsonRow("jump-forward on", 64, 3.0, 20, 1000, 1800, 900, 900, 0.02, 0.03, 64, 0.9),
        JsonRow("jump-forward off", 64, 6.0, 40, 1900, 1900, 0, 0, 0.08, 0.09, 64, 0.9),
        JsonRow("jump-forward on, one at a time", 1, 30.0, 900, 1000, 1800, 900, 900, 0.04, 0.05, 64, 0.9),
    ]
    text = json_table(jrows, {"texts": 60, "parsed": 64, "of": 64})
    assert "2.00x fewer engine steps" in text and "60/64 texts, 64/64 parsed documents" in text
    assert text.splitlines()[-1] == "mask overhead at batch 64: 2.0% of step time; target <= 10%: yes"
    assert target_line(0.125, 64).endswith("12.5% of step time; target <= 10%: no")
