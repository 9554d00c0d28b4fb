"""The router's pure rules: which stage an UNAVAILABLE answer blames."""

from __future__ import annotations

from layerfleet.controller.registry import StageRecord
from layerfleet.controller.router import Blame, blame

STAGES = [StageRecord("d", 0, 0, 2, "pi-0", "10.0.0.1:5000", replicas=["pi-3"]),
          StageRecord("d", 1, 2, 4, "pi-1", "10.0.0.2:5000", replicas=["pi-4"]),
          StageRecord("d", 2, 4, 6, "pi-2", "10.0.0.3:5000")]
ADDRESSES = {"pi-0": "10.0.0.1:5000", "pi-1": "10.0.0.2:5000", "pi-2": "10.0.0.3:5000",
             "pi-3": "10.0.0.4:5000", "pi-4": "[fd00::5]:5000"}
ENTRY = ("pi-0", "10.0.0.1:5000")


def test_the_hop_an_agent_could_not_reach_is_blamed_not_the_entry():
    message = "next hop 10.0.0.3:5000 unavailable: failed to connect to all addresses"
    assert blame(STAGES, ADDRESSES, message, ENTRY) == Blame(2, "pi-2", "10.0.0.3:5000")


def test_a_replica_is_blamed_by_its_current_address_even_in_brackets():
    message = "next hop [fd00::5]:5000 closed its data port connection: reset"
    assert blame(STAGES, ADDRESSES, message, ENTRY) == Blame(1, "pi-4", "[fd00::5]:5000")


def test_an_address_is_matched_whole_not_as_a_prefix():
    # Stage 2's 10.0.0.3:5000 is a prefix of 10.0.0.3:50001, which is no device here.
    message = "next hop 10.0.0.3:50001 unavailable: refused"
    assert blame(STAGES, ADDRESSES, message, ("pi-3", "10.0.0.4:5000")) == \
        Blame(0, "pi-3", "10.0.0.4:5000")


def test_a_message_naming_no_device_of_the_chain_blames_the_entry_called():
    assert blame(STAGES, ADDRESSES, "the agent is draining", ENTRY) == Blame(0, *ENTRY)
