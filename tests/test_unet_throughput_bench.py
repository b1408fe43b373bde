"""benchmarks/unet_throughput.py's measuring parts for goal 1: the FLOP count of the decoder's step by op, and the
convolution bound (time in the convolutions, and what the step would reach without everything else).
(The whole benchmark takes minutes; its real runs are in docs/BENCHMARKS.md §2.1.)"""

import pytest
import torch
from bench_scripts import load_benchmark
from torch import nn


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("unet_throughput")


def test_convolution_flops_match_a_count_by_hand(bench):
    """The flop counter's forward convolutions against 2 · (output elements) · (inputs per output) summed over
    every Conv2d the decoder's forward calls, and the backward at about twice the forward (input and weight
    gradients; the first conv's input needs none)."""
    batch = 2
    by_op = bench.decoder_flops_by_op(batch)
    trainer = bench.decoder_trainer(batch, "fp32")
    by_hand = []

    def count(module, inputs, output):
        fan_in = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        by_hand.append(2 * output.numel() * fan_in)

    hooks = [m.register_forward_hook(count) for m in trainer.model.modules() if isinstance(m, nn.Conv2d)]
    try:
        trainer.loss_fn(trainer.model, trainer._next_batch())
    finally:
        for h in hooks:
            h.remove()
    assert by_op["aten.convolution"] == sum(by_hand) > 0
    assert 1.8 < by_op["aten.convolution_backward"] / by_op["aten.convolution"] <= 2.0
    assert bench.decoder_flops_per_picture(batch) == pytest.approx(sum(by_op.values()) / batch)


def test_conv_ops_hold_the_convolutions_time(bench):
    """CONV_OPS names the ops that torch.profiler charges a CPU convolution's own work to, forward and backward."""
    from torch.profiler import ProfilerActivity, profile

    net = nn.Sequential(nn.Conv2d(8, 32, 3, padding=1), nn.SiLU(), nn.Conv2d(32, 8, 3, padding=1))
    x = torch.randn(8, 8, 32, 32)
    net(x).square().mean().backward()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            net(x).square().mean().backward()
    events = prof.key_averages()
    conv_like = sum(e.self_cpu_time_total for e in events if "conv" in e.key.lower())
    counted = sum(e.self_cpu_time_total for e in events if e.key in bench.CONV_OPS)
    assert counted > 0.8 * conv_like > 0


def test_convolution_bound_adds_up(bench):
    batch, step_rate, diffusers_rate = 2, 40.0, 20.0
    out = bench.convolution_bound(batch, step_rate, diffusers_rate, steps=1)
    conv, rest, profiled = out["convolutions_ms_per_step"], out["everything_else_ms_per_step"], out["profiled_step_ms"]
    assert 0 < conv < profiled and rest > 0
    assert conv + rest == pytest.approx(profiled, abs=0.11)  # the two parts of the same profiled steps
    assert out["step_ms"] == pytest.approx(batch / step_rate * 1e3, abs=0.05)
    assert out["images_per_s_if_only_convolutions"] == pytest.approx(batch / conv * 1e3, rel=2e-3)
    assert out["ratio_over_diffusers_fp32_if_only_convolutions"] == pytest.approx(
        out["images_per_s_if_only_convolutions"] / diffusers_rate, rel=2e-3)
    allowed = batch / (2 * diffusers_rate) * 1e3 - conv  # ms a step may spend outside the convolutions for 2×
    assert out["everything_else_ms_allowed_for_2x"] == pytest.approx(allowed, abs=0.11)
    assert out["convolutions_gflops"] == pytest.approx(out["convolutions_gflop_per_step"] / conv * 1e3, rel=5e-3)
    assert out["group_norm_ms_per_step"] > 0 and out["channels_last"]["group_norm_ms_per_step"] > 0
    assert 0 < out["channels_last"]["convolutions_ms_per_step"] < out["channels_last"]["profiled_step_ms"]
