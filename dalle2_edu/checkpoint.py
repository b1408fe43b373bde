"""Saving and loading checkpoints safely.

Two formats, both of which can be loaded without running any code stored in the file:

* **Training checkpoints** (``save_checkpoint`` / ``load_checkpoint``): one ``.pt`` file written by ``torch.save`` and
  read back with ``torch.load(..., weights_only=True)``. It holds everything needed to resume training exactly:
  model and EMA weights, optimizer state, step, config and random-number-generator states. Only tensors, plain
  containers (dict, list, tuple), numbers, strings, booleans and ``None`` are stored, and this is checked at save time
  so that a checkpoint that saves also loads.
* **Weights** (``save_weights`` / ``load_weights``): a ``.safetensors`` file with just a state dict (optionally in
  float16) and the model's config as JSON in the file's metadata. This is the small file to share or ship.

Damage is caught on load, not in the pictures drawn later. Each weights file carries a checksum of its tensors
(:func:`tensors_checksum`, stored in the metadata under ``"tensors_sha256"``) and each training checkpoint one of
its model and EMA weights; loading recomputes it (``verify=False`` skips that for speed) and refuses a file whose
bytes changed after it was written. Weights holding NaN or infinity are refused always (a cheap check). Files
written before checksums existed still load, with the finite check only. :func:`weights_digest` names a weights
file's content (the same checksum), to record which weights something was trained against.

Every write is atomic: the data goes to a temporary file in the same folder, is flushed to disk, and only then
replaces the target with ``os.replace``. A crash or Ctrl-C in the middle of a save leaves the previous file intact.
Files are created with the permissions the umask allows (like ``open``), readable by others under the usual umask.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

FORMAT = "dalle2_edu.checkpoint"
FORMAT_VERSION = 1
CHECKSUM_KEY = "tensors_sha256"
"""Metadata key of a weights file's checksum (:func:`tensors_checksum` of its tensors, 64 hex digits)."""

# Types torch.load(weights_only=True) accepts. Exact types on purpose: numpy.float64 subclasses float but is pickled
# as a numpy object, which a weights-only load refuses.
_SAFE_LEAVES = (type(None), bool, int, float, str, torch.dtype, torch.device, torch.Size)
_SAFE_TENSORS = (torch.Tensor, torch.nn.Parameter)


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be used: truncated, corrupt, damaged (its checksum does not match, or it
    holds NaN/inf weights), or not a dalle2_edu checkpoint."""


def tensors_checksum(state_dict: dict) -> str:
    """SHA-256 of a state dict's content: for each tensor, in the order of the sorted names, its name, dtype, shape
    and raw bytes (each field length-prefixed, so no two different state dicts hash alike).

    This is what :func:`save_weights` stores and :func:`load_weights` checks. It does not depend on the file layout
    or on the config, only on the tensors as stored: the same weights in float16 and in float32 hash differently.

    :param state_dict: name -> tensor (on any device).
    :return: 64 hex digits.
    :raises TypeError: a value is not a tensor.
    """
    h = hashlib.sha256(b"dalle2_edu.tensors_sha256 v1\0")
    for name in sorted(state_dict):
        tensor = state_dict[name]
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state_dict['{name}'] is a {type(tensor).__name__}, not a tensor")
        tensor = tensor.detach().cpu().contiguous()
        shape = ",".join(str(n) for n in tensor.shape)
        field = f"{name}\0{str(tensor.dtype).removeprefix('torch.')}\0{shape}".encode()
        data = tensor.reshape(-1).view(torch.uint8).numpy()
        h.update(len(field).to_bytes(8, "little") + field + data.nbytes.to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


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
    checkpoint["checksums"] = {
        key: tensors_checksum(checkpoint[key]) for key in ("model", "ema") if _all_tensors(checkpoint[key])
    }
    path = Path(path)
    _atomic_write(path, lambda f: torch.save(checkpoint, f))
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", *, verify: bool = True) -> dict:
    """Load a checkpoint written by ``save_checkpoint``, without executing any code stored in it.

    :param path: the checkpoint file.
    :param map_location: where to put the tensors (``"cpu"`` by default; the Trainer moves them where they belong).
    :param verify: check the model and EMA weights against the checksums stored with them (files written before
        checksums existed have none). NaN/inf weights are refused either way.
    :return: a dict with keys ``step``, ``config``, ``model``, ``ema``, ``optimizer``, ``rng``, ``extra``.
    :raises FileNotFoundError: the file does not exist.
    :raises CheckpointError: the file is truncated, corrupt, damaged (checksum mismatch, NaN/inf weights), or not a
        dalle2_edu checkpoint.
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
    checksums = checkpoint.pop("checksums", None) or {}
    for key in ("model", "ema"):
        state = checkpoint.get(key)
        if not isinstance(state, dict):
            continue
        if verify and key in checksums and (not _all_tensors(state) or tensors_checksum(state) != checksums[key]):
            problem = f"its {key} weights do not match the checksum stored with them (bytes changed after writing)"
            raise CheckpointError(_damaged_message(path, problem))
        _check_finite(path, state, f"{key} weights")
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
    :raises FloatingPointError: a tensor holds NaN or inf (such a file would be refused on loading); nothing is written.
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
    bad = _first_non_finite(tensors)
    if bad is not None:
        name, count = bad
        raise FloatingPointError(
            f"Not saving '{path}': state_dict['{name}'] holds {count} NaN or infinite values"
            f"{' after conversion to float16' if half else ''}. Train with a lower learning rate or save an earlier "
            "checkpoint's weights."
        )
    metadata = {
        "format": "pt",
        "config": json.dumps(config),
        "library": "dalle2_edu",
        CHECKSUM_KEY: tensors_checksum(tensors),
    }
    data = save(tensors, metadata=metadata)
    path = Path(path)
    _atomic_write(path, lambda f: f.write(data))
    return path


