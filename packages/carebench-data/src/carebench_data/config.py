"""Build configuration (spec/data.md §2): frozen, keyword-only, resolved once, unknown keys rejected."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from carebench_data.errors import CarebenchDataError
from carebench_data.typed_toml import ConfigValueError, load_dataclass


class ConfigError(CarebenchDataError):
    """The build configuration has an unknown key or an invalid value."""


@dataclass(frozen=True, kw_only=True)
class CohortConfig:
    """Inclusion and exclusion rules (spec/data.md §3.2)."""

    min_age: int = 18
    """Minimum age at hospital admission, in years."""
    min_los_hours: float = 48.0
    """Minimum ICU length of stay in hours; at least 48, the window length."""
    single_careunit: bool = False
    """Keep only stays with first_careunit = last_careunit (mimic3-benchmarks / MedFuse rule)."""
    one_stay_per_admission: bool = False
    """Keep only admissions with exactly one ICU stay (benchmark rule)."""
    first_stay_per_subject: bool = False
    """Keep each subject's earliest ICU stay."""
    require_diagnoses: bool = True
    """Exclude admissions without diagnoses_icd rows (their 25 phenotype zeros would be wrong)."""


@dataclass(frozen=True, kw_only=True)
class FeaturesConfig:
    """EHR feature registry and event availability (spec/data.md §4)."""

    registry: str = "default"
    """`default` (17 variables), `extended` (47), or a path to a TOML registry."""
    availability: Literal["charttime", "storetime"] = "charttime"
    """`storetime`: an event counts only if it was stored before prediction_time."""


@dataclass(frozen=True, kw_only=True)
class LabelsConfig:
    """Label definitions (spec/data.md §5)."""

    mortality: Literal["icu", "hospital"] = "icu"
    """Death in the ICU after prediction time (`icu`) or in the hospital (`hospital`)."""
    icu_death_grace_hours: float = 0.0
    """Widen the ICU death window past outtime by this many hours."""
    phenotype_mapping: Literal["gem_ccs", "carebench_compat"] = "gem_ccs"
    """ICD → CCS mapping: CMS GEM + HCUP CCS (default) or the CareBench/MedFuse definitions file."""
    icd10_parent_fallback: bool = True
    """Retry parent codes (down to 3 characters) for ICD-10 codes absent from the GEM."""


@dataclass(frozen=True, kw_only=True)
class CxrConfig:
    """Chest X-ray selection and preprocessing (spec/data.md §6)."""

    enabled: bool = True
    """False builds EHR-only: has_cxr all false and cxr.npy with M = 0."""
    views: tuple[str, ...] = ("AP", "PA")
    """Frontal views accepted, in tie-break order."""
    recover_view: bool = False
    """Use ViewCodeSequence_CodeMeaning when ViewPosition is null."""
    lookback_hours: float = 0.0
    """Accept images from intime − lookback onwards."""
    image_size: int = 256
    """S, the side of the stored square grayscale image (224 ≤ S ≤ 1024)."""
    layout: Literal["mimic", "flat"] = "mimic"
    """`mimic`: files/p1X/p<subject>/s<study>/<dicom>.jpg; `flat`: <root>/<dicom>.jpg."""
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    """Decode processes."""
    max_failure_fraction: float = 0.01
    """Fail the build when more than this fraction of attempted images is missing or corrupt."""


@dataclass(frozen=True, kw_only=True)
class SplitsConfig:
    """Patient-level hash splits (spec/data.md §7.1)."""

    salt: str = "v1"
    """Changes every hash-based assignment."""


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    """Execution options that never change the output bytes."""

    work_dir: str | None = None
    """Staging directory; default `<out parent>/.carebench-work`."""
    chunk_mib: int = 64
    """Decompressed CSV block size in MiB."""
    max_bad_row_fraction: float = 1e-4
    """Per table; beyond it, unparseable rows fail the build."""
    overwrite: bool = False
    """Replace an existing dataset directory."""
    cache: bool = True
    """Reuse staged events (S2) from the work directory when inputs, itemids and cohort are unchanged."""


