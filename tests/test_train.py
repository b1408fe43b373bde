"""Tests for the shared Trainer and the checkpoint functions, on a tiny MLP and a 2D denoising task on the CPU."""

import math
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dalle2_edu.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint, save_weights
from dalle2_edu.train import Trainer


class TinyNet(nn.Module):
    def __init__(self, dropout=0.2):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 16), nn.SiLU(), nn.Dropout(dropout), nn.Linear(16, 2))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))  # a buffer, to check buffers are copied

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def make_model(init_seed=0, dropout=0.2):
    torch.manual_seed(init_seed)
    return TinyNet(dropout)


def make_data(n=48):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(123))


def denoise_loss(model, x):
    """Random noise from torch's, NumPy's and Python's global generators, so that resuming must restore all three."""
    scale = 0.3 + 0.1 * float(np.random.rand()) + 0.1 * random.random()
    return F.mse_loss(model(x + scale * torch.randn_like(x)), x)


def make_trainer(out_dir=None, model=None, loss_fn=denoise_loss, data=None, **kwargs):
    settings = dict(batch_size=16, lr=1e-2, warmup_steps=5, ema_decay=0.9, device="cpu", log_every=1, progress=False)
    settings.update(kwargs)
    model = make_model() if model is None else model
    data = make_data() if data is None else data
    return Trainer(model, loss_fn, data, out_dir=out_dir, **settings)


def assert_same_state(a: Trainer, b: Trainer):
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(pa, pb), f"model {name} differs"
    for (name, pa), pb in zip(a.ema_model.state_dict().items(), b.ema_model.state_dict().values()):
        assert torch.equal(pa, pb), f"EMA {name} differs"


def scramble_global_rng():
    torch.randn(100)
    np.random.rand(10)
    random.random()


# ----------------------------------------------------------------------------------------------------------------------
# resuming


def test_resume_gives_the_same_continuation_as_an_unbroken_run(tmp_path):
    unbroken = make_trainer(tmp_path / "a", ckpt_every=7)
    unbroken.fit(20)

    first = make_trainer(tmp_path / "b", ckpt_every=7)
    first.fit(10)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 10
    del first
    resumed = make_trainer(tmp_path / "b", model=make_model(init_seed=99), ckpt_every=7)  # fresh, different weights
    scramble_global_rng()
    resumed.fit(20, resume=True)

    assert resumed.step == unbroken.step == 20
    assert_same_state(resumed, unbroken)
    assert resumed.history == unbroken.history  # rows 1-10 come from the checkpoint, 11-20 are recomputed
    assert resumed.history["step"] == list(range(1, 21))
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 20


@pytest.fixture
def ctrl_c_reaches_python():
    """Ctrl-C as a terminal delivers it. A shell without job control starts background jobs (``cmd &``, a CI step run
    that way) with SIGINT *ignored*, and the Trainer rightly leaves ignored signals alone; these tests are about a
    user pressing Ctrl-C, so they install Python's default handler for their duration and put the old one back."""
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_saves_a_whole_step_and_resumes_exactly(tmp_path, ctrl_c_reaches_python):
    calls = []

    def interrupting_loss(model, x):
        calls.append(1)
        if len(calls) == 7:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C in the middle of step 7
        return denoise_loss(model, x)

    unbroken = make_trainer(tmp_path / "a", log_every=4)
    unbroken.fit(12)

    trainer = make_trainer(tmp_path / "b", loss_fn=interrupting_loss, log_every=4)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(12)
    assert trainer.step == 7  # the step in progress was finished before the interrupt took effect
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 7

    resumed = make_trainer(tmp_path / "b", model=make_model(init_seed=5), log_every=4)
    resumed.fit(12, resume=True)
    assert_same_state(resumed, unbroken)
    assert resumed.history == unbroken.history  # the half-filled logging window (steps 5-7) was saved too


def test_resume_with_changed_settings_warns(tmp_path):
    make_trainer(tmp_path).fit(3)
    changed = make_trainer(tmp_path, lr=5e-3)
    with pytest.warns(UserWarning, match="lr: 0.01 -> 0.005"):
        changed.fit(4, resume=True)
    assert changed.step == 4


