"""Typed, validated settings loaded from ``params.yaml``.

This module is the only reader of parameters. ``dvc exp run`` composes ``params.yaml`` from the
Hydra groups in ``conf/``; every stage calls :func:`load_settings` and receives frozen pydantic
models. A wrong type, a value out of range or an unknown key fails here, at start, with the
dotted key named, instead of deep inside a stage.

Loading imports no torch (a stage that needs none starts in about a second) except where the
rule lives in ``neurotransfer.models``, the layer below, which is imported then: the external
weights a backbone declares (for ``pretrain.source`` imagenet / kinetics), and the options of
a backbone that :data:`BACKBONE_DEFAULTS` does not copy. This module never imports
``neurotransfer.pretrain``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from omegaconf import OmegaConf
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from neurotransfer import paths
from neurotransfer.backbone_rules import resnet18_encoder_problem, vit_b_16_problem
from neurotransfer.errors import SettingsError

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
OpenFraction = Annotated[float, Field(gt=0.0, lt=1.0)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]
Shape3D = tuple[PositiveInt, PositiveInt, PositiveInt]
Spacing3D = tuple[PositiveFloat, PositiveFloat, PositiveFloat]

AXIS_CODE_PAIRS = ("LR", "PA", "IS")


class Strict(BaseModel):
    """Base for every settings block: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------
# cohort: the embedded phantom generator
# --------------------------------------------------------------------------------------------
class SiteSettings(Strict):
    """One simulated scanner/site: how its images look and who it scans."""

    # Voxel edges along the world L-R, P-A, I-S axes (whatever the storage orientation); above
    # 8 mm a brain would be only ~20 voxels across (not a T1 scan), below 0.5 mm one scan would
    # be hundreds of megabytes simulated from a 1-2 mm template.
    voxel_size: tuple[
        Annotated[float, Field(ge=0.5, le=8.0)],
        Annotated[float, Field(ge=0.5, le=8.0)],
        Annotated[float, Field(ge=0.5, le=8.0)],
    ] = (2.0, 2.0, 2.0)
    orientation: str = "RAS"
    dtype: Literal["uint8", "int16", "float32"] = "int16"
    compressed: bool = True
    # scales the WM-GM intensity gap; at 2 grey matter is as dark as CSF
    gm_wm_contrast: Annotated[float, Field(gt=0.0, le=2.0)] = 1.0
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

    @model_validator(mode="after")
    def _int16_range(self) -> SiteSettings:
        # simulated intensities stay below ~1.5 (WM 0.85 with bias and noise) before scaling
        if self.dtype == "int16" and self.intensity_scale > 20000:
            raise ValueError(
                f"intensity_scale {self.intensity_scale:g} would overflow int16 storage "
                "(keep it at most 20000, or use dtype float32)"
            )
        return self


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
    """The phantom generator (``neurotransfer.cohort``): where it writes and what it simulates."""

    seed: NonNegativeInt = 0
    out_dir: str = paths.PHANTOM_RAW_DIR
    truth_dir: str = paths.PHANTOM_TRUTH_DIR
    report_dir: str = paths.COHORT_REPORT_DIR
    template_resolution_mm: Literal[1, 2] = 2
    atrophy_scale: PositiveFloat = 1.0
    workers: PositiveInt = 2
    sites: dict[str, SiteSettings] = Field(min_length=1)
    datasets: dict[str, CohortDatasetSettings] = Field(min_length=1)

    @model_validator(mode="after")
    def _sites_exist(self) -> CohortSettings:
        # Names become BIDS labels (sub-<dataset>0001) and file names (site-<name>.png).
        for kind, names in (("datasets", self.datasets), ("sites", self.sites)):
            bad = sorted(n for n in names if not n.isascii() or not n.isalnum())
            if bad:
                raise ValueError(f"{kind} names must be letters and digits only, got {bad}")
        for name, ds in self.datasets.items():
            if ds.n_subjects < len(ds.sites):
                raise ValueError(
                    f"datasets.{name}.n_subjects ({ds.n_subjects}) is fewer than its "
                    f"{len(ds.sites)} sites; every site needs at least one subject"
                )
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


SexCodes = dict[Literal["M", "F"], list[str]]


def safe_file_name_problem(name: str) -> str:
    """Why `name` cannot be used as a file or folder name of the cache ('' when it can).

    Dataset names and scan ids become ``<processed_dir>/<dataset>/<scan_id>.npy``: only letters,
    digits, ``.``, ``_`` and ``-``, no leading dot (hidden files, ``..``) and no ``..`` anywhere,
    so no id can climb out of the output folder or hide its file.
    """
    if not name:
        return "is empty"
    if len(name) > 200:
        return f"is {len(name)} characters long (at most 200)"
    bad = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c in "._-"))})
    if bad:
        return f"contains {''.join(bad)!r} (allowed: letters, digits, '.', '_', '-')"
    if name.startswith("."):
        return "starts with '.'"
    if ".." in name:
        return "contains '..'"
    return ""


def _check_sex_codes(codes: SexCodes) -> SexCodes:
    shared = sorted(set(codes.get("M", [])) & set(codes.get("F", [])))
    if shared:
        raise ValueError(f"sex code(s) {shared} are listed under both M and F")
    return codes


class SourceDatasetSettings(Strict):
    """One input dataset for ``preprocess``: a BIDS folder or a CSV manifest.

    ``path`` is relative to the repository root (or absolute). For ``csv`` it names the CSV file,
    whose ``columns.path`` column holds image paths relative to the CSV's folder.
    """

    format: Literal["bids", "csv"] = "bids"
    path: str = Field(min_length=1)
    role: Literal["pool", "downstream"]
    columns: ColumnMap = ColumnMap()
    default_site: str | None = None  # used when the table has no site column
    diagnosis_map: dict[str, str] = Field(default_factory=dict)  # e.g. {"Control": "CN"}
    # Codes of this dataset's sex column when they differ from data.sex_codes (e.g. 1=F, 2=M).
    sex_codes: SexCodes | None = None
    # Prepended to every participant id: subject ids identify people across datasets (the
    # pool/test disjointness check), so datasets whose ids merely coincide need a prefix.
    id_prefix: str = ""
    # A scan reached through a symlink whose target lies outside the dataset's folder (the BIDS
    # folder, or the CSV file's folder) is excluded unless this is true; each one followed is
    # reported (issue `external_symlink`). Symlinks that stay inside the folder (DataLad /
    # git-annex) are always fine.
    follow_external_symlinks: bool = False

    @model_validator(mode="after")
    def _check(self) -> SourceDatasetSettings:
        if self.format == "csv" and not self.columns.path:
            raise ValueError("a csv dataset needs columns.path (the image path column)")
        if self.id_prefix and (problem := safe_file_name_problem(self.id_prefix)):
            raise ValueError(f"id_prefix {self.id_prefix!r} {problem}")
        if self.sex_codes is not None:
            _check_sex_codes(self.sex_codes)
        return self


