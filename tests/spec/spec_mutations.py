"""Mutated real workflows for fuzzing the spec loader: the seed corpus and a hypothesis strategy.

Seeds are the shipped workflows (examples/*.yaml, bench/workloads/*.yaml). A case is one seed with
a few edits applied: YAML- and Jinja-significant text inserted, spans deleted, duplicated or
swapped, lines re-indented, values replaced by extreme ones (huge numbers, deep nesting, aliases),
or raw bytes that are not UTF-8. Used by tests/spec/test_fuzz_spec.py (a bounded run in CI) and
bench/fuzz_spec.py (a long run); both check `check_loader`'s contract.
"""

from __future__ import annotations

from pathlib import Path

from halo.errors import HaloError
from halo.spec import SpecError, Workflow
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
SEEDS: tuple[bytes, ...] = tuple(
    path.read_bytes()
    for pattern in ("examples/*.yaml", "bench/workloads/*.yaml")
    for path in sorted(REPO.glob(pattern))
)

FRAGMENTS = (
    "{",
    "}",
    "[",
    "]",
    ":",
    ": ",
    "- ",
    ",",
    "&a ",
    "*a",
    "<<: *a",
    "!",
    "!!int ",
    "!!binary ",
    "|",
    ">",
    "'",
    '"',
    "#",
    "%",
    "@",
    "`",
    "?",
    "\n",
    "\t",
    "  ",
    "~",
    "null",
    "true",
    "1e400",
    "-1",
    "0x",
    "2**70",
    "{{ ",
    " }}",
    "{% ",
    " %}",
    "{#",
    "{{ x.",
    "{% for i in range(10**9) %}",
    "{% endfor %}",
    "{% if %}",
    "kind: ",
    "id: ",
    "nodes:",
    "prompt: ",
    "loops:",
    "max_iterations: ",
    "seed: ",
    "outputs:",
    "inputs:",
    "1180591620717411303424",
    "9" * 5000,
    "2001-13-45",
    "\u00e9",
    "\u200b",
    "\ufeff",
    "\x00",
    "\x07",
    "\ud800",
)
EXTREMES = (
    "[" * 500 + "]" * 500,
    "{a: " * 300 + "1" + "}" * 300,
    "&x [*x]",
    "{{ " + "(" * 400 + "1" + ")" * 400 + " }}",
    "'{{ " + "+".join(["1"] * 2000) + " }}'",
    "'" + "{% if 1 %}" * 200 + "{% endif %}" * 200 + "'",
    "'{{ \"a\" * 10**9 }}'",
    "'{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}'",
    str(2**70),
    "-" + "9" * 30,
)


@st.composite
def mutated_workflow(draw: st.DrawFn) -> str | bytes:
    """One seed workflow with 1-4 edits: text (str) or, a tenth of the time, bytes that may not be UTF-8."""
    text = draw(st.sampled_from(SEEDS)).decode("utf-8")
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        end = min(len(text), at + draw(st.integers(0, 200)))
        edit = draw(st.sampled_from(("insert", "delete", "duplicate", "swap", "indent", "extreme", "value")))
        if edit == "insert":
            text = text[:at] + draw(st.sampled_from(FRAGMENTS) | st.text(max_size=8)) + text[at:]
        elif edit == "delete":
            text = text[:at] + text[end:]
        elif edit == "duplicate":
            text = text[:end] + text[at:end] + text[end:]
        elif edit == "swap":
            lines = text.split("\n")
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
        elif edit == "indent":
            lines = text.split("\n")
            i = draw(st.integers(0, len(lines) - 1))
            lines[i] = " " * draw(st.integers(0, 6)) + lines[i].lstrip(" ")
            text = "\n".join(lines)
        else:
            # Replace the value after a `key: ` with an extreme one (or any fragment).
            colon = text.find(": ", at)
            if colon >= 0:
                stop = text.find("\n", colon)
                stop = len(text) if stop < 0 else stop
                choice = st.sampled_from(EXTREMES) if edit == "extreme" else st.sampled_from(FRAGMENTS)
                text = text[: colon + 2] + draw(choice) + text[stop:]
    if draw(st.integers(0, 9)) == 0:
        data = text.encode("utf-8", "surrogatepass")
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at:]
    return text


def check_loader(source: str | bytes) -> None:
    """The loader's contract: a workflow, or a located HaloError; never another exception.

    A loaded workflow also builds its graph (every template compiled). A SpecError names a line or
    a node for every issue it lists.
    """
    try:
        workflow = Workflow.from_yaml(source)
        workflow.graph  # noqa: B018 - compiles every template
    except SpecError as exc:
        unlocated = [str(issue) for issue in exc.issues if issue.line is None and issue.node is None]
        assert not unlocated, f"issues without a line or node: {unlocated}"
    except HaloError:
        pass
