"""`carebench run --executor slurm`: the job array submitit hands to `sbatch`, and the scale-out flags' errors.

A stand-in `sbatch` on PATH records the submission script and answers like SLURM, so the SLURM path
runs here up to the scheduler.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from carebench_cli.cluster import ShardCommand, parse_slurm_options, shard_argv, time_minutes
from carebench_cli.errors import CliError
from carebench_cli.main import app
from carebench_data.testing import write_tiny_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("executor") / "dataset", n_stays=40, image_size=16)


def _fake_slurm(bin_dir: Path, copies: Path) -> None:
    """`sbatch` that keeps each script it is given and answers with job id 4242; `srun` that exists."""
    bin_dir.mkdir()
    copies.mkdir()
    scripts = {
        "sbatch": f'#!/bin/sh\ncp "$1" "{copies}/$(date +%s%N).sh"\necho "Submitted batch job 4242"\n',
        "srun": "#!/bin/sh\nexit 0\n",
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_slurm_submits_the_grid_as_one_job_array(dataset, tmp_path, monkeypatch):
    copies = tmp_path / "submitted"
    _fake_slurm(tmp_path / "bin", copies)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    runs = tmp_path / "runs"
    args = [
        "run",
        "--dataset",
        str(dataset),
        "--models",
        "lstm,transformer",
        "--tasks",
        "mortality",
        "--out",
        str(runs),
        "--executor",
        "slurm",
        "--partition",
        "gpu",
        "--gpus-per-job",
        "2",
        "--jobs-per-gpu",
        "4",
        "--shards",
        "2",
        "--array-parallelism",
        "1",
        "--time",
        "1-01:30:00",
        "--slurm-option",
        "account=abc",
        "--slurm-option",
        "qos=high",
    ]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "2 runs in the grid, 0 finished; 2 shard(s), 2 with unfinished runs" in output
    assert "2 GPU(s) and 16 CPU(s) per job, 4 run(s) at once per GPU, time 1-01:30:00" in output
    assert "shard 0/2: job 4242_0 (1 run(s))" in output and "shard 1/2: job 4242_1 (1 run(s))" in output
    assert f"carebench report {runs.resolve()}" in output
    (script,) = sorted(copies.iterdir())
    lines = script.read_text().splitlines()
    for expected in (
        "#SBATCH --array=0-1%1",
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --cpus-per-task=16",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --time={25 * 60 + 30}",
        "#SBATCH --account=abc",
        "#SBATCH --qos=high",
        "#SBATCH --job-name=carebench-runs",
    ):
        assert expected in lines, (expected, lines)
    assert not any(line.startswith("#SBATCH --gres") for line in lines)


def test_shard_command():
    argv = shard_argv(["--config", "/abs/paper.toml", "--out", "/abs/runs"], index=3, count=8, jobs_per_gpu=4)
    assert argv == [
        "run",
        "--config",
        "/abs/paper.toml",
        "--out",
        "/abs/runs",
        "--shard",
        "3/8",
        "--jobs-per-gpu",
        "4",
        "--no-report",
    ]
    # a timed-out or preempted job is requeued with the same shard
    command = ShardCommand(argv)
    requeued = command.checkpoint()
    assert requeued.function is command
    with pytest.raises(RuntimeError, match="exited with code 2"):
        ShardCommand(["run", "--shard", "nonsense"])()


def test_time_and_slurm_options():
    assert time_minutes("00:00:01") == 1
    assert time_minutes("24:00:00") == 1440
    assert time_minutes("2-00:30:00") == 2 * 1440 + 30
    for bad in ("25", "1:2:3", "00:00:00", "10:61:00"):
        with pytest.raises(CliError, match="--time"):
            time_minutes(bad)
    assert parse_slurm_options(["account=abc", "--constraint=h100", "mem=64G"]) == {
        "account": "abc",
        "constraint": "h100",
        "mem": "64G",
    }
    with pytest.raises(CliError, match="KEY=VALUE"):
        parse_slurm_options(["account"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--partition", "gpu"], "--partition need(s) --executor slurm or local"),
        (["--time", "01:00:00", "--wait"], "--time, --wait need(s) --executor"),
        (["--executor", "slurm", "--jobs", "2"], "leave out --shard and --jobs"),
        (["--executor", "slurm", "--shard", "0/2"], "leave out --shard and --jobs"),
        (["--executor", "pbs"], "unknown executor 'pbs'; valid executors: slurm, local"),
        (["--executor", "slurm", "--time", "90"], "--time must look like HH:MM:SS"),
        (["--executor", "slurm", "--slurm-option", "account"], "--slurm-option must look like KEY=VALUE"),
        (["--jobs", "2", "--jobs-per-gpu", "2"], "give --jobs or --jobs-per-gpu, not both"),
        (["--device", "cpu", "--gpus", "0"], "--gpus needs CUDA"),
    ],
)
def test_scale_out_flags_fail_in_one_line(dataset, tmp_path, args, message):
    result = CliRunner().invoke(
        app, ["run", "--dataset", str(dataset), "--models", "lstm", "--out", str(tmp_path / "runs"), *args]
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert message in " ".join(lines[0].split())
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").glob("lstm-*"))
