"""Acceptance 1: the README's curl lines work against the server that `make run` starts (demo settings)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DEMO_CATALOG

pytestmark = pytest.mark.e2e
README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_decide_then_reward(start_server: Any, tmp_path: Path) -> None:
    block = re.search(r"<!-- readme-curl -->\s*```bash\n(.*?)```", README.read_text(), re.S)
    assert block is not None, "the README lost its curl example"
    server = start_server(None, NBA_CATALOG=str(DEMO_CATALOG),
                          NBA_API_KEYS="demo-channel:channel,demo-analyst:analyst,demo-admin:admin")
    script = block.group(1).replace("http://127.0.0.1:8000", server.url)
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    decision = json.loads((tmp_path / "decision.json").read_text())
    assert decision["channel"] == "web" and len(decision["actions"]) == 1
    decoder, documents, text, index = json.JSONDecoder(), [], result.stdout.strip(), 0
    while index < len(text):
        document, index = decoder.raw_decode(text, index)
        documents.append(document)
        index = len(text) - len(text[index:].lstrip())
    assert documents[0] == decision
    reward = documents[-1]
    assert reward == {"decision_id": decision["decision_id"], "status": "accepted"}
