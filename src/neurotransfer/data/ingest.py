"""Reading input datasets (BIDS folders or CSV manifests) into one table of scans.

Nothing is dropped silently: rows without images, images without rows, duplicated participants,
unknown label codes and missing labels are all returned as :class:`DatasetIssue` records (and
the scans concerned carry an ``exclusion_reason`` where they cannot be used).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from neurotransfer.config import DataSettings, SourceDatasetSettings

# Values real participants tables use for "unknown" (BIDS says n/a).
MISSING_MARKERS = {"", "n/a", "na", "nan", "none", "null", "?", "-", "unknown"}
T1W_PATTERN = re.compile(r"^(sub-[A-Za-z0-9]+)((?:_[a-z]+-[A-Za-z0-9]+)*)_T1w\.nii(\.gz)?$")
SCAN_COLUMNS = [
    "subject_id",
    "scan_id",
    "dataset",
    "site",
    "role",
    "age",
    "sex",
    "diagnosis",
    "source_path",
    "exclusion_reason",
]


class DatasetError(ValueError):
    """A dataset that cannot be read at all (missing folder, table or id column)."""


@dataclass
class DatasetIssue:
    """A problem found in one dataset, with the subjects it concerns."""

    dataset: str
    kind: str
    message: str
    subjects: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _is_missing(value: object) -> bool:
    return (
        value is None
        or (isinstance(value, float) and np.isnan(value))
        or (str(value).strip().lower() in MISSING_MARKERS)
    )


def _read_table(path: Path, dataset: str) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetError(f"dataset {dataset!r}: {path} not found")
    sep = "\t" if path.suffix == ".tsv" else ","
    try:
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise DatasetError(f"dataset {dataset!r}: cannot read {path}: {exc}") from exc


def _require_columns(
    table: pd.DataFrame, source: SourceDatasetSettings, table_path: Path, dataset: str
) -> None:
    """Every column the mapping names must exist (a typo must not silently blank a label)."""
    columns = source.columns
    wanted = {
        "participant_id": columns.participant_id,
        "age": columns.age,
        "sex": columns.sex,
        "diagnosis": columns.diagnosis,
        "path": columns.path,
    }
    if source.default_site is None:
        wanted["site"] = columns.site
    for key, column in wanted.items():
        if column is not None and column not in table.columns:
            raise DatasetError(
                f"dataset {dataset!r}: {table_path} has no column {column!r} (data.datasets."
                f"{dataset}.columns.{key}); its columns are {list(table.columns)}. Map the right "
                f"column, or set columns.{key}: null if the dataset has no {key}"
                + (" and give default_site" if key == "site" else "")
            )


def _find_bids_images(root: Path) -> dict[str, list[tuple[str, Path]]]:
    """participant id -> [(scan id, image path)] for every sub-*/[ses-*/]anat/*_T1w.nii[.gz]."""
    images: dict[str, list[tuple[str, Path]]] = {}
    for path in sorted(root.glob("sub-*/anat/*_T1w.nii*")) + sorted(
        root.glob("sub-*/ses-*/anat/*_T1w.nii*")
    ):
        match = T1W_PATTERN.match(path.name)
        if match is None:
            continue
        subject, entities = match.group(1), match.group(2)
        images.setdefault(subject, []).append((subject + entities, path))
    return images


def _labels(
    table: pd.DataFrame,
    source: SourceDatasetSettings,
    sex_codes: dict[str, list[str]],
    dataset: str,
    issues: list[DatasetIssue],
) -> pd.DataFrame:
    """participant id, age (float), sex (M/F/NA), diagnosis, site: parsed, unknowns reported."""
    columns = source.columns
    ids = table[columns.participant_id].str.strip()
    labels = pd.DataFrame({"participant_id": ids})

    if columns.age is not None:
        raw_age = table[columns.age].str.strip()
        age = pd.to_numeric(raw_age.where(~raw_age.map(_is_missing)), errors="coerce")
        bad = ids[age.isna() & ~raw_age.map(_is_missing)]
        if len(bad):
            issues.append(
                DatasetIssue(
                    dataset,
                    "unparseable_age",
                    f"age is not a number for {len(bad)} participant(s)",
                    bad.tolist(),
                )
            )
        labels["age"] = age.astype(float)
    else:
        labels["age"] = np.nan

    code_to_sex = {code: sex for sex, codes in sex_codes.items() for code in codes}
    if columns.sex is not None:
        raw_sex = table[columns.sex].str.strip()
        labels["sex"] = raw_sex.map(lambda v: code_to_sex.get(v, code_to_sex.get(v.lower())))
        unknown = raw_sex[labels["sex"].isna() & ~raw_sex.map(_is_missing)]
        if len(unknown):
            issues.append(
                DatasetIssue(
                    dataset,
                    "unknown_sex_code",
                    f"sex code(s) {sorted(set(unknown))} are not in the sex codes "
                    f"{code_to_sex and sorted(code_to_sex)}; sex left empty",
                    ids[unknown.index].tolist(),
                )
            )
    else:
        labels["sex"] = None

    if columns.diagnosis is not None:
        raw_dx = table[columns.diagnosis].str.strip()
        labels["diagnosis"] = raw_dx.map(
            lambda v: None if _is_missing(v) else source.diagnosis_map.get(v, v)
        )
    else:
        labels["diagnosis"] = None

    if columns.site is not None and columns.site in table.columns:
        raw_site = table[columns.site].str.strip()
        labels["site"] = raw_site.map(lambda v: source.default_site if _is_missing(v) else v)
    else:
        labels["site"] = source.default_site
    no_site = ids[labels["site"].isna()]
    if len(no_site):
        issues.append(
            DatasetIssue(
                dataset,
                "missing_site",
                f"{len(no_site)} participant(s) have no site; set to 'unknown'",
                no_site.tolist(),
            )
        )
        labels["site"] = labels["site"].fillna("unknown")

    missing = ids[labels["age"].isna() | labels["sex"].isna()]
    if len(missing):
        issues.append(
            DatasetIssue(
                dataset,
                "missing_labels",
                f"{len(missing)} participant(s) lack age or sex (kept; tasks "
                "needing the label skip them)",
                missing.tolist(),
            )
        )
    return labels


def _with_sub_prefix(ids: pd.Series, dataset: str, issues: list[DatasetIssue]) -> pd.Series:
    """BIDS ids are ``sub-<label>``; tables that drop the prefix still match their folders."""
    bare = ~ids.str.startswith("sub-")
    if bare.any():
        issues.append(
            DatasetIssue(
                dataset,
                "ids_without_sub_prefix",
                f"{int(bare.sum())} participant_id value(s) lack the BIDS 'sub-' prefix; "
                "matched to their sub-<id> folders",
                ids[bare].tolist(),
            )
        )
    return ids.where(~bare, "sub-" + ids)


def _deduplicate(
    labels: pd.DataFrame, dataset: str, table_path: Path, issues: list[DatasetIssue]
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Collapse identical duplicate rows; participants with conflicting rows are excluded."""
    duplicated = labels[labels["participant_id"].duplicated(keep=False)]
    conflicts: dict[str, str] = {}
    if duplicated.empty:
        return labels, conflicts
    for pid, rows in duplicated.groupby("participant_id", sort=True):
        if len(rows.astype(str).drop_duplicates()) > 1:
            conflicts[pid] = (
                f"participant_id listed {len(rows)} times in {table_path.name} with "
                "conflicting labels"
            )
    issues.append(
        DatasetIssue(
            dataset,
            "duplicate_participants",
            f"{duplicated['participant_id'].nunique()} participant id(s) appear more than once in "
            f"{table_path}; identical rows merged, conflicting ones excluded ({len(conflicts)})",
            sorted(duplicated["participant_id"].unique()),
        )
    )
    return labels.drop_duplicates("participant_id", keep="first"), conflicts


def ingest_dataset(
    name: str, source: SourceDatasetSettings, sex_codes: dict[str, list[str]], root: Path
) -> tuple[pd.DataFrame, list[DatasetIssue]]:
    """All scans of one dataset (columns ``SCAN_COLUMNS``) and the problems found in it."""
    issues: list[DatasetIssue] = []
    base = Path(source.path)
    base = base if base.is_absolute() else root / base
    if source.format == "bids":
        if not base.is_dir():
            raise DatasetError(f"dataset {name!r}: BIDS folder {base} not found")
        table_path = base / "participants.tsv"
    else:
        table_path = base
    table = _read_table(table_path, name)
    _require_columns(table, source, table_path, name)
    labels = _labels(table, source, source.sex_codes or sex_codes, name, issues)
    if source.format == "bids":
        labels["participant_id"] = _with_sub_prefix(labels["participant_id"], name, issues)
        labels, conflicts = _deduplicate(labels, name, table_path, issues)
        images = _find_bids_images(base)
    else:
        conflicts = {}
        images = {}
        for pid, rel in zip(labels["participant_id"], table[source.columns.path], strict=True):
            path = Path(rel.strip())
            path = path if path.is_absolute() else table_path.parent / path
            scan_id = f"{pid}_{len(images.get(pid, [])) + 1}" if pid in images else pid
            images.setdefault(pid, []).append((scan_id, path))
        labels = labels.drop_duplicates("participant_id", keep="first")
        for pid, scans in images.items():
            if len(scans) > 1:
                issues.append(
                    DatasetIssue(
                        name,
                        "multiple_scans",
                        f"{pid} has {len(scans)} rows in {table_path}; each "
                        "is kept as its own scan",
                        [pid],
                    )
                )

    rows: list[dict[str, object]] = []
    by_id = labels.set_index("participant_id")
    for pid, row in by_id.iterrows():
        scans = images.get(str(pid), [])
        if not scans:
            rows.append(
                {
                    **_row(name, source, str(pid), str(pid), row, ""),
                    "exclusion_reason": f"no T1w image found for {pid} in {base}",
                }
            )
        for scan_id, path in scans:
            reason = conflicts.get(str(pid), "")
            if source.format == "csv" and not path.is_file():
                reason = f"image {path} listed in {table_path} does not exist"
            rows.append(
                {
                    **_row(name, source, str(pid), scan_id, row, str(path)),
                    "exclusion_reason": reason,
                }
            )
    no_image = sorted(set(by_id.index) - set(images))
    if no_image:
        issues.append(
            DatasetIssue(
                name,
                "rows_without_images",
                f"{len(no_image)} participant(s) in {table_path.name} have "
                "no T1w image (kept as excluded rows)",
                no_image,
            )
        )
    orphans = sorted(set(images) - set(by_id.index))
    for pid in orphans:
        for scan_id, path in images[pid]:
            rows.append(
                {
                    "subject_id": source.id_prefix + pid,
                    "scan_id": source.id_prefix + scan_id,
                    "dataset": name,
                    "site": source.default_site or "unknown",
                    "role": source.role,
                    "age": np.nan,
                    "sex": None,
                    "diagnosis": None,
                    "source_path": str(path),
                    "exclusion_reason": f"image has no row in {table_path.name}",
                }
            )
    if orphans:
        issues.append(
            DatasetIssue(
                name,
                "images_without_rows",
                f"{len(orphans)} subject folder(s) with T1w images have no row "
                f"in {table_path.name} (excluded)",
                orphans,
            )
        )
    frame = pd.DataFrame(rows, columns=SCAN_COLUMNS)
    return frame, issues


def _row(
    name: str, source: SourceDatasetSettings, pid: str, scan_id: str, labels: pd.Series, path: str
) -> dict[str, object]:
    return {
        "subject_id": source.id_prefix + pid,
        "scan_id": source.id_prefix + scan_id,
        "dataset": name,
        "site": labels["site"],
        "role": source.role,
        "age": labels["age"],
        "sex": labels["sex"],
        "diagnosis": labels["diagnosis"],
        "source_path": path,
    }


def ingest(settings: DataSettings, root: Path) -> tuple[pd.DataFrame, list[DatasetIssue]]:
    """Scans of every dataset named in ``settings.datasets``, with all issues found."""
    frames, issues = [], []
    for name, source in settings.datasets.items():
        frame, found = ingest_dataset(name, source, settings.sex_codes, root)
        frames.append(frame)
        issues.extend(found)
    scans = pd.concat(frames, ignore_index=True)
    clash = scans[scans.duplicated(["dataset", "scan_id"], keep=False)]
    if not clash.empty:
        raise DatasetError(f"scan ids repeat within a dataset: {sorted(set(clash['scan_id']))}")
    return scans, issues