def load_weights(
    path: str | os.PathLike, device: str | torch.device = "cpu", *, verify: bool = True
) -> tuple[dict, dict]:
    """Load a ``.safetensors`` file written by ``save_weights``.

    :param path: the weights file.
    :param device: where to put the tensors.
    :param verify: check the tensors against the checksum stored with them (:func:`tensors_checksum`, about a second
        per GB); ``False`` skips it. Files written before checksums existed have none and load unchecked. NaN or
        infinite weights are refused either way.
    :return: ``(state_dict, config)``; ``config`` is ``{}`` when the file carries none.
    :raises FileNotFoundError: the file does not exist.
    :raises CheckpointError: the file is truncated, corrupt or damaged (checksum mismatch, NaN/inf weights).
    """
    path = _existing_file(path, "weights")
    state_dict, metadata, _ = _read_weights(path, verify)
    try:
        config = json.loads(metadata.get("config", "{}"))
    except ValueError as err:
        raise CheckpointError(_corrupt_message(path, err)) from err
    if torch.device(device).type != "cpu":
        state_dict = {name: tensor.to(device) for name, tensor in state_dict.items()}
    return state_dict, config


def weights_digest(path: str | os.PathLike) -> str:
    """What a weights file holds, as 64 hex digits, to record which weights something was trained against.

    It is :func:`tensors_checksum` of the file's tensors (names, dtypes, shapes, bytes), computed from the tensors
    and checked against the checksum stored in the file, if any. It ignores the metadata, so rewriting a file with
    the same tensors (e.g. to add a checksum) keeps its digest; it also works for files written without a checksum.

    :param path: a ``.safetensors`` file.
    :raises FileNotFoundError: the file does not exist.
    :raises CheckpointError: the file is corrupt or damaged.
    """
    path = _existing_file(path, "weights")
    return _read_weights(path, verify=True)[2]


MODEL_KINDS: dict[str, str] = {
    "clip": "dalle2_edu.stages.clip:build_clip",
    "prior": "dalle2_edu.stages.prior:build_prior",
    "decoder": "dalle2_edu.stages.decoder:build_decoder",
    "upsampler": "dalle2_edu.stages.upsampler:build_upsampler",
    "image_model": "dalle2_edu.stages.attributes:build_image_model",
    "attribute_classifier": "dalle2_edu.metrics:build_attribute_classifier",
    "vqvae": "dalle2_edu.stages.vqvae:build_vqvae",
    "autoregressive": "dalle2_edu.stages.autoregressive:build_autoregressive",
    "latent_diffusion": "dalle2_edu.stages.latent:build_latent_diffusion",
}
"""The registry of model kinds: the key a weights file's config is stored under → ``module:function`` that builds the
(untrained) model from that config. Every shipped model is saved by :func:`save_model` and loaded by
:func:`load_model`; :func:`load_any` loads a file whatever it holds."""


def _builder(key: str) -> Callable[[dict], torch.nn.Module]:
    import importlib

    module, name = MODEL_KINDS[key].split(":")
    return getattr(importlib.import_module(module), name)


def model_kind(config: dict) -> str | None:
    """The registered kind a weights file's config names, or None."""
    if config.get("model") == "AttributeClassifier":  # the classifier's files before the registry: a flat config
        return "attribute_classifier"
    return next((key for key in MODEL_KINDS if key in config), None)


