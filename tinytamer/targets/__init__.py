"""Deployment targets: one Target protocol, a registry, one module per backend.

Backends register themselves when the registry is first consulted, so importing this
package never imports a runtime (or torch).
"""

from tinytamer.targets.base import (
    Cost,
    Deployed,
    ParityError,
    Target,
    check_parity,
    get_target,
    list_targets,
    register_target,
)

__all__ = ["Cost", "Deployed", "ParityError", "Target", "check_parity", "get_target", "list_targets", "register_target"]
