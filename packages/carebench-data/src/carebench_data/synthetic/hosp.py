"""hosp/ and icu/ spine tables: patients, admissions, transfers, icustays, diagnoses and dictionaries."""

from __future__ import annotations

import csv
from importlib import resources

import numpy as np
import polars as pl

from carebench_data.mimic_schemas import MIMIC_IV_TABLES
from carebench_data.synthetic import vocab
from carebench_data.synthetic.config import SyntheticConfig
from carebench_data.synthetic.latent import Population
from carebench_data.synthetic.phenotypes import PHENOTYPE_COLUMNS, icd_code_table
from carebench_data.synthetic.rng import SECONDS_PER_DAY, rng_for, unique_ids
from carebench_data.synthetic.trajectory import to_date, to_datetime

_ALNUM = np.array(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"))


def provider_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """MIMIC-style provider ids (`P` + 5 characters), drawn from a pool of 400 providers."""
    pool = np.array(["P" + "".join(row) for row in _ALNUM[rng.integers(0, 36, size=(400, 5))]], dtype=object)
    return pool[rng.integers(0, pool.size, size=n)]


def _calendar_year(seconds: np.ndarray) -> np.ndarray:
    return seconds.astype("datetime64[s]").astype("datetime64[Y]").astype(np.int64) + 1970


def patients_frame(population: Population, config: SyntheticConfig) -> pl.DataFrame:
    """hosp/patients, sorted by subject_id."""
    pat = population.patients
    adm = population.admissions
    n_icu = adm["age"].size
    age = np.floor(pat["age_float"]).astype(np.int64)
    offset = np.zeros(age.size, dtype=np.int64)
    offset[:n_icu] = _calendar_year(adm["admittime"]) - pat["anchor_year"][:n_icu]
    anchor_age = age - offset
    anchor_age = np.where(anchor_age > 89, 91, anchor_age)
    groups = np.asarray(vocab.ANCHOR_GROUPS[config.mimic_version], dtype=object)
    frame = pl.DataFrame(
        {
            "subject_id": pat["subject_id"],
            "gender": pat["sex"].astype(str),
            "anchor_age": anchor_age,
            "anchor_year": pat["anchor_year"],
            "anchor_year_group": groups[pat["anchor_group"]].astype(str),
            "dod": to_date(pat["dod"], "dod"),
        }
    )
    return frame.sort("subject_id")


def admissions_frame(population: Population, config: SyntheticConfig) -> pl.DataFrame:
    """hosp/admissions (ICU and background admissions), sorted by subject_id, admittime."""
    rng = rng_for(config.seed, "admissions")
    adm, bg, pat = population.admissions, population.background, population.patients
    n_icu, n_bg = adm["hadm_id"].size, bg["hadm_id"].size
    patient = np.concatenate([adm["patient"], bg["patient"]])
    deathtime = np.concatenate([adm["deathtime"], np.full(n_bg, -1)])
    frame = pl.DataFrame(
        {
            "subject_id": np.concatenate([adm["subject_id"], bg["subject_id"]]),
            "hadm_id": np.concatenate([adm["hadm_id"], bg["hadm_id"]]),
            "admittime": to_datetime(np.concatenate([adm["admittime"], bg["admittime"]]), "admittime"),
            "dischtime": to_datetime(np.concatenate([adm["dischtime"], bg["dischtime"]]), "dischtime"),
            "deathtime": to_datetime(deathtime, "deathtime"),
            "admission_type": np.concatenate([adm["admission_type"], bg["admission_type"]]).astype(str),
            "admit_provider_id": provider_ids(rng, n_icu + n_bg).astype(str),
            "admission_location": np.concatenate(
                [adm["admission_location"], bg["admission_location"]]
            ).astype(str),
            "discharge_location": np.concatenate(
                [adm["discharge_location"], bg["discharge_location"]]
            ).astype(str),
            "insurance": pat["insurance"][patient].astype(str),
            "language": pat["language"][patient].astype(str),
            "marital_status": pat["marital_status"][patient].astype(str),
            "race": pat["race"][patient].astype(str),
            "edregtime": to_datetime(np.concatenate([adm["edregtime"], bg["edregtime"]]), "edregtime"),
            "edouttime": to_datetime(np.concatenate([adm["edouttime"], bg["edouttime"]]), "edouttime"),
            "hospital_expire_flag": np.concatenate([adm["hosp_death"], np.zeros(n_bg, dtype=bool)]).astype(
                np.int8
            ),
        }
    )
    empty_to_null = [
        pl.when(pl.col(c) == "").then(None).otherwise(pl.col(c)).alias(c)
        for c in ("language", "marital_status")
    ]
    return frame.with_columns(empty_to_null).sort(["subject_id", "admittime"])


def icustays_frame(population: Population) -> pl.DataFrame:
    """icu/icustays, ascending stay_id; `los` in fractional days."""
    stays = population.stays
    units = np.asarray(vocab.names(vocab.CAREUNITS), dtype=object)
    return pl.DataFrame(
        {
            "subject_id": stays["subject_id"],
            "hadm_id": stays["hadm_id"],
            "stay_id": stays["stay_id"],
            "first_careunit": units[stays["first_careunit"]].astype(str),
            "last_careunit": units[stays["last_careunit"]].astype(str),
            "intime": to_datetime(stays["intime"], "intime"),
            "outtime": to_datetime(stays["outtime"], "outtime"),
            "los": np.round((stays["outtime"] - stays["intime"]) / SECONDS_PER_DAY, 4),
        }
    )


def transfers_frame(population: Population, config: SyntheticConfig) -> pl.DataFrame:
    """hosp/transfers: ED → admit ward → ICU → ward → discharge for ICU admissions; ED → ward for others."""
    rng = rng_for(config.seed, "transfers")
    adm, stays, bg = population.admissions, population.stays, population.background
    units = np.asarray(vocab.names(vocab.CAREUNITS), dtype=object)
    wards = np.asarray(vocab.WARDS, dtype=object)
    parts: list[dict[str, np.ndarray]] = []

    def add(
        subject: np.ndarray,
        hadm: np.ndarray,
        event: str,
        unit: np.ndarray,
        t_in: np.ndarray,
        t_out: np.ndarray,
    ) -> None:
        parts.append(
            {
                "subject_id": subject,
                "hadm_id": hadm,
                "eventtype": np.full(subject.size, event, dtype=object),
                "careunit": unit,
                "intime": t_in,
                "outtime": t_out,
            }
        )

    for source in (adm, bg):
        ed = source["edregtime"] >= 0
        add(
            source["subject_id"][ed],
            source["hadm_id"][ed],
            "ED",
            np.full(int(ed.sum()), "Emergency Department", dtype=object),
            source["edregtime"][ed],
            source["admittime"][ed],
        )
    # ICU admissions: admit ward until the first intime, ICU stays, wards between and after.
    first = ~stays["second_stay"]
    ward = wards[rng.integers(0, wards.size, size=adm["hadm_id"].size)]
    add(adm["subject_id"], adm["hadm_id"], "admit", ward, adm["admittime"], stays["intime"][first])
    moved = stays["first_careunit"] != stays["last_careunit"]
    middle = stays["intime"] + (stays["outtime"] - stays["intime"]) // 2
    add(
        stays["subject_id"],
        stays["hadm_id"],
        "transfer",
        units[stays["first_careunit"]],
        stays["intime"],
        np.where(moved, middle, stays["outtime"]),
    )
    add(
        stays["subject_id"][moved],
        stays["hadm_id"][moved],
        "transfer",
        units[stays["last_careunit"]][moved],
        middle[moved],
        stays["outtime"][moved],
    )
    after = stays["outtime"]
    next_in = np.where(
        np.r_[stays["second_stay"][1:], False],
        np.r_[stays["intime"][1:], 0],
        adm["dischtime"][stays["admission"]],
    )
    ward_after = after < next_in
    add(
        stays["subject_id"][ward_after],
        stays["hadm_id"][ward_after],
        "transfer",
        ward[stays["admission"]][ward_after],
        after[ward_after],
        next_in[ward_after],
    )
    bg_ward = wards[rng.integers(0, wards.size, size=bg["hadm_id"].size)]
    add(bg["subject_id"], bg["hadm_id"], "admit", bg_ward, bg["admittime"], bg["dischtime"])
    for source in (adm, bg):
        n = source["hadm_id"].size
        add(
            source["subject_id"],
            source["hadm_id"],
            "discharge",
            np.full(n, None, dtype=object),
            source["dischtime"],
            np.full(n, -1),
        )
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    n = merged["subject_id"].size
    candidates = unique_ids(rng, n + stays["stay_id"].size + 16, 30_000_000, 40_000_000)
    transfer_ids = rng.permutation(np.setdiff1d(candidates, stays["stay_id"]))[:n]
    frame = pl.DataFrame(
        {
            "subject_id": merged["subject_id"],
            "hadm_id": merged["hadm_id"],
            "transfer_id": transfer_ids,
            "eventtype": merged["eventtype"].astype(str),
            "careunit": pl.Series("careunit", merged["careunit"].tolist(), dtype=pl.String),
            "intime": to_datetime(merged["intime"], "intime"),
            "outtime": to_datetime(merged["outtime"], "outtime"),
        }
    )
    return frame.sort(["subject_id", "intime", "transfer_id"])


def diagnoses(population: Population, config: SyntheticConfig) -> tuple[pl.DataFrame, np.ndarray]:
    """hosp/diagnoses_icd and the coded phenotype matrix of the ICU admissions.

    ICD version follows the anchor group (data.md §13.4). Every coded phenotype gets 1-2 of its
    codes, filler brings the admission to 8-20 codes, and the principal diagnosis comes first.

    Returns:
        (frame sorted by subject_id, hadm_id, seq_num; coded [A, 25] bool under `gem_ccs`).
    """
    rng = rng_for(config.seed, "diagnoses")
    table = icd_code_table()
    adm, bg, pat = population.admissions, population.background, population.patients
    labels = np.concatenate([adm["coded_intent"], bg["true_labels"]])
    has_dx = np.concatenate([adm["has_diagnoses"], np.ones(bg["hadm_id"].size, dtype=bool)])
    patient = np.concatenate([adm["patient"], bg["patient"]])
    group = pat["anchor_group"][patient]
    # Exactly the era's ICD-9 share of admissions per anchor group (a permutation, not coin flips).
    icd9 = np.zeros(labels.shape[0], dtype=bool)
    for g, share in enumerate(vocab.ICD9_SHARE):
        members = rng.permutation(np.flatnonzero(group == g))
        icd9[members[: round(share * members.size)]] = True
    subject = np.concatenate([adm["subject_id"], bg["subject_id"]])
    hadm = np.concatenate([adm["hadm_id"], bg["hadm_id"]])
    n_pheno = len(PHENOTYPE_COLUMNS)
    version_index = np.where(icd9, 0, 1)
    # Code pools padded to a rectangle: pool[p, version] -> code rows; filler is row n_pheno.
    pools = [[table.codes_for(p if p < n_pheno else -1, v) for v in (9, 10)] for p in range(n_pheno + 1)]
    width = max(len(pool) for row in pools for pool in row)
    pool_codes = np.zeros((n_pheno + 1, 2, width), dtype=np.int64)
    pool_size = np.zeros((n_pheno + 1, 2), dtype=np.int64)
    for p, row in enumerate(pools):
        for v, pool in enumerate(row):
            pool_codes[p, v, : len(pool)] = pool
            pool_size[p, v] = len(pool)
    # Phenotype codes: 1 code per positive label, a second distinct one with probability .3.
    adm_idx, pheno = np.nonzero(labels & has_dx[:, None])
    ver = version_index[adm_idx]
    size = pool_size[pheno, ver]
    first = (rng.random(adm_idx.size) * size).astype(np.int64)
    second_mask = (rng.random(adm_idx.size) < 0.3) & (size > 1)
    second = (first + 1 + (rng.random(adm_idx.size) * np.maximum(size - 1, 1)).astype(np.int64)) % size
    code_adm = np.concatenate([adm_idx, adm_idx[second_mask]])
    code_row = np.concatenate(
        [pool_codes[pheno, ver, first], pool_codes[pheno[second_mask], ver[second_mask], second[second_mask]]]
    )
    key = rng.random(code_adm.size)
    # Filler: distinct codes that bring the admission to 8-20 codes (at least one).
    n_codes = np.bincount(code_adm, minlength=labels.shape[0])
    n_total = rng.integers(8, 21, size=labels.shape[0])
    filler_size = pool_size[n_pheno, version_index]
    n_filler = np.where(has_dx, np.clip(n_total - n_codes, 1, filler_size), 0)
    ranks = np.argsort(
        rng.random((labels.shape[0], width)) + (np.arange(width)[None, :] >= filler_size[:, None]), axis=1
    )
    take = np.arange(width)[None, :] < n_filler[:, None]
    filler_adm = np.broadcast_to(np.arange(labels.shape[0])[:, None], take.shape)[take]
    filler_row = pool_codes[n_pheno, version_index[filler_adm], ranks[take]]
    filler_key = 1.0 + rng.random(filler_adm.size)
    # Some admissions have a filler code as principal diagnosis.
    principal_filler = rng.random(labels.shape[0]) < 0.3
    first_filler = np.r_[True, filler_adm[1:] != filler_adm[:-1]]
    filler_key[first_filler & principal_filler[filler_adm]] = -1.0
    all_adm = np.concatenate([code_adm, filler_adm])
    all_code = np.concatenate([code_row, filler_row])
    order = np.lexsort((np.concatenate([key, filler_key]), all_adm))
    all_adm, code_index = all_adm[order], all_code[order]
    start = np.searchsorted(all_adm, all_adm, side="left")
    seq = np.arange(all_adm.size) - start + 1
    membership = np.zeros((len(table.codes), n_pheno), dtype=bool)
    for c, group in enumerate(table.groups):
        membership[c, list(group)] = True
    n_icu = adm["hadm_id"].size
    icu_rows = all_adm < n_icu
    hits = np.zeros((n_icu, n_pheno), dtype=np.int64)
    np.add.at(hits, all_adm[icu_rows], membership[code_index[icu_rows]].astype(np.int64))
    coded = hits > 0
    frame = pl.DataFrame(
        {
            "subject_id": subject[all_adm],
            "hadm_id": hadm[all_adm],
            "seq_num": seq.astype(np.int16),
            "icd_code": np.asarray(table.codes, dtype=object)[code_index].astype(str),
            "icd_version": np.asarray(table.versions, dtype=np.int8)[code_index],
        }
    ).sort(["subject_id", "hadm_id", "seq_num"])
    return frame, coded


def d_icd_diagnoses_frame() -> pl.DataFrame:
    """hosp/d_icd_diagnoses: every bundled code, sorted by (icd_code, icd_version)."""
    table = icd_code_table()
    return (
        pl.DataFrame(
            {
                "icd_code": list(table.codes),
                "icd_version": list(table.versions),
                "long_title": list(table.titles),
            },
            schema={"icd_code": pl.String, "icd_version": pl.Int8, "long_title": pl.String},
        )
        .unique(["icd_code", "icd_version"])
        .sort(["icd_code", "icd_version"])
    )


def dictionary_frame(name: str) -> pl.DataFrame:
    """icu/d_items or hosp/d_labitems from the bundled CSV (`d_items` or `d_labitems`), sorted by itemid."""
    text = resources.files("carebench_data.synthetic").joinpath(f"resources/{name}.csv").read_text("utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    schema = MIMIC_IV_TABLES["icu/d_items" if name == "d_items" else "hosp/d_labitems"]
    columns = {col: [r[col] if r[col] != "" else None for r in rows] for col in schema}
    return pl.DataFrame(columns, schema={c: pl.String for c in schema}).cast(schema).sort("itemid")  # type: ignore[arg-type]
