"""Building what a run needs: the checked source model, datasets, variants and engine
conversions, as Ray tasks (bytes in, bytes out) over a content-addressed cache.

May import: ``controller.config``, ``controller.data``, ``controller.passes``,
``controller.convert``, the foundation modules (errors, plugins, validation, workspace), ``agent``.
"""
