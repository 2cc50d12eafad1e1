"""Consolidation counts on constructed batches: known duplicates, known shared prefixes, exact numbers."""

from __future__ import annotations

import re

import pytest
from halo.plan import WhitespaceTokenizer, consolidate, explain_text
from halo.plan.prefix_index import PrefixIndex
from halo.spec import Workflow

MIXED = """\
name: mixed
inputs: [q, user]
databases: {db: {path: x.duckdb}}
nodes:
  - {id: a, kind: llm, prompt: "Q: {{ q }}"}
  - {id: b, kind: llm, prompt: "Q: {{ q }}", temperature: 0.8}
  - {id: s, kind: sql, db: db, query: "SELECT * FROM t WHERE u = :u", params: {u: "{{ user }}"}}
  - {id: p, kind: http, method: POST, url: "https://api.test/{{ user }}", json: {q: "{{ q }}"}}
  - {id: d, kind: llm, prompt: "{{ a.output }} {{ s.rows }}"}
  - {id: e, kind: llm, prompt: "{{ b.output }}"}
  - {id: f, kind: rule, input: "{{ q }}", regex: "(\\\\w+)", after: [p]}
"""

ROWS = [
    {"q": "a b c", "user": 1},
    {"q": "a b c", "user": 1},
    {"q": "a b d", "user": 1},
    {"q": "z", "user": 2},
]


def test_known_duplicates_give_exact_executions():
    graph = consolidate(Workflow.from_yaml(MIXED), ROWS, WhitespaceTokenizer())
    executions = {name: graph.counters[name].physical for name in "absdpef"}
    # a: distinct q; b: sampled, never merged; s: distinct user; p: POST, never merged;
    # d: distinct (q, user) through a and s; e: reads the sampled b, so stays per row;
    # f: renders like a rule over q but runs after the per-row POST, so it cannot merge either.
    assert executions == {"a": 3, "b": 4, "s": 2, "d": 3, "p": 4, "e": 4, "f": 4}
    assert graph.logical_calls == 7 * 4
    assert graph.physical_calls == 3 + 4 + 2 + 3 + 4 + 4 + 4
    assert graph.physical_of("a", 0) == graph.physical_of("a", 1)
    assert graph.physical_of("a", 0).instances == (("a", 0), ("a", 1))
    assert graph.physical_of("d", 0).upstream == (graph.assignment["a"][0], graph.assignment["s"][0])


def test_prefix_counts_are_exact():
    wf = Workflow.from_yaml("name: p\ninputs: [q]\nnodes:\n  - {id: a, kind: llm, prompt: 'Q: {{ q }}'}\n")
    rows = [{"q": "a b c"}, {"q": "a b c"}, {"q": "a b d"}, {"q": "z"}]
    graph = consolidate(wf, rows, WhitespaceTokenizer())
    # "<|im_start|> user Q: {q} <|im_end|> <|im_start|> assistant": 6 tokens plus the words of q.
    prefixes = graph.prefixes["smollm2-135m"]
    assert prefixes.requests == 3
    assert prefixes.logical_tokens == 9 + 9 + 9 + 7
    assert prefixes.physical_tokens == 9 + 9 + 7
    # trie: 3 shared, then "a b" (2) shared by two, then 4 + 4 for the two tails, and 4 for "z ..."
    assert prefixes.unique_tokens == 3 + 2 + 4 + 4 + 4
    assert graph.prompt_tokens_total == 34 and graph.prompt_tokens_unique == 17
    groups = {(g.tokens, len(g.members)) for g in prefixes.groups}
    assert groups == {(3, 3), (5, 2)}
    counters = graph.counters["a"]
    assert (counters.prompt_tokens, counters.physical_prompt_tokens, counters.cached_prompt_tokens) == (
        34,
        25,
        8,
    )


def test_prefix_index_matches_a_dict_trie():
    sequences = [[1, 2, 3], [1, 2], [4], [1, 2, 3, 4], [2, 1], [1, 2, 3]]
    index = PrefixIndex(list(range(len(sequences))), sequences)
    trie: dict = {}
    nodes = 0
    for seq in sequences:
        level = trie
        for token in seq:
            if token not in level:
                level[token] = {}
                nodes += 1
            level = level[token]
    assert index.unique_tokens == nodes
    assert index.total_tokens == sum(map(len, sequences))


def test_equal_requests_from_different_nodes_share_one_execution():
    wf = Workflow.from_yaml(
        """\
name: twins
inputs: [q]
nodes:
  - {id: one, kind: llm, prompt: "Say {{ q }}"}
  - {id: two, kind: llm, prompt: "Say {{ q | trim }}"}
  - {id: three, kind: llm, prompt: "Say {{ q }}", max_tokens: 9}
"""
    )
    graph = consolidate(wf, [{"q": "hi"}, {"q": " hi "}], WhitespaceTokenizer())
    shared = graph.physical_of("one", 0).id
    assert graph.physical_of("two", 0).id == shared and graph.physical_of("two", 1).id == shared
    assert graph.physical_of("three", 0).id != shared  # different max_tokens: a different request
    assert graph.physical_of("one", 1).id != shared  # " hi " renders differently
    assert graph.counters["two"].owned == 0 and graph.counters["two"].physical == 1


def test_values_of_different_types_are_not_merged():
    wf = Workflow.from_yaml(
        "name: t\ninputs: [v]\nnodes:\n"
        "  - {id: s, kind: sql, query: 'SELECT :v AS v', params: {v: '{{ v }}'}}\n"
    )
    graph = consolidate(
        wf, [{"v": 1}, {"v": 1.0}, {"v": True}, {"v": "1"}, {"v": 1}, {"v": -0.0}, {"v": 0.0}]
    )
    assert graph.counters["s"].physical == 6
    assert graph.assignment["s"][0] == graph.assignment["s"][4]


