"""The Stripe adapter, on the official ``stripe`` package and its asynchronous HTTPX client."""

from __future__ import annotations

from typing import Any

import stripe

from ecosistema.payments.providers.base import (
    CardDetails,
    CardToken,
    ProviderOutcome,
    ProviderRefund,
    ProviderTransaction,
    ProviderUnavailable,
    UnknownPaymentMethod,
)

_EXPAND = ["latest_charge.balance_transaction"]


class StripeProvider:
    """Payments through Stripe's API (``api_base`` points elsewhere only in tests)."""

    name = "stripe"

    def __init__(
        self,
        api_key: str,
        *,
        api_base: str = "https://api.stripe.com",
        max_network_retries: int = 2,
    ) -> None:
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base},
            http_client=stripe.HTTPXClient(),
            max_network_retries=max_network_retries,
        )

    async def tokenize(self, card: CardDetails) -> CardToken:
        """Create a Stripe PaymentMethod for the card."""
        method = await self._call(
            self._client.v1.payment_methods.create_async,
            {
                "type": "card",
                "card": {
                    "number": card.number,
                    "exp_month": card.exp_month,
                    "exp_year": card.exp_year,
                    "cvc": card.cvc,
                },
            },
        )
        return _card_token(method)

    async def payment_method(self, token: str) -> CardToken:
        """Read a PaymentMethod back; one Stripe does not have, or not a card, is unknown."""
        try:
            method = _plain(await self._client.v1.payment_methods.retrieve_async(token))
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 404 or exc.code == "resource_missing":
                raise UnknownPaymentMethod() from exc
            raise ProviderUnavailable(f"Stripe answered with an error: {exc.user_message}") from exc
        except stripe.StripeError as exc:
            raise ProviderUnavailable(f"Stripe answered with an error: {exc.user_message}") from exc
        if not isinstance(method.get("card"), dict):
            raise UnknownPaymentMethod()
        return _card_token(method)

    async def authorize(
        self,
        *,
        amount: int,
        currency: str,
        token: str,
        capture: bool,
        idempotency_key: str,
        description: str,
    ) -> ProviderOutcome:
        """Create and confirm a PaymentIntent; a card decline is an outcome, not an error."""
        params: dict[str, Any] = {
            "amount": amount,
            "currency": currency.lower(),
            "payment_method": token,
            "confirm": True,
            "capture_method": "automatic" if capture else "manual",
            "description": description,
            "payment_method_types": ["card"],
            "expand": _EXPAND,
        }
        try:
            intent = await self._client.v1.payment_intents.create_async(
                params,  # type: ignore[arg-type]
                {"idempotency_key": idempotency_key},
            )
        except stripe.CardError as exc:
            error = exc.error
            intent_ref = ""
            if error is not None and error.payment_intent is not None:
                intent_ref = str(error.payment_intent["id"])
            return ProviderOutcome(
                "failed",
                intent_ref,
                decline_code=(error.decline_code or error.code) if error else None,
                message=error.message if error else str(exc),
            )
        except stripe.StripeError as exc:
            raise ProviderUnavailable(f"Stripe refused the payment: {exc.user_message}") from exc
        return _outcome(_plain(intent))

    async def confirm(self, ref: str, *, idempotency_key: str) -> ProviderOutcome:
        """Read the intent back once the customer's action is done."""
        intent = await self._call(
            self._client.v1.payment_intents.retrieve_async, ref, {"expand": _EXPAND}
        )
        return _outcome(intent)

    async def capture(self, ref: str, amount: int, *, idempotency_key: str) -> ProviderOutcome:
        """Capture part or all of an authorized PaymentIntent."""
        intent = await self._call(
            self._client.v1.payment_intents.capture_async,
            ref,
            {"amount_to_capture": amount, "expand": _EXPAND},
            options={"idempotency_key": idempotency_key},
        )
        return _outcome(intent)

    async def void(self, ref: str, *, idempotency_key: str) -> None:
        """Cancel an uncaptured PaymentIntent."""
        await self._call(
            self._client.v1.payment_intents.cancel_async,
            ref,
            {},
            options={"idempotency_key": idempotency_key},
        )

    async def refund(self, ref: str, amount: int, *, idempotency_key: str) -> ProviderRefund:
        """Refund part of a captured PaymentIntent."""
        refund = await self._call(
            self._client.v1.refunds.create_async,
            {"payment_intent": ref, "amount": amount},
            options={"idempotency_key": idempotency_key},
        )
        status = str(refund["status"])
        return ProviderRefund(
            ref=str(refund["id"]),
            status="failed" if status in ("failed", "canceled") else "succeeded",
            transaction_ref=_id_of(refund.get("balance_transaction")),
            message=refund.get("failure_reason"),
        )

    async def transactions(self) -> list[ProviderTransaction]:
        """Charges and refunds on the Stripe balance, every page of them."""
        out: list[ProviderTransaction] = []
        params: dict[str, Any] = {"limit": 100}
        while True:
            page = await self._call(self._client.v1.balance_transactions.list_async, params)
            for txn in page["data"]:
                kind = str(txn["type"])
                if kind not in ("charge", "payment", "refund", "payment_refund"):
                    continue
                out.append(
                    ProviderTransaction(
                        ref=str(txn["id"]),
                        kind="refund" if "refund" in kind else "charge",
                        amount=int(txn["amount"]),
                        fee=int(txn["fee"]),
                        currency=str(txn["currency"]).upper(),
                        source=_id_of(txn.get("source")) or "",
                    )
                )
            if not page["has_more"] or not page["data"]:
                return out
            params = {"limit": 100, "starting_after": page["data"][-1]["id"]}

    async def _call(self, method: Any, *args: Any, options: dict[str, Any] | None = None) -> Any:
        try:
            if options is not None:
                return _plain(await method(*args, options))
            return _plain(await method(*args))
        except stripe.StripeError as exc:
            raise ProviderUnavailable(f"Stripe answered with an error: {exc.user_message}") from exc


def _plain(value: Any) -> Any:
    return value.to_dict() if isinstance(value, stripe.StripeObject) else value


def _card_token(method: dict[str, Any]) -> CardToken:
    details = method["card"]
    return CardToken(
        token=str(method["id"]),
        brand=str(details["brand"]),
        last4=str(details["last4"]),
        exp_month=int(details["exp_month"]),
        exp_year=int(details["exp_year"]),
    )


def _id_of(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return str(value["id"])


def _outcome(intent: dict[str, Any]) -> ProviderOutcome:
    status = str(intent["status"])
    ref = str(intent["id"])
    if status == "succeeded":
        charge = intent.get("latest_charge")
        txn = charge.get("balance_transaction") if isinstance(charge, dict) else None
        fee = int(txn["fee"]) if isinstance(txn, dict) else 0
        return ProviderOutcome(
            "succeeded",
            ref,
            captured=int(intent["amount_received"]),
            fee=fee,
            transaction_ref=_id_of(txn),
        )
    if status == "requires_capture":
        return ProviderOutcome("requires_capture", ref)
    if status == "requires_action":
        action = intent.get("next_action")
        return ProviderOutcome(
            "requires_action",
            ref,
            next_action=dict(action) if action else {"type": "use_stripe_sdk"},
        )
    if status == "canceled":
        return ProviderOutcome("canceled", ref)
    error = intent.get("last_payment_error")
    return ProviderOutcome(
        "failed",
        ref,
        decline_code=(error.get("decline_code") or error.get("code")) if error else None,
        message=error.get("message") if error else f"Stripe left the payment in {status}.",
    )
