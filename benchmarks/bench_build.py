"""Build throughput vs `zcat > /dev/null` of chartevents + labevents (spec/data.md §11 P3, P4).

Usage:
    python benchmarks/bench_build.py --scale demo            # generates the synthetic demo tree first
    python benchmarks/bench_build.py --tree /path/to/synthetic/root [--repeats 3] [--json out.json]

Each repeat runs `zcat` of the two event tables to /dev/null and then the full build, one right
after the other on the same files and page-cache state; the best of each is compared (the ratio
P4 asks to stay ≤ 2), and the paired ratio of every repeat is reported too (on a shared machine the
spread is large). The build runs in a child process so that its peak RSS is measured alone.
Rows/s and a linear extrapolation to full MIMIC-IV v3.1 (433 M chartevents + 158 M labevents rows)
are printed as well.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FULL_V31_ROWS = 432_997_491 + 158_374_764

_CHILD = """
import json, sys
from carebench_data.build import build_dataset
from carebench_data.config import BuildConfig
config = BuildConfig.from_dict(json.loads(sys.argv[1]))
build_dataset(config)
"""


def _generate(scale: str, root: Path) -> Path:
    from carebench_data.synthetic import SyntheticConfig, generate_synthetic

    config = getattr(SyntheticConfig, scale)(seed=0)
    started = time.perf_counter()
    generate_synthetic(root, config)
    print(f"generated the {scale} tree in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return root


def _roots(tree: Path) -> tuple[Path, Path]:
    marker = next((tree / "mimiciv").glob("*/SYNTHETIC.json"))
    return marker.parent, tree / "mimic-cxr-jpg" / "2.0.0"


def _zcat_seconds(files: list[Path]) -> float:
    started = time.perf_counter()
    with open("/dev/null", "wb") as sink:
        subprocess.run(["zcat", *map(str, files)], stdout=sink, check=True)
    return time.perf_counter() - started


def _build_seconds(config: dict) -> tuple[float, int]:
    shutil.rmtree(config["out"], ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", _CHILD, json.dumps(config)], check=True)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(peak_kib, before) * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, help="synthetic root holding mimiciv/ and mimic-cxr-jpg/")
    parser.add_argument("--scale", choices=["tiny", "demo", "perf10"], default="demo")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="carebench-bench-build-"))
    try:
        tree = args.tree or _generate(args.scale, scratch / "raw")
        mimic_iv, mimic_cxr = _roots(tree)
        events = [mimic_iv / "icu" / "chartevents.csv.gz", mimic_iv / "hosp" / "labevents.csv.gz"]
        config = {
            "mimic_iv": str(mimic_iv),
            "mimic_cxr": str(mimic_cxr),
            "out": str(scratch / "dataset"),
            "build": {"cache": False},  # every repeat pays the full event pass
        }
        zcat_times, build_times, peaks = [], [], []
        for repeat in range(args.repeats):
            zcat_times.append(_zcat_seconds(events))
            seconds, peak = _build_seconds(config)
            build_times.append(seconds)
            peaks.append(peak)
            print(f"repeat {repeat}: zcat {zcat_times[-1]:.2f} s, build {seconds:.2f} s", file=sys.stderr)
        manifest = json.loads((scratch / "dataset" / "manifest.json").read_text())
        scanned = sum(table["scanned"] for table in manifest["counts"]["events"].values())
        build, zcat = min(build_times), min(zcat_times)
        result = {
            "tree": str(tree),
            "event_rows_scanned": scanned,
            "event_bytes_gz": sum(path.stat().st_size for path in events),
            "cohort_stays": manifest["counts"]["cohort"][-1]["stays"],
            "zcat_seconds": round(zcat, 3),
            "build_seconds": round(build, 3),
            "ratio_build_to_zcat": round(build / zcat, 2),
            "ratio_per_repeat": [round(b / z, 2) for b, z in zip(build_times, zcat_times, strict=True)],
            "ratio_median": round(
                statistics.median(b / z for b, z in zip(build_times, zcat_times, strict=True)), 2
            ),
            "rows_per_second": round(scanned / build),
            "peak_rss_mib": round(max(peaks) / 2**20, 1),
            "stage_seconds": {k: v["seconds"] for k, v in manifest["build"]["stages"].items()},
            "extrapolated_full_v31_minutes": round(build * FULL_V31_ROWS / scanned / 60, 1),
            "extrapolated_full_v31_zcat_minutes": round(zcat * FULL_V31_ROWS / scanned / 60, 1),
        }
        text = json.dumps(result, indent=2)
        print(text)
        if args.json:
            args.json.write_text(text + "\n")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