class PreprocessSettings(Strict):
    """Every scan is brought onto one RAS grid of ``shape`` voxels at ``spacing`` mm, centred on
    the MNI152 brain, then cached as fp16."""

    spacing: Spacing3D = (4.0, 4.0, 4.0)
    shape: Shape3D = (40, 48, 40)
    registration: bool = True  # affine to nilearn's MNI152; off: scans are already in MNI mm
    registration_sampling: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    registration_iterations: PositiveInt = 60  # per stage: similarity at 8 mm, at 4 mm, affine
    bias_correction: bool = False  # N4 (SimpleITK) before registration
    brain_mask: bool = True  # multiply by nilearn's MNI152 brain mask
    normalisation: Literal["zscore", "percentile"] = "percentile"
    workers: PositiveInt = 2
    # Scans whose in-mask correlation with the template falls below this are QC outliers:
    # flagged in the QC table and metrics (not excluded: the QC montages let a person decide).
    # IXI-HH at 4 mm: registered 0.40-0.60, unregistered 0.10-0.21, a wrong affine fit 0.22.
    min_template_correlation: Fraction = 0.35
    max_voxel_size_mm: PositiveFloat = 10.0  # larger voxels are refused as absurd


class SplitSettings(Strict):
    """How downstream subjects are split (``data.splits``).

    ``mode: single`` deals them into one train / val / test split by the fractions.
    ``mode: kfold`` deals them into ``k`` folds instead (the fractions are then unused): model f
    tests on fold f, validates on fold f + 1 (mod k) and trains on the rest, so every subject is
    tested exactly once and comparisons are paired over all of them. Either way held-out
    sites/datasets are ``ood_test`` (for every fold) and the dealing is stratified by dataset,
    site, diagnosis and sex, and deterministic given ``seed``.
    """

    seed: NonNegativeInt = 0
    mode: Literal["single", "kfold"] = "single"
    # Three folds is the least that leaves a training fold beside the test and validation folds.
    k: Annotated[int, Field(ge=3)] = 5
    train: Fraction = 0.6
    val: Fraction = 0.2
    test: Fraction = 0.2
    ood_sites: list[str] = Field(default_factory=list)
    ood_datasets: list[str] = Field(default_factory=list)

    def folds(self) -> list[int | None]:
        """The folds a task is trained and scored in: ``[None]`` (the one split) or 0 .. k-1."""
        return list(range(self.k)) if self.mode == "kfold" else [None]

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
    noise_std: Fraction = 0.05  # of the [0, 1] intensity range the volumes are normalised to


class LabelBounds(Strict):
    """Plausible range of each numeric label; a value outside it is reported (issue
    ``implausible_age``) and treated as missing, the scan kept for tasks that do not need it."""

    # Years, inclusive. 0 keeps newborn cohorts; above 120 an age is all but surely a typo or
    # a value in months. Negative ages are never real: a sign or column mix-up.
    age_min: float = 0.0
    age_max: float = 120.0

    @model_validator(mode="after")
    def _min_below_max(self) -> LabelBounds:
        if not self.age_min < self.age_max:
            raise ValueError(f"age_min {self.age_min:g} must be below age_max {self.age_max:g}")
        return self


class DataSettings(Strict):
    name: str
    sex_codes: dict[Literal["M", "F"], list[str]] = Field(
        default_factory=lambda: {
            "M": ["M", "m", "male", "Male", "MALE", "1"],
            "F": ["F", "f", "female", "Female", "FEMALE", "2", "0"],
        }
    )
    datasets: dict[str, SourceDatasetSettings] = Field(min_length=1)
    label_bounds: LabelBounds = LabelBounds()
    preprocess: PreprocessSettings = PreprocessSettings()
    splits: SplitSettings = SplitSettings()
    augment: AugmentSettings = AugmentSettings()
    processed_dir: str = paths.PROCESSED_DIR
    qc_dir: str = paths.QC_DIR

    @field_validator("sex_codes")
    @classmethod
    def _sex_codes_disjoint(cls, value: SexCodes) -> SexCodes:
        return _check_sex_codes(value)

    @field_validator("datasets")
    @classmethod
    def _dataset_names_are_folder_names(
        cls, value: dict[str, SourceDatasetSettings]
    ) -> dict[str, SourceDatasetSettings]:
        # Each name is a folder of processed_dir: it must not climb out of it.
        for name in value:
            if problem := safe_file_name_problem(name):
                raise ValueError(f"dataset name {name!r} {problem}")
        return value

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
        if self.kind == "binary" and self.positive == self.negative:
            raise ValueError(f"positive and negative are both {self.positive!r}")
        if self.kind == "binary" and self.target == "sex":
            # ingest maps every sex code (data.sex_codes) to M or F: no other label exists
            wrong = [
                f"{key} {label!r}"
                for key, label in (("positive", self.positive), ("negative", self.negative))
                if label not in ("M", "F")
            ]
            if wrong:
                raise ValueError(
                    f"{', '.join(wrong)}: sex labels are 'M' and 'F' (data.sex_codes maps each "
                    "dataset's codes to them)"
                )
        return self


# --------------------------------------------------------------------------------------------
# synthesize: conditional 3D latent diffusion (the brain LDM of Pinaya et al.)
# --------------------------------------------------------------------------------------------
class AutoencoderNetSettings(Strict):
    """Architecture of MONAI's ``AutoencoderKL`` (the arguments of the same names)."""

    channels: list[PositiveInt] = Field(default_factory=lambda: [16, 32, 32], min_length=1)
    attention_levels: list[bool] = Field(default_factory=lambda: [False, False, False])
    num_res_blocks: PositiveInt = 1
    latent_channels: PositiveInt = 3
    norm_num_groups: PositiveInt = 8
    with_nonlocal_attn: bool = False

    @model_validator(mode="after")
    def _check(self) -> AutoencoderNetSettings:
        _check_levels(self.channels, self.attention_levels, self.norm_num_groups)
        return self

    @property
    def downsample_factor(self) -> int:
        """How many image voxels one latent voxel spans along each axis."""
        return 2 ** (len(self.channels) - 1)


class DiffusionNetSettings(Strict):
    """Architecture of MONAI's ``DiffusionModelUNet``; its conditioning inputs are fixed (four
    covariates, concatenated as channels and attended to, as in the brain LDM bundle)."""

    channels: list[PositiveInt] = Field(default_factory=lambda: [32, 64], min_length=1)
    attention_levels: list[bool] = Field(default_factory=lambda: [False, True])
    num_head_channels: list[NonNegativeInt] = Field(default_factory=lambda: [0, 32])
    num_res_blocks: PositiveInt = 1
    norm_num_groups: PositiveInt = 8
    resblock_updown: bool = True
    transformer_num_layers: PositiveInt = 1
    upcast_attention: bool = True

    @model_validator(mode="after")
    def _check(self) -> DiffusionNetSettings:
        _check_levels(self.channels, self.attention_levels, self.norm_num_groups)
        if len(self.num_head_channels) != len(self.channels):
            raise ValueError("num_head_channels needs one entry per level of channels")
        for level, (width, heads, attn) in enumerate(
            zip(self.channels, self.num_head_channels, self.attention_levels, strict=True)
        ):
            if attn and (heads == 0 or width % heads):
                raise ValueError(
                    f"level {level}: num_head_channels {heads} must divide channels {width}"
                )
        return self

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channels) - 1)


