"""The deployment runtime: what runs on a board from a bundle folder (``edgefarm bundle``).

A bundle is a folder: ``manifest.json`` (what each model is, how it was measured, what it needs),
the artifacts exactly as the farm measured them, golden inputs with their expected outputs, and
``bundle.pyz``, this package zipped with the rest of the agent, so a bundle runs the same engine and
task code whose latency and accuracy the farm measured. Standard library + numpy + the engine's
library (+ Pillow for images); never the controller.

- ``bundle``: ``Bundle`` (open, verify, check, load, predict, close) and ``BundleError``;
- ``requirements``: what the board must have, one line per unmet requirement;
- ``model``: one model of a bundle loaded in its engine, images in, results and timings out;
- ``pipeline``: the OCR pipeline (detector, direction classifier, recognizer);
- ``golden``: expected against actual outputs, within each task's tolerance;
- ``serve``: the HTTP server; ``cli``: ``python3 bundle.pyz predict|serve|check|smoke``.
"""
