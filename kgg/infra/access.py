"""Who may do what, proven: the IAM bindings the program declares (read from its resources as
kgg/infra/declared.py records them, never written a second time), the permissions of the predefined
roles it grants, and the written allow-list of every identity it creates.

`Grants` answers two questions. `permissions_of(member)`: everything an identity may ever hold
(conditions ignored: the upper bound), which tests/infra/test_grants.py compares with `ALLOWED`.
`allows(member, permission, resource)`: whether one call is permitted (scope and IAM condition
evaluated), which the IAM-enforcing test doubles ask for every request they serve.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# The predefined roles the program grants, with their permissions from Google's IAM roles
# reference (https://cloud.google.com/iam/docs/roles-permissions), checked 2026-11 against the
# reference and its mirror iann0036/iam-dataset (gcp/roles/*.json of 2026-08-22). A role the
# program starts granting must be added here: `Grants` refuses roles it does not know.
ROLES_CHECKED = "2026-11"
PREDEFINED_ROLES: Mapping[str, frozenset[str]] = {
    "roles/storage.objectAdmin": frozenset(
        {
            "monitoring.timeSeries.create",
            "orgpolicy.policy.get",
            "resourcemanager.projects.get",
            "resourcemanager.projects.list",
            "storage.folders.create",
            "storage.folders.delete",
            "storage.folders.get",
            "storage.folders.list",
            "storage.folders.rename",
            "storage.managedFolders.create",
            "storage.managedFolders.delete",
            "storage.managedFolders.get",
            "storage.managedFolders.list",
            "storage.multipartUploads.abort",
            "storage.multipartUploads.create",
            "storage.multipartUploads.list",
            "storage.multipartUploads.listParts",
            "storage.objects.create",
            "storage.objects.createContext",
            "storage.objects.delete",
            "storage.objects.deleteContext",
            "storage.objects.get",
            "storage.objects.getIamPolicy",
            "storage.objects.list",
            "storage.objects.move",
            "storage.objects.overrideUnlockedRetention",
            "storage.objects.restore",
            "storage.objects.setIamPolicy",
            "storage.objects.setRetention",
            "storage.objects.update",
            "storage.objects.updateContext",
        }
    ),
    "roles/logging.logWriter": frozenset({"logging.logEntries.create", "logging.logEntries.route"}),
    "roles/secretmanager.secretAccessor": frozenset(
        {
            "resourcemanager.projects.get",
            "resourcemanager.projects.list",
            "secretmanager.versions.access",
        }
    ),
}
# The laptop user is the person who ran `pulumi up` (it creates service accounts, custom roles and
# project bindings): the project's Owner, modelled as holding every permission.
OWNER_ROLE = "roles/owner"

# The identities the program creates.
VM = "vm"  # the VM's service account: every process on the VM can use it (metadata server)
STOPPER = "stopper"  # the stop workflow's account: only the workflow runs as it
JOBS = "jobs"  # the Vertex AI jobs' account: only jobs the laptop user creates run as it
JOBS_ACCOUNT_SUFFIX = "-jobs"  # kgg/infra/specs.py's jobs_account_id

# The written allow-list. The VM's account reads and writes its bucket's objects, writes logs,
# reads its two secrets and may start (and read the result of) its stop workflow: nothing of
# Compute Engine, nothing of IAM. The stopper may read and update its one group (a condition
# names it); only the workflow's definition, which resizes that group to 0, runs as it.
#
# What the VM's and the jobs' accounts share: roles/storage.objectAdmin on the stack's bucket only,
# and roles/logging.logWriter (the guest agent's startup-script log; a job's container log).
# Written out, not derived from PREDEFINED_ROLES: when Google grows a role, the allow-list test
# fails and a person decides whether the identity may keep it.
_BUCKET_OBJECTS_AND_LOGS = frozenset(
    {
        "monitoring.timeSeries.create",
        "orgpolicy.policy.get",
        "resourcemanager.projects.get",
        "resourcemanager.projects.list",
        "storage.folders.create",
        "storage.folders.delete",
        "storage.folders.get",
        "storage.folders.list",
        "storage.folders.rename",
        "storage.managedFolders.create",
        "storage.managedFolders.delete",
        "storage.managedFolders.get",
        "storage.managedFolders.list",
        "storage.multipartUploads.abort",
        "storage.multipartUploads.create",
        "storage.multipartUploads.list",
        "storage.multipartUploads.listParts",
        "storage.objects.create",
        "storage.objects.createContext",
        "storage.objects.delete",
        "storage.objects.deleteContext",
        "storage.objects.get",
        "storage.objects.getIamPolicy",
        "storage.objects.list",
        "storage.objects.move",
        "storage.objects.overrideUnlockedRetention",
        "storage.objects.restore",
        "storage.objects.setIamPolicy",
        "storage.objects.setRetention",
        "storage.objects.update",
        "storage.objects.updateContext",
        "logging.logEntries.create",
        "logging.logEntries.route",
    }
)
ALLOWED: Mapping[str, frozenset[str]] = {
    VM: _BUCKET_OBJECTS_AND_LOGS
    | frozenset(
        {
            # roles/secretmanager.secretAccessor, on the password hash and webhook URL secrets
            "secretmanager.versions.access",
            # the stack's custom role, on its stop workflow only
            "workflows.executions.create",
            "workflows.executions.get",
        }
    ),
    STOPPER: frozenset(
        {"compute.instanceGroupManagers.get", "compute.instanceGroupManagers.update"}
    ),
    # The jobs' account: the same bucket objects and logs, without the VM's secrets and stop
    # workflow (a job has no notebook and no VM to stop), nothing of IAM or Compute Engine.
    JOBS: _BUCKET_OBJECTS_AND_LOGS,
}
# Permissions that let an identity act as, or mint credentials of, a service account: an
# identity holding one on another account can obtain that account's permissions.
IMPERSONATION = frozenset(
    {
        "iam.serviceAccounts.actAs",
        "iam.serviceAccounts.getAccessToken",
        "iam.serviceAccounts.getOpenIdToken",
        "iam.serviceAccounts.implicitDelegation",
        "iam.serviceAccounts.signBlob",
        "iam.serviceAccounts.signJwt",
        "iam.serviceAccountKeys.create",
    }
)

BUCKET_RESOURCE = "projects/_/buckets/{bucket}"


class AccessError(ValueError):
    """The program grants something this model cannot evaluate (an unknown role or condition)."""


@dataclass(frozen=True)
class Binding:
    """One role granted to one member on one resource (and everything under it), with an
    optional IAM condition (CEL)."""

    member: str
    role: str
    resource: str
    condition: str | None = None


@dataclass(frozen=True)
class Workflow:
    """A Cloud Workflows workflow the program declares: its resource name, the member it runs
    as, and its source."""

    name: str
    member: str
    source: str


@dataclass(frozen=True)
class Grants:
    project: str
    bindings: tuple[Binding, ...]
    custom_roles: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # The stack's buckets.
    buckets: frozenset[str] = frozenset()
    # The members of the identities the program creates, by VM / STOPPER.
    identities: Mapping[str, str] = field(default_factory=dict)
    workflows: tuple[Workflow, ...] = ()

    def role_permissions(self, role: str) -> frozenset[str] | None:
        """The role's permissions; None for the owner (every permission)."""
        if role == OWNER_ROLE:
            return None
        if role in PREDEFINED_ROLES:
            return PREDEFINED_ROLES[role]
        if role in self.custom_roles:
            return self.custom_roles[role]
        raise AccessError(
            f"role {role!r} is not in kgg/infra/access.py's table; add its permissions"
        )

    def permissions_of(self, member: str) -> frozenset[str]:
        """Every permission any binding gives `member`, wherever and under whatever condition."""
        held: set[str] = set()
        for binding in self.bindings:
            if binding.member == member:
                permissions = self.role_permissions(binding.role)
                held |= {"*"} if permissions is None else permissions
        return frozenset(held)

    def obtainable_from(self, member: str) -> frozenset[str]:
        """`member` and every service account it can act as through impersonation grants."""
        reached, todo = {member}, [member]
        while todo:
            current = todo.pop()
            for binding in self.bindings:
                if binding.member != current or "/serviceAccounts/" not in binding.resource:
                    continue
                permissions = self.role_permissions(binding.role)
                if permissions is None or permissions & IMPERSONATION:
                    target = "serviceAccount:" + binding.resource.rsplit("/", 1)[-1]
                    if target not in reached:
                        reached.add(target)
                        todo.append(target)
        return frozenset(reached)

    def allows(self, member: str, permission: str, resource: str) -> bool:
        """Whether `member` may use `permission` on `resource` (a full IAM resource name)."""
        for binding in self.bindings:
            if binding.member != member or not self._covers(binding.resource, resource):
                continue
            permissions = self.role_permissions(binding.role)
            if permissions is not None and permission not in permissions:
                continue
            if binding.condition is None or condition_holds(binding.condition, resource):
                return True
        return False

    def with_owner(self, member: str) -> Grants:
        """These grants plus `member` as the project's Owner (the laptop user)."""
        owner = Binding(member, OWNER_ROLE, f"projects/{self.project}")
        return Grants(self.project, (*self.bindings, owner), self.custom_roles, self.buckets,
                      self.identities, self.workflows)  # fmt: skip

    def _covers(self, scope: str, resource: str) -> bool:
        if resource == scope or resource.startswith(scope + "/"):
            return True
        # A bucket's IAM name holds no project: the test doubles serve one project, whose
        # project bindings cover every bucket in it.
        return scope == f"projects/{self.project}" and resource.startswith("projects/_/buckets/")