def _check_levels(channels: list[int], attention: list[bool], groups: int) -> None:
    if len(attention) != len(channels):
        raise ValueError(
            f"attention_levels has {len(attention)} entries, channels has {len(channels)}"
        )
    bad = [c for c in channels if c % groups]
    if bad:
        raise ValueError(f"channels {bad} are not multiples of norm_num_groups {groups}")


class NoiseScheduleSettings(Strict):
    """The DDPM/DDIM noise schedule (the bundle's values by default)."""

    num_train_timesteps: PositiveInt = 1000
    schedule: Literal["linear_beta", "scaled_linear_beta"] = "scaled_linear_beta"
    beta_start: PositiveFloat = 0.0015
    beta_end: PositiveFloat = 0.0205

    @model_validator(mode="after")
    def _check(self) -> NoiseScheduleSettings:
        if not self.beta_start < self.beta_end < 1.0:
            raise ValueError("need beta_start < beta_end < 1")
        return self


class AutoencoderTrainSettings(Strict):
    net: AutoencoderNetSettings = AutoencoderNetSettings()
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 8
    lr: PositiveFloat = 1e-3
    patch_size: Shape3D | None = None  # random crops of this size; None: whole volumes
    kl_weight: NonNegativeFloat = 1e-6
    adversarial_weight: NonNegativeFloat = 0.0  # 0: no patch discriminator
    adversarial_start_epoch: NonNegativeInt = 0
    discriminator_channels: PositiveInt = 32
    discriminator_layers: PositiveInt = 3


class DiffusionTrainSettings(Strict):
    net: DiffusionNetSettings = DiffusionNetSettings()
    schedule: NoiseScheduleSettings = NoiseScheduleSettings()
    epochs: PositiveInt = 50
    batch_size: PositiveInt = 16
    lr: PositiveFloat = 1e-3
    # Fraction of training steps whose covariates are replaced by the "unconditional" value, so
    # that sampling can use classifier-free guidance (0: never, as the bundle was trained).
    condition_dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    # Classifier-free guidance weight used when sampling from this model (None: unguided).
    guidance_scale: Annotated[float, Field(ge=1.0)] | None = None

    @model_validator(mode="after")
    def _guidance_needs_dropout(self) -> DiffusionTrainSettings:
        if self.guidance_scale is not None and self.condition_dropout == 0:
            raise ValueError("guidance_scale needs a model trained with condition_dropout > 0")
        return self


class CovariateRow(Strict):
    """Conditioning covariates requested in raw units, and how many samples to draw at them."""

    sex: Literal["M", "F"]
    age: Annotated[float, Field(ge=0.0, le=120.0)]
    csf_volume_ml: NonNegativeFloat
    brain_volume_ml: PositiveFloat
    count: PositiveInt = 1


class SamplingSettings(Strict):
    n_samples: PositiveInt = 200  # drawn from the pool's covariates when `covariates` is empty
    ddim_steps: PositiveInt = 20
    batch_size: PositiveInt = 50
    covariate_jitter: Annotated[float, Field(ge=0.0, le=0.5)] = 0.05
    covariates: list[CovariateRow] = Field(default_factory=list)


class SynthQualitySettings(Strict):
    holdout_fraction: OpenFraction = 0.2
    foreground_threshold: OpenFraction = 0.05
    csf_threshold: OpenFraction | None = None  # None: Otsu on pool
    ms_ssim_pairs: PositiveInt = 100
    ms_ssim_kernel_size: Annotated[int, Field(ge=3, le=11)] = 7
    memorisation_quantile: Fraction = 0.0
    memorisation_downsample: PositiveInt = 1
    feature_batch_size: PositiveInt = 16
    montage_columns: Annotated[int, Field(ge=2, le=16)] = 8


class PretrainedLDMSettings(Strict):
    """The MONAI model-zoo brain LDM (or weights in its layout) read from local files."""

    autoencoder_path: str
    unet_path: str
    layout: Literal["auto", "generative", "monai"] = "auto"
    autoencoder: AutoencoderNetSettings
    diffusion: DiffusionNetSettings
    schedule: NoiseScheduleSettings = NoiseScheduleSettings()
    image_shape: Shape3D = (160, 224, 160)
    spacing: Spacing3D = (1.0, 1.0, 1.0)
    scale_factor: PositiveFloat = 1.0

    @model_validator(mode="after")
    def _latent_grid(self) -> PretrainedLDMSettings:
        factor = self.autoencoder.downsample_factor * self.diffusion.downsample_factor
        if any(s % factor for s in self.image_shape):
            raise ValueError(f"image_shape {self.image_shape} must be divisible by {factor}")
        return self


class SynthesizeSettings(Strict):
    source: Literal["train", "pretrained"] = "train"
    # needed: train and sample only when pretrain.source is synthetic (the only reader of the
    # synthetic pool); other sources get a note in each output. always: every run.
    when: Literal["needed", "always"] = "needed"
    seed: NonNegativeInt = 0
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed"] = "auto"
    deterministic: bool = True
    num_workers: NonNegativeInt = 0  # autoencoder data loading processes
    autoencoder: AutoencoderTrainSettings = AutoencoderTrainSettings()
    diffusion: DiffusionTrainSettings = DiffusionTrainSettings()
    sampling: SamplingSettings = SamplingSettings()
    quality: SynthQualitySettings = SynthQualitySettings()
    pretrained: PretrainedLDMSettings | None = None
    model_dir: str = paths.LDM_DIR
    out_dir: str = paths.SYNTHETIC_DIR
    report_dir: str = paths.SYNTHETIC_REPORT_DIR
    metrics_path: str = paths.SYNTHESIZE_METRICS
    log_dir: str = paths.SYNTHESIZE_LOG_DIR

    @model_validator(mode="after")
    def _pretrained_needs_files(self) -> SynthesizeSettings:
        if self.source == "pretrained" and self.pretrained is None:
            raise ValueError("source 'pretrained' needs a 'pretrained' block (weights paths)")
        return self


