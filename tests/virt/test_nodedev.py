"""Host devices: which PCI devices foreign domains pass through."""

from __future__ import annotations


def test_foreign_hostdevs_skip_corral_domains() -> None:
    from app.virt.domain_xml import DomainConfig, build_domain_xml
    from app.virt.nodedev import foreign_pci_hostdevs

    config = DomainConfig(
        name="a",
        uuid="0e4a1c9e-7d3b-4f0a-9d5c-2b1f7a6e8c01",
        virt_type="test",
        vcpus=1,
        memory_mib=64,
        metadata={"uid": "x"},
        pci_devices=("0000:3b:00.0",),
    )
    ours = build_domain_xml(config)
    theirs = ours.replace("https://corral.dev", "https://example.org")  # another tool's metadata
    assert foreign_pci_hostdevs(ours) == []
    assert foreign_pci_hostdevs(theirs) == ["0000:3b:00.0"]
    assert foreign_pci_hostdevs("<domain") == []
