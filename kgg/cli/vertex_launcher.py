"""What a Vertex AI job's container runs first (docs/CONTRACTS.md, "Vertex AI jobs"):
a few lines of stdlib Python, carried in the job's own body, that take the stack's code archive
from the bucket's Cloud Storage FUSE mount (/gcs/BUCKET/...), check its SHA-256 against the hash
the laptop put in the body (the bucket is not trusted), extract it with no links and nothing
outside its folder, and hand over to an entry script of the archive with the remaining
arguments (for a trial, Vertex's `--<parameterId>=<value>` come last and are passed on).

The image needs only a python3 (3.10+, for the entry bootstrap.py): Google's distroless
python3-debian12 has 3.11, no shell; bootstrap.py `vertex` installs the rest with uv.
"""

from __future__ import annotations

from collections.abc import Sequence

from kgg.common.contract import VERTEX_FUSE_ROOT

DEFAULT_IMAGE = "gcr.io/distroless/python3-debian12"
DEFAULT_TARGET = "/opt/kgg/app"

# argv: ARCHIVE SHA256 TARGET ENTRY [ARGS...]. Exit 2 (the job's "a problem to fix") on a bad
# hash or a member that is not a plain file inside the folder.
LAUNCHER = """\
import hashlib, io, os, pathlib, sys, tarfile
archive, expected, target, entry, *rest = sys.argv[1:]
data = pathlib.Path(archive).read_bytes()
actual = hashlib.sha256(data).hexdigest()
if actual != expected:
    print(f"kgg: {archive} has SHA-256 {actual}, not {expected}: not run", file=sys.stderr)
    sys.exit(2)
root = pathlib.Path(target)
with tarfile.open(fileobj=io.BytesIO(data)) as tar:
    for member in tar.getmembers():
        parts = pathlib.PurePosixPath(member.name).parts
        if not member.isreg() or member.name.startswith("/") or ".." in parts:
            print(f"kgg: {archive} holds {member.name!r}, not a plain file", file=sys.stderr)
            sys.exit(2)
        path = root.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tar.extractfile(member).read())
script = root / entry
os.execv(sys.executable, [sys.executable, str(script), *rest])
"""


def fuse_path(bucket: str, object_name: str) -> str:
    """Where Vertex mounts an object of the bucket in the container (Cloud Storage FUSE)."""
    return f"{VERTEX_FUSE_ROOT}{bucket}/{object_name}"


def launcher(
    archive: str, sha256: str, entry: str, entry_args: Sequence[str] = (),
    target: str = DEFAULT_TARGET,
) -> tuple[list[str], list[str]]:  # fmt: skip
    """(command, args) of the container: the launcher, then what it hands to `entry` (a path
    inside the archive, e.g. the stdlib bootstrap that installs the locked env with uv)."""
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"code archive hash {sha256!r} is not a hex SHA-256")
    return ["python3", "-c", LAUNCHER], [archive, sha256, target, entry, *entry_args]
