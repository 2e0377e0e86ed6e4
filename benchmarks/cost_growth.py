"""Cost growth with cohort size: preprocessing and one training epoch at two cohort sizes.

    .venv/bin/python benchmarks/cost_growth.py [--subjects 100,400] [--task brain_age]
        [--workers 2] [--out benchmarks/results]

For each size the embedded phantom cohort of ``params.yaml`` is generated with its datasets
scaled in proportion (pool, ADNI-like and PPMI-like keep their shares), preprocessed by the
``preprocess`` stage's code (``run_preprocess``) and fine-tuned for one epoch (train and
validation passes, ``run_finetune`` with ``max_epochs: 1``) on ``--task``, all in a temporary
folder with the profile's settings (the committed CPU profile by default). It prints seconds
per stage and the ratio of the larger size's time to the smaller's next to the ratio of subjects:
linear growth gives a normalised ratio (time ratio / subject ratio) of 1. Phantom generation is
timed too but is not part of the target (real data has no such step).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from machine_info import load, machine  # noqa: E402
from train_throughput import slug  # noqa: E402

# Imported before any timing, so the first size does not pay the import time.
from neurotransfer.cohort.generate import write_cohort  # noqa: E402
from neurotransfer.config import Settings, load_settings  # noqa: E402
from neurotransfer.stages.finetune import run_finetune  # noqa: E402
from neurotransfer.stages.preprocess import run_preprocess  # noqa: E402
from neurotransfer.stages.pretrain import run_pretrain  # noqa: E402
from neurotransfer.train.finetune import train_task  # noqa: E402, F401  (the stage's lazy import)


def scaled_settings(settings: Settings, n_subjects: int, workers: int) -> Settings:
    """The same cohort with `n_subjects` in all, each dataset keeping its share (and at least
    two subjects per site, so every site has someone in more than one split)."""
    cohort = settings.cohort
    if cohort is None:
        raise SystemExit("params.yaml has no cohort block (compose with cohort=phantom)")
    total = sum(d.n_subjects for d in cohort.datasets.values())
    datasets = {
        name: spec.model_copy(
            update={
                "n_subjects": max(2 * len(spec.sites), round(n_subjects * spec.n_subjects / total))
            }
        )
        for name, spec in cohort.datasets.items()
    }
    cohort = cohort.model_copy(update={"datasets": datasets, "workers": workers})
    preprocess = settings.data.preprocess.model_copy(update={"workers": workers})
    data = settings.data.model_copy(update={"preprocess": preprocess})
    finetune = settings.finetune.model_copy(
        # One seed: the figure is the cost of one training epoch, not of the seed axis.
        update={"max_epochs": 1, "warmup_epochs": 0, "early_stopping_patience": 0, "seeds": 1}
    )
    return settings.model_copy(update={"cohort": cohort, "data": data, "finetune": finetune})


def measure(settings: Settings, task: str, root: Path, repeats: int = 2) -> dict[str, Any]:
    assert settings.cohort is not None
    start = time.perf_counter()
    plans = write_cohort(settings.cohort, root / settings.cohort.out_dir).plans
    cohort_s = time.perf_counter() - start

    start = time.perf_counter()
    metrics = run_preprocess(settings.data, root, progress=False)
    preprocess_s = time.perf_counter() - start

    # Fine-tuning starts from the pretrain stage's backbone (not timed; scratch by default).
    run_pretrain(settings, root)

    # Best of `repeats` one-epoch runs: an epoch of the CPU profile lasts about a second, so a
    # burst of other load on the machine would otherwise decide the ratio. CPU seconds (all
    # threads of this process) are kept too: they barely depend on that load.
    epochs, cpu = [], []
    for _ in range(repeats):
        start_cpu = time.process_time()
        finetuned = run_finetune(settings, task, root)
        cpu.append(time.process_time() - start_cpu)
        epochs.append(finetuned["train_seconds"])
    return {
        "n_subjects": len(plans),
        "n_scans_processed": metrics["timing"]["n_computed"],
        "n_train": finetuned["n_train"],
        "n_val": finetuned["n_val"],
        "cohort_s": cohort_s,
        "preprocess_s": preprocess_s,
        # Trainer.fit's wall time for the single epoch (train + validation passes).
        "epoch_s": min(epochs),
        "epoch_runs_s": epochs,
        "finetune_cpu_s": min(cpu),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", default="100,400", help="two cohort sizes")
    parser.add_argument("--task", default="brain_age")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=2, help="one-epoch runs (best kept)")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--tmp", type=Path, default=None, help="folder for the cohorts")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.subjects.split(",")]
    if len(sizes) != 2 or sizes[0] >= sizes[1]:
        raise SystemExit("--subjects takes two sizes, smaller first, e.g. 100,400")
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("lightning").setLevel(logging.WARNING)
    base = load_settings(args.params)

    print(f"machine: {machine()}")
    print(f"load average at start: {load()} (other processes compete for the cores above 0)")
    print(
        f"profile {base.profile}: grid {'x'.join(map(str, base.data.preprocess.shape))}, "
        f"registration={base.data.preprocess.registration}, model {base.model.name}, "
        f"task {args.task}, batch {base.finetune.batch_size}, {args.workers} workers"
    )
    rows = []
    for n in sizes:
        settings = scaled_settings(base, n, args.workers)
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            row = measure(settings, args.task, Path(tmp), args.repeats)
        rows.append(row)
        print(
            f"  {row['n_subjects']:>5} subjects: cohort {row['cohort_s']:7.1f} s, "
            f"preprocess {row['preprocess_s']:7.1f} s ({row['n_scans_processed']} scans), "
            f"one epoch {row['epoch_s']:6.2f} s ({row['n_train']} train / {row['n_val']} val; "
            f"fine-tuning {row['finetune_cpu_s']:.1f} CPU s)",
            flush=True,
        )
    small, large = rows
    subject_ratio = large["n_subjects"] / small["n_subjects"]
    ratios: dict[str, dict[str, float]] = {}
    print(f"ratio of subjects {subject_ratio:.2f} (linear growth: normalised ratio 1.00)")
    measured = (
        ("cohort_s", "n_subjects"),
        ("preprocess_s", "n_subjects"),
        ("epoch_s", "n_train"),
        ("finetune_cpu_s", "n_train"),
    )
    for key, count in measured:
        time_ratio = large[key] / small[key]
        size_ratio = large[count] / small[count]
        # Two points fit time = fixed + per_item x n: a fixed cost (start-up, templates, the
        # Trainer) makes the plain ratio sub-linear at small sizes; the per-item cost is what
        # must stay flat as the cohort grows.
        per_item = (large[key] - small[key]) / max(1, large[count] - small[count])
        fixed = small[key] - per_item * small[count]
        ratios[key] = {
            "time_ratio": time_ratio,
            "size_ratio": size_ratio,
            "normalised": time_ratio / size_ratio,
            "per_item_s": per_item,
            "fixed_s": fixed,
        }
        print(
            f"  {key.removesuffix('_s'):<13} x{time_ratio:.2f} for x{size_ratio:.2f} {count}: "
            f"normalised {time_ratio / size_ratio:.2f}; {per_item:.3f} s per extra "
            f"{count[2:].rstrip('s') or count}, {fixed:.1f} s fixed"
        )
    print(f"load average at end: {load()}")
    report = {
        "benchmark": "cost_growth",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": "cpu" if base.finetune.accelerator == "cpu" else base.finetune.accelerator,
        "machine": machine(),
        "profile": base.profile,
        "task": args.task,
        "workers": args.workers,
        "rows": rows,
        "ratios": ratios,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"cost_growth_{slug(base.profile)}_{sizes[0]}_{sizes[1]}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
