"""Lead scoring on the full UCI Bank Marketing data (without ``duration``): quality and speed.

Prints 5-fold and time-ordered hold-out metrics of every model family (the hybrid of logistic
regression and LightGBM, LightGBM alone, the logistic regression; measured in the same run, every
step fitted inside each training fold), which family serves and its calibration, first-start
training time, single-row scoring latency in process, batch throughput, hot-swap time and
memory, with the machine they ran on.

Then the sales service over real HTTP (uvicorn on loopback, the embedded shape): creating and
updating a lead (validation, encryption, scoring, database write) p50/p99 beside GET /healthz
on the same server as the same-run floor, CSV import and batch re-scoring in rows/s, and a
promotion's hot swap as the API sees it.
Run: ``.venv/bin/python bench/ml_bench.py [--folds 5] [--skip-eval] [--skip-api]
[--api-requests 500]``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import structlog
from machine import describe, free_port, rss_mib

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
    parser.add_argument("--skip-eval", action="store_true", help="only the sales service part")
    parser.add_argument("--skip-api", action="store_true", help="only the model pipeline part")
    parser.add_argument("--api-requests", type=int, default=500)
    parser.add_argument("--import-rows", type=int, default=5000)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(f"machine: {describe()}; load average {os.getloadavg()[0]:.1f}")
    if not args.skip_eval:
        pipeline_bench(args)
    if not args.skip_api:
        sales_bench(args)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


def pipeline_bench(args: argparse.Namespace) -> None:
    df = load_reference_dataset()
    spec = lead_scoring_spec()
    print(f"data: {len(df):,} rows, {len(spec.features)} features (duration left out)")

    started = time.perf_counter()
    metrics = evaluate(df, spec, folds=args.folds)
    print(f"\nevaluation ({metrics['seconds']:.1f} s, {time.perf_counter() - started:.1f} s wall)")
    cv, hold = metrics["cv"], metrics.get("holdout")
    keys = ("roc_auc", "pr_auc", "precision_at_10pct", "recall_at_10pct", "brier")
    names = {"hybrid": "hybrid", "lightgbm": "LightGBM", "baseline": "logistic"}
    print(f"  {'':34}" + "".join(f"{k:>20}" for k in keys))
    rows = [(f"{args.folds}-fold {names[key]}", cv[key]) for key in names]
    if hold:
        rows += [(f"hold-out (last 20%) {names[key]}", hold[key]) for key in names]
    for name, m in rows:
        print(f"  {name:34}" + "".join(f"{m[k]:>20}" for k in keys))
    for key, name in names.items():
        print(
            f"  mean fold ROC-AUC ({name}) {cv[key]['roc_auc_mean']} +/- {cv[key]['roc_auc_std']}"
            f"  per fold {cv[key]['roc_auc_per_fold']}"
        )
    family = metrics["family"]
    serving_key = {"hybrid": "hybrid", "lightgbm": "lightgbm", "logistic": "baseline"}[family]
    print(f"  serving family: {family}")
    print(f"  {args.folds}-fold calibration of the serving family (predicted -> observed):")
    table = cv[serving_key]["calibration"]
    print("    " + ", ".join(f"{c['predicted']:.3f}->{c['observed']:.3f}" for c in table))
    if hold:
        table = hold[serving_key]["calibration"]
        print("  hold-out calibration of the serving family (predicted -> observed, per decile):")
        print("    " + ", ".join(f"{c['predicted']:.3f}->{c['observed']:.3f}" for c in table))
    print(
        f"  lift ({args.folds}-fold, {family}): "
        + ", ".join(f"d{r['decile']} {r['lift']}x" for r in cv[serving_key]["lift"][:3])
    )

    with tempfile.TemporaryDirectory() as folder:
        registry = ModelRegistry(folder)
        started = time.perf_counter()
        version = ensure_default_model(registry, data=df)
        first_start = time.perf_counter() - started
        model = registry.load(version.version)
        print(
            f"\nfirst start (train + hold-out + register + promote): {first_start:.1f} s; "
            f"final model ({model.family}) fit {model.training_seconds:.1f} s"
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
        print(
            f"\n{family} minus logistic: "
            f"{cv[serving_key]['roc_auc'] - cv['baseline']['roc_auc']:+.4f} ROC-AUC "
            f"({args.folds}-fold), "
            + (
                f"{hold[serving_key]['roc_auc'] - hold['baseline']['roc_auc']:+.4f} (hold-out)"
                if hold
                else "no hold-out"
            )
        )


# --- the sales service over HTTP ------------------------------------------------------------------

JOBS = ("admin.", "retired", "student", "blue-collar", "technician", "management", "services")


def lead(i: int) -> dict[str, Any]:
    return {
        "name": f"Bench Lead {i}",
        "email": f"bench{i}@example.com",
        "phone": "+34 600 000 000",
        "channel": "mobile" if i % 3 else "landline",
        "campaign": "bench",
        "message": "Interested, please call.",
        "attributes": {"age": 20 + i % 60, "job": JOBS[i % len(JOBS)]},
    }


def leads_csv(start: int, rows: int) -> bytes:
    lines = ["name,email,channel,campaign,age,job,education"]
    for i in range(start, start + rows):
        lines.append(
            f"Lead {i},csv{i}@example.com,{'mobile' if i % 3 else 'landline'},bench,"
            f"{20 + i % 60},{JOBS[i % len(JOBS)]},university.degree"
        )
    return ("\n".join(lines) + "\n").encode()


def timed(call: Any, n: int) -> list[float]:
    times = []
    for i in range(n):
        t = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - t)
    return times


def show(name: str, times: list[float]) -> None:
    print(
        f"  {name:44} p50 {1000 * percentile(times, 0.5):6.2f} ms   "
        f"p99 {1000 * percentile(times, 0.99):6.2f} ms   n={len(times)}"
    )


def sales_bench(args: argparse.Namespace) -> None:
    import uvicorn

    from ecosistema.identity import seed_demo
    from ecosistema.platform.app import create_app
    from ecosistema.platform.config import Settings
    from ecosistema.platform.runtime import Runtime
    from ecosistema.sales import domain
    from ecosistema.sales.scoring import scoring_of
    from ecosistema.services import load_services

    folder = Path(tempfile.mkdtemp(prefix="ml-bench-"))
    settings = Settings(
        data_dir=folder,
        database_url=f"sqlite+aiosqlite:///{folder.as_posix()}/{{service}}.db",
        log_level="WARNING",
        max_body_bytes=64 * 1024 * 1024,
        sales_rescore_interval_seconds=3600,
    )
    services = ["identity", "sales"]

    async def seed() -> None:
        runtime = Runtime(settings, load_services(services))
        await runtime.start(background=False)
        try:
            await seed_demo(runtime.contexts["identity"])
            await runtime.drain_outboxes()
        finally:
            await runtime.stop()

    started = time.perf_counter()
    asyncio.run(seed())
    first = time.perf_counter() - started
    print(f"\nsales service: first start, default model trained: {first:.1f} s")
    app = create_app(load_services(services), settings)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    started = time.perf_counter()
    thread.start()
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=120) as http:
        while True:
            try:
                if http.get("/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        print(f"  restart with a trained registry: ready in {time.perf_counter() - started:.2f} s")
        tokens = {}
        for role in ("sales", "admin"):
            answer = http.post(
                "/api/v1/auth/login",
                json={
                    "email": f"{role}@demo.ecosistema.dev",
                    "password": f"demo-{role}-ecosistema",
                },
            )
            tokens[role] = {"Authorization": f"Bearer {answer.json()['access_token']}"}
        sales, admin = tokens["sales"], tokens["admin"]
        n = args.api_requests
        created: list[str] = []

        def create(i: int) -> None:
            answer = http.post("/api/v1/leads", json=lead(i), headers=sales)
            assert answer.status_code == 201, answer.text
            created.append(answer.json()["id"])

        timed(create, 30)  # warm-up
        print(f"  over HTTP, one request at a time ({n} each, after warm-up):")
        show("GET /healthz (same-run floor)", timed(lambda i: http.get("/healthz"), n))
        show("POST /leads (scored, encrypted, stored)", timed(lambda i: create(1000 + i), n))
        show(
            "PATCH /leads/{id} (re-scored)",
            timed(
                lambda i: http.patch(
                    f"/api/v1/leads/{created[i]}",
                    json={"attributes": {"age": 30 + i % 40}},
                    headers=sales,
                ),
                n,
            ),
        )
        show(
            "GET /leads?sort=score_desc&limit=50",
            timed(
                lambda i: http.get("/api/v1/leads", params={"sort": "score_desc"}, headers=sales),
                min(n, 200),
            ),
        )

        ctx = app.state.runtime.contexts["sales"]
        scoring = scoring_of(ctx)
        facts = [
            domain.LeadFacts(
                created_at=datetime_now(),
                channel="mobile",
                source="web",
                campaign="bench",
                message=None,
                attributes=lead(i)["attributes"],
            )
            for i in range(n)
        ]
        print("  in process (feature mapping + model, no HTTP, no database):")
        show(
            "feature_row + score (4 factors)",
            timed(lambda i: scoring.server.score(domain.feature_row(facts[i]), explain=4), n),
        )
        show(
            "feature_row + score (no factors)",
            timed(lambda i: scoring.server.score(domain.feature_row(facts[i]), explain=0), n),
        )

        t = time.perf_counter()
        answer = http.post(
            "/api/v1/leads/import",
            content=leads_csv(0, args.import_rows),
            headers={**sales, "Content-Type": "text/csv"},
        )
        seconds = time.perf_counter() - t
        assert answer.status_code == 200, answer.text[:300]
        print(
            f"  CSV import of {args.import_rows:,} leads (validated, encrypted, scored): "
            f"{seconds:.2f} s, {args.import_rows / seconds:,.0f} rows/s"
        )

        run = http.post(
            "/api/v1/ml/train", json={"reference_rows": 3000, "promote": False}, headers=admin
        ).json()
        while run["status"] not in ("succeeded", "failed"):
            time.sleep(0.2)
            run = http.get(f"/api/v1/ml/runs/{run['id']}", headers=admin).json()
        print(
            f"  training run (3,000 reference rows + feedback, hold-out): "
            f"{run['result']['training_seconds']:.1f} s fit"
        )
        total = http.get("/api/v1/ml/serving", headers=admin).json()["leads_scored"]
        t = time.perf_counter()
        answer = http.post(
            "/api/v1/ml/promote",
            json={"version": run["result"]["version"], "force": True},
            headers=admin,
        )
        swap = time.perf_counter() - t
        assert answer.status_code == 200, answer.text
        while http.get("/api/v1/ml/serving", headers=admin).json()["leads_stale"]:
            time.sleep(0.05)
        rescore = time.perf_counter() - t
        print(
            f"  hot swap: POST /ml/promote answered in {1000 * swap:.0f} ms (new version serving); "
            f"{total:,} leads re-scored in {rescore:.2f} s, {total / rescore:,.0f} rows/s"
        )
        print(f"  memory: RSS {rss_mib(os.getpid()):.0f} MiB (server + client in one process)")
    server.should_exit = True
    thread.join(timeout=30)


def datetime_now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


if __name__ == "__main__":
    main()
