"""Who may call AdminService: the one check every admin RPC goes through.

`AdminGuard` is a server interceptor: it wraps the handler of every method
under `/fedgrpc.v1.AdminService/`, whatever registered it, so an admin RPC
added later (say, resetting the divergence guard) cannot forget the check.
Health and CoordinatorService pass through untouched (one string compare per
call, no wrapping).

A caller is admitted by `AdminPolicy.refusal` returning None:

- an admin token (`admin_token_file`) sent as `authorization: Bearer <token>`
  metadata, compared in constant time;
- under mutual TLS, a verified client certificate with the SAN URI
  `urn:fedgrpc:admin` (`fedgrpc certs --admin`). A SAN URI rather than an
  OU=admin: enterprise CAs already issue OUs by department, and an "admin"
  department must not become fedgrpc administrators by accident;
- with `admin_access = "loopback"`, a caller on a loopback address (same
  host: it could read the coordinator's logs too);
- with `admin_access = "open"`, anyone.

Refusals say what credential to bring, never a server-side path, and the
token is never logged.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from cryptography import x509

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.ops.metrics import count_rejection
from fedgrpc.crypto.admin_token import BEARER, METADATA_KEY, read_admin_token
from fedgrpc.crypto.certs import ADMIN_URI
from fedgrpc.log import get_logger

log = get_logger(__name__)
ADMIN_METHOD_PREFIX = "/fedgrpc.v1.AdminService/"
_HOW = (
    "send the coordinator's admin token as `authorization: Bearer <token>` "
    "metadata (`fedgrpc status --admin-token-file FILE`), or connect with a "
    "client certificate that has the admin role (`fedgrpc certs --admin`)"
)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a caller may not use AdminService, as the caller reads it."""

    code: grpc.StatusCode
    message: str


@dataclass(frozen=True, slots=True)
class AdminPolicy:
    """The resolved `admin_access` setting and the admin token, if any."""

    mode: str
    """credential, loopback or open (`AccessSettings.admin_mode`)."""
    token: bytes | None = field(default=None, repr=False)
    certificates: bool = False
    """Honour the admin role in client certificates (mutual TLS is on)."""

    @classmethod
    def from_config(cls, config: CoordinatorConfig) -> AdminPolicy:
        """The policy `config` asks for; reads `admin_token_file`.

        Raises:
            ConfigError: the token file is unusable (named, at startup).
        """
        token = None
        if config.admin_token_file:
            token = read_admin_token(config.admin_token_file, "admin_token_file")
        policy = cls(config.admin_mode, token, bool(config.tls_client_ca))
        if policy.mode == "open":
            log.warning("admin_access_open", detail="anyone who can connect reads "
                        "client ids, names, key fingerprints and losses")  # fmt: skip
        elif token is not None and not config.tls_cert:
            log.warning("admin_token_plaintext", detail="the admin token crosses "
                        "the network in clear without tls_cert")  # fmt: skip
        return policy

    def refusal(
        self,
        metadata: Iterable[tuple[str, str | bytes]],
        peer: str,
        auth_context: Mapping[str, Iterable[bytes]],
    ) -> Refusal | None:
        """None if this caller may use AdminService, else why not."""
        if self.mode == "open":
            return None
        sent = [v for k, v in metadata if k.lower() == METADATA_KEY]
        if sent:
            return self._check_token(sent[0])
        if self.certificates and _has_admin_role(auth_context):
            return None
        if self.mode == "loopback" and is_loopback(peer):
            return None
        if self.certificates and list(auth_context.get("x509_pem_cert", ())):
            return Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                "AdminService needs an admin credential: this client certificate "
                f"has no admin role (SAN URI {ADMIN_URI}); " + _HOW,
            )
        where = " from a non-loopback address" if self.mode == "loopback" else ""
        return Refusal(
            grpc.StatusCode.UNAUTHENTICATED,
            f"AdminService needs an admin credential{where}: " + _HOW,
        )

    def _check_token(self, value: str | bytes) -> Refusal | None:
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        given = text[len(BEARER) :].strip() if text.startswith(BEARER) else ""
        if self.token is not None and hmac.compare_digest(
            given.encode("latin-1", "replace"), self.token
        ):
            return None
        reason = (
            "this coordinator has no admin token configured"
            if self.token is None
            else "the admin token does not match"
        )
        return Refusal(
            grpc.StatusCode.UNAUTHENTICATED,
            f"AdminService refused the `authorization` metadata: {reason}; " + _HOW,
        )


def is_loopback(peer: str) -> bool:
    """True if a gRPC peer string (`ipv4:127.0.0.1:5`, `ipv6:[::1]:5`) is local.

    Unix-domain sockets count as local too; anything unparsable does not.
    """
    kind, _, rest = peer.partition(":")
    if kind == "unix":
        return True
    host = rest.rsplit(":", 1)[0].strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _has_admin_role(auth_context: Mapping[str, Iterable[bytes]]) -> bool:
    """The verified peer certificate carries the SAN URI `ADMIN_URI`."""
    for pem in auth_context.get("x509_pem_cert", ()):
        try:
            cert = x509.load_pem_x509_certificate(pem)
            names = cert.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value.get_values_for_type(x509.UniformResourceIdentifier)
        except (ValueError, x509.ExtensionNotFound):
            continue
        if ADMIN_URI in names:
            return True
    return False


Behavior = Callable[..., Any]


class AdminGuard(grpc.aio.ServerInterceptor):
    """Checks `AdminPolicy` before any AdminService handler runs."""

    def __init__(self, policy: AdminPolicy) -> None:
        self.policy = policy

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """The handler itself, or for admin methods a guarded copy of it."""
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not method.startswith(ADMIN_METHOD_PREFIX):
            return handler
        if self.policy.mode == "open":
            return handler
        return _guarded(handler, self.policy, method)


def _guarded(
    handler: grpc.RpcMethodHandler[Any, Any], policy: AdminPolicy, method: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` with the policy checked first, for each of the four call shapes."""

    async def check(context: grpc.aio.ServicerContext[Any, Any]) -> None:
        refusal = policy.refusal(
            context.invocation_metadata() or (),
            context.peer(),
            context.auth_context(),
        )
        if refusal is None:
            return
        count_rejection(refusal.code.name)
        log.warning("admin_refused", method=method, peer=context.peer(),
                    code=refusal.code.name)  # fmt: skip
        await context.abort(refusal.code, refusal.message)

    def unary(behavior: Behavior) -> Behavior:
        async def call(request: Any, context: Any) -> Any:
            await check(context)
            return await behavior(request, context)

        return call

    def streaming(behavior: Behavior) -> Behavior:
        async def call(request: Any, context: Any) -> AsyncIterator[Any]:
            await check(context)
            async for item in behavior(request, context):
                yield item

        return call

    replaced: dict[str, Behavior] = {}
    shapes = (("unary_unary", unary), ("stream_unary", unary),
              ("unary_stream", streaming), ("stream_stream", streaming))  # fmt: skip
    for name, wrap in shapes:
        behavior = getattr(handler, name)
        if behavior is not None:
            replaced[name] = wrap(behavior)
    return handler._replace(**replaced)  # type: ignore[attr-defined,no-any-return]
