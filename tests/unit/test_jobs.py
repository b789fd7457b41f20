"""Leases → jobs (deliver/jobs.py): a body shared by many messages is decoded once per
batch and its size bound is shared; what each job renders is what a fresh decode renders."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from postline.accept.expand import expand
from postline.backends.sqlite.spool import open_sqlite_spool
from postline.config import SpoolConfig
from postline.deliver.jobs import load_jobs
from postline.deliver.render import RenderError, render
from postline.model.mail import (
    Content,
    EmailAddress,
    MailSendRequest,
    Personalization,
    decode_body,
    decode_personalization,
)
from postline.schedule.ready import Job

BOMB = "x" * 9_990


def request(n: int, subs: dict[str, str] | None = None) -> MailSendRequest:
    return MailSendRequest(
        personalizations=[
            Personalization(to=[EmailAddress(f"u{i}@example.com")], substitutions=subs)
            for i in range(n)
        ],
        from_=EmailAddress("alice@example.com"),
        subject="Hi -n-",
        content=[Content("text/plain", "Hello -n- " * 7_000)],
        custom_args={"campaign": "c1"},
    )


def jobs_of(tmp_path: Path, req: MailSendRequest) -> list[Job]:
    async def run() -> list[Job]:
        spool = await open_sqlite_spool(str(tmp_path), SpoolConfig())
        try:
            now = time.time()
            batch = expand(
                req, tenant="default", node="n", host="h", now=now, max_age=3600.0,
                x_message_id="X1",
            )  # fmt: skip
            await spool.accept(batch)
            leases = await spool.lease("default", "example.com", now + 1, 100, 60.0)
            return await load_jobs(spool, leases, now)
        finally:
            await spool.close()

    return asyncio.run(run())


def test_a_shared_body_is_decoded_once_per_batch_with_one_size_bound(tmp_path: Path) -> None:
    jobs = jobs_of(tmp_path, request(5, {"-n-": "Bob"}))
    assert len(jobs) == 5
    decoded = [j.decoded for j in jobs]
    assert all(d is not None for d in decoded)
    bodies = {id(d[0]) for d in decoded if d is not None}
    bounds = {id(d[2]) for d in decoded if d is not None}
    assert len(bodies) == 1 and len(bounds) == 1
    for job in jobs:
        assert job.meta.custom_args == {"campaign": "c1"}
        assert job.decoded is not None
        body, pers, bound = job.decoded
        shared = render(body, pers, message_id="m@x", date=1.0, bound=bound).data
        fresh = render(
            decode_body(job.body), decode_personalization(job.personalization),
            message_id="m@x", date=1.0,
        ).data  # fmt: skip
        assert shared == fresh


def test_the_shared_bound_still_refuses_every_bomb(tmp_path: Path) -> None:
    # 70,000 occurrences of a 3-character key growing by ~10 KB each: 700 MB per message.
    jobs = jobs_of(tmp_path, request(3, {"-n-": BOMB}))
    for job in jobs:
        assert job.decoded is not None
        body, pers, bound = job.decoded
        with pytest.raises(RenderError, match="could grow"):
            render(body, pers, message_id="m@x", date=1.0, bound=bound)


def test_a_body_stays_decoded_across_lease_batches(tmp_path: Path) -> None:
    # Two separate batches (one lease each) of one request: the body is decoded once.
    async def run() -> list[Job]:
        spool = await open_sqlite_spool(str(tmp_path), SpoolConfig())
        try:
            now = time.time()
            batch = expand(
                request(2), tenant="default", node="n", host="h", now=now, max_age=3600.0,
                x_message_id="X2",
            )  # fmt: skip
            await spool.accept(batch)
            first = await spool.lease("default", "example.com", now + 1, 1, 60.0)
            second = await spool.lease("default", "example.com", now + 1, 1, 60.0)
            assert len(first) == len(second) == 1
            return [*await load_jobs(spool, first, now), *await load_jobs(spool, second, now)]
        finally:
            await spool.close()

    a, b = asyncio.run(run())
    assert a.decoded is not None and b.decoded is not None
    assert a.decoded[0] is b.decoded[0] and a.decoded[2] is b.decoded[2]
