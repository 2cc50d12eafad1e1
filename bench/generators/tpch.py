"""TPC-H data for the SQL tools: DuckDB's own generator (`dbgen`), loaded from the pip package's file.

Nothing is downloaded: the extension comes from `duckdb-extension-tpch`, which ships the compiled
extension for this DuckDB version. The database is made once per scale factor and kept in a cache.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb


def extension_path() -> Path:
    """The tpch extension file shipped by the `duckdb-extension-tpch` package for this DuckDB."""
    try:
        import duckdb_extension_tpch
    except ImportError as exc:
        raise RuntimeError("the benchmark needs `pip install duckdb-extension-tpch==1.5.5` (no downloads)") from exc
    folder = Path(duckdb_extension_tpch.__file__).parent / "extensions"
    wanted = folder / f"v{duckdb.__version__}" / "tpch.duckdb_extension"
    if wanted.exists():
        return wanted
    found = sorted(folder.rglob("tpch.duckdb_extension"))
    if not found:
        raise RuntimeError(f"no tpch.duckdb_extension under {folder}")
    return found[-1]


def tpch_database(cache_dir: Path, scale_factor: float) -> Path:
    """A DuckDB file with the eight TPC-H tables at `scale_factor`, made on first use (atomically)."""
    path = cache_dir / f"tpch-sf{scale_factor:g}.duckdb"
    if path.exists():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    partial.unlink(missing_ok=True)
    con = duckdb.connect(str(partial))
    try:
        con.execute(f"LOAD '{extension_path()}'")
        con.execute("CALL dbgen(sf = $sf)", {"sf": scale_factor})
        con.execute("CHECKPOINT")
    finally:
        con.close()
    partial.replace(path)
    return path
