"""Lead scoring on the full UCI Bank Marketing data (without ``duration``): quality and speed.

Prints 5-fold and time-ordered hold-out metrics (LightGBM beside the logistic-regression
baseline measured in the same run), first-start training time, single-row scoring latency in
process, batch throughput, hot-swap time and memory, with the machine they ran on.
Run: ``.venv/bin/python bench/ml_bench.py [--folds 5]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time

import structlog
from machine import describe, rss_mib

from ecosistema.ml import (
    ModelRegistry,
    ModelServer,
    ensure_default_model,
    evaluate,
    lead_scoring_spec,
    load_reference_dataset,
)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--single", type=int, default=3000)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(f"machine: {describe()}; load average {os.getloadavg()[0]:.1f}")
    df = load_reference_dataset()
    spec = lead_scoring_spec()
    print(f"data: {len(df):,} rows, {len(spec.features)} features (duration left out)")

    started = time.perf_counter()
    metrics = evaluate(df, spec, folds=args.folds)
    print(f"\nevaluation ({metrics['seconds']:.1f} s, {time.perf_counter() - started:.1f} s wall)")
    cv, hold = metrics["cv"], metrics.get("holdout")
    keys = ("roc_auc", "pr_auc", "precision_at_10pct", "recall_at_10pct", "brier")
    print(f"  {'':34}" + "".join(f"{k:>20}" for k in keys))
    rows = [
        (f"{args.folds}-fold LightGBM", cv["lightgbm"]),
        (f"{args.folds}-fold baseline", cv["baseline"]),
    ]
    if hold:
        rows += [
            ("hold-out (last 20%) LightGBM", hold["lightgbm"]),
            ("hold-out (last 20%) baseline", hold["baseline"]),
        ]
    for name, m in rows:
        print(f"  {name:34}" + "".join(f"{m[k]:>20}" for k in keys))
    print(f"  mean fold ROC-AUC {cv['roc_auc_mean']} +/- {cv['roc_auc_std']}")
    print(
        "  lift (5-fold, LightGBM): "
        + ", ".join(f"d{r['decile']} {r['lift']}x" for r in cv["lightgbm"]["lift"][:3])
    )

    with tempfile.TemporaryDirectory() as folder:
        registry = ModelRegistry(folder)
        started = time.perf_counter()
        version = ensure_default_model(registry, data=df)
        first_start = time.perf_counter() - started
        model = registry.load(version.version)
        print(
            f"\nfirst start (train + hold-out + register + promote): {first_start:.1f} s; "
            f"final model fit {model.training_seconds:.1f} s, {model.rounds} rounds"
        )

        server = ModelServer(registry)
        started = time.perf_counter()
        server.reload()
        print(
            f"hot swap: load from registry + swap {1000 * (time.perf_counter() - started):.1f} ms"
        )
        v2 = registry.register(model)
        loaded = registry.load(v2.version)
        swaps = []
        for _ in range(1000):
            t = time.perf_counter()
            server.swap(loaded)
            swaps.append(time.perf_counter() - t)
        print(f"  swap alone: p50 {1e6 * statistics.median(swaps):.1f} us")

        rows_in = df.drop(columns=["y", "duration"]).to_dict("records")
        for explain in (4, 0):
            times = []
            for i in range(args.single):
                t = time.perf_counter()
                server.score(rows_in[i * 7 % len(rows_in)], explain=explain)
                times.append(time.perf_counter() - t)
            print(
                f"single-row score (explain={explain}): p50 {1000 * percentile(times, 0.5):.2f}"
                f" ms, p99 {1000 * percentile(times, 0.99):.2f} ms, n={len(times)}"
            )
        for explain in (4, 0):
            t = time.perf_counter()
            model.score_frame(df, explain=explain)
            seconds = time.perf_counter() - t
            print(f"batch score_frame (explain={explain}): {len(df) / seconds:,.0f} rows/s")
        print(f"memory: RSS {rss_mib(os.getpid()):.0f} MiB with data, two models loaded")
        best = cv["baseline"]["roc_auc"]
        print(
            f"\nLightGBM beats the same-run baseline by "
            f"{cv['lightgbm']['roc_auc'] - best:+.4f} ROC-AUC (5-fold, out-of-fold)"
        )


if __name__ == "__main__":
    main()