def test_resume_without_checkpoint_starts_fresh_and_new_run_warns_before_overwriting(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.fit(2, resume=True)
    assert trainer.step == 2
    with pytest.warns(UserWarning, match="overwritten"):
        make_trainer(tmp_path).fit(1)


# ----------------------------------------------------------------------------------------------------------------------
# optimisation details


def test_ema_follows_the_recursion_computed_by_hand():
    decay, ema_start, steps = 0.8, 3, 8
    snapshots = []  # weights after 0, 1, ..., steps - 1 updates, seen by the loss at the start of each step

    def recording_loss(model, x):
        snapshots.append([p.detach().clone() for p in model.parameters()])
        return denoise_loss(model, x)

    trainer = make_trainer(loss_fn=recording_loss, ema_decay=decay, ema_start=ema_start, ema_warmup=False)
    trainer.fit(steps)
    snapshots.append([p.detach().clone() for p in trainer.model.parameters()])

    ema = snapshots[0]
    for step in range(1, steps + 1):
        if step <= ema_start:
            ema = snapshots[step]
        else:
            ema = [e + (1 - decay) * (p - e) for e, p in zip(ema, snapshots[step])]
    for expected, actual in zip(ema, trainer.ema_model.parameters()):
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)
    assert not torch.equal(ema[0], snapshots[-1][0])  # the EMA really lags behind the weights
    assert int(trainer.ema_model.calls) == int(trainer.model.calls) == steps  # buffers are copied
    assert not trainer.ema_model.training


def test_ema_warmup_forgets_the_initial_weights():
    """With warm-up the n-th EMA update uses decay min(d, (1+n)/(10+n)): after 100 updates at d = 0.999 the initial
    weights keep a weight of prod (1 - (1 - decay_n)) — far less than 0.999^100 without warm-up."""
    snapshots = []

    def recording_loss(model, x):
        snapshots.append([p.detach().clone() for p in model.parameters()])
        return denoise_loss(model, x)

    trainer = make_trainer(loss_fn=recording_loss, ema_decay=0.999)
    assert trainer.ema_decay_at(0) == 0.0 and trainer.ema_decay_at(1) == pytest.approx(2 / 11)
    assert trainer.ema_decay_at(100_000) == 0.999
    trainer.fit(12)
    snapshots.append([p.detach().clone() for p in trainer.model.parameters()])
    ema = snapshots[0]
    for step in range(1, 13):
        d = min(0.999, (1 + step) / (10 + step))
        ema = [e + (1 - d) * (p - e) for e, p in zip(ema, snapshots[step])]
    for expected, actual in zip(ema, trainer.ema_model.parameters()):
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)
    keep_init = math.prod(min(0.999, (1 + n) / (10 + n)) for n in range(1, 1501))
    assert keep_init < 0.01 < 0.999**1500


def test_learning_rate_warmup_and_cosine_follow_the_formula():
    trainer = make_trainer(lr=1e-2, warmup_steps=5)
    trainer.fit(8)
    expected = [1e-2 * min(1.0, (s + 1) / 5) for s in range(8)]
    assert trainer.history["lr"] == pytest.approx(expected, rel=1e-12)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-2)

    cosine = make_trainer(lr=1e-2, warmup_steps=4, lr_schedule="cosine", total_steps=24)
    assert cosine.lr_at(0) == pytest.approx(2.5e-3)
    assert cosine.lr_at(4) == pytest.approx(1e-2)
    assert cosine.lr_at(14) == pytest.approx(5e-3)
    assert cosine.lr_at(24) == pytest.approx(0.0, abs=1e-12)
    assert cosine.lr_at(10) == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 6 / 20)))


def test_gradient_clipping_caps_the_norm():
    def huge_loss(model, x):
        return 1e6 * model(x).pow(2).mean()

    trainer = make_trainer(loss_fn=huge_loss, grad_clip=0.5)
    trainer.fit(1)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.model.parameters()]))
    assert trainer.history["grad_norm"][0] > 1e3  # the norm before clipping is logged
    assert float(norm) == pytest.approx(0.5, rel=1e-4)


def test_same_seed_same_run_different_seed_different_run():
    runs = []
    for seed in (0, 0, 1):
        trainer = make_trainer(seed=seed)
        trainer.fit(6)
        runs.append(trainer)
    assert_same_state(runs[0], runs[1])
    assert runs[0].history == runs[1].history
    assert not torch.equal(runs[0].model.net[0].weight, runs[2].model.net[0].weight)


# ----------------------------------------------------------------------------------------------------------------------
# losses and data


def test_dict_loss_logs_its_extra_scalars():
    def loss_with_extras(model, x):
        loss = denoise_loss(model, x)
        return {"loss": loss, "double": 2 * loss.detach(), "count": 3, "ignored": torch.zeros(4), "name": "skip"}

    history = make_trainer(loss_fn=loss_with_extras).fit(4)
    assert set(history) == {"step", "loss", "double", "count", "grad_norm", "lr"}
    assert all(len(column) == 4 for column in history.values())
    assert history["double"] == pytest.approx([2 * v for v in history["loss"]])
    assert history["count"] == [3.0] * 4


