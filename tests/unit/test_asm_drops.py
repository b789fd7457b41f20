"""The accept stage's group lookup on the in-memory spool (the SQLite one is exercised by
tests/integration/test_asm_groups.py): a batch with ``asm_group_id`` drops that group's
members as "Unsubscribed Address", global lists first; an unknown group stores nothing."""

from __future__ import annotations

import asyncio

import pytest

from postline.model import events as ev
from postline.spool.conformance import batch, message
from postline.spool.drops import groups
from postline.spool.interface import GROUP_DROP_REASON, AcceptBatch, UnknownGroups
from postline.spool.memory import MemorySpool


def grouped(group: int | None, *rcpts: str, display: tuple[int, ...] = ()) -> AcceptBatch:
    b = batch(message(*rcpts))
    b.drop_suppressed = True
    b.asm_group_id, b.asm_groups_to_display = group, display
    return b


def reasons(b: AcceptBatch) -> dict[str, str]:
    dropped = [e for e in b.events if e.event == ev.DROPPED]
    return {e.email: ev.event_json(e)["reason"] for e in dropped}


def test_groups_of_a_batch() -> None:
    assert groups(grouped(None, "a@x.example", display=(3,))) == ()
    assert groups(grouped(1, "a@x.example", display=(3, 4))) == (1, 3, 4)


def test_members_of_the_group_only_are_dropped() -> None:
    async def main() -> None:
        spool = MemorySpool()
        spool.asm_members[("t1", 1)] = {"gone@x.example", "bounced@x.example"}
        spool.asm_members[("t1", 2)] = set()
        await spool.add_suppression("t1", "bounces", "bounced@x.example")
        b = grouped(1, "Gone@X.example", "bounced@x.example", "kept@x.example")
        await spool.accept(b)
        assert reasons(b) == {
            "Gone@X.example": GROUP_DROP_REASON,
            "bounced@x.example": "Bounced Address",  # the global list's reason wins
        }
        assert [m.recipients for m in b.messages] == [["kept@x.example"]]
        other = grouped(2, "gone@x.example")
        await spool.accept(other)
        assert reasons(other) == {}
        none = grouped(None, "gone@x.example")
        await spool.accept(none)
        assert reasons(none) == {}

    asyncio.run(main())


def test_an_unknown_group_stores_nothing() -> None:
    async def main() -> None:
        spool = MemorySpool()
        spool.asm_members[("t1", 1)] = set()
        spool.asm_members[("t2", 5)] = set()  # another tenant's
        for b in (grouped(5, "a@x.example"), grouped(1, "a@x.example", display=(1, 9))):
            with pytest.raises(UnknownGroups) as err:
                await spool.accept(b)
            assert err.value.group_ids in ((5,), (9,))
        assert (await spool.counts()).messages == 0
        assert await spool.read(0, 10) == []

    asyncio.run(main())
