"""Typed, validated settings loaded from ``params.yaml``.

This module is the only reader of parameters. ``dvc exp run`` composes ``params.yaml`` from the
Hydra groups in ``conf/``; every stage calls :func:`load_settings` and receives frozen pydantic
models. A wrong type, a value out of range or an unknown key fails here, at start, with the
dotted key named, instead of deep inside a stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from omegaconf import OmegaConf
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Shape3D = tuple[PositiveInt, PositiveInt, PositiveInt]
Spacing3D = tuple[PositiveFloat, PositiveFloat, PositiveFloat]

AXIS_CODE_PAIRS = ("LR", "PA", "IS")


class SettingsError(ValueError):
    """A parameter file that cannot be turned into valid settings."""


class Strict(BaseModel):
    """Base for every settings block: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------
# cohort: the embedded phantom generator
# --------------------------------------------------------------------------------------------
class SiteSettings(Strict):
    """One simulated scanner/site: how its images look and who it scans."""

    voxel_size: Spacing3D = (2.0, 2.0, 2.0)
    orientation: str = "RAS"
    dtype: Literal["uint8", "int16", "float32"] = "int16"
    compressed: bool = True
    gm_wm_contrast: PositiveFloat = 1.0
    intensity_scale: PositiveFloat = 1000.0
    bias_field: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    noise_std: Annotated[float, Field(ge=0.0, le=1.0)] = 0.02
    blur_fwhm_mm: Annotated[float, Field(ge=0.0, le=20.0)] = 0.0
    age_mean: Annotated[float, Field(ge=20.0, le=90.0)] = 60.0
    age_sd: PositiveFloat = 12.0
    patient_fraction: Fraction = 0.5

    @field_validator("orientation")
    @classmethod
    def _orientation_is_axis_codes(cls, value: str) -> str:
        code = value.upper()
        axes = [i for c in code for i, pair in enumerate(AXIS_CODE_PAIRS) if c in pair]
        if len(code) != 3 or sorted(axes) != [0, 1, 2]:
            raise ValueError(
                f"orientation {value!r} is not three axis codes, one of each of "
                "L/R, P/A, I/S (e.g. 'RAS', 'LPS', 'PSR')"
            )
        return code


class CohortDatasetSettings(Strict):
    """One BIDS dataset of the phantom cohort."""

    role: Literal["pool", "downstream"]
    disease: Literal["none", "AD", "PD"] = "none"
    n_subjects: PositiveInt
    sites: list[str] = Field(min_length=1)
    age_range: tuple[float, float] = (20.0, 90.0)

    @model_validator(mode="after")
    def _check(self) -> CohortDatasetSettings:
        lo, hi = self.age_range
        if not 18.0 <= lo < hi <= 100.0:
            raise ValueError(f"age_range {self.age_range} must satisfy 18 <= low < high <= 100")
        if self.role == "pool" and self.disease != "none":
            raise ValueError("a pool dataset holds healthy subjects only (disease: none)")
        return self


class CohortSettings(Strict):
    seed: NonNegativeInt = 0
    out_dir: str = "data/raw"
    truth_dir: str = "data/phantom_truth"
    report_dir: str = "reports/cohort"
    template_resolution_mm: Literal[1, 2] = 2
    atrophy_scale: PositiveFloat = 1.0
    workers: PositiveInt = 2
    sites: dict[str, SiteSettings] = Field(min_length=1)
    datasets: dict[str, CohortDatasetSettings] = Field(min_length=1)

    @model_validator(mode="after")
    def _sites_exist(self) -> CohortSettings:
        for name, ds in self.datasets.items():
            unknown = sorted(set(ds.sites) - set(self.sites))
            if unknown:
                raise ValueError(
                    f"datasets.{name}.sites names unknown site(s) {unknown}; "
                    f"known sites: {sorted(self.sites)}"
                )
        return self


# --------------------------------------------------------------------------------------------
# data: ingest, preprocessing, splits, augmentation
# --------------------------------------------------------------------------------------------
class ColumnMap(Strict):
    """Names of the columns in a dataset's participants table (or CSV manifest)."""

    participant_id: str = "participant_id"
    age: str | None = "age"
    sex: str | None = "sex"
    diagnosis: str | None = "diagnosis"
    site: str | None = "site"
    path: str | None = None  # CSV manifests only: image path column


class SourceDatasetSettings(Strict):
    """One input dataset for ``preprocess``: a BIDS folder or a CSV manifest."""

    format: Literal["bids", "csv"] = "bids"
    path: str
    role: Literal["pool", "downstream"]
    columns: ColumnMap = ColumnMap()
    default_site: str | None = None  # used when the table has no site column
    diagnosis_map: dict[str, str] = Field(default_factory=dict)  # e.g. {"Control": "CN"}


class PreprocessSettings(Strict):
    spacing: Spacing3D = (4.0, 4.0, 4.0)
    shape: Shape3D = (40, 48, 40)
    registration: bool = True
    bias_correction: bool = False
    brain_mask: bool = True
    normalisation: Literal["zscore", "percentile"] = "percentile"
    workers: PositiveInt = 2
    min_template_correlation: Fraction = 0.5


class SplitSettings(Strict):
    seed: NonNegativeInt = 0
    train: Fraction = 0.6
    val: Fraction = 0.2
    test: Fraction = 0.2
    ood_sites: list[str] = Field(default_factory=list)
    ood_datasets: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitSettings:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1, got {total:.4f}")
        return self


