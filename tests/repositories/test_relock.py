"""A pass's later write takes its own last write back without reading the whole row, only while nobody else
wrote the row since."""

from __future__ import annotations

from app.db import Database
from app.repositories.instances import InstanceRepository
from tests.repositories.test_revisions import new_instance


def test_relock_takes_back_its_own_write_until_another_writer_comes_in(db: Database) -> None:
    with db.transaction() as session:
        repo = InstanceRepository(session)
        mine = repo.add(new_instance("relocked"))
    with db.transaction() as session:
        repo = InstanceRepository(session)
        row = repo.relock(mine)
        assert row is mine, "nobody wrote it since: the row as committed comes back"
        row.status = {"phase": "Starting"}
        repo.touch(row)
    with db.transaction() as session:
        assert InstanceRepository(session).relock(mine) is mine
    with db.transaction() as session:  # another writer
        repo = InstanceRepository(session)
        theirs = repo.get("default", "relocked", for_update=True)
        assert theirs is not None and theirs.status == {"phase": "Starting"}
        theirs.labels = {"changed": "elsewhere"}
        repo.touch(theirs)
    with db.transaction() as session:
        assert InstanceRepository(session).relock(mine) is None, "written since: the pass must read it again"


def test_relock_leaves_a_row_the_session_already_holds_to_that_session(db: Database) -> None:
    with db.transaction() as session:
        mine = InstanceRepository(session).add(new_instance("held"))
    with db.transaction() as session:
        repo = InstanceRepository(session)
        held = repo.get("default", "held", for_update=True)
        assert held is not None and held is not mine
        assert repo.relock(mine) is None
