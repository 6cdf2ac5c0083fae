"""The Stripe adapter over real HTTP against recorded Stripe API exchanges
(tests/fixtures/stripe/*.json) served from 127.0.0.1; no network, nothing monkeypatched."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from sqlalchemy import select

from ecosistema.payments.domain import sign_payload
from ecosistema.payments.models import journal
from ecosistema.payments.providers.base import (
    CardDetails,
    ProviderUnavailable,
    UnknownPaymentMethod,
)
from ecosistema.payments.providers.stripe import StripeProvider
from ecosistema.payments.service import reconcile
from tests.conftest import make_settings
from tests.integration.test_payments_support import VISA, Shop, open_shop

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

FIXTURES = Path(__file__).parents[1] / "fixtures" / "stripe"
API_KEY = "sk_test_recorded"


@dataclass
class Received:
    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]


@dataclass
class RecordedStripe:
    """Answers each request with the first recorded exchange whose request it matches."""

    exchanges: list[dict[str, Any]]
    received: list[Received] = field(default_factory=list)
    url: str = ""

    def answer(
        self, method: str, target: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        parts = urlsplit(target)
        params = dict(parse_qsl(parts.query)) | dict(parse_qsl(body.decode()))
        self.received.append(Received(method, parts.path, params, headers))
        if headers.get("authorization") != f"Bearer {API_KEY}":
            return 401, b'{"error": {"type": "invalid_request_error", "message": "bad key"}}'
        for exchange in self.exchanges:
            wanted = exchange["request"]
            if (
                wanted["method"] == method
                and wanted["path"] == parts.path
                and all(params.get(k) == v for k, v in wanted["params"].items())
            ):
                response = exchange["response"]
                return int(response["status"]), json.dumps(response["body"]).encode()
        return 404, b'{"error": {"type": "invalid_request_error", "message": "no recording"}}'


@pytest.fixture
def recorded() -> Iterator[RecordedStripe]:
    stub = RecordedStripe([json.loads(p.read_text()) for p in sorted(FIXTURES.glob("*.json"))])

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, payload = stub.answer(self.command, self.path, body, headers)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Request-Id", "req_recorded")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stub.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def provider(recorded: RecordedStripe) -> StripeProvider:
    return StripeProvider(API_KEY, api_base=recorded.url, max_network_retries=0)


async def test_tokenize_sends_the_card_and_keeps_only_token_brand_last4_expiry(
    recorded: RecordedStripe,
) -> None:
    token = await provider(recorded).tokenize(CardDetails(VISA, 12, 2099, "123"))

    assert (token.token, token.brand, token.last4) == ("pm_1QvisaRecorded", "visa", "4242")
    assert (token.exp_month, token.exp_year) == (12, 2099)
    [request] = recorded.received
    assert request.path == "/v1/payment_methods"
    assert request.params["card[number]"] == VISA


async def test_saved_payment_method_is_read_back_and_an_unknown_one_is_refused(
    recorded: RecordedStripe,
) -> None:
    saved = json.loads((FIXTURES / "payment_method_create.json").read_text())["response"]
    recorded.exchanges.append(
        {
            "request": {
                "method": "GET",
                "path": f"/v1/payment_methods/{saved['body']['id']}",
                "params": {},
            },
            "response": saved,
        }
    )
    token = await provider(recorded).payment_method(saved["body"]["id"])
    assert (token.token, token.brand, token.last4) == ("pm_1QvisaRecorded", "visa", "4242")
    assert (token.exp_month, token.exp_year) == (12, 2099)
    # Stripe answers 404 resource_missing for a PaymentMethod it does not have.
    with pytest.raises(UnknownPaymentMethod):
        await provider(recorded).payment_method("pm_nobody")


async def test_automatic_charge_reports_capture_fee_and_balance_transaction(
    recorded: RecordedStripe,
) -> None:
    outcome = await provider(recorded).authorize(
        amount=3500,
        currency="EUR",
        token="pm_1QvisaRecorded",
        capture=True,
        idempotency_key="pay-1:attempt:1",
        description="Order ORD-000001",
    )

    assert outcome.status == "succeeded"
    assert (outcome.ref, outcome.captured, outcome.fee) == ("pi_3QautoRecorded", 3500, 78)
    assert outcome.transaction_ref == "txn_3QautoRecorded"
    [request] = recorded.received
    assert request.headers["idempotency-key"] == "pay-1:attempt:1"
    assert request.params["amount"] == "3500"
    assert request.params["currency"] == "eur"
    assert request.params["confirm"] == "true"
    assert request.params["expand[0]"] == "latest_charge.balance_transaction"


async def test_card_decline_is_a_failed_outcome_with_the_decline_code(
    recorded: RecordedStripe,
) -> None:
    outcome = await provider(recorded).authorize(
        amount=3500,
        currency="EUR",
        token="pm_1QfundsRecorded",
        capture=True,
        idempotency_key="pay-2:attempt:1",
        description="Order ORD-000002",
    )

    assert outcome.status == "failed"
    assert outcome.ref == "pi_3QdeclinedRecorded"
    assert outcome.decline_code == "insufficient_funds"
    assert outcome.message == "Your card has insufficient funds."


async def test_manual_capture_of_part_then_void_and_refund(recorded: RecordedStripe) -> None:
    stripe = provider(recorded)
    authorized = await stripe.authorize(
        amount=3500,
        currency="EUR",
        token="pm_1QvisaRecorded",
        capture=False,
        idempotency_key="pay-3:attempt:1",
        description="Order ORD-000003",
    )
    assert authorized.status == "requires_capture"

    captured = await stripe.capture(authorized.ref, 2000, idempotency_key="pay-3:capture")
    assert (captured.status, captured.captured, captured.fee) == ("succeeded", 2000, 55)
    assert recorded.received[-1].headers["idempotency-key"] == "pay-3:capture"

    await stripe.void(authorized.ref, idempotency_key="pay-3:void")
    assert recorded.received[-1].path == "/v1/payment_intents/pi_3QmanualRecorded/cancel"

    refund = await stripe.refund("pi_3QautoRecorded", 1000, idempotency_key="refund-1")
    assert (refund.ref, refund.status) == ("re_3QautoRecorded", "succeeded")
    assert refund.transaction_ref == "txn_3QrefundRecorded"


async def test_completed_customer_action_reads_the_intent_back(recorded: RecordedStripe) -> None:
    outcome = await provider(recorded).confirm("pi_3QactionRecorded", idempotency_key="k")
    assert (outcome.status, outcome.captured) == ("succeeded", 3500)
    assert recorded.received[-1].method == "GET"


async def test_balance_transactions_skip_payouts(recorded: RecordedStripe) -> None:
    movements = await provider(recorded).transactions()
    assert [(m.ref, m.kind, m.amount, m.fee, m.currency) for m in movements] == [
        ("txn_3QrefundRecorded", "refund", -1000, 0, "EUR"),
        ("txn_3QautoRecorded", "charge", 3500, 78, "EUR"),
    ]


async def test_stripe_server_error_is_a_provider_unavailable_problem(
    recorded: RecordedStripe,
) -> None:
    with pytest.raises(ProviderUnavailable):
        await provider(recorded).capture("pi_3QbrokenRecorded", 100, idempotency_key="k")
    with pytest.raises(ProviderUnavailable):
        await StripeProvider("sk_test_wrong", api_base=recorded.url, max_network_retries=0).void(
            "pi_3QmanualRecorded", idempotency_key="k"
        )


@pytest.fixture
async def stripe_shop(shape: str, tmp_path: Path, recorded: RecordedStripe) -> AsyncIterator[Shop]:
    settings = make_settings(
        shape,
        tmp_path,
        payment_provider="stripe",
        stripe_api_key=API_KEY,
        stripe_api_base=recorded.url,
    )
    async with open_shop(settings) as shop:
        yield shop


async def test_payment_and_refund_through_stripe_reconcile_with_its_balance(
    stripe_shop: Shop, recorded: RecordedStripe
) -> None:
    shop = stripe_shop
    order = shop.orders.place()
    paid = await shop.pay(order["id"], VISA)
    assert paid.status_code == 201, paid.text
    assert paid.json()["provider"] == "stripe"
    assert paid.json()["status"] == "succeeded"
    assert paid.json()["card"]["last4"] == "4242"
    refund = await shop.http.post(
        f"/api/v1/payments/{paid.json()['id']}/refunds",
        json={"amount": 1000, "reason": "late delivery"},
        headers={**shop.as_("staff"), "Idempotency-Key": "stripe-refund"},
    )
    assert refund.status_code == 201, refund.text

    async with shop.ctx.db.read() as session:
        refs = set((await session.execute(select(journal.c.provider_ref))).scalars())
    assert refs == {"txn_3QautoRecorded", "txn_3QrefundRecorded"}
    report = await reconcile(shop.ctx, provider="stripe")
    assert report.clean, report
    assert report.matched == 2


async def test_stripe_webhook_for_a_completed_action_books_the_fee_from_stripe(
    shape: str, tmp_path: Path, recorded: RecordedStripe
) -> None:
    secret = "whsec_recorded"
    settings = make_settings(
        shape,
        tmp_path,
        payment_provider="stripe",
        stripe_api_key=API_KEY,
        stripe_api_base=recorded.url,
        payment_webhook_secrets={"stripe": secret},
    )
    async with open_shop(settings) as shop:
        order = shop.orders.place()
        started = await shop.pay(order["id"], "4000002500003155")
        assert started.json()["status"] == "requires_action"
        assert started.json()["next_action"]["type"] == "use_stripe_sdk"
        payload = json.dumps(
            {
                "id": "evt_3QactionRecorded",
                "object": "event",
                "type": "payment_intent.succeeded",
                "data": {
                    "object": {
                        "id": "pi_3QactionRecorded",
                        "object": "payment_intent",
                        "amount_received": 3500,
                        "latest_charge": "ch_3QactionRecorded",
                        "status": "succeeded",
                    }
                },
            }
        ).encode()
        delivered = await shop.http.post(
            "/api/v1/webhooks/providers/stripe",
            content=payload,
            headers={"Stripe-Signature": sign_payload(secret, int(time.time()), payload)},
        )
        assert delivered.json()["outcome"] == "applied_succeeded"
        payment = await shop.http.get(
            f"/api/v1/payments/{started.json()['id']}", headers=shop.as_("staff")
        )
        assert payment.json()["status"] == "succeeded"
        async with shop.ctx.db.read() as session:
            rows = (
                await session.execute(
                    select(journal.c.provider_ref, journal.c.account, journal.c.debit)
                )
            ).all()
        assert {r.provider_ref for r in rows} == {"txn_3QactionRecorded"}
        assert [r.debit for r in rows if r.account == "fees"] == [78]
