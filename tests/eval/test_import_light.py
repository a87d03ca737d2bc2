"""`import carebench_eval` stays light: no torch, pandas, scikit-learn, scipy, fairlearn or statsmodels."""

from __future__ import annotations

import json
import subprocess
import sys


def test_import_does_not_pull_heavy_modules() -> None:
    code = (
        "import json, sys\n"
        "import carebench_eval as ce\n"
        "ce.score\n"
        "heavy = ['torch', 'pandas', 'fairlearn', 'statsmodels', 'sklearn', 'scipy', 'carebench_data', 'carebench_models']\n"
        "print(json.dumps([name for name in heavy if name in sys.modules]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
