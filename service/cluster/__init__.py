"""Scale-out on Redis: python-socketio's own Redis manager, hardened, and cluster presence.

- :mod:`service.cluster.link`: the process's Redis connections;
- :mod:`service.cluster.redis_manager`: the signed manager (cross-node delivery of emits);
- :mod:`service.cluster.presence`: who is connected and reachable, cluster-wide;
- :mod:`service.cluster.delivery`: a relay in one round trip;
- :mod:`service.cluster.call_store`: open calls, cluster-wide;
- :mod:`service.cluster.event_log`: lifecycle events waiting for delivery, and who is online.

The handlers and the call path (:mod:`service.signaling`, :mod:`service.calls`) see none of
this: they talk to the ``Presence`` and ``Delivery`` interfaces of :mod:`service.delivery` and
the ``CallStore`` of :mod:`service.calls`, whose errors these raise. Only
:mod:`service.factory` chooses them.
"""

from service.cluster.call_store import RedisCallStore
from service.cluster.delivery import ClusterDelivery
from service.cluster.event_log import RedisEventLog
from service.cluster.link import RedisLink
from service.cluster.presence import RedisPresence
from service.cluster.redis_manager import ClusterUnavailable, SignedRedisManager

__all__ = [
           "ClusterDelivery",
           "ClusterUnavailable",
           "RedisCallStore",
           "RedisEventLog",
           "RedisLink",
           "RedisPresence",
           "SignedRedisManager",
]
