"""Running PostgreSQL's programs as an ordinary user: initdb and postgres refuse root."""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

SERVICE_USER = "postgres"


def running_as_root() -> bool:
    return os.geteuid() == 0


def as_service_user(command: list[str]) -> list[str]:
    """``command`` run as the ``postgres`` OS user when we are root, else unchanged."""
    if running_as_root():
        return ["runuser", "-u", SERVICE_USER, "--", *command]
    return command


def give_to_service_user(path: Path) -> None:
    """Make ``path`` (a directory we created) owned by the service user when we are root."""
    if running_as_root():
        entry = pwd.getpwnam(SERVICE_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)
        for root, dirs, files in os.walk(path):
            os.chown(root, entry.pw_uid, entry.pw_gid)
            for name in dirs + files:
                os.lchown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


def service_user_can_reach(path: Path) -> bool:
    """True when the service user can enter ``path`` (false for, e.g., a 0700 mktemp dir)."""
    if not running_as_root():
        return True
    result = subprocess.run(
        as_service_user(["test", "-x", str(path)]), capture_output=True, check=False
    )
    return result.returncode == 0
