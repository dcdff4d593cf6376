"""An action for ``incidents serve --action tests.incident_action:record@critical`` in the
incident tests: appends each incident it is called with to the file named by
``MO_TEST_ACTION_FILE`` (one JSON line)."""

from __future__ import annotations

import json
import os
from typing import Any


def record(incident: Any) -> None:
    with open(os.environ["MO_TEST_ACTION_FILE"], "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"id": incident.id, "severity": incident.severity,
                             "title": incident.title}) + "\n")
