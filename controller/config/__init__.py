"""What people write: the job spec and the board inventory, validated at the boundary.

Every error names the file, the key and the bad value (``controller.validation``). Plugins are
named through the manifest (``controller.plugins``), never imported: config sits below every
package that implements them.

May import: ``controller.errors``, ``controller.validation``, ``controller.plugins``,
``controller.workspace``, ``controller.passes`` (each pass owns its options), ``agent``.
"""
