"""`--shard I/N` at the command line: each shard runs its part, together they cover the grid once."""

from typer.testing import CliRunner

from carebench_cli.config import check_names, read_toml, resolve_config
from carebench_cli.grid import expand_grid, shard
from carebench_cli.main import app
from carebench_cli.pipeline import bundled_defaults
from carebench_cli.run_store import RunStatus, RunStore
from carebench_data.tasks import read_manifest

from .conftest import write_run_config


def test_two_shards_cover_the_grid(tiny_dataset, tmp_path):
    runs = tmp_path / "runs"
    config = write_run_config(
        tmp_path / "run.toml", tiny_dataset, runs, models=("lstm",), tasks=("mortality", "los")
    )
    resolved = check_names(
        resolve_config(file_values=read_toml(config)), known_models=["lstm"], known_tasks=["mortality", "los"]
    )
    grid = expand_grid(
        resolved, dataset_hash=read_manifest(tiny_dataset)["content_hash"], defaults=bundled_defaults
    )
    store = RunStore(runs)
    seen: set[str] = set()
    for index in range(2):
        result = CliRunner().invoke(
            app, ["run", "--config", str(config), "--shard", f"{index}/2"], catch_exceptions=False
        )
        assert result.exit_code == 0, result.output
        # A shard never writes the report: it tells the user to run `carebench report` at the end.
        assert "carebench report" in " ".join(result.output.split())
        expected = {spec.run_id for spec in shard(grid, index, 2)}
        now = {run_id for run_id in store.run_ids() if store.status(run_id) is RunStatus.DONE}
        assert now - seen == expected
        seen |= now
    assert seen == {spec.run_id for spec in grid}
    assert not (runs / "report").exists()


def test_parallel_jobs_split_the_grid_between_child_processes(tiny_dataset, tmp_path):
    runs = tmp_path / "runs"
    config = write_run_config(
        tmp_path / "run.toml", tiny_dataset, runs, models=("lstm",), tasks=("mortality", "los"), seeds=(1, 2)
    )
    result = CliRunner().invoke(app, ["run", "--config", str(config), "--jobs", "2", "--no-report"])
    assert result.exit_code == 0, result.output
    store = RunStore(runs)
    assert len(store.run_ids()) == 4
    assert all(store.status(run_id) is RunStatus.DONE for run_id in store.run_ids())
    logs = sorted(path.name for path in (runs / "logs").iterdir())
    assert logs == ["job-0.log", "job-1.log"]
    # Each child ran its own sub-shard: both logs announce a 2-run shard of the 4-run grid.
    for name in logs:
        text = " ".join((runs / "logs" / name).read_text().split())
        assert "4 runs in the grid, shard" in text and ": 2 runs; 0 finished, 2 to run" in text
