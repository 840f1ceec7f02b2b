"""Kubernetes quantities."""

from __future__ import annotations

from decimal import Decimal

import pytest

from app.schemas.common import parse_quantity


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", 1),
        ("500m", Decimal("0.5")),
        ("1Gi", 2**30),
        ("512Mi", 512 * 2**20),
        ("2k", 2000),
        ("1e3", 1000),
        ("1.5Gi", Decimal("1.5") * 2**30),
        (".5", Decimal("0.5")),
    ],
)
def test_quantities(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "Gi", "1GB", "-1", "1 Gi", "one", "1Qi"])
def test_bad_quantities(text: str) -> None:
    with pytest.raises(ValueError, match="quantity"):
        parse_quantity(text)


@pytest.mark.parametrize("text", ["1e999999999", "9e99999999999", "1e" + "9" * 5000])
def test_quantities_past_any_number_are_out_of_range_not_a_crash(text: str) -> None:
    with pytest.raises(ValueError, match="out of range"):
        parse_quantity(text)


def test_a_quantity_with_spaces_around_is_refused_as_the_document_says() -> None:
    with pytest.raises(ValueError, match="quantity"):
        parse_quantity(" 1Gi")