@dataclass(frozen=True, kw_only=True)
class BuildConfig:
    """Everything `build_dataset` needs. Create it in code, or with `BuildConfig.from_toml(path, **flags)`.

    Precedence is flag > TOML file > default; `resolved()` is written to `manifest.config`.
    """

    mimic_iv: Path
    """Root of MIMIC-IV (holds `hosp/` and `icu/`)."""
    out: Path
    """Dataset directory to create."""
    mimic_cxr: Path | None = None
    """Root of MIMIC-CXR-JPG 2.0.0 (metadata tables and `files/`); required unless cxr.enabled is false."""
    mimic_iv_version: str = "auto"
    """`auto`, `2.2`, `3.1` or `1.0`."""
    allow_unverified_version: bool = False
    """Accept an unknown or unverified release (disables the exact-count checks)."""
    cohort: CohortConfig = field(default_factory=CohortConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    cxr: CxrConfig = field(default_factory=CxrConfig)
    splits: SplitsConfig = field(default_factory=SplitsConfig)
    build: BuildOptions = field(default_factory=BuildOptions)

    def __post_init__(self) -> None:
        if self.mimic_iv_version not in {"auto", "2.2", "3.1", "1.0"}:
            raise ConfigError(
                f"mimic_iv_version must be auto, 2.2, 3.1 or 1.0, not {self.mimic_iv_version!r}"
            )
        if self.cohort.min_los_hours < 48:
            raise ConfigError("cohort.min_los_hours must be at least 48 (the window length)")
        if not 224 <= self.cxr.image_size <= 1024:
            raise ConfigError(f"cxr.image_size must lie in [224, 1024], not {self.cxr.image_size}")
        if self.cxr.lookback_hours < 0:
            raise ConfigError("cxr.lookback_hours must be >= 0")
        if self.cxr.enabled and self.mimic_cxr is None:
            raise ConfigError(
                "a MIMIC-CXR-JPG root is required: pass --mimic-cxr DIR, or --no-cxr for EHR only"
            )
        if self.build.chunk_mib < 1:
            raise ConfigError("build.chunk_mib must be >= 1")
        unknown_views = set(self.cxr.views) - {"AP", "PA"}
        if unknown_views or not self.cxr.views:
            raise ConfigError(f"cxr.views must be a non-empty subset of AP, PA; got {list(self.cxr.views)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuildConfig:
        """Build from a nested dict (TOML layout); unknown keys and values of the wrong type raise `ConfigError`."""
        return _from_dict(cls, data)

    @classmethod
    def from_toml(cls, path: Path | None = None, **overrides: Any) -> BuildConfig:
        """Read a TOML file and apply `overrides` (dotted keys such as `cxr.enabled`, or top-level keys)."""
        data: dict[str, Any] = {}
        if path is not None:
            try:
                data = tomllib.loads(Path(path).read_text())
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
                raise ConfigError(f"{path}: cannot read the build configuration ({error})") from None
        for key, value in overrides.items():
            if value is None:
                continue
            section, _, name = key.rpartition(".")
            target = data
            if section:
                target = data.setdefault(section, {})
                if not isinstance(target, dict):
                    raise ConfigError(f"build configuration: {section} must be a table, got {target!r}")
            target[name] = value
        return cls.from_dict(data)

    def resolved(self) -> dict[str, Any]:
        """The fully resolved configuration as plain JSON data (paths as strings)."""
        return _to_plain(self)

    def output_config(self) -> dict[str, Any]:
        """The part of the configuration that determines the dataset bytes (paths and execution omitted)."""
        plain = self.resolved()
        for key in ("mimic_iv", "mimic_cxr", "out", "build"):
            plain.pop(key)
        plain["cxr"].pop("workers")
        return plain


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Every key and value checked against the dataclass fields (`typed_toml`); views upper-cased."""
    cxr = data.get("cxr")
    if isinstance(cxr, dict) and isinstance(cxr.get("views"), list | tuple):
        views = cxr["views"]
        data = {**data, "cxr": {**cxr, "views": [v.upper() if isinstance(v, str) else v for v in views]}}
    try:
        return load_dataclass(cls, data)
    except ConfigValueError as error:
        raise ConfigError(f"build configuration: {error}") from None


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_to_plain(item) for item in value]
    return value
