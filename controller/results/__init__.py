"""The results database and everything that reads it: the schema (``store``), the dashboard's
queries, engine selection, the regression rule, the nightly report, the variant report.

May import: ``controller.config``, ``controller.build`` (the builds a run records),
``controller.passes`` (variant order and names), the foundation modules. Nothing here reaches a board or starts Ray.
"""
