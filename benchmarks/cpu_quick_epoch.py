"""CPU cost of one quick-profile training epoch per model, as a ratio to `latefusion` in the same run.

The default `carebench run` trains every registered model in the quick profile on CPU, one
single-threaded run per core, so each model's quick profile must stay cheap. For each model this
times `on_epoch_start` + `training_step` over every batch + `on_epoch_end` on the synthetic
`tiny_dataset` (512 stays, half with a CXR, batch 16, binary task), single-threaded, after one
untimed warm-up epoch, and reports the fastest of `--rounds` epochs. Time is the thread's CPU time
(`time.thread_time`), so a busy machine slows the run down without changing the numbers much; data
loading and validation are not included. Models are interleaved round by round.

    python benchmarks/cpu_quick_epoch.py --out bench-results/cpu_quick_epoch
    python benchmarks/cpu_quick_epoch.py --models smil --task-defaults los full --out /tmp/q   # bundled values

Writes `<out>/cpu_quick_epoch.json` and `<out>/cpu_quick_epoch.md` and prints the table.
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

from carebench_models import TrainConfig, TrainState, available_models, task_defaults
from carebench_models.testing import task_spec, tiny_dataset, tiny_model
from carebench_models.training.trainer import _chunks

REFERENCE = "latefusion"


def epoch_batches(rows: int, image_size: int, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """The epoch's batches, collated once (a fixed shuffle; a trailing single row joins the last batch)."""
    data = tiny_dataset(task_spec("binary"), rows, image_size=image_size)
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(0)).tolist()
    return [data.collate(data.__getitems__(indices)) for indices in _chunks(order, batch_size)]


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    task = task_spec("binary")
    batches = epoch_batches(args.rows, args.image_size, args.batch_size)
    overrides: dict[str, Any] = {}
    names = [REFERENCE, *[name for name in args.models if name != REFERENCE]]
    trained = {}
    for name in names:
        if args.task_defaults:
            overrides = task_defaults(name, *args.task_defaults).config
        model = tiny_model(name, task, image_size=args.image_size, **overrides)
        model.prepare(batches)
        trained[name] = (model, model.configure_optimizers(TrainConfig.for_profile("quick")), overrides)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for epoch in range(args.rounds + 1):
        for name, (model, optimizers, _) in trained.items():
            state = TrainState(epoch=epoch, max_epochs=args.rounds + 1)
            model.train()
            started = time.thread_time()
            model.on_epoch_start(state)
            for batch in batches:
                model.training_step(batch, optimizers, state)
            model.on_epoch_end(state, optimizers)
            if epoch > 0:  # epoch 0 warms up
                seconds[name].append(time.thread_time() - started)
    reference = min(seconds[REFERENCE])
    return {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "rows": args.rows,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "task_defaults": list(args.task_defaults or []),
        "results": [
            {
                "model": name,
                "overrides": trained[name][2],
                "seconds": min(values),
                "ratio_to_reference": min(values) / reference,
            }
            for name, values in seconds.items()
        ],
    }


def markdown(report: dict[str, Any]) -> str:
    defaults = " ".join(report["task_defaults"]) or "none"
    lines = [
        f"# Quick-profile training epoch on CPU ({report['machine']}, torch {report['torch']}, 1 thread, "
        f"{report['rows']} stays, {report['image_size']} px, batch {report['batch_size']}, "
        f"bundled task defaults: {defaults})",
        "",
        f"| model | CPU s / epoch (min of {report['rounds']}) | × {REFERENCE} | overrides |",
        "|---|---|---|---|",
    ]
    for row in report["results"]:
        overrides = ", ".join(f"{key} {value}" for key, value in row["overrides"].items()) or "-"
        lines.append(
            f"| {row['model']} | {row['seconds']:.3f} | {row['ratio_to_reference']:.2f} | {overrides} |"
        )
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(text)
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, required=True, help="output directory for cpu_quick_epoch.json/.md"
    )
    parser.add_argument("--models", nargs="+", default=None, help="registered model names (default: all)")
    parser.add_argument("--rows", type=int, default=512, help="stays in the epoch (default 512)")
    parser.add_argument(
        "--image-size", type=int, default=64, help="image side (default 64, the quick profile's)"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="training batch size (default 16)")
    parser.add_argument("--rounds", type=int, default=3, help="timed epochs per model (default 3)")
    parser.add_argument(
        "--task-defaults",
        nargs=2,
        metavar=("TASK", "COHORT"),
        default=None,
        help="apply the bundled model hyperparameters of (TASK, COHORT), e.g. `los full`, as `carebench run` "
        "does; the epoch still trains the tiny binary task",
    )
    args = parser.parse_args(argv)
    args.models = args.models or available_models()
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "cpu_quick_epoch.json", json.dumps(report, indent=2))
    table = markdown(report)
    write_atomic(args.out / "cpu_quick_epoch.md", table)
    print(table)
    return report


if __name__ == "__main__":
    main()
