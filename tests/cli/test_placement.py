"""Where `--jobs N` puts its runs: GPUs round robin, an even memory share, the cores shared out."""

import pytest

from carebench_cli.errors import CliError
from carebench_cli.placement import (
    GPU_MEMORY_HEADROOM,
    JobSlot,
    loader_workers_for,
    memory_fraction,
    plan_jobs,
    select_gpus,
    visible_gpus,
)


def test_visible_gpus_follow_cuda_visible_devices():
    assert visible_gpus(None, 4) == ["0", "1", "2", "3"]
    # a child must be given the physical id (or UUID / MIG id) of its GPU, not torch's index
    assert visible_gpus("2,3", 2) == ["2", "3"]
    assert visible_gpus("GPU-aaa, GPU-bbb", 2) == ["GPU-aaa", "GPU-bbb"]
    # CUDA ignores entries after an invalid one: torch's count is the truth
    assert visible_gpus("4,5,bogus", 2) == ["4", "5"]
    assert visible_gpus("", 0) == []


def test_select_gpus():
    visible = ["4", "5", "6", "7"]
    assert select_gpus(None, visible) == [0, 1, 2, 3]
    assert select_gpus("all", visible) == [0, 1, 2, 3]
    assert select_gpus("2,0", visible) == [2, 0]
    for bad, message in [
        ("4", "no GPU 4; 4 visible"),
        ("1,1", "twice"),
        ("x", "must be 'all' or GPU indices"),
        (",", "names no GPU"),
    ]:
        with pytest.raises(CliError, match=message) as error:
            select_gpus(bad, visible)
        assert error.value.exit_code == 2
    with pytest.raises(CliError, match="no CUDA device is visible"):
        select_gpus(None, [])


def test_jobs_spread_round_robin_over_gpus_with_an_even_memory_share():
    slots = plan_jobs(6, gpus=["4", "5", "6", "7"], cpus=16)
    assert [slot.gpu for slot in slots] == ["4", "5", "6", "7", "4", "5"]
    # GPUs 4 and 5 carry two runs, 6 and 7 one
    assert [slot.runs_on_gpu for slot in slots] == [2, 2, 1, 1, 2, 2]
    assert memory_fraction(2) == pytest.approx(GPU_MEMORY_HEADROOM / 2)
    assert memory_fraction(1) == 1.0
    # 16 cores / 6 jobs = 2 each: one loader worker, one thread
    assert {(slot.threads, slot.loader_workers) for slot in slots} == {(1, 1)}
    assert slots[0].env() == {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "4"}
    assert slots[0].args() == ["--loader-workers", "1", "--runs-per-gpu", "2"]


def test_four_runs_per_gpu_on_a_16_core_node():
    slots = plan_jobs(4, gpus=["0"], cpus=16)
    assert all(
        slot == JobSlot(job=slot.job, gpu="0", runs_on_gpu=4, threads=1, loader_workers=3) for slot in slots
    )
    explicit = plan_jobs(4, gpus=["0"], cpus=16, loader_workers=0)
    assert {(slot.threads, slot.loader_workers) for slot in explicit} == {(4, 0)}


def test_cpu_jobs_share_the_cores_as_before():
    slots = plan_jobs(2, gpus=[], cpus=2)
    assert [slot.env() for slot in slots] == [{"OMP_NUM_THREADS": "1"}] * 2
    assert [slot.args() for slot in slots] == [["--loader-workers", "0"]] * 2
    assert [slot.threads for slot in plan_jobs(3, gpus=[], cpus=2)] == [1, 1, 1]
    assert [slot.threads for slot in plan_jobs(2, gpus=[], cpus=16)] == [8, 8]


def test_loader_workers_for():
    assert loader_workers_for("cpu", 16) == 0
    assert loader_workers_for("cuda", 16) == 4
    assert loader_workers_for("cuda:1", 3) == 2
    assert loader_workers_for("cuda", 1) == 1


def _spec(seed):
    from carebench_cli.grid import RunSpec

    return RunSpec(
        model="lstm",
        task="mortality",
        cohort="base",
        fold=0,
        seed=seed,
        train_cxr_drop=0.0,
        profile="paper",
        test_settings=("natural",),
        dataset_hash="h",
    )


def test_jobs_on_cuda_start_one_placed_child_per_slot(tmp_path, monkeypatch):
    """The CUDA wiring of `--jobs 4` over two GPUs, with a stand-in for the child processes."""
    import subprocess

    import torch

    from carebench_cli import run_cmd
    from carebench_cli.progress import GridProgress
    from carebench_cli.run_store import RunStore

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    gpu_entries, gpu_indices = run_cmd._gpu_plan("cuda", None)
    assert (gpu_entries, gpu_indices) == (["5", "7"], [0, 1])
    assert run_cmd._gpu_plan("cuda", "1") == (["7"], [1])
    with pytest.raises(CliError, match="--gpus needs CUDA"):
        run_cmd._gpu_plan("cpu", "0")

    started = []

    class FinishedChild:
        returncode = 0

        def __init__(self, command, **kwargs):
            started.append((command, kwargs["env"]))

        def poll(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", FinishedChild)
    todo = [_spec(seed) for seed in range(6)]
    slots = plan_jobs(4, gpus=gpu_entries, cpus=8)
    with GridProgress(len(todo)) as ui:
        left = run_cmd._run_jobs(
            todo,
            slots=slots,
            child_args=["--out", str(tmp_path)],
            shard_spec="1/3",
            store=RunStore(tmp_path),
            ui=ui,
        )
    assert left == todo  # the stand-ins trained nothing
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in started] == ["5", "7", "5", "7"]
    assert {env["OMP_NUM_THREADS"] for _, env in started} == {"1"}
    for job, (command, _) in enumerate(started):
        text = " ".join(command)
        # shard 1/3 splits into sub-shards 1 + 3 j of 12
        assert f"--shard {1 + 3 * job}/12 --jobs 1 --loader-workers 1 --runs-per-gpu 2 --no-report" in text
