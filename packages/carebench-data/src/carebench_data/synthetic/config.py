"""Configuration of the synthetic generator: scale, version, planted signal and subgroup knobs.

Every number that shapes the synthetic data lives here, so a test or a user can change one knob and
know that nothing else moved. The resolved configuration is written to `_synthetic_truth/config.json`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from carebench_data.errors import CarebenchDataError

MimicVersion = Literal["2.2", "3.1"]
SubgroupKind = Literal["z_shift", "code_drop", "lab_density", "cxr_availability", "image_noise"]

SUBGROUP_ATTRIBUTES = ("race", "sex", "age_bin", "insurance")
LATENT_NAMES = ("severity", "cardiac", "pulmonary", "renal", "infection", "metabolic")


class SyntheticConfigError(CarebenchDataError):
    """An invalid synthetic generator configuration (unknown key, out-of-range value)."""


@dataclass(frozen=True, kw_only=True)
class SubgroupEffect:
    """One subgroup knob of data.md §13.7.

    Attributes:
        attribute: `race` (group name, e.g. `OTHER`), `sex` (`M`/`F`), `age_bin` (`18-20`, `20-40`,
            `40-60`, `60-80`, `80+`) or `insurance` (raw MIMIC string, e.g. `Medicaid`).
        value: the attribute value that selects the subgroup.
        kind: `z_shift` adds `amount` to latent `target` (one of the six latent names);
            `code_drop` drops the ICD codes of phenotype `target` with probability `amount`;
            `lab_density` multiplies the lab panel probability by `amount`;
            `cxr_availability` multiplies the CXR probability by `amount`;
            `image_noise` multiplies the image noise SD by `amount` (and lowers contrast).
        target: latent name (z_shift) or phenotype column (code_drop); empty otherwise.
        amount: shift, drop probability or multiplicative factor.
    """

    attribute: str
    value: str
    kind: SubgroupKind
    target: str = ""
    amount: float


def _default_subgroups() -> tuple[SubgroupEffect, ...]:
    return (
        SubgroupEffect(
            attribute="race", value="BLACK/AFRICAN AMERICAN", kind="z_shift", target="renal", amount=0.3
        ),
        SubgroupEffect(
            attribute="race", value="BLACK/AFRICAN AMERICAN", kind="z_shift", target="metabolic", amount=0.2
        ),
        SubgroupEffect(
            attribute="race", value="HISPANIC/LATINO", kind="z_shift", target="metabolic", amount=0.3
        ),
        SubgroupEffect(
            attribute="race", value="OTHER", kind="code_drop", target="chf_nonhypertensive", amount=0.3
        ),
        SubgroupEffect(attribute="insurance", value="Medicaid", kind="lab_density", amount=0.7),
        SubgroupEffect(attribute="sex", value="F", kind="cxr_availability", amount=0.7),
        SubgroupEffect(attribute="age_bin", value="80+", kind="image_noise", amount=1.5),
    )


@dataclass(frozen=True, kw_only=True)
class SignalConfig:
    """Planted-signal knobs (data.md §13.6). Weights are logit coefficients.

    Attributes:
        mortality_intercept: mortality logit intercept (in-hospital death).
        mortality_severity: weight of latent severity S.
        mortality_shock: weight of the shock state.
        mortality_resp_failure: weight of the respiratory-failure state.
        mortality_age_per_year: weight per year of age over 65.
        mortality_effusion: weight of bilateral effusion (e_L + e_R > 1), the small CXR term.
        mortality_surgical: weight of a surgical ICU (CVICU, SICU, TSICU): post-operative stays die less.
        cxr_presence_mortality: extra mortality logit for stays imaged in the window (0: off).
        icu_death_fraction: share of hospital deaths that happen in the ICU.
        pleurisy_weight: weight of max(e_L, e_R, pneumothorax, atelectasis) in the CXR-dominant label.
        pleurisy_ehr_weight: weight of the faint EHR term (severity) in that label.
        finding_noise_sd: SD of the per-stay noise of the finding logits (hides them from the EHR).
        cardiomegaly_intercept: cardiomegaly logit intercept (about half of the stays have k > .5).
        cardiomegaly_cardiac: weight of latent C in cardiomegaly (small: the heart size is image-only).
        overload_intercept: intercept of the fluid-overload state (EHR-visible).
        edema_cardiac: weight of latent C in edema.
        edema_overload: weight of the overload state in edema (small: the image must not restate the EHR).
        consolidation_intercept: consolidation logit intercept.
        consolidation_pulmonary: weight of latent P in consolidation.
        chf_interaction: weight of cardiomegaly × overload in CHF (the AND that makes CHF complementary).
        chf_cardiomegaly: weight of cardiomegaly alone in CHF.
        chf_overload: weight of overload alone in CHF.
        chf_xor: make CHF an XOR of cardiomegaly and overload instead of the additive + interaction form.
        pneumonia_interaction: weight of visible consolidation (q > .5) × febrile (fever or high WBC).
        pneumonia_consolidation: weight of consolidation alone.
        pneumonia_fever: weight of the fever grade alone (a high WBC adds a fixed 0.5).
        cxr_paired_fraction: target share of cohort stays with a CXR in the window (γ0 is calibrated to it).
        cxr_severity: CXR availability weight of S.
        cxr_ventilated: CXR availability weight of mechanical ventilation.
        cxr_pulmonary: CXR availability weight of P.
        cxr_cardiac: CXR availability weight of C.
        cxr_surgical: CXR availability weight of a surgical ICU (routine post-operative films).
    """

    mortality_intercept: float = -2.5
    mortality_severity: float = 1.1
    mortality_shock: float = 1.5
    mortality_resp_failure: float = 0.6
    mortality_age_per_year: float = 0.04
    mortality_effusion: float = 0.3
    mortality_surgical: float = -1.8
    cxr_presence_mortality: float = 0.0
    icu_death_fraction: float = 0.72
    pleurisy_weight: float = 20.0
    pleurisy_ehr_weight: float = 0.1
    finding_noise_sd: float = 1.8
    cardiomegaly_intercept: float = 0.0
    cardiomegaly_cardiac: float = 0.3
    overload_intercept: float = -0.2
    edema_cardiac: float = 0.5
    edema_overload: float = 0.3
    consolidation_intercept: float = -0.2
    consolidation_pulmonary: float = 0.3
    chf_interaction: float = 12.0
    chf_cardiomegaly: float = 2.0
    chf_overload: float = 1.0
    chf_xor: bool = False
    pneumonia_interaction: float = 8.0
    pneumonia_consolidation: float = 1.0
    pneumonia_fever: float = 4.5
    cxr_paired_fraction: float = 0.215
    cxr_severity: float = 1.8
    cxr_ventilated: float = 0.4
    cxr_pulmonary: float = 0.6
    cxr_cardiac: float = 0.8
    cxr_surgical: float = 3.6


@dataclass(frozen=True, kw_only=True)
class SyntheticConfig:
    """Resolved configuration of one synthetic tree.

    Attributes:
        n_stays: ICU stays to emit (all ages and lengths; about 44 % reach 48 h).
        seed: root seed; the same seed, version and scale give byte-identical files.
        scale: preset name written to SYNTHETIC.json (`tiny`, `demo`, `perf10` or `custom`).
        mimic_version: `2.2` or `3.1` (vocabularies and anchor year groups differ, headers do not).
        image_size: side of the square JPEGs in pixels (64 to 2048).
        chart_cap_hours: charting stops this many hours after intime (None: whole stay).
        full_charting: emit the extra nursing/ventilator items (the perf10 row volume).
        filler_cadence_hours: charting interval of the always-charted extra items when full_charting.
        lab_panels_per_day: routine lab draws per day (06:00, then 18:00, then 12:00).
        background_admissions_per_stay: non-ICU admissions emitted per ICU stay (labs, diagnoses).
        background_lab_days: daily lab panels of a background admission are capped at this many days.
        second_stay_fraction: share of ICU admissions with a second ICU stay.
        chunk_stays: stays per emission chunk of the event tables (bounds memory; part of the seed path).
        dirt_rate: probability of each kind of injected dirt per eligible row.
        signal: planted-signal knobs.
        subgroups: subgroup knobs (data.md §13.7).
    """

    n_stays: int = 2000
    seed: int = 0
    scale: str = "demo"
    mimic_version: MimicVersion = "2.2"
    image_size: int = 256
    chart_cap_hours: float | None = 72.0
    full_charting: bool = False
    filler_cadence_hours: float = 1.0
    lab_panels_per_day: int = 1
    background_admissions_per_stay: float = 0.5
    background_lab_days: int = 3
    second_stay_fraction: float = 0.12
    chunk_stays: int = 1000
    dirt_rate: float = 0.003
    signal: SignalConfig = field(default_factory=SignalConfig)
    subgroups: tuple[SubgroupEffect, ...] = field(default_factory=_default_subgroups)

    def __post_init__(self) -> None:
        if self.n_stays < 10:
            raise SyntheticConfigError(f"n_stays must be at least 10, got {self.n_stays}")
        if self.mimic_version not in ("2.2", "3.1"):
            raise SyntheticConfigError(f"mimic_version must be '2.2' or '3.1', got {self.mimic_version!r}")
        if not 64 <= self.image_size <= 2048:
            raise SyntheticConfigError(f"image_size must lie in [64, 2048], got {self.image_size}")
        if not 1 <= self.lab_panels_per_day <= 3:
            raise SyntheticConfigError(f"lab_panels_per_day must be 1, 2 or 3, got {self.lab_panels_per_day}")
        if self.filler_cadence_hours <= 0:
            raise SyntheticConfigError("filler_cadence_hours must be positive")
        if self.chunk_stays < 1:
            raise SyntheticConfigError(f"chunk_stays must be positive, got {self.chunk_stays}")
        if not 0.0 <= self.second_stay_fraction < 0.5:
            raise SyntheticConfigError("second_stay_fraction must lie in [0, 0.5)")
        for effect in self.subgroups:
            if effect.attribute not in SUBGROUP_ATTRIBUTES:
                raise SyntheticConfigError(
                    f"subgroup attribute {effect.attribute!r} is not one of {', '.join(SUBGROUP_ATTRIBUTES)}"
                )
            if effect.kind == "z_shift" and effect.target not in LATENT_NAMES:
                raise SyntheticConfigError(
                    f"z_shift target {effect.target!r} is not one of {', '.join(LATENT_NAMES)}"
                )

    @classmethod
    def tiny(cls, **overrides: Any) -> SyntheticConfig:
        """200 stays with 64 px images: the size of unit tests."""
        return cls(**{"n_stays": 200, "scale": "tiny", "image_size": 64, **overrides})

    @classmethod
    def demo(cls, **overrides: Any) -> SyntheticConfig:
        """2,000 stays, charting capped at 72 h, 256 px images (data.md §13.1)."""
        return cls(**{"scale": "demo", **overrides})

    @classmethod
    def perf10(cls, **overrides: Any) -> SyntheticConfig:
        """About 10 % of MIMIC-IV v2.2: 7,318 stays, full-length charting, all items and distractors."""
        return cls(
            **{
                "n_stays": 7318,
                "scale": "perf10",
                "chart_cap_hours": None,
                "full_charting": True,
                "background_admissions_per_stay": 5.0,
                "background_lab_days": 10,
                "filler_cadence_hours": 0.4,
                "lab_panels_per_day": 3,
                "chunk_stays": 500,
                **overrides,
            }
        )

    @classmethod
    def preset(cls, scale: str, **overrides: Any) -> SyntheticConfig:
        """The named preset (`tiny`, `demo`, `perf10`) with overrides.

        Raises:
            SyntheticConfigError: for an unknown scale name.
        """
        presets = {"tiny": cls.tiny, "demo": cls.demo, "perf10": cls.perf10}
        if scale not in presets:
            raise SyntheticConfigError(f"unknown scale {scale!r}; use one of {', '.join(presets)}")
        return presets[scale](**overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (used for config.json and the config hash)."""
        return dataclasses.asdict(self)

    def config_hash(self) -> str:
        """SHA-256 of the canonical JSON form."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()
