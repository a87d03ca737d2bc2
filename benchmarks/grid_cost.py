"""What the paper grid costs on one GPU: seconds per epoch and per evaluation of every model, alone and N at a time.

The paper grid is 17 models × 3 tasks × 2 cohorts × 5 folds × 3 seeds = 1,530 runs at batch 16 (paper
profile: ResNet-50 at 224 px, the paper's hyperparameters). For every registered model and both
cohorts this script trains on a MIMIC-sized synthetic dataset (27,200 stays, about 19,000 of them in
fold 0's training split, 25 % with a CXR, 256-px images cropped to 224) through the real data path
(`CarebenchDataset` with uint8 images finished on the device, loader workers with pinned memory, the
plain-PyTorch `Trainer`), and measures:

- seconds per training step and per evaluation batch, from the second of two short epochs (`--steps`
  training batches, `--eval-batches` validation batches), run alone and `--concurrency` N at a time
  on the same GPU (N processes placed as `carebench run --jobs N` places them: an even memory share,
  the cores shared out);
- the loader's samples/s alone (batches to the device, images finished there) against the model's
  samples/s on a ready device batch, and the end-to-end training samples/s.

It extrapolates one run (full epochs of the cohort's training split, one validation pass per epoch,
then one validation and `--test-settings` test passes) and the grid's GPU-hours, and prints the ratio
to upstream's estimate (about 500 GPU-hours on an H200 at its own settings: Lightning, fp32, batch 16;
that figure is the issue's, not measured here). Epochs per run are an assumption (`--epochs-per-run`,
default 20: the paper protocol stops 11 epochs after the best one, at most 50); the grid is also
shown at 11 and 50 epochs. Every task is costed as mortality (the heads differ by a linear layer).

    python benchmarks/grid_cost.py --out bench-results/grid_cost                 # on a CUDA machine
    python benchmarks/grid_cost.py --tiny --device cpu --models lstm --cohorts base --out /tmp/g   # smoke

On CPU the numbers are CPU process-hours of a toy setting, not GPU-hours, and the script says so.
Writes `<out>/grid_cost.json` and `<out>/grid_cost.md` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

PAPER_GRID = {"tasks": 3, "folds": 5, "seeds": 3}
COHORTS = ("base", "matched")
UPSTREAM_GPU_HOURS = 500.0
"""Upstream's cost of the paper grid on an H200 at its own settings, as stated in the issue (not measured here)."""
TARGET_GPU_HOURS = 50.0
BATCH_SIZE = 16
EPOCH_CHOICES = (11, 20, 50)
"""Epochs per run shown besides the assumption: the earliest stop (best epoch first, patience 10), the
default assumption, the maximum."""
MIMIC_STAYS = 27_200
"""Stays of the MIMIC-sized synthetic dataset: about 19,000 land in fold 0's training split."""
READY_TIMEOUT_S = 1800


def build_dataset(root: Path, *, tiny: bool) -> Path:
    """The synthetic dataset (written once under `root`, then reused)."""
    from carebench_data.testing import write_tiny_dataset

    path = root / ("dataset-tiny" if tiny else "dataset-mimic-sized")
    if (path / "manifest.json").is_file():
        return path
    if tiny:
        return write_tiny_dataset(path, n_stays=400, paired_fraction=0.25, image_size=64, seed=0)
    return write_tiny_dataset(path, n_stays=MIMIC_STAYS, paired_fraction=0.25, image_size=256, seed=0)


