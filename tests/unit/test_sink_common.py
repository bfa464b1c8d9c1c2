"""Helpers every sink shares: optional imports, safe URLs, legal names."""

from __future__ import annotations

import pytest

from walrelay.errors import ConfigError
from walrelay.sinks.common import (
    clean_routing_word,
    clean_subject_token,
    clean_topic,
    import_extra,
    safe_url,
)


def test_missing_extra_is_one_line_naming_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "confluent_kafka", None)
    with pytest.raises(ConfigError) as info:
        import_extra("kafka", "confluent-kafka", "confluent_kafka")
    text = str(info.value)
    assert text == (
        "kafka sink: the confluent-kafka package is not installed"
        " -- fix: pip install 'walrelay[kafka]'"
    )
    assert "\n" not in text and info.value.exit_code == 2


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://u:p@h.example:8443/a/b?token=x#f", "https://h.example:8443/a/b"),
        ("redis://:hunter2@127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("rediss://user:hunter2@cache/1?ssl_cert_reqs=none", "rediss://cache/1"),
        ("amqp://guest:hunter2@rabbit:5672/vhost", "amqp://rabbit:5672/vhost"),
        ("https://apikey@hooks.example/x", "https://hooks.example/x"),
    ],
)
def test_safe_url_keeps_no_credentials(url: str, shown: str) -> None:
    assert safe_url(url) == shown


def test_names_are_cleaned_per_broker() -> None:
    assert clean_topic("my table/ü") == "my_table__"
    assert clean_topic("ok.name-1_x") == "ok.name-1_x"
    assert clean_subject_token("a.b *>c") == "a_b___c"
    assert clean_routing_word("a.b") == "a_b"