# --------------------------------------------------------------------------------------------
# model, pretrain, finetune, evaluate
# --------------------------------------------------------------------------------------------
class ModelSettings(Strict):
    """A backbone from the registry in ``neurotransfer.models``; ``options`` go to its builder."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)


# The shipped backbones' options with their defaults, as their builders in
# ``neurotransfer.models`` declare them. Copied here so that the settings can check these models
# against the volume shape when they load, without importing torch (~10 s); a backbone added
# to the registry since needs no entry (backbone_fit_problem asks the registry for it).
# tests/test_config.py fails when an entry and the registry disagree, and when a rule below and
# a builder disagree.
BACKBONE_DEFAULTS: dict[str, dict[str, Any]] = {
    "densenet121": {
        "init_features": 64,
        "growth_rate": 32,
        "block_config": (6, 12, 24, 16),
        "bn_size": 4,
        "dropout": 0.0,
    },
    "mvit_v2_s": {
        "embed_dim": 96,
        "depths": (1, 2, 11, 2),
        "num_heads": 1,
        "kv_stride": 8,
        "stochastic_depth_prob": 0.2,
    },
    "r2plus1d_18": {"layers": (2, 2, 2, 2)},
    "r3d_18": {"layers": (2, 2, 2, 2)},
    "sfcn": {"channels": (32, 64, 128, 256, 256, 64), "dropout": 0.5},
    "slice2d": {
        "axis": 0,
        "encoder": "resnet18",
        "cnn_channels": (32, 64, 128, 256, 256),
        "embed_dim": 32,
        "position_embedding": True,
        "pooling": "mean",
        "attention_heads": 1,
        "dropout": 0.0,
    },
    "swin3d_t": {
        "patch_size": (2, 4, 4),
        "embed_dim": 96,
        "depths": (2, 2, 6, 2),
        "num_heads": (3, 6, 12, 24),
        "window_size": (8, 7, 7),
        "stochastic_depth_prob": 0.1,
    },
    "vit3d": {
        "patch_size": 16,
        "hidden_size": 768,
        "mlp_dim": 3072,
        "num_layers": 12,
        "num_heads": 12,
        "dropout": 0.0,
        "pooling": "cls",
        "qkv_bias": False,
    },
}


def _ints(value: Any) -> tuple[int, ...] | None:
    """An int or a list of ints as a tuple; None for anything else (the registry reports a
    badly typed option when it builds the model, with the option's declared type)."""
    items = value if isinstance(value, list | tuple) else [value]
    if not items or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        return None
    return tuple(items)


def backbone_fit_problem(name: str, options: dict[str, Any], shape: tuple[int, ...]) -> str:
    """Why backbone `name` with `options` cannot take volumes of `shape` ('' when it can).

    The rules of the builders in ``neurotransfer.models`` that need only the parameters: the
    name, the option names, the smallest volume each network's downsampling can take, patch
    sizes that tile the volume, and widths that the attention heads divide. The message names
    the parameter keys to change. r3d_18, r2plus1d_18, swin3d_t (padded to whole patches and
    windows) and slice2d's ResNet18 encoder take any volume size. A backbone that is not in
    :data:`BACKBONE_DEFAULTS` (one added to the registry since) is looked up in the registry,
    which imports torch, and its builder checks the shape when it builds.
    """
    defaults = BACKBONE_DEFAULTS.get(name)
    if defaults is None:
        defaults = _registered_backbone_defaults(name)
        if isinstance(defaults, str):
            return defaults
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        return (
            f"model.options: backbone {name!r} has no option(s) {unknown}; its options "
            f"(with defaults): {', '.join(f'{k}={v!r}' for k, v in defaults.items())}"
        )
    rule = _FIT_RULES.get(name)
    if rule is None:
        return ""
    where = f"data.preprocess.shape {tuple(shape)} does not fit model {name!r}"
    return rule({**defaults, **options}, tuple(shape), where)


def _registered_backbone_defaults(name: str) -> dict[str, Any] | str:
    """The options of a backbone the table above lacks, from the registry; or why not."""
    # Lazy on purpose: the registry imports torch, which settings for the shipped backbones
    # never need (every stage and `--help` load settings; tests/test_config.py guards it).
    from neurotransfer.models import available_backbones, backbone_options

    known = available_backbones()
    if name not in known:
        return f"model.name: unknown backbone {name!r}; known backbones: {known}"
    return backbone_options(name)


def _too_small(
    where: str, sides: Sequence[int], min_side: int, why: str, fix: str, which: str = "every side"
) -> str:
    small = [s for s in sides if s < min_side]
    if not small:
        return ""
    return f"{where}: {why}, so {which} must be at least {min_side} voxels (got {small}); {fix}"


def _divides_problem(width: str, width_value: int, heads: str, heads_value: int) -> str:
    if width_value % heads_value == 0:
        return ""
    return (
        f"model.options.{width} {width_value} is not divisible by "
        f"model.options.{heads} {heads_value}"
    )


def _sfcn_fit(opts: dict[str, Any], shape: tuple[int, ...], where: str) -> str:
    channels = _ints(opts["channels"])
    if not channels or len(channels) < 2:
        return ""
    pools = len(channels) - 1
    return _too_small(
        where,
        shape,
        2**pools,
        f"its {len(channels)} blocks (model.options.channels) max-pool by 2 {pools} times",
        "use larger volumes or fewer entries in model.options.channels",
    )


def _densenet121_fit(opts: dict[str, Any], shape: tuple[int, ...], where: str) -> str:
    blocks = _ints(opts["block_config"])
    if not blocks:
        return ""
    transitions = len(blocks) - 1
    # The stem (stride-2 conv, stride-2 max-pool, both padded) maps n to ceil(n / 4); each
    # transition then average-pools by 2 and needs 2 voxels to do so.
    return _too_small(
        where,
        shape,
        4 * 2**transitions - 3,
        f"its stem downsamples by 4 and its {transitions} transition layers "
        "(model.options.block_config) by 2 each",
        "use larger volumes or fewer dense blocks in model.options.block_config",
    )


def _vit3d_fit(opts: dict[str, Any], shape: tuple[int, ...], where: str) -> str:
    patch = _ints(opts["patch_size"])
    if patch is not None and len(patch) in (1, 3):
        patch = patch * 3 if len(patch) == 1 else patch
        bad = [axis for axis in range(3) if shape[axis] % patch[axis]]
        if bad:
            common = [p for p in range(1, min(shape) + 1) if all(s % p == 0 for s in shape)]
            return (
                f"{where}: model.options.patch_size {patch} does not divide it along axes "
                f"{bad}; a patch_size dividing every side is one of {common}, or give one "
                "per axis"
            )
    hidden, heads = _ints(opts["hidden_size"]), _ints(opts["num_heads"])
    if hidden and heads:
        return _divides_problem("hidden_size", hidden[0], "num_heads", heads[0])
    return ""


def _slice2d_fit(opts: dict[str, Any], shape: tuple[int, ...], where: str) -> str:
    axis, channels = opts["axis"], _ints(opts["cnn_channels"])
    if opts["encoder"] == "cnn" and axis in (0, 1, 2) and channels:
        slice_sides = [side for index, side in enumerate(shape) if index != axis]
        problem = _too_small(
            where,
            slice_sides,
            2 ** len(channels),
            f"slices along model.options.axis {axis} are {tuple(slice_sides)} and the 'cnn' "
            f"encoder max-pools them by 2 {len(channels)} times (model.options.cnn_channels)",
            "use larger volumes, another axis, or fewer entries in cnn_channels",
            which="both slice sides",
        )
        if problem:
            return problem
    dim, heads = _ints(opts["embed_dim"]), _ints(opts["attention_heads"])
    if opts["pooling"] == "attention" and dim and heads:
        return _divides_problem("embed_dim", dim[0], "attention_heads", heads[0])
    return ""


def _video_transformer_sizes(
    name: str, opts: dict[str, Any]
) -> tuple[tuple[int, ...], tuple[int, ...], int] | str:
    """``depths``, ``num_heads`` and ``embed_dim`` of swin3d_t / mvit_v2_s, or why they do not
    make a network ('' when a value is badly typed: the registry names that when it builds)."""
    depths, heads, dim = _ints(opts["depths"]), _ints(opts["num_heads"]), _ints(opts["embed_dim"])
    if depths is None or heads is None or dim is None:
        return ""
    if sum(depths) < 2:
        return (
            f"model.options.depths {depths} give {sum(depths)} block(s); torchvision's "
            f"{name} needs at least 2 in all"
        )
    return depths, heads, dim[0]


def _swin3d_t_fit(opts: dict[str, Any], shape: tuple[int, ...], where: str) -> str:
    sizes = _video_transformer_sizes("swin3d_t", opts)
    if isinstance(sizes, str):
        return sizes
    depths, heads, dim = sizes
    if len(depths) != len(heads):
        return (
            f"model.options.depths {depths} and num_heads {heads} must give one entry "
            "per stage each"
        )
    for stage, stage_heads in enumerate(heads):
        if (dim * 2**stage) % stage_heads:
            return (
                f"model.options.num_heads[{stage}] = {stage_heads} does not divide "
                f"stage {stage}'s width {dim * 2**stage} (embed_dim * 2**{stage})"
            )
    return ""


def _mvit_v2_s_fit(opts: dict[str, Any], shape: tuple[int, ...], where: str) -> str:
    sizes = _video_transformer_sizes("mvit_v2_s", opts)
    if isinstance(sizes, str):
        return sizes
    depths, heads, dim = sizes
    problem = _divides_problem("embed_dim", dim, "num_heads", heads[0])
    if problem:
        return problem
    # Patch stride 4 in H and W, then a query pooling by 2 at each later stage; D is padded.
    return _too_small(
        where,
        shape[1:],
        4 * 2 ** (len(depths) - 1),
        f"its patch stride 4 and {len(depths) - 1} query poolings by 2 "
        "(model.options.depths) apply to H and W (the last two sides)",
        "use larger volumes or fewer stages in model.options.depths",
        which="H and W",
    )


# Backbone -> its load-time rule: (options with defaults, volume shape, the message's start)
# -> the problem ('' when the volumes fit). r3d_18 and r2plus1d_18 take any size.
_FIT_RULES: dict[str, Callable[[dict[str, Any], tuple[int, ...], str], str]] = {
    "sfcn": _sfcn_fit,
    "densenet121": _densenet121_fit,
    "vit3d": _vit3d_fit,
    "slice2d": _slice2d_fit,
    "swin3d_t": _swin3d_t_fit,
    "mvit_v2_s": _mvit_v2_s_fit,
}


class SimCLRSettings(Strict):
    """SimCLR (Chen et al. 2020): NT-Xent between two 3D-augmented views of each volume."""

    temperature: PositiveFloat = 0.1
    projection_dim: PositiveInt = 64
    hidden_dim: PositiveInt = 128
    crop_scale: tuple[Fraction, Fraction] = (0.6, 1.0)  # side fraction of the random crop
    noise_std: NonNegativeFloat = 0.05


class MaskedSettings(Strict):
    """Masked reconstruction: hide cubes of ``patch_size`` voxels, reconstruct them."""

    mask_ratio: OpenFraction = 0.6
    patch_size: PositiveInt = 8


class ProbeSettings(Strict):
    """The cheap representation signal: ridge regression of age on frozen pool features."""

    val_fraction: OpenFraction = 0.25
    # Candidate penalties; leave-one-out CV on the fitting subjects picks one (RidgeCV), so a
    # representation is not judged by a penalty that suits another feature size.
    ridge_alphas: tuple[PositiveFloat, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0)


PretrainObjective = Literal["covariates", "simclr", "masked"]
# Where the backbone's first weights come from: its own initialisation (scratch), weights
# trained elsewhere that a backbone declares beside its builder (the external sources, see
# neurotransfer.models.Counterpart), or training here on synthetic or real pool volumes.
PretrainSource = Literal["scratch", "imagenet", "kinetics", "synthetic", "ssl"]
EXTERNAL_SOURCES = ("imagenet", "kinetics")
TRAINED_SOURCES = ("synthetic", "ssl")


# What the shipped backbones' model modules register as external counterparts (source ->
# options check): the torch-free copy the settings use, as BACKBONE_DEFAULTS is for their
# options (tests/test_config.py keeps both equal to the registry). A backbone added since is
# looked up in the registry, which imports torch.
SHIPPED_EXTERNAL: dict[str, dict[str, Callable[[Mapping[str, Any]], str] | None]] = {
    "densenet121": {"imagenet": None},
    "mvit_v2_s": {"kinetics": None},
    "r2plus1d_18": {"kinetics": None},
    "r3d_18": {"imagenet": None, "kinetics": None},
    "sfcn": {},
    "slice2d": {"imagenet": resnet18_encoder_problem},
    "swin3d_t": {"kinetics": None},
    "vit3d": {"imagenet": vit_b_16_problem},
}


def _no_counterpart(source: str, name: str, supported: list[str]) -> str:
    others = ", ".join(("scratch", *TRAINED_SOURCES))
    return (
        f"pretrain={source} has no weights for model {name!r}: it supports "
        f"{supported} (choose one of them with `-S model=<name>`, "
        f"or another pretrain source: {others})"
    )


def pretrain_source_problem(source: str, name: str, options: Mapping[str, Any]) -> str:
    """Why pretrain ``source`` cannot initialise backbone ``name`` with ``options`` ('' when it
    can), naming the parameters to change.

    ``scratch``, ``synthetic`` and ``ssl`` work with every backbone. An external source needs
    the backbone to declare a counterpart for it (its model module's ``external=``), whose
    options check then has the last word: read from :data:`SHIPPED_EXTERNAL` for the shipped
    backbones, from the model registry (importing torch) for any other.
    """
    if source not in EXTERNAL_SOURCES:
        return ""
    if name in SHIPPED_EXTERNAL:
        if source not in SHIPPED_EXTERNAL[name]:
            supported = sorted(n for n, sources in SHIPPED_EXTERNAL.items() if source in sources)
            return _no_counterpart(source, name, supported)
        check = SHIPPED_EXTERNAL[name][source]
        return "" if check is None else check({**BACKBONE_DEFAULTS[name], **options})
    # Lazy on purpose (torch): only a backbone the table lacks needs the registry.
    from neurotransfer.models import (
        available_backbones,
        backbone_counterparts,
        backbone_options,
        backbones_with_counterpart,
    )

    known = name in available_backbones()
    counterpart = backbone_counterparts(name).get(source) if known else None
    if counterpart is None:
        return _no_counterpart(source, name, backbones_with_counterpart(source))
    if counterpart.options_problem is None:
        return ""
    return counterpart.options_problem({**backbone_options(name), **options})


class PretrainSettings(Strict):
    source: PretrainSource = "scratch"
    # A local copy of the external (imagenet / kinetics) weights: safetensors or a weights-only
    # torch state dict. null: torchvision's hub cache, downloading when online.
    weights_path: str | None = None
    # torchvision weights enum member, e.g. IMAGENET1K_V1; null: the source's default.
    weights: str | None = None
    objectives: tuple[PretrainObjective, ...] = ()
    covariates: tuple[str, ...] = ("age", "sex_scaled", "brain_volume_ml", "csf_volume_ml")
    simclr: SimCLRSettings = SimCLRSettings()
    masked: MaskedSettings = MaskedSettings()
    probe: ProbeSettings = ProbeSettings()
    epochs: NonNegativeInt = 0
    batch_size: PositiveInt = 8
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 1e-2
    warmup_epochs: NonNegativeInt = 1
    max_volumes: PositiveInt | None = None  # cap on training volumes (quick runs)
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    precision: Literal["auto", "32", "bf16-mixed"] = "auto"
    synthetic_dir: str = paths.SYNTHETIC_DIR
    out_dir: str = paths.PRETRAINED_DIR
    metrics_path: str = paths.PRETRAIN_METRICS
    log_dir: str = paths.PRETRAIN_LOG_DIR
    seed: NonNegativeInt = 0

    @model_validator(mode="after")
    def _objectives_fit_source(self) -> PretrainSettings:
        allowed = {"synthetic": {"covariates", "simclr", "masked"}, "ssl": {"simclr", "masked"}}
        if self.source in allowed:
            if not self.objectives:
                raise ValueError(
                    f"objectives: source {self.source!r} trains, so name at least one of "
                    f"{sorted(allowed[self.source])}"
                )
            bad = [o for o in self.objectives if o not in allowed[self.source]]
            if bad:
                raise ValueError(
                    f"objectives: {bad} not available for source {self.source!r} (the real pool "
                    f"has no covariate targets); choose from {sorted(allowed[self.source])}"
                )
            if self.epochs == 0:
                raise ValueError(f"epochs: source {self.source!r} needs at least one epoch")
        elif self.objectives:
            raise ValueError(
                f"objectives: source {self.source!r} does not train; set objectives to []"
            )
        if len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"objectives: duplicates in {list(self.objectives)}")
        if "simclr" in self.objectives and self.batch_size < 2:
            raise ValueError(
                "batch_size 1: the simclr objective contrasts each volume with the others of "
                "its batch, so it needs at least 2"
            )
        return self


