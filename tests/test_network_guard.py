"""Test boards' traffic stays on this machine, even when a fault test pulls a board's link."""

from __future__ import annotations

import pytest

from tests.faults import set_link
from tests.netns import TEST_RANGES, board_net, namespaces_refused, route_verdict


@pytest.fixture(scope="module", autouse=True)
def _namespaces() -> None:
    why = namespaces_refused()
    if why:
        pytest.skip(why)


def test_a_board_whose_link_is_down_is_unreachable_not_routed_elsewhere() -> None:
    with board_net("guard", 99, "10.231") as net:
        assert "unreachable" not in route_verdict(net.board_ip)  # the link is up: its own route
        assert f"dev {net.host_veth}" in route_verdict(net.board_ip)
        set_link(net.host_veth, "down")
        verdict = route_verdict(net.board_ip)
        # The kernel refuses at once (EHOSTUNREACH), never "via <the default gateway>".
        assert _unreachable(verdict), verdict
    for cidr in TEST_RANGES:  # every range the boards use, with or without a namespace
        address = cidr.replace("0.0/16", "77.2")
        assert _unreachable(route_verdict(address)), address


def _unreachable(verdict: str) -> bool:
    # `ip route get` answers an unreachable route with "RTNETLINK answers: No route to host".
    return "no route to host" in verdict.lower() and " via " not in verdict


def test_a_board_outside_the_guarded_ranges_is_refused() -> None:
    with pytest.raises(ValueError, match="TEST_RANGES"):
        with board_net("stray", 98, "10.77"):
            pass
