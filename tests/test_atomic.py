"""Atomic writes: an interrupted write leaves the previous file intact and no temporary file."""

import json
import os

import pytest

from modscope.atomic import atomic_path, check_writable, remove_stale_temps, write_json_atomic


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


# --- stale temporary files ------------------------------------------------------------------------------
_WRITER = """
import sys, time
from modscope.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_text("half")
    print(tmp, flush=True)
    time.sleep(60)
"""


def _killed_writer(target):
    """The temp file of a writer killed with SIGKILL in the middle of an atomic write of ``target``."""
    import signal
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], stdout=subprocess.PIPE, env=env)
    try:
        tmp = proc.stdout.readline().decode().strip()
        assert tmp and os.path.exists(tmp)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return tmp


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL")
def test_temp_file_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "r.json"
    tmp = _killed_writer(target)
    assert os.path.exists(tmp) and not target.exists()  # what SIGKILL leaves behind
    other = tmp_path / f".other.json.{os.path.basename(tmp).split('.', 3)[3]}"  # another target's name
    os.link(tmp, other)
    write_json_atomic(target, [1])
    assert sorted(os.listdir(tmp_path)) == [other.name, "r.json"]  # only r.json's temp was touched
    assert remove_stale_temps(tmp_path) == [other]
    assert os.listdir(tmp_path) == ["r.json"]


def _host_tag(folder) -> str:
    """The host part of the temp files' names on this machine (``.NAME.PID@HOST.XXXXXXXX.tmp``)."""
    with atomic_path(folder / "probe") as tmp:
        tag = tmp.name.split(".")[2].split("@")[1]
    (folder / "probe").unlink()
    return tag


def test_live_writers_temp_files_are_kept(tmp_path):
    host = _host_tag(tmp_path)
    target = tmp_path / "r.json"
    with atomic_path(target) as mine:  # this process is writing it
        mine.write_text("x")
        assert remove_stale_temps(tmp_path) == []
        write_json_atomic(target, [1])  # a second writer of the same target in this process
        assert mine.exists()
    other_host = tmp_path / f".r.json.1@{'0' * 8 if host != '0' * 8 else '1' * 8}.abcdefgh.tmp"
    other_host.write_text("")
    unrelated = tmp_path / ".cache.tmp"
    unrelated.write_text("")
    assert remove_stale_temps(tmp_path) == []
    assert {p.name for p in tmp_path.iterdir()} == {"r.json", other_host.name, unrelated.name}


def test_recursive_clean_and_old_style_names(tmp_path):
    host = _host_tag(tmp_path)
    sub = tmp_path / "units"
    sub.mkdir()
    dead = sub / f".a.json.{2**22 + 12345}@{host}.abcd_123.tmp"  # above Linux's pid_max: never running
    legacy = tmp_path / ".b.safetensors.k3j_9x2q.tmp"  # before the pid was in the name
    for p in (dead, legacy):
        p.write_text("")
    os.utime(legacy, (1e9, 1e9))  # older than this process
    assert remove_stale_temps(tmp_path) == [legacy]
    assert remove_stale_temps(tmp_path, recursive=True) == [dead]
    assert sorted(os.listdir(tmp_path)) == ["units"] and os.listdir(sub) == []


# --- check_writable -------------------------------------------------------------------------------------
def test_check_writable_accepts_a_creatable_path_and_creates_nothing(tmp_path):
    path = tmp_path / "new" / "deeper" / "r.json"
    assert check_writable(path, name="--json") == path
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda d: d, IsADirectoryError, "is a folder"),
        (lambda d: (d / "f").touch() or d / "f" / "r.json", NotADirectoryError, "is a file, not a folder"),
        (lambda d: "", ValueError, "empty path"),
    ],
)
def test_check_writable_names_the_option_and_the_problem(tmp_path, make, error, words):
    with pytest.raises(error, match=words) as info:
        check_writable(make(tmp_path), name="--plot")
    assert str(info.value).startswith("--plot") and "\n" not in str(info.value)


@pytest.mark.skipif(os.name == "nt" or os.geteuid() == 0, reason="root writes anywhere")
def test_check_writable_refuses_a_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            check_writable(ro / "sub" / "r.json", name="--out")
    finally:
        ro.chmod(0o755)


def test_check_writable_asks_the_os(tmp_path, monkeypatch):
    """What the test above checks, where it cannot run (as root): the verdict is the OS's access check."""
    asked = []
    monkeypatch.setattr(os, "access", lambda p, mode: asked.append((str(p), mode)) or False)
    with pytest.raises(PermissionError, match=r"--out '.*r.json': folder '.*' \(where its folder would be"):
        check_writable(tmp_path / "sub" / "r.json", name="--out")
    assert asked == [(str(tmp_path), os.W_OK | os.X_OK)]


def test_resuming_a_run_folder_removes_what_killed_writes_left(tmp_path):
    from modscope.experiments.run import Run

    host = _host_tag(tmp_path)
    Run(tmp_path, "x", "quick", {"a": 1}).checkpoint_prefix("net-0")  # claims the folder
    (tmp_path / "checkpoints").mkdir(exist_ok=True)
    dead = tmp_path / "checkpoints" / f".net-0.train.pt.{2**22 + 1}@{host}.abcdefgh.tmp"
    dead.write_bytes(b"half a checkpoint")
    Run(tmp_path, "x", "quick", {"a": 1})
    assert not dead.exists()