class Rows:
    """The rows `rows` of a dataset, as a dataset the trainer accepts (batched fetches, `has_cxr`, `finish_batch`)."""

    def __init__(self, dataset: Any, rows: np.ndarray) -> None:
        self.dataset, self.rows = dataset, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.rows.size)

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return self.dataset.__getitems__(self.rows[np.asarray(indices, dtype=np.int64)].tolist())

    @property
    def has_cxr(self) -> np.ndarray:
        return np.asarray(self.dataset.has_cxr)[self.rows]

    def collate(self, batch: Any) -> Any:
        return self.dataset.collate(batch)

    def finish_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        return self.dataset.finish_batch(batch)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sample(size: int, count: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(size, size=min(size, count), replace=False))


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement process: build, wait for the others, train two short epochs, time loader and model."""
    from torch.utils.data import DataLoader

    from carebench_cli.pipeline import profile_augmentation
    from carebench_cli.placement import memory_fraction
    from carebench_data.tasks import task_specs
    from carebench_data.torch import CarebenchDataset
    from carebench_models import TaskSpec, TrainConfig, Trainer, TrainState, create_model

    device = torch.device(spec["device"])
    if device.type == "cuda" and spec["runs_on_gpu"] > 1:
        torch.cuda.set_per_process_memory_fraction(memory_fraction(spec["runs_on_gpu"]), device)
    dataset_dir = Path(spec["dataset"])
    info = task_specs(dataset_dir)["mortality"]
    task = TaskSpec.from_info(info)
    features = len(json.loads((dataset_dir / "features.json").read_text())["features"])
    torch.manual_seed(0)
    # Random CNN weights: the cost does not depend on them, and no weights file is needed.
    model = create_model(
        spec["model"], task=task, profile=spec["profile"], ehr_features=features, cxr_weights="none"
    )
    on_device = device.type == "cuda"
    common = {
        "task": info,
        "cohort": spec["cohort"],
        "fold": 0,
        "image_size": int(model.config.image_size),
        "seed": 42,
        "images_on_device": on_device,
    }
    train = CarebenchDataset(
        dataset_dir, split="train", augment=profile_augmentation(spec["profile"]), **common
    )
    val = CarebenchDataset(dataset_dir, split="val", **common)
    train_rows = Rows(train, _sample(len(train), spec["steps"] * BATCH_SIZE, 1))
    val_rows = Rows(val, _sample(len(val), spec["eval_batches"] * BATCH_SIZE, 2))
    config = TrainConfig.for_profile(
        spec["profile"],
        max_epochs=2,
        min_epochs=2,
        patience=10,
        batch_size=BATCH_SIZE,
        eval_batch_size=BATCH_SIZE,
        device=str(device),
        num_workers=spec["loader_workers"],
        seed=42,
    )
    trainer = Trainer(model, config)
    Path(spec["ready"]).touch()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not Path(spec["go"]).exists():
        if time.monotonic() > deadline:
            raise TimeoutError("no start signal")
        time.sleep(0.02)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    fit = trainer.fit(train_rows, val_rows)
    last = fit.epochs[-1]
    steps = math.ceil(len(train_rows) / BATCH_SIZE)
    eval_batches = math.ceil(len(val_rows) / BATCH_SIZE)

    # The loader alone: batches to the device, images finished there (what the model waits for).
    loader = DataLoader(
        train_rows,
        batch_size=BATCH_SIZE,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
        num_workers=spec["loader_workers"],
        pin_memory=on_device,
        collate_fn=train_rows.collate,
    )
    started, samples = time.perf_counter(), 0
    ready_batch: dict[str, Any] | None = None
    for batch in loader:
        moved = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        finished = train_rows.finish_batch(moved)
        samples += int(finished["has_cxr"].shape[0])
        ready_batch = ready_batch or finished
    synchronize(device)
    loader_samples_per_s = samples / (time.perf_counter() - started)

    # The model alone: training steps on one ready device batch.
    assert ready_batch is not None
    model.train()
    optimizers = model.configure_optimizers(config)
    state = TrainState(device=device, amp_dtype=trainer.amp_dtype)

    def autocast() -> torch.autocast:  # as the trainer: bf16 on CUDA, fp32 on CPU
        dtype = trainer.amp_dtype or torch.bfloat16
        return torch.autocast(device_type=device.type, dtype=dtype, enabled=trainer.amp_dtype is not None)

    for _ in range(2):
        with autocast():
            model.training_step(ready_batch, optimizers, state)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        with autocast():
            model.training_step(ready_batch, optimizers, state)
    synchronize(device)
    model_samples_per_s = steps * int(ready_batch["has_cxr"].shape[0]) / (time.perf_counter() - started)

    return {
        "seconds_per_step": last["train_seconds"] / steps,
        "seconds_per_eval_batch": (last["seconds"] - last["train_seconds"]) / eval_batches,
        "train_samples_per_s": last["train_samples"] / last["train_seconds"],
        "loader_samples_per_s": loader_samples_per_s,
        "model_samples_per_s": model_samples_per_s,
        "paired_fraction": float(train_rows.has_cxr.mean()),
        "peak_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "loader_workers": spec["loader_workers"],
    }


def measure(spec: dict[str, Any], *, count: int, scratch: Path) -> list[dict[str, Any]]:
    """Run `count` worker processes of `spec` at once on one device, started together; their results."""
    from carebench_cli.placement import available_cpus, plan_jobs

    scratch.mkdir(parents=True, exist_ok=True)
    for stale in scratch.glob("*"):
        stale.unlink()
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    slots = plan_jobs(count, gpus=[gpu] if spec["device"] == "cuda" else [], cpus=available_cpus())
    go = scratch / "go"
    processes = []
    for slot in slots:
        worker_spec = {
            **spec,
            "runs_on_gpu": slot.runs_on_gpu,
            "loader_workers": slot.loader_workers,
            "ready": str(scratch / f"ready-{slot.job}"),
            "go": str(go),
        }
        (scratch / f"spec-{slot.job}.json").write_text(json.dumps(worker_spec))
        env = {**os.environ, **slot.env()}
        command = [
            sys.executable,
            __file__,
            "--worker",
            str(scratch / f"spec-{slot.job}.json"),
            "--worker-out",
            str(scratch / f"result-{slot.job}.json"),
        ]
        processes.append(subprocess.Popen(command, env=env))
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not all((scratch / f"ready-{slot.job}").exists() for slot in slots):
        if any(process.poll() not in (None, 0) for process in processes) or time.monotonic() > deadline:
            for process in processes:
                process.kill()
            raise RuntimeError(f"a worker of {spec['model']} / {spec['cohort']} failed before starting")
        time.sleep(0.05)
    go.touch()
    codes = [process.wait() for process in processes]
    if any(codes):
        raise RuntimeError(f"workers of {spec['model']} / {spec['cohort']} exited with {codes}")
    return [json.loads((scratch / f"result-{slot.job}.json").read_text()) for slot in slots]


def split_sizes(dataset: Path, cohort: str) -> dict[str, int]:
    """Stays of fold 0's splits in a cohort."""
    from carebench_data.torch import CarebenchDataset

    return {
        split: len(CarebenchDataset(dataset, task="mortality", cohort=cohort, split=split))
        for split in ("train", "val", "test")
    }


