"""A run end to end: plan jobs (pure functions), start one Ray actor per board, record every
result in the database as it arrives, show progress; and the nightly run on top of it.

May import every package below it: ``config``, ``build``, ``boards``, ``results``, ``passes``,
``convert``, ``data``, the foundation modules, ``agent``.
"""
