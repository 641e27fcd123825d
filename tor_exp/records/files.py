"""Writing one file so that it is either there complete or not there at all."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

#: where a job's files go when its output dir refuses them: ``$TMPDIR/tor_exp-unsaved/<config hash>/``
FALLBACK_DIR = "tor_exp-unsaved"
#: the process's umask (read once, at import): files get the mode a plain ``open(path, "w")`` would give them
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file beside it and a rename: a reader (resume, the report)
    sees the old file or the new one, never half of one, and a failed or interrupted write leaves no temporary
    file behind. Raises the OSError of a write the file system refuses."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~_UMASK)  # mkstemp makes it private
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def fallback_dir(key: str) -> Path:
    """The folder that takes a job's files when its output dir cannot (``key``: the job's config hash)."""
    return Path(tempfile.gettempdir()) / FALLBACK_DIR / key


def reason(err: OSError) -> str:
    """An OSError as a few words for a one-line message (``No space left on device``)."""
    return err.strerror or str(err) or type(err).__name__