def from_resources(resources: Iterable[Any]) -> Grants:
    """The grants in the resources kgg/infra/declared.py recorded (`type`, `inputs`, `outputs`)."""
    resources = list(resources)

    def of(type_token: str) -> list[Any]:
        return [r for r in resources if r.type == type_token]

    custom = {
        r.outputs["name"]: frozenset(r.inputs["permissions"])
        for r in of("gcp:projects/iAMCustomRole:IAMCustomRole")
    }
    bindings: list[Binding] = []
    projects = set()
    for r in of("gcp:projects/iAMMember:IAMMember"):
        projects.add(r.inputs["project"])
        condition = (r.inputs.get("condition") or {}).get("expression")
        resource = f"projects/{r.inputs['project']}"
        bindings.append(Binding(r.inputs["member"], r.inputs["role"], resource, condition))
    for r in of("gcp:storage/bucketIAMMember:BucketIAMMember"):
        resource = BUCKET_RESOURCE.format(bucket=r.inputs["bucket"])
        bindings.append(Binding(r.inputs["member"], r.inputs["role"], resource))
    for r in of("gcp:secretmanager/secretIamMember:SecretIamMember"):
        bindings.append(Binding(r.inputs["member"], r.inputs["role"], r.inputs["secretId"]))
    for r in of("gcp:serviceaccount/iAMMember:IAMMember"):
        bindings.append(Binding(r.inputs["member"], r.inputs["role"], r.inputs["serviceAccountId"]))
    if len(projects) != 1:
        raise AccessError(f"expected project bindings in one project, found {sorted(projects)}")
    (template,) = of("gcp:compute/instanceTemplate:InstanceTemplate")
    identities = {VM: "serviceAccount:" + template.inputs["serviceAccount"]["email"]}
    for r in of("gcp:serviceaccount/account:Account"):
        if r.inputs["accountId"].endswith(JOBS_ACCOUNT_SUFFIX):
            identities[JOBS] = "serviceAccount:" + r.outputs["email"]
    workflows = []
    for r in of("gcp:workflows/workflow:Workflow"):
        member = "serviceAccount:" + r.inputs["serviceAccount"].rsplit("/", 1)[-1]
        name = f"projects/{r.inputs['project']}/locations/{r.inputs['region']}/workflows/"
        workflows.append(Workflow(name + r.inputs["name"], member, r.inputs["sourceContents"]))
        identities[STOPPER] = member
    return Grants(
        project=projects.pop(),
        bindings=tuple(bindings),
        custom_roles=custom,
        buckets=frozenset(r.outputs["name"] for r in of("gcp:storage/bucket:Bucket")),
        identities=identities,
        workflows=tuple(workflows),
    )