class AugmentSettings(Strict):
    enabled: bool = True
    flip_prob: Fraction = 0.5
    affine_prob: Fraction = 0.3
    rotate_deg: Annotated[float, Field(ge=0.0, le=45.0)] = 5.0
    scale: Annotated[float, Field(ge=0.0, le=0.5)] = 0.05
    intensity_prob: Fraction = 0.3
    bias_field_prob: Fraction = 0.2
    noise_prob: Fraction = 0.2
    noise_std: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05


class DataSettings(Strict):
    name: str
    sex_codes: dict[Literal["M", "F"], list[str]] = Field(
        default_factory=lambda: {
            "M": ["M", "m", "male", "Male", "MALE", "1"],
            "F": ["F", "f", "female", "Female", "FEMALE", "2", "0"],
        }
    )
    datasets: dict[str, SourceDatasetSettings] = Field(min_length=1)
    preprocess: PreprocessSettings = PreprocessSettings()
    splits: SplitSettings = SplitSettings()
    augment: AugmentSettings = AugmentSettings()
    processed_dir: str = "data/processed"
    qc_dir: str = "reports/qc"

    @model_validator(mode="after")
    def _ood_datasets_exist(self) -> DataSettings:
        unknown = sorted(set(self.splits.ood_datasets) - set(self.datasets))
        if unknown:
            raise ValueError(
                f"splits.ood_datasets names unknown dataset(s) {unknown}; "
                f"known datasets: {sorted(self.datasets)}"
            )
        return self


# --------------------------------------------------------------------------------------------
# tasks
# --------------------------------------------------------------------------------------------
class TaskSettings(Strict):
    """A downstream task, declared in config (DESIGN.md, Tasks)."""

    kind: Literal["binary", "regression"]
    target: Literal["diagnosis", "sex", "age"]
    positive: str | None = None
    negative: str | None = None
    datasets: list[str] = Field(min_length=1)
    subset: dict[str, list[str]] = Field(default_factory=dict)  # e.g. {"diagnosis": ["CN"]}

    @model_validator(mode="after")
    def _labels_match_kind(self) -> TaskSettings:
        if self.kind == "binary" and (self.positive is None or self.negative is None):
            raise ValueError("a binary task needs both 'positive' and 'negative' labels")
        if self.kind == "regression" and self.target != "age":
            raise ValueError("regression tasks support target 'age' only")
        return self


# --------------------------------------------------------------------------------------------
# model, pretrain, finetune, evaluate
# --------------------------------------------------------------------------------------------
class ModelSettings(Strict):
    """A backbone from the registry in ``neurotransfer.models``; ``options`` go to its builder."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class PretrainSettings(Strict):
    source: Literal["scratch", "imagenet", "kinetics", "synthetic", "ssl"] = "scratch"
    weights_path: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class FinetuneSettings(Strict):
    mode: Literal["full", "linear_probe"] = "full"
    max_epochs: PositiveInt = 10
    batch_size: PositiveInt = 8
    lr: PositiveFloat = 1e-3
    head_lr: PositiveFloat | None = None
    weight_decay: Annotated[float, Field(ge=0.0)] = 1e-2
    warmup_epochs: NonNegativeInt = 1
    layer_decay: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    early_stopping_patience: NonNegativeInt = 5
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed"] = "auto"
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: PositiveInt | Literal["auto"] = 1
    num_workers: NonNegativeInt = 0
    seed: NonNegativeInt = 0
    deterministic: bool = True


class EvaluateSettings(Strict):
    bootstrap_samples: PositiveInt = 1000
    ci_level: Annotated[float, Field(gt=0.5, lt=1.0)] = 0.95
    seed: NonNegativeInt = 0
    site_probe_folds: Annotated[int, Field(ge=2)] = 5
    ridge_baseline: bool = True


class Settings(Strict):
    seed: NonNegativeInt = 0
    cohort: CohortSettings | None = None
    data: DataSettings
    tasks: dict[str, TaskSettings] = Field(min_length=1)
    model: ModelSettings
    pretrain: PretrainSettings = PretrainSettings()
    finetune: FinetuneSettings = FinetuneSettings()
    evaluate: EvaluateSettings = EvaluateSettings()
    profile: Literal["cpu", "gpu"] = "cpu"

    @model_validator(mode="after")
    def _tasks_use_known_datasets(self) -> Settings:
        for name, task in self.tasks.items():
            unknown = sorted(set(task.datasets) - set(self.data.datasets))
            if unknown:
                raise ValueError(
                    f"tasks.{name}.datasets names dataset(s) {unknown} that data "
                    f"{self.data.name!r} does not have; it has {sorted(self.data.datasets)}"
                )
        return self


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid settings"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not a setting; check its spelling)"
        got = repr(e.get("input"))
        if len(got) > 80:
            got = got[:77] + "..."
        lines.append(f"  {key}: {msg} (got {got})")
    return "\n".join(lines)


def settings_from_dict(raw: dict[str, Any], source: str = "<params>") -> Settings:
    """Validate a plain parameter mapping; raise :class:`SettingsError` naming each bad key."""
    try:
        return Settings.model_validate(raw)
    except ValidationError as err:
        raise SettingsError(_format_errors(err, source)) from None


def load_settings(path: str | Path = "params.yaml") -> Settings:
    """Read ``params.yaml`` (resolving OmegaConf interpolations) into validated settings."""
    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"{path}: parameter file not found (run from the repository root)")
    try:
        conf = OmegaConf.load(path)
        raw = OmegaConf.to_container(conf, resolve=True)
    except Exception as exc:  # omegaconf raises several unrelated types
        raise SettingsError(f"{path}: cannot read parameters: {exc}") from exc
    if not isinstance(raw, dict):
        raise SettingsError(f"{path}: expected a mapping at the top level")
    return settings_from_dict(raw, source=str(path))
