"""What the server trusts: API keys, the media references a request may name, and URLs it may fetch.

- Keys are compared in constant time (``hmac.compare_digest``); no key is ever logged.
- A request never makes the server read a local path: ``file://`` and bare paths are refused; ``oss://``
  names only the server's own temporary uploads (``uploads.py``).
- URLs are fetched only when the backend runs the model here (a cloud gateway passes them on for the
  service to fetch). Each hop's host is resolved and every address checked (no private, loopback,
  link-local, reserved or metadata ranges unless ``allow_private``), the connection goes to the checked
  address (no second lookup to race), and redirects are followed by hand so each target is checked again.
  httpx has no hook for "check the address it connected to", hence this small fetcher.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urljoin, urlsplit

import httpx

from qwenvl import env as qenv
from qwenvl.errors import MediaError, UsageError

Resolver = Callable[[str, int], Awaitable[list[str]]]
SERVE_KEY_ENV = qenv.SERVE_API_KEY_ENV  # the key clients of `qwenvl serve` and `qwenvl mcp --http` must send


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host``:``port`` (0: a free port), for ``qwenvl serve`` and ``qwenvl mcp --http``.

    It listens before it is returned: a client that connects as soon as the port is announced waits in the
    backlog (2048) until the server accepts, instead of being refused. UsageError (exit 2) when the address
    cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}", hint=_listen_hint(exc, port)
        ) from None
    return sock


def _listen_hint(exc: OSError, port: int) -> str:
    """What to change when an address cannot be listened on: the address (not this machine's, or a name that does
    not resolve), the port (taken, or one below 1024 without the privilege). Raises nothing."""
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        return (
            "The address is not one of this machine's: give one of its own with --host (127.0.0.1 for this machine "
            "only, 0.0.0.0 for every network interface)."
        )
    if exc.errno == errno.EACCES and 0 < port < 1024:
        return "Ports below 1024 need privileges: choose a port of 1024 or above (0 picks a free one)."
    return "Choose another port (0 picks a free one) or stop what holds this one."


def key_matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def bearer(authorization: str | None) -> str | None:
    """The key of an ``Authorization: Bearer KEY`` header (None when absent or another scheme)."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (where a server may run without a key)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _addresses(host: str) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses ``host`` stands for (a literal, or the system resolver's answer; none when it has none)."""
    host = host.strip("[]").split("%", 1)[0]
    try:
        found = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            found = {ipaddress.ip_address(str(i[4][0]).split("%", 1)[0]) for i in socket.getaddrinfo(host, None)}
        except (OSError, UnicodeError, ValueError):
            return set()
    return {ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip for ip in found}


def _this_machine(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Loopback or unspecified (``0.0.0.0`` and ``::`` reach this machine when connected to)."""
    return ip.is_loopback or ip.is_unspecified


def is_own_address(url: str, host: str, port: int) -> bool:
    """True when ``url`` (an upstream's base URL) points at the address this server listens on (``host``:``port``;
    ``port`` 0, a free one picked at start, matches nothing): the same port, and hosts that are the same machine's
    (``localhost``, ``127.0.0.1``, ``::1``, ``0.0.0.0``, ``::`` are one another's equivalents; a server on ``0.0.0.0``
    or ``::`` is also reached at this machine's own addresses). A host that does not resolve matches nothing.
    Raises nothing."""
    try:
        parts = urlsplit(url)
        upstream_port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    if port == 0 or upstream_port != port or not parts.hostname:
        return False
    theirs, ours = _addresses(parts.hostname), _addresses(host)
    if theirs & ours:
        return True
    if any(_this_machine(ip) for ip in theirs) and any(_this_machine(ip) for ip in ours):
        return True
    if any(ip.is_unspecified for ip in ours):  # listening everywhere: this machine's own names reach it too
        return bool(theirs & _addresses(socket.gethostname()))
    return False


def is_public(address: str) -> bool:
    """True for a globally routable unicast address (IPv4-mapped IPv6 judged as the IPv4 it carries)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def checked_address(host: str, port: int, *, allow_private: bool, resolver: Resolver) -> str:
    """The address to connect to for ``host``; MediaError when it cannot be resolved or is not public."""
    try:
        addresses = await resolver(host, port)
    except OSError:
        raise MediaError(f"cannot resolve {host}", source=host) from None
    if not addresses:
        raise MediaError(f"cannot resolve {host}", source=host)
    if not allow_private:
        for address in addresses:
            if not is_public(address):
                raise MediaError(
                    f"{host} resolves to a private or reserved address ({address}); this server "
                    "does not fetch such URLs",
                    source=host,
                    hint="Send the file as a data: URL, or start the server with --allow-private-urls.",
                )
    return addresses[0]


async def fetch_public(
    url: str,
    *,
    max_bytes: int,
    timeout_s: float,
    max_redirects: int = 5,
    allow_private: bool = False,
    resolver: Resolver = system_resolver,
    client: httpx.AsyncClient | None = None,
) -> bytes:
    """Download ``url`` under the rules above within ``timeout_s`` in all (connect, redirects, body).

    Raises MediaError naming the URL for a refused address, a bad status, too many redirects, a body over
    ``max_bytes`` or the deadline."""
    deadline = time.monotonic() + timeout_s
    own = client is None
    client = client or httpx.AsyncClient(follow_redirects=False, trust_env=False)
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):  # a cancellation is never dropped
            return await _fetch(client, url, max_bytes, max_redirects, allow_private, resolver)
    except TimeoutError:
        raise MediaError(f"cannot fetch {url}: timed out after {timeout_s:g} s", source=url) from None
    except httpx.HTTPError as exc:
        raise MediaError(f"cannot fetch {url}: {type(exc).__name__}", source=url) from None
    finally:
        if own:
            await client.aclose()


async def _fetch(
    client: httpx.AsyncClient, url: str, max_bytes: int, max_redirects: int, allow_private: bool, resolver: Resolver
) -> bytes:
    original = url
    for _ in range(max_redirects + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise MediaError(f"cannot fetch {url}: only http(s) URLs are fetched", source=original)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = await checked_address(parts.hostname, port, allow_private=allow_private, resolver=resolver)
        host = f"[{address}]" if ":" in address else address
        target = parts._replace(netloc=f"{host}:{port}").geturl()
        request = client.build_request(
            "GET",
            target,
            headers={"Host": parts.netloc.rpartition("@")[2]},
            extensions={"sni_hostname": parts.hostname},
        )
        response = await client.send(request, stream=True)
        try:
            if response.is_redirect and response.headers.get("location"):
                url = urljoin(url, response.headers["location"])
                continue
            if response.status_code >= 400:
                raise MediaError(f"cannot fetch {original}: HTTP {response.status_code}", source=original)
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise MediaError(
                        f"{original} is larger than the {max_bytes / 1e6:.0f} MB download limit", source=original
                    )
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            await response.aclose()
    raise MediaError(f"cannot fetch {original}: more than {max_redirects} redirects", source=original)
