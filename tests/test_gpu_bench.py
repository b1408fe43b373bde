"""The GPU benchmarks' own logic, on the CPU: merging CPU and CUDA reports, the host-read-free training step that
gpu_sync.py times against the Trainer's, and the training-loop speed the runner records."""

import json

import pytest
import torch
from bench_scripts import load_benchmark

from dalle2_edu.recipes.runner import training_speed
from dalle2_edu.train import Trainer


def _report(device, losses, seconds, rates, steps=200, recipe="fast"):
    stages = {stage: {device: {"tail_loss": loss, "train_seconds": sec, "loop_steps_per_second": rate}}
              for stage, loss, sec, rate in zip(("clip", "decoder"), losses, seconds, rates)}  # fmt: skip
    return {"command": f"python benchmarks/gpu_check.py --devices {device}", "steps": steps, "recipe": recipe,
            "machine": f"{device} machine", "stages": stages, f"{device}_total_seconds": sum(seconds)}  # fmt: skip


def test_gpu_check_merges_a_cpu_and_a_cuda_report(tmp_path):
    gpu_check = load_benchmark("gpu_check")
    cpu = tmp_path / "cpu.json"
    cuda = tmp_path / "cuda.json"
    cpu.write_text(json.dumps(_report("cpu", [0.5, 0.08], [100.0, 400.0], [2.0, 0.5])))
    cuda_report = _report("cuda", [0.55, 0.06], [20.0, 16.0], [None, 14.0])
    cuda_report["gpu"] = "Some GPU"
    cuda.write_text(json.dumps(cuda_report))
    merged = gpu_check.merge([str(cpu), str(cuda)])
    assert merged["machine"] == {"cpu": "cpu machine", "cuda": "cuda machine"} and merged["gpu"] == "Some GPU"
    clip, decoder = merged["stages"]["clip"], merged["stages"]["decoder"]
    assert clip["relative_loss_difference"] == pytest.approx(0.1) and clip["stage_speedup"] == 5.0
    assert "loop_speedup" not in clip  # no loop rate on one side: no loop speed-up invented
    assert decoder["relative_loss_difference"] == pytest.approx(0.25) and decoder["loop_speedup"] == 28.0
    assert merged["cpu_total_seconds"] == 500.0 and merged["cuda_total_seconds"] == 36.0


def test_gpu_check_refuses_to_merge_different_settings(tmp_path):
    gpu_check = load_benchmark("gpu_check")
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_report("cpu", [0.5, 0.1], [1.0, 1.0], [1.0, 1.0], steps=200)))
    b.write_text(json.dumps(_report("cuda", [0.5, 0.1], [1.0, 1.0], [1.0, 1.0], steps=100)))
    with pytest.raises(SystemExit, match="different steps"):
        gpu_check.merge([str(a), str(b)])


@pytest.mark.parametrize("foreach_ema", [False, True])
def test_gpu_sync_times_the_same_update_as_the_trainer(foreach_ema):
    """The variant without host reads must do the Trainer's work exactly, or its timing would compare unequal things."""
    gpu_sync = load_benchmark("gpu_sync")
    guarded, bare = gpu_sync._make_trainer(2, "cpu"), gpu_sync._make_trainer(2, "cpu")
    for step in (guarded._train_step, lambda: gpu_sync._step_without_host_reads(bare, foreach_ema)):
        torch.manual_seed(123)  # the same diffusion noise and timesteps for both
        for _ in range(3):
            step()
    assert guarded.step == bare.step == 3
    for a, b in zip(guarded.model.parameters(), bare.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(guarded.ema_model.parameters(), bare.ema_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_trainer_records_the_last_fit_and_the_runner_reports_its_speed(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    data = torch.randn(32, 3)
    trainer = Trainer(model, lambda m, x: m(x).pow(2).mean(), data, batch_size=4, device="cpu", progress=False,
                      out_dir=tmp_path, ckpt_every=None, warmup_steps=1)  # fmt: skip
    assert training_speed(trainer) == {}  # nothing trained yet
    trainer.fit(5)
    assert trainer.last_fit["steps"] == 5 and trainer.last_fit["seconds"] > 0
    resumed = Trainer(torch.nn.Linear(3, 1), lambda m, x: m(x).pow(2).mean(), data, batch_size=4, device="cpu",
                      progress=False, out_dir=tmp_path, ckpt_every=None, warmup_steps=1)  # fmt: skip
    resumed.fit(8, resume=True)
    assert resumed.last_fit["steps"] == 3  # the 5 restored steps are not counted again
    speed = training_speed(resumed)
    assert speed["loop_steps"] == 3
    assert speed["steps_per_second"] == pytest.approx(3 / resumed.last_fit["seconds"], rel=0.01)
    assert training_speed(None) == {}


def test_gpu_check_keeps_a_second_cpu_seed_as_the_yardstick(tmp_path):
    gpu_check = load_benchmark("gpu_check")
    paths = []
    for name, report in (("cpu0", _report("cpu", [0.5, 0.08], [100.0, 400.0], [2.0, 0.5])),
                         ("cpu1", {**_report("cpu", [0.4, 0.1], [90.0, 380.0], [2.1, 0.6]), "seed": 1}),
                         ("cuda", _report("cuda", [0.55, 0.06], [20.0, 16.0], [None, 14.0]))):  # fmt: skip
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(report))
    merged = gpu_check.merge([str(p) for p in paths])
    decoder = merged["stages"]["decoder"]
    assert decoder["cpu"]["tail_loss"] == 0.08 and decoder["cpu_seed1"]["tail_loss"] == 0.1
    assert decoder["seed_spread"] == pytest.approx(0.25) and decoder["relative_loss_difference"] == pytest.approx(0.25)
    assert merged["cpu_seed1_total_seconds"] == 470.0
