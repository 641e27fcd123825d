"""A job's output folder: held by one process from the "is this folder free" check to its record's final rename,
and the one place the job's files (results.json, samples, tables, plots, Hydra's ``.hydra/``, the log) are written.

* **One run at a time.** :meth:`RunFolder.claim` takes a lock on the folder (``filelock``; the lock file stays,
  empty) and notes the holder in ``.tor_exp.owner``; a second run into a busy folder stops at once with one line
  naming the folder and the holder's pid. The lock is held until the record is renamed into place, so two runs'
  numbers never meet in one folder and neither is lost.
* **Nothing half-written.** Every file is written through a temporary file and a rename
  (:func:`tor_exp.records.files.atomic_write`); no ``.tmp`` survives a failed or interrupted write.
* **Nothing lost.** A write the folder refuses (disk full, folder removed) goes to
  ``$TMPDIR/tor_exp-unsaved/<config hash>/<the same name>``, the log says so in one line, and the job ends with
  one ``error:`` line naming the files and where they went (:meth:`RunFolder.check_saved`).
* **A refused run touches nothing.** :func:`refusal` reads the folder without writing; it runs before the claim.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any, Mapping, Optional

from tor_exp.errors import ConfigError
from tor_exp.records.files import atomic_write, fallback_dir, reason
from tor_exp.records.keys import config_hash
from tor_exp.records.checkpoint import fingerprint
from tor_exp.records.results import RESULTS_FILE, read_results, recorded_fingerprint, same_run, set_aside, to_json

log = logging.getLogger(__name__)

LOCK_FILE = ".tor_exp.lock"
OWNER_FILE = ".tor_exp.owner"
LOG_FILE = "tor_exp.log"
#: Hydra's own log file format (its job_logging ``simple`` formatter)
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
_SHOWN_NAMES = 4

#: folders whose record this process completed, in order (an interrupted sweep names them)
_finished: list[Path] = []


def finished_records() -> list[Path]:
    """The output folders whose record this process wrote, oldest first."""
    return list(_finished)


def note_finished(path: str | os.PathLike) -> None:
    """Name a folder whose record another process of this sweep completed (a launcher's job process)."""
    folder = Path(path).absolute()
    if folder not in _finished:
        _finished.append(folder)


def refusal(out_dir: str | os.PathLike, resolved: Mapping[str, Any], *, overwrite: bool) -> Optional[str]:
    """Why a job of config ``resolved`` may not write into ``out_dir`` (None: it may): the folder holds a complete
    result of another config, or of this config on other weights (the checkpoint at ``model.path`` changed since).
    Reads, never writes, so a refused job leaves the folder byte-identical."""
    record, _ = read_results(out_dir)
    if record is None or record.get("status") != "complete" or overwrite:
        return None
    if record.get("config_hash") == config_hash(resolved):
        recorded = recorded_fingerprint(record)
        if recorded is None or same_run(record, dict(resolved)):  # an older record that does not name its weights
            return None
        what = (f"a complete result of this config on other weights (checkpoint fingerprint {recorded}; "
                f"{fingerprint(resolved) or 'no checkpoint'} at model.path now)")
    else:
        what = f"a complete result of another config ({record.get('run_name', '?')})"
    return (f"{Path(out_dir) / RESULTS_FILE} holds {what}; use another output dir, or overwrite=true to replace "
            f"it (the old record is kept as results.json.replaced-<time>)")


def holder(out_dir: str | os.PathLike) -> str:
    """Who holds ``out_dir`` (from its owner note), for the busy-folder message."""
    try:
        return (Path(out_dir) / OWNER_FILE).read_text(encoding="utf-8").strip() or "pid unknown"
    except OSError:
        return "pid unknown"


class RunFolder:
    """The output folder of one job of config ``resolved``; use as ``with RunFolder(dir, resolved) as folder:``."""

    def __init__(self, path: str | os.PathLike, resolved: Mapping[str, Any]) -> None:
        self.path = Path(path).absolute()
        self.config_hash = config_hash(resolved)
        self.fallback = fallback_dir(self.config_hash)
        #: name → (where it went instead, why) for every write the folder refused
        self.fell_back: dict[str, tuple[Path, str]] = {}
        self._lock: Any = None
        self._log: Optional[_RunLog] = None

    # ------------------------------------------------------------------------------------------- holding
    def claim(self) -> "RunFolder":
        """Create the folder, lock it and prove it takes a file; a busy or unwritable folder is one line."""
        from filelock import FileLock, Timeout

        try:
            self.path.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(self.path / LOCK_FILE), timeout=0)
            lock.acquire()
        except Timeout:
            raise ConfigError(f"output dir {self.path} is in use by another run ({holder(self.path)}); wait for it "
                              "to end or choose another hydra.run.dir / hydra.sweep.dir") from None
        except OSError as err:
            raise ConfigError(f"output dir {self.path}: not writable ({reason(err)}); choose another "
                              "hydra.run.dir / hydra.sweep.dir") from None
        self._lock = lock
        started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        try:
            atomic_write(self.path / OWNER_FILE, f"pid {os.getpid()} on {socket.gethostname()} since {started}\n")
        except OSError as err:
            self.release()
            raise ConfigError(f"output dir {self.path}: not writable ({reason(err)}); choose another "
                              "hydra.run.dir / hydra.sweep.dir") from None
        return self

    def release(self) -> None:
        """Stop logging into the folder and let the next run have it."""
        if self._log is not None:
            logging.getLogger().removeHandler(self._log)
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None
        if self._lock is not None:
            with contextlib.suppress(OSError):
                (self.path / OWNER_FILE).unlink()
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "RunFolder":
        return self.claim()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def make_room(self, resolved: Mapping[str, Any], *, resume: bool, overwrite: bool) -> Optional[dict[str, Any]]:
        """Under the lock: the record to reuse (``resume`` and a complete record of this config on these weights),
        else None after setting aside what this job replaces: a damaged results.json (``.corrupt-<time>``), a
        record of this config that is recomputed (``.previous-<time>``; also an older record that does not name
        its checkpoint) or, with ``overwrite``, one of another config or other weights (``.replaced-<time>``;
        without ``overwrite`` that is a one-line error). Records are moved, never deleted."""
        record, problem = read_results(self.path)
        if problem is not None:
            moved = set_aside(self.path, "corrupt")
            log.warning("results.json in %s is %s: moved to %s; recomputing", self.path, problem, moved.name)
            return None
        if record is None or record.get("status") != "complete":
            return None
        same = same_run(record, dict(resolved))
        if same and resume:
            return record
        if same or (record.get("config_hash") == config_hash(resolved) and recorded_fingerprint(record) is None):
            why = "resume=false" if same else "the record does not name the checkpoint it was computed on"
            log.info("recomputing (%s); the previous record is kept as %s", why, set_aside(self.path, "previous").name)
            return None
        why = refusal(self.path, resolved, overwrite=overwrite)
        if why is not None:  # another run finished here since the job's first look
            raise ConfigError(why)
        log.warning("replacing %s (overwrite=true): kept as %s", self.path / RESULTS_FILE,
                    set_aside(self.path, "replaced").name)
        return None

    # ------------------------------------------------------------------------------------------- writing
    def write(self, name: str, data: str | bytes) -> Path:
        """Write ``name`` (a path inside the folder) atomically; if the folder refuses it, into the fallback
        folder under the same name (said in the log; :meth:`check_saved` fails the job). Returns where it went."""
        target = self.path / name
        try:
            return atomic_write(target, data)
        except OSError as err:
            try:
                spare = atomic_write(self.fallback / name, data)
            except OSError as again:
                raise ConfigError(f"could not write {target} ({reason(err)}) nor {self.fallback / name} "
                                  f"({reason(again)}): nothing of it was saved") from None
            self._fell_back(name, spare, reason(err))
            return spare

    def write_record(self, results: dict[str, Any]) -> Path:
        """results.json: the job's record, written last (its rename is what makes the job complete)."""
        path = self.write(RESULTS_FILE, to_json(results))
        if path.parent == self.path:
            _finished.append(self.path)
        return path

    def start_log(self) -> None:
        """Send the process's log records to ``tor_exp.log`` in the folder (appending), until :meth:`release`."""
        if self._log is None:
            self._log = _RunLog(self)
            logging.getLogger().addHandler(self._log)

    def check_saved(self) -> None:
        """One ``error:`` line if any file of the job went to the fallback folder instead of this one."""
        if not self.fell_back:
            return
        names = list(self.fell_back)
        shown = ", ".join(names[:_SHOWN_NAMES]) + (f" and {len(names) - _SHOWN_NAMES} more"
                                                   if len(names) > _SHOWN_NAMES else "")
        why = next(iter(self.fell_back.values()))[1]
        raise ConfigError(f"could not write {shown} in {self.path} ({why}); saved to {self.fallback} instead")

    def _fell_back(self, name: str, spare: Path, why: str) -> None:
        self.fell_back[name] = (spare, why)
        log.warning("could not write %s (%s): saved to %s instead", self.path / name, why, spare)


class _RunLog(logging.FileHandler):
    """The job's ``tor_exp.log``; when the folder refuses it, the rest of the log goes to the fallback folder."""

    def __init__(self, folder: RunFolder) -> None:
        super().__init__(folder.path / LOG_FILE, mode="a", encoding="utf-8", delay=True)
        self.setFormatter(logging.Formatter(LOG_FORMAT))
        self.folder = folder
        self.moved = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        err = sys.exc_info()[1]
        if not isinstance(err, OSError):
            super().handleError(record)
            return
        if self.moved:  # the fallback refuses it too: the record is dropped, the job still ends with its error
            return
        self.moved = True
        if self.stream is not None:
            with contextlib.suppress(OSError):
                self.stream.close()
            self.stream = None  # type: ignore[assignment]
        spare = self.folder.fallback / LOG_FILE
        with contextlib.suppress(OSError):
            spare.parent.mkdir(parents=True, exist_ok=True)
        self.baseFilename = str(spare)
        self.folder.fell_back[LOG_FILE] = (spare, reason(err))
        self.emit(record)
