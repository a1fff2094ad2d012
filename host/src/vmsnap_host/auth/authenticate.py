"""Credentials → principal: a bearer token (static or JWT) or a client certificate.

A call's ``authorization`` metadata ``Bearer <token>`` is checked first: a token
with two dots is a JWT (verified with PyJWT against the configured keys:
signature, ``exp`` required, ``nbf``, issuer and audience when configured);
any other is a static token, looked up by its SHA-256 (the configuration holds
only hashes; the lookup of a hash in a dict leaks nothing usable about the
token). Without a token, a verified client certificate (mutual TLS; gRPC has
checked it against the client CA) names a principal by its subject CN
(``CN=name``) or a subject alternative name. Refusals say what was wrong,
never the token.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from vmsnap_host.auth.principal import Principal, Role
from vmsnap_host.auth.settings import AuthSettings, JwtSettings, project_name
from vmsnap_sdk.errors import Unauthenticated

#: Longest token accepted (a JWT with a large claim set stays far below).
MAX_TOKEN = 8192
#: Clock skew allowed on exp / nbf / iat.
LEEWAY_SECONDS = 30


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load_jwt_keys(settings: JwtSettings) -> list[Any]:
    """The verification keys of a JWKS document or a PEM public key file."""
    # PyJWT and cryptography only for a host that trusts JWTs: importing them costs
    # every host and `vmsnap` start ~0.1 s, and most run without.
    import jwt

    text = settings.key_file.read_text()
    if text.lstrip().startswith("{"):
        document = json.loads(text)
        keys = jwt.PyJWKSet.from_dict(document).keys
        return [k.key for k in keys]
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    return [load_pem_public_key(text.encode())]


class Authenticator:
    """Turns a call's credentials into a principal (or refuses)."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self._jwt_keys = load_jwt_keys(settings.jwt) if settings.jwt else []

    def authenticate(self, metadata: Mapping[str, str], certificate: Sequence[str]) -> Principal:
        """``metadata``: the call's metadata; ``certificate``: the verified client
        certificate's identities ("CN=..." and SAN values), empty without one."""
        header = metadata.get("authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise Unauthenticated("the authorization metadata must be 'Bearer <token>'")
            if len(token) > MAX_TOKEN:
                raise Unauthenticated(f"the bearer token is longer than {MAX_TOKEN} chars")
            if token.count(".") == 2 and self.settings.jwt is not None:
                return self._jwt(token, self.settings.jwt)
            principal = self.settings.tokens.get(token_sha256(token))
            if principal is None:
                raise Unauthenticated(
                    "the bearer token is not valid (unknown, or revoked); ask the host's "
                    "operator for a token"
                )
            return principal
        for identity in certificate:
            principal = self.settings.certificates.get(identity)
            if principal is not None:
                return Principal(principal.name, principal.role, principal.projects, via="mtls")
        if certificate:
            raise Unauthenticated(
                f"the client certificate ({certificate[0][:100]}) names no principal of this "
                "host ([[auth.principals]] certificates)"
            )
        raise Unauthenticated(
            "this host requires authentication: send 'authorization: Bearer <token>' "
            "(vmsnap --token-file FILE, or $VMSNAP_TOKEN_FILE) or a client certificate"
        )

    def _jwt(self, token: str, settings: JwtSettings) -> Principal:
        import jwt  # loaded with the keys (load_jwt_keys)

        claims: dict[str, Any] | None = None
        for key in self._jwt_keys:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=list(settings.algorithms),
                    issuer=settings.issuer,
                    audience=settings.audience,
                    leeway=LEEWAY_SECONDS,
                    options={
                        "require": ["exp", "sub"],
                        "verify_aud": settings.audience is not None,
                    },
                )
                break
            except jwt.InvalidSignatureError:
                continue  # another key of the set may have signed it
            except jwt.ExpiredSignatureError:
                raise Unauthenticated("the JWT has expired; get a new one") from None
            except jwt.InvalidTokenError as exc:
                raise Unauthenticated(f"the JWT is not valid: {_why(exc)}") from None
        if claims is None:
            raise Unauthenticated("the JWT is not signed by a key this host trusts")
        subject = str(claims["sub"])[:255]
        named = self.settings.principal(subject)
        if named is not None:
            return Principal(named.name, named.role, named.projects, via="jwt")
        try:
            role = Role.parse(str(claims.get(settings.role_claim, "")))
        except KeyError:
            raise Unauthenticated(
                f"the JWT's subject names no principal and its {settings.role_claim!r} claim "
                "is not viewer, operator or admin"
            ) from None
        raw = claims.get(settings.projects_claim, [])
        if not isinstance(raw, list):
            raise Unauthenticated(f"the JWT's {settings.projects_claim!r} claim must be a list")
        try:
            projects = frozenset(project_name(settings.projects_claim, p) for p in raw[:1000])
        except ValueError as exc:
            raise Unauthenticated(f"the JWT's projects are not valid: {exc}") from None
        return Principal(subject, role, projects, via="jwt")


def _why(exc: Exception) -> str:
    # PyJWT's messages name the claim at fault and never hold the token.
    return str(exc)[:200] or type(exc).__name__


__all__ = ["Authenticator", "load_jwt_keys", "token_sha256"]
