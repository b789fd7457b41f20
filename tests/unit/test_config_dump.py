"""config.to_dict: what the node hands its worker process comes back as the same config."""

from __future__ import annotations

from postline import config as c


def test_a_config_survives_to_dict_and_back() -> None:
    cfg = c.from_dict(
        {
            "data_dir": "/tmp/x",
            "smtp": {"listen": ["127.0.0.1:2525", "127.0.0.1:2587"]},
            "delivery": {"retry_min": "250ms", "max_age": "3d", "routes": {"*": "127.0.0.1:25"}},
            "webhooks": {"allow_private": True, "batch_wait": "1.5s"},
            "events": {"worker": False, "retention": "36h"},
        }
    )
    again = c.from_dict(c.to_dict(cfg))
    assert again == cfg
    assert float(again.delivery.retry_min) == 0.25 and float(again.events.retention) == 36 * 3600
    assert c.from_dict(c.to_dict(c.Config())) == c.Config()
