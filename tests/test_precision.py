"""Mixed precision: which autocast dtype each ``amp`` / ``--precision`` setting gives on each device, the CPU's bf16
detection, and training under a forced fp32 and a forced bf16 (so the fp32 fallback is exercised on every machine)."""

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dalle2_edu.train import Trainer
from dalle2_edu.utils import cpu_has_native_bf16, resolve_precision

CPU = torch.device("cpu")
AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n"
AMX = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"


def test_bf16_detection_reads_the_cpu_flags():
    assert not cpu_has_native_bf16(AVX2_ONLY)
    assert cpu_has_native_bf16(AMX)
    assert cpu_has_native_bf16("flags : avx2 avx512_bf16\n")  # AVX-512 BF16 alone is enough
    assert not cpu_has_native_bf16("")  # no flags line at all (not Linux, say): no native bf16
    assert not cpu_has_native_bf16("model name : amx_bf16 lookalike\n")  # only the flags line counts


@pytest.mark.parametrize("native", [True, False])
def test_precision_on_the_cpu(monkeypatch, native):
    import dalle2_edu.utils as utils

    monkeypatch.setattr(utils, "cpu_has_native_bf16", lambda cpuinfo=None: native)
    auto = torch.bfloat16 if native else None  # bf16 where the CPU has AMX / AVX-512 BF16, fp32 elsewhere
    assert resolve_precision("auto", CPU) is auto and resolve_precision(True, CPU) is auto
    assert resolve_precision("fp32", CPU) is None and resolve_precision(False, CPU) is None  # forced fp32: always
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # forced bf16 without native bf16 warns (tested below)
        assert resolve_precision("bf16", CPU) is torch.bfloat16  # forced bf16: always


def test_this_cpus_auto_follows_its_flags():
    from pathlib import Path

    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    native = "amx_bf16" in flags or "avx512_bf16" in flags
    assert resolve_precision("auto", CPU) is (torch.bfloat16 if native else None)


def test_forced_bf16_on_a_cpu_warns_only_without_native_bf16(monkeypatch):
    import dalle2_edu.utils as utils

    monkeypatch.setattr(utils, "cpu_has_native_bf16", lambda cpuinfo=None: False)
    with pytest.warns(UserWarning, match=r"without native bf16.*--precision fp32"):
        assert resolve_precision("bf16", CPU) is torch.bfloat16
    monkeypatch.setattr(utils, "cpu_has_native_bf16", lambda cpuinfo=None: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("bf16", CPU) is torch.bfloat16


@pytest.mark.parametrize(
    "amp, device, match",
    [("fp8", CPU, r"unknown precision 'fp8'.*auto, fp32, bf16, fp16"), ("fp16", CPU, r"fp16 autocast is for CUDA"),
     ("bf16", torch.device("meta"), r"not supported on meta")],
)  # fmt: skip
def test_bad_precision_names_the_choices(amp, device, match):
    with pytest.raises(ValueError, match=match):
        resolve_precision(amp, device)


class Probe(nn.Module):
    """A linear layer that records the dtype its output had (autocast makes it bf16)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.seen = []

    def forward(self, x):
        y = self.lin(x)
        self.seen.append(y.dtype)
        return y


def _fit(amp, steps=40):
    torch.manual_seed(0)
    model = Probe()
    data = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    losses = []

    def loss_fn(m, x):
        loss = F.mse_loss(m(x).float(), x.flip(1))  # the loss itself in fp32, as the diffusion losses do
        losses.append(loss.item())
        return loss

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16 on a CPU without native bf16 warns; tested above
        trainer = Trainer(model, loss_fn, data, batch_size=16, lr=1e-2, warmup_steps=1, device="cpu", amp=amp,
                          progress=False, log_every=1)  # fmt: skip
    trainer.fit(steps)
    return model, trainer, losses


def test_training_in_forced_fp32_and_forced_bf16():
    fp32_model, fp32, fp32_losses = _fit("fp32")
    bf16_model, bf16, bf16_losses = _fit("bf16")
    assert fp32.amp_dtype is None and set(fp32_model.seen) == {torch.float32}
    assert bf16.amp_dtype is torch.bfloat16 and set(bf16_model.seen) == {torch.bfloat16}  # autocast was on
    assert all(p.dtype == torch.float32 for p in bf16_model.parameters())  # weights stay fp32 (master weights)
    # same data, seed and steps: bf16 follows fp32 within bf16's rounding (8 bits of mantissa), and both learn
    assert bf16_losses[0] == pytest.approx(fp32_losses[0], rel=2e-2)
    first, last = sum(fp32_losses[:5]) / 5, sum(fp32_losses[-5:]) / 5
    assert last < 0.5 * first  # fp32 learns
    assert sum(bf16_losses[-5:]) / 5 == pytest.approx(last, rel=0.1)  # and bf16 learns as much
    assert fp32.config["trainer"]["amp"] is False and bf16.config["trainer"]["amp"] == "bf16"
    json.dumps(bf16.config)  # recorded as JSON


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_recorded_as_runs_before_it_were(monkeypatch, native):
    # runs made before --precision recorded amp=True; "auto" must resume them without a settings mismatch
    import dalle2_edu.utils as utils

    monkeypatch.setattr(utils, "cpu_has_native_bf16", lambda cpuinfo=None: native)
    model, trainer, _ = _fit("auto", steps=1)
    assert trainer.config["trainer"]["amp"] is True
    assert trainer.amp_dtype is (torch.bfloat16 if native else None)
    assert set(model.seen) == {torch.bfloat16 if native else torch.float32}


def test_the_recipes_and_the_command_line_take_a_precision(tmp_path, capsys):
    from dalle2_edu.cli import _parser
    from dalle2_edu.recipes import RECIPES, Runner, TrainingError
    from dalle2_edu.recipes.stages import StageContext, _trainer_kwargs

    args = _parser().parse_args(["train", "prior", "--precision", "bf16", "--out", str(tmp_path)])
    assert args.precision == "bf16"
    assert _parser().parse_args(["train", "prior"]).precision == "auto"
    with pytest.raises(SystemExit):
        _parser().parse_args(["train", "prior", "--precision", "fp8"])
    assert "invalid choice: 'fp8'" in capsys.readouterr().err
    with pytest.raises(TrainingError, match=r"unknown precision 'half'; choose one of auto, fp32, bf16, fp16"):
        Runner(recipe="tiny", out=tmp_path, precision="half")
    ctx = StageContext("prior", RECIPES["tiny"]["prior"], None, tmp_path, None, precision="fp32")
    assert _trainer_kwargs(ctx)["amp"] == "fp32"  # what reaches every stage's Trainer
