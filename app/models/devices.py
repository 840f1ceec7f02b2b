"""The host-device ledger: every node device libvirt reports, and which instance holds it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, BigIntKey, JSONType, UtcDateTime


class HostDeviceRow(Base):
    __tablename__ = "host_devices"
    __table_args__ = (UniqueConstraint("node", "name", name="uq_host_devices_node_name"),)

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    node: Mapped[str] = mapped_column(String(63), nullable=False, index=True)
    name: Mapped[str] = mapped_column(String(253), nullable=False)  # libvirt's, e.g. pci_0000_3b_00_0
    capability: Mapped[str] = mapped_column(String(32), nullable=False)  # pci, usb_device, net, ...
    # What libvirt says about the device (PCI address, ids and names, class, IOMMU group, driver, NUMA node,
    # mediated device types): replaced on every inventory refresh.
    facts: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    present: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    observed_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)  # last change seen
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)  # first seen
    # The ledger: the instance holding the device (uid, and namespace/name to answer ?holder= queries).
    holder_uid: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    holder: Mapped[str | None] = mapped_column(String(127), nullable=True, index=True)
    # Mediated devices carved from this parent for holders: [{uuid, type, holderUid}].
    mdevs: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, nullable=False, default=list)
