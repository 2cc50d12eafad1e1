"""`halo run` killed with SIGKILL halfway and rerun with --resume: every row exactly once, same outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
ROWS = 10

WORKFLOW = """
name: slow-rows
inputs: [i, text]
nodes:
  - id: title
    kind: llm
    prompt: "Give a title for: {{ text }}"
    max_tokens: 4
  - id: wait
    kind: python
    function: "workflow_functions:slow_upper"
    args: ["{{ title.output }}", "{{ i * 0.6 }}"]
  - id: tag
    kind: rule
    input: "{{ wait.output }}"
    regex: "(\\\\w+)"
    default: none
outputs: {title: title.output, loud: wait.output, tag: tag.output, i: i}
"""


def _halo(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, "-m", "halo.cli", *args], env=env, **kw)


def _journal_rows(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if '"type":"row"' in line)


def test_kill_and_resume_gives_every_row_once(tmp_path):
    wf = tmp_path / "wf.yaml"
    wf.write_text(WORKFLOW)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(json.dumps({"i": i, "text": f"note number {i} about topic {i % 3}"}) + "\n" for i in range(ROWS))
    )
    out = tmp_path / "out.jsonl"
    journal = tmp_path / "out.jsonl.journal.jsonl"
    common = [str(wf), "--input", str(rows), "--quiet", "--dtype", "fp32"]

    proc = _halo(["run", *common, "--output", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while _journal_rows(journal) < 3:
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "the run never journaled 3 rows"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished_before = _journal_rows(journal)
    assert 3 <= finished_before < ROWS, finished_before
    assert not out.exists()

    resumed = _halo(["run", *common, "--output", str(out), "--resume"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()[-2000:]
    assert "rows resumed" in err.decode()

    full = tmp_path / "full.jsonl"
    clean = _halo(["run", *common, "--output", str(full)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = clean.communicate(timeout=300)
    assert clean.returncode == 0, err.decode()[-2000:]

    got = [json.loads(line) for line in out.read_text().splitlines()]
    want = [json.loads(line) for line in full.read_text().splitlines()]
    assert [r["i"] for r in got] == list(range(ROWS))  # every row exactly once, in input order
    assert got == want
    assert all("_error" not in r for r in got)
