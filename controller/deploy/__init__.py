"""Deployment: a bundle built from the selection (``choice``, ``bundler``, ``manifest``), installed on
boards as releases with a smoke test and rollback (``deployer``, ``releases``, ``smoke``), and their
state (``status``).

May import: ``controller.boards`` (sessions with boards), ``controller.results`` (selection, the
deployments table), ``controller.config``, ``controller.build.cache``, ``controller.data``, the
foundation modules, and ``agent`` (the runtime the bundle carries, and its golden comparison).
"""
