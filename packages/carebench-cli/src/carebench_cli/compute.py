"""The compute record of a run (`metrics.json["compute"]`): what it ran on, how long, how fast, how much memory.

Like a model card's compute line, summed by the report's Compute section into device-hours per
model and for the grid. A run that shares its GPU with others (`--jobs`) counts its wall time
divided by the number of runs on that GPU.
"""

from __future__ import annotations

import platform
import resource
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from carebench_cli.placement import Placement

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")
_MIB = 2**20


def cpu_name() -> str:
    """The CPU model (`/proc/cpuinfo` on Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: str) -> str:
    """`torch.cuda.get_device_name` of a CUDA device, the CPU model for `cpu`."""
    if device == "cpu":
        return cpu_name()
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak RSS of this process (Linux: `5` to clear_refs); whether it worked."""
    try:
        _CLEAR_REFS.write_text("5", encoding="ascii")
    except OSError:
        return False
    return True


def peak_rss_bytes() -> int:
    """Peak resident set size of this process: `VmHWM` on Linux, else `getrusage`."""
    try:
        for line in _STATUS.read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class ComputeMeter:
    """Measures one run: call `start` before training, `record` after the last prediction."""

    def __init__(self, device: str, placement: Placement | None = None) -> None:
        self.device = device
        self.placement = placement or Placement()
        self._rss_scope = "process"

    def start(self) -> None:
        """Reset the peak-memory counters, so the peak is this run's."""
        if self.device == "cpu":
            self._rss_scope = "run" if _reset_peak_rss() else "process"
            return
        import torch

        torch.cuda.reset_peak_memory_stats(torch.device(self.device))

    def _peak(self) -> dict[str, Any]:
        if self.device == "cpu":
            return {
                "peak_memory_mib": round(peak_rss_bytes() / _MIB, 1),
                "peak_memory_kind": "cpu_rss",
                "peak_memory_scope": self._rss_scope,
            }
        import torch

        device = torch.device(self.device)
        return {
            "peak_memory_mib": round(torch.cuda.max_memory_allocated(device) / _MIB, 1),
            "peak_memory_reserved_mib": round(torch.cuda.max_memory_reserved(device) / _MIB, 1),
            "peak_memory_kind": "cuda_max_allocated",
            "peak_memory_scope": "run",
        }

    def record(self, *, wall_seconds: float, epochs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The run's compute record (plain JSON).

        Args:
            wall_seconds: the run's wall time (build, training, every prediction, writing).
            epochs: the trainer's epoch records (`train_samples` and `train_seconds` each).
        """
        import torch

        samples = sum(int(record.get("train_samples", 0)) for record in epochs)
        seconds = sum(float(record.get("train_seconds", 0.0)) for record in epochs)
        share = self.placement.runs_on_device
        return {
            "device": "cpu" if self.device == "cpu" else "cuda",
            "device_name": device_name(self.device),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "wall_seconds": round(wall_seconds, 3),
            "runs_on_device": share,
            "device_hours": round(wall_seconds / 3600 / share, 6),
            "epochs": len(epochs),
            "train_samples": samples,
            "train_seconds": round(seconds, 3),
            "train_samples_per_s": round(samples / seconds, 1) if seconds > 0 else None,
            "loader_workers": self.placement.loader_workers,
            **self._peak(),
        }
