"""Saving and loading checkpoints safely.

Two formats, both of which can be loaded without running any code stored in the file:

* **Training checkpoints** (``save_checkpoint`` / ``load_checkpoint``): one ``.pt`` file written by ``torch.save`` and
  read back with ``torch.load(..., weights_only=True)``. It holds everything needed to resume training exactly:
  model and EMA weights, optimizer state, step, config and random-number-generator states. Only tensors, plain
  containers (dict, list, tuple), numbers, strings, booleans and ``None`` are stored, and this is checked at save time
  so that a checkpoint that saves also loads.
* **Weights** (``save_weights`` / ``load_weights``): a ``.safetensors`` file with just a state dict (optionally in
  float16) and the model's config as JSON in the file's metadata. This is the small file to share or ship.

Every write is atomic: the data goes to a temporary file in the same folder, is flushed to disk, and only then
replaces the target with ``os.replace``. A crash or Ctrl-C in the middle of a save leaves the previous file intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

FORMAT = "dalle2_edu.checkpoint"
FORMAT_VERSION = 1

# Types torch.load(weights_only=True) accepts. Exact types on purpose: numpy.float64 subclasses float but is pickled
# as a numpy object, which a weights-only load refuses.
_SAFE_LEAVES = (type(None), bool, int, float, str, torch.dtype, torch.device, torch.Size)
_SAFE_TENSORS = (torch.Tensor, torch.nn.Parameter)


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read: truncated, corrupt, or not a dalle2_edu checkpoint."""


# ----------------------------------------------------------------------------------------------------------------------
# training checkpoints


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model_state: dict,
    ema_state: dict | None = None,
    optimizer_state: dict | None = None,
    step: int = 0,
    config: dict | None = None,
    rng_state: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Atomically write a training checkpoint to ``path`` (one file, loadable with ``weights_only=True``).

    :param path: destination file, e.g. ``out/checkpoint.pt``; missing parent folders are created.
    :param model_state: ``model.state_dict()``.
    :param ema_state: the EMA model's state dict, if any.
    :param optimizer_state: ``optimizer.state_dict()``, if any.
    :param step: number of optimizer updates done so far.
    :param config: a JSON-serialisable dict describing the run (model and trainer hyper-parameters).
    :param rng_state: random-generator states (see ``dalle2_edu.train``); tensors, ints, lists and tuples only.
    :param extra: anything else made of tensors, numbers, strings and plain containers.
    :return: the path written.
    """
    if config is not None:
        _check_json(config, "config")
    checkpoint = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "config": config,
        "model": model_state,
        "ema": ema_state,
        "optimizer": optimizer_state,
        "rng": rng_state,
        "extra": extra,
    }
    _check_weights_only_safe(checkpoint, "checkpoint")
    path = Path(path)
    _atomic_write(path, lambda f: torch.save(checkpoint, f))
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by ``save_checkpoint``, without executing any code stored in it.

    :param path: the checkpoint file.
    :param map_location: where to put the tensors (``"cpu"`` by default; the Trainer moves them where they belong).
    :return: a dict with keys ``step``, ``config``, ``model``, ``ema``, ``optimizer``, ``rng``, ``extra``.
    :raises FileNotFoundError: the file does not exist.
    :raises CheckpointError: the file is truncated, corrupt, or not a dalle2_edu checkpoint.
    """
    path = _existing_file(path, "checkpoint")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        if "weights only load failed" in str(err).lower():
            raise CheckpointError(
                f"Checkpoint '{path}' contains Python objects that cannot be loaded safely (it was not written by "
                "dalle2_edu.save_checkpoint). Only load such a file with weights_only=False if you trust its source."
            ) from err
        raise CheckpointError(_corrupt_message(path, err)) from err
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT or "model" not in checkpoint:
        found = sorted(checkpoint)[:10] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f"'{path}' is not a dalle2_edu training checkpoint (found {found}). "
            "For a bare state dict use torch.load(..., weights_only=True); for .safetensors use load_weights."
        )
    if checkpoint.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"Checkpoint '{path}' has format version {checkpoint['format_version']}, newer than this dalle2_edu "
            f"understands ({FORMAT_VERSION}). Upgrade dalle2_edu."
        )
    return checkpoint


# ----------------------------------------------------------------------------------------------------------------------
# weights only (safetensors)


def save_weights(path: str | os.PathLike, state_dict: dict, config: dict | None = None, *, half: bool = False) -> Path:
    """Atomically write a state dict as ``.safetensors`` with ``config`` stored as JSON in the file's metadata.

    :param path: destination file, conventionally ending in ``.safetensors``.
    :param state_dict: name -> tensor, e.g. ``trainer.ema_model.state_dict()``.
    :param config: JSON-serialisable dict needed to rebuild the model (e.g. its constructor arguments).
    :param half: store floating-point tensors as float16 (half the size; ``load_state_dict`` casts them back).
    :return: the path written.
    """
    from safetensors.torch import save

    config = {} if config is None else config
    _check_json(config, "config")
    tensors = {}
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state_dict['{name}'] is a {type(tensor).__name__}, not a tensor")
        tensor = tensor.detach().cpu()
        if half and tensor.is_floating_point():
            tensor = tensor.half()
        tensors[name] = tensor.contiguous().clone()  # clone: safetensors refuses tensors that share memory
    metadata = {"format": "pt", "config": json.dumps(config), "library": "dalle2_edu"}
    data = save(tensors, metadata=metadata)
    path = Path(path)
    _atomic_write(path, lambda f: f.write(data))
    return path


