"""`generate_synthetic`: write a MIMIC-IV + MIMIC-CXR-JPG shaped raw tree with planted signal."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

import carebench_data
from carebench_data.errors import CarebenchDataError
from carebench_data.mimic_schemas import MIMIC_CXR_TABLES, MIMIC_IV_TABLES
from carebench_data.outputs import atomic_directory, is_empty_dir
from carebench_data.synthetic import cxr, hosp
from carebench_data.synthetic.chart import DIRT_KINDS, chart_chunk
from carebench_data.synthetic.config import SyntheticConfig
from carebench_data.synthetic.icu_events import input_chunk, output_chunk, procedure_frame
from carebench_data.synthetic.labs import lab_chunk
from carebench_data.synthetic.latent import sample_population
from carebench_data.synthetic.rng import rng_for
from carebench_data.synthetic.truth import findings_truth, stays_truth
from carebench_data.synthetic.writer import CsvGzWriter, write_checksums, write_json, write_table

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
CXR_VERSION = "2.0.0"


class SyntheticOutputError(CarebenchDataError):
    """The output directory cannot be written (it exists and is not empty)."""


GENERATOR_REVISION = 3
"""Bumped whenever generator code changes what a seed and config produce (not only the config's knobs).

Revision 2: the heart drawn over the lung opacities with CTR 0.40-0.76, lobar consolidation only when
q > .5, and a stronger overload in RR, SpO2 and daily weight. Revision 3: troponin T below 0.01 and
NT-proBNP above 70,000 written as censored results in labevents `comments` (value and valuenum
null), as real MIMIC-IV does; only those rows change. Cached demos carry it in their name.
"""


def _marker(config: SyntheticConfig, counts: dict[str, int], dataset: str) -> dict[str, object]:
    return {
        "synthetic": True,
        "dataset": dataset,
        "generator": "carebench_data.synthetic",
        "generator_version": carebench_data.__version__,
        "generator_revision": GENERATOR_REVISION,
        "seed": config.seed,
        "scale": config.scale,
        "mimic_version": config.mimic_version,
        "config_hash": config.config_hash(),
        "row_counts": counts,
    }


def generate_synthetic(
    out: Path, config: SyntheticConfig | None = None, *, progress: ProgressCallback | None = None
) -> Path:
    """Write a synthetic raw tree (data.md §13.2) under `out` and return `out`.

    Layout: `out/mimiciv/<version>/{hosp,icu}/*.csv.gz`, `out/mimic-cxr-jpg/2.0.0/` (tables and
    JPEGs) and `out/_synthetic_truth/`. The tree is built in a sibling temporary directory and
    renamed into place, so a failed run leaves nothing behind. The same config gives
    byte-identical files.

    Args:
        out: target directory; must not exist or be empty.
        config: generator configuration (default: the `demo` scale, seed 0, MIMIC-IV 2.2).
        progress: optional callback `(done, total)` in abstract work units.

    Returns:
        The output directory.

    Raises:
        SyntheticOutputError: if `out` exists and is not empty.
    """
    config = config or SyntheticConfig()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SyntheticOutputError(f"{out} exists and is not empty; choose a new directory or remove it")
    # Under the target's lock: a second writer is refused, a killed one's partial tree is removed.
    with atomic_directory(out, overwrite=True, is_ours=is_empty_dir, what="synthetic tree") as partial:
        _generate_into(partial, config, progress)
    return out


def _generate_into(root: Path, config: SyntheticConfig, progress: ProgressCallback | None) -> None:
    population = sample_population(config)
    plan = cxr.plan_films(population, config)
    n_stays = population.stays["stay_id"].size
    n_adm = population.admissions["hadm_id"].size
    n_bg = population.background["hadm_id"].size
    n_images = plan.images["dicom_id"].size
    total = 8 + n_stays + n_adm + n_bg + n_images
    done = 0

    def step(units: int) -> None:
        nonlocal done
        done += units
        if progress is not None:
            progress(done, total)

    logger.info(
        "synthetic: %d stays, %d admissions, %d background admissions, %d images",
        n_stays,
        n_adm,
        n_bg,
        n_images,
    )
    mimic = root / "mimiciv" / config.mimic_version
    counts: dict[str, int] = {}

    def table(name: str) -> tuple[Path, dict]:
        return mimic / f"{name}.csv.gz", MIMIC_IV_TABLES[name]

    counts["hosp/patients"] = write_table(*table("hosp/patients"), hosp.patients_frame(population, config))
    counts["hosp/admissions"] = write_table(
        *table("hosp/admissions"), hosp.admissions_frame(population, config)
    )
    counts["hosp/transfers"] = write_table(*table("hosp/transfers"), hosp.transfers_frame(population, config))
    diagnoses, coded = hosp.diagnoses(population, config)
    counts["hosp/diagnoses_icd"] = write_table(*table("hosp/diagnoses_icd"), diagnoses)
    counts["hosp/d_icd_diagnoses"] = write_table(*table("hosp/d_icd_diagnoses"), hosp.d_icd_diagnoses_frame())
    counts["hosp/d_labitems"] = write_table(*table("hosp/d_labitems"), hosp.dictionary_frame("d_labitems"))
    counts["icu/d_items"] = write_table(*table("icu/d_items"), hosp.dictionary_frame("d_items"))
    counts["icu/icustays"] = write_table(*table("icu/icustays"), hosp.icustays_frame(population))
    step(8)

    # Event tables, chunk by chunk (memory stays bounded by chunk_stays).
    dirt = np.zeros((n_stays, len(DIRT_KINDS)), dtype=np.int64)
    with (
        CsvGzWriter(*table("icu/chartevents")) as chart_writer,
        CsvGzWriter(*table("icu/outputevents")) as output_writer,
        CsvGzWriter(*table("icu/inputevents")) as input_writer,
    ):
        for chunk, lo in enumerate(range(0, n_stays, config.chunk_stays)):
            hi = min(lo + config.chunk_stays, n_stays)
            result = chart_chunk(population, config, rng_for(config.seed, "chartevents", chunk), lo, hi)
            chart_writer.write(result.frame)
            dirt[lo:hi] = result.dirt
            output_writer.write(
                output_chunk(population, config, rng_for(config.seed, "outputevents", chunk), lo, hi)
            )
            input_writer.write(
                input_chunk(population, config, rng_for(config.seed, "inputevents", chunk), lo, hi)
            )
            step(hi - lo)
    counts["icu/chartevents"] = chart_writer.rows
    counts["icu/outputevents"] = output_writer.rows
    counts["icu/inputevents"] = input_writer.rows
    counts["icu/procedureevents"] = write_table(
        *table("icu/procedureevents"),
        procedure_frame(population, plan, rng_for(config.seed, "procedureevents")),
    )

    labevent_id = 1
    specimen_id = 1_000_000
    with CsvGzWriter(*table("hosp/labevents")) as lab_writer:
        for icu, n_owner in ((True, n_adm), (False, n_bg)):
            for chunk, lo in enumerate(range(0, n_owner, config.chunk_stays)):
                hi = min(lo + config.chunk_stays, n_owner)
                rng = rng_for(config.seed, "labevents", "icu" if icu else "background", chunk)
                result = lab_chunk(population, config, rng, icu=icu, lo=lo, hi=hi)
                frame = result.frame.with_columns(
                    (pl.col("specimen_id") + specimen_id).alias("specimen_id"),
                    pl.Series(
                        "labevent_id",
                        np.arange(labevent_id, labevent_id + result.frame.height, dtype=np.int64),
                    ),
                )
                lab_writer.write(frame)
                labevent_id += frame.height
                specimen_id += result.panels
                step(hi - lo)
    counts["hosp/labevents"] = lab_writer.rows

    # MIMIC-CXR-JPG.
    cxr_root = root / "mimic-cxr-jpg" / CXR_VERSION
    params = cxr.render_params(plan, config)
    cxr.write_images(cxr_root, plan, params, config, progress=step)
    cxr_counts = {
        "mimic-cxr-2.0.0-metadata": write_table(
            cxr_root / "mimic-cxr-2.0.0-metadata.csv.gz",
            MIMIC_CXR_TABLES["mimic-cxr-2.0.0-metadata"],
            cxr.metadata_frame(plan),
        )
    }
    chexpert, negbio = cxr.label_frames(plan, config)
    for name, frame in (
        ("mimic-cxr-2.0.0-chexpert", chexpert),
        ("mimic-cxr-2.0.0-negbio", negbio),
        ("mimic-cxr-2.0.0-split", cxr.split_frame(plan)),
    ):
        cxr_counts[name] = write_table(cxr_root / f"{name}.csv.gz", MIMIC_CXR_TABLES[name], frame)
    cxr_counts["images"] = n_images

    write_json(mimic / "SYNTHETIC.json", _marker(config, counts, "mimic-iv"))
    write_json(cxr_root / "SYNTHETIC.json", _marker(config, cxr_counts, "mimic-cxr-jpg"))
    write_checksums(mimic)
    write_checksums(cxr_root)

    truth_dir = root / "_synthetic_truth"
    truth_dir.mkdir()
    stays_truth(population, coded, plan, dirt, config.mimic_version).write_parquet(
        truth_dir / "stays.parquet", statistics=False
    )
    findings_truth(plan, params, population).write_parquet(
        truth_dir / "cxr_findings.parquet", statistics=False
    )
    resolved = {
        "config": config.to_dict(),
        "row_counts": {**counts, **cxr_counts},
        "dirt_totals": dict(zip(DIRT_KINDS, dirt.sum(axis=0).tolist(), strict=True)),
    }
    (truth_dir / "config.json").write_text(json.dumps(resolved, indent=2, sort_keys=True) + "\n")
