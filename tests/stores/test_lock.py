"""Store locks: a second writer is refused, a dead writer's lock is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from emfuse.stores.errors import OutputNotWritable
from emfuse.stores.lock import StoreLock, StoreLockedError, _boot_id, lock_path

HOLD = """
import sys, time
from emfuse.stores.lock import StoreLock
with StoreLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_lock_file_names_the_holder_and_is_removed(tmp_path):
    store = tmp_path / "out.zarr"
    with StoreLock(store):
        holder = json.loads(lock_path(store).read_text())
        assert holder["host"] == socket.gethostname()
        with StoreLock(store):  # re-entrant within one process
            pass
        assert lock_path(store).exists()
    assert not lock_path(store).exists()


def test_second_process_is_refused(tmp_path):
    store = tmp_path / "out.zarr"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(store)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(StoreLockedError) as info:
            StoreLock(store).acquire()
        message = str(info.value)
        assert f"process {proc.pid}" in message and "out.zarr" in message and ".lock" in message
    finally:
        proc.kill()
        proc.wait()
    # the holder was killed (SIGKILL, no clean-up): its lock is stale and taken over
    with StoreLock(store):
        assert json.loads(lock_path(store).read_text())["pid"] != proc.pid


def test_lock_of_another_host_is_respected(tmp_path):
    store = tmp_path / "out.zarr"
    lock_path(store).write_text(json.dumps({"host": "other-node", "pid": 1, "since": "x", "command": "emfuse"}))
    with pytest.raises(StoreLockedError, match="other-node"):
        StoreLock(store).acquire()
    assert lock_path(store).exists()


def test_unwritable_folder_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputNotWritable, match="output directory"):
        StoreLock(blocker / "out.zarr").acquire()


def test_a_file_output_may_replace_a_file_a_store_may_not(tmp_path):
    """``check_writable(..., file=True)`` (an exported signal, a model) checks the file's folder, so
    an existing file can be replaced and a missing folder is created; a store path that is a file
    is still refused, naming it."""
    from emfuse.stores.zarrio import check_writable

    existing = tmp_path / "model.safetensors"
    existing.write_text("an earlier model")
    assert check_writable(existing, file=True) == existing
    assert check_writable(tmp_path / "new" / "x.hspy", file=True) and (tmp_path / "new").is_dir()
    with pytest.raises(OutputNotWritable, match="model.safetensors"):
        check_writable(existing)
    with pytest.raises(OutputNotWritable, match="output directory"):
        check_writable(existing / "x.hspy", file=True)


def test_run_job_refuses_a_locked_store(tmp_path, dysco3):
    """A job does not touch a store another run is writing."""
    import numpy as np

    from emfuse.flows.jobs import run_job
    from emfuse.stores.ingest import ingest

    src = tmp_path / "in.npz"
    np.savez(src, HAADF=dysco3["haadf"][:32, :32], **{el: m[:32, :32] for el, m in zip(dysco3["elements"], dysco3["maps"])})
    store = ingest(src, tmp_path / "in.zarr")
    out = tmp_path / "out.zarr"
    lock_path(out).write_text(json.dumps({"host": "other-node", "pid": 1}))
    with pytest.raises(StoreLockedError):
        run_job("fuse", store, out, client=None, progress=False, params={"lambda_chem": 0.05, "lambda_tv": 0.02})
    assert not out.exists()


def test_unreadable_lock_waits_then_is_taken_over(tmp_path):
    """A crash between creating the lock file and writing it leaves it empty."""
    store = tmp_path / "out.zarr"
    path = lock_path(store)
    path.write_text("")
    with pytest.raises(StoreLockedError):  # young: its writer may be filling it in
        StoreLock(store).acquire()
    old = path.stat().st_mtime - 3600
    os.utime(path, (old, old))
    with StoreLock(store):
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_lock_from_before_a_reboot_is_stale(tmp_path):
    store = tmp_path / "out.zarr"
    # this very process id, alive, but recorded in another boot of this host
    lock_path(store).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "boot": "another-boot"}))
    if _boot_id() is None:
        pytest.skip("no boot id on this system")
    with StoreLock(store):
        assert json.loads(lock_path(store).read_text())["boot"] == _boot_id()
