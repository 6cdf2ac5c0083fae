"""End to end over HTTP: a salesperson imports leads from CSV and reads their scores and
reasons, marks some won and lost, an admin retrains on those outcomes, and the new version
scores the leads without a restart."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from tests.integration.test_sales_support import API, app, bearer, eventually, settings, users

__all__ = ["app", "settings"]

JOBS = ("admin.", "retired", "student", "blue-collar", "technician", "management", "services")


def leads_csv(rows: int) -> str:
    lines = ["name,email,channel,campaign,message,age,job,education,poutcome"]
    for i in range(rows):
        lines.append(
            f"Lead {i},lead{i}@example.com,{'mobile' if i % 3 else 'landline'},autumn,"
            f'"Interested, call {i}",{22 + (i * 7) % 60},{JOBS[i % len(JOBS)]},'
            f"{'university.degree' if i % 2 else 'high.school'},"
            f"{'success' if i % 5 == 0 else 'nonexistent'}"
        )
    return "\n".join(lines) + "\n"


async def test_import_score_close_retrain_and_serve_without_restart(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    sales, admin = bearer(people["sales"]), bearer(people["admin"])

    imported = await client.post(
        f"{API}/leads/import",
        content=leads_csv(40).encode(),
        headers={**sales, "Content-Type": "text/csv"},
    )
    assert imported.status_code == 200, imported.text
    report = imported.json()
    assert report["created"] == report["scored"] == 40 and report["model_version"] == "v1"

    ranked = await client.get(
        f"{API}/leads", params={"sort": "score_desc", "limit": 40}, headers=sales
    )
    items = ranked.json()["items"]
    assert [i["score"] for i in items] == sorted((i["score"] for i in items), reverse=True)
    assert items[0]["score"] > items[-1]["score"]
    best = items[0]
    assert best["factors"] and all(f["phrase"] for f in best["factors"])
    assert any(f["contribution"] > 0 for f in best["factors"])

    for position, item in enumerate(items[:20]):
        status = "won" if position % 2 == 0 else "lost"
        closed = await client.patch(
            f"{API}/leads/{item['id']}", json={"status": status}, headers=sales
        )
        assert closed.status_code == 200 and closed.json()["status"] == status

    serving = (await client.get(f"{API}/ml/serving", headers=admin)).json()
    assert serving["feedback_rows"] == 20 and serving["version"] == "v1"
    started = await client.post(
        f"{API}/ml/train", json={"reference_rows": 3000, "force": True}, headers=admin
    )
    assert started.status_code == 202, started.text
    run_path = f"{API}/ml/runs/{started.json()['id']}"

    async def finished() -> bool:
        status = (await client.get(run_path, headers=admin)).json()["status"]
        return bool(status in ("succeeded", "failed"))

    await eventually(finished, timeout=120, what="the retraining run")
    run = (await client.get(run_path, headers=admin)).json()
    assert run["status"] == "succeeded", run
    result = run["result"]
    assert result["version"] == "v2" and result["promoted"] and result["feedback_rows"] == 20
    assert result["rescored"] == 40

    open_leads = await client.get(
        f"{API}/leads", params={"status": "new", "limit": 40}, headers=sales
    )
    assert len(open_leads.json()["items"]) == 20
    assert {i["model_version"] for i in open_leads.json()["items"]} == {"v2"}
    fresh = await client.post(
        f"{API}/leads",
        json={"name": "After Retrain", "email": "after@example.com", "attributes": {"age": 40}},
        headers=sales,
    )
    assert fresh.json()["model_version"] == "v2" and fresh.json()["factors"]
    models = (await client.get(f"{API}/ml/models", headers=admin)).json()
    assert [(m["version"], m["serving"]) for m in models] == [("v1", False), ("v2", True)]
