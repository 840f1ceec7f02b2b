"""What an instance spec asks of host devices."""

from __future__ import annotations

from app.schemas.devices import DeviceNeeds, device_needs
from app.schemas.instance import InstanceSpec


def test_device_needs_counts_entries_and_requests_once() -> None:
    spec = InstanceSpec.model_validate(
        {
            "domain": {
                "devices": {
                    "gpus": [{"name": "g", "deviceName": "nvidia.com/gpu"}],
                    "hostDevices": [{"name": "f", "deviceName": "pci_0000_01_00_0"}],
                },
                "resources": {"requests": {"memory": "1Gi", "nvidia.com/gpu": "1", "example.com/nic": "2"}},
            }
        }
    )
    assert device_needs(spec) == DeviceNeeds(
        ("pci_0000_01_00_0",), (("example.com/nic", 2), ("nvidia.com/gpu", 1))
    )
    assert not device_needs(InstanceSpec())
