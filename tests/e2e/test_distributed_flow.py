"""End to end in the distributed shape: ``ecosistema up --distributed`` runs every service as its
own processes (catalog twice) behind the gateway, on PostgreSQL, Redis and NATS. A customer signs
up and in through the gateway, browses, fills a cart, checks out and pays; the order turns paid
through the events between processes, and the customer sees the invoice. The gateway serves
HTTPS with a certificate from ``ecosistema certs dev``. With one catalog replica killed,
orders' calls to catalog go to the other and checkouts keep succeeding. Services reached around
the gateway still demand credentials, and SIGTERM stops every process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ecosistema.certs import create_dev_certificates
from ecosistema.gateway.principal import PRINCIPAL_HEADER, Principal, sign_principal
from ecosistema.identity.service import create_admin
from ecosistema.orders.service import seed_demo
from ecosistema.platform.config import Settings
from ecosistema.platform.runtime import Runtime
from ecosistema.services import SERVICE_NAMES, load_services
from tests.conftest import (
    drop_test_schemas,
    make_settings,
    requires_nats,
    requires_postgres,
    requires_redis,
)
from tests.default_model import DefaultModelCache
from tests.integration.test_certs_dev import _legacy_client, _legacy_server_accepts
from tests.integration.test_distributed_support import (
    SECRET,
    child_environment,
    consecutive_free_ports,
    free_ports,
    metric_samples,
)
from tests.integration.test_identity_support import API, FAST_HASHING, bearer, signed_in
from tests.integration.test_orders_support import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    add_product,
    checkout,
    customer,
    eventually,
    place_guest_order,
)

pytestmark = [requires_postgres, requires_redis, requires_nats]

CARD = {"card": {"number": "4242 4242 4242 4242", "exp_month": 12, "exp_year": 2099, "cvc": "123"}}


@dataclass
class Platform:
    url: str
    service_urls: dict[str, list[str]]
    process: subprocess.Popen[bytes]
    # Trusts the development CA (``ca``) the gateway's certificate comes from.
    trust: ssl.SSLContext
    ca: Path
    data_dir: Path

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        """A client of the gateway, over HTTPS."""
        return httpx.AsyncClient(base_url=self.url, timeout=30, verify=self.trust, **kwargs)


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _ready(url: str, trust: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=trust) as response:
            return int(response.status) == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def platform(
    tmp_path_factory: pytest.TempPathFactory, default_model_cache: DefaultModelCache
) -> Iterator[Platform]:
    data_dir = tmp_path_factory.mktemp("distributed")
    settings = make_settings("distributed", data_dir, gateway_secret=SECRET, **FAST_HASHING)
    default_model_cache.seed(settings)
    replicas = {name: 1 for name in SERVICE_NAMES} | {"catalog": 2}
    base = consecutive_free_ports(sum(replicas.values()))
    (port,) = free_ports(1)
    env = {
        **os.environ,
        **child_environment(settings),
        "ECOSISTEMA_DISTRIBUTED_REPLICAS": json.dumps({"catalog": 2}),
    }
    asyncio.run(_prepare_shop(settings))
    # The gateway serves HTTPS with a certificate from ``ecosistema certs dev``.
    certs = create_dev_certificates(data_dir / "certs", ("localhost", "127.0.0.1"))
    trust = ssl.create_default_context(cafile=str(certs.ca_cert))
    log = (data_dir / "up.log").open("wb")
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "ecosistema", "up", "--distributed"),
            *("--port", str(port), "--base-port", str(base)),
            *("--certfile", str(certs.server_cert), "--keyfile", str(certs.server_key)),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    urls: dict[str, list[str]] = {}
    next_port = base
    for name in SERVICE_NAMES:
        for _ in range(replicas[name]):
            urls.setdefault(name, []).append(f"http://127.0.0.1:{next_port}")
            next_port += 1
    gateway = f"https://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    try:
        while not (
            _ready(f"{gateway}/.well-known/jwks.json", trust)
            and all(_ready(f"{u}/readyz") for group in urls.values() for u in group)
        ):
            if process.poll() is not None:
                raise AssertionError(f"up --distributed exited: {_tail(data_dir)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"up --distributed not ready: {_tail(data_dir)}")
            time.sleep(0.5)
        yield Platform(gateway, urls, process, trust, certs.ca_cert, data_dir)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()
        # Shown by pytest when a test of this module failed.
        print(_tail(data_dir))
        asyncio.run(drop_test_schemas(settings))


async def _prepare_shop(settings: Settings) -> None:
    """An admin account and orders' shipping and tax configuration (the demo's)."""
    runtime = Runtime(settings, load_services(["identity", "orders"]))
    await runtime.start(background=False)
    try:
        await create_admin(runtime.contexts["identity"], email=ADMIN_EMAIL, password=ADMIN_PASSWORD)
        await seed_demo(runtime.contexts["orders"])
        await runtime.drain_outboxes()
    finally:
        await runtime.stop()


def _tail(data_dir: Path) -> str:
    """The end of the platform's log, without access lines."""
    text = (data_dir / "up.log").read_text(errors="replace")
    lines = [line for line in text.splitlines() if '"event":"access"' not in line]
    return "\n".join(lines)[-6000:]


