"""`halo` starts light (no torch, ray, pandas, fastapi, uvicorn or duckdb until a command needs them),
`halo models` lists the registry, and a workflow's model may be a path (`source: /path/to.gguf`)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import halo
import pytest
from halo import cli
from halo.cli import main, registered_models
from halo.engine.model_source import DEFAULT_MODEL, REGISTRY
from halo.spec.errors import SpecError
from tiny_gguf import write_tiny_gguf

HEAVY = ("torch", "ray", "pandas", "fastapi", "uvicorn", "duckdb")

# Runs `halo ARGS` in this interpreter, then prints which heavy modules got imported.
PROBE = textwrap.dedent(
    """
    import json, sys
    from halo.cli import main
    try:
        code = main(sys.argv[1:])
    except SystemExit as exit:
        code = exit.code
    heavy = [m for m in {heavy!r} if m in sys.modules]
    print(json.dumps({{"code": code, "heavy": heavy}}), file=sys.stderr)
    """
).format(heavy=HEAVY)


def run_halo(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    return json.loads(done.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "args",
    [
        ("--help",),
        ("run", "--help"),
        ("run",),  # missing arguments: an argparse error
        ("no-such-command",),
        ("generate", "--help"),
        ("serve", "--help"),
        ("models",),
        ("models", "--json"),
    ],
)
def test_the_command_imports_nothing_heavy_before_it_needs_to(args: tuple[str, ...]) -> None:
    got = run_halo(*args)
    assert got["heavy"] == [], f"`halo {' '.join(args)}` imported {got['heavy']}"
    assert got["code"] in (0, 2)


def test_import_halo_is_light_and_its_entry_points_still_load() -> None:
    code = f"import sys, halo; assert not [m for m in {HEAVY!r} if m in sys.modules]; halo.compile; halo.Workflow"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_models_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(REGISTRY)
    default = next(r for r in rows if r["name"] == DEFAULT_MODEL)
    assert default["default"] and default["family"] == "llama" and default["licence"] == "Apache-2.0"
    assert default["parameters"] == 134_515_008
    assert default["source"] == f"pypi:{REGISTRY[DEFAULT_MODEL].package}=={REGISTRY[DEFAULT_MODEL].version}"
    assert default["installed"] in ("installed", "cached", "no")
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    for column in ("name", "family", "params", "source", "installed", "licence"):
        assert column in table
    assert DEFAULT_MODEL in table


def test_a_model_missing_everywhere_is_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from halo.engine import model_source

    monkeypatch.setattr(model_source, "_installed_file", lambda model: None)
    monkeypatch.setattr(cli, "_distribution_version", lambda package: None)
    states = {r["name"]: r["installed"] for r in registered_models(str(tmp_path))}
    assert states[DEFAULT_MODEL] == "no"
    for name, model in REGISTRY.items():  # a model from an optional extra says which one to install
        assert states[name] == (f"no (pip install 'halo[{model.extra}]')" if model.extra else "no")
    model = REGISTRY[DEFAULT_MODEL]
    extracted = tmp_path / model.package / model.version / Path(model.member).name
    extracted.parent.mkdir(parents=True)
    extracted.write_bytes(b"")
    assert next(r for r in registered_models(str(tmp_path)) if r["name"] == DEFAULT_MODEL)["installed"] == "cached"


WORKFLOW = """\
name: path-model
models:
  tiny: {{source: {source}, dtype: fp32}}
inputs: [text]
nodes:
  - id: say
    kind: llm
    model: tiny
    prompt: "{{{{ text }}}}"
    max_tokens: 4
outputs:
  said: say.output
"""


def test_a_workflow_model_may_be_a_gguf_path(tmp_path: Path) -> None:
    gguf_file = write_tiny_gguf(tmp_path / "tiny.gguf")
    spec = tmp_path / "wf.yaml"
    spec.write_text(WORKFLOW.format(source=gguf_file))
    app = halo.compile(spec)
    try:
        result = app.run([{"text": "the cat"}, {"text": "the hat"}])
    finally:
        app.close()
    assert not result.errors and len(result.outputs) == 2
    assert app.model_sources == [str(gguf_file)]


def test_a_missing_model_path_is_a_located_spec_error(tmp_path: Path) -> None:
    spec = tmp_path / "wf.yaml"
    missing = tmp_path / "nope.gguf"
    spec.write_text(WORKFLOW.format(source=missing))
    with pytest.raises(SpecError) as err:
        halo.Workflow.from_yaml(spec)
    assert f"{spec}:3:" in str(err.value) and str(missing) in str(err.value)
