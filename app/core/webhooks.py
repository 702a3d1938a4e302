"""Webhooks: which URLs may receive them (the SSRF guard), what they carry, how they are signed.

A URL is checked at submit (so a client learns at once) and again, authoritatively, at every
delivery: the host is resolved, every address must be public (unless the operator allows
private ones), and the request then goes to the vetted address itself, so a DNS answer that
changes in between (rebinding) cannot send it elsewhere."""

import ipaddress
import json
import socket
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from standardwebhooks.webhooks import Webhook

from app.core.jobs import Job

# What a client may subscribe to, and the `type` each is delivered as.
EVENT_TYPES = {"start": "job.started", "progress": "job.progress", "completed": "job.completed"}
MAX_URL_LENGTH = 2048  # as JobCreate allows

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# NAT64 (RFC 6052) embeds an IPv4 address; the gateway connects to that one.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_ALLOW_HINT = "(an operator can allow them with LDM_WEBHOOK_ALLOW_PRIVATE=true)"


class WebhookRefused(Exception):
    """A webhook URL that may not be delivered to; the message says how to fix it."""


@dataclass(frozen=True)
class Target:
    """Where one delivery attempt connects: the URL with its host replaced by a vetted
    address, the Host header the receiver expects, and the name TLS must verify (None when
    the URL names an address, which the certificate must then cover)."""

    url: httpx.URL
    host_header: str
    sni_hostname: str | None


def is_public_address(ip: IPAddress) -> bool:
    """Whether `ip` is a globally routable unicast address, looking through IPv6 forms that
    carry an IPv4 address (`::ffff:127.0.0.1`, NAT64, 6to4)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public_address(ip.ipv4_mapped)
        if ip in _NAT64:
            return is_public_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.sixtofour is not None and not is_public_address(ip.sixtofour):
            return False
        if ip.is_site_local:
            return False
    # is_global excludes private, loopback, link-local, unspecified, shared (100.64/10)...
    return ip.is_global and not (ip.is_multicast or ip.is_reserved)


def _parse(url: str) -> httpx.URL:
    if len(url) > MAX_URL_LENGTH:
        raise WebhookRefused(f"webhook_url is longer than {MAX_URL_LENGTH} characters")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise WebhookRefused(f"webhook_url is not a valid URL ({exc})") from None
    if parsed.scheme not in ("http", "https"):
        raise WebhookRefused("webhook_url must start with https:// (or http://)")
    if not parsed.host:
        raise WebhookRefused("webhook_url has no host; give one, as in https://example.com/hook")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise WebhookRefused("webhook_url has a port outside 1..65535")
    return parsed


def _resolve(parsed: httpx.URL) -> list[IPAddress]:
    host = parsed.raw_host.decode("ascii")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise WebhookRefused(
            f"webhook_url host {parsed.host!r} does not resolve; check the name"
        ) from None
    addresses: list[IPAddress] = []
    for info in infos:
        # A scope (fe80::1%eth0) does not change what kind of address it is.
        address = ipaddress.ip_address(str(info[4][0]).partition("%")[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def resolve_targets(url: str, allow_private: bool) -> list[Target]:
    """The vetted addresses to deliver `url` to, in the resolver's order of preference.

    Raises `WebhookRefused` for a URL that is not http(s), does not resolve, or (unless
    `allow_private`) resolves to any address that is not public."""
    parsed = _parse(url)
    addresses = _resolve(parsed)
    if not allow_private:
        for address in addresses:
            if not is_public_address(address):
                raise WebhookRefused(
                    f"webhook_url host {parsed.host!r} resolves to {address}, which is not a "
                    "public address; webhooks are not sent to private, loopback, link-local "
                    f"or reserved addresses {_ALLOW_HINT}"
                )
    try:
        ipaddress.ip_address(parsed.host)
        sni_hostname = None
    except ValueError:
        sni_hostname = parsed.raw_host.decode("ascii")
    host_header = parsed.netloc.decode("ascii")
    return [Target(parsed.copy_with(host=str(a)), host_header, sni_hostname) for a in addresses]


def check_webhook_url(url: str, allow_private: bool) -> str | None:
    """Why `url` cannot receive webhooks (a message saying how to fix it), or None if it can.
    Resolves the host (blocking), so call it off the event loop."""
    try:
        resolve_targets(url, allow_private)
    except WebhookRefused as exc:
        return str(exc)
    return None


def event_body(event: str, job: Job, at: datetime) -> str:
    """The JSON a delivery carries: `{"type", "timestamp", "data"}`, data being the job as
    `GET /v1/jobs/{id}` shows it."""
    timestamp = at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    payload = {
        "type": EVENT_TYPES[event],
        "timestamp": timestamp,
        "data": job.model_dump(mode="json"),
    }
    # ASCII only: the signed bytes are then the same in every encoding a receiver assumes.
    return json.dumps(payload, separators=(",", ":"))


def signed_headers(signer: Webhook, msg_id: str, body: str, now: datetime) -> dict[str, str]:
    """Standard Webhooks headers for sending `body` now: `webhook-id` (the same on every
    retry), `webhook-timestamp` (this attempt, in whole seconds) and `webhook-signature`."""
    now = now.astimezone(UTC)  # the library reads the clock time as UTC
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signer.sign(msg_id, now, body),
        "content-type": "application/json",
    }
