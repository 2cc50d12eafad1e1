"""halo's GGUF reader (`GGUFFile`) against the `gguf` package's GGUFReader, and its SentencePiece
merges against the plain token-by-token construction they replaced.

The reader must return exactly GGUFReader's metadata values and tensor views (tiny files of every
family, a file with every value type in both byte orders, the default model's file), and every
truncated prefix of a file must be a ModelLoadError naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

pytest.importorskip("transformers", reason="transformers is a test dependency (pip install 'halo[test]')")

from halo.engine.gguf_checkpoint import GGUFFile, open_gguf  # noqa: E402
from halo.engine.model_source import resolve_model_path  # noqa: E402
from halo.engine.tokenizer import sentencepiece_merges  # noqa: E402
from halo.errors import ModelLoadError  # noqa: E402
from tiny_checkpoints import GGUF_SPECS, build, write_gguf  # noqa: E402


def reference_metadata(reader: gguf.GGUFReader) -> dict[str, Any]:
    return {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}


def assert_same_as_gguf_reader(path: Path) -> GGUFFile:
    ours, theirs = open_gguf(path), gguf.GGUFReader(path)
    want = reference_metadata(theirs)
    assert list(ours.metadata) == list(want)  # same keys, in file order
    for key, value in want.items():
        got = ours.metadata[key]
        assert got == value and type(got) is type(value), key
        if isinstance(value, list):
            assert [type(v) for v in got] == [type(v) for v in value], key
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for a, b in zip(ours.tensors, theirs.tensors, strict=True):
        assert (a.tensor_type, a.shape, a.n_elements, a.n_bytes, a.data_offset) == (
            b.tensor_type,
            tuple(b.shape.tolist()),
            b.n_elements,
            b.n_bytes,
            b.data_offset,
        ), a.name
        assert a.data.shape == b.data.shape and a.data.dtype == b.data.dtype, a.name
        assert np.array_equal(a.data, b.data, equal_nan=True), a.name
    return ours


@pytest.mark.parametrize("name", [s.name for s in GGUF_SPECS])
def test_tiny_family_files_read_like_gguf_reader(tmp_path: Path, name: str) -> None:
    spec = next(s for s in GGUF_SPECS if s.name == name)
    model = build(spec, tmp_path)
    path = tmp_path / f"{name}.gguf"
    write_gguf(spec, model, tmp_path, path, "Q8_0")
    assert_same_as_gguf_reader(path)


def _every_value_type(path: Path, endianess: gguf.GGUFEndian) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama", endianess=endianess)
    writer.add_uint8("t.u8", 200)
    writer.add_int8("t.i8", -5)
    writer.add_uint16("t.u16", 60_000)
    writer.add_int16("t.i16", -30_000)
    writer.add_uint32("t.u32", 4_000_000_000)
    writer.add_int32("t.i32", -2_000_000_000)
    writer.add_float32("t.f32", 0.1)
    writer.add_uint64("t.u64", 2**63 + 5)
    writer.add_int64("t.i64", -(2**62))
    writer.add_float64("t.f64", 1 / 3)
    writer.add_bool("t.bool", True)
    writer.add_string("t.str", "héllo ▁wörld 🙂")
    writer.add_string("t.empty", "")
    writer.add_array("t.strings", ["", "a", "ü", "  ", "<0x0A>", "🙂x"] * 50)
    writer.add_array("t.ints", list(range(-3, 300)))
    writer.add_array("t.floats", [0.5, -1.25, 3e-7])
    writer.add_array("t.bools", [True, False, True])
    writer.add_array("t.empty_array", [])
    writer.add_tensor("a", np.arange(12, dtype=np.float32).reshape(3, 4))
    writer.add_tensor("b", np.arange(6, dtype=np.float16).reshape(2, 3))
    writer.add_tensor("c", np.arange(5, dtype=np.int32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("endianess", [gguf.GGUFEndian.LITTLE, gguf.GGUFEndian.BIG], ids=["little", "big"])
def test_every_value_type_reads_like_gguf_reader(tmp_path: Path, endianess: gguf.GGUFEndian) -> None:
    ours = assert_same_as_gguf_reader(_every_value_type(tmp_path / "values.gguf", endianess))
    assert ours.metadata["t.str"] == "héllo ▁wörld 🙂" and ours.metadata["t.u64"] == 2**63 + 5
    assert ours.tensors[0].data.tolist() == np.arange(12, dtype=np.float32).reshape(3, 4).tolist()


def test_every_truncation_is_a_load_error(tmp_path: Path) -> None:
    path = _every_value_type(tmp_path / "whole.gguf", gguf.GGUFEndian.LITTLE)
    whole = path.read_bytes()
    end = max(t.data_offset + t.n_bytes for t in open_gguf(path).tensors)  # then only alignment padding
    bad = tmp_path / "cut.gguf"
    for size in range(end):
        bad.write_bytes(whole[:size])
        with pytest.raises(ModelLoadError) as err:
            open_gguf(bad)
        assert str(bad) in str(err.value), size


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        pytest.param(lambda b: b"GGUX" + b[4:], "magic", id="magic"),
        pytest.param(lambda b: b[:4] + (9).to_bytes(4, "little") + b[8:], "version 9", id="version"),
    ],
)
def test_a_foreign_header_is_a_load_error(tmp_path: Path, patch: Any, message: str) -> None:
    whole = _every_value_type(tmp_path / "whole.gguf", gguf.GGUFEndian.LITTLE).read_bytes()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(patch(whole))
    with pytest.raises(ModelLoadError, match=message):
        open_gguf(bad)


@pytest.mark.slow
def test_the_default_model_file_reads_like_gguf_reader() -> None:
    ours = assert_same_as_gguf_reader(resolve_model_path())
    assert len(ours.metadata["tokenizer.ggml.tokens"]) == 49152


def _merges_token_by_token(vocab: dict[str, int], priority: dict[str, float]) -> list[tuple[str, str]]:
    """The construction sentencepiece_merges replaced (transformers' generate_merges, literally)."""
    merges: list[tuple[str, str, float]] = []
    for merged, score in priority.items():
        local = [
            (merged[:i], merged[i:], score)
            for i in range(1, len(merged))
            if merged[:i] in vocab and merged[i:] in vocab
        ]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in merges]


def test_sentencepiece_merges_match_the_token_by_token_order() -> None:
    rng = np.random.default_rng(0)
    letters = list("ab▁üé🙂")
    tokens = list(dict.fromkeys(letters + ["".join(rng.choice(letters, rng.integers(2, 7))) for _ in range(400)]))
    vocab = {t: i for i, t in enumerate(tokens)}
    for priority in (
        {t: -i for i, t in enumerate(tokens)},  # Gemma: file order
        {t: float(rng.integers(0, 5)) for t in tokens},  # many ties
        {t: 0.0 for t in tokens},  # all tied
    ):
        assert sentencepiece_merges(vocab, priority) == _merges_token_by_token(vocab, priority)
    assert sentencepiece_merges({"a": 0}, {"a": 0.0}) == []
