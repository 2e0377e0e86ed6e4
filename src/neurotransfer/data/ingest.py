"""Reading input datasets (BIDS folders or CSV manifests) into one table of scans.

Nothing is dropped silently: rows without images, images without rows, duplicated participants,
unknown label codes, implausible and missing labels are all returned as :class:`DatasetIssue`
records, and the scans concerned carry an ``exclusion_reason`` where they cannot be used: an
image that is missing, a dangling symlink, a symlink loop, a directory or other non-regular file,
unreadable, or a symlink leading out of the dataset's folder; or an id that is unsafe as a file
name (it would place the cached array outside the output folder).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from neurotransfer.config import (
    DataSettings,
    LabelBounds,
    SourceDatasetSettings,
    safe_file_name_problem,
)
from neurotransfer.data.manifest import SCAN_LABEL_COLUMNS

# Values real participants tables use for "unknown" (BIDS says n/a).
MISSING_MARKERS = {"", "n/a", "na", "nan", "none", "null", "?", "-", "unknown"}
T1W_PATTERN = re.compile(r"^(sub-[A-Za-z0-9]+)((?:_[a-z]+-[A-Za-z0-9]+)*)_T1w\.nii(\.gz)?$")
# What every scan is labelled with, in this order in the scan table and the manifest alike.
SCAN_COLUMNS = ["subject_id", "scan_id", *SCAN_LABEL_COLUMNS, "source_path", "exclusion_reason"]


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
    missing = {
        key: column
        for key, column in wanted.items()
        if column is not None and column not in table.columns
    }
    if missing:
        # Every missing column at once: one round-trip to fix a dataset's mapping, not one each.
        problems = "; ".join(
            f"no column {column!r} (data.datasets.{dataset}.columns.{key}"
            + (", or give default_site" if key == "site" else "")
            + ")"
            for key, column in missing.items()
        )
        raise DatasetError(
            f"dataset {dataset!r}: {table_path} has {problems}; its columns are "
            f"{list(table.columns)}. Map the right columns, or set a key to null when the "
            "dataset has no such label"
        )


def _find_bids_images(
    root: Path, dataset: str, issues: list[DatasetIssue]
) -> dict[str, list[tuple[str, Path | None]]]:
    """participant id -> [(scan id, image path)] for every sub-*/[ses-*/]anat/*_T1w.nii[.gz].

    Files that look like T1w images but whose names are not BIDS (``sub-a_T1w.nii.gz.part``),
    and second files of one scan id (``sub-a_T1w.nii`` beside ``sub-a_T1w.nii.gz``: the first
    in name order is used), are reported rather than skipped silently.
    """
    images: dict[str, list[tuple[str, Path | None]]] = {}
    seen: set[str] = set()
    unnamed: list[str] = []
    repeated: list[str] = []
    repeated_ids: list[str] = []
    for path in sorted(root.glob("sub-*/anat/*_T1w.nii*")) + sorted(
        root.glob("sub-*/ses-*/anat/*_T1w.nii*")
    ):
        match = T1W_PATTERN.match(path.name)
        if match is None:
            unnamed.append(str(path.relative_to(root)))
            continue
        subject, entities = match.group(1), match.group(2)
        if subject + entities in seen:
            repeated.append(str(path.relative_to(root)))
            repeated_ids.append(subject + entities)
            continue
        seen.add(subject + entities)
        images.setdefault(subject, []).append((subject + entities, path))
    if unnamed:
        issues.append(
            DatasetIssue(
                dataset,
                "unrecognised_image_names",
                f"{len(unnamed)} file(s) named like T1w images are not "
                f"sub-<id>[_<key>-<value>...]_T1w.nii[.gz] and were not read: {unnamed[:10]}",
            )
        )
    if repeated:
        issues.append(
            DatasetIssue(
                dataset,
                "duplicate_images",
                f"{len(repeated)} file(s) repeat a scan id already found (e.g. .nii beside "
                f".nii.gz, or the same name in two sessions' folders); not read: {repeated[:10]}",
                sorted(set(repeated_ids)),
            )
        )
    return images


def _labels(
    table: pd.DataFrame,
    source: SourceDatasetSettings,
    sex_codes: dict[str, list[str]],
    bounds: LabelBounds,
    dataset: str,
    issues: list[DatasetIssue],
) -> pd.DataFrame:
    """participant id, age (float), sex (M/F/NA), diagnosis, site: parsed, unknowns reported."""
    columns = source.columns
    ids = table[columns.participant_id].str.strip()
    labels = pd.DataFrame({"participant_id": ids})
    if columns.age is not None:
        labels["age"] = _parse_ages(table[columns.age].str.strip(), ids, bounds, dataset, issues)
    else:
        labels["age"] = np.nan
    if columns.sex is not None:
        labels["sex"] = _parse_sexes(
            table[columns.sex].str.strip(), ids, sex_codes, dataset, issues
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
    _add_sites(labels, table, source, ids, dataset, issues)

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


def _unparsed(raw: pd.Series, parsed: pd.Series) -> pd.Series:
    """True where a value was given (not a missing marker) but could not be parsed."""
    return parsed.isna() & ~raw.map(_is_missing)


def _parse_ages(
    raw_age: pd.Series,
    ids: pd.Series,
    bounds: LabelBounds,
    dataset: str,
    issues: list[DatasetIssue],
) -> pd.Series:
    """Ages as floats: missing markers, unparseable and implausible values become NaN."""
    age = pd.to_numeric(raw_age.where(~raw_age.map(_is_missing)), errors="coerce")
    bad = ids[_unparsed(raw_age, age)]
    if len(bad):
        issues.append(
            DatasetIssue(
                dataset,
                "unparseable_age",
                f"age is not a number for {len(bad)} participant(s)",
                bad.tolist(),
            )
        )
    # An impossible age (-3, 460: a typo, months, a swapped column) must not reach a brain-age
    # model as a target: it becomes missing, so the scan still serves tasks without age.
    implausible = age.notna() & ~age.between(bounds.age_min, bounds.age_max)
    if implausible.any():
        values = sorted({f"{v:g}" for v in age[implausible]})
        issues.append(
            DatasetIssue(
                dataset,
                "implausible_age",
                f"age outside [{bounds.age_min:g}, {bounds.age_max:g}] years "
                f"(data.label_bounds) for {int(implausible.sum())} participant(s) "
                f"(values {values[:10]}); treated as missing",
                ids[implausible].tolist(),
            )
        )
        age = age.where(~implausible)
    return age.astype(float)


def _parse_sexes(
    raw_sex: pd.Series,
    ids: pd.Series,
    sex_codes: dict[str, list[str]],
    dataset: str,
    issues: list[DatasetIssue],
) -> pd.Series:
    """Sex codes mapped through `sex_codes` (exactly, else lower-cased); unknown ones empty."""
    code_to_sex = {code: sex for sex, codes in sex_codes.items() for code in codes}
    sexes = raw_sex.map(lambda v: code_to_sex.get(v, code_to_sex.get(v.lower())))
    unknown = _unparsed(raw_sex, sexes)
    if unknown.any():
        issues.append(
            DatasetIssue(
                dataset,
                "unknown_sex_code",
                f"sex code(s) {sorted(set(raw_sex[unknown]))} are not in the sex codes "
                f"{code_to_sex and sorted(code_to_sex)}; sex left empty",
                ids[unknown].tolist(),
            )
        )
    return sexes


def _add_sites(
    labels: pd.DataFrame,
    table: pd.DataFrame,
    source: SourceDatasetSettings,
    ids: pd.Series,
    dataset: str,
    issues: list[DatasetIssue],
) -> None:
    """The ``site`` column: the table's, else ``default_site``; 'unknown' where neither has one."""
    site_column = source.columns.site
    if site_column is not None and site_column in table.columns:
        raw_site = table[site_column].str.strip()
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


def _image_problem(path: Path, folder: Path, follow_external: bool) -> tuple[str, bool]:
    """Why the scan at `path` cannot be read ('' when it can), and whether it is reached through
    a symlink leading out of `folder` (a resolved path).

    Checked before anything opens or hashes the file: a dangling symlink, a symlink loop or a
    directory named ``*_T1w.nii.gz`` would otherwise crash the run, and a pipe would hang it.
    The variable part of each reason is in parentheses, so metrics can count reasons by kind.
    """
    try:
        real = Path(os.path.realpath(path, strict=True))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{path}: symlink loop (it never resolves to a file)", False
        if path.is_symlink():
            return (
                f"{path}: dangling symlink (its target {os.readlink(path)} does not exist)",
                False,
            )
        if exc.errno == errno.ENOENT:
            return f"{path}: does not exist", False
        return f"{path}: cannot be opened ({exc.strerror})", False
    external = not real.is_relative_to(folder)
    if external and not follow_external:
        return (
            f"{path}: symlink leading outside the dataset folder (to {real}, outside {folder}; "
            "set follow_external_symlinks: true for this dataset to use it)",
            True,
        )
    try:
        mode = real.stat().st_mode
        if stat.S_ISDIR(mode):
            return f"{path}: is a directory, not an image file", external
        if not stat.S_ISREG(mode):
            return f"{path}: not a regular file (a device, pipe or socket)", external
        os.close(os.open(real, os.O_RDONLY))
    except OSError as exc:
        return f"{path}: cannot be read ({exc.strerror})", external
    return "", external


def _csv_images(
    labels: pd.DataFrame, paths: pd.Series, table_path: Path
) -> dict[str, list[tuple[str, Path | None]]]:
    """participant id -> [(scan id, listed image path or None when the row gives none)].

    A participant listed again is another scan, ``<id>_<k>`` with the smallest k >= 2 that no
    participant id or earlier scan uses, so scan ids never repeat (rows A, A, A_2 give A, A_3,
    A_2: A_2 is a participant id).
    """
    images: dict[str, list[tuple[str, Path | None]]] = {}
    taken = set(labels["participant_id"])
    for pid, listed in zip(labels["participant_id"], paths, strict=True):
        path = None if _is_missing(listed) else Path(listed.strip())
        if path is not None and not path.is_absolute():
            path = table_path.parent / path
        if pid in images:
            k = 2
            while f"{pid}_{k}" in taken:
                k += 1
            scan_id = f"{pid}_{k}"
            taken.add(scan_id)
        else:
            scan_id = pid
        images.setdefault(pid, []).append((scan_id, path))
    return images


def _reference_folder(path: Path, dataset_folder: Path, csv_folder: Path | None) -> Path:
    """The resolved folder a scan's real file must stay in (external symlink check).

    BIDS: the dataset folder. CSV: the CSV's folder for paths under it; a path the CSV lists
    elsewhere (absolute, ``../``) was chosen by its author, so only a symlink leading out of
    that path's own folder counts as external.
    """
    if csv_folder is None:
        return dataset_folder
    listed = Path(os.path.abspath(path))
    if listed.is_relative_to(os.path.abspath(csv_folder)):
        return dataset_folder
    return Path(os.path.realpath(listed.parent))


@dataclass
class _LocatedScans:
    """A dataset's labels matched to its images, before any scan is checked."""

    labels: pd.DataFrame  # one row per participant
    images: dict[str, list[tuple[str, Path | None]]]  # participant id -> [(scan id, path)]
    conflicts: dict[str, str]  # participant id -> why all its scans are excluded
    dataset_folder: Path  # resolved; see `_reference_folder`
    csv_folder: Path | None  # the CSV's folder; None for BIDS


def _table_location(name: str, source: SourceDatasetSettings, root: Path) -> tuple[Path, Path]:
    """The dataset's path (relative ones under `root`) and its participants table."""
    base = Path(source.path)
    base = base if base.is_absolute() else root / base
    if source.format != "bids":
        return base, base
    if not base.is_dir():
        raise DatasetError(f"dataset {name!r}: BIDS folder {base} not found")
    return base, base / "participants.tsv"


def _locate_bids_scans(
    labels: pd.DataFrame, base: Path, table_path: Path, name: str, issues: list[DatasetIssue]
) -> _LocatedScans:
    """Participants matched to the images in their ``sub-<id>`` folders."""
    labels["participant_id"] = _with_sub_prefix(labels["participant_id"], name, issues)
    labels, conflicts = _deduplicate(labels, name, table_path, issues)
    images = _find_bids_images(base, name, issues)
    return _LocatedScans(labels, images, conflicts, Path(os.path.realpath(base)), None)


def _locate_csv_scans(
    labels: pd.DataFrame, paths: pd.Series, table_path: Path, name: str, issues: list[DatasetIssue]
) -> _LocatedScans:
    """Participants matched to the images their rows list; each repeated row is another scan."""
    images = _csv_images(labels, paths, table_path)
    for pid, scans in images.items():
        if len(scans) > 1:
            issues.append(
                DatasetIssue(
                    name,
                    "multiple_scans",
                    f"{pid} has {len(scans)} rows in {table_path}; each is kept as its own scan",
                    [pid],
                )
            )
    return _LocatedScans(
        labels.drop_duplicates("participant_id", keep="first"),
        images,
        {},
        Path(os.path.realpath(table_path.parent)),
        table_path.parent,
    )


@dataclass
class _ScanChecker:
    """Why each scan is excluded; remembers the scans to report as unsafe or external."""

    source: SourceDatasetSettings
    table_path: Path
    dataset_folder: Path
    csv_folder: Path | None
    unsafe: list[str] = field(default_factory=list)  # scan ids that cannot name a cache file
    # scan ids reached through a symlink out of their reference folder: followed, or excluded
    # (follow_external_symlinks: false)
    followed: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def problem(self, scan_id: str, path: Path | None) -> str:
        """Why this scan is excluded ('' when it is usable); external symlinks are recorded."""
        source, table_path = self.source, self.table_path
        if problem := safe_file_name_problem(source.id_prefix + scan_id):
            self.unsafe.append(scan_id)
            return (
                f"{source.id_prefix + scan_id!r}: unsafe id for a cache file name ({problem}; "
                f"rename it in {table_path.name})"
            )
        if path is None:
            return f"{table_path}: no image path given (row of {scan_id})"
        reason, external = _image_problem(
            path,
            _reference_folder(path, self.dataset_folder, self.csv_folder),
            source.follow_external_symlinks,
        )
        if external:
            (self.followed if not reason else self.refused).append(scan_id)
        if reason and source.format == "csv" and "does not exist" in reason:
            reason += f" (listed in {table_path.name})"
        return reason

    def issues(self, name: str) -> list[DatasetIssue]:
        """The unsafe ids and external symlinks met by `problem`, as issues."""
        found: list[DatasetIssue] = []
        if self.unsafe:
            found.append(
                DatasetIssue(
                    name,
                    "unsafe_ids",
                    f"{len(self.unsafe)} id(s) in {self.table_path.name} cannot name a cache "
                    "file (allowed: letters, digits, '.', '_', '-'; no leading '.', no '..'); "
                    "those scans are excluded",
                    self.unsafe,
                )
            )
        if self.followed or self.refused:
            found.append(
                DatasetIssue(
                    name,
                    "external_symlink",
                    f"{len(self.followed) + len(self.refused)} scan(s) are symlinks to files "
                    f"outside {self.dataset_folder}: "
                    + (
                        "followed (follow_external_symlinks: true)"
                        if self.followed
                        else "excluded (set follow_external_symlinks: true to use them)"
                    ),
                    self.followed + self.refused,
                )
            )
        return found


def _participant_rows(
    name: str,
    source: SourceDatasetSettings,
    by_id: pd.DataFrame,
    located: _LocatedScans,
    base: Path,
    checker: _ScanChecker,
) -> list[dict[str, object]]:
    """One row per scan of each participant in the table; one excluded row for those without."""
    rows: list[dict[str, object]] = []
    for pid, row in by_id.iterrows():
        scans = located.images.get(str(pid), [])
        if not scans:
            rows.append(
                {
                    **_row(name, source, str(pid), str(pid), row, ""),
                    "exclusion_reason": f"no T1w image found for {pid} in {base}",
                }
            )
        for scan_id, path in scans:
            reason = located.conflicts.get(str(pid), "") or checker.problem(scan_id, path)
            rows.append(
                {
                    **_row(name, source, str(pid), scan_id, row, "" if path is None else str(path)),
                    "exclusion_reason": reason,
                }
            )
    return rows


def _orphan_rows(
    name: str,
    source: SourceDatasetSettings,
    images: dict[str, list[tuple[str, Path | None]]],
    orphans: list[str],
    table_path: Path,
) -> list[dict[str, object]]:
    """Excluded rows for the scans of subjects the table does not list (no labels)."""
    return [
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
        for pid in orphans
        for scan_id, path in images[pid]
    ]


def ingest_dataset(
    name: str,
    source: SourceDatasetSettings,
    sex_codes: dict[str, list[str]],
    root: Path,
    bounds: LabelBounds | None = None,
) -> tuple[pd.DataFrame, list[DatasetIssue]]:
    """All scans of one dataset (columns ``SCAN_COLUMNS``) and the problems found in it."""
    issues: list[DatasetIssue] = []
    base, table_path = _table_location(name, source, root)
    table = _read_table(table_path, name)
    _require_columns(table, source, table_path, name)
    labels = _labels(
        table, source, source.sex_codes or sex_codes, bounds or LabelBounds(), name, issues
    )
    if source.format == "bids":
        located = _locate_bids_scans(labels, base, table_path, name, issues)
    else:
        paths = table[source.columns.path]
        located = _locate_csv_scans(labels, paths, table_path, name, issues)
    checker = _ScanChecker(source, table_path, located.dataset_folder, located.csv_folder)
    by_id = located.labels.set_index("participant_id")
    rows = _participant_rows(name, source, by_id, located, base, checker)
    no_image = sorted(set(by_id.index) - set(located.images))
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
    orphans = sorted(set(located.images) - set(by_id.index))
    rows += _orphan_rows(name, source, located.images, orphans, table_path)
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
    issues += checker.issues(name)
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
    frames, issues, errors = [], [], []
    for name, source in settings.datasets.items():
        try:
            frame, found = ingest_dataset(
                name, source, settings.sex_codes, root, settings.label_bounds
            )
        except DatasetError as error:
            errors.append(str(error))  # the other datasets' problems are reported with it
            continue
        frames.append(frame)
        issues.extend(found)
    if errors:
        raise DatasetError(" | ".join(errors))
    scans = pd.concat(frames, ignore_index=True)
    clash = scans[scans.duplicated(["dataset", "scan_id"], keep=False)]
    if not clash.empty:
        raise DatasetError(f"scan ids repeat within a dataset: {sorted(set(clash['scan_id']))}")
    check_ids_across_datasets(scans)
    return scans, issues


def check_ids_across_datasets(scans: pd.DataFrame) -> None:
    """Stop when one subject id appears in two datasets (``sub-01`` in both): splits keep a
    subject on one side and predictions are joined on the id, so the two people would be
    merged (or the join would fail after every training). Names the datasets and the fix."""
    datasets_per_id = scans.groupby("subject_id")["dataset"].unique()
    shared = datasets_per_id[datasets_per_id.map(len) > 1]
    if shared.empty:
        return
    names = sorted({name for names in shared for name in names})
    ids = sorted(shared.index)
    shown = ", ".join(ids[:5]) + (f" ... ({len(ids)} in all)" if len(ids) > 5 else "")
    raise DatasetError(
        f"subject ids shared by datasets {', '.join(names)}: {shown}. A subject id must name "
        "one person in one dataset (splits and prediction joins use it): give all but one of "
        f"these datasets an id prefix, e.g. data.datasets.{names[-1]}.id_prefix: "
        f"'{names[-1]}-'"
    )
