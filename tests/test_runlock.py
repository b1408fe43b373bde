"""The run lock on an output folder: a second process is refused with a message naming the first, a dead owner's lock
never blocks, and one process may lock its own folder again (the Trainer inside a command that holds the folder)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dalle2_edu.runlock as runlock_module
from dalle2_edu.runlock import RunLock, RunLockError, held_folders, read_lock_info
from dalle2_edu.train import Trainer

# the child loads runlock.py by its path, so that it starts in milliseconds (the package imports torch)
CHILD_PRELUDE = f"""
import importlib.util, json, sys, time
spec = importlib.util.spec_from_file_location("runlock", {runlock_module.__file__!r})
runlock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runlock)
"""


def run_child(body: str, *args: str, **popen) -> subprocess.Popen:
    code = CHILD_PRELUDE + textwrap.dedent(body)
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], text=True, **popen)


def try_lock_in_another_process(folder) -> dict:
    child = run_child(
        """
        try:
            with runlock.RunLock(sys.argv[1], what="second run"):
                print(json.dumps({"locked": True}))
        except runlock.RunLockError as err:
            print(json.dumps({"locked": False, "message": str(err), "owner": err.owner}))
        """,
        folder,
        stdout=subprocess.PIPE,
    )
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 0
    return json.loads(out)


def test_a_second_process_is_refused_with_the_first_runs_pid_and_command(tmp_path):
    with RunLock(tmp_path / "out", what="training decoder") as lock:
        assert lock.held and (tmp_path / "out" / ".lock").is_file()
        info = read_lock_info(tmp_path / "out")
        assert info["pid"] == os.getpid() and info["what"] == "training decoder"
        assert "pytest" in info["command"]

        answer = try_lock_in_another_process(tmp_path / "out")
        assert answer["locked"] is False
        message = answer["message"]
        assert f"pid {os.getpid()}" in message  # names the first run...
        assert "training decoder" in message and "pytest" in message  # ...what it does and its command line
        assert "Wait for that run to finish" in message and f"kill {os.getpid()}" in message and "--out" in message
        assert answer["owner"]["pid"] == os.getpid()

    assert try_lock_in_another_process(tmp_path / "out") == {"locked": True}  # released: free again


def test_the_lock_of_a_killed_process_does_not_block(tmp_path):
    holder = run_child(
        """
        lock = runlock.RunLock(sys.argv[1], what="doomed run").acquire()
        print("locked", flush=True)
        time.sleep(60)
        """,
        tmp_path,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockError, match=rf"pid {holder.pid}\b.*doomed run") as caught:
            RunLock(tmp_path).acquire()
        assert caught.value.owner["pid"] == holder.pid and caught.value.folder == tmp_path
    finally:
        holder.send_signal(signal.SIGKILL)  # no clean-up code runs: only the kernel releases the lock
        holder.wait(timeout=30)
    assert read_lock_info(tmp_path)["pid"] == holder.pid  # its record is still there...
    with RunLock(tmp_path, what="next run"):  # ...and does not block
        assert read_lock_info(tmp_path)["pid"] == os.getpid()


def test_the_lock_is_reentrant_within_one_process(tmp_path):
    outer = RunLock(tmp_path / "run", what="a command").acquire()
    with RunLock(str(tmp_path / "run") + "/./", what="the trainer inside it"):  # another spelling of the same folder
        assert os.path.realpath(tmp_path / "run") in map(str, held_folders())
    assert os.path.realpath(tmp_path / "run") in map(str, held_folders())  # the outer holder still has it
    assert try_lock_in_another_process(tmp_path / "run")["locked"] is False
    outer.release()
    assert os.path.realpath(tmp_path / "run") not in map(str, held_folders())
    outer.release()  # releasing twice is harmless


def test_a_file_in_place_of_the_folder_is_refused_clearly(tmp_path):
    (tmp_path / "taken").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="not a folder: choose another output folder"):
        RunLock(tmp_path / "taken").acquire()


# ----------------------------------------------------------------------------------------------------------------------
# the Trainer takes the lock


def make_trainer(out_dir):
    torch.manual_seed(0)
    data = torch.randn(16, 2)
    loss_fn = lambda model, x: F.mse_loss(model(x), x)
    return Trainer(nn.Linear(2, 2), loss_fn, data, batch_size=4, device="cpu", out_dir=out_dir, progress=False)


def test_trainer_refuses_a_folder_another_run_uses_before_writing_anything(tmp_path):
    holder = run_child(
        """
        lock = runlock.RunLock(sys.argv[1], what="first training").acquire()
        print("locked", flush=True)
        time.sleep(60)
        """,
        tmp_path,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        trainer = make_trainer(tmp_path)
        with pytest.raises(RunLockError, match=rf"pid {holder.pid}\b.*first training"):
            trainer.fit(3)
        assert trainer.step == 0 and sorted(p.name for p in tmp_path.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_trainer_inside_a_command_holding_the_same_folder_does_not_block(tmp_path):
    with RunLock(tmp_path, what="train all"):
        start = time.perf_counter()
        make_trainer(tmp_path).fit(2)
        assert (tmp_path / "checkpoint.pt").is_file() and time.perf_counter() - start < 30
        assert os.path.realpath(tmp_path) in map(str, held_folders())  # fit released only its own hold
    assert try_lock_in_another_process(tmp_path)["locked"] is True
