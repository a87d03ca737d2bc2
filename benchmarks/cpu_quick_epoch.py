"""CPU cost of one quick-profile training epoch per model, as a ratio to `latefusion` measured in the same run.

The no-argument `carebench run` trains every registered model in the quick profile on CPU, one
single-threaded run per core, so each model's epoch cost there is what this measures:

    python benchmarks/cpu_quick_epoch.py                                   # every registered model
    python benchmarks/cpu_quick_epoch.py --models latefusion umse --rounds 5 --out bench-results/cpu

One epoch = `training_step` on every batch of `carebench_models.testing.tiny_dataset` (512 stays,
batch 16, seeded shuffle; by default F 6, 32-px images, half the stays paired), after one untimed
warm-up epoch, with one torch thread. Models are measured in interleaved rounds and each keeps its
fastest round, so a load spike on a shared machine hits every model alike. Both wall-clock and
thread CPU seconds are reported; the CPU time is the steadier of the two on a busy machine.

Target: at most 1.5× the reference's epoch, plus 1× for every CNN backbone beyond the first
(2.5× for `drfuse` and `shaspec`, which hold two).

Writes `<out>/cpu_quick_epoch.json` and `.md` when `--out` is given, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from carebench_models import BatchDictDataset, TrainConfig, TrainState, available_models, create_model
from carebench_models.encoders import CXREncoder
from carebench_models.testing import task_spec, tiny_dataset

REFERENCE = "latefusion"
TARGET_RATIO = 1.5
"""Largest epoch-time ratio to the reference for a model with at most one CNN backbone."""


def target_ratio(backbones: int) -> float:
    """Largest allowed epoch-time ratio for a model holding `backbones` CNN backbones."""
    return TARGET_RATIO + max(0, backbones - 1)


def epoch_seconds(
    name: str, data: BatchDictDataset, overrides: dict[str, Any], batch_size: int
) -> dict[str, Any]:
    """Wall and thread-CPU seconds of one timed epoch (after a warm-up epoch), and the model's facts."""
    task = task_spec("binary")
    torch.manual_seed(0)
    model = create_model(name, task=task, profile="quick", **overrides)
    optimizers = model.configure_optimizers(TrainConfig.for_profile("quick"))
    state = TrainState(generator=torch.Generator().manual_seed(0))
    model.train()

    def one_epoch(epoch: int) -> None:
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(epoch)).tolist()
        for start in range(0, len(order), batch_size):
            model.training_step(data.__getitems__(order[start : start + batch_size]), optimizers, state)
            state.global_step += 1

    one_epoch(0)
    wall, cpu = time.perf_counter(), time.thread_time()
    one_epoch(1)
    return {
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.thread_time() - cpu,
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "cnn_backbones": sum(isinstance(module, CXREncoder) for module in model.modules()),
    }


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux), else the platform's processor string."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    overrides = {"ehr_features": args.ehr_features, "image_size": args.image_size}
    data = tiny_dataset(
        task_spec("binary"), args.rows, paired_fraction=args.paired_fraction, seed=0, **overrides
    )
    models = [REFERENCE] + [name for name in args.models if name != REFERENCE]
    best: dict[str, dict[str, Any]] = {}
    for _ in range(args.rounds):
        for name in models:
            result = epoch_seconds(name, data, overrides, args.batch_size)
            if name not in best:
                best[name] = result
            else:
                best[name]["wall_s"] = min(best[name]["wall_s"], result["wall_s"])
                best[name]["cpu_s"] = min(best[name]["cpu_s"], result["cpu_s"])
    reference = best[REFERENCE]
    rows = []
    for name in models:
        facts = best[name]
        cpu_ratio = facts["cpu_s"] / reference["cpu_s"]
        target = target_ratio(facts["cnn_backbones"])
        rows.append(
            {
                "model": name,
                **facts,
                "wall_ratio": facts["wall_s"] / reference["wall_s"],
                "cpu_ratio": cpu_ratio,
                "target_ratio": target,
                "meets_target": cpu_ratio <= target,
            }
        )
    return {
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "rows_per_epoch": args.rows,
        "batch_size": args.batch_size,
        "ehr_features": args.ehr_features,
        "image_size": args.image_size,
        "paired_fraction": args.paired_fraction,
        "rounds": args.rounds,
        "reference": REFERENCE,
        "rows": rows,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# One quick-profile training epoch on CPU ({report['machine']}), 1 thread ({report['rows_per_epoch']} stays, batch "
        f"{report['batch_size']}, F {report['ehr_features']}, {report['image_size']} px, "
        f"{report['paired_fraction']:.0%} paired; fastest of {report['rounds']} rounds; torch {report['torch']})",
        "",
        f"| model | params (k) | CNNs | wall s | × {REFERENCE} | CPU s | × {REFERENCE} (target) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        over = "" if row["meets_target"] else ", over"
        lines.append(
            f"| {row['model']} | {row['parameters'] / 1e3:.0f} | {row['cnn_backbones']} | {row['wall_s']:.2f} "
            f"| {row['wall_ratio']:.2f} | {row['cpu_s']:.2f} | {row['cpu_ratio']:.2f} (≤ {row['target_ratio']:g}{over}) |"
        )
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(text)
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, help="registered model names (default: all)")
    parser.add_argument("--rows", type=int, default=512, help="stays per epoch")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--ehr-features", type=int, default=6, help="F (tiny_dataset's default 6)")
    parser.add_argument("--image-size", type=int, default=32, help="image side (tiny_dataset's default 32)")
    parser.add_argument("--paired-fraction", type=float, default=0.5)
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds; each model keeps its fastest"
    )
    parser.add_argument("--out", type=Path, default=None, help="directory for cpu_quick_epoch.json/.md")
    args = parser.parse_args(argv)
    args.models = args.models or available_models()
    report = run(args)
    table = markdown(report)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_atomic(args.out / "cpu_quick_epoch.json", json.dumps(report, indent=2))
        write_atomic(args.out / "cpu_quick_epoch.md", table)
    print(table)
    return report


if __name__ == "__main__":
    main()
