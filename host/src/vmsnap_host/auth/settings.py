"""The ``[auth]`` table of the host's configuration.

Example::

    [auth]
    required = true                    # default false; forced on off loopback

    [auth.jwt]                         # optional: bearer JWTs from an identity provider
    key_file = "/etc/vmsnap/jwks.json" # a JWKS document or one PEM public key
    algorithms = ["RS256", "ES256"]    # default: RS256, ES256, EdDSA (never "none" or HS*)
    issuer = "https://idp.example"     # optional; checked when set
    audience = "vmsnap"                # optional; checked when set
    role_claim = "vmsnap_role"         # for a subject that names no principal below
    projects_claim = "vmsnap_projects"

    [[auth.principals]]
    name = "cloud-controller"
    role = "admin"                     # viewer | operator | admin
    projects = ["*"]                   # "*" = every project
    token_sha256 = ["<hex sha256 of the token>"]   # static tokens, stored hashed
    certificates = ["CN=controller", "spiffe://example/controller"]  # mTLS identities

A static token is stored as its SHA-256 only: the configuration file does not
hold a secret. ``vmsnap auth hash-token`` prints the hash of a token file.
A JWT names a principal by its ``sub``: a principal of that name here gives its
role and projects; any other subject needs the role and projects claims.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmsnap_host.auth.principal import ALL, Principal, Role

_HASH = re.compile(r"^[0-9a-f]{64}$")
_PROJECT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: JWT algorithms allowed at most: asymmetric ones (a shared secret would sit in
#: the host's configuration), never "none".
ASYMMETRIC = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)


class AuthConfigError(ValueError):
    """The [auth] table is unusable; the message names the key."""


@dataclass(frozen=True)
class JwtSettings:
    key_file: Path
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")
    issuer: str | None = None
    audience: str | None = None
    role_claim: str = "vmsnap_role"
    projects_claim: str = "vmsnap_projects"


@dataclass(frozen=True)
class AuthSettings:
    required: bool = False
    principals: tuple[Principal, ...] = ()
    #: sha256 hex of a static token → the principal it authenticates.
    tokens: dict[str, Principal] = field(default_factory=dict)
    #: a client certificate identity ("CN=name" or a SAN value) → principal.
    certificates: dict[str, Principal] = field(default_factory=dict)
    jwt: JwtSettings | None = None

    def principal(self, name: str) -> Principal | None:
        return next((p for p in self.principals if p.name == name), None)

    @property
    def has_credentials(self) -> bool:
        return bool(self.tokens or self.certificates or self.jwt)


def project_name(where: str, value: object) -> str:
    if not isinstance(value, str) or not (value == ALL or _PROJECT.match(value)):
        raise AuthConfigError(
            f'{where}: {value!r} is not a project (1..128 chars of [A-Za-z0-9._-], or "*")'
        )
    return value


def _strings(where: str, value: object) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AuthConfigError(f"{where}: must be an array of strings")
    return list(value)


def _role(where: str, value: object) -> Role:
    try:
        return Role.parse(str(value))
    except KeyError:
        raise AuthConfigError(f"{where}: must be viewer, operator or admin") from None


def _jwt(data: object) -> JwtSettings | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise AuthConfigError("auth.jwt: must be a table")
    known = {"key_file", "algorithms", "issuer", "audience", "role_claim", "projects_claim"}
    unknown = set(data) - known
    if unknown:
        raise AuthConfigError(f"auth.jwt: unknown keys {sorted(unknown)}")
    key_file = data.get("key_file")
    if not isinstance(key_file, str) or not Path(key_file).is_file():
        raise AuthConfigError("auth.jwt.key_file: must name a readable JWKS or PEM file")
    algorithms = tuple(_strings("auth.jwt.algorithms", data.get("algorithms"))) or (
        "RS256",
        "ES256",
        "EdDSA",
    )
    bad = [a for a in algorithms if a not in ASYMMETRIC]
    if bad:
        raise AuthConfigError(
            f"auth.jwt.algorithms: {bad} not allowed (asymmetric only: {', '.join(ASYMMETRIC)})"
        )
    text = {k: data.get(k) for k in ("issuer", "audience", "role_claim", "projects_claim")}
    for key, value in text.items():
        if value is not None and not isinstance(value, str):
            raise AuthConfigError(f"auth.jwt.{key}: must be a string")
    return JwtSettings(
        key_file=Path(key_file),
        algorithms=algorithms,
        issuer=text["issuer"],
        audience=text["audience"],
        role_claim=text["role_claim"] or "vmsnap_role",
        projects_claim=text["projects_claim"] or "vmsnap_projects",
    )


def parse_auth(data: object) -> AuthSettings:
    if data is None:
        return AuthSettings()
    if not isinstance(data, dict):
        raise AuthConfigError("auth: must be a table")
    unknown = set(data) - {"required", "jwt", "principals"}
    if unknown:
        raise AuthConfigError(f"auth: unknown keys {sorted(unknown)} (required, jwt, principals)")
    required = data.get("required", False)
    if not isinstance(required, bool):
        raise AuthConfigError("auth.required: must be true or false")
    items: Any = data.get("principals") or []
    if not isinstance(items, list):
        raise AuthConfigError("auth.principals: must be an array of tables ([[auth.principals]])")
    principals: list[Principal] = []
    tokens: dict[str, Principal] = {}
    certificates: dict[str, Principal] = {}
    for i, item in enumerate(items):
        where = f"auth.principals[{i}]"
        if not isinstance(item, dict):
            raise AuthConfigError(f"{where}: must be a table")
        unknown = set(item) - {"name", "role", "projects", "token_sha256", "certificates"}
        if unknown:
            raise AuthConfigError(f"{where}: unknown keys {sorted(unknown)}")
        name = item.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 255:
            raise AuthConfigError(f"{where}.name: is required, 1..255 chars")
        if any(p.name == name for p in principals):
            raise AuthConfigError(f"{where}.name: {name!r} is listed twice")
        role = _role(f"{where}.role", item.get("role"))
        projects = frozenset(
            project_name(f"{where}.projects", p)
            for p in _strings(f"{where}.projects", item.get("projects"))
        )
        if role is not Role.ADMIN and not projects:
            raise AuthConfigError(f"{where}.projects: a {role.name.lower()} needs projects")
        principal = Principal(name, role, projects)
        principals.append(principal)
        for given in _strings(f"{where}.token_sha256", item.get("token_sha256")):
            digest = given.lower()
            if not _HASH.match(digest):
                raise AuthConfigError(
                    f"{where}.token_sha256: {digest[:8]}… is not a SHA-256 in hex (64 digits)"
                )
            if digest in tokens:
                raise AuthConfigError(f"{where}.token_sha256: a token is given to two principals")
            tokens[digest] = principal
        for identity in _strings(f"{where}.certificates", item.get("certificates")):
            if identity in certificates:
                raise AuthConfigError(
                    f"{where}.certificates: {identity!r} is given to two principals"
                )
            certificates[identity] = principal
    return AuthSettings(
        required=required,
        principals=tuple(principals),
        tokens=tokens,
        certificates=certificates,
        jwt=_jwt(data.get("jwt")),
    )


__all__ = ["AuthConfigError", "AuthSettings", "JwtSettings", "parse_auth", "project_name"]
