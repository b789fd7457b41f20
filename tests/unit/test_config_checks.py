"""Config values a type cannot check are refused at load, in one line naming the key."""

from __future__ import annotations

from typing import Any

import pytest

from postline.config import ConfigError, from_dict

BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"log": {"level": "verbose"}}, "log.level", "not a log level"),
    ({"http": {"listen": "127.0.0.1"}}, "http.listen", "not host:port"),
    ({"http": {"listen": "127.0.0.1:99999"}}, "http.listen", "port must be"),
    ({"http": {"listen": ":8025"}}, "http.listen", "no host"),
    ({"http": {"listen": "[::1:8025"}}, "http.listen", "brackets"),
    ({"smtp": {"listen": "localhost:smtp"}}, "smtp.listen", "port must be"),
    ({"smtp": {"trusted_networks": ["10.0.0.0/33"]}}, "smtp.trusted_networks", "CIDR"),
    ({"delivery": {"routes": {"*": "mx.test:port"}}}, 'delivery.routes."*"', "port must be"),
    ({"dns": {"nameservers": ["dns.google"]}}, "dns.nameservers", "not an IP address"),
    ({"dns": {"nameservers": ["127.0.0.1:0"]}}, "dns.nameservers", "not an IP address"),
]


@pytest.mark.parametrize(("data", "key", "words"), BAD)
def test_bad_values_name_their_key(data: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(data, "node.toml")
    text = str(info.value)
    assert text.startswith(f"node.toml: key '{key}': "), text
    assert words in text
    assert "\n" not in text


def test_good_values_load() -> None:
    cfg = from_dict(
        {
            "log": {"level": "DEBUG"},
            "http": {"listen": "[::1]:0"},
            "smtp": {"listen": "0.0.0.0:2525", "trusted_networks": ["10.0.0.0/8", "::1/128"]},
            "delivery": {"routes": {"*": "127.0.0.1:2526", "x.test": "mx.x.test"}},
            "dns": {"nameservers": ["127.0.0.1", "127.0.0.1:5353", "[::1]:53", "::1"]},
        }
    )
    assert cfg.delivery.routes["x.test"] == "mx.x.test"
    assert cfg.dns.nameservers[2] == "[::1]:53"
