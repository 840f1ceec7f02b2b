"""A pass writes its own copy of a row back in one statement, without reading it again, only while nobody
else wrote the row since."""

from __future__ import annotations

from app.db import Database
from app.models import InstanceRow
from app.repositories.instances import InstanceRepository
from app.repositories.revisions import EVENTS
from tests.repositories.test_revisions import new_instance


def stored(db: Database, name: str) -> InstanceRow | None:
    with db.read() as session:
        return InstanceRepository(session).get("default", name)


def logged(db: Database) -> list[tuple[str, str]]:
    """(event type, object name) of every change logged, in order."""
    with db.read_rows() as conn:
        rows = conn.execute(EVENTS.select().order_by(EVENTS.c.rv)).mappings()
        return [(row["type"], row["name"]) for row in rows]


def test_a_copy_is_written_back_until_another_writer_comes_in(db: Database) -> None:
    with db.transaction() as session:
        mine = InstanceRepository(session).add(new_instance("mine"))
    created_at = mine.resource_version

    mine.status, mine.node_name = {"phase": "Scheduling"}, "local"
    with db.transaction() as session:
        assert InstanceRepository(session).write_if_unchanged(mine)
    assert mine.resource_version > created_at, "the copy holds the version its write committed as"
    row = stored(db, "mine")
    assert row is not None and (row.status, row.node_name) == ({"phase": "Scheduling"}, "local")
    assert row.resource_version == mine.resource_version and logged(db)[-1] == ("MODIFIED", "mine")

    with db.transaction() as session:  # another writer
        repo = InstanceRepository(session)
        theirs = repo.get("default", "mine", for_update=True)
        assert theirs is not None
        theirs.labels = {"changed": "elsewhere"}
        repo.touch(theirs)
    events = len(logged(db))
    mine.status = {"phase": "Running"}
    with db.transaction() as session:
        assert not InstanceRepository(session).write_if_unchanged(mine), "written since: read it again"
        assert not InstanceRepository(session).remove_if_unchanged(mine)
    row = stored(db, "mine")
    assert row is not None and (row.status, row.labels) == ({"phase": "Scheduling"}, {"changed": "elsewhere"})
    assert len(logged(db)) == events, "nothing written, nothing logged"

    with db.transaction() as session:
        assert InstanceRepository(session).remove_if_unchanged(row)
    assert stored(db, "mine") is None and logged(db)[-1] == ("DELETED", "mine")


def test_a_row_the_session_already_holds_is_left_to_that_session(db: Database) -> None:
    with db.transaction() as session:
        mine = InstanceRepository(session).add(new_instance("held"))
    mine.status = {"phase": "Running"}
    with db.transaction() as session:
        repo = InstanceRepository(session)
        held = repo.get("default", "held", for_update=True)
        assert held is not None and held is not mine
        assert not repo.write_if_unchanged(mine) and not repo.remove_if_unchanged(mine)
    row = stored(db, "held")
    assert row is not None and row.status != {"phase": "Running"}