async def _shop_and_cart(client: httpx.AsyncClient) -> tuple[dict[str, Any], str]:
    """Admin stocks a product; a customer signs up and in, browses and fills a cart."""
    admin = await signed_in(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    warehouse = await client.post(
        f"{API}/warehouses", json={"code": "main", "name": "Main"}, headers=bearer(admin)
    )
    assert warehouse.status_code in (201, 409), warehouse.text
    sku = f"DIST-{uuid.uuid4().hex[:6].upper()}"
    await add_product(client, admin, sku, 5)

    shopper = await customer(client, "distributed")
    found = await client.get(f"{API}/products", params={"limit": 100})
    assert found.status_code == 200, found.text
    ids = [p["id"] for p in found.json()["items"] if p["name"] == f"Product {sku}"]
    assert len(ids) == 1
    product = await client.get(f"{API}/products/{ids[0]}")
    assert product.status_code == 200, product.text
    assert product.json()["variants"][0]["sku"] == sku

    cart = await client.post(f"{API}/carts", json={"currency": "EUR"}, headers=bearer(shopper))
    assert cart.status_code == 201, cart.text
    cart_id = cart.json()["id"]
    added = await client.post(
        f"{API}/carts/{cart_id}/items",
        json={"sku": sku, "quantity": 1},
        headers=bearer(shopper),
    )
    assert added.status_code == 200, added.text
    assert added.json()["totals"]["subtotal"] == 2000
    return shopper, cart_id


async def test_customer_signs_up_signs_in_browses_and_fills_a_cart_through_the_gateway(
    platform: Platform,
) -> None:
    async with platform.client() as client:
        shopper, cart_id = await _shop_and_cart(client)
        mine = await client.get(f"{API}/carts/{cart_id}", headers=bearer(shopper))
        assert mine.status_code == 200 and mine.json()["customer_id"] == shopper["id"]


async def test_customer_checks_out_and_orders_reads_their_email_from_identity(
    platform: Platform,
) -> None:
    # Orders looks the customer up in identity with the API key ``up --distributed`` provisioned
    # (ECOSISTEMA_IDENTITY_API_KEY): without it identity answers 401 and checkout fails.
    async with platform.client() as client:
        shopper, cart_id = await _shop_and_cart(client)
        placed = await checkout(client, cart_id, bearer(shopper))
        assert placed.status_code == 201, placed.text
        order = placed.json()
        assert order["status"] == "pending_payment"
        assert order["email"] == shopper["email"]
        mine = await client.get(f"{API}/orders", headers=bearer(shopper))
        assert order["id"] in [o["id"] for o in mine.json()["items"]]

    # The key provisioned for calls to orders (ECOSISTEMA_ORDERS_API_KEY) reads any order, as
    # payments must to charge it.
    key = (platform.data_dir / "service-keys" / "orders.key").read_text().strip()
    async with httpx.AsyncClient(timeout=30) as direct:
        for url in platform.service_urls["orders"]:
            read = await direct.get(f"{url}{API}/orders/{order['id']}", headers={"X-API-Key": key})
            assert read.status_code == 200, read.text


async def test_customer_checks_out_pays_and_sees_the_order_paid_and_its_invoice(
    platform: Platform,
) -> None:
    async with platform.client() as client:
        shopper, cart_id = await _shop_and_cart(client)
        placed = await checkout(client, cart_id, bearer(shopper))
        assert placed.status_code == 201, placed.text
        order = placed.json()

        paid = await client.post(
            f"{API}/payments",
            json={"order_id": order["id"], "payment_method": CARD},
            headers={**bearer(shopper), "Idempotency-Key": uuid.uuid4().hex},
        )
        assert paid.status_code in (200, 201), paid.text
        assert paid.json()["status"] == "succeeded"

        async def order_is_paid() -> bool:
            response = await client.get(f"{API}/orders/{order['id']}", headers=bearer(shopper))
            return bool(response.json()["status"] == "paid")

        await eventually(order_is_paid, timeout=60, what="the order to be paid")
        mine = await client.get(f"{API}/orders", headers=bearer(shopper))
        assert order["id"] in [o["id"] for o in mine.json()["items"]]

        invoices = await client.get(f"{API}/invoices", headers=bearer(shopper))
        assert invoices.status_code == 200, invoices.text
        [summary] = [i for i in invoices.json()["items"] if i["payment_id"] == paid.json()["id"]]
        invoice = await client.get(f"{API}/invoices/{summary['id']}", headers=bearer(shopper))
        assert invoice.status_code == 200, invoice.text
        assert invoice.json()["kind"] == "invoice"
        assert invoice.json()["total"] == order["total"]
        assert invoice.json()["buyer"]["email"] == shopper["email"]


async def test_services_reached_around_the_gateway_demand_credentials(
    platform: Platform,
) -> None:
    forged = sign_principal(Principal("someone", "admin"), b"not-the-gateway-secret")
    async with httpx.AsyncClient(timeout=30, verify=platform.trust) as client:
        for url in platform.service_urls["orders"]:
            assert (await client.get(f"{url}{API}/orders")).status_code == 401
            with_forgery = await client.get(
                f"{url}{API}/orders", headers={PRINCIPAL_HEADER: forged}
            )
            assert with_forgery.status_code == 401
        for url in platform.service_urls["identity"]:
            assert (await client.get(f"{url}{API}/users/me")).status_code == 401
        through_gateway = await client.get(
            f"{platform.url}{API}/orders", headers={PRINCIPAL_HEADER: forged}
        )
        assert through_gateway.status_code == 401


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_the_gateway_serves_https_with_tls_1_2_or_later_and_hsts(platform: Platform) -> None:
    async with platform.client() as client:
        response = await client.get(f"{API}/products")
    assert response.status_code == 200
    assert response.headers["strict-transport-security"].startswith("max-age=")

    legacy = _legacy_client(platform.ca)
    if _legacy_server_accepts(
        legacy, platform.ca.parent / "server.pem", platform.ca.parent / "server-key.pem"
    ):
        async with httpx.AsyncClient(base_url=platform.url, verify=legacy, timeout=10) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"{API}/products")
    plain = platform.url.replace("https://", "http://")
    async with httpx.AsyncClient(base_url=plain, timeout=10) as client:
        with pytest.raises(httpx.HTTPError):
            await client.get(f"{API}/products")


