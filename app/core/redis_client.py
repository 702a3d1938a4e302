"""The one way API and workers reach Redis: a URL, or Sentinel for high availability."""

from typing import Any
from urllib.parse import urlparse

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

from app.core.settings import Settings


def _sentinels(settings: Settings) -> list[tuple[str, int]]:
    return [
        (host, int(port)) for host, _, port in (s.rpartition(":") for s in settings.redis_sentinels)
    ]


def connect(settings: Settings, **options: Any) -> Redis:
    """A client of the current primary. With `LDM_REDIS_SENTINELS`, the client asks the
    sentinels where the primary is and follows it through a failover; the URL then only
    supplies the database number and password."""
    if not settings.redis_sentinels:
        return Redis.from_url(settings.redis_url, **options)
    url = urlparse(settings.redis_url)
    db = int(url.path.lstrip("/") or 0)
    sentinel = Sentinel(_sentinels(settings), socket_timeout=options.get("socket_timeout", 5))
    return sentinel.master_for(
        settings.redis_sentinel_master, db=db, password=url.password, **options
    )


def connect_async(settings: Settings, **options: Any) -> AsyncRedis:
    """`connect` for asyncio code: what waits on Redis (live events) without holding a thread."""
    if not settings.redis_sentinels:
        return AsyncRedis.from_url(settings.redis_url, **options)
    url = urlparse(settings.redis_url)
    sentinel = AsyncSentinel(_sentinels(settings), socket_timeout=options.get("socket_timeout", 5))
    return sentinel.master_for(
        settings.redis_sentinel_master,
        db=int(url.path.lstrip("/") or 0),
        password=url.password,
        **options,
    )