class FinetuneSettings(Strict):
    mode: Literal["full", "linear_probe"] = "full"
    max_epochs: PositiveInt = 10
    batch_size: PositiveInt = 8
    lr: PositiveFloat = 1e-3
    head_lr: PositiveFloat | None = None
    weight_decay: NonNegativeFloat = 1e-2
    warmup_epochs: NonNegativeInt = 1
    layer_decay: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    early_stopping_patience: NonNegativeInt = 5
    # What early stopping and select_epoch "best" follow: the validation loss (BCE, or MSE on
    # standardised targets), or the task metric (AUC / MAE), which saturates on a few dozen
    # validation subjects. Equal values go to the later epoch.
    monitor: Literal["loss", "metric"] = "loss"
    # The weights kept: the best validation epoch's, or the last epoch's (the whole schedule
    # run; needs early_stopping_patience 0). The validation metric is logged either way.
    select_epoch: Literal["best", "last"] = "best"
    # bf16-mixed also runs on the CPU (autocast; benchmarks/train_step_cpu.py measures it).
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed"] = "auto"
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: PositiveInt | Literal["auto"] = 1
    # Scale-out: Lightning DDP over `devices` per node x `num_nodes` (launched by Lightning
    # itself on one node, or by torchrun / srun on several; README "Performance and scale-out").
    strategy: Literal["auto", "ddp", "ddp_find_unused_parameters_true"] = "auto"
    num_nodes: PositiveInt = 1
    # SyncBatchNorm makes DDP's BatchNorm statistics those of the global batch (CUDA only).
    sync_batchnorm: bool = False
    # Speed-ups (benchmarks/train_throughput.py measures each on a GPU): channels-last-3d
    # weights for 3D CNNs (also faster on the CPU: benchmarks/train_step_cpu.py), torch.compile
    # of the backbone (in place: state_dict keys are unchanged), cuDNN autotuning (needs
    # deterministic: false to take effect).
    channels_last: bool = False
    compile: bool = False
    cudnn_benchmark: bool = False
    num_workers: NonNegativeInt = 0
    seed: NonNegativeInt = 0
    # Training noise is part of every result: the stage trains the recipe once per seed value
    # of `seed_values` (a count, not a list) and evaluate scores every seed's model.
    seeds: PositiveInt = 1
    # A deep ensemble (Lakshminarayanan et al. 2017) within each seed: the recipe is run
    # ensemble_size times with the seeds of `member_seeds`, and evaluate averages the members'
    # predictions (probabilities or years). 1 is a single model.
    ensemble_size: PositiveInt = 1
    deterministic: bool = True
    # CPU only: train this many seeds (x folds) side by side, each in a forked process with one
    # torch thread (GNU OpenMP hangs in a forked child that asks for more). On 2 cores three
    # such processes fine-tune three seeds in about a quarter less time than one after another
    # with two threads, since much of a small model's step is single-threaded Python
    # (augmentation, the loop). 1: one after another in the stage's process.
    seed_processes: PositiveInt = 1

    def seed_values(self) -> list[int]:
        """The fine-tuning seeds one run trains: ``seed * seeds + k`` for k = 0 .. seeds - 1.

        Disjoint across `seed` (seeds 3: seed 0 trains 0-2, seed 1 trains 3-5), so a sweep
        over `seed` never trains the same model twice; with one seed it is `seed` itself.
        """
        return [self.seed * self.seeds + k for k in range(self.seeds)]

    def member_seeds(self, seed_value: int | None = None) -> list[int]:
        """Training seeds of the ensemble of one seed value (default `seed`):
        ``seed_value * ensemble_size + m`` for member m.

        With ``seed_value = seed * seeds + k`` every (seed value, member) pair gets its own
        training seed, so no two models of a run or of a sweep over `seed` share one; with one
        member it is the seed value itself (seed 0 of size 5 trains 0-4, seed 1 trains 5-9).
        """
        value = self.seed if seed_value is None else seed_value
        return [value * self.ensemble_size + m for m in range(self.ensemble_size)]

    @model_validator(mode="after")
    def _last_epoch_runs_the_schedule(self) -> FinetuneSettings:
        if self.select_epoch == "last" and self.early_stopping_patience > 0:
            raise ValueError(
                "select_epoch 'last' keeps the end of the whole schedule, but "
                f"early_stopping_patience is {self.early_stopping_patience}: set it to 0 "
                "(no early stopping) or select_epoch to 'best'"
            )
        return self

    @model_validator(mode="after")
    def _runtime_settings_agree(self) -> FinetuneSettings:
        # With both, Lightning only warns and PyTorch autotunes anyway: the run asked to be
        # deterministic would silently not be.
        if self.cudnn_benchmark and self.deterministic:
            raise ValueError(
                "cudnn_benchmark and deterministic are both true, but PyTorch ignores cuDNN "
                "determinism while it autotunes, so runs would not repeat: set one to false"
            )
        if self.accelerator == "cpu" and self.precision == "16-mixed":
            # Lightning would only warn and train in bf16 instead.
            raise ValueError(
                "precision '16-mixed' (fp16 autocast) is not available with accelerator 'cpu': "
                "use 'bf16-mixed' or '32', or accelerator 'gpu'/'auto'"
            )
        if self.seed_processes > 1 and (
            self.accelerator != "cpu" or self.devices != 1 or self.strategy != "auto"
        ):
            # The processes are forked: a CUDA context does not survive a fork, and each DDP
            # rank already is a process of its own.
            raise ValueError(
                f"seed_processes {self.seed_processes} trains seeds in forked CPU processes: it "
                "needs accelerator 'cpu', devices 1 and strategy 'auto' (got "
                f"{self.accelerator!r}, {self.devices!r}, {self.strategy!r}); set "
                "seed_processes to 1"
            )
        return self


