"""``python -m carebench_eval {score,compare,fairness} PRED... -o OUT [--config FILE]`` (eval.md §8.5).

A standard-library command line so that carebench-eval stays usable without carebench-cli. Keyword
arguments of the called function come from a TOML file (``--config``), e.g. ``n_boot = 2000``, each
checked against the function's type hints. A `PredictionsError` (or another input error: a file that
cannot be read, a mistyped option) prints one line and exits 2; ``CAREBENCH_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_type_hints

from carebench_eval._typed_toml import ConfigValueError, check_value
from carebench_eval.errors import PredictionsError

DEBUG_ENV = "CAREBENCH_DEBUG"
"""Set to 1 to see the traceback of an input error instead of its one line."""

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
    """The keyword arguments of `--config`, each checked against the function's type hint."""
    if path is None:
        return {}
    try:
        options = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"--config {path}: not UTF-8 text ({error.reason})") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"--config {path}: not valid TOML ({error})") from None
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
    hints = get_type_hints(function)
    try:
        return {key: check_value(value, hints.get(key, Any), key=key) for key, value in options.items()}
    except ConfigValueError as error:
        raise ValueError(f"--config {path}: {error}") from None


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
    except (PredictionsError, ValueError, OSError) as error:
        if os.environ.get(DEBUG_ENV):
            raise
        if isinstance(error, OSError) and error.strerror:
            message = f"{error.strerror}: {error.filename}" if error.filename else error.strerror
        else:
            message = (str(error).strip().splitlines() or [type(error).__name__])[0]
        sys.stderr.write(f"error: {message}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