def load_weights(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[dict, dict]:
    """Load a ``.safetensors`` file written by ``save_weights``.

    :param path: the weights file.
    :param device: where to put the tensors.
    :return: ``(state_dict, config)``; ``config`` is ``{}`` when the file carries none.
    :raises FileNotFoundError: the file does not exist.
    :raises CheckpointError: the file is truncated or corrupt.
    """
    from safetensors import safe_open

    path = _existing_file(path, "weights")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            metadata = f.metadata() or {}
            state_dict = {name: f.get_tensor(name) for name in f.keys()}
        config = json.loads(metadata.get("config", "{}"))
    except Exception as err:
        raise CheckpointError(_corrupt_message(path, err)) from err
    return state_dict, config


def save_model(path: str | os.PathLike, model: torch.nn.Module, key: str, metrics: dict | None = None,
               half: bool = True) -> Path:
    """Ship a trained model: ``save_weights`` with ``{key: model.config.to_dict()}`` as the file's config, and
    ``metrics`` (how it was trained, how good it is) as a JSON file beside it. Read back with :func:`load_model`."""
    path = Path(path)
    save_weights(path, model.state_dict(), {key: model.config.to_dict()}, half=half)
    if metrics is not None:
        path.with_suffix(".json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    return path


def load_model(path: str | os.PathLike, key: str, build: Callable[[dict], torch.nn.Module], how_to_make: str,
               device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a file written by :func:`save_model`: ``build(config[key])`` makes the model, the weights go in as
    float32, and the model comes back in eval mode on ``device``.

    :param how_to_make: the fix named when the file is missing, e.g. "train one with `python -m dalle2_edu pretrain`".
    :raises FileNotFoundError: no file at ``path``.
    :raises ValueError: the file holds no ``key`` config, or weights that do not fit it.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no {key.replace('_', ' ')} at {path}; {how_to_make}")
    state, config = load_weights(path)
    if key not in config:
        raise ValueError(
            f"{path} holds no {key} config in its metadata (found {sorted(config)}); was it written by save_{key}?"
        )
    model = build(config[key])
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as err:
        raise ValueError(
            f"the weights in {path} do not fit the {key} config stored with them (names or shapes do not match): {err}"
        ) from err
    return model.to(device).eval()


# ----------------------------------------------------------------------------------------------------------------------
# helpers


def _atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write a file so that readers see either the old content or the complete new one, never a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates files readable by their owner only
        os.replace(tmp, path)
    except BaseException:  # also Ctrl-C: never leave the temporary file behind
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _existing_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"'{path}' is a folder; pass the {what} file inside it, e.g. '{path / 'checkpoint.pt'}'"
        )
    if not path.exists():
        raise FileNotFoundError(
            f"No {what} file at '{path}'. Check the path (relative to {Path.cwd()}), or train first: "
            "Trainer(..., out_dir=...).fit(steps) writes out_dir/checkpoint.pt."
        )
    return path


def _corrupt_message(path: Path, err: Exception) -> str:
    return (
        f"Checkpoint file '{path}' is corrupt or truncated ({type(err).__name__}: {err}). "
        "It cannot be used: re-train, or restore the file from a backup or a fresh download."
    )


def _check_json(obj: Any, name: str) -> None:
    try:
        json.dumps(obj, allow_nan=True)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be JSON-serialisable (dicts, lists, numbers, strings): {err}") from err


def _check_weights_only_safe(obj: Any, where: str) -> None:
    """Raise TypeError naming the first value that ``torch.load(weights_only=True)`` would refuse."""
    kind = type(obj)
    if kind in _SAFE_LEAVES or kind in _SAFE_TENSORS:
        return
    if kind in (dict, OrderedDict):
        for key, value in obj.items():
            if type(key) not in _SAFE_LEAVES:
                raise TypeError(f"{where} has a key of type {type(key).__name__}, which cannot be loaded safely")
            _check_weights_only_safe(value, f"{where}[{key!r}]")
        return
    if kind in (list, tuple):
        for i, value in enumerate(obj):
            _check_weights_only_safe(value, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {kind.__module__}.{kind.__qualname__}; a checkpoint may only hold tensors, numbers, strings, "
        "booleans, None and dicts/lists/tuples of them, so that loading it never runs code. Convert it "
        "(e.g. numpy array -> torch.from_numpy, numpy scalar -> float)."
    )
