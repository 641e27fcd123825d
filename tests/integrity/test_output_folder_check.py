"""The one check of an output folder (``tor_exp.paths.unwritable_folder``), used by every entry point: it writes a
byte (a full disk takes a new name but not its bytes), leaves nothing behind when it refuses, and creates nothing
when asked to keep nothing."""
from __future__ import annotations

import errno
import os

from tor_exp.paths import unwritable_folder


def test_a_writable_folder_is_created_only_when_kept(tmp_path):
    assert unwritable_folder(tmp_path / "a" / "b", keep=False) is None
    assert not (tmp_path / "a").exists()
    assert unwritable_folder(tmp_path / "a" / "b") is None
    assert (tmp_path / "a" / "b").is_dir() and list((tmp_path / "a" / "b").iterdir()) == []


def test_a_full_disk_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    def no_room(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", no_room)
    for keep in (True, False):
        problem = unwritable_folder(tmp_path / "new" / "out", keep=keep)
        assert problem == f"cannot write in {tmp_path} (No space left on device)", problem
        assert list(tmp_path.iterdir()) == []


def test_a_file_in_the_way_is_named(tmp_path):
    (tmp_path / "f").write_text("x")
    assert unwritable_folder(tmp_path / "f") == f"{tmp_path / 'f'} is a file, not a folder"
    assert unwritable_folder(tmp_path / "f" / "run", keep=False) == f"{tmp_path / 'f'} is a file, not a folder"
    assert (tmp_path / "f").read_text() == "x"
