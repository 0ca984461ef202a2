"""Joining Ray: a private local Ray by default, a cluster's head with ``--ray-address``."""

from __future__ import annotations

import logging
import os

from controller.errors import UserError, one_line


def ensure_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    # Ray reports usage to its makers' service by default. A farm runs in labs that often have no
    # way out, and EdgeFarm sends nothing anywhere on its user's behalf: off, unless the user set it.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        _check_reachable(address)  # Ray itself would retry a dead address for minutes
    # "local" starts a private Ray instead of joining whatever RAY_ADDRESS points at.
    try:
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING, configure_logging=False)
    except (ConnectionError, RuntimeError) as exc:
        raise UserError(
            f"--ray-address {address}: cannot join the Ray cluster ({one_line(exc)}); if the cluster uses "
            "token authentication, set RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN or ~/.ray/auth_token)"
        ) from None


def _check_reachable(address: str) -> None:
    import socket

    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        raise UserError(f"--ray-address {address}: no Ray head answers there ({exc}); "
                        "start one with `ray start --head` or leave the flag out for a local Ray") from None
