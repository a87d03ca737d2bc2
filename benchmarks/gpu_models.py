"""Training throughput and peak memory of every registered model, against a bare ResNet-50 in the same run.

For each model (paper profile: 224-px images, ResNet-50, F 27, phenotype K 25, fully paired batches)
and batch size (16, 128), it times `training_step` in fp32 and in bf16 autocast + channels_last, and
times a bare torchvision ResNet-50 forward + backward + AdamW step at the same batch size and
precision: the reference ceiling. The ratio model / ResNet-50 is what to compare across machines.

    python benchmarks/gpu_models.py --out bench-results/gpu_models            # on a CUDA machine
    python benchmarks/gpu_models.py --device cpu --tiny --models lstm --out /tmp/g   # CI smoke test

`--tiny` uses the quick profile at 32 px, and its reference is the bare SmallCNN instead of ResNet-50.

Targets: a model's step may take at most 1.5× the reference step per CNN backbone it holds (1.5× for
one CNN or none, 3× for DrFuse and ShaSpec, which hold two); they are meant for batch 128 in bf16 +
channels_last, where the GPU is busy, and every row reports whether it meets its target.

Writes `<out>/gpu_models.json` and `<out>/gpu_models.md` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet50

from carebench_models import TaskSpec, TrainConfig, TrainState, available_models, create_model
from carebench_models.encoders import CXREncoder, SmallCNN
from carebench_models.testing import tiny_arrays

MODES = ("fp32", "bf16_cl")
REFERENCE = "resnet50 (reference)"
REFERENCE_TINY = "smallcnn (reference)"
PREPARE_ROWS = 16
"""Rows of the batch handed to `prepare` (at least SMIL's 10 priors)."""
TARGET_STEP_RATIO_PER_CNN = 1.5
"""A model's training step may take at most this many reference steps per CNN backbone it holds."""


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    step: Callable[[], None], *, device: torch.device, warmup: int, steps: int
) -> tuple[float, float | None]:
    """Seconds per step after `warmup` steps, and peak CUDA memory in MiB (None on CPU)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    seconds = (time.perf_counter() - started) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return seconds, peak


def autocast(device: torch.device, mode: str) -> torch.autocast:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=mode == "bf16_cl")


def model_step(
    name: str,
    task: TaskSpec,
    batch: dict[str, torch.Tensor],
    *,
    profile: str,
    overrides: dict[str, Any],
    device: torch.device,
    mode: str,
) -> tuple[Callable[[], None], int, int]:
    """A closure running one `training_step`, the model's parameter count and its number of CNN backbones."""
    torch.manual_seed(0)
    model = create_model(name, task=task, profile=profile, channels_last=mode == "bf16_cl", **overrides).to(
        device
    )
    if mode == "bf16_cl":
        model.to(memory_format=torch.channels_last)
    # Models with a `prepare` hook (SMIL's priors) see a fully paired batch first, as `Trainer.fit` does.
    prepare_batch = tiny_arrays(
        task,
        PREPARE_ROWS,
        paired_fraction=1.0,
        seed=1,
        ehr_features=batch["ehr"].shape[-1],
        image_size=batch["cxr"].shape[-1],
    )
    model.prepare([{key: value.to(device) for key, value in prepare_batch.items()}])
    model.train()
    optimizers = model.configure_optimizers(TrainConfig())
    state = TrainState(device=device, amp_dtype=torch.bfloat16 if mode == "bf16_cl" else None)

    def step() -> None:
        with autocast(device, mode):
            model.training_step(batch, optimizers, state)

    backbones = sum(isinstance(module, CXREncoder) for module in model.modules())
    return step, sum(parameter.numel() for parameter in model.parameters()), backbones


def reference_step(
    task: TaskSpec, batch: dict[str, torch.Tensor], *, device: torch.device, mode: str, tiny: bool
) -> Callable[[], None]:
    """Bare CNN with a K-way head: forward, BCE, backward, AdamW step.

    torchvision ResNet-50 in the paper profile; in the tiny smoke test the quick profile's SmallCNN.
    """
    torch.manual_seed(0)
    if tiny:
        network = nn.Sequential(SmallCNN(channels_last=False), nn.Linear(128, task.num_outputs)).to(device)
    else:
        network = resnet50(weights=None, num_classes=task.num_outputs).to(device)
    images = batch["cxr"]
    if mode == "bf16_cl":
        network.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4, weight_decay=0.01)
    targets = batch["y"]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, mode):
            logits = network(images)
        F.binary_cross_entropy_with_logits(logits.float(), targets).backward()
        optimizer.step()

    return step


def counted_model_step(
    name: str, task: TaskSpec, batch: dict[str, torch.Tensor], facts: list[tuple[int, int]], **kwargs: Any
) -> Callable[[], None]:
    """`model_step` that appends (parameter count, CNN backbones) of the model to `facts`."""
    step, count, backbones = model_step(name, task, batch, **kwargs)
    facts.append((count, backbones))
    return step


def step_time_target(backbones: int) -> float:
    """Largest allowed step time relative to the reference step, for a model with `backbones` CNNs."""
    return TARGET_STEP_RATIO_PER_CNN * max(1, backbones)


