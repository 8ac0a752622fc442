"""The Jupyter password as Jupyter Server's argon2 hash, computed in the Pulumi program.

The salt comes from a random resource kept in the stack state, so the same password gives the
same hash on every `pulumi up` and an unchanged stack shows no diff. The plaintext never leaves
this module: only the hash goes to the VM, through Secret Manager (kgg/infra/component.py).
"""

from __future__ import annotations

import base64

from argon2.low_level import Type, hash_secret

# Jupyter Server's own cost settings (jupyter_server.auth.security.passwd).
ARGON2_TIME_COST = 10
ARGON2_MEMORY_KIB = 10240
ARGON2_PARALLELISM = 8
ARGON2_HASH_BYTES = 32
# The password alone guards a port on the internet: at least 12 characters (issue 15).
MIN_PASSWORD_LENGTH = 12


class PasswordError(ValueError):
    """The password cannot protect a public notebook; the message never contains it."""


def check_password(password: str) -> None:
    """Raises PasswordError for a password too short to guard a public notebook."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise PasswordError(
            f"jupyterPassword is shorter than {MIN_PASSWORD_LENGTH} characters; the notebook is "
            "reachable over the internet. Set a longer one with "
            "`pulumi config set --secret jupyterPassword`"
        )


def jupyter_password_hash(password: str, salt_b64: str) -> str:
    """`argon2:$argon2id$...`, the format `PasswordIdentityProvider.hashed_password` verifies."""
    check_password(password)
    encoded = hash_secret(
        password.encode(),
        base64.b64decode(salt_b64),
        time_cost=ARGON2_TIME_COST,
        memory_cost=ARGON2_MEMORY_KIB,
        parallelism=ARGON2_PARALLELISM,
        hash_len=ARGON2_HASH_BYTES,
        type=Type.ID,
    )
    return f"argon2:{encoded.decode()}"
