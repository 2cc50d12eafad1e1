"""`halo run`'s output files: refused paths fail before the run (exit 2, nothing written), and
non-finite floats are written as valid JSON (null) in .jsonl, .csv and .parquet alike.

The workflows here have no llm node, so no model loads.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import pytest
from halo.cli import main

WORKFLOW = """
name: numbers
inputs: [x]
nodes:
  - id: cast
    kind: sql
    query: "SELECT CAST(:x AS DOUBLE) AS v, [CAST(:x AS DOUBLE), 1.5] AS l"
    params: {x: "{{ x }}"}
  - id: tag
    kind: rule
    input: "{{ x }}"
    regex: "(\\\\w+)"
    default: none
outputs: {rows: cast.rows, x: x, tag: tag.output}
"""
# NaN as a bare JSON token in the input too (Python's json reads it): it passes through as `x`
ROWS = '{"x": "nan"}\n{"x": NaN}\n{"x": "inf"}\n{"x": 2}\n{"x": "-Infinity"}\n'


def _strict(text: str) -> object:
    def refuse(token: str) -> object:
        raise AssertionError(f"invalid JSON token {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    workflow, rows = tmp_path / "wf.yaml", tmp_path / "rows.jsonl"
    workflow.write_text(WORKFLOW)
    rows.write_text(ROWS)
    return workflow, rows


def _run(workflow: Path, rows: Path, output: Path | str) -> int:
    return main(["run", str(workflow), "--input", str(rows), "--output", str(output), "--quiet"])


def _refused(target: Path, capsys, *, why: str) -> str:
    """The run's stderr, after checking the refusal touched nothing: no journal, no temporary file."""
    err = capsys.readouterr().err
    assert f"{target}" in err and why in err, err
    assert "rows failed" not in err  # no summary: the run never started
    leftovers = [p.name for p in target.parent.iterdir() if p.name.endswith((".tmp", ".journal.jsonl"))]
    assert leftovers == []
    return err


def test_a_directory_is_refused_before_the_run(files, tmp_path, capsys):
    workflow, rows = files
    folder = tmp_path / "out"
    folder.mkdir()
    assert _run(workflow, rows, folder) == 2
    _refused(folder, capsys, why="is a directory")
    assert folder.is_dir() and list(folder.iterdir()) == []


def test_a_fifo_is_refused_before_the_run(files, tmp_path, capsys):
    workflow, rows = files
    fifo = tmp_path / "out.jsonl"
    os.mkfifo(fifo)
    assert _run(workflow, rows, fifo) == 2
    _refused(fifo, capsys, why="is a FIFO")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_a_character_device_is_refused_and_stays_a_device(files, tmp_path, capsys):
    """A private copy of /dev/null (same major/minor): before the fix, the rename replaced it by a file."""
    workflow, rows = files
    device = tmp_path / "null.jsonl"
    os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    assert _run(workflow, rows, device) == 2
    _refused(device, capsys, why="is a character device")
    assert stat.S_ISCHR(device.lstat().st_mode)


def test_dev_null_is_refused_and_stays_a_device(files, tmp_path, capsys):
    """The real /dev/null. The input does not exist, so even if the output check were gone the run
    would stop at reading the input and never replace the device: this test cannot harm the machine."""
    workflow, _ = files
    assert _run(workflow, tmp_path / "missing.jsonl", "/dev/null") == 2
    err = capsys.readouterr().err
    assert "--output /dev/null is a character device, not a regular file" in err, err
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


@pytest.mark.parametrize("target", ["input", "workflow", "symlink to input", "hard link to input"])
def test_the_input_or_workflow_is_refused_and_unchanged(files, tmp_path, capsys, target):
    workflow, rows = files
    output = {"input": rows, "workflow": workflow}.get(target, tmp_path / "out.jsonl")
    if target == "symlink to input":
        output.symlink_to(rows)
    elif target == "hard link to input":
        os.link(rows, output)
    before = (rows.read_bytes(), workflow.read_bytes())
    assert _run(workflow, rows, output) == 2
    what = "the workflow file" if target == "workflow" else "the input file"
    err = _refused(output, capsys, why=what)
    assert (rows.read_bytes(), workflow.read_bytes()) == before
    if target == "symlink to input":
        assert "through a symbolic link" in err and output.is_symlink()


def test_a_symlink_to_another_file_is_refused(files, tmp_path, capsys):
    workflow, rows = files
    target, link = tmp_path / "target.jsonl", tmp_path / "out.jsonl"
    target.write_text("keep\n")
    link.symlink_to(target)
    assert _run(workflow, rows, link) == 2
    _refused(link, capsys, why="is a symbolic link")
    assert link.is_symlink() and target.read_text() == "keep\n"