def measure(
    step_factory: Callable[[], Callable[[], None]],
    *,
    device: torch.device,
    warmup: int,
    steps: int,
    batch_size: int,
) -> dict[str, Any]:
    try:
        seconds, peak = time_steps(step_factory(), device=device, warmup=warmup, steps=steps)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"status": "oom", "samples_per_s": None, "peak_mib": None}
    return {"status": "ok", "samples_per_s": batch_size / seconds, "peak_mib": peak}


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    labels = tuple(f"label_{k}" for k in range(25))
    task = TaskSpec("phenotype", "multilabel", 25, labels)
    profile = "quick" if args.tiny else "paper"
    image_size = 32 if args.tiny else 224
    # Random CNN weights: throughput does not depend on their values, and the run needs no weights file.
    overrides = {"ehr_features": 27, "image_size": image_size, "cxr_weights": "none"}
    rows: list[dict[str, Any]] = []
    timing = {"device": device, "warmup": args.warmup, "steps": args.steps}
    for batch_size in args.batch_sizes:
        arrays = tiny_arrays(
            task, batch_size, paired_fraction=1.0, seed=0, ehr_features=27, image_size=image_size
        )
        batch = {key: value.to(device) for key, value in arrays.items()}
        for mode in MODES:
            reference_factory = partial(reference_step, task, batch, device=device, mode=mode, tiny=args.tiny)
            reference = measure(reference_factory, batch_size=batch_size, **timing)
            reference_name = REFERENCE_TINY if args.tiny else REFERENCE
            rows.append(
                {
                    "model": reference_name,
                    "batch_size": batch_size,
                    "mode": mode,
                    "parameters": None,
                    **reference,
                }
                | {"ratio_to_reference": 1.0, "cnn_backbones": None, "step_time_ratio": 1.0}
                | {"target_step_time_ratio": None, "meets_target": None}
            )
            for name in args.models:
                facts: list[tuple[int, int]] = []
                factory = partial(
                    counted_model_step,
                    name,
                    task,
                    batch,
                    facts,
                    profile=profile,
                    overrides=overrides,
                    device=device,
                    mode=mode,
                )
                result = measure(factory, batch_size=batch_size, **timing)
                ratio = step_ratio = meets = None
                if result["samples_per_s"] and reference["samples_per_s"]:
                    ratio = result["samples_per_s"] / reference["samples_per_s"]
                    step_ratio = 1.0 / ratio
                count, backbones = facts[0]
                target = step_time_target(backbones)
                if step_ratio is not None:
                    meets = step_ratio <= target
                rows.append(
                    {
                        "model": name,
                        "batch_size": batch_size,
                        "mode": mode,
                        "parameters": count,
                        **result,
                    }
                    | {"ratio_to_reference": ratio, "cnn_backbones": backbones, "step_time_ratio": step_ratio}
                    | {"target_step_time_ratio": target, "meets_target": meets}
                )
    return {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "profile": profile,
        "image_size": image_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "rows": rows,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Model training throughput ({report['device']}, torch {report['torch']}, {report['profile']} profile, "
        f"{report['image_size']} px, fully paired batches)",
        "",
        "| model | batch | mode | params (M) | samples/s | peak MiB | × reference | step time × reference (target) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        params = f"{row['parameters'] / 1e6:.2f}" if row["parameters"] else "-"
        speed = f"{row['samples_per_s']:.1f}" if row["samples_per_s"] else row["status"]
        peak = f"{row['peak_mib']:.0f}" if row["peak_mib"] is not None else "-"
        ratio = f"{row['ratio_to_reference']:.2f}" if row["ratio_to_reference"] is not None else "-"
        lines.append(
            f"| {row['model']} | {row['batch_size']} | {row['mode']} | {params} | {speed} | {peak} | {ratio} "
            f"| {step_time_text(row)} |"
        )
    return "\n".join(lines) + "\n"


def step_time_text(row: dict[str, Any]) -> str:
    """`1.23 (≤ 1.5)`, with `, over` appended when the target is missed; `-` for the reference."""
    if row["target_step_time_ratio"] is None or row["step_time_ratio"] is None:
        return "-"
    over = "" if row["meets_target"] else ", over"
    return f"{row['step_time_ratio']:.2f} (≤ {row['target_step_time_ratio']:g}{over})"


def write_atomic(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(text)
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory for gpu_models.json/.md")
    parser.add_argument("--models", nargs="+", default=None, help="registered model names (default: all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None, help="default 16 128 (tiny: 2 4)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20; tiny 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5; tiny 1)")
    parser.add_argument("--tiny", action="store_true", help="quick profile, 32-px images: a CPU smoke test")
    args = parser.parse_args(argv)
    args.models = args.models or available_models()
    args.batch_sizes = args.batch_sizes or ([2, 4] if args.tiny else [16, 128])
    args.steps = args.steps or (2 if args.tiny else 20)
    args.warmup = args.warmup or (1 if args.tiny else 5)
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "gpu_models.json", json.dumps(report, indent=2))
    table = markdown(report)
    write_atomic(args.out / "gpu_models.md", table)
    print(table)
    return report


if __name__ == "__main__":
    main()
