import os
import stat

import pytest

from ansible_collections.hardened.mailhost.plugins.module_utils import _fileutil


def test_atomic_write_sets_mode_before_content(tmp_path):
    target = tmp_path / "secret"
    _fileutil.atomic_write(str(target), "s3cret\n", mode=0o400)
    assert target.read_text() == "s3cret\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o400


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "f"
    target.write_text("old")
    _fileutil.atomic_write(str(target), b"new")
    assert target.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["f"]


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "f"
    target.write_text("old")

    def boom(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(_fileutil.os, "rename", boom)
    with pytest.raises(OSError):
        _fileutil.atomic_write(str(target), "new")
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["f"]