def run_seconds(result: dict[str, Any], sizes: dict[str, int], *, epochs: int, test_settings: int) -> float:
    """One run's wall time: `epochs` × (full training epoch + validation), then validation and test predictions."""
    steps = math.ceil(sizes["train"] / BATCH_SIZE)
    val_batches = math.ceil(sizes["val"] / BATCH_SIZE)
    test_batches = math.ceil(sizes["test"] / BATCH_SIZE)
    epoch = steps * result["seconds_per_step"] + val_batches * result["seconds_per_eval_batch"]
    predict = (val_batches + test_settings * test_batches) * result["seconds_per_eval_batch"]
    return epochs * epoch + predict


def _mean(results: list[dict[str, Any]], key: str) -> float:
    return float(np.mean([result[key] for result in results]))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from carebench_models import available_models

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    profile = "quick" if args.tiny else "paper"
    dataset = Path(args.dataset) if args.dataset else build_dataset(out, tiny=args.tiny)
    models = args.models or available_models()
    sizes = {cohort: split_sizes(dataset, cohort) for cohort in args.cohorts}
    rows = []
    for model in models:
        for cohort in args.cohorts:
            spec = {
                "device": device,
                "model": model,
                "cohort": cohort,
                "profile": profile,
                "dataset": str(dataset),
                "steps": args.steps,
                "eval_batches": args.eval_batches,
            }
            alone = measure(spec, count=1, scratch=out / "scratch")
            together = measure(spec, count=args.concurrency, scratch=out / "scratch")
            row = {"model": model, "cohort": cohort, "alone": alone[0], "together": together}
            for epochs in sorted({*EPOCH_CHOICES, args.epochs_per_run}):
                alone_run = run_seconds(
                    alone[0], sizes[cohort], epochs=epochs, test_settings=args.test_settings
                )
                together_run = float(
                    np.mean(
                        [
                            run_seconds(
                                result, sizes[cohort], epochs=epochs, test_settings=args.test_settings
                            )
                            for result in together
                        ]
                    )
                )
                row[f"run_seconds_alone@{epochs}"] = alone_run
                # N runs share the device: each occupies it for its wall time / N
                row[f"device_seconds_together@{epochs}"] = together_run / args.concurrency
            rows.append(row)
            print(
                f"{model:12s} {cohort:8s} step {alone[0]['seconds_per_step'] * 1e3:7.1f} ms alone, "
                f"{_mean(together, 'seconds_per_step') * 1e3:7.1f} ms with {args.concurrency} at once",
                flush=True,
            )
    runs_per_cell = PAPER_GRID["tasks"] * PAPER_GRID["folds"] * PAPER_GRID["seeds"]
    grid = {}
    for epochs in sorted({*EPOCH_CHOICES, args.epochs_per_run}):
        alone_hours = sum(row[f"run_seconds_alone@{epochs}"] for row in rows) * runs_per_cell / 3600
        together_hours = sum(row[f"device_seconds_together@{epochs}"] for row in rows) * runs_per_cell / 3600
        grid[epochs] = {"alone": alone_hours, "together": together_hours}
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
    return {
        "device": device,
        "device_name": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "profile": profile,
        "dataset": str(dataset),
        "split_sizes": sizes,
        "models": models,
        "cohorts": list(args.cohorts),
        "concurrency": args.concurrency,
        "steps": args.steps,
        "eval_batches": args.eval_batches,
        "test_settings": args.test_settings,
        "epochs_per_run": args.epochs_per_run,
        "runs": len(models) * len(args.cohorts) * runs_per_cell,
        "rows": rows,
        "grid_hours": {str(epochs): value for epochs, value in grid.items()},
        "upstream_gpu_hours": UPSTREAM_GPU_HOURS,
        "target_gpu_hours": TARGET_GPU_HOURS,
    }


