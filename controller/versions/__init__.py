"""Engine versions on a board: ``edgefarm bisect`` measures a benchmark with each release of an
engine between two versions and names the first one where it regressed.

``wheels`` finds an engine's releases on the package index and fetches their wheels (and their
dependencies') for the board's platform and Python, on this machine, into the workspace cache;
``envs`` installs each set in a virtual environment of its own on the board, pushed and checked by
sha256, so the board needs no network; ``benchmark`` says what is measured (the model's spec,
reduced to one engine and configuration) and reads one version's figures back; ``bisect`` searches
and reports.

May import: ``controller.run`` (each version is measured by a normal run, of kind ``bisect``),
``controller.boards``, ``controller.results``, ``controller.config``, the foundation modules, and
``agent``.
"""
