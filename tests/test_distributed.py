"""Distributed training on the CPU: two processes joined through gloo, started the way torchrun starts them
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), checked against single-process Trainers in the test process.

The workers run this file as a script (``python tests/test_distributed.py --worker ROOT``), go through every scenario
in one process group, and save what they saw to ``ROOT/rank{r}.pt``; the tests below compare."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dalle2_edu import distributed
from dalle2_edu.checkpoint import load_checkpoint
from dalle2_edu.runlock import RunLock, RunLockError
from dalle2_edu.train import Trainer

WORLD = 2
N_EXAMPLES, BATCH = 24, 8  # three global batches per epoch
# fp32 throughout: these tests compare a distributed run with a single process to 1e-6, which bf16 (the CPU default
# where the CPU has AMX) cannot do, since the two round their different batch splits differently
SETTINGS = dict(batch_size=BATCH, lr=0.05, warmup_steps=0, ema_decay=0.5, seed=3, device="cpu", log_every=1,
                amp="fp32")


def make_model():
    torch.manual_seed(11)
    return nn.Linear(3, 2)


def regression_data():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(N_EXAMPLES, 3, generator=g)
    y = x @ torch.tensor([[1.0, -2.0], [0.5, 0.0], [-1.0, 3.0]]) + 0.1 * torch.randn(N_EXAMPLES, 2, generator=g)
    return x, y, torch.arange(N_EXAMPLES)


def mse(model, batch):
    """Deterministic (no model-side randomness), and a mean over the batch: DDP must match one process exactly."""
    x, y, _ = batch
    return F.mse_loss(model(x), y)


def recording(loss_fn, seen):
    def loss(model, batch):
        seen.append(batch[2].clone())
        return loss_fn(model, batch)

    return loss


def noisy_mse(model, batch, seen_noise=None):
    x, y, _ = batch
    noise = torch.randn_like(x)
    if seen_noise is not None:
        seen_noise.append(noise)
    return F.mse_loss(model(x + 0.3 * noise), y)


def state(module):
    return {name: t.detach().clone() for name, t in module.state_dict().items()}


# ----------------------------------------------------------------------------------------------------------------------
# what each rank does


def run_worker(root: Path) -> None:
    import dalle2_edu.train as train_module

    torch.set_num_threads(1)
    info = distributed.init_distributed("cpu", timeout_s=60)
    rank = info.rank
    out: dict = {"info": (info.rank, info.world_size, info.local_rank, str(info.device), info.backend)}
    out["helpers"] = (distributed.rank(), distributed.world_size(), distributed.is_main())

    writes = {"checkpoints": 0, "sample_calls": 0}
    real_save = train_module.save_checkpoint

    def counting_save(*args, **kwargs):
        writes["checkpoints"] += 1
        return real_save(*args, **kwargs)

    def sample_fn(ema_model, step):  # saves its own file (returning None), which spares importing torchvision
        writes["sample_calls"] += 1
        (root / "ddp" / "samples").mkdir(exist_ok=True)
        (root / "ddp" / "samples" / f"rank{rank}_step{step}.txt").write_text("a sample")

    train_module.save_checkpoint = counting_save

    # 1. one step, then three, of DDP on the deterministic loss; every write counted
    seen: list = []
    trainer = Trainer(
        make_model(), recording(mse, seen), regression_data(), out_dir=root / "ddp", ckpt_every=2, sample_every=2,
        sample_fn=sample_fn, progress=True, **SETTINGS,
    )  # fmt: skip
    out["distributed"] = (trainer.distributed, trainer.rank, trainer.world_size, trainer.is_main)
    out["model_is_plain"] = type(trainer.model) is nn.Linear
    trainer.fit(1)
    out["after1"] = state(trainer.model)
    trainer.fit(3)
    out["after3"], out["ema3"], out["history3"] = state(trainer.model), state(trainer.ema_model), trainer.history
    out["writes"] = dict(writes)

    # 2. a fresh process (other initial weights) resumes that run to step 5: the batches go on into the next epoch
    resumed_seen: list = []
    resumed = Trainer(nn.Linear(3, 2), recording(mse, resumed_seen), regression_data(), out_dir=root / "ddp",
                      progress=True, **SETTINGS)  # fmt: skip
    resumed.fit(5, resume=True)
    out["seen"] = torch.stack(seen + resumed_seen)
    out["after5"] = state(resumed.model)

    # 3. with model-side noise: ranks draw different noise, and a resumed run continues exactly
    noise: list = []
    noisy_recording = lambda model, batch: noisy_mse(model, batch, noise)
    Trainer(make_model(), noisy_recording, regression_data(), out_dir=root / "noisy_a", progress=False,
            **SETTINGS).fit(2)  # fmt: skip
    Trainer(make_model(), noisy_mse, regression_data(), out_dir=root / "noisy_a", progress=False,
            **SETTINGS).fit(4, resume=True)  # fmt: skip
    unbroken = Trainer(make_model(), noisy_mse, regression_data(), out_dir=root / "noisy_b", progress=False,
                       **SETTINGS)  # fmt: skip
    unbroken.fit(4)
    resumed_noisy = load_checkpoint(root / "noisy_a" / "checkpoint.pt")
    out["noise"] = noise[0]
    out["noisy_resume_equal"] = all(
        torch.equal(resumed_noisy["model"][name], value) for name, value in unbroken.model.state_dict().items()
    )

    # 4. a NaN loss on rank 1 only stops both ranks (none waits forever for the other)
    calls: list = []

    def nan_on_rank1(model, batch):
        calls.append(1)
        loss = mse(model, batch)
        return loss * float("nan") if rank == 1 and len(calls) == 2 else loss

    try:
        Trainer(make_model(), nan_on_rank1, regression_data(), progress=False, **SETTINGS).fit(5)
        out["nan"] = "not raised"
    except FloatingPointError as err:
        out["nan"] = str(err)

    # 5. the test process holds this folder: both ranks are refused (rank 0 took no lock, rank 1 does not hang)
    try:
        Trainer(make_model(), mse, regression_data(), out_dir=root / "locked", progress=False, **SETTINGS).fit(2)
        out["locked"] = "not raised"
    except RunLockError as err:
        out["locked"] = str(err)

    # 6. refusals before anything starts
    try:
        Trainer(make_model(), mse, regression_data(), **{**SETTINGS, "batch_size": 7})
    except ValueError as err:
        out["odd_batch"] = str(err)
    try:
        Trainer(make_model(), mse, tuple(t[:1] for t in regression_data()), **SETTINGS)
    except ValueError as err:
        out["tiny_data"] = str(err)

    torch.save(out, root / f"rank{rank}.pt")

    # 7. SIGTERM reaches rank 1 only, in the middle of step 3: both ranks stop after step 3, rank 0 saves it, and
    # both exit with status 143 (SystemExit propagates out of this script)
    term_calls: list = []

    def term_on_rank1(model, batch):
        term_calls.append(1)
        if rank == 1 and len(term_calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return mse(model, batch)

    Trainer(make_model(), term_on_rank1, regression_data(), out_dir=root / "term", ckpt_every=100, progress=True,
            **SETTINGS).fit(20)  # fmt: skip
    distributed.cleanup()


# ----------------------------------------------------------------------------------------------------------------------
# the test process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Run both workers once; return (root, [results of rank 0, rank 1], [(returncode, stdout, stderr)] per rank)."""
    root = tmp_path_factory.mktemp("ddp")
    port = free_port()
    env = {**os.environ, "WORLD_SIZE": str(WORLD), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "OMP_NUM_THREADS": "1", "LOCAL_WORLD_SIZE": str(WORLD)}  # fmt: skip
    with RunLock(root / "locked", what="the test's own hold"):
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", str(root)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            )
            for r in range(WORLD)
        ]
        outputs = []
        try:
            for proc in procs:
                outputs.append((*proc.communicate(timeout=150), proc.returncode))
        finally:
            for proc in procs:
                proc.kill()
    runs = [(code, out, err) for out, err, code in outputs]
    for r, (code, out, err) in enumerate(runs):
        assert (root / f"rank{r}.pt").exists(), f"rank {r} failed (status {code}):\n{out}\n{err[-3000:]}"
    results = [torch.load(root / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return root, results, runs


def single_process(steps, seen=None, out_dir=None, resume=False):
    loss = mse if seen is None else recording(mse, seen)
    trainer = Trainer(make_model(), loss, regression_data(), out_dir=out_dir, progress=False, **SETTINGS)
    trainer.fit(steps, resume=resume)
    return trainer


def assert_close_states(a: dict, b: dict, atol=1e-6):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=f"{name} differs")


def test_workers_join_one_gloo_group(ranks):
    _, results, _ = ranks
    for r, result in enumerate(results):
        assert result["info"] == (r, WORLD, r, "cpu", "gloo")
        assert result["helpers"] == (r, WORLD, r == 0)
        assert result["distributed"] == (True, r, WORLD, r == 0)
        assert result["model_is_plain"]  # trainer.model is the user's module, not the DDP wrapper


def test_one_ddp_step_equals_one_single_process_step_on_the_concatenated_batch(ranks):
    _, results, _ = ranks
    one, three = single_process(1), single_process(3)
    for result in results:  # every rank holds the same weights...
        assert_close_states(result["after1"], state(one.model))  # ...those of one process on the whole batch
        assert_close_states(result["after3"], state(three.model))
        assert_close_states(result["ema3"], state(three.ema_model))  # the EMA follows the unwrapped module
    assert not torch.allclose(results[0]["after3"]["weight"], state(one.model)["weight"])  # training did move them
    history = results[0]["history3"]
    assert history == results[1]["history3"]  # logged scalars are averaged over the ranks
    assert history["step"] == [1, 2, 3]
    assert history["loss"] == pytest.approx(three.history["loss"], rel=1e-6)  # = the loss of the whole batch
    assert history["grad_norm"] == pytest.approx(three.history["grad_norm"], rel=1e-5)


def test_each_rank_draws_a_disjoint_share_of_every_global_batch(ranks):
    _, results, _ = ranks
    global_batches: list = []
    single_process(5, seen=global_batches)
    share = BATCH // WORLD
    for step, whole in enumerate(global_batches):
        parts = [result["seen"][step] for result in results]
        assert all(len(p) == share for p in parts)
        assert set(parts[0].tolist()).isdisjoint(parts[1].tolist())
        assert torch.equal(torch.cat(parts), whole)  # rank r takes the r-th contiguous slice of the global batch
    first_epoch = torch.cat([torch.cat([r["seen"][s] for r in results]) for s in range(3)])
    assert sorted(first_epoch.tolist()) == list(range(N_EXAMPLES))  # an epoch shows every example once
    assert torch.cat(global_batches[:3]).tolist() != torch.cat(global_batches[3:5]).tolist()[:16]  # reshuffled


def test_only_rank_0_writes_files_and_shows_progress(ranks):
    root, results, runs = ranks
    assert results[1]["writes"] == {"checkpoints": 0, "sample_calls": 0}
    assert results[0]["writes"] == {"checkpoints": 3, "sample_calls": 1}  # steps 1, 2 and 3; a sample at step 2
    assert sorted(p.name for p in (root / "ddp").iterdir()) == [".lock", "checkpoint.pt", "samples"]
    assert [p.name for p in (root / "ddp" / "samples").iterdir()] == ["rank0_step2.txt"]
    (_, out0, err0), (_, out1, err1) = runs
    assert "training" in err0 and "training" not in err1  # the progress bar
    assert "Resumed from" in out0 and "Resumed from" not in out1


def test_resume_after_a_two_process_run_continues_on_two_or_on_one(ranks, tmp_path):
    root, results, _ = ranks
    five = single_process(5)
    for result in results:  # fresh Trainers (other initial weights) resumed the step-3 checkpoint up to step 5
        assert_close_states(result["after5"], state(five.model))
    assert load_checkpoint(root / "ddp" / "checkpoint.pt")["step"] == 5

    # with noise drawn by the loss: the ranks draw different noise, and a resumed pair continues bit for bit
    assert not torch.equal(results[0]["noise"], results[1]["noise"])
    assert results[0]["noisy_resume_equal"] and results[1]["noisy_resume_equal"]

    # one process resumes the two-process run (step 5): the same global batches follow, so the same weights
    shutil.copytree(root / "ddp", tmp_path / "copy")
    assert load_checkpoint(tmp_path / "copy" / "checkpoint.pt")["config"]["trainer"]["world_size"] == WORLD
    alone = Trainer(nn.Linear(3, 2), mse, regression_data(), out_dir=tmp_path / "copy", progress=False, **SETTINGS)
    with pytest.warns(UserWarning, match="world_size: 2 -> 1"):
        alone.fit(7, resume=True)
    assert_close_states(state(alone.model), state(single_process(7).model))
    assert alone.history["step"] == list(range(1, 8))


def test_a_nan_on_one_rank_stops_both(ranks):
    _, results, _ = ranks
    for result in results:
        assert result["nan"].startswith("Training stopped at step 2: the loss is nan")


def test_a_folder_locked_by_another_run_refuses_every_rank(ranks):
    _, results, _ = ranks
    for result in results:
        assert f"pid {os.getpid()}" in result["locked"] and "the test's own hold" in result["locked"]


def test_batch_and_data_sizes_that_do_not_split_are_refused(ranks):
    _, results, _ = ranks
    for result in results:
        assert "batch_size=7 cannot be split evenly over 2 processes: use a multiple of 2 (e.g. 8)" in str(
            result["odd_batch"]
        )
        assert "holds 1 examples, fewer than the 2 processes" in result["tiny_data"]
        assert "--nproc-per-node" in result["tiny_data"]


def test_sigterm_on_one_rank_stops_both_after_the_same_step_and_saves_it(ranks):
    root, _, runs = ranks
    assert [code for code, _, _ in runs] == [143, 143]
    assert load_checkpoint(root / "term" / "checkpoint.pt")["step"] == 3
    assert "Stopped by SIGTERM: step 3 saved" in runs[0][1] and "Stopped by" not in runs[1][1]
    with pytest.warns(UserWarning, match="world_size: 2 -> 1"):  # the stopped run goes on (here on one process)
        resumed = single_process(5, out_dir=root / "term", resume=True)
    assert_close_states(state(resumed.model), state(single_process(5).model))


# ----------------------------------------------------------------------------------------------------------------------
# without torchrun, and wrong launches


def test_alone_every_helper_answers_as_a_group_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = distributed.init_distributed("cpu")
    assert (info.rank, info.world_size, info.is_main, info.distributed, info.backend) == (0, 1, True, False, None)
    assert info.device == torch.device("cpu")
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    distributed.barrier()  # returns at once
    distributed.cleanup()
    assert not Trainer(make_model(), mse, regression_data(), progress=False, **SETTINGS).distributed
    with pytest.raises(RuntimeError, match=r"distributed=True\) needs a process group.*torchrun.*init_distributed"):
        Trainer(make_model(), mse, regression_data(), distributed=True, **SETTINGS)


def test_incomplete_or_impossible_launches_are_explained(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match="WORLD_SIZE=2.*RANK, MASTER_ADDR, MASTER_PORT are not set.*torchrun"):
        distributed.init_distributed("cpu")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    with pytest.raises(RuntimeError, match="backend 'nccl' needs CUDA GPUs.*use backend 'gloo'"):
        distributed.init_distributed("cpu", backend="nccl")
    with pytest.raises(RuntimeError, match="not on 'meta'"):
        distributed.init_distributed("meta")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="asks for CUDA, but no CUDA GPU is available.*--device cpu"):
            distributed.init_distributed("cuda")
    assert not distributed.is_initialized()  # nothing was joined on the way


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    run_worker(Path(sys.argv[2]))
