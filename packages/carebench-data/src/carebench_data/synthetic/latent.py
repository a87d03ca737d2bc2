"""The seeded structural causal model of data.md §13.3: patients, admissions, ICU stays and latent state.

`sample_population` draws everything that is decided once per admission or stay (demographics,
latent z, clinical states, CXR findings, true and coded phenotypes, timeline, deaths, CXR
availability). The emitters turn it into table rows; the truth writer stores it.

All times are int64 seconds since 1970-01-01 (naive, MIMIC shifted calendar).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from carebench_data.synthetic import vocab
from carebench_data.synthetic.config import LATENT_NAMES, SubgroupEffect, SyntheticConfig
from carebench_data.synthetic.phenotypes import PHENOTYPE_INDEX, PHENOTYPES
from carebench_data.synthetic.rng import (
    SECONDS_PER_DAY,
    SECONDS_PER_HOUR,
    calibrate_intercept,
    choice_index,
    rng_for,
    sigmoid,
    unique_ids,
    year_start_seconds,
)

Arrays = dict[str, np.ndarray]

_CORRELATIONS = {("severity", "infection"): 0.4, ("severity", "pulmonary"): 0.3, ("cardiac", "renal"): 0.3}
_CORRELATIONS[("pulmonary", "infection")] = 0.4
_LOS_LOG_INTERCEPT = float(np.log(1.6))


@dataclass
class Population:
    """Everything sampled once per entity. Each field maps a column name to a numpy array.

    Attributes:
        patients: one row per subject (ICU patients first, then background-only patients).
        admissions: one row per ICU admission (`patient` indexes `patients`).
        stays: one row per ICU stay, ascending stay_id (`admission` indexes `admissions`).
        background: one row per non-ICU admission (`patient` indexes `patients`).
    """

    patients: Arrays
    admissions: Arrays
    stays: Arrays
    background: Arrays


def _latent_covariance() -> np.ndarray:
    cov = np.eye(len(LATENT_NAMES))
    for (a, b), r in _CORRELATIONS.items():
        i, j = LATENT_NAMES.index(a), LATENT_NAMES.index(b)
        cov[i, j] = cov[j, i] = r
    return cov


def _draw_strings(rng: np.random.Generator, table: tuple[tuple[str, float], ...], size: int) -> np.ndarray:
    return np.asarray(vocab.names(table), dtype=object)[
        choice_index(rng, np.asarray(vocab.probs(table)), size)
    ]


def age_bins(age: np.ndarray) -> np.ndarray:
    """Age-bin labels of data.md §13.7 (`0-20` … `80+`)."""
    return np.asarray(vocab.AGE_BINS, dtype=object)[np.searchsorted(vocab.AGE_EDGES, age, side="right")]


def subgroup_mask(effect: SubgroupEffect, attributes: Arrays) -> np.ndarray:
    """Boolean mask of the rows an effect applies to (`attributes` has race, sex, age_bin, insurance)."""
    return np.asarray(attributes[effect.attribute] == effect.value, dtype=bool)


def subgroup_factor(config: SyntheticConfig, kind: str, attributes: Arrays, size: int) -> np.ndarray:
    """Product of the multiplicative subgroup factors of one kind (1 where none applies)."""
    factor = np.ones(size)
    for effect in config.subgroups:
        if effect.kind == kind:
            factor[subgroup_mask(effect, attributes)] *= effect.amount
    return factor


def _demographics(config: SyntheticConfig, rng: np.random.Generator, n: int, *, icu: bool) -> Arrays:
    version = config.mimic_version
    age = np.clip(rng.normal(68.5, 16.9, size=4 * n), 18, 91)
    age = age[(age > 18) & (age < 91)][:n] if icu else np.clip(rng.normal(55, 19, size=n), 18, 91)
    if age.size < n:
        age = np.concatenate([age, rng.uniform(40, 80, size=n - age.size)])
    # Exactly 44.3 % women (a permutation, not independent draws), so small trees match the marginal.
    sex = np.where(rng.permutation(n) < round(0.443 * n), "F", "M").astype(object)
    group = choice_index(rng, np.asarray(vocab.RACE_GROUP_P), n)
    race_group = np.asarray(vocab.RACE_GROUPS, dtype=object)[group]
    race = np.empty(n, dtype=object)
    for g, name in enumerate(vocab.RACE_GROUPS):
        rows = np.flatnonzero(group == g)
        race[rows] = _draw_strings(rng, vocab.RACE_STRINGS[name], rows.size)
    medicare = rng.random(n) < np.where(age >= 65, 0.85, 0.1)
    insurance = np.where(
        age >= 65,
        _draw_strings(rng, vocab.INSURANCE_OVER_65[version], n),
        _draw_strings(rng, vocab.INSURANCE_UNDER_65[version], n),
    ).astype(object)
    insurance[medicare] = "Medicare"
    groups = vocab.ANCHOR_GROUPS[version]
    anchor_group = rng.integers(0, len(groups), size=n)
    return {
        "age_float": age,
        "sex": sex,
        "race_group": race_group,
        "race": race,
        "insurance": insurance,
        "anchor_group": anchor_group,
        "language": _draw_strings(rng, vocab.LANGUAGES[version], n),
        "marital_status": _draw_strings(rng, vocab.MARITAL, n),
    }


def _timeline_start(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """anchor_year per subject and admittime (seconds) of one admission per subject."""
    anchor_year = rng.integers(2110, 2205, size=n)
    offset_years = rng.integers(0, 3, size=n)
    admit = year_start_seconds(anchor_year + offset_years) + rng.integers(0, 364 * SECONDS_PER_DAY, size=n)
    return anchor_year, (admit // 60) * 60


def _findings(
    config: SyntheticConfig, rng: np.random.Generator, z: np.ndarray, states: Arrays, age: np.ndarray
) -> Arrays:
    sd = config.signal.finding_noise_sd
    n = z.shape[0]
    s, c, p = z[:, 0], z[:, 1], z[:, 2]
    common = rng.normal(0, sd, size=n)
    eff_left = sigmoid(-1.4 + 0.6 * c + 0.4 * p + 0.2 * s + common + rng.normal(0, 0.7, size=n))
    eff_right = sigmoid(-1.4 + 0.6 * c + 0.4 * p + 0.2 * s + common + rng.normal(0, 0.7, size=n))
    sig = config.signal
    cardiomegaly = sigmoid(
        sig.cardiomegaly_intercept
        + sig.cardiomegaly_cardiac * c
        + 0.02 * (age - 65)
        + rng.normal(0, sd, size=n)
    )
    edema = sigmoid(
        -2.0 + sig.edema_cardiac * c + sig.edema_overload * states["overload"] + rng.normal(0, sd, size=n)
    )
    consolidation = sigmoid(
        sig.consolidation_intercept + sig.consolidation_pulmonary * p + rng.normal(0, sd, size=n)
    )
    ptx_present = rng.random(n) < 0.04 * (1 + states["central_line"])
    pneumothorax = np.where(ptx_present, rng.uniform(0.6, 1.0, size=n), rng.uniform(0.0, 0.2, size=n))
    atelectasis = sigmoid(-2.8 + 0.3 * states["ventilated"] + rng.normal(0, sd, size=n))
    return {
        "eff_left": eff_left,
        "eff_right": eff_right,
        "cardiomegaly": cardiomegaly,
        "edema": edema,
        "consolidation": consolidation,
        "pneumothorax": pneumothorax,
        "atelectasis": atelectasis,
    }


def _states(
    config: SyntheticConfig, rng: np.random.Generator, z: np.ndarray, careunit: np.ndarray, age: np.ndarray
) -> Arrays:
    n = z.shape[0]
    s, c, p, r, i, _ = z.T

    def draw(logit: np.ndarray) -> np.ndarray:
        return rng.random(n) < sigmoid(logit)

    shock = draw(-3.4 + 1.5 * s + 0.6 * i)
    resp_fail = draw(-2.4 + 1.2 * s + 1.2 * p)
    ventilated = resp_fail | draw(-1.9 + 0.6 * s + 0.4 * p + np.isin(careunit, list(vocab.SURGICAL_UNITS)))
    # Fever grade in [0, 1] (how high and how long); a fever is a grade above .5.
    fever_grade = sigmoid(-1.5 + 1.6 * i + rng.normal(0, 1.0, size=n))
    fever = fever_grade > 0.5
    wbc_high = draw(-1.2 + 1.4 * i)
    neuro_unit = np.isin(careunit, list(vocab.NEURO_UNITS))
    return {
        "shock": shock,
        "resp_fail": resp_fail,
        "ventilated": ventilated,
        "overload": draw(config.signal.overload_intercept + 1.2 * c + 0.5 * r),
        "aki": draw(-1.9 + 1.3 * r + 0.6 * s),
        "fever": fever,
        "fever_grade": fever_grade,
        "wbc_high": wbc_high,
        "febrile": fever | wbc_high,
        "neuro": rng.random(n) < np.where(neuro_unit, 0.6, 0.05),
        "dysrhythmia": draw(-1.0 + 0.8 * c + 0.02 * (age - 65)),
        "central_line": draw(-0.8 + 1.0 * s + 1.5 * shock),
    }


def _phenotype_linear(
    config: SyntheticConfig, z: np.ndarray, st: Arrays, fi: Arrays, careunit: np.ndarray, age: np.ndarray
) -> np.ndarray:
    """[A, 25] linear predictors without intercept (families of data.md §13.6)."""
    sig = config.signal
    s, c, p, r, i, m = z.T
    f = {k: v.astype(np.float64) for k, v in st.items()}
    surgical = np.isin(careunit, list(vocab.SURGICAL_UNITS)).astype(np.float64)
    cardiac_unit = np.isin(careunit, list(vocab.CARDIAC_UNITS)).astype(np.float64)
    cxr_max = np.maximum.reduce([fi["eff_left"], fi["eff_right"], fi["pneumothorax"], fi["atelectasis"]])
    k = fi["cardiomegaly"]
    if sig.chf_xor:
        chf = sig.chf_interaction * np.logical_xor(k > 0.5, st["overload"]).astype(np.float64)
    else:
        chf = (
            sig.chf_interaction * k * f["overload"]
            + sig.chf_cardiomegaly * k
            + sig.chf_overload * f["overload"]
        )
    q = fi["consolidation"]
    pneumonia = (
        sig.pneumonia_interaction * (q > 0.5) * f["febrile"]
        + sig.pneumonia_consolidation * q
        + sig.pneumonia_fever * f["fever_grade"]
        + 0.5 * f["wbc_high"]
    )
    terms = {
        "acute_renal_failure": 3.0 * f["aki"] + 0.3 * r,
        "acute_cerebrovascular_disease": 3.5 * f["neuro"] + 0.2 * s,
        "acute_myocardial_infarction": 1.2 * c + 1.0 * cardiac_unit,
        "cardiac_dysrhythmias": 3.0 * f["dysrhythmia"] + 0.3 * c,
        "chronic_kidney_disease": 1.3 * r,
        "copd_bronchiectasis": 1.0 * p + 0.01 * (age - 65),
        "complications_of_care": 1.0 * surgical + 0.3 * s,
        "conduction_disorders": 0.7 * c,
        "chf_nonhypertensive": chf,
        "coronary_atherosclerosis": 1.0 * c + 0.8 * cardiac_unit + 0.02 * (age - 65),
        "diabetes_with_complications": 1.2 * m + 0.5 * r,
        "diabetes_without_complication": 1.0 * m,
        "lipid_disorders": 0.6 * c + 0.6 * m,
        "essential_hypertension": 0.4 * c + 0.3 * m - 0.3 * r,
        "fluid_electrolyte_disorders": 0.6 * r + 0.5 * s + 0.4 * m,
        "gi_hemorrhage": 0.3 * s,
        "hypertension_with_complications": 0.8 * r + 0.5 * c,
        "other_liver_diseases": 0.6 * m + 0.3 * s,
        "other_lower_respiratory": 0.5 * p,
        "other_upper_respiratory": 0.2 * p,
        "pleurisy_pneumothorax_collapse": sig.pleurisy_weight * cxr_max + sig.pleurisy_ehr_weight * s,
        "pneumonia": pneumonia,
        "respiratory_failure": 4.0 * f["resp_fail"] + 0.3 * p,
        "septicemia": 1.2 * i + 0.6 * s + 1.0 * f["shock"],
        "shock": 4.5 * f["shock"] + 0.3 * s,
    }
    return np.stack([terms[name] for name, _, _ in PHENOTYPES], axis=1)


def _los_hours(rng: np.random.Generator, s: np.ndarray, organ_failures: np.ndarray) -> np.ndarray:
    log_days = _LOS_LOG_INTERCEPT + 0.45 * s + 0.25 * organ_failures + rng.normal(0, 0.7, size=s.size)
    return np.clip(np.exp(log_days), 0.1, 100.0) * 24.0


def sample_population(config: SyntheticConfig) -> Population:
    """Draw the whole population of one synthetic tree (deterministic in `config`)."""
    rng = rng_for(config.seed, "population")
    n_stays = config.n_stays
    n_adm = round(n_stays / (1.0 + config.second_stay_fraction))
    n_second = n_stays - n_adm
    sig = config.signal

    adm = _demographics(config, rng, n_adm, icu=True)
    age_float = adm["age_float"]
    # A few under-18 admissions (dirt: the `adult` cohort step removes them).
    minors = rng.random(n_adm) < 0.002
    age_float[minors] = rng.uniform(16, 17.9, size=int(minors.sum()))
    adm["age_bin"] = age_bins(age_float)
    attributes = {
        "race": adm["race_group"],
        "sex": adm["sex"],
        "age_bin": adm["age_bin"],
        "insurance": adm["insurance"],
    }

    mean = np.zeros((n_adm, len(LATENT_NAMES)))
    over_65 = np.maximum(age_float - 65, 0)
    for name in ("cardiac", "renal", "metabolic"):
        mean[:, LATENT_NAMES.index(name)] += 0.02 * over_65
    for effect in config.subgroups:
        if effect.kind == "z_shift":
            mean[subgroup_mask(effect, attributes), LATENT_NAMES.index(effect.target)] += effect.amount
    z = mean + rng.multivariate_normal(np.zeros(len(LATENT_NAMES)), _latent_covariance(), size=n_adm)
    for j, name in enumerate(LATENT_NAMES):
        adm[f"z_{name}"] = z[:, j]

    careunit = choice_index(rng, np.asarray(vocab.probs(vocab.CAREUNITS)), n_adm)
    adm["careunit"] = careunit
    adm["admission_type"] = _draw_strings(rng, vocab.ADMISSION_TYPES, n_adm)
    adm["admission_location"] = _draw_strings(rng, vocab.ADMISSION_LOCATIONS, n_adm)
    states = _states(config, rng, z, careunit, age_float)
    adm.update(states)
    findings = _findings(config, rng, z, states, age_float)
    adm.update(findings)

    # Phenotypes: true labels, then ICD under-coding per subgroup.
    linear = _phenotype_linear(config, z, states, findings, careunit, age_float)
    true_labels = np.zeros_like(linear, dtype=bool)
    uniform = rng.random(linear.shape)
    for j, (_, _, prevalence) in enumerate(PHENOTYPES):
        intercept = calibrate_intercept(linear[:, j], prevalence)
        true_labels[:, j] = uniform[:, j] < sigmoid(intercept + linear[:, j])
    kept = true_labels.copy()
    drop_uniform = rng.random(linear.shape)
    for effect in config.subgroups:
        if effect.kind == "code_drop":
            j = PHENOTYPE_INDEX[effect.target]
            rows = subgroup_mask(effect, attributes)
            kept[rows, j] &= drop_uniform[rows, j] >= effect.amount
    adm["true_labels"] = true_labels
    adm["coded_intent"] = kept

    # Timeline of the admission and its one or two ICU stays.
    anchor_year, admittime = _timeline_start(rng, n_adm)
    adm["anchor_year"] = anchor_year
    adm["admittime"] = admittime
    organ_failures = states["shock"].astype(int) + states["resp_fail"] + states["aki"]
    two_stays = np.zeros(n_adm, dtype=bool)
    two_stays[rng.choice(n_adm, size=n_second, replace=False)] = True
    pre_icu = np.minimum(rng.exponential(1.0, size=n_adm), 10.0) * SECONDS_PER_DAY
    intime1 = admittime + (pre_icu // 60 * 60).astype(np.int64) + rng.integers(0, 60, size=n_adm)
    los1 = _los_hours(rng, z[:, 0], organ_failures)
    los2 = _los_hours(rng, z[:, 0] - 0.3, organ_failures)
    gap = rng.uniform(12, 96, size=n_adm) * SECONDS_PER_HOUR
    outtime1 = intime1 + (los1 * SECONDS_PER_HOUR).astype(np.int64)
    intime2 = outtime1 + gap.astype(np.int64)
    outtime2 = intime2 + (los2 * SECONDS_PER_HOUR).astype(np.int64)
    last_out = np.where(two_stays, outtime2, outtime1)
    last_in = np.where(two_stays, intime2, intime1)
    post = np.minimum(rng.exponential(4.0, size=n_adm), 30.0) * SECONDS_PER_DAY
    dischtime = (last_out + post.astype(np.int64)) // 60 * 60

    # CXR availability (MNAR): per admission here, drawn per stay below.
    era = np.isin(adm["anchor_group"], list(vocab.CXR_ERA_GROUPS))
    s, c, p = z[:, 0], z[:, 1], z[:, 2]
    surgical = np.isin(careunit, list(vocab.SURGICAL_UNITS))
    cxr_linear = (
        sig.cxr_severity * s
        + sig.cxr_ventilated * states["ventilated"]
        + sig.cxr_pulmonary * p
        + sig.cxr_cardiac * c
        + sig.cxr_surgical * surgical
    )
    cxr_factor = subgroup_factor(config, "cxr_availability", attributes, n_adm) * era
    in_cohort_weight = (los1 >= 48).astype(np.float64)
    target = sig.cxr_paired_fraction
    low, high = -20.0, 20.0
    for _ in range(60):
        mid = 0.5 * (low + high)
        mean_p = np.average(sigmoid(mid + cxr_linear) * cxr_factor, weights=in_cohort_weight + 1e-12)
        low, high = (mid, high) if mean_p < target else (low, mid)
    cxr_probability = np.clip(sigmoid(0.5 * (low + high) + cxr_linear) * cxr_factor, 0, 1)
    cxr_first = rng.random(n_adm) < cxr_probability
    cxr_second = rng.random(n_adm) < cxr_probability

    # Deaths: in hospital by the §13.3 logit; ICU deaths end the last stay.
    effusion_bilateral = (findings["eff_left"] + findings["eff_right"]) > 1
    mortality_logit = (
        sig.mortality_intercept
        + sig.mortality_severity * s
        + sig.mortality_shock * states["shock"]
        + sig.mortality_resp_failure * states["resp_fail"]
        + sig.mortality_age_per_year * (age_float - 65)
        + sig.mortality_effusion * effusion_bilateral
        + sig.mortality_surgical * surgical
        + sig.cxr_presence_mortality * cxr_first
    )
    hosp_death = rng.random(n_adm) < sigmoid(mortality_logit)
    icu_death = hosp_death & (rng.random(n_adm) < sig.icu_death_fraction)
    icu_deathtime = last_out - rng.integers(0, 2 * SECONDS_PER_HOUR, size=n_adm)
    icu_deathtime = np.maximum(icu_deathtime, last_in + 1800) // 60 * 60
    deathtime = np.where(icu_death, icu_deathtime, np.where(hosp_death, dischtime, -1))
    dischtime = np.where(icu_death, icu_deathtime, dischtime)
    survivor_dod = ~hosp_death & (rng.random(n_adm) < 0.25)
    dod_seconds = np.where(
        hosp_death,
        deathtime,
        np.where(survivor_dod, dischtime + rng.integers(1, 365, size=n_adm) * SECONDS_PER_DAY, -1),
    )
    adm.update(
        {
            "two_stays": two_stays,
            "dischtime": dischtime,
            "deathtime": deathtime,
            "hosp_death": hosp_death,
            "icu_death": icu_death,
            "dod": dod_seconds,
            "cxr_era": era,
            "cxr_probability": cxr_probability,
            "has_diagnoses": rng.random(n_adm) >= 0.003,
            "discharge_location": np.where(
                hosp_death, "DIED", _draw_strings(rng, vocab.DISCHARGE_LOCATIONS, n_adm)
            ).astype(object),
        }
    )
    emergency = np.isin(adm["admission_type"], list(vocab.EMERGENCY_TYPES))
    adm["edregtime"] = np.where(
        emergency, admittime - rng.integers(3600, 10 * 3600, size=n_adm) // 60 * 60, -1
    )
    adm["edouttime"] = np.where(emergency, admittime + rng.integers(0, 3600, size=n_adm) // 60 * 60, -1)
    adm["age"] = np.floor(age_float).astype(np.int64)

    # Stays in admission order; stay ids ascend with that order.
    stay_adm = np.repeat(np.arange(n_adm), 1 + two_stays)
    second = np.zeros(stay_adm.size, dtype=bool)
    second[1:] = stay_adm[1:] == stay_adm[:-1]
    intime = np.where(second, intime2[stay_adm], intime1[stay_adm])
    outtime = np.where(second, outtime2[stay_adm], outtime1[stay_adm])
    last_stay = ~two_stays[stay_adm] | second
    died_here = icu_death[stay_adm] & last_stay
    outtime = np.where(died_here, np.maximum(outtime, deathtime[stay_adm]), outtime)
    # Dirt: about 0.1 % of stays have outtime <= intime (removed by the `valid_times` step).
    bad_times = rng.random(stay_adm.size) < 0.001
    outtime = np.where(bad_times, intime, outtime)
    first_careunit = careunit[stay_adm]
    last_careunit = first_careunit.copy()
    moved = rng.random(stay_adm.size) < 0.05
    last_careunit[moved] = (first_careunit[moved] + 1 + rng.integers(0, 5, size=int(moved.sum()))) % len(
        vocab.CAREUNITS
    )
    los_hours = (outtime - intime) / SECONDS_PER_HOUR
    vent_fraction = rng.uniform(0.4, 1.0, size=stay_adm.size)
    stays: Arrays = {
        "admission": stay_adm,
        "second_stay": second,
        "intime": intime,
        "outtime": outtime,
        "los_hours": los_hours,
        "end_of_charting": np.where(died_here, deathtime[stay_adm], outtime),
        "icu_death": died_here,
        "bad_times": bad_times,
        "first_careunit": first_careunit,
        "last_careunit": last_careunit,
        "ventilated": states["ventilated"][stay_adm]
        & (rng.random(stay_adm.size) < np.where(second, 0.5, 1.0)),
        "vent_end": intime + (np.maximum(los_hours, 0) * vent_fraction * SECONDS_PER_HOUR).astype(np.int64),
        "aline": rng.random(stay_adm.size)
        < sigmoid(-0.6 + 0.8 * s[stay_adm] + 2.0 * states["shock"][stay_adm]),
        "cxr_planned": np.where(second, cxr_second[stay_adm], cxr_first[stay_adm]),
        "temp_fahrenheit": rng.random(stay_adm.size) < 0.85,
        "baseline_weight": np.clip(rng.normal(81, 18, size=stay_adm.size), 40, 200),
        "height_cm": np.clip(
            rng.normal(np.where(adm["sex"][stay_adm] == "F", 162, 176), 8, size=stay_adm.size), 140, 205
        ),
        "height_in_inches": rng.random(stay_adm.size) < 0.5,
        "weight_in_lbs": rng.random(stay_adm.size) < 0.3,
        "catheter": rng.random(stay_adm.size) < 0.8,
    }
    for name in ("hr", "map", "rr", "spo2", "temp", "glucose", "creatinine"):
        stays[f"baseline_{name}"] = rng.normal(0, 1, size=stay_adm.size)
    stays["wave_phase"] = rng.uniform(0, 2 * np.pi, size=(stay_adm.size, 3))
    stays["shock_end"] = intime + (rng.uniform(12, 72, size=stay_adm.size) * SECONDS_PER_HOUR).astype(
        np.int64
    )

    # Background (non-ICU) admissions and the patients table.
    n_background = round(config.background_admissions_per_stay * n_stays)
    n_bg_own = round(n_background * 0.7)
    n_bg_patients = max(1, round(n_bg_own / 1.5))
    bg_patients = _demographics(config, rng, n_bg_patients, icu=False)
    bg_anchor_year, _ = _timeline_start(rng, n_bg_patients)
    owner_icu = rng.integers(0, n_adm, size=n_background - n_bg_own)
    owner_bg = rng.integers(0, n_bg_patients, size=n_bg_own)
    patients: Arrays = {}
    for key in ("sex", "race", "insurance", "anchor_group", "language", "marital_status", "race_group"):
        patients[key] = np.concatenate([adm[key], bg_patients[key]])
    patients["age_float"] = np.concatenate([age_float, bg_patients["age_float"]])
    patients["anchor_year"] = np.concatenate([anchor_year, bg_anchor_year])
    patients["admit_year_offset"] = np.concatenate(
        [
            (admittime - year_start_seconds(anchor_year)) // (365 * SECONDS_PER_DAY),
            np.zeros(n_bg_patients, dtype=np.int64),
        ]
    )
    patients["dod"] = np.concatenate([dod_seconds, np.full(n_bg_patients, -1, dtype=np.int64)])
    patient_index = np.concatenate([n_adm + owner_bg, owner_icu])
    bg_admit_year = patients["anchor_year"][patient_index] + rng.integers(0, 3, size=n_background)
    bg_admit = (
        (year_start_seconds(bg_admit_year) + rng.integers(0, 364 * SECONDS_PER_DAY, size=n_background))
        // 60
        * 60
    )
    # Earlier admissions of ICU patients: 60-700 days before the ICU admission (never after a death).
    own_icu = patient_index < n_adm
    icu_admit = admittime[np.minimum(patient_index, n_adm - 1)]
    before_icu = icu_admit - rng.integers(60, 700, size=n_background) * SECONDS_PER_DAY
    bg_admit = np.where(own_icu, before_icu // 60 * 60, bg_admit)
    bg_los_days = np.clip(rng.lognormal(np.log(3.0), 0.7, size=n_background), 0.3, 40)
    background: Arrays = {
        "patient": patient_index,
        "admittime": bg_admit,
        "dischtime": (bg_admit + (bg_los_days * SECONDS_PER_DAY).astype(np.int64)) // 60 * 60,
        "admission_type": _draw_strings(rng, vocab.ADMISSION_TYPES, n_background),
        "admission_location": _draw_strings(rng, vocab.ADMISSION_LOCATIONS, n_background),
        "discharge_location": _draw_strings(rng, vocab.DISCHARGE_LOCATIONS, n_background),
        "true_labels": rng.random((n_background, len(PHENOTYPES)))
        < 0.5 * np.asarray([p for _, _, p in PHENOTYPES]),
        "has_labs": rng.random(n_background) < 0.9,
    }
    emergency_bg = np.isin(background["admission_type"], list(vocab.EMERGENCY_TYPES))
    background["edregtime"] = np.where(
        emergency_bg, bg_admit - rng.integers(3600, 8 * 3600, size=n_background) // 60 * 60, -1
    )
    background["edouttime"] = np.where(
        emergency_bg, bg_admit + rng.integers(0, 3600, size=n_background) // 60 * 60, -1
    )
    background["cxr_only_study"] = np.isin(
        patients["anchor_group"][patient_index], list(vocab.CXR_ERA_GROUPS)
    ) & (rng.random(n_background) < 0.3)

    # Ids: ascending in entity order so that every table sorts by its own key.
    n_patients = n_adm + n_bg_patients
    patients["subject_id"] = rng.permutation(unique_ids(rng, n_patients, 10_000_000, 20_000_000))
    hadm_all = rng.permutation(unique_ids(rng, n_adm + n_background, 20_000_000, 30_000_000))
    adm["hadm_id"] = hadm_all[:n_adm]
    background["hadm_id"] = hadm_all[n_adm:]
    adm["subject_id"] = patients["subject_id"][:n_adm]
    background["subject_id"] = patients["subject_id"][patient_index]
    stays["stay_id"] = unique_ids(rng, stay_adm.size, 30_000_000, 40_000_000)
    stays["subject_id"] = adm["subject_id"][stay_adm]
    stays["hadm_id"] = adm["hadm_id"][stay_adm]
    adm["patient"] = np.arange(n_adm)
    return Population(patients=patients, admissions=adm, stays=stays, background=background)