def load_any(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[str, torch.nn.Module]:
    """Load any model file this project writes: ``(kind, model in eval mode)``, the kind read from its config.

    :raises ValueError: the file holds none of the registered kinds (:data:`MODEL_KINDS`).
    """
    path = _existing_file(path, "weights")
    _, config = load_weights(path)
    kind = model_kind(config)
    if kind is None:
        raise ValueError(f"'{path}' holds no model this project knows (its config has {sorted(config) or 'nothing'}; "
                         f"known kinds: {', '.join(MODEL_KINDS)})")  # fmt: skip
    return kind, load_model(path, kind, device=device)


def save_model(path: str | os.PathLike, model: torch.nn.Module, key: str, metrics: dict | None = None,
               half: bool = True, config: dict | None = None) -> Path:
    """Ship a trained model: ``save_weights`` with ``{key: model.config.to_dict()}`` (or ``{key: config}``) as the
    file's config, and ``metrics`` (how it was trained, how good it is) as a JSON file beside it. Read back with
    :func:`load_model`; ``key`` should be one of :data:`MODEL_KINDS`."""
    path = Path(path)
    config = model.config.to_dict() if config is None else config
    save_weights(path, model.state_dict(), {key: config}, half=half)
    if metrics is not None:
        path.with_suffix(".json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    return path


def load_model(path: str | os.PathLike, key: str, build: Callable[[dict], torch.nn.Module] | None = None,
               how_to_make: str = "", device: str | torch.device = "cpu", name: str | None = None) -> torch.nn.Module:
    """Load a file written by :func:`save_model`: ``build(config[key])`` makes the model (the registry's builder by
    default, :data:`MODEL_KINDS`), the weights go in as float32, and the model comes back in eval mode on ``device``.

    :param how_to_make: the fix named when the file is missing, e.g. "train one with
        `python -m dalle2_edu train decoder --out FOLDER`".
    :param name: what to call the model in messages (default: the key).
    :raises FileNotFoundError: no file at ``path``.
    :raises ValueError: the file holds no ``key`` config, or weights that do not fit it.
    """
    path = Path(path)
    name = name or key.replace("_", " ")
    if not path.is_file():
        raise FileNotFoundError(f"no {name} at {path}" + (f"; {how_to_make}" if how_to_make else ""))
    state, config = load_weights(path)
    if key not in config and model_kind(config) != key:
        raise ValueError(
            f"{path} holds no {name} config in its metadata (found {sorted(config)}); was it written by save_{key}?"
        )
    model = (build or _builder(key))(config.get(key, config))
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as err:
        raise ValueError(
            f"the weights in {path} do not fit the {name} config stored with them (names or shapes do not match): "
            f"{err}"
        ) from err
    return model.to(device).eval()


# ----------------------------------------------------------------------------------------------------------------------
# helpers


def _read_weights(path: Path, verify: bool) -> tuple[dict, dict, str | None]:
    """:return: ``(state_dict on the CPU, metadata, checksum of the tensors or None when not verified)``."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state_dict = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as err:
        raise CheckpointError(_corrupt_message(path, err)) from err
    checksum = None
    if verify:
        checksum = tensors_checksum(state_dict)
        stored = metadata.get(CHECKSUM_KEY)
        if stored is not None and stored != checksum:
            problem = "its tensors do not match the checksum stored with them (bytes changed after writing)"
            raise CheckpointError(_damaged_message(path, problem))
    _check_finite(path, state_dict, "weights")
    return state_dict, metadata, checksum


def _all_tensors(state: Any) -> bool:
    return isinstance(state, dict) and bool(state) and all(isinstance(v, torch.Tensor) for v in state.values())


def _first_non_finite(state: dict) -> tuple[str, int] | None:
    """:return: ``(name, number of NaN/inf values)`` of the first floating-point tensor holding any, else None."""
    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and (tensor.is_floating_point() or tensor.is_complex()):
            finite = torch.isfinite(tensor)
            if not finite.all():
                return name, int((~finite).sum())
    return None


def _check_finite(path: Path, state: dict, what: str) -> None:
    bad = _first_non_finite(state)
    if bad is not None:
        name, count = bad
        problem = f"its {what} hold NaN or infinite values ({count} in '{name}'), with which a model draws nothing"
        raise CheckpointError(_damaged_message(path, problem))


def _damaged_message(path: Path, problem: str) -> str:
    return (
        f"'{path}' is damaged: {problem}. Do not use it: restore it from a backup or a fresh download (a file shipped "
        "in data/checkpoints: `git checkout -- <file>`), or train again."
    )


def warn_cache_not_written(path: str | os.PathLike, err: OSError) -> None:
    """Warn that an optional cache file could not be written (a read-only checkout, a full disk), naming the fix.

    For callers that go on without the cache: ``try: write(path) except OSError as err: warn_cache_not_written(...)``.
    """
    from dalle2_edu.utils import DATA_ENV

    warnings.warn(
        f"could not write the cache file {path} ({err.strerror or err}); going on without it (it is made again next "
        f"time). To keep caches, set {DATA_ENV} to a writable folder (it holds cache/ and checkpoints/: copy "
        "data/checkpoints there too), or pass cache_dir=None to skip caching and this warning.",
        stacklevel=3,
    )


def _umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux), else by setting it back."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write a file so that readers see either the old content or the complete new one, never a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates files readable by their owner only; do as open() does
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
