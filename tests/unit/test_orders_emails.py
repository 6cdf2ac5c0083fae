"""What the buyer's order mails say (no I/O): amounts in each currency's own decimals, totals
with tax included or added, the lines of a parcel or a refund, a cancellation reason in words."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ecosistema.orders import schemas
from ecosistema.orders.emails import (
    cancellation_reason,
    check_order_url,
    format_amount,
    render,
    render_cancellation,
    render_confirmation,
    render_refund,
    render_shipping,
    retry_delay,
    sender_in_shop_name,
)

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
URL = "https://shop.example/orders/o1"


def order(**overrides: Any) -> schemas.Order:
    lines = [
        schemas.OrderLine(
            line_id="l1",
            sku="TEE-M",
            name="Tee — M",
            quantity=2,
            unit_price=2000,
            subtotal=4000,
            discount=400,
            tax=625,
            total=3600,
        ),
        schemas.OrderLine(
            line_id="l2",
            sku="MUG",
            name="Mug",
            quantity=1,
            unit_price=1250,
            subtotal=1250,
            discount=125,
            tax=195,
            total=1125,
        ),
    ]
    fields: dict[str, Any] = {
        "id": "o1",
        "number": "ORD-100042",
        "customer_id": None,
        "email": "nora@example.com",
        "status": "paid",
        "fulfillment_status": "unfulfilled",
        "payment_status": "paid",
        "amount_paid": 5220,
        "currency": "EUR",
        "subtotal": 5250,
        "discount_total": 525,
        "tax_total": 906,
        "shipping_total": 495,
        "total": 5220,
        "prices_include_tax": True,
        "tax_rate_bp": 2100,
        "shipping_tax": 86,
        "shipping_address": schemas.PostalAddress(
            name="Nora Bianchi",
            line1="Via del Corso 12",
            city="Roma",
            postal_code="00186",
            country="IT",
        ),
        "lines": lines,
        "created_at": NOW,
        "updated_at": NOW,
        "reservation_expires_at": None,
        "country": "IT",
        "shipping_method": "standard",
        "voucher_code": "WELCOME10",
        "refunded_total": 0,
        "allowed_actions": [],
        "fulfillments": [],
    }
    fields.update(overrides)
    return schemas.Order(**fields)


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [
        (123450, "EUR", "€1,234.50"),
        (5, "USD", "$0.05"),
        (1200, "JPY", "¥1,200"),
        (1234, "KWD", "KWD 1.234"),
        (1200, "CHF", "CHF 12.00"),
        (-500, "EUR", "-€5.00"),
        (0, "GBP", "£0.00"),
    ],
)
def test_amounts_are_shown_with_the_currencys_own_decimals(
    amount: int, currency: str, shown: str
) -> None:
    assert format_amount(amount, currency) == shown


def test_a_confirmation_lists_lines_totals_address_and_link_with_tax_included() -> None:
    mail = render_confirmation(order(), store="Tienda", order_url=URL)
    assert mail.subject == "Order ORD-100042 confirmed"
    text = mail.text
    assert "Hello Nora Bianchi," in text
    assert "2 x Tee — M (TEE-M) at €20.00  €40.00" in text
    assert "1 x Mug (MUG) at €12.50  €12.50" in text
    totals = text[text.index("Subtotal") :].splitlines()[:5]
    assert [line.split()[0] for line in totals] == [
        "Subtotal",
        "Discount",
        "Shipping",
        "Total",
        "Including",
    ]
    assert "Discount (WELCOME10)  -€5.25" in text
    assert "Total" in totals[3] and totals[3].endswith("€52.20")
    assert totals[4].startswith("Including tax (21%)") and totals[4].endswith("€9.06")
    assert "Shipping to:\nNora Bianchi\nVia del Corso 12\n00186 Roma\nIT" in text
    assert f"View your order: {URL}" in text
    assert text.rstrip().endswith("— Tienda")
    assert "<p>Shipping to:<br>Nora Bianchi<br>" in mail.html


def test_tax_added_to_prices_is_a_line_of_its_own_before_the_total() -> None:
    exclusive = order(prices_include_tax=False, total=6126, tax_rate_bp=1950)
    text = render_confirmation(exclusive, store="Shop", order_url=URL).text
    totals = text[text.index("Subtotal") :].splitlines()[:5]
    assert totals[3].startswith("Tax (19.5%)") and totals[3].endswith("€9.06")
    assert totals[4].startswith("Total") and totals[4].endswith("€61.26")
    assert "Including tax" not in text


def test_an_order_with_nothing_to_ship_says_nothing_of_shipping() -> None:
    digital = order(shipping_method=None, shipping_total=0, shipping_address=None)
    text = render_confirmation(digital, store="Shop", order_url=URL).text
    assert "Shipping" not in text
    assert text.startswith("Hello,")


def test_text_from_buyers_is_escaped_in_the_html_alternative() -> None:
    address = schemas.PostalAddress(
        name="<script>x</script>", line1="1 Main St", city="Town", country="US"
    )
    mail = render_confirmation(order(shipping_address=address), store="Shop", order_url=URL)
    assert "<script>" not in mail.html and "&lt;script&gt;" in mail.html


def test_a_parcel_names_its_carrier_tracking_number_and_units() -> None:
    mail = render_shipping(
        order(),
        tracking_number="TRK-1",
        carrier="Correos",
        lines=[{"line_id": "l1", "sku": "TEE-M", "quantity": 1}],
        store="Shop",
        order_url=URL,
    )
    assert mail.subject == "Order ORD-100042 shipped"
    assert "Part of your order ORD-100042 is on its way." in mail.text
    assert "Carrier: Correos\nTracking number: TRK-1" in mail.text
    assert "1 x Tee — M (TEE-M) at €20.00  €20.00" in mail.text
    assert "Mug" not in mail.text
    everything = render_shipping(
        order(),
        tracking_number="TRK-2",
        carrier=None,
        lines=[{"line_id": "l1", "quantity": 2}, {"line_id": "l2", "quantity": 1}],
        store="Shop",
        order_url=URL,
    )
    assert "Your order ORD-100042 is on its way." in everything.text
    assert "Carrier" not in everything.text


def test_a_refund_says_how_much_and_for_which_units() -> None:
    mail = render_refund(
        order(refunded_total=2000, status="partially_refunded"),
        amount=2000,
        lines=[{"line_id": "l1", "sku": "TEE-M", "quantity": 1}],
        store="Shop",
        order_url=URL,
    )
    assert mail.subject == "Refund for order ORD-100042"
    assert "We have refunded €20.00 for your order ORD-100042." in mail.text
    assert "Refunded items:\n1 x Tee — M (TEE-M)" in mail.text
    assert "Order total      €52.20" in mail.text
    by_amount = render_refund(order(), amount=300, lines=[], store="Shop", order_url=URL)
    assert "Refunded items" not in by_amount.text
    assert "We have refunded €3.00" in by_amount.text


def test_cancellation_reasons_read_as_sentences() -> None:
    assert "not paid in time" in cancellation_reason("reservation_expired")
    assert cancellation_reason(None) == cancellation_reason("cancel")
    assert cancellation_reason("Ordered the wrong size") == "Reason: Ordered the wrong size"
    mail = render_cancellation(order(), reason="reservation_expired", store="S", order_url=URL)
    assert mail.subject == "Order ORD-100042 cancelled"
    assert "reservation_expired" not in mail.text


def test_render_refuses_a_kind_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="no order mail"):
        render("invoice", order(), {}, store="S", order_url=URL)


def test_retries_back_off_up_to_an_hour() -> None:
    assert retry_delay(1) == timedelta(seconds=30)
    assert retry_delay(3) == timedelta(seconds=120)
    assert retry_delay(12) == timedelta(hours=1)


def test_the_sender_carries_the_shops_name() -> None:
    assert sender_in_shop_name("Ecosistema <no-reply@x.example>", "Tienda Nora") == (
        "Tienda Nora <no-reply@x.example>"
    )
    assert sender_in_shop_name("orders@x.example", "") == "orders@x.example"


def test_a_link_template_with_other_placeholders_is_refused() -> None:
    check_order_url("https://shop.example/account/orders/{number}?id={order_id}")
    for template in ("{public_url}/orders/{id}", "{public_url}/orders/{0}", "/orders/{"):
        with pytest.raises(ValueError, match="ORDERS_EMAIL_ORDER_URL"):
            check_order_url(template)


def test_a_refund_says_the_refunded_total_its_event_left_not_the_orders_now() -> None:
    later = order(refunded_total=5220, status="refunded")
    details = {"amount": 2000, "lines": [{"line_id": "l1", "quantity": 1}], "refunded_total": 2000}
    mail = render("refund", later, details, store="Shop", order_url=URL)
    assert "Refunded in all  €20.00" in mail.text
    # A mail queued before its event carried the total falls back on the order's.
    older = render("refund", later, {"amount": 2000}, store="Shop", order_url=URL)
    assert "Refunded in all  €52.20" in older.text


def test_the_items_of_a_refund_add_up_to_the_amount_refunded() -> None:
    rest = render_refund(
        order(),
        amount=5745,
        lines=[{"line_id": "l1", "quantity": 2}, {"line_id": "l2", "quantity": 1}],
        store="Shop",
        order_url=URL,
    )
    assert "Shipping and other charges  €4.95" in rest.text
    discounted = render_refund(
        order(), amount=1800, lines=[{"line_id": "l1", "quantity": 1}], store="S", order_url=URL
    )
    assert "Less discounts and adjustments  -€2.00" in discounted.text
    exact = render_refund(
        order(), amount=2000, lines=[{"line_id": "l1", "quantity": 1}], store="S", order_url=URL
    )
    assert "charges" not in exact.text and "adjustments" not in exact.text


def test_a_confirmation_says_what_was_received_when_less_than_the_total() -> None:
    mail = render(
        "confirmation", order(amount_paid=5220), {"amount_paid": 2610}, store="S", order_url=URL
    )
    assert "We have received €26.10 of its total of €52.20" in mail.text
    assert "received your payment" not in mail.text
    assert re.search(r"^Paid +€26\.10$", mail.text, re.MULTILINE), mail.text
    whole = render_confirmation(order(amount_paid=5220), store="S", order_url=URL)
    assert "We have received your payment" in whole.text and "Paid " not in whole.text


def test_an_order_with_nothing_to_pay_is_confirmed_without_a_payment() -> None:
    free = order(total=0, amount_paid=0, discount_total=5745, tax_total=0)
    mail = render("confirmation", free, {"amount_paid": 0}, store="S", order_url=URL)
    assert "There is nothing to pay for it" in mail.text
    assert "payment" not in mail.text
