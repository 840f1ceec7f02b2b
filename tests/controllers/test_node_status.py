"""What a node reports: the virt type it runs guests with."""

from __future__ import annotations

from app.controllers.nodes import decide_virt_type
from app.virt.driver import HostInfo


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
