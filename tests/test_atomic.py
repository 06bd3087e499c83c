"""Atomic writes: an interrupted write leaves the previous file intact and no temporary file."""

import json
import os

import pytest

from modscope.atomic import atomic_path, write_json_atomic


def test_interrupted_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "sub" / "result.json"
    write_json_atomic(target, {"ncut": 1.5, "z": float("nan")})
    assert json.loads(target.read_text()) == {"ncut": 1.5, "z": None}
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("half a fi")
        raise KeyboardInterrupt
    assert json.loads(target.read_text())["ncut"] == 1.5
    assert os.listdir(target.parent) == ["result.json"]


def test_written_file_has_normal_permissions(tmp_path):
    target = tmp_path / "r.json"
    write_json_atomic(target, [1, 2])
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
