"""Deployment: a bundle built from the selection (``bundler``, ``manifest``), installed on boards as
releases with a smoke test and rollback (``deployer``, ``releases``), and their state (``status``)."""
