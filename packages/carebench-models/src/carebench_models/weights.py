"""Model weights as safetensors (no pickle), written atomically."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from carebench_models.errors import CarebenchModelError


def cpu_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """A detached CPU copy of every entry of `model.state_dict()` (tied weights become separate copies)."""
    return {
        key: value.detach().to("cpu", copy=True).contiguous() for key, value in model.state_dict().items()
    }


def _umask() -> int:
    """The process umask (from /proc on Linux, so other threads never see it change)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            return int(next(line for line in handle if line.startswith("Umask:")).split()[1], 8)
    except (OSError, ValueError, StopIteration):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def save_state_dict(state: Mapping[str, Tensor], path: str | os.PathLike[str]) -> Path:
    """Write tensors to a safetensors file atomically (temporary file in the same folder, then rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().to("cpu").contiguous().clone() for key, value in state.items()}
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata={"format": "pt"})
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; weights are as readable as any file
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return target


def save_weights(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Save `model.state_dict()` (parameters and persistent buffers) to `path` as safetensors."""
    return save_state_dict(model.state_dict(), path)


def load_weights(model: nn.Module, path: str | os.PathLike[str], *, strict: bool = True) -> None:
    """Load a safetensors file written by `save_weights` into `model` (in place).

    Raises:
        CarebenchModelError: the file is missing, or (with `strict`) its keys or shapes do not match.
    """
    source = Path(path)
    if not source.is_file():
        raise CarebenchModelError(f"weights file not found: {source}")
    state = load_file(str(source))
    expected = model.state_dict()
    if strict:
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected:
            raise CarebenchModelError(
                f"{source} does not fit {type(model).__name__}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
            )
    mismatched = [
        key
        for key, value in state.items()
        if key in expected and tuple(value.shape) != tuple(expected[key].shape)
    ]
    if mismatched:
        raise CarebenchModelError(
            f"{source} has tensors of other shapes than {type(model).__name__}: {mismatched[:5]}"
        )
    model.load_state_dict(state, strict=strict)
