"""The command line: generate, explain (text and dot), and clear errors with exit code 2."""

from __future__ import annotations

from pathlib import Path

import halo
import pytest
from halo.cli import main

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.slow
def test_generate_chat(capsys):
    assert main(["generate", "--chat", "What is the capital of France?", "--dtype", "fp32"]) == 0
    assert capsys.readouterr().out.strip() == "The capital of France is Paris."


def test_explain_text_shows_every_node_and_savings(capsys):
    assert main(["explain", str(EXAMPLES / "ticket_triage.yaml"), "--input",
                 str(EXAMPLES / "ticket_triage.jsonl")]) == 0
    out = capsys.readouterr().out
    for node in ("classify", "history", "profile", "reply"):
        assert f"\n{node} " in out
    assert "logical=24 physical=17" in out  # 6 rows x 4 nodes, duplicates executed once


def test_explain_dot(capsys):
    assert main(["explain", str(EXAMPLES / "review_voting.yaml"), "--input", str(EXAMPLES / "review_voting.jsonl"),
                 "--format", "dot"]) == 0
    out = capsys.readouterr().out
    assert out.startswith('digraph "review-voting"') and "judge_strict" in out


def test_errors_exit_2_with_message(tmp_path, capsys):
    bad_rows = tmp_path / "rows.jsonl"
    bad_rows.write_text('{"ticket": "x"}\nnot json\n')
    assert main(["explain", str(EXAMPLES / "ticket_triage.yaml"), "--input", str(bad_rows)]) == 2
    assert f"{bad_rows}:2: not valid JSON" in capsys.readouterr().err
    assert main(["explain", str(tmp_path / "missing.yaml"), "--input", str(bad_rows)]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    assert main(["generate", "hi", "--model", "no-such-model"]) == 2
    assert "no-such-model" in capsys.readouterr().err


def test_workflow_is_exported_lazily():
    wf = halo.Workflow.from_yaml(EXAMPLES / "ticket_triage.yaml")
    assert wf.spec.name == "ticket-triage"


def test_explain_png(tmp_path, capsys):
    import shutil

    import pytest

    if shutil.which("dot") is None:
        pytest.skip("Graphviz `dot` is not installed (scripts/install.sh installs it as root)")
    out = tmp_path / "plan.png"
    assert main(["explain", str(EXAMPLES / "essay_refine.yaml"), "--input", str(EXAMPLES / "essay_refine.jsonl"),
                 "--format", "png", "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_explain_shows_planned_epochs(capsys):
    assert main(["explain", str(EXAMPLES / "review_voting.yaml"), "--input", str(EXAMPLES / "review_voting.jsonl"),
                 "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "EXECUTION PLAN  planner=dp" in out and "epoch  1" in out and "saving=" in out


@pytest.mark.slow
def test_run_the_readme_main_job(tmp_path, capsys):
    """The README's first command: `halo run` on the invoice example writes every row, in order."""
    import json

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "invoice_audit.jsonl"
    argv = ["run", str(root / "examples/invoice_audit.yaml"), "--input", str(root / "examples/invoice_audit.jsonl")]
    assert main([*argv, "--output", str(out), "--strict"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    inputs = (root / "examples/invoice_audit.jsonl").read_text().splitlines()
    assert len(rows) == len(inputs) and all(set(r) == {"vendor", "verdict", "reasons"} for r in rows)
    assert rows[0] == rows[3]  # rows 0 and 3 are the same invoice
    # Structured nodes: the verdict is exactly one of the choices, the vendor a field of the JSON document,
    # which finds its record (the SQL lookup is by equality).
    assert all(r["verdict"] in ("APPROVE", "REJECT") for r in rows)
    vendors = {"ACME Tools Ltd", "Blue Sky Catering", "Northwind Freight"}
    assert [r["vendor"] for r in rows] == [json.loads(i)["invoice_text"].split("\n")[0] for i in inputs]
    assert {r["vendor"] for r in rows} == vendors
    summary = capsys.readouterr().err
    assert "llm calls" in summary and "rows failed" in summary
    assert not out.with_name(out.name + ".journal.jsonl").exists()  # a clean run leaves no journal


def test_run_refuses_a_directory_output_before_running(tmp_path):
    """The real process: exit status 2 and one line naming the path and why, no traceback, no journal
    (before the fix the whole run happened first, then the rename failed with a traceback)."""
    import subprocess
    import sys

    workflow, rows, out = tmp_path / "wf.yaml", tmp_path / "rows.jsonl", tmp_path / "out"
    workflow.write_text(
        "name: tags\ninputs: [t]\nnodes:\n  - {id: tag, kind: rule, input: '{{ t }}', regex: '(\\w+)', default: none}\n"
        "outputs: {tag: tag.output}\n"
    )
    rows.write_text('{"t": "hello world"}\n')
    out.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "halo.cli", "run", str(workflow), "--input", str(rows), "--output", str(out), "--quiet"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"halo: error: --output {out} is a directory, not a regular file; "
        "halo run writes only a regular file or a new path (it replaces the file by rename)"
    )
    assert list(out.iterdir()) == [] and not (tmp_path / "out.journal.jsonl").exists()


def test_bench_finds_the_checkout_from_the_working_directory_in_a_regular_install(tmp_path):
    """A non-editable install keeps the package in site-packages: `halo bench` run in (or below) the
    checkout still finds bench/suite.py there."""
    from halo.cli import source_checkout

    repo = Path(__file__).resolve().parents[1]
    installed = tmp_path / "site-packages" / "halo" / "cli.py"  # where a regular install puts this module
    assert source_checkout(str(installed), str(repo)) == repo
    assert source_checkout(str(installed), str(repo / "bench" / "workloads")) == repo
    assert source_checkout(str(installed), str(tmp_path)) is None
    assert source_checkout(str(repo / "python" / "halo" / "cli.py"), str(tmp_path)) == repo  # editable


def test_weights_flag_is_offered_without_torch_and_refuses_unknown_formats(capsys):
    """`--weights` on generate, run and serve; argparse refuses a format the engine does not take."""
    for command in ("generate", "run", "serve"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--weights {auto,bf16,fp32,int8,int4}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "hi", "--weights", "int3"])
    assert exit_info.value.code == 2 and "invalid choice: 'int3'" in capsys.readouterr().err

