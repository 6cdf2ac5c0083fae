"""Postal addresses: the one shape every service gives and keeps them in (a cart's shipping
address, an order's billing address, an address saved to a profile), so that one can be copied to
another as it is, with nothing to add or take away. ISO 3166-1 country codes live here too."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ecosistema.platform.errors import pattern_rule
from ecosistema.platform.text import check_display_text

_ISO_3166_ALPHA_2_TABLE = """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ
    BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ
    CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ
    DE DJ DK DM DO DZ
    EC EE EG EH ER ES ET
    FI FJ FK FM FO FR
    GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY
    HK HM HN HR HT HU
    ID IE IL IM IN IO IQ IR IS IT
    JE JM JO JP
    KE KG KH KI KM KN KP KR KW KY KZ
    LA LB LC LI LK LR LS LT LU LV LY
    MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ
    NA NC NE NF NG NI NL NO NP NR NU NZ
    OM
    PA PE PF PG PH PK PL PM PN PR PS PT PW PY
    QA
    RE RO RS RU RW
    SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ
    TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ
    UA UG UM US UY UZ
    VA VC VE VG VI VN VU
    WF WS
    YE YT
    ZA ZM ZW
"""

ISO_3166_ALPHA_2: frozenset[str] = frozenset(_ISO_3166_ALPHA_2_TABLE.split())
"""The ISO 3166-1 alpha-2 codes officially assigned to countries and territories."""


def is_country(code: str) -> bool:
    """Whether ``code`` (upper case) is an ISO 3166-1 alpha-2 country code."""
    return code in ISO_3166_ALPHA_2


def check_address_text(text: str) -> str:
    """Text printed on a parcel or an invoice: not blank, nothing that garbles a label (control
    characters, line separators, bidi overrides); surrounding spaces trimmed."""
    return check_display_text(text).strip()


_COUNTRY = pattern_rule(r"^[A-Za-z]{2}$", "a two-letter ISO 3166-1 country code, e.g. DE")
_PHONE = re.compile(r"\+?[0-9][0-9 ()./-]{2,31}")
LABEL_RULE = "The customer's own name for the address (Home, Office); not printed."
PHONE_RULE = (
    "For the carrier: digits, an optional leading +, and spaces, dots, dashes, slashes or "
    "parentheses between them."
)


class PostalAddress(BaseModel):
    """A postal address as it was kept (read back without the rules for new ones, so that rules
    tightened later never make older carts, orders or profiles unreadable)."""

    label: str | None = Field(default=None, description=LABEL_RULE)
    name: str
    company: str | None = None
    line1: str
    line2: str | None = None
    city: str
    region: str | None = Field(default=None, description="State or province.")
    postal_code: str | None = None
    country: str = Field(description="ISO 3166-1 alpha-2 code.")
    phone: str | None = Field(default=None, description="For the carrier.")


class Address(BaseModel):
    """A postal address given with a request, as printed on the parcel or the invoice. Unknown
    fields are an error; blank optional fields become null; text is trimmed; the country is
    upper-cased."""

    model_config = ConfigDict(extra="forbid")

    label: str | None = Field(default=None, max_length=50, description=LABEL_RULE)
    name: str = Field(min_length=1, max_length=200, description="Recipient or company name.")
    company: str | None = Field(default=None, max_length=200)
    line1: str = Field(min_length=1, max_length=200)
    line2: str | None = Field(default=None, max_length=200)
    city: str = Field(min_length=1, max_length=100)
    region: str | None = Field(default=None, max_length=100, description="State or province.")
    postal_code: str | None = Field(default=None, max_length=20)
    country: str = Field(pattern=_COUNTRY, description="ISO 3166-1 alpha-2 code.")
    phone: str | None = Field(default=None, max_length=32, description=PHONE_RULE)

    @field_validator("name", "line1", "city")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        # None only where a model built on this one makes a line optional (a profile's name).
        return None if value is None else check_address_text(value)

    @field_validator("label", "company", "line2", "region", "postal_code")
    @classmethod
    def _optional_text(cls, value: str | None) -> str | None:
        return None if value is None or not value.strip() else check_address_text(value)

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not _PHONE.fullmatch(value.strip()):
            raise ValueError(
                "use digits, an optional leading +, and spaces, dots, dashes, slashes or "
                "parentheses between them"
            )
        return value.strip()

    @field_validator("country")
    @classmethod
    def _iso_country(cls, value: str) -> str:
        if not is_country(value.upper()):
            raise ValueError("must be an ISO 3166-1 alpha-2 country code")
        return value.upper()
