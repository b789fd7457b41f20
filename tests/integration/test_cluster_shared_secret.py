"""The cluster's VERP key (cluster/shared_secret.py): nodes starting at once with nothing
configured all get the one key the first of them stored; ``[bounces] secret`` wins."""

from __future__ import annotations

import asyncio
import os

from postline import config as config_mod
from postline.cluster.shared_secret import bounce_key, shared_value
from postline.testing.postgres import admin_dsn, fresh_database


def test_racing_proposals_agree_on_one_value() -> None:
    with fresh_database(admin_dsn(os.environ)) as dsn:

        async def main() -> list[str]:
            return await asyncio.gather(*(shared_value(dsn, "k", f"p{i}") for i in range(5)))

        got = asyncio.run(main())
        assert len(set(got)) == 1 and got[0] in {f"p{i}" for i in range(5)}
        assert asyncio.run(shared_value(dsn, "k", "later")) == got[0]


def test_the_configured_secret_wins_and_the_stored_one_is_shared(tmp_path: object) -> None:
    with fresh_database(admin_dsn(os.environ)) as dsn:
        base = {
            "data_dir": str(tmp_path),
            "cluster": {"nats": ["nats://127.0.0.1:4222"], "postgres": dsn, "replicas": 1},
        }
        cfg = config_mod.from_dict(base, "<test>")
        one, two = asyncio.run(bounce_key(cfg)), asyncio.run(bounce_key(cfg))
        assert one == two and len(one) == 64  # generated once, hex of 32 bytes
        cfg = config_mod.from_dict({**base, "bounces": {"secret": "s3cret"}}, "<test>")
        assert asyncio.run(bounce_key(cfg)) == b"s3cret"