# --- IAM conditions: the subset of CEL the program writes -------------------------------------
_TOKEN = re.compile(
    r'\s*(?:(?P<string>"(?:[^"\\]|\\.)*")|(?P<op>\|\||&&|==|!=|\(|\)|,)'
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_.]*))"
)


def condition_holds(expression: str, resource: str) -> bool:
    """Evaluates `resource.name == "..."`, `resource.name.startsWith("...")`,
    `resource.name.endsWith("...")`, `!=`, `&&`, `||` and parentheses for `resource`; anything
    else raises AccessError (a test double must not guess)."""
    return _Condition(expression, resource).evaluate()


class _Condition:
    """A recursive-descent reading of one expression: either := both (|| both)*,
    both := atom (&& atom)*, atom := ( either ) | a comparison of resource.name."""

    def __init__(self, expression: str, resource: str) -> None:
        self.expression, self.resource = expression, resource
        self.tokens, self.position = _tokens(expression), 0

    def evaluate(self) -> bool:
        result = self.either()
        if self.peek() is not None:
            raise self.error(f"unexpected {self.peek()!r}")
        return result

    def error(self, what: str) -> AccessError:
        return AccessError(f"condition {self.expression!r}: {what}")

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise self.error(f"expected {expected or 'more'}")
        self.position += 1
        return token

    def string(self) -> str:
        token = self.take()
        if not token.startswith('"'):
            raise self.error(f"expected a string, got {token!r}")
        return bytes(token[1:-1], "utf-8").decode("unicode_escape")

    def atom(self) -> bool:
        token = self.take()
        if token == "(":
            value = self.either()
            self.take(")")
            return value
        if token == "resource.name":
            op = self.take()
            if op not in ("==", "!="):
                raise self.error(f"{op!r} is not understood")
            return (self.resource == self.string()) == (op == "==")
        if token in ("resource.name.startsWith", "resource.name.endsWith"):
            self.take("(")
            text = self.string()
            self.take(")")
            if token.endswith("startsWith"):
                return self.resource.startswith(text)
            return self.resource.endswith(text)
        raise self.error(f"{token!r} is not understood")

    def both(self) -> bool:
        value = self.atom()
        while self.peek() == "&&":
            self.take()
            value = self.atom() and value
        return value

    def either(self) -> bool:
        value = self.both()
        while self.peek() == "||":
            self.take()
            value = self.both() or value
        return value


def _tokens(expression: str) -> list[str]:
    tokens, position = [], 0
    while position < len(expression.rstrip()):
        match = _TOKEN.match(expression, position)
        if not match:
            raise AccessError(f"condition {expression!r} is not understood at {position}")
        tokens.append(match.group().strip())
        position = match.end()
    return tokens


@dataclass
class Authority:
    """What the test doubles ask for every request: who the caller's bearer token belongs to,
    and whether the grants let them. Tokens are issued here (`issue`), as Google's token
    service and the metadata server issue them."""

    grants: Grants
    tokens: dict[str, str] = field(default_factory=dict)

    def issue(self, member: str) -> str:
        token = f"ya29.kgg-{len(self.tokens)}-{re.sub(r'[^a-z0-9]+', '-', member.lower())}"
        self.tokens[token] = member
        return token

    def member(self, token: str | None) -> str | None:
        return self.tokens.get(token or "")

    def allows(self, member: str, permission: str, resource: str) -> bool:
        return self.grants.allows(member, permission, resource)
