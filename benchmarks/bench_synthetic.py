"""Synthetic generator speed and memory (spec/data.md §13.1, §13.8 A18).

Usage:
    python benchmarks/bench_synthetic.py                      # demo scale (2,000 stays, 256 px)
    python benchmarks/bench_synthetic.py --scale perf10       # ~7,300 stays, ~30 M chartevents rows (minutes)
    python benchmarks/bench_synthetic.py --scale tiny --repeats 3 --json out.json

Each repeat generates the tree in a child process (so its peak RSS is measured alone), then
measures the baseline on the same machine right after: gzip level 1 of the tree's own uncompressed
table bytes, i.e. the unavoidable cost of writing those compressed tables. The report gives the
best generation time, the best baseline time, their ratio, rows/s of chartevents and the child's
peak RSS. The perf10 targets are ≤ 5 min and ≤ 4 GB peak RSS with 30 M ± 10 % chartevents rows;
the demo target is ≤ 10 s on the 2-core CI machine. Not run in CI.
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

_CHILD = """
import sys
from pathlib import Path
from carebench_data.synthetic import SyntheticConfig, generate_synthetic
generate_synthetic(Path(sys.argv[1]), SyntheticConfig.preset(sys.argv[2], seed=0))
"""


def _compress_baseline(tree: Path) -> tuple[float, int]:
    """Seconds to gzip (level 1) every table's uncompressed bytes once, and the byte count."""
    tables = sorted(tree.rglob("*.csv.gz"))
    total_seconds, total_bytes = 0.0, 0
    for path in tables:
        raw = gzip.decompress(path.read_bytes())
        started = time.perf_counter()
        compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
        compressor.compress(raw)
        compressor.flush()
        total_seconds += time.perf_counter() - started
        total_bytes += len(raw)
    return total_seconds, total_bytes


def run(scale: str, repeats: int) -> dict[str, float | int | str]:
    """Best-of-`repeats` generation and baseline times, their ratio, and peak RSS of the generator."""
    best_generate, best_baseline, peak_rss_mib = float("inf"), float("inf"), 0.0
    rows, raw_bytes = 0, 0
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="bench-synth-") as tmp:
            out = Path(tmp) / "raw"
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", _CHILD, str(out), scale], check=True)
            best_generate = min(best_generate, time.perf_counter() - started)
            peak_rss_mib = max(peak_rss_mib, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
            baseline, raw_bytes = _compress_baseline(out)
            best_baseline = min(best_baseline, baseline)
            marker = json.loads(next((out / "mimiciv").glob("*/SYNTHETIC.json")).read_text())
            rows = int(marker["row_counts"]["icu/chartevents"])
            shutil.rmtree(out)
    return {
        "scale": scale,
        "generate_s": round(best_generate, 3),
        "gzip_baseline_s": round(best_baseline, 3),
        "ratio_generate_to_gzip": round(best_generate / best_baseline, 2),
        "chartevents_rows": rows,
        "chartevents_rows_per_s": round(rows / best_generate),
        "uncompressed_table_mib": round(raw_bytes / 2**20, 1),
        "peak_rss_mib": round(peak_rss_mib, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", default="demo", choices=["tiny", "demo", "perf10"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="Also write the result here.")
    args = parser.parse_args()
    result = run(args.scale, args.repeats)
    for key, value in result.items():
        print(f"{key:>26}: {value}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
