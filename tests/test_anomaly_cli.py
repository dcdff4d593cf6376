"""Times, durations and queries as the anomaly command line reads them; its help and errors."""

from __future__ import annotations

import pytest

from mestres_observability.anomaly.timeparse import parse_duration, parse_time
from tests._support import require_module

click_testing = require_module("click.testing")

from mestres_observability.anomaly.cli import anomaly, incidents  # noqa: E402

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize(("text", "expected"), [
    ("now", NOW), ("-7d", NOW - 7 * 86400), ("now-1h", NOW - 3600), ("-2h30m", NOW - 9000),
    ("+15m", NOW + 900), ("1767225600", NOW), ("1767225600.5", NOW + 0.5),
    ("2026-01-01T00:00:00Z", NOW), ("2026-01-01T01:00:00+01:00", NOW), ("2026-01-01 00:00:00", NOW),
])
def test_times(text: str, expected: float) -> None:
    assert parse_time(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "-7x", "2026-13-01", ""])
def test_bad_times_say_which_forms_work(text: str) -> None:
    with pytest.raises(ValueError, match="is not a"):
        parse_time(text, now=NOW)


def test_durations() -> None:
    assert parse_duration("60s") == 60
    assert parse_duration("1h30m") == 5400
    assert parse_duration("2w") == 14 * 86400
    assert parse_duration("90") == 90
    for bad in ("1h 30m", "m5", "0s", "-5m"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


def test_groups_list_their_commands() -> None:
    runner = click_testing.CliRunner()
    out = runner.invoke(anomaly, ["--help"]).output
    for command in ("train", "detect", "forecast", "serve"):
        assert command in out
    assert "serve" in runner.invoke(incidents, ["--help"]).output
    detect = runner.invoke(anomaly, ["detect", "--help"]).output
    for option in ("--prometheus", "--query", "--start", "--end", "--step", "--model", "--detector",
                   "--json"):
        assert option in detect


def test_bad_options_are_usage_errors() -> None:
    runner = click_testing.CliRunner()
    r = runner.invoke(anomaly, ["detect", "--prometheus", "http://127.0.0.1:1", "--query", "up",
                                "--step", "soon"])
    assert r.exit_code == 2
    assert "is not a duration" in r.output
    r = runner.invoke(anomaly, ["detect", "--prometheus", "http://127.0.0.1:1", "--query", "up",
                                "--param", "alpha"])
    assert r.exit_code == 2
    assert "KEY=VALUE" in r.output
    r = runner.invoke(anomaly, ["serve", "--prometheus", "http://127.0.0.1:1", "--query", "x=up",
                                "--param", "nonsense=1"])
    assert r.exit_code == 2
    assert "nonsense" in r.output


def test_an_unreachable_prometheus_is_one_clear_line() -> None:
    from tests._support import free_port

    r = click_testing.CliRunner().invoke(anomaly, [
        "train", "--prometheus", f"http://127.0.0.1:{free_port()}", "--query", "up",
        "--timeout", "2s"])
    assert r.exit_code == 1
    assert "cannot reach Prometheus" in r.output
    assert "Traceback" not in r.output


def test_queries_take_an_optional_name() -> None:
    from mestres_observability.anomaly.cli import _queries

    got = _queries(None, None, [  # type: ignore[arg-type]
        "orders=sum(rate(orders_total[5m]))", 'rate(x_total{a="b"}[5m])', "up==1", "up == 1",
        "by_product=sum by (product_id) (rate(products_sold_total[5m]))"])
    assert got == [("orders", "sum(rate(orders_total[5m]))"), ("", 'rate(x_total{a="b"}[5m])'),
                   ("", "up==1"), ("", "up == 1"),
                   ("by_product", "sum by (product_id) (rate(products_sold_total[5m]))")]


def test_a_prometheus_that_never_answers_is_one_clear_line_within_the_timeout() -> None:
    import socket
    import time

    with socket.socket() as hung:  # accepts connections (the backlog) and never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        started = time.monotonic()
        r = click_testing.CliRunner().invoke(anomaly, [
            "detect", "--prometheus", f"http://127.0.0.1:{hung.getsockname()[1]}",
            "--query", "up", "--timeout", "1s"])
        took = time.monotonic() - started
    assert r.exit_code == 1, r.output
    assert "Prometheus" in r.output, r.output
    assert "timed out" in r.output, r.output
    assert "Traceback" not in r.output
    assert took < 15  # the timeout bounds each request; a hung server is not waited on