def test_the_journal_path_may_not_be_the_input(files, tmp_path, capsys):
    """`--input out.jsonl.journal.jsonl --output out.jsonl`: the journal would truncate the input."""
    workflow, rows = files
    output = tmp_path / "out.jsonl"
    journal = tmp_path / "out.jsonl.journal.jsonl"
    journal.write_bytes(rows.read_bytes())
    assert _run(workflow, journal, output) == 2
    err = capsys.readouterr().err
    assert f"journal {journal} is the input file" in err, err
    assert journal.read_bytes() == rows.read_bytes() and not output.exists()


def test_a_parent_that_is_a_file_is_refused(files, tmp_path, capsys):
    workflow, rows = files
    (tmp_path / "plain").write_text("")
    output = tmp_path / "plain" / "out.jsonl"
    assert _run(workflow, rows, output) == 2
    assert f"{tmp_path / 'plain'} is not a directory" in capsys.readouterr().err


def test_an_existing_output_is_replaced_and_a_new_folder_made(files, tmp_path):
    workflow, rows = files
    old = tmp_path / "old.jsonl"
    old.write_text("stale\n")
    assert _run(workflow, rows, old) == 0
    assert len(old.read_text().splitlines()) == 5
    nested = tmp_path / "a" / "b" / "out.jsonl"
    assert _run(workflow, rows, nested) == 0
    assert len(nested.read_text().splitlines()) == 5
    assert [p.name for p in tmp_path.rglob("*.tmp")] == []


def test_nan_and_infinity_are_null_in_jsonl(files, tmp_path):
    workflow, rows = files
    output = tmp_path / "out.jsonl"
    assert _run(workflow, rows, output) == 0
    records = [_strict(line) for line in output.read_text().splitlines()]
    assert [r["rows"][0]["v"] for r in records] == [None, None, None, 2.0, None]  # nested in a list of dicts
    assert [r["rows"][0]["l"] for r in records][0] == [None, 1.5]
    assert records[1]["x"] is None  # a top-level NaN from the input row


def test_nan_and_infinity_are_empty_in_csv_and_nested_json_is_valid(files, tmp_path):
    import csv

    workflow, rows = files
    output = tmp_path / "out.csv"
    assert _run(workflow, rows, output) == 0
    with output.open(newline="") as f:
        table = list(csv.DictReader(f))
    assert [_strict(r["rows"]) for r in table][0] == [{"v": None, "l": [None, 1.5]}]
    assert table[1]["x"] == ""


def test_nan_and_infinity_are_null_in_parquet_and_mixed_columns_are_json(files, tmp_path):
    import pyarrow.parquet as pq

    workflow, rows = files
    output = tmp_path / "out.parquet"
    assert _run(workflow, rows, output) == 0
    table = pq.read_table(output).to_pylist()
    assert [r["rows"][0]["v"] for r in table] == [None, None, None, 2.0, None]
    # `x` holds strings and numbers: no single Parquet type, so JSON text (null stays null)
    assert [r["x"] for r in table] == ['"nan"', None, '"inf"', "2", '"-Infinity"']
    assert not any(isinstance(v, float) and not math.isfinite(v) for r in table for v in r.values())


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_a_lone_surrogate_from_the_input_is_written_not_a_crash(tmp_path, suffix):
    """JSON input may spell a lone surrogate (`"\\ud800"`); UTF-8 cannot hold it, so it is written as its
    escape (before, encoding the output raised after the whole run)."""
    workflow, rows, output = tmp_path / "wf.yaml", tmp_path / "rows.jsonl", tmp_path / f"out{suffix}"
    workflow.write_text(
        "name: tags\ninputs: [x]\nnodes:\n  - {id: tag, kind: rule, input: '{{ x }}', regex: '(\\w+)', default: none}\n"
        "outputs: {x: x, tag: tag.output}\n"
    )
    rows.write_text('{"x": "a\\ud800b"}\n{"x": "plain"}\n')
    assert _run(workflow, rows, output) == 0
    if suffix == ".jsonl":
        assert [_strict(line)["x"] for line in output.read_text(encoding="utf-8").splitlines()] == ["a\ud800b", "plain"]
    elif suffix == ".csv":
        assert output.read_text(encoding="utf-8").splitlines()[1].startswith("a\\ud800b,")
    else:
        import pyarrow.parquet as pq

        assert [_strict(r["x"]) for r in pq.read_table(output).to_pylist()] == ["a\ud800b", "plain"]
