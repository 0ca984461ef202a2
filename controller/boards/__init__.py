"""Reaching and driving boards, in labgrid's layers.

- resources: the inventory's board entries (``controller.config.inventory``);
- drivers: ``transports/`` (local, ssh, adb, and a fake for fast tests) and ``native/`` (an
  engine's own benchmark binary, for boards without Python);
- strategy: ``session`` (push the agent and artifacts, run a job, retry, reconnect), ``health``
  (the golden job and quarantine), ``agent_bundle`` (the zipapp pushed to boards), ``status``
  (``edgefarm boards``).

May import: ``controller.config``, ``controller.build.cache``, ``controller.data``,
``controller.results.store`` (quarantine rows), the foundation modules, ``agent``.
"""
