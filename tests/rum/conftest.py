"""Fixtures of the snippet's browser tests: Chromium (Debian's binary) and the example shop."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests._support import require_binary, require_module
from tests.rum._browser import ARGS, Shop, running_shop


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = require_binary("chromium")
    sync_api = require_module("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        # Playwright turns the back/forward cache off by default: keep Chromium's default (on)
        b = pw.chromium.launch(executable_path=chromium, args=ARGS,
                               ignore_default_args=["--disable-back-forward-cache"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def shop() -> Iterator[Shop]:
    with running_shop() as server:
        yield server
