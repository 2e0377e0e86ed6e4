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

    @model_validator(mode="after")
    def _check(self) -> SourceDatasetSettings:
        if self.format == "csv" and not self.columns.path:
            raise ValueError("a csv dataset needs columns.path (the image path column)")
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

    @field_validator("sex_codes")
    @classmethod
    def _sex_codes_disjoint(cls, value: SexCodes) -> SexCodes:
        return _check_sex_codes(value)

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
    kl_weight: Annotated[float, Field(ge=0.0)] = 1e-6
    adversarial_weight: Annotated[float, Field(ge=0.0)] = 0.0  # 0: no patch discriminator
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
    csf_volume_ml: Annotated[float, Field(ge=0.0)]
    brain_volume_ml: PositiveFloat
    count: PositiveInt = 1


class SamplingSettings(Strict):
    n_samples: PositiveInt = 200  # drawn from the pool's covariates when `covariates` is empty
    ddim_steps: PositiveInt = 20
    batch_size: PositiveInt = 50
    covariate_jitter: Annotated[float, Field(ge=0.0, le=0.5)] = 0.05
    covariates: list[CovariateRow] = Field(default_factory=list)


class SynthQualitySettings(Strict):
    holdout_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    foreground_threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05
    csf_threshold: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None  # None: Otsu on pool
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
    model_dir: str = "models/ldm"
    out_dir: str = "data/synthetic"
    report_dir: str = "reports/synthetic"
    metrics_path: str = "metrics/synthesize.json"
    log_dir: str = "dvclive/synthesize"

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


class SimCLRSettings(Strict):
    """SimCLR (Chen et al. 2020): NT-Xent between two 3D-augmented views of each volume."""

    temperature: PositiveFloat = 0.1
    projection_dim: PositiveInt = 64
    hidden_dim: PositiveInt = 128
    crop_scale: tuple[Fraction, Fraction] = (0.6, 1.0)  # side fraction of the random crop
    noise_std: Annotated[float, Field(ge=0.0)] = 0.05


class MaskedSettings(Strict):
    """Masked reconstruction: hide cubes of ``patch_size`` voxels, reconstruct them."""

    mask_ratio: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.6
    patch_size: PositiveInt = 8


class ProbeSettings(Strict):
    """The cheap representation signal: ridge regression of age on frozen pool features."""

    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.25
    # Candidate penalties; leave-one-out CV on the fitting subjects picks one (RidgeCV), so a
    # representation is not judged by a penalty that suits another feature size.
    ridge_alphas: tuple[PositiveFloat, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0)


PretrainObjective = Literal["covariates", "simclr", "masked"]


class PretrainSettings(Strict):
    source: Literal["scratch", "imagenet", "kinetics", "synthetic", "ssl"] = "scratch"
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
    weight_decay: Annotated[float, Field(ge=0.0)] = 1e-2
    warmup_epochs: NonNegativeInt = 1
    max_volumes: PositiveInt | None = None  # cap on training volumes (quick runs)
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    precision: Literal["auto", "32", "bf16-mixed"] = "auto"
    seed: NonNegativeInt = 0
    synthetic_dir: str = "data/synthetic"
    out_dir: str = "models/pretrained"
    metrics_path: str = "metrics/pretrain.json"
    log_dir: str = "dvclive/pretrain"

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
        return self


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
    # The weights kept: the best validation epoch's, or the last epoch's (the whole schedule
    # run; needs early_stopping_patience 0). The validation metric is logged either way.
    select_epoch: Literal["best", "last"] = "best"
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed"] = "auto"
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: PositiveInt | Literal["auto"] = 1
    # Scale-out: Lightning DDP over `devices` per node x `num_nodes` (launched by Lightning
    # itself on one node, or by torchrun / srun on several; README "Performance and scale-out").
    strategy: Literal["auto", "ddp", "ddp_find_unused_parameters_true"] = "auto"
    num_nodes: PositiveInt = 1
    # SyncBatchNorm makes DDP's BatchNorm statistics those of the global batch (CUDA only).
    sync_batchnorm: bool = False
    # GPU speed-ups (benchmarks/train_throughput.py measures each): channels-last-3d weights
    # for 3D CNNs, torch.compile of the backbone (in place: state_dict keys are unchanged),
    # cuDNN autotuning (needs deterministic: false to take effect).
    channels_last: bool = False
    compile: bool = False
    cudnn_benchmark: bool = False
    num_workers: NonNegativeInt = 0
    seed: NonNegativeInt = 0
    # A deep ensemble (Lakshminarayanan et al. 2017): the recipe is run ensemble_size times
    # with the seeds of `member_seeds`, and evaluate averages the members' predictions
    # (probabilities or years). 1 is a single model.
    ensemble_size: PositiveInt = 1
    deterministic: bool = True

    def member_seeds(self) -> list[int]:
        """The ensemble's training seeds: ``seed * ensemble_size + k`` for member k.

        Disjoint across `seed`, so a seed sweep of ensembles gives independent ensembles (seed
        0 of size 5 trains seeds 0-4, seed 1 trains 5-9); with one member it is `seed` itself.
        """
        return [self.seed * self.ensemble_size + k for k in range(self.ensemble_size)]

    @model_validator(mode="after")
    def _last_epoch_runs_the_schedule(self) -> FinetuneSettings:
        if self.select_epoch == "last" and self.early_stopping_patience > 0:
            raise ValueError(
                "select_epoch 'last' keeps the end of the whole schedule, but "
                f"early_stopping_patience is {self.early_stopping_patience}: set it to 0 "
                "(no early stopping) or select_epoch to 'best'"
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
    out_dir: str = "reports/scaling"
    metrics_path: str = "metrics/scaling.json"

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