def test_log_every_averages_over_the_window():
    losses = []

    def recording_loss(model, x):
        loss = denoise_loss(model, x)
        losses.append(float(loss.detach()))
        return loss

    history = make_trainer(loss_fn=recording_loss, log_every=3).fit(7)
    assert history["step"] == [3, 6, 7]
    assert history["loss"] == pytest.approx([np.mean(losses[0:3]), np.mean(losses[3:6]), losses[6]])


class CaptionedPoints:
    """A Dataset-like object returning dicts with a tensor, a string and an int."""

    def __init__(self, n=10):
        self.points = make_data(n)

    def __len__(self):
        return len(self.points)

    def __getitem__(self, i):
        return {"x": self.points[i], "caption": f"point {i}", "label": i}


def test_dict_dataset_with_strings_is_collated():
    seen = []

    def loss_fn(model, batch):
        seen.append(batch)
        return denoise_loss(model, batch["x"])

    make_trainer(loss_fn=loss_fn, data=CaptionedPoints(10), batch_size=4).fit(5)  # 20 examples: two full epochs
    batch = seen[0]
    assert batch["x"].shape == (4, 2) and batch["label"].dtype == torch.long
    assert isinstance(batch["caption"], list) and all(isinstance(c, str) for c in batch["caption"])
    assert batch["caption"] == [f"point {int(i)}" for i in batch["label"]]
    labels = torch.cat([b["label"] for b in seen])
    assert sorted(labels[:10].tolist()) == list(range(10)) == sorted(labels[10:].tolist())  # shuffled epochs


def test_tuple_of_tensors_and_batches_larger_than_the_data():
    x = make_data(6)
    y = torch.arange(6)

    def loss_fn(model, batch):
        inputs, labels = batch
        assert torch.equal(inputs, x[labels])
        return F.mse_loss(model(inputs), inputs)

    trainer = make_trainer(loss_fn=loss_fn, data=(x, y), batch_size=10)
    trainer.fit(3)
    assert trainer.step == 3


# ----------------------------------------------------------------------------------------------------------------------
# NaN handling


def test_nonfinite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    calls = []

    def exploding_loss(model, x):
        calls.append(1)
        loss = denoise_loss(model, x)
        return loss * float("nan") if len(calls) == 8 else loss

    trainer = make_trainer(tmp_path, loss_fn=exploding_loss, ckpt_every=5)
    with pytest.raises(FloatingPointError, match=r"step 8: the loss is nan.*step 5.*lower learning rate.*amp=False"):
        trainer.fit(20)
    assert trainer.step == 7
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())  # the bad update was not applied
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["step"] == 5
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())


