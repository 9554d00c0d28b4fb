"""The chaos soak, shortened (bench/soak.py runs the long one): requests through three
stages of two real agent processes each, while one agent is SIGKILLed and restarted and
another SIGSTOPped and continued. Nothing is wrong, failed or lost."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import soak  # noqa: E402


async def test_no_request_is_lost_while_replicas_are_killed_and_stalled(tmp_path):
    result = await soak.soak(requests=6000, in_flight=8, replicas=2, seed=1, tmp=tmp_path,
                             plan=["SIGKILL", "SIGSTOP"])
    assert [e["kind"] for e in result["events"]] == ["SIGKILL", "SIGSTOP"], \
        "the run ended before both troubles happened: make it longer"
    assert (result["ok"], result["wrong"], result["failed"], result["lost"]) == \
        (6000, 0, {}, 0)


async def test_without_replicas_every_request_is_answered_or_refused_none_hangs(tmp_path):
    result = await soak.soak(requests=1500, in_flight=8, replicas=1, seed=2, tmp=tmp_path,
                             plan=["SIGKILL"])
    assert result["wrong"] == 0 and result["lost"] == 0
    assert result["ok"] + sum(result["failed"].values()) == 1500
    assert set(result["failed"]) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
    assert result["latency_max_s"] <= soak.DEADLINE_S + 1
