"""The built-in sandbox provider: Stripe's test cards, and books of its own in its own tables.

Test cards: 4242424242424242 succeeds, 4000000000000002 is declined, 4000000000009995 is
declined for insufficient funds, 4000002500003155 requires an action and then succeeds on
confirm. Any other valid card succeeds. Only the card's behaviour, brand and last four digits are
kept, under a random token.

The sandbox stands in for an external provider, so it keeps transactions of its own, apart from
the payments service's; they run on the driver (``Database.driver_write``) with statements built
once below.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError

from ecosistema.payments.domain import card_brand, sandbox_fee
from ecosistema.payments.models import sandbox_cards, sandbox_intents, sandbox_ledger
from ecosistema.payments.providers.base import (
    CardDetails,
    CardToken,
    ProviderOutcome,
    ProviderRefund,
    ProviderTransaction,
    ProviderUnavailable,
    UnknownPaymentMethod,
)
from ecosistema.platform.db import Database, DriverTransaction, utcnow

TEST_CARDS: Mapping[str, str] = {
    "4242424242424242": "succeed",
    "4000000000000002": "generic_decline",
    "4000000000009995": "insufficient_funds",
    "4000002500003155": "requires_action",
}


_CARD = select(sandbox_cards).where(sandbox_cards.c.token == bindparam("token"))
_CARD_BEHAVIOUR = select(sandbox_cards.c.behaviour).where(
    sandbox_cards.c.token == bindparam("token")
)
_INTENT = select(sandbox_intents).where(sandbox_intents.c.ref == bindparam("ref"))
_INTENT_BY_KEY = select(sandbox_intents).where(
    sandbox_intents.c.idempotency_key == bindparam("idempotency_key")
)
_SET_INTENT_STATUS = (
    update(sandbox_intents)
    .where(sandbox_intents.c.ref == bindparam("ref"))
    .values(status=bindparam("status"))
)
_ENTRY_BY_KEY = select(sandbox_ledger.c.id).where(
    sandbox_ledger.c.idempotency_key == bindparam("idempotency_key")
)
_CHARGE = select(sandbox_ledger).where(
    sandbox_ledger.c.intent_ref == bindparam("ref"), sandbox_ledger.c.kind == "charge"
)


def _ref(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


class SandboxProvider:
    """A provider that moves no real money, with the outcomes of Stripe's test cards."""

    name = "sandbox"

    def __init__(self, db: Database) -> None:
        self._db = db

    async def tokenize(self, card: CardDetails) -> CardToken:
        """Keep the card's behaviour under a new token; the number itself is forgotten."""
        number = card.number.replace(" ", "").replace("-", "")
        token = _ref("tok")
        brand = card_brand(number)
        async with self._db.driver_write() as tx:
            await tx.insert(
                sandbox_cards,
                {
                    "token": token,
                    "behaviour": TEST_CARDS.get(number, "succeed"),
                    "brand": brand,
                    "last4": number[-4:],
                    "exp_month": card.exp_month,
                    "exp_year": card.exp_year,
                    "created_at": utcnow(),
                },
            )
        return CardToken(token, brand, number[-4:], card.exp_month, card.exp_year)

    async def payment_method(self, token: str) -> CardToken:
        """The card kept under ``token``."""
        async with self._db.driver_read() as tx:
            card = await _card(tx, token)
        return CardToken(
            token,
            str(card["brand"]),
            str(card["last4"]),
            int(card["exp_month"] or 0),
            int(card["exp_year"] or 0),
        )

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
        """Charge or authorize per the test card's behaviour, once per idempotency key."""
        async with self._db.driver_write() as tx:
            existing = await tx.row(_INTENT_BY_KEY, idempotency_key=idempotency_key)
            if existing is not None:
                return await self._outcome_of(tx, existing)
            card = await _card(tx, token)
            behaviour = str(card["behaviour"])
            if behaviour in ("generic_decline", "insufficient_funds"):
                status = "failed"
            elif behaviour == "requires_action":
                status = "requires_action"
            else:
                status = "succeeded" if capture else "requires_capture"
            ref = _ref("pi")
            row = {
                "ref": ref,
                "idempotency_key": idempotency_key,
                "token": token,
                "status": status,
                "capture": capture,
                "amount": amount,
                "currency": currency,
                "created_at": utcnow(),
            }
            await tx.insert(sandbox_intents, row)
            if status == "succeeded":
                # A new intent has no charge yet: booked without the lookups a retry needs.
                fee = sandbox_fee(amount)
                entry_id = await self._book(
                    tx, ref, "charge", amount, currency, f"{ref}:capture", fee=fee, fresh=True
                )
                return ProviderOutcome(
                    "succeeded", ref, captured=amount, fee=fee, transaction_ref=entry_id
                )
            return await self._outcome_of(tx, row)

    async def confirm(self, ref: str, *, idempotency_key: str) -> ProviderOutcome:
        """Complete the customer's action; the payment then succeeds (or awaits capture)."""
        async with self._db.driver_write() as tx:
            intent = await self._intent(tx, ref)
            if intent["status"] == "requires_action":
                status = "succeeded" if intent["capture"] else "requires_capture"
                await tx.execute(_SET_INTENT_STATUS, ref=ref, status=status)
                if status == "succeeded":
                    await self._book(
                        tx,
                        ref,
                        "charge",
                        int(intent["amount"]),
                        intent["currency"],
                        f"{ref}:capture",
                    )
                intent = await self._intent(tx, ref)
            return await self._outcome_of(tx, intent)

    async def capture(self, ref: str, amount: int, *, idempotency_key: str) -> ProviderOutcome:
        """Capture part or all of an authorization."""
        async with self._db.driver_write() as tx:
            intent = await self._intent(tx, ref)
            if intent["status"] == "requires_capture":
                if amount > int(intent["amount"]):
                    raise ProviderUnavailable(
                        "The sandbox refuses to capture more than authorized."
                    )
                await tx.execute(_SET_INTENT_STATUS, ref=ref, status="succeeded")
                await self._book(tx, ref, "charge", amount, intent["currency"], f"{ref}:capture")
                intent = await self._intent(tx, ref)
            return await self._outcome_of(tx, intent)

    async def void(self, ref: str, *, idempotency_key: str) -> None:
        """Release an authorization that was not captured."""
        async with self._db.driver_write() as tx:
            intent = await self._intent(tx, ref)
            if intent["status"] == "succeeded":
                raise ProviderUnavailable("The sandbox cannot void a captured payment.")
            await tx.execute(_SET_INTENT_STATUS, ref=ref, status="canceled")

    async def refund(self, ref: str, amount: int, *, idempotency_key: str) -> ProviderRefund:
        """Give back part of a capture, once per idempotency key."""
        async with self._db.driver_write() as tx:
            intent = await self._intent(tx, ref)
            entry_id = await self._book(
                tx, ref, "refund", -amount, intent["currency"], idempotency_key, fee=0
            )
        return ProviderRefund(
            ref=_refund_ref(entry_id), status="succeeded", transaction_ref=entry_id
        )

    async def transactions(self) -> list[ProviderTransaction]:
        """Every movement in the sandbox's ledger."""
        async with self._db.read() as session:
            rows = (
                await session.execute(select(sandbox_ledger).order_by(sandbox_ledger.c.created_at))
            ).mappings()
            return [
                ProviderTransaction(
                    ref=r["id"],
                    kind="charge" if r["kind"] == "charge" else "refund",
                    amount=int(r["amount"]),
                    fee=int(r["fee"]),
                    currency=r["currency"],
                    source=r["intent_ref"],
                )
                for r in rows
            ]

    async def _intent(self, tx: DriverTransaction, ref: str) -> Mapping[str, Any]:
        intent = await tx.row(_INTENT, ref=ref)
        if intent is None:
            raise ProviderUnavailable(f"The sandbox has no payment {ref}.")
        return intent

    async def _book(
        self,
        tx: DriverTransaction,
        ref: str,
        kind: str,
        amount: int,
        currency: str,
        idempotency_key: str,
        *,
        fee: int | None = None,
        fresh: bool = False,
    ) -> str:
        entry_id = _ref("txn")
        entry = {
            "id": entry_id,
            "idempotency_key": idempotency_key,
            "intent_ref": ref,
            "kind": kind,
            "amount": amount,
            "fee": sandbox_fee(amount) if fee is None else fee,
            "currency": currency,
            "created_at": utcnow(),
        }
        if fresh:  # the key is new by construction: no lookup
            await tx.insert(sandbox_ledger, entry)
            return entry_id
        found = await tx.scalar(_ENTRY_BY_KEY, idempotency_key=idempotency_key)
        if found is not None:
            return str(found)
        try:
            await tx.insert(sandbox_ledger, entry)
        except IntegrityError:
            # Another transaction booked the key meanwhile; this one is rolled back whole.
            raise ProviderUnavailable("A sandbox operation with this key is in flight.") from None
        return entry_id

    async def _outcome_of(
        self, tx: DriverTransaction, intent: Mapping[str, Any]
    ) -> ProviderOutcome:
        ref = str(intent["ref"])
        status = str(intent["status"])
        if status == "failed":
            card = await tx.scalar(_CARD_BEHAVIOUR, token=intent["token"])
            message = (
                "Your card has insufficient funds."
                if card == "insufficient_funds"
                else "Your card was declined."
            )
            return ProviderOutcome("failed", ref, decline_code=str(card), message=message)
        if status == "requires_action":
            return ProviderOutcome(
                "requires_action",
                ref,
                next_action={"type": "use_stripe_sdk", "three_d_secure": {"ref": ref}},
            )
        if status == "succeeded":
            charge = await tx.row(_CHARGE, ref=ref)
            if charge is None:
                raise ProviderUnavailable(f"The sandbox has no charge for payment {ref}.")
            return ProviderOutcome(
                "succeeded",
                ref,
                captured=int(charge["amount"]),
                fee=int(charge["fee"]),
                transaction_ref=str(charge["id"]),
            )
        if status == "canceled":
            return ProviderOutcome("canceled", ref)
        return ProviderOutcome("requires_capture", ref)


def _refund_ref(entry_id: str) -> str:
    return "re_" + entry_id.removeprefix("txn_")


async def _card(tx: DriverTransaction, token: str) -> dict[str, Any]:
    """The test card kept under ``token``; ``UnknownPaymentMethod`` when there is none."""
    card = await tx.row(_CARD, token=token)
    if card is None:
        raise UnknownPaymentMethod()
    return card
