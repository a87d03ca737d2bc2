"""Synthetic MIMIC-IV + MIMIC-CXR-JPG generator with planted, known signal (data.md §13).

>>> from carebench_data.synthetic import SyntheticConfig, generate_synthetic
>>> generate_synthetic(tmp_path / "raw", SyntheticConfig.tiny(seed=1))  # doctest: +SKIP
"""

from carebench_data.mimic_schemas import CHEXPERT_FINDINGS, MIMIC_CXR_TABLES, MIMIC_IV_TABLES
from carebench_data.synthetic.config import (
    SignalConfig,
    SubgroupEffect,
    SyntheticConfig,
    SyntheticConfigError,
)
from carebench_data.synthetic.generate import GENERATOR_REVISION, SyntheticOutputError, generate_synthetic
from carebench_data.synthetic.phenotypes import PHENOTYPE_COLUMNS

__all__ = [
    "CHEXPERT_FINDINGS",
    "GENERATOR_REVISION",
    "MIMIC_CXR_TABLES",
    "MIMIC_IV_TABLES",
    "PHENOTYPE_COLUMNS",
    "SignalConfig",
    "SubgroupEffect",
    "SyntheticConfig",
    "SyntheticConfigError",
    "SyntheticOutputError",
    "generate_synthetic",
]
