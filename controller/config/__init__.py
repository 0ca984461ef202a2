"""What people write: the job spec and the board inventory, validated at the boundary.

Every error names the file, the key and the bad value (``controller.validation``). Plugins are
named through the manifest (``controller.plugins``), not imported: config sits below the packages
that implement them. (Which engine a native tool measures is read from its class, which the
registry imports by name: a plugin lookup, not an import of the boards package.)

May import: ``controller.errors``, ``controller.validation``, ``controller.plugins``,
``controller.workspace``, ``controller.passes`` (each pass owns its options), ``agent``.
"""
