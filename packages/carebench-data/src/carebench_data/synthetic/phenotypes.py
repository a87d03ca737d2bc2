"""The 25 benchmark phenotypes (data.md §5.3) and the bundled ICD codes that encode them."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from importlib import resources

# (column, CCS id, synthesis prevalence), in the §5.3 (MedFuse) order.
PHENOTYPES: tuple[tuple[str, int, float], ...] = (
    ("acute_renal_failure", 157, 0.21),
    ("acute_cerebrovascular_disease", 109, 0.07),
    ("acute_myocardial_infarction", 100, 0.10),
    ("cardiac_dysrhythmias", 106, 0.32),
    ("chronic_kidney_disease", 158, 0.13),
    ("copd_bronchiectasis", 127, 0.13),
    ("complications_of_care", 238, 0.21),
    ("conduction_disorders", 105, 0.07),
    ("chf_nonhypertensive", 108, 0.27),
    ("coronary_atherosclerosis", 101, 0.32),
    ("diabetes_with_complications", 50, 0.09),
    ("diabetes_without_complication", 49, 0.19),
    ("lipid_disorders", 53, 0.29),
    ("essential_hypertension", 98, 0.42),
    ("fluid_electrolyte_disorders", 55, 0.27),
    ("gi_hemorrhage", 153, 0.07),
    ("hypertension_with_complications", 99, 0.13),
    ("other_liver_diseases", 151, 0.09),
    ("other_lower_respiratory", 133, 0.05),
    ("other_upper_respiratory", 134, 0.04),
    ("pleurisy_pneumothorax_collapse", 130, 0.09),
    ("pneumonia", 122, 0.14),
    ("respiratory_failure", 131, 0.18),
    ("septicemia", 2, 0.14),
    ("shock", 249, 0.08),
)
PHENOTYPE_COLUMNS = tuple(name for name, _, _ in PHENOTYPES)
PHENOTYPE_INDEX = {name: i for i, name in enumerate(PHENOTYPE_COLUMNS)}


@dataclass(frozen=True)
class IcdCodeTable:
    """The bundled code list, one entry per (icd_version, icd_code).

    Attributes:
        versions: icd_version of each code (9 or 10).
        codes: the code text (leading zeros kept, no dots).
        phenotype: index into PHENOTYPE_COLUMNS the generator uses the code for, -1 for filler.
        groups: for each code, the phenotype indices it maps to under `gem_ccs`.
        titles: long titles for d_icd_diagnoses.
    """

    versions: tuple[int, ...]
    codes: tuple[str, ...]
    phenotype: tuple[int, ...]
    groups: tuple[tuple[int, ...], ...]
    titles: tuple[str, ...]

    def codes_for(self, phenotype: int, version: int) -> list[int]:
        """Row indices of the codes used for one phenotype (or filler, -1) in one ICD version."""
        return [
            i
            for i, (p, v) in enumerate(zip(self.phenotype, self.versions, strict=True))
            if p == phenotype and v == version
        ]


@cache
def icd_code_table() -> IcdCodeTable:
    """Read `resources/icd_codes.csv` (bundled, with attribution in resources/README.md)."""
    text = resources.files("carebench_data.synthetic").joinpath("resources/icd_codes.csv").read_text("utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    return IcdCodeTable(
        versions=tuple(int(r["icd_version"]) for r in rows),
        codes=tuple(r["icd_code"] for r in rows),
        phenotype=tuple(PHENOTYPE_INDEX[r["phenotype"]] if r["phenotype"] else -1 for r in rows),
        groups=tuple(
            tuple(PHENOTYPE_INDEX[g] for g in r["gem_ccs_phenotypes"].split(";") if g) for r in rows
        ),
        titles=tuple(r["long_title"] for r in rows),
    )
