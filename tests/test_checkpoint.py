"""Checkpoint files catch damage on load: checksums, NaN/inf weights, and files created with the umask's permissions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dalle2_edu.checkpoint import (
    CHECKSUM_KEY,
    CheckpointError,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    save_weights,
    tensors_checksum,
    weights_digest,
)
from dalle2_edu.utils import data_dir

SHIPPED = sorted((data_dir() / "checkpoints").glob("*.safetensors"))


def state_dict(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "layer.weight": torch.randn(64, 128, generator=g),
        "layer.bias": torch.randn(64, generator=g).half(),
        "steps": torch.tensor(7),
    }


def overwrite(path: Path, tensor: torch.Tensor, new_bytes) -> None:
    """Overwrite the stored bytes of ``tensor`` inside ``path`` (found by content) with ``new_bytes(old) -> bytes``."""
    data = bytearray(path.read_bytes())
    old = tensor.contiguous().numpy().tobytes()
    start = data.find(old)
    assert start > 0 and data.find(old, start + 1) < 0, "the tensor's bytes must occur once in the file"
    new = new_bytes(old)
    assert len(new) == len(old)
    data[start : start + len(new)] = new
    path.write_bytes(bytes(data))


def flip_2000_bytes(old: bytes) -> bytes:
    # flip the lowest bit of 2000 bytes in the middle: the values stay finite, only the checksum can tell
    middle = len(old) // 2 - 1000
    return old[:middle] + bytes(b ^ 1 for b in old[middle : middle + 2000]) + old[middle + 2000 :]


def first_value_nan(old: bytes) -> bytes:
    return torch.tensor([float("nan")]).numpy().tobytes() + old[4:]


# ----------------------------------------------------------------------------------------------------------------------
# weights files (.safetensors)


def test_weights_carry_a_checksum_of_their_tensors(tmp_path):
    state = state_dict()
    path = save_weights(tmp_path / "w.safetensors", state, {"model": {"width": 8}})
    with safe_open(str(path), framework="pt") as f:
        stored = f.metadata()[CHECKSUM_KEY]
    assert stored == tensors_checksum(state) and len(stored) == 64
    loaded, config = load_weights(path)
    assert config == {"model": {"width": 8}}
    assert all(torch.equal(loaded[k], v) and loaded[k].dtype == v.dtype for k, v in state.items())

    # the checksum sees every name, dtype, shape and byte, whatever the dict's order
    assert tensors_checksum(dict(reversed(list(state.items())))) == stored
    assert tensors_checksum({**state, "steps": torch.tensor(8)}) != stored
    assert tensors_checksum({**state, "steps": torch.tensor(7, dtype=torch.int32)}) != stored
    assert tensors_checksum({**state, "layer.weight": state["layer.weight"].reshape(128, 64)}) != stored
    renamed = {("layer.w" if k == "layer.weight" else k): v for k, v in state.items()}
    assert tensors_checksum(renamed) != stored


def test_damaged_bytes_are_refused_unless_verify_is_off(tmp_path):
    state = state_dict()
    path = save_weights(tmp_path / "decoder.safetensors", state, {"decoder": {}})
    overwrite(path, state["layer.weight"], flip_2000_bytes)

    with pytest.raises(CheckpointError, match=r"decoder\.safetensors' is damaged.*checksum.*restore it"):
        load_weights(path)
    with pytest.raises(CheckpointError, match="damaged"):
        weights_digest(path)

    loaded, _ = load_weights(path, verify=False)  # the opt-out for speed loads what is there
    assert torch.isfinite(loaded["layer.weight"]).all()
    assert not torch.equal(loaded["layer.weight"], state["layer.weight"])


@pytest.mark.parametrize("with_checksum", [True, False])
def test_nan_weights_are_refused_even_without_verifying(tmp_path, with_checksum):
    state = state_dict()
    state["layer.bias"][3] = float("nan")
    path = tmp_path / "nan.safetensors"
    metadata = {"format": "pt", "config": "{}"}
    if with_checksum:  # a file whose checksum is right but whose weights were NaN when it was written
        metadata[CHECKSUM_KEY] = tensors_checksum(state)
    save_file(state, str(path), metadata=metadata)
    for verify in (True, False):
        with pytest.raises(CheckpointError, match=r"nan\.safetensors' is damaged.*NaN or infinite.*1 in 'layer\.bias'"):
            load_weights(path, verify=verify)


def test_a_weight_set_to_nan_in_a_saved_file_is_refused(tmp_path):
    state = state_dict()
    path = save_weights(tmp_path / "w.safetensors", state)
    overwrite(path, state["layer.weight"], first_value_nan)
    with pytest.raises(CheckpointError, match="damaged"):
        load_weights(path)
    with pytest.raises(CheckpointError, match=r"NaN or infinite.*'layer\.weight'"):
        load_weights(path, verify=False)


def test_saving_nan_or_inf_weights_is_refused_and_writes_nothing(tmp_path):
    state = state_dict()
    state["layer.weight"][0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"layer\.weight.*NaN or infinite"):
        save_weights(tmp_path / "w.safetensors", state)
    with pytest.raises(FloatingPointError, match="float16"):  # finite in float32, infinite in float16
        save_weights(tmp_path / "w.safetensors", {"w": torch.tensor([1e6])}, half=True)
    assert list(tmp_path.iterdir()) == []


def test_files_without_a_checksum_still_load(tmp_path):
    state = state_dict()
    path = tmp_path / "old.safetensors"
    save_file(state, str(path), metadata={"format": "pt", "config": '{"a": 1}', "library": "dalle2_edu"})
    loaded, config = load_weights(path)
    assert config == {"a": 1} and torch.equal(loaded["layer.weight"], state["layer.weight"])
    assert weights_digest(path) == tensors_checksum(state)


def test_weights_digest_names_the_tensors_not_the_file(tmp_path):
    state = state_dict()
    a = save_weights(tmp_path / "a.safetensors", state, {"config": 1})
    b = save_weights(tmp_path / "b.safetensors", state, {"config": 2})  # other metadata, same tensors
    assert a.read_bytes() != b.read_bytes()
    assert weights_digest(a) == weights_digest(b) == tensors_checksum(state)
    changed = save_weights(tmp_path / "c.safetensors", {**state, "steps": torch.tensor(8)})
    assert weights_digest(changed) != weights_digest(a)
    half = save_weights(tmp_path / "h.safetensors", state, half=True)
    assert weights_digest(half) != weights_digest(a)  # the digest is of the tensors as stored
    with pytest.raises(FileNotFoundError):
        weights_digest(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_weights_carry_a_checksum_that_verifies(path):
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    assert CHECKSUM_KEY in metadata, f"{path.name} was written before checksums; rewrite it with save_weights"
    assert weights_digest(path) == metadata[CHECKSUM_KEY]


def test_load_weights_to_a_device_keeps_verifying(tmp_path):
    state = state_dict()
    path = save_weights(tmp_path / "w.safetensors", state)
    loaded, _ = load_weights(path, device=torch.device("cpu"))
    assert torch.equal(loaded["layer.weight"], state["layer.weight"])
    if torch.cuda.is_available():
        loaded, _ = load_weights(path, device="cuda")
        assert loaded["layer.weight"].is_cuda and torch.equal(loaded["layer.weight"].cpu(), state["layer.weight"])


# ----------------------------------------------------------------------------------------------------------------------
# training checkpoints (.pt)


def test_damaged_training_checkpoint_is_refused_unless_verify_is_off(tmp_path):
    model = state_dict()
    ema = state_dict(seed=1)
    path = save_checkpoint(tmp_path / "checkpoint.pt", model_state=model, ema_state=ema, step=3)
    ckpt = load_checkpoint(path)
    assert "checksums" not in ckpt and ckpt["step"] == 3  # the loaded dict is as before
    assert torch.equal(ckpt["ema"]["layer.weight"], ema["layer.weight"])

    overwrite(path, ema["layer.weight"], flip_2000_bytes)
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt' is damaged: its ema weights.*checksum"):
        load_checkpoint(path)
    assert not torch.equal(load_checkpoint(path, verify=False)["ema"]["layer.weight"], ema["layer.weight"])


def test_training_checkpoint_with_nan_weights_is_refused(tmp_path):
    model = state_dict()
    model["layer.weight"][5, 5] = float("nan")
    path = save_checkpoint(tmp_path / "checkpoint.pt", model_state=model, step=3)
    for verify in (True, False):
        with pytest.raises(CheckpointError, match=r"damaged: its model weights hold NaN.*'layer\.weight'.*train again"):
            load_checkpoint(path, verify=verify)


def test_training_checkpoint_without_checksums_still_loads(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format": "dalle2_edu.checkpoint", "format_version": 1, "step": 2, "model": state_dict()}, path)
    assert load_checkpoint(path)["step"] == 2


# ----------------------------------------------------------------------------------------------------------------------
# permissions


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_files_are_created_with_the_umask(tmp_path, umask_027):
    weights = save_weights(tmp_path / "w.safetensors", state_dict())
    checkpoint = save_checkpoint(tmp_path / "checkpoint.pt", model_state=state_dict())
    assert weights.stat().st_mode & 0o777 == 0o640
    assert checkpoint.stat().st_mode & 0o777 == 0o640
    os.umask(0o002)
    assert save_weights(tmp_path / "w.safetensors", state_dict()).stat().st_mode & 0o777 == 0o664
