"""MIMIC-IV vocabularies with the frequencies of data.md §13.3 (real strings, per version)."""

from __future__ import annotations

RACE_GROUPS = ("WHITE", "BLACK/AFRICAN AMERICAN", "HISPANIC/LATINO", "ASIAN", "OTHER")
RACE_GROUP_P = (0.68, 0.11, 0.04, 0.03, 0.14)
RACE_STRINGS: dict[str, tuple[tuple[str, float], ...]] = {
    "WHITE": (
        ("WHITE", 0.88),
        ("WHITE - OTHER EUROPEAN", 0.05),
        ("WHITE - RUSSIAN", 0.04),
        ("WHITE - BRAZILIAN", 0.03),
    ),
    "BLACK/AFRICAN AMERICAN": (
        ("BLACK/AFRICAN AMERICAN", 0.85),
        ("BLACK/CAPE VERDEAN", 0.08),
        ("BLACK/CARIBBEAN ISLAND", 0.07),
    ),
    "HISPANIC/LATINO": (
        ("HISPANIC OR LATINO", 0.35),
        ("HISPANIC/LATINO - PUERTO RICAN", 0.35),
        ("HISPANIC/LATINO - DOMINICAN", 0.2),
        ("HISPANIC/LATINO - SALVADORAN", 0.1),
    ),
    "ASIAN": (("ASIAN", 0.5), ("ASIAN - CHINESE", 0.35), ("ASIAN - SOUTH EAST ASIAN", 0.15)),
    "OTHER": (
        ("OTHER", 0.35),
        ("UNKNOWN", 0.35),
        ("UNABLE TO OBTAIN", 0.12),
        ("PATIENT DECLINED TO ANSWER", 0.08),
        ("AMERICAN INDIAN/ALASKA NATIVE", 0.04),
        ("MULTIPLE RACE/ETHNICITY", 0.03),
        ("PORTUGUESE", 0.03),
    ),
}

ADMISSION_TYPES = (
    ("EW EMER.", 0.47),
    ("URGENT", 0.18),
    ("SURGICAL SAME DAY ADMISSION", 0.10),
    ("OBSERVATION ADMIT", 0.09),
    ("DIRECT EMER.", 0.06),
    ("ELECTIVE", 0.04),
    ("EU OBSERVATION", 0.03),
    ("DIRECT OBSERVATION", 0.02),
    ("AMBULATORY OBSERVATION", 0.01),
)
EMERGENCY_TYPES = frozenset({"EW EMER.", "URGENT", "DIRECT EMER.", "EU OBSERVATION", "OBSERVATION ADMIT"})

CAREUNITS = (
    ("Medical Intensive Care Unit (MICU)", 0.22),
    ("Cardiac Vascular Intensive Care Unit (CVICU)", 0.19),
    ("Medical/Surgical Intensive Care Unit (MICU/SICU)", 0.17),
    ("Surgical Intensive Care Unit (SICU)", 0.14),
    ("Trauma SICU (TSICU)", 0.11),
    ("Coronary Care Unit (CCU)", 0.11),
    ("Neuro Intermediate", 0.03),
    ("Neuro Surgical Intensive Care Unit (Neuro SICU)", 0.02),
    ("Neuro Stepdown", 0.01),
)
NEURO_UNITS = frozenset({6, 7, 8})
SURGICAL_UNITS = frozenset({1, 3, 4})
CARDIAC_UNITS = frozenset({1, 5})
WARDS = ("Medicine", "Med/Surg", "Cardiology", "Surgery", "Neurology", "Medicine/Cardiology", "Vascular")

ADMISSION_LOCATIONS = (
    ("EMERGENCY ROOM", 0.55),
    ("PHYSICIAN REFERRAL", 0.15),
    ("TRANSFER FROM HOSPITAL", 0.12),
    ("WALK-IN/SELF REFERRAL", 0.05),
    ("CLINIC REFERRAL", 0.04),
    ("PROCEDURE SITE", 0.04),
    ("PACU", 0.03),
    ("TRANSFER FROM SKILLED NURSING FACILITY", 0.02),
)
DISCHARGE_LOCATIONS = (
    ("HOME", 0.35),
    ("HOME HEALTH CARE", 0.25),
    ("SKILLED NURSING FACILITY", 0.2),
    ("REHAB", 0.1),
    ("CHRONIC/LONG TERM ACUTE CARE", 0.05),
    ("HOSPICE", 0.03),
    ("AGAINST ADVICE", 0.02),
)
MARITAL = (("MARRIED", 0.45), ("SINGLE", 0.3), ("WIDOWED", 0.13), ("DIVORCED", 0.07), ("", 0.05))

ANCHOR_GROUPS = {
    "2.2": ("2008 - 2010", "2011 - 2013", "2014 - 2016", "2017 - 2019"),
    "3.1": ("2008 - 2010", "2011 - 2013", "2014 - 2016", "2017 - 2019", "2020 - 2022"),
}
# Share of ICD-9 admissions per anchor group (data.md §13.4).
ICD9_SHARE = (0.770, 0.807, 0.438, 0.0, 0.0)
# MIMIC-CXR covers 2011-2016 only (data.md G11).
CXR_ERA_GROUPS = frozenset({1, 2})

LANGUAGES = {
    "2.2": (("ENGLISH", 0.9), ("?", 0.1)),
    "3.1": (
        ("English", 0.88),
        ("Spanish", 0.04),
        ("Russian", 0.02),
        ("Chinese", 0.02),
        ("Portuguese", 0.015),
        ("Haitian", 0.01),
        ("Vietnamese", 0.005),
        ("", 0.01),
    ),
}
# Insurance for patients under 65 (Medicare takes .85 of those 65 and older, .1 of the younger).
INSURANCE_UNDER_65 = {
    "2.2": (("Medicaid", 0.3), ("Other", 0.7)),
    "3.1": (("Medicaid", 0.3), ("Private", 0.55), ("Other", 0.12), ("No charge", 0.03)),
}
INSURANCE_OVER_65 = {
    "2.2": (("Medicaid", 0.1), ("Other", 0.9)),
    "3.1": (("Medicaid", 0.1), ("Private", 0.8), ("Other", 0.1)),
}

AGE_BINS = ("0-20", "20-40", "40-60", "60-80", "80+")
AGE_EDGES = (20, 40, 60, 80)


def names(pairs: tuple[tuple[str, float], ...]) -> list[str]:
    """The strings of a (string, probability) table."""
    return [name for name, _ in pairs]


def probs(pairs: tuple[tuple[str, float], ...]) -> list[float]:
    """The probabilities of a (string, probability) table."""
    return [p for _, p in pairs]