def test_save_refuses_nonfinite_weights_and_keeps_the_old_file(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.fit(3)
    with torch.no_grad():
        trainer.model.net[0].weight[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="NaN/inf"):
        trainer.save()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3


# ----------------------------------------------------------------------------------------------------------------------
# checkpoint files


def test_checkpoint_loads_with_weights_only_and_holds_everything(tmp_path):
    trainer = make_trainer(tmp_path, config={"model": {"hidden": 16}})
    trainer.fit(4)
    raw = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # no pickled code: this must not raise
    assert raw["step"] == 4 and raw["config"]["model"] == {"hidden": 16}
    assert raw["config"]["trainer"]["lr"] == 1e-2
    assert {"python", "numpy", "torch", "batches"} <= set(raw["rng"])
    assert raw["optimizer"]["state"] and raw["ema"].keys() == raw["model"].keys()
    assert raw["extra"]["history"]["step"] == [1, 2, 3, 4]


def test_save_checkpoint_rejects_values_that_would_not_load_safely(tmp_path):
    with pytest.raises(TypeError, match=r"\['extra'\]\['bad'\].*numpy"):
        save_checkpoint(tmp_path / "c.pt", model_state={}, extra={"bad": np.zeros(3)})
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(tmp_path / "c.pt", model_state={}, config={"f": print})
    assert not (tmp_path / "c.pt").exists()


@pytest.mark.parametrize("crash_in", ["torch.save", "os.replace"])
def test_interrupted_save_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch, crash_in):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model_state={"w": torch.ones(3)}, step=1)
    real_save = torch.save

    def crash_mid_write(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(20)  # half-written file...
        raise OSError("disk full")  # ...then the crash

    def crash_on_rename(*args):
        raise OSError("power cut")

    if crash_in == "torch.save":
        monkeypatch.setattr(torch, "save", crash_mid_write)
    else:
        monkeypatch.setattr(os, "replace", crash_on_rename)
    with pytest.raises(OSError):
        save_checkpoint(path, model_state={"w": torch.zeros(3)}, step=2)
    monkeypatch.undo()

    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 1 and torch.equal(ckpt["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind


def test_missing_corrupt_and_truncated_checkpoints_give_clear_errors(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match=r"nope\.pt.*train first"):
        load_checkpoint(missing)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match=r"garbage\.pt.*corrupt.*re-train"):
        load_checkpoint(garbage)

    good = save_checkpoint(tmp_path / "good.pt", model_state={"w": torch.randn(1000)}, step=3)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pt.*corrupt"):
        load_checkpoint(truncated)
    assert issubclass(CheckpointError, RuntimeError)

    unsafe = tmp_path / "unsafe.pt"
    torch.save({"model": {}, "format": "dalle2_edu.checkpoint", "obj": CaptionedPoints(2)}, unsafe)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_checkpoint(unsafe)

    other = tmp_path / "state_dict.pt"
    torch.save({"w": torch.ones(2)}, other)
    with pytest.raises(CheckpointError, match="not a dalle2_edu training checkpoint"):
        load_checkpoint(other)


def test_trainer_load_into_a_different_architecture_explains(tmp_path):
    make_trainer(tmp_path).fit(2)
    other = make_trainer(tmp_path, model=nn.Sequential(nn.Linear(2, 8), nn.Linear(8, 2)))
    with pytest.raises(RuntimeError, match="does not fit this model"):
        other.load()


def test_weights_round_trip_with_config_and_half_precision(tmp_path):
    trainer = make_trainer(tmp_path, config={"model": {"hidden": 16}})
    trainer.fit(3)

    path = trainer.export_weights(tmp_path / "tiny.safetensors")
    state, config = load_weights(path)
    assert config["model"] == {"hidden": 16} and config["trainer"]["batch_size"] == 16
    for name, tensor in trainer.ema_model.state_dict().items():
        assert torch.equal(state[name], tensor)

    half_path = save_weights(tmp_path / "half.safetensors", trainer.model.state_dict(), {"a": 1}, half=True)
    half_state, half_config = load_weights(half_path)
    assert half_config == {"a": 1}
    assert half_state["net.0.weight"].dtype == torch.float16 and half_state["calls"].dtype == torch.long
    fresh = make_model(init_seed=7)
    fresh.load_state_dict(half_state)  # copied into the float32 parameters
    torch.testing.assert_close(fresh.net[0].weight, trainer.model.net[0].weight, atol=1e-2, rtol=1e-3)
    assert half_path.stat().st_size < path.stat().st_size

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_weights(corrupt)
    with pytest.raises(FileNotFoundError):
        load_weights(tmp_path / "missing.safetensors")


# ----------------------------------------------------------------------------------------------------------------------
# samples


def test_sample_grids_are_saved_without_changing_the_run(tmp_path):
    def sample_images(ema_model, step):
        assert not ema_model.training
        return torch.rand(6, 3, 8, 8) * 2 - 1  # draws from torch's global generator

    def sample_points(ema_model, step):
        return ema_model(torch.randn(50, 2))

    with_images = make_trainer(tmp_path / "img", sample_fn=sample_images, sample_every=4)
    with_images.fit(8)
    assert sorted(p.name for p in (tmp_path / "img" / "samples").iterdir()) == ["step_000004.png", "step_000008.png"]

    with_points = make_trainer(tmp_path / "pts", sample_fn=sample_points, sample_every=8)
    with_points.fit(8)
    assert (tmp_path / "pts" / "samples" / "step_000008.png").stat().st_size > 0

    without = make_trainer()
    without.fit(8)
    assert_same_state(with_images, without)  # sampling consumed random numbers, yet training is unchanged


# ----------------------------------------------------------------------------------------------------------------------
# hardening: nonsense settings, SIGTERM, a second signal, temporary files of killed saves


@pytest.mark.parametrize(
    "setting, match",
    [
        (dict(grad_clip=-1), r"grad_clip.*got -1.*flip the gradients.*grad_clip=1\.0, or None"),
        (dict(grad_clip=float("nan")), r"grad_clip.*got nan.*grad_clip=1\.0"),
        (dict(grad_clip=float("inf")), r"grad_clip.*got inf.*None to turn clipping off"),
        (dict(lr=float("nan")), r"lr must be a finite number > 0 \(the peak learning rate, e\.g\. 2e-4\), got nan"),
        (dict(lr=float("inf")), r"lr must be a finite number > 0.*got inf"),
        (dict(lr=0), r"lr must be a finite number > 0"),
        (dict(ema_decay=float("nan")), r"ema_decay must be a finite number in \[0, 1\).*got nan"),
        (dict(weight_decay=-0.1), r"weight_decay must be a finite number >= 0"),
        (dict(betas=(0.9, 1.5)), r"betas\[1\] must be a finite number in \[0, 1\)"),
        (dict(batch_size=2.5), r"batch_size must be a whole number >= 1"),
        (dict(batch_size=True), r"batch_size must be a whole number >= 1"),
        (dict(warmup_steps=-3), r"warmup_steps must be >= 0"),
        (dict(ckpt_every=-1), r"ckpt_every must be >= 0"),
        (dict(seed=2**64), r"seed must be below 2\*\*63"),
    ],
)
def test_nonsense_settings_are_refused_with_the_fix(setting, match):
    with pytest.raises(ValueError, match=match):
        make_trainer(**setting)


def test_negative_step_counts_are_refused():
    trainer = make_trainer()
    with pytest.raises(ValueError, match=r"steps must be >= 0 \(the step count to reach"):
        trainer.fit(-5)
    with pytest.raises(ValueError, match="steps must be a whole number"):
        trainer.fit(2.5)


SIGTERM_CHILD = """
import pathlib, sys, time
import torch
from dalle2_edu.train import Trainer

out = pathlib.Path(sys.argv[1])
calls = []

def loss_fn(model, x):
    calls.append(1)
    if len(calls) == 7:  # tell the test we are in step 7, and wait (in the middle of the step) for its SIGTERM
        (out.parent / "in_step_7").touch()
        deadline = time.time() + 60
        while not (out.parent / "signal_sent").exists() and time.time() < deadline:
            time.sleep(0.02)
    return ((model(x) - x) ** 2).mean()

torch.manual_seed(0)
trainer = Trainer(torch.nn.Linear(2, 2), loss_fn, torch.randn(32, 2), batch_size=8, device="cpu", out_dir=out,
                  ckpt_every=5, log_every=1)
trainer.fit(200)
print("finished without being stopped")
"""


def test_sigterm_saves_the_step_in_progress_and_exits_non_zero(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(SIGTERM_CHILD)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "run")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while not (tmp_path / "in_step_7").exists():
            assert child.poll() is None, child.communicate()
            assert time.time() < deadline, "the child never reached step 7"
            time.sleep(0.02)
        child.send_signal(signal.SIGTERM)  # what `timeout`, Docker and Slurm send
        (tmp_path / "signal_sent").touch()
        out, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 143, (child.returncode, out, err)
    assert "finished without being stopped" not in out
    assert "Stopped by SIGTERM: step 7 saved" in out
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["step"] == 7  # the step it reached, not the periodic checkpoint of step 5
    assert ckpt["extra"]["history"]["step"] == list(range(1, 8))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock", "checkpoint.pt"]


def test_a_second_ctrl_c_stops_at_once_without_saving_a_half_step(tmp_path, ctrl_c_reaches_python):
    calls = []

    def twice_interrupted_loss(model, x):
        calls.append(1)
        if len(calls) == 7:
            os.kill(os.getpid(), signal.SIGINT)  # noted; the step goes on...
            os.kill(os.getpid(), signal.SIGINT)  # ...until the second one, which stops it here
        return denoise_loss(model, x)

    trainer = make_trainer(tmp_path, loss_fn=twice_interrupted_loss, ckpt_every=5)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(12)
    assert trainer.step == 6  # step 7 was abandoned half-way...
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 5  # ...and not saved over the last good checkpoint
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # handlers restored


def test_temporary_files_of_killed_saves_are_removed_when_a_run_starts_and_ends(tmp_path):
    stale = tmp_path / ".checkpoint.pt.k1ll3d00.tmp"  # what a kill during torch.save leaves (28 MB for the decoder)
    stale.write_bytes(b"half a checkpoint")
    late = tmp_path / ".checkpoint.pt.zzzzzzzz.tmp"
    kept = [tmp_path / ".decoder.safetensors.abcdefgh.tmp", tmp_path / "notes.tmp", tmp_path / "checkpoint.pt.tmp"]
    for path in kept:
        path.write_text("not ours")
    seen = []

    def loss_fn(model, x):
        if not seen:
            seen.append(stale.exists())
            late.write_bytes(b"left during the run")
        return denoise_loss(model, x)

    make_trainer(tmp_path, loss_fn=loss_fn).fit(3)
    assert seen == [False]  # gone before the first step
    assert not late.exists()  # gone when the run ended
    assert all(path.read_text() == "not ours" for path in kept)  # only the trainer's own temporary files
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3
