"""Seeded fits reproduce bit for bit across processes, whatever the process drew before (models.md §9.9).

`seed_everything(seed)` before `create_model` and `Trainer.fit` is the whole contract: torch's
generator starts unseeded in every process, so anything a model draws from another source, or any
weight built before the seed, shows up as a difference between two processes.
"""

from __future__ import annotations

import json
import subprocess
import sys

from carebench_models.registry import available_models

FIT_SCRIPT = """
import hashlib, json, sys
import torch
from carebench_models.testing import TINY_OVERRIDES, task_spec, tiny_dataset
from carebench_models.registry import available_models, create_model
from carebench_models.training import TrainConfig, Trainer, seed_everything

torch.set_num_threads(1)
torch.rand(int(sys.argv[1]))  # a different call history in each process
task = task_spec("binary")
train, val = tiny_dataset(task, 32, seed=1), tiny_dataset(task, 16, seed=2)
digests = {}
for name in available_models():
    seed_everything(5)
    model = create_model(name, task=task, profile="quick", **TINY_OVERRIDES)
    trainer = Trainer(model, TrainConfig.for_profile("quick", max_epochs=1, batch_size=8, seed=5, device="cpu"))
    trainer.fit(train, val)
    weights = b"".join(value.detach().numpy().tobytes() for value in model.state_dict().values())
    proba = trainer.predict(val).proba.tobytes()
    digests[name] = [hashlib.sha256(weights).hexdigest(), hashlib.sha256(proba).hexdigest()]
print(json.dumps(digests))
"""


def fit_digests(prior_draws: int) -> dict[str, list[str]]:
    """SHA-256 of the fitted weights and of the predictions of every model, from a fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", FIT_SCRIPT, str(prior_draws)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_two_seeded_fits_in_separate_processes_are_identical() -> None:
    first, second = fit_digests(1), fit_digests(7)
    assert sorted(first) == sorted(available_models())
    differing = sorted(name for name in first if first[name] != second[name])
    assert not differing, f"seeded fits differ between two processes: {differing}"