class EvaluateSettings(Strict):
    bootstrap_samples: PositiveInt = 1000
    ci_level: Annotated[float, Field(gt=0.5, lt=1.0)] = 0.95
    seed: NonNegativeInt = 0
    site_probe_folds: Annotated[int, Field(ge=2)] = 5
    ridge_baseline: bool = True
    # Predict as the mean over each volume and its left-right mirror image (evaluate, scaling).
    flip_tta: bool = False


class ScalingSettings(Strict):
    """Data-scaling curves (``scaling`` stage): fine-tune on nested fractions of each task's
    training subjects x seeds, with the fine-tuning recipe of ``finetune``."""

    enabled: bool = False
    tasks: list[str] = Field(default_factory=list)  # empty: every task in `tasks`
    fractions: list[Annotated[float, Field(gt=0.0, le=1.0)]] = Field(
        default_factory=lambda: [0.5, 1.0], min_length=1
    )
    seeds: list[NonNegativeInt] = Field(default_factory=lambda: [0], min_length=1)
    max_epochs: PositiveInt | None = None  # null: finetune.max_epochs
    out_dir: str = paths.SCALING_DIR
    metrics_path: str = paths.SCALING_METRICS

    @field_validator("fractions")
    @classmethod
    def _fractions_increase(cls, value: list[float]) -> list[float]:
        if any(value[i + 1] <= value[i] for i in range(len(value) - 1)):
            raise ValueError(
                f"fractions {value} must be strictly increasing, each in (0, 1] "
                "(e.g. [0.1, 0.25, 0.5, 1.0])"
            )
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds_unique(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"seeds {value} has duplicates")
        return value


