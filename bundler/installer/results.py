"""What a phase reports for each node it worked on: done, already there, failed, warnings.

Only the data; the phases in ``apply``, ``siteregistry`` and ``preflight`` fill it in, and
``main`` prints it. No I/O here.
"""

from typing import List, Optional


from bundler.compat import dataclass, field

from bundler.installer.inventory import Node


@dataclass
class NodeResult:
    """What one phase did on one node."""

    node: Node
    done: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    error: Optional[str] = None
    warnings: List[str] = field(default_factory=list)  # what the node could not tell, or advice
    sent: int = 0  # bytes this node was sent (image streams)
    verb: str = "loaded"  # how images reached it: loaded (ssh-load) or pulled (registry)
    items: Optional[List[str]] = None  # the plan's items this result stands for (None: all of the node's)
