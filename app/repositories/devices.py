"""The host-device ledger: inventory rows per node and who holds what."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import HostDeviceRow
from app.repositories.settings import get_setting, set_setting
from app.schemas.devices import PERMITTED_SETTING, PermittedHostDevices


def permitted(session: Session) -> PermittedHostDevices:
    stored = get_setting(session, PERMITTED_SETTING)
    return PermittedHostDevices() if stored is None else PermittedHostDevices.model_validate_json(stored)


def set_permitted(session: Session, rules: PermittedHostDevices) -> None:
    set_setting(session, PERMITTED_SETTING, rules.model_dump_json(by_alias=True))


class DeviceRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def on_node(self, node: str, *, for_update: bool = False) -> list[HostDeviceRow]:
        query = select(HostDeviceRow).where(HostDeviceRow.node == node).order_by(HostDeviceRow.name)
        return list(self.session.scalars(query.with_for_update() if for_update else query))

    def find(
        self, *, node: str | None = None, holder: str | None = None, name: str | None = None
    ) -> list[HostDeviceRow]:
        """Devices, filtered; `holder` (namespace/name, a bare name in any namespace, or an instance uid)
        matches whole devices and the parents of its mdevs."""
        query = select(HostDeviceRow).order_by(HostDeviceRow.node, HostDeviceRow.name)
        if node is not None:
            query = query.where(HostDeviceRow.node == node)
        if name is not None:
            query = query.where(HostDeviceRow.name == name)
        rows = list(self.session.scalars(query))
        if holder is None:
            return rows

        def held(name: str | None, uid: str | None) -> bool:
            return holder in (name, uid) or ("/" not in holder and (name or "").split("/", 1)[-1] == holder)

        def carved(row: HostDeviceRow) -> bool:
            return any(held(m["holder"], m["holderUid"]) for m in row.mdevs or [])

        return [r for r in rows if held(r.holder, r.holder_uid) or carved(r)]

    def held_by(self, holder_uid: str) -> list[HostDeviceRow]:
        query = (
            select(HostDeviceRow).where(HostDeviceRow.holder_uid == holder_uid).order_by(HostDeviceRow.name)
        )
        return list(self.session.scalars(query))

    def replace_inventory(
        self, node: str, reported: dict[str, tuple[str, dict[str, Any]]], at: datetime
    ) -> bool:
        """Make the node's rows match what it reports ({name: (capability, facts)}); a device that vanished
        is deleted, or kept as not present while an instance holds it. True if anything changed."""
        changed = False
        rows = {row.name: row for row in self.on_node(node, for_update=True)}
        for name, (capability, facts) in reported.items():
            row = rows.pop(name, None)
            if row is None:
                self.session.add(
                    HostDeviceRow(
                        node=node,
                        name=name,
                        capability=capability,
                        facts=facts,
                        present=True,
                        observed_at=at,
                        created_at=at,
                        mdevs=[],
                    )
                )
                changed = True
            elif row.facts != facts or row.capability != capability or not row.present:
                row.capability, row.facts, row.present, row.observed_at = capability, facts, True, at
                changed = True
        for row in rows.values():
            if row.holder_uid is None and not row.mdevs:
                self.session.delete(row)
                changed = True
            elif row.present:
                row.present = False
                changed = True
        self.session.flush()
        return changed

    def hold(self, rows: list[HostDeviceRow], holder_uid: str, holder: str) -> None:
        for row in rows:
            row.holder_uid, row.holder = holder_uid, holder
        self.session.flush()

    def carve(self, parent: HostDeviceRow, type_id: str, uuid: str, holder_uid: str, holder: str) -> None:
        """Record a mediated device of `type_id` on `parent` for the holder (created on the host at start)."""
        parent.mdevs = [
            *(parent.mdevs or []),
            {"uuid": uuid, "type": type_id, "holderUid": holder_uid, "holder": holder},
        ]
        self.session.flush()

    def mdevs_of(self, holder_uid: str, node: str) -> list[tuple[str, str, str]]:
        """(parent, type, uuid) of the mediated devices the holder has on the node."""
        return [
            (row.name, m["type"], m["uuid"])
            for row in self.on_node(node)
            for m in row.mdevs or []
            if m["holderUid"] == holder_uid
        ]

    def release(self, holder_uid: str) -> bool:
        """Free everything the holder has (whole devices and mediated devices); True if it had anything."""
        freed = False
        for row in self.session.scalars(select(HostDeviceRow)):
            kept = [m for m in row.mdevs or [] if m["holderUid"] != holder_uid]
            if len(kept) != len(row.mdevs or []):
                row.mdevs, freed = kept, True
            if row.holder_uid == holder_uid:
                row.holder_uid, row.holder, freed = None, None, True
                if not row.present:
                    self.session.delete(row)
        self.session.flush()
        return freed
