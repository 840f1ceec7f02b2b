"""Label selectors."""

from __future__ import annotations

import pytest

from app.errors import BadRequest
from app.services.selectors import parse_selector


@pytest.mark.parametrize(
    ("selector", "labels", "match"),
    [
        ("app=web", {"app": "web"}, True),
        ("app==web", {"app": "db"}, False),
        ("app!=web", {}, True),
        ("app", {"app": ""}, True),
        ("!app", {"app": "x"}, False),
        ("env in (prod, staging),tier notin (db)", {"env": "prod", "tier": "web"}, True),
        ("env in (prod, staging),tier notin (db)", {"env": "prod", "tier": "db"}, False),
        ("corral.dev/pool=p1", {"corral.dev/pool": "p1"}, True),
    ],
)
def test_selectors(selector: str, labels: dict[str, str], match: bool) -> None:
    predicate = parse_selector(selector)
    assert predicate is not None and predicate(labels) is match


@pytest.mark.parametrize("selector", ["a in (b", "=x", "a=b=c", "bad key!=x", "a in b"])
def test_bad_selectors(selector: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_selector(selector)
    assert info.value.errors[0].field == "labelSelector"
