"""Where `halo run` writes: the checks on its output and journal paths, and the atomic output write.

The output is written to a new temporary file beside it and renamed over it, so a reader never sees
half an output. A rename replaces whatever has the name (as root, even a device node), so the paths
are checked before the run starts (`check_paths`): the output and the journal must each be a
regular file or not exist yet, not a symbolic link, not the input or the workflow file (nor one
another, through a hard link), in a directory that exists or can be created. The rename checks the
output's name once more just before it replaces it.

Every format writes non-finite floats as null (`json_values`): JSON Lines as `null`, CSV as an empty
cell (nested values in a CSV cell as JSON text), Parquet as a null value. A lone surrogate (JSON
input may spell one) is written as its `\\uXXXX` escape, since UTF-8 cannot hold it.
"""

from __future__ import annotations

import csv
import io
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from halo.durable_files import sync_directory
from halo.errors import HaloError
from halo.runtime.json_values import dumps, without_nonfinite
from halo.runtime.results import RunResult


class OutputPathError(HaloError):
    """An output or journal path `halo run` refuses to write (the message names the path and why)."""


def check_paths(targets: dict[str, Path], sources: dict[str, Path]) -> None:
    """Refuse, before any work, a target (label -> path: the output, the journal) that is not a
    regular file or a new name in a usable directory, or that is one of `sources` (label -> path:
    the input, the workflow) or another target."""
    seen: dict[tuple[int, int], str] = {}
    for label, path in sources.items():
        identity = _identity(path)
        if identity is not None:
            seen.setdefault(identity, f"{label} {path}")
    for label, path in targets.items():
        identity = _identity(path)
        if identity is not None and identity in seen:
            through = " (through a symbolic link)" if path.is_symlink() else ""
            raise OutputPathError(f"{label} {path} is the {seen[identity]}{through}; write it somewhere else")
        _check_target(label, path)
        if identity is not None:
            seen[identity] = f"{label} {path}"


def write_output(path: Path, result: RunResult) -> None:
    """Write the run's outputs to `path` atomically, as JSON Lines, CSV or Parquet by its suffix
    (see the module doc); `_error` holds a failed row's node and message."""
    suffix = path.suffix.lower()
    write = {".csv": _write_csv, ".parquet": _write_parquet}.get(suffix, _write_jsonl)
    replace_atomically(path, lambda f: write(f, result))


def replace_atomically(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write` on a new temporary file beside `path`, fsync it and rename it over `path` (which
    must still be a regular file or absent). OutputPathError names the path on any failure; the
    temporary file is removed then."""
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: a new file, never a link or file someone put at the temporary name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        raise OutputPathError(f"cannot create a temporary file beside --output {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        _check_target("--output", path)  # its name may have been taken by something else during the run
        os.replace(tmp, path)
    except (OSError, ValueError, TypeError, NotImplementedError) as exc:  # pyarrow's errors derive from these
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
        raise OutputPathError(f"cannot write --output {path}: {reason}") from None
    finally:
        tmp.unlink(missing_ok=True)  # gone after the rename; else nothing half-written stays behind
    sync_directory(path.parent)


def _write_jsonl(f: IO[bytes], result: RunResult) -> None:
    by_row = {e.row: e for e in result.errors}
    # backslashreplace: a lone surrogate (from a python node) becomes its \\uXXXX escape, still valid JSON
    text = io.TextIOWrapper(f, encoding="utf-8", errors="backslashreplace", newline="\n")
    for index, outputs in enumerate(result.outputs):
        record = dict(outputs)
        if index in by_row:
            record["_error"] = {"node": by_row[index].node, "message": by_row[index].message}
        text.write(dumps(record, ensure_ascii=False) + "\n")
    text.flush()
    text.detach()


def _write_csv(f: IO[bytes], result: RunResult) -> None:
    columns = _columns(result)
    text = io.TextIOWrapper(f, encoding="utf-8", errors="backslashreplace", newline="")
    writer = csv.writer(text)
    writer.writerow(columns)
    for values in zip(*columns.values(), strict=True):
        writer.writerow([_csv_cell(v) for v in values])
    text.flush()
    text.detach()


def _write_parquet(f: IO[bytes], result: RunResult) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = {}
    for name, values in _columns(result).items():
        values = [without_nonfinite(v) for v in values]
        try:
            table[name] = pa.array(values, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, UnicodeEncodeError):
            # values of no single Arrow type (a string in one row, a number in another, as a model's or
            # tool's outputs may be), or a lone surrogate UTF-8 cannot hold: the column as JSON text
            table[name] = pa.array([None if v is None else _utf8_json(v) for v in values], pa.string())
    pq.write_table(pa.table(table), f)


def _columns(result: RunResult) -> dict[str, list[Any]]:
    """The outputs as columns, in input order, plus `_error_node` and `_error` (as `RunResult.to_pandas`)."""
    names = list(dict.fromkeys(name for outputs in result.outputs for name in outputs))
    columns = {name: [outputs.get(name) for outputs in result.outputs] for name in names}
    by_row = {e.row: e for e in result.errors}
    columns["_error_node"] = [by_row[i].node if i in by_row else None for i in range(len(result.outputs))]
    columns["_error"] = [by_row[i].message if i in by_row else None for i in range(len(result.outputs))]
    return columns


def _csv_cell(value: Any) -> Any:
    """A CSV cell: a nested value as JSON text, a non-finite float (and None) empty, anything else as is."""
    if isinstance(value, (dict, list, tuple)):
        return dumps(value, ensure_ascii=False)
    return without_nonfinite(value)


def _utf8_json(value: Any) -> str:
    """JSON text of `value` that UTF-8 can hold: a lone surrogate becomes its \\uXXXX escape."""
    return dumps(value, ensure_ascii=False).encode("utf-8", "backslashreplace").decode("utf-8")


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of what `path` names, following links; None if nothing is there."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _check_target(label: str, path: Path) -> None:
    try:
        st = path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        _check_directory(label, path)
        return
    except OSError as exc:
        raise OutputPathError(f"{label} {path} cannot be checked: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise OutputPathError(
            f"{label} {path} is a symbolic link (to {os.readlink(path)}); halo run replaces the file by rename, "
            "which would replace the link, not its target: pass the target's path"
        )
    if not stat.S_ISREG(st.st_mode):
        raise OutputPathError(
            f"{label} {path} is {_kind(st.st_mode)}, not a regular file; halo run writes only a regular file "
            "or a new path (it replaces the file by rename)"
        )
    _check_directory(label, path)


def _check_directory(label: str, path: Path) -> None:
    """The nearest existing folder above `path` must be a folder this process may create files in."""
    parent = path.parent
    while not os.path.lexists(parent) and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(f"{label} {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{label} {path}: cannot create files in {parent} (permission denied)")


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "an unknown kind of file"


