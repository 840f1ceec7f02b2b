"""Pure logic: selectors, quantities, merge patch, field paths, virt-type decision."""

from __future__ import annotations

from decimal import Decimal

import pytest

from app.controllers.nodes import decide_virt_type
from app.errors import BadRequest
from app.schemas.common import parse_quantity
from app.services.selectors import parse_selector
from app.services.validation import field_path, merge_patch
from app.virt.driver import HostInfo


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


def test_merge_patch_rfc7386_examples() -> None:
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert merge_patch({"a": "b"}, {"a": None}) == {}
    assert merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert merge_patch({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}) == {"a": {"b": "d"}}
    assert merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}
    assert merge_patch({}, {"a": {"bb": {"ccc": None}}}) == {"a": {"bb": {}}}


def test_field_paths() -> None:
    assert (
        field_path(("spec", "domain", "devices", "gpus", 0, "deviceName"))
        == "spec.domain.devices.gpus[0].deviceName"
    )
    assert field_path(()) == ""


def host(**overrides: object) -> HostInfo:
    base: dict[str, object] = {
        "hostname": "h",
        "arch": "x86_64",
        "cpu_model": "m",
        "cpus": 4,
        "memory_bytes": 2**33,
        "host_uuid": "u",
        "hypervisor_type": "QEMU",
        "hypervisor_version": "10.0.2",
        "libvirt_version": "11.3.0",
        "domain_types": frozenset({"kvm", "qemu"}),
        "cpu_features": frozenset({"vmx"}),
        "paravirtual_kvm": False,
    }
    return HostInfo(**(base | overrides))  # type: ignore[arg-type]


def test_virt_type_decision_does_not_trust_domcapabilities_alone() -> None:
    assert decide_virt_type(host(), None)[0] == "kvm"
    assert decide_virt_type(host(cpu_features=frozenset({"svm"}), paravirtual_kvm=None), None)[0] == "kvm"
    # kvm advertised, but a paravirtual KVM (PVM) or a CPU without VT-x/AMD-V cannot boot stock guests
    pvm_type, reason = decide_virt_type(host(paravirtual_kvm=True), None)
    assert pvm_type == "qemu" and "paravirtual" in reason
    assert decide_virt_type(host(cpu_features=frozenset()), None)[0] == "qemu"
    assert decide_virt_type(host(domain_types=frozenset({"qemu"})), None)[0] == "qemu"
    assert decide_virt_type(host(paravirtual_kvm=True), "kvm") == ("kvm", "set in spec.virtType (kvm)")
