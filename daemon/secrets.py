"""Secrets by name: systemd credentials first, then the environment.

The unit (systemd/tradingd.service, ``LoadCredential=NAME:PATH``) hands each secret to the service as the file
``$CREDENTIALS_DIRECTORY/NAME``; without systemd (or with an empty credential file, as the installer creates
them) the environment variable named in the config is used. Secrets never come from config.toml.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

# credential names as the unit's LoadCredential= lines and scripts/install-systemd.sh spell them
API_KEY = "tradingd-api-key"
API_SECRET = "tradingd-api-secret"
CONTROL_TOKEN = "tradingd-control-token"
DB_PASSWORD = "tradingd-db-password"


def read_secret(env: Mapping[str, str], credential: str, env_var: str) -> str:
    """``$CREDENTIALS_DIRECTORY/<credential>`` (trailing newline stripped) if set and non-empty, else
    ``env[env_var]``, else ""."""
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        p = Path(cred_dir) / credential
        try:
            value = p.read_text().rstrip("\r\n")
        except FileNotFoundError:
            value = ""
        if value:
            return value
    return env.get(env_var, "")

