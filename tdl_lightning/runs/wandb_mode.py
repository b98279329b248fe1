"""Which W&B mode a run logs in: online for a user W&B knows, offline otherwise, never a prompt.

The rule (:func:`decide_wandb_mode`): an explicit ``WANDB_MODE`` wins; otherwise ``online`` when
credentials exist (``WANDB_API_KEY``, the ``~/.netrc`` entry for the W&B host that ``wandb login``
writes, or a run started by ``wandb agent``, which sets ``WANDB_SWEEP_ID``), ``offline`` when not.
:func:`resolve_wandb_mode` then checks what the rule chose can work: explicit ``online`` with no
credentials is refused with one line (W&B would open an interactive prompt), an online mode
chosen automatically whose server cannot be reached falls back to ``offline`` with one line, and
an explicit ``WANDB_MODE=online`` whose server cannot be reached stops with one line (exit 2)
before the run starts. The reachability check is a 5 s TCP connection to the server; behind an
HTTP(S) proxy (``HTTPS_PROXY``, ...) it is skipped and W&B's own init (timeout ``WANDB_INIT_TIMEOUT``
seconds, default 30) decides.

Example:
    >>> decide_wandb_mode({"WANDB_MODE": "disabled"}).mode
    'disabled'
    >>> decide_wandb_mode({"WANDB_SWEEP_ID": "abc", "NETRC": "/nonexistent"}).reason
    'a wandb agent run (WANDB_SWEEP_ID)'
"""

from __future__ import annotations

import netrc
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from tdl_lightning.errors import ConfigError

__all__ = ["WandbMode", "decide_wandb_mode", "resolve_wandb_mode", "wandb_host"]

DEFAULT_URL = "https://api.wandb.ai"
INIT_TIMEOUT_S = float(os.environ.get("WANDB_INIT_TIMEOUT") or 30.0)  # W&B's own default is 90 s
_PROXIES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
_REACH_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class WandbMode:
    """A W&B mode and why it was chosen.

    Example:
        >>> WandbMode("offline", "no W&B credentials").explicit
        False
    """

    mode: str
    reason: str
    explicit: bool = False
    has_credentials: bool = False


def wandb_host(environ: Mapping[str, str] | None = None) -> str:
    """The W&B server's host name (``WANDB_BASE_URL``, default ``api.wandb.ai``).

    Example:
        >>> wandb_host({"WANDB_BASE_URL": "https://wandb.example.org:8443"})
        'wandb.example.org'
    """
    environ = os.environ if environ is None else environ
    return urlparse(environ.get("WANDB_BASE_URL") or DEFAULT_URL).hostname or "api.wandb.ai"


def _netrc_path(environ: Mapping[str, str]) -> Path:
    if environ.get("NETRC"):
        return Path(environ["NETRC"]).expanduser()
    home = Path(environ.get("HOME") or Path.home())
    return (
        home / ".netrc" if (home / ".netrc").exists() or not (home / "_netrc").exists() else home / "_netrc"
    )


def _netrc_has_key(environ: Mapping[str, str]) -> bool:
    try:
        entry = netrc.netrc(str(_netrc_path(environ))).authenticators(wandb_host(environ))
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def decide_wandb_mode(environ: Mapping[str, str] | None = None) -> WandbMode:
    """The mode the rule picks from the environment (no network call).

    Example:
        >>> decide_wandb_mode({"WANDB_API_KEY": "k"}).mode
        'online'
        >>> decide_wandb_mode({"HOME": "/nonexistent"})
        WandbMode(mode='offline', reason='no W&B credentials', explicit=False, has_credentials=False)
    """
    environ = os.environ if environ is None else environ
    credentials = []
    if environ.get("WANDB_API_KEY"):
        credentials.append("WANDB_API_KEY")
    if _netrc_has_key(environ):
        credentials.append(f"the netrc entry for {wandb_host(environ)} (wandb login)")
    if environ.get("WANDB_SWEEP_ID"):
        credentials.append("a wandb agent run (WANDB_SWEEP_ID)")
    mode = environ.get("WANDB_MODE")
    if mode:
        return WandbMode(mode, "WANDB_MODE", explicit=True, has_credentials=bool(credentials))
    if credentials:
        return WandbMode("online", credentials[0], has_credentials=True)
    return WandbMode("offline", "no W&B credentials")


def _reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=_REACH_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def resolve_wandb_mode(environ: Mapping[str, str] | None = None) -> WandbMode:
    """The mode a run logs in, after checking that an online mode can work.

    Raises:
        ConfigError: ``WANDB_MODE=online`` with no credentials, or with no reachable server.

    Example:
        >>> resolve_wandb_mode({"WANDB_MODE": "offline"}).mode
        'offline'
    """
    environ = os.environ if environ is None else environ
    choice = decide_wandb_mode(environ)
    if choice.mode != "online":
        return choice
    if not choice.has_credentials:
        raise ConfigError(
            "WANDB_MODE=online but W&B has no API key here (no WANDB_API_KEY, no netrc entry for "
            f"{wandb_host(environ)}): run `wandb login` first, "
            "or use WANDB_MODE=offline and `wandb sync` later"
        )
    url = urlparse(environ.get("WANDB_BASE_URL") or DEFAULT_URL)
    port = url.port or (80 if url.scheme == "http" else 443)
    if any(environ.get(name) for name in _PROXIES) or _reachable(wandb_host(environ), port):
        return choice
    if choice.explicit:
        raise ConfigError(
            f"WANDB_MODE=online but the W&B server {wandb_host(environ)}:{port} cannot be reached "
            "(WANDB_BASE_URL, the network): nothing was started; run with WANDB_MODE=offline (the report "
            "gives the `wandb sync` command that uploads the run later), or unset WANDB_MODE"
        )
    print(
        f"tdl: W&B server {wandb_host(environ)}:{port} cannot be reached: logging offline instead "
        "(the report at the end gives the `wandb sync` command that uploads the run)",
        file=sys.stderr,
        flush=True,
    )
    return WandbMode("offline", f"{choice.reason}, but no W&B server reachable")