def test_loop_instances_consolidate_per_iteration():
    wf = Workflow.from_yaml(
        """\
name: loop
inputs: [topic]
nodes:
  - id: draft
    kind: llm
    prompt: "{{ topic }}{% if iteration > 1 %} {{ critique.output }}{% endif %}"
  - {id: critique, kind: llm, prompt: "Critique {{ draft.output }}"}
loops:
  - {nodes: [draft, critique], max_iterations: 2, until: "'OK' in critique.output"}
"""
    )
    rows = [{"topic": "owls"}, {"topic": "owls"}, {"topic": "bats"}]
    graph = consolidate(wf, rows, WhitespaceTokenizer())
    assert {n: c.physical for n, c in graph.counters.items()} == {
        "draft#1": 2,
        "critique#1": 2,
        "draft#2": 2,
        "critique#2": 2,
    }
    draft2 = graph.physical_of("draft#2", 0)
    assert graph.assignment["critique#1"][0] in draft2.upstream and draft2.deferred


def test_a_row_whose_data_breaks_a_template_fails_alone():
    wf = Workflow.from_yaml(
        "name: t\ninputs: [q]\nnodes:\n"
        "  - {id: a, kind: llm, prompt: '{{ q.missing }}'}\n"
        "  - {id: b, kind: llm, prompt: 'after {{ a.output }}'}\n"
    )
    rows = [{"q": {"missing": 1}}, {"q": {}}, {"q": {"missing": 2}}, {"q": {}}]
    graph = consolidate(wf, rows, WhitespaceTokenizer())
    failed = graph.failed_rows()
    assert sorted(failed) == [1, 3]
    assert re.search(r"node 'a', template 'prompt': .*missing", failed[1])
    # equal failing inputs share one failed node; the rows that rendered are tokenized and counted
    assert graph.assignment["a"][1] == graph.assignment["a"][3]
    assert list(graph.render_errors) == [graph.assignment["a"][1]]
    assert graph.physical_of("a", 0).prompt_tokens is not None
    assert graph.physical_of("a", 1).prompt_tokens is None
    [prefixes] = graph.prefixes.values()
    assert prefixes.requests == 2 and prefixes.deferred_requests == 3  # b: one per distinct a


def test_batch_is_checked():
    wf = Workflow.from_yaml(MIXED)
    with pytest.raises(Exception, match="row 1 is missing declared input 'user'"):
        consolidate(wf, [{"q": "x", "user": 1}, {"q": "y"}])


def test_explain_text_lists_every_node_and_totals():
    graph = consolidate(Workflow.from_yaml(MIXED), ROWS, WhitespaceTokenizer())
    text = explain_text(graph)
    lines = text.splitlines()
    assert lines[0].startswith("CONSOLIDATED PLAN  mixed  rows=4")
    assert "logical=28 physical=24" in lines[0]
    row_a = next(line for line in lines if line.startswith("a "))
    assert row_a.split()[1:6] == ["llm", "smollm2-135m", "4", "3", "25%"]
    assert any(line.startswith("b *") for line in lines)
    assert any(line.startswith("PREFIXES  smollm2-135m") for line in lines)
    assert "PREFIXES  not computed" in explain_text(consolidate(Workflow.from_yaml(MIXED), ROWS))


def test_explain_dot_is_a_digraph_with_every_node_and_edge():
    from halo.plan import explain_dot

    graph = consolidate(Workflow.from_yaml(MIXED), ROWS, WhitespaceTokenizer())
    dot = explain_dot(graph)
    assert dot.startswith('digraph "mixed" {') and dot.endswith("}")
    for node in "abspdef":
        assert f'  "{node}" [label="{node}\\n' in dot
    assert '"a" -> "d";' in dot and '"p" -> "f" [style=dashed];' in dot


def test_segment_encoder_is_exact_or_falls_back():
    import re
    import zlib

    from halo.plan.prompt_tokens import SegmentEncoder

    class Stable(WhitespaceTokenizer):
        """Whitespace tokens with ids fixed by the word (crc32), whatever the call order."""

        def encode_batch(self, texts: list[str]) -> list[list[int]]:
            return [[zlib.crc32(word.encode()) for word in text.split()] for text in texts]

    class Gluing(Stable):
        """Glues a word to the marker after it: cutting texts at markers is NOT exact here."""

        def encode_batch(self, texts: list[str]) -> list[list[int]]:
            return super().encode_batch([text.replace(" <|im_end|>", "<|im_end|>") for text in texts])

    splitter = re.compile(r"(<\|im_start\|>|<\|im_end\|>)")
    texts = [Stable().render_chat([{"role": "user", "content": f"q {i}"}]) for i in range(3)]
    exact = SegmentEncoder(Stable(), splitter)
    assert exact.encode(texts) == Stable().encode_batch(texts) and exact.trusted
    inexact = SegmentEncoder(Gluing(), splitter)
    assert inexact.encode(texts) == Gluing().encode_batch(texts) and not inexact.trusted


def test_explain_names_the_rows_that_will_fail_to_render():
    wf = Workflow.from_yaml("name: t\ninputs: [q]\nnodes:\n  - {id: a, kind: llm, prompt: '{{ q.missing }}'}\n")
    text = explain_text(consolidate(wf, [{"q": {"missing": 1}}, {"q": {}}], WhitespaceTokenizer()))
    assert "FAILED ROWS  1 row(s) fail to render" in text and "first: row 1: node 'a'" in text
