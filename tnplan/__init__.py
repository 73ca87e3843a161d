"""tnplan: contraction-order planning for tensor networks.

Build a :class:`Network`, :func:`plan` it once, then reuse the :class:`Plan`: serialise it, report on
it, and :meth:`Plan.contract` arrays with it.

Examples:
    >>> import tnplan
    >>> net = tnplan.Network.from_einsum("ab,bc,cd->ad", (2, 8), (8, 8), (8, 2))
    >>> p = tnplan.plan(net)
    >>> p.optimal, p.path
    (True, [(0, 1), (0, 1)])
"""

from tnplan.cache import CacheWarning, PlanCache
from tnplan.cost import Costs, score_linear_path, score_path
from tnplan.errors import NetworkError, PlanError, TnplanError
from tnplan.network import Network
from tnplan.plan import Plan, from_path
from tnplan.planner import plan

__all__ = [
    "CacheWarning",
    "Costs",
    "Network",
    "NetworkError",
    "Plan",
    "PlanCache",
    "PlanError",
    "TnplanError",
    "from_path",
    "plan",
    "score_linear_path",
    "score_path",
]
__version__ = "0.1.0"