class ConditionalOverrides(Strict):
    """Overrides added to the grid points that match every ``key=value`` of ``when``."""

    when: list[str] = Field(min_length=1)
    add: list[str] = Field(min_length=1)


def split_values(text: str) -> list[str]:
    """Split ``a,b,[c,d],'e,f'`` on the commas outside brackets and quotes (Hydra's sweep)."""
    values, depth, quote, current = [], 0, "", []
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            values.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    values.append("".join(current).strip())
    if any(not v for v in values):
        raise SettingsError(f"sweep override {text!r} has an empty value")
    return values


def parse_override(text: str) -> tuple[str, list[str]]:
    """A sweep entry ``key=v1,v2`` as ``(key, [v1, v2])``; the grammar ``experiment.sweep`` uses."""
    key, sep, values = text.partition("=")
    if not sep or not key.strip():
        raise SettingsError(f"sweep override {text!r} is not key=value[,value...]")
    return key.strip(), split_values(values)


class ExperimentSettings(Strict):
    """A study grid (``conf/experiment/<name>.yaml``, selected with ``-S experiment=<name>``).

    ``sweep`` lists Hydra overrides as ``dvc exp run -S`` takes them, comma-separated values
    giving the grid's axes (``model=vit3d,r3d_18``); ``exclude`` lists grid points to skip, each
    a list of ``key=value`` overrides that all have to match; ``extra`` adds overrides to the
    points that match (e.g. ViT-B sizes where ``model=vit3d``). ``neurotransfer sweep`` queues
    one ``dvc exp run`` per remaining point.
    """

    name: str = Field(min_length=1)
    description: str = ""
    reference: str = ""
    sweep: list[str] = Field(default_factory=list)
    exclude: list[list[str]] = Field(default_factory=list)
    extra: list[ConditionalOverrides] = Field(default_factory=list)

    @field_validator("sweep")
    @classmethod
    def _overrides(cls, value: list[str]) -> list[str]:
        bad = [o for o in value if "=" not in o or not o.split("=", 1)[0].strip()]
        if bad:
            raise ValueError(f"sweep entries must be 'key=value[,value...]' overrides, got {bad}")
        return value

    @model_validator(mode="after")
    def _conditions_match_the_grid(self) -> ExperimentSettings:
        # A condition on a key the sweep does not vary, or on a value it never takes, matches no
        # grid point: the exclusion or extra would silently do nothing.
        axes = dict(parse_override(entry) for entry in self.sweep)
        rules = [(f"exclude[{i}]", rule) for i, rule in enumerate(self.exclude)]
        rules += [(f"extra[{i}].when", extra.when) for i, extra in enumerate(self.extra)]
        for where, conditions in rules:
            for condition in conditions:
                key, values = parse_override(condition)
                if key not in axes:
                    raise ValueError(
                        f"{where}: {condition!r} matches no grid point: the sweep does not vary "
                        f"{key!r} (it varies {sorted(axes)})"
                    )
                if not set(values) & set(axes[key]):
                    raise ValueError(
                        f"{where}: {condition!r} matches no grid point: the sweep gives {key} "
                        f"the values {axes[key]}"
                    )
        return self


