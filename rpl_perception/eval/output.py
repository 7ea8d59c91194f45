"""A fresh report folder per run, written whole or not at all.

:func:`check_fresh_output` refuses a non-empty ``--out`` (unless ``overwrite``) before any work;
:func:`staged_output` gives a hidden staging folder beside it, which replaces ``--out`` only when the
run succeeds, so a failed run leaves neither half a report nor a previous report's plots mixed in.
"""

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["check_fresh_output", "staged_output"]


def check_fresh_output(out, overwrite: bool = False) -> Path:
    """``out`` as a Path, refused if it is a file or, unless ``overwrite``, a non-empty folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the report")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"--out {out} is not empty (a previous run's report?); give a new folder, or "
                         "--overwrite to replace its contents")
    return out


@contextmanager
def staged_output(out, overwrite: bool = False) -> Iterator[Path]:
    """Yield a staging folder; on success it becomes ``out`` (replacing it with ``overwrite``), on
    failure it is removed and ``out`` stays as it was."""
    out = check_fresh_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        check_fresh_output(out, overwrite)  # something may have appeared there while the run went on
        shutil.rmtree(out)
    os.replace(staging, out)
    os.chmod(out, 0o777 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