def render(report: dict[str, Any]) -> str:
    n = report["concurrency"]
    epochs = report["epochs_per_run"]
    cpu = report["device"] == "cpu"
    unit = "CPU process-hours" if cpu else "GPU-hours"
    lines = [
        f"# Paper grid cost ({report['device_name']}, torch {report['torch']}, {report['profile']} profile, "
        f"batch {BATCH_SIZE})",
        "",
    ]
    if cpu:
        lines += [
            "**CPU run: these numbers are CPU process-hours of a toy setting, NOT GPU-hours. The grid's GPU "
            "cost needs this script on a CUDA machine.**",
            "",
        ]
    lines += [
        f"Dataset {report['dataset']}: fold 0 splits per cohort {report['split_sizes']}. Per model and cohort: "
        f"{report['steps']} training and {report['eval_batches']} evaluation batches per epoch, second of "
        f"two epochs timed, alone and {n} at once on one device. A run: {epochs} epochs (assumed), one "
        f"validation pass per epoch, then validation and {report['test_settings']} test-setting predictions.",
        "",
        f"| model | cohort | ms/step alone | ms/step ×{n} | s/epoch alone | s/eval alone | loader samples/s "
        f"| model samples/s | train samples/s alone | train samples/s ×{n} (each) | {unit} alone | {unit} ×{n} |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    per_cell = PAPER_GRID["tasks"] * PAPER_GRID["folds"] * PAPER_GRID["seeds"]
    for row in report["rows"]:
        alone, together = row["alone"], row["together"]
        sizes = report["split_sizes"][row["cohort"]]
        epoch_s = math.ceil(sizes["train"] / BATCH_SIZE) * alone["seconds_per_step"]
        eval_s = math.ceil(sizes["val"] / BATCH_SIZE) * alone["seconds_per_eval_batch"]
        lines.append(
            f"| {row['model']} | {row['cohort']} | {alone['seconds_per_step'] * 1e3:.1f} "
            f"| {_mean(together, 'seconds_per_step') * 1e3:.1f} | {epoch_s:.1f} | {eval_s:.1f} "
            f"| {alone['loader_samples_per_s']:.0f} | {alone['model_samples_per_s']:.0f} "
            f"| {alone['train_samples_per_s']:.0f} | {_mean(together, 'train_samples_per_s'):.0f} "
            f"| {row[f'run_seconds_alone@{epochs}'] * per_cell / 3600:.2f} "
            f"| {row[f'device_seconds_together@{epochs}'] * per_cell / 3600:.2f} |"
        )
    grid = report["grid_hours"]
    main = grid[str(epochs)]
    lines += [
        "",
        f"Grid: {report['runs']} runs ({len(report['models'])} models × {PAPER_GRID['tasks']} tasks × "
        f"{len(report['cohorts'])} cohort(s) × {PAPER_GRID['folds']} folds × {PAPER_GRID['seeds']} seeds), "
        f"{epochs} epochs per run (assumed): **{main['alone']:.1f} {unit} one run at a time, "
        f"{main['together']:.1f} {unit} with {n} runs per device**.",
        "",
        "Epochs per run | " + " | ".join(f"{e}" for e in sorted(map(int, grid))),
        "---|" + "---|" * len(grid),
        f"{unit}, alone | " + " | ".join(f"{grid[str(e)]['alone']:.1f}" for e in sorted(map(int, grid))),
        f"{unit}, ×{n} | " + " | ".join(f"{grid[str(e)]['together']:.1f}" for e in sorted(map(int, grid))),
        "",
    ]
    if cpu:
        lines.append(
            "No ratio to upstream's GPU-hours: a CPU run of the tiny setting says nothing about GPU cost."
        )
    else:
        lines.append(
            f"Upstream's estimate: about {report['upstream_gpu_hours']:.0f} GPU-hours (H200, its own settings; "
            f"not measured here). Ratio upstream / carebench at {epochs} epochs: "
            f"{report['upstream_gpu_hours'] / main['together']:.1f}× ({n} per GPU), "
            f"{report['upstream_gpu_hours'] / main['alone']:.1f}× (one at a time). Target: the grid in "
            f"≤ {report['target_gpu_hours']:.0f} GPU-hours: "
            f"{'met' if main['together'] <= report['target_gpu_hours'] else 'not met'}."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument(
        "--tiny", action="store_true", help="quick profile, 64-px 400-stay dataset (smoke test)"
    )
    parser.add_argument("--models", type=lambda text: text.split(","), default=None)
    parser.add_argument("--cohorts", type=lambda text: tuple(text.split(",")), default=COHORTS)
    parser.add_argument("--concurrency", type=int, default=4, help="runs at once on the device")
    parser.add_argument("--steps", type=int, default=200, help="training batches per timed epoch")
    parser.add_argument("--eval-batches", type=int, default=60, help="validation batches per timed epoch")
    parser.add_argument("--epochs-per-run", type=int, default=20, help="assumed epochs of a run")
    parser.add_argument("--test-settings", type=int, default=7, help="test settings each run predicts")
    parser.add_argument("--dataset", default=None, help="reuse a benchmark dataset directory")
    parser.add_argument("--out", default="bench-results/grid_cost")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = worker(json.loads(Path(args.worker).read_text()))
        Path(args.worker_out).write_text(json.dumps(result))
        return
    if args.tiny and args.steps == parser.get_default("steps"):
        args.steps, args.eval_batches = 4, 2
    for cohort in args.cohorts:
        if cohort not in COHORTS:
            raise SystemExit(f"--cohorts: unknown cohort {cohort!r}; valid: {', '.join(COHORTS)}")
    report = run(args)
    out = Path(args.out)
    (out / "grid_cost.json").write_text(json.dumps(report, indent=2))
    text = render(report)
    (out / "grid_cost.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
