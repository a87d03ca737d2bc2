"""``python -m carebench_eval {score,compare,fairness} PRED... -o OUT [--config FILE]`` (eval.md §8.5).

A standard-library command line so that carebench-eval stays usable without carebench-cli. Keyword
arguments of the called function come from a TOML file (``--config``), e.g. ``n_boot = 2000``. A
`PredictionsError` (or another input error) prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from carebench_eval.errors import PredictionsError

COMMANDS = {
    "score": ("carebench_eval.api", "score"),
    "compare": ("carebench_eval.compare", "compare"),
    "fairness": ("carebench_eval.fairness", "fairness"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m carebench_eval",
        description="Score predictions: metrics with clustered bootstrap CIs, paired comparisons, fairness.",
    )
    parser.add_argument("command", choices=sorted(COMMANDS), help="what to compute")
    parser.add_argument(
        "predictions",
        nargs="+",
        help="prediction files or globs; compare takes two (model A, model B) or one with --models A B",
    )
    parser.add_argument("-o", "--out", required=True, type=Path, help="result file: .parquet, .csv or .json")
    parser.add_argument("--config", type=Path, help="TOML file of keyword arguments for the function")
    parser.add_argument(
        "--models", nargs=2, metavar=("A", "B"), help="compare: two models of one predictions file"
    )
    return parser


def _config(path: Path | None, function: Any, name: str) -> dict[str, Any]:
    if path is None:
        return {}
    options = tomllib.loads(path.read_text(encoding="utf-8"))
    allowed = [
        parameter.name
        for parameter in inspect.signature(function).parameters.values()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"--config {path}: unknown option(s) {unknown} for {name}; allowed: {', '.join(allowed)}"
        )
    return options


def _run(arguments: argparse.Namespace) -> Path:
    import carebench_eval as ce
    from carebench_eval.io import frame_info

    module_name, function_name = COMMANDS[arguments.command]
    function = getattr(importlib.import_module(module_name), function_name)
    options = _config(arguments.config, function, arguments.command)
    if arguments.command == "compare":
        if arguments.models:
            preds = ce.read_predictions(arguments.predictions)
            results = function((preds, arguments.models[0]), (preds, arguments.models[1]), **options)
            inputs = frame_info(preds).get("inputs", [])
        elif len(arguments.predictions) == 2:
            first, second = (ce.read_predictions(path) for path in arguments.predictions)
            results = function(first, second, **options)
            inputs = frame_info(first).get("inputs", []) + frame_info(second).get("inputs", [])
        else:
            raise ValueError("compare takes two prediction files, or one with --models A B")
    else:
        preds = ce.read_predictions(arguments.predictions)
        results = function(preds, **options)
        inputs = frame_info(preds).get("inputs", [])
    provenance = {"function": arguments.command, "arguments": options, "inputs": inputs}
    return ce.write_results(results, arguments.out, provenance=provenance)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input)."""
    arguments = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        _run(arguments)
    except (PredictionsError, ValueError, FileNotFoundError, tomllib.TOMLDecodeError) as error:
        sys.stderr.write(f"error: {str(error).splitlines()[0]}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
