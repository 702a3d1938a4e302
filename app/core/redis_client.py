"""The one way API and workers reach Redis: a URL, or Sentinel for high availability."""

from typing import Any
from urllib.parse import urlparse

from redis import Redis
from redis.sentinel import Sentinel

from app.core.settings import Settings


def connect(settings: Settings, **options: Any) -> Redis:
    """A client of the current primary. With `LDM_REDIS_SENTINELS`, the client asks the
    sentinels where the primary is and follows it through a failover; the URL then only
    supplies the database number and password."""
    if not settings.redis_sentinels:
        return Redis.from_url(settings.redis_url, **options)
    url = urlparse(settings.redis_url)
    db = int(url.path.lstrip("/") or 0)
    sentinels = [
        (host, int(port)) for host, _, port in (s.rpartition(":") for s in settings.redis_sentinels)
    ]
    sentinel = Sentinel(sentinels, socket_timeout=options.get("socket_timeout", 5))
    return sentinel.master_for(
        settings.redis_sentinel_master, db=db, password=url.password, **options
    )