class Settings(Strict):
    seed: NonNegativeInt = 0
    cohort: CohortSettings | None = None
    data: DataSettings
    tasks: dict[str, TaskSettings] = Field(min_length=1)
    model: ModelSettings
    pretrain: PretrainSettings = PretrainSettings()
    synthesize: SynthesizeSettings | None = None
    finetune: FinetuneSettings = FinetuneSettings()
    evaluate: EvaluateSettings = EvaluateSettings()
    scaling: ScalingSettings = ScalingSettings()
    experiment: ExperimentSettings | None = None
    profile: Literal["cpu", "gpu"] = "cpu"

    def unused_datasets(self) -> list[str]:
        """Downstream datasets that no task lists in ``tasks.<task>.datasets``: preprocessed,
        but never trained or evaluated on (a task uses only the datasets it names)."""
        used = {name for task in self.tasks.values() for name in task.datasets}
        return sorted(
            name
            for name, source in self.data.datasets.items()
            if source.role != "pool" and name not in used
        )

    @model_validator(mode="after")
    def _tasks_use_known_datasets(self) -> Settings:
        for name, task in self.tasks.items():
            unknown = sorted(set(task.datasets) - set(self.data.datasets))
            if unknown:
                raise ValueError(
                    f"tasks.{name}.datasets names dataset(s) {unknown} that data "
                    f"{self.data.name!r} does not have; it has {sorted(self.data.datasets)}"
                )
        unknown = sorted(set(self.scaling.tasks) - set(self.tasks))
        if unknown:
            raise ValueError(
                f"scaling.tasks names task(s) {unknown} not in tasks; tasks: {sorted(self.tasks)}"
            )
        return self

    @model_validator(mode="after")
    def _tasks_have_their_labels(self) -> Settings:
        # A label column mapped to null: every scan of that dataset would be dropped from the
        # task as unlabelled (the target) or filtered out (a subset on it).
        for name, task in self.tasks.items():
            needed = [(f"tasks.{name}.target", task.target)]
            needed += [
                (f"tasks.{name}.subset.{column}", column)
                for column in task.subset
                if column in ("age", "sex", "diagnosis")
            ]
            for key, column in needed:
                for dataset in task.datasets:
                    if getattr(self.data.datasets[dataset].columns, column) is None:
                        raise ValueError(
                            f"{key} needs the {column!r} label, but data.datasets.{dataset}."
                            f"columns.{column} is null (the dataset has no {column} column): "
                            f"drop {dataset!r} from tasks.{name}.datasets or map the column"
                        )
            self._check_phantom_diagnoses(name, task)
        return self

    def _check_phantom_diagnoses(self, name: str, task: TaskSettings) -> None:
        """Diagnosis labels the task asks for must be ones its datasets have, where the
        datasets are the phantom cohort's (their labels are known from the cohort settings)."""
        labels = self._phantom_diagnoses(task.datasets)
        if labels is None:
            return
        wanted: list[tuple[str, list[str]]] = []
        if task.target == "diagnosis" and task.kind == "binary":
            wanted += [(f"tasks.{name}.positive", [str(task.positive)])]
            wanted += [(f"tasks.{name}.negative", [str(task.negative)])]
        if "diagnosis" in task.subset:
            wanted.append((f"tasks.{name}.subset.diagnosis", task.subset["diagnosis"]))
        for key, values in wanted:
            if not set(values) & set().union(*labels.values()):
                have = ", ".join(f"{ds} {sorted(found)}" for ds, found in labels.items())
                raise ValueError(
                    f"{key} {values if len(values) > 1 else values[0]!r}: no subject of "
                    f"tasks.{name}.datasets has that diagnosis (the phantom cohort gives {have})"
                )

    def _phantom_diagnoses(self, datasets: list[str]) -> dict[str, set[str]] | None:
        """Diagnosis labels of each dataset when all are generated by ``cohort`` (a BIDS
        dataset at ``cohort.out_dir/<name>``), after ``diagnosis_map``; None otherwise."""
        if self.cohort is None:
            return None
        labels: dict[str, set[str]] = {}
        for dataset in datasets:
            source = self.data.datasets[dataset]
            generated = self.cohort.datasets.get(dataset)
            if (
                generated is None
                or source.format != "bids"
                or Path(source.path) != Path(self.cohort.out_dir) / dataset
            ):
                return None
            # The generator writes CN and the dataset's disease, and n/a for the pool.
            raw = set() if generated.role == "pool" else {"CN"}
            if generated.disease != "none":
                raw.add(generated.disease)
            labels[dataset] = {source.diagnosis_map.get(v, v) for v in raw}
        return labels

    @model_validator(mode="after")
    def _model_fits_the_data(self) -> Settings:
        problem = backbone_fit_problem(
            self.model.name, self.model.options, tuple(self.data.preprocess.shape)
        )
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _pretrain_source_fits_the_model(self) -> Settings:
        problem = pretrain_source_problem(self.pretrain.source, self.model.name, self.model.options)
        if problem:
            raise ValueError(f"pretrain.source / model.name: {problem}")
        return self

    @model_validator(mode="after")
    def _synthesis_grid_fits_the_data(self) -> Settings:
        # The synthesize stage trains its LDM on data.preprocess.shape whenever the data have
        # an upstream pool (without one it records a skip), so the shape must divide down.
        config = self.synthesize
        has_pool = any(ds.role == "pool" for ds in self.data.datasets.values())
        if config is None or config.source != "train" or not has_pool:
            return self
        ae, unet = config.autoencoder.net, config.diffusion.net
        factor = ae.downsample_factor * unet.downsample_factor
        shape = tuple(self.data.preprocess.shape)
        if any(side % factor for side in shape):
            raise ValueError(
                f"data.preprocess.shape {shape} must be divisible by {factor} for the synthesize "
                f"stage: its autoencoder downsamples by {ae.downsample_factor} "
                f"(synthesize.autoencoder.net.channels) and its diffusion UNet by "
                f"{unet.downsample_factor} more (synthesize.diffusion.net.channels)"
            )
        return self


def _format_errors(err: ValidationError, source: str) -> str:
    """One line per problem: ``key: message (got value)``; a single problem stays on the
    header line, so the command's error is one line."""
    problems = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not a setting; check its spelling)"
        # A rule across a whole block names its keys itself; its input is the block.
        if isinstance(e.get("input"), dict) and e["type"] == "value_error":
            problems.append(f"{key}: {msg}" if key else msg)
            continue
        got = repr(e.get("input"))
        if len(got) > 80:
            got = got[:77] + "..."
        problems.append(f"{key or '<root>'}: {msg} (got {got})")
    if len(problems) == 1:
        return f"{source}: invalid settings: {problems[0]}"
    return "\n".join([f"{source}: invalid settings", *(f"  {p}" for p in problems)])


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


def declared_task_names(params_text: str) -> set[str] | None:
    """The task names a ``params.yaml`` text declares, or None when it declares none readably.

    For the ``params.yaml`` of another revision (``neurotransfer report --revs``, ``compare``): it
    may predate today's schema, so only ``tasks`` is read, not the whole file validated.
    """
    try:
        raw = yaml.safe_load(params_text)
    except yaml.YAMLError:
        return None
    tasks = raw.get("tasks") if isinstance(raw, dict) else None
    return set(tasks) if isinstance(tasks, dict) else None