async def test_the_gateway_answers_health_readiness_and_the_whole_api_description(
    platform: Platform,
) -> None:
    from ecosistema.platform.app import create_app

    async with platform.client() as client:
        alive = await client.get("/healthz")
        ready = await client.get("/readyz")
        described = await client.get("/openapi.json")
        docs = await client.get("/docs")
        bundle = await client.head("/docs/static/swagger-ui-bundle.js")
        wrong = await client.put(f"{API}/categories", json={})
    assert alive.status_code == 200
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == dict.fromkeys(SERVICE_NAMES, "ok")
    assert described.status_code == 200, described.text
    embedded = create_app(load_services(), Settings(environment="test")).openapi()
    assert set(described.json()["paths"]) == set(embedded["paths"])
    assert docs.status_code == 200 and "/docs/static/swagger-ui-bundle.js" in docs.text
    assert bundle.status_code == 200 and int(bundle.headers["content-length"]) > 0
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET, HEAD, POST"


def _pid_serving(platform: Platform, url: str) -> int:
    """The process of the platform that serves the service instance at ``url``."""
    port = url.rsplit(":", 1)[1]
    for pid in _descendants(platform.process.pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except FileNotFoundError:
            continue
        if (
            b"serve" in argv
            and b"--port" in argv
            and argv[argv.index(b"--port") + 1] == port.encode()
        ):
            return pid
    raise AssertionError(f"no process serves {url}")


async def test_orders_keeps_reaching_catalog_while_one_catalog_replica_is_down(
    platform: Platform,
) -> None:
    # Orders is given both catalog replicas (ECOSISTEMA_CATALOG_URL): with one killed, its
    # quotes and reservations go to the other until the supervisor has restarted it.
    down, up = platform.service_urls["catalog"]
    orders = 10
    async with platform.client() as client:
        admin = await signed_in(client, ADMIN_EMAIL, ADMIN_PASSWORD)
        warehouse = await client.post(
            f"{API}/warehouses", json={"code": "main", "name": "Main"}, headers=bearer(admin)
        )
        assert warehouse.status_code in (201, 409), warehouse.text
        sku = f"FAIL-{uuid.uuid4().hex[:6].upper()}"
        await add_product(client, admin, sku, orders + 1)
        await place_guest_order(client, {sku: 1})

        os.kill(_pid_serving(platform, down), signal.SIGKILL)

        async def refused() -> bool:
            return not await asyncio.to_thread(_ready, f"{down}/readyz")

        await eventually(refused, timeout=10, what=f"{down} to stop")
        placed = [await place_guest_order(client, {sku: 1}) for _ in range(orders)]
        assert [o["status"] for o in placed] == ["pending_payment"] * orders

    calls = await asyncio.to_thread(
        metric_samples,
        f"{platform.service_urls['orders'][0]}/metrics",
        "ecosistema_service_calls_total",
    )
    counts = {
        (labels["instance"], labels["outcome"]): int(value)
        for labels, value in calls
        if labels["service"] == "catalog"
    }
    print("\norders -> catalog attempts:", counts)
    # The dead replica refused orders' connection, and the calls moved to the other one.
    assert counts.get((down, "connect_failed"), 0) >= 1, counts
    assert counts.get((up, "ok"), 0) >= 2 * orders, counts

    async def back() -> bool:
        return await asyncio.to_thread(_ready, f"{down}/readyz")

    await eventually(back, timeout=120, what=f"{down} to be restarted")


def test_sigterm_stops_every_process_of_the_platform(platform: Platform) -> None:
    family = _descendants(platform.process.pid)
    assert len(family) >= sum(len(v) for v in platform.service_urls.values()) + 1
    platform.process.send_signal(signal.SIGTERM)
    assert platform.process.wait(timeout=60) == 0
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in family):
        assert time.monotonic() < deadline, [pid for pid in family if _alive(pid)]
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
