"""NATS JetStream sink (nats-py).

Every event is published to a subject from the ``subject`` template (default
``{prefix}.{schema}.{table}``; logical messages: ``message_subject``, default
``{prefix}.messages``; a TRUNCATE to the subject of each table it truncated)
with the headers

- ``Nats-Msg-Id``: the event id ``<commit_lsn>/<seq>`` (for a TRUNCATE sent
  to several subjects: ``<id>@<schema.table>`` per copy). JetStream drops a
  message whose id it has seen within the stream's duplicate window, so a
  batch the pipeline retries -- after a lost connection, a timeout, a
  restart of the broker or of walrelay -- is stored once;
- ``Walrelay-Op`` and ``Walrelay-Table``.

The payload is the JSON envelope. Publishes of a batch are pipelined
(``publish_async``) and ``deliver`` returns once JetStream acknowledged every
one of them (stored, and replicated per the stream's settings); a message the
stream dropped as a duplicate counts as delivered. Publishes carry the
expected stream (``Nats-Expected-Stream``), so a subject captured by another
stream is an error rather than a silent misdelivery.

The duplicate window bounds the guarantee: a replay arriving later than
``duplicate_window`` after the original (walrelay down for longer than that,
then restarted from an old confirmed LSN) would be stored again. The
auto-created stream uses a 2 minute window; raise ``duplicate_window`` if
outages can be longer.

Batches go in parallel (``ordered = False``): dedup by id does not depend on
order, and the scheduler never has two events of one key in flight.

With ``auto_create`` (default) the stream is created if missing, capturing
the subjects the templates can produce (``walrelay.*.*`` and
``walrelay.messages`` with the defaults, or ``stream_subjects``); an existing
stream is left as it is. At start the sink checks that the stream exists and
captures the subject of every configured table, and fails with a
:class:`~walrelay.errors.ConfigError` naming the subject and the fix if not.

Routed events (``event.route``, set by the outbox event router,
:mod:`walrelay.pipeline.outbox_router`) are published as routed instead: to the
subject ``route.topic`` (the subject template is not used), with the payload
``route.value`` as the body and the headers ``Nats-Msg-Id`` (the event id),
``Walrelay-Op``, ``Walrelay-Table``, ``walrelay-key`` (``route.key``, absent
when None) and the route's own headers (a route header named like one of
these is left out). A tombstone (``route.value`` None) is an empty body with
the header ``walrelay-tombstone: true``.

Routed subjects are not known when the stream is created or checked (they
come from the data), and the sink adds no catch-all wildcard to an
auto-created stream: a wildcard broad enough for any routed subject would
capture other streams' subjects too. Instead, the first time a batch holds a
routed subject the sink asks JetStream which stream captures it (the answer
is cached); if it is not :attr:`NatsSink.stream`, the batch fails with a
*permanent* :class:`~walrelay.errors.SinkError` naming the subject and the
fix: add the routed subjects (e.g. ``order.events`` or ``*.events``) to
``stream_subjects`` before the stream is created, or to the existing stream
(``nats stream edit <stream> --subjects ...``), or change the router's
``topic`` so that it falls under the stream's subjects (e.g.
``walrelay.{routed_by}.events`` under the default ``walrelay.*.*``). The
failed events are parked (``parking``) and delivered once the stream captures
their subject. Without this check a publish to a subject no stream captures
would go unanswered and be retried forever as an outage.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

import orjson

from walrelay import failpoints
from walrelay.config import env_secret
from walrelay.errors import ConfigError, PoisonEvent, SinkError, SinkUnavailable
from walrelay.model import Event
from walrelay.sinks.base import SinkContext
from walrelay.sinks.common import batch_error, clean_subject_token, import_extra
from walrelay.sinks.templates import NameTemplate, Naming

if TYPE_CHECKING:
    import ssl

    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

    from walrelay.config import NatsSinkConfig

__all__ = ["NatsSink", "stream_subjects"]

log = logging.getLogger("walrelay.sinks.nats")

_BAD_SUBJECT = frozenset(" \t\r\n*>")
_BAD_HEADER = frozenset(" \t\r\n:")
_EXPECTED_STREAM_MISMATCH = 10060
_EXPECTED_STREAM = "Nats-Expected-Stream"  # nats.js.api.Header.EXPECTED_STREAM
_NO_RESPONDERS = "503"  # the Status header of a publish no stream captured
_ROUTED_CACHE = 10_000  # routed subjects known to be captured by the stream, at most


def stream_subjects(*templates: NameTemplate) -> list[str]:
    """Subjects capturing everything the templates can render: each token holding a
    field becomes ``*`` (``{prefix}.{schema}.{table}`` -> ``walrelay.*.*``)."""
    marker = "\x00"
    out: list[str] = []
    for template in templates:
        rendered = template.render(schema=marker, table=marker, op=marker)
        subject = ".".join("*" if marker in tok else tok for tok in rendered.split("."))
        if subject not in out:
            out.append(subject)
    return out


def _connect_options(cfg: NatsSinkConfig) -> dict[str, Any]:
    """nats.connect() options: credentials (secrets read from the environment), TLS."""
    options: dict[str, Any] = {}
    if cfg.user:
        options["user"] = cfg.user
        options["password"] = env_secret(cfg.password_env, "nats password")
    if cfg.token_env:
        options["token"] = env_secret(cfg.token_env, "nats token")
    if cfg.creds_file:
        options["user_credentials"] = cfg.creds_file
    if cfg.tls is not None:
        tls: ssl.SSLContext = cfg.tls.ssl_context()
        options["tls"] = tls
    return options


class NatsSink:
    """Publishes events to a JetStream stream; see the module docstring."""

    ordered = False
    # JetStream drops a replayed Nats-Msg-Id (within the duplicate window).
    transactional = True

    def __init__(self, config: NatsSinkConfig, context: SinkContext | None = None) -> None:
        self._nats = import_extra("nats", "nats-py", "nats", "nats.js.errors")
        context = context or SinkContext()
        if config.timeout <= 0 or config.duplicate_window <= 0:
            raise ConfigError(
                "nats sink: timeout and duplicate_window must be > 0",
                fix="set timeout to e.g. 10 and duplicate_window to e.g. 120",
            )
        self.servers = list(config.servers)
        self.naming = Naming(
            config.subject,
            config.message_subject,
            prefix=config.prefix,
            setting="nats subject",
            message_setting="nats message_subject",
            clean=clean_subject_token,
        )
        self.stream = config.stream
        self.auto_create = config.auto_create
        self.subjects = (
            list(config.stream_subjects)
            if config.stream_subjects
            else stream_subjects(self.naming.table_template, self.naming.message_template)
        )
        self.duplicate_window = config.duplicate_window
        self.tables = context.tables
        self.timeout = config.timeout
        self.batch_size = config.batch_size
        self._connect_options = _connect_options(config)
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._acks: _Acks | None = None
        self._routed_ok: set[str] = set()  # routed subjects the stream captures
        self.duplicates = 0  # publishes JetStream dropped as already stored

    @classmethod
    def from_config(cls, config: NatsSinkConfig, context: SinkContext) -> NatsSink:
        return cls(config, context)

    def __repr__(self) -> str:
        return f"NatsSink({self.servers!r}, stream={self.stream!r})"

    # -- lifecycle ---------------------------------------------------------------

    async def open(self) -> None:
        if self._nc is not None:
            return
        nats = self._nats
        where = ", ".join(self.servers)

        async def on_error(exc: Exception) -> None:
            log.debug("nats sink %s: %s: %s", where, type(exc).__name__, exc)

        async def on_disconnect() -> None:
            if self._nc is not None:  # not our own close()
                log.warning("nats sink %s: disconnected; reconnecting", where)

        async def on_reconnect() -> None:
            log.info("nats sink %s: reconnected", where)

        try:
            nc = await asyncio.wait_for(
                nats.connect(
                    self.servers,
                    name="walrelay",
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    connect_timeout=max(1, round(self.timeout)),
                    error_cb=on_error,
                    disconnected_cb=on_disconnect,
                    reconnected_cb=on_reconnect,
                    **self._connect_options,
                ),
                timeout=self.timeout * 2,
            )
        except nats.errors.AuthorizationError as exc:
            raise ConfigError(
                f"nats sink: {where} refused the credentials: {exc}",
                fix="check the credentials (user/password, token, creds file) in the config",
            ) from None
        except (TimeoutError, OSError, nats.errors.NoServersError) as exc:
            raise SinkUnavailable(
                f"nats sink: cannot connect to {where}: {type(exc).__name__}: {exc}"
            ) from None
        except nats.errors.Error as exc:
            raise ConfigError(
                f"nats sink: cannot connect to {where}: {type(exc).__name__}: {exc}",
                fix="check servers, the credentials and TLS settings, and that nats-server runs",
            ) from None
        try:
            js = nc.jetstream(timeout=self.timeout)
            await self._check_stream(js)
            acks = _Acks(nc.new_inbox(), self._nats.js.errors)
            # nats-py subscribes again after a reconnect.
            await nc.subscribe(acks.prefix + "*", cb=acks.on_ack)
        except BaseException:
            await nc.close()
            raise
        self._nc, self._js, self._acks = nc, js, acks

    async def close(self) -> None:
        nc, self._nc, self._js, self._acks = self._nc, None, None, None
        if nc is not None:
            try:
                await nc.close()
            except Exception as exc:  # closing must not hide why we stopped
                log.debug("nats sink: error while closing: %s", exc)

    async def _check_stream(self, js: JetStreamContext) -> None:
        errors = self._nats.js.errors
        try:
            await js.stream_info(self.stream)
        except errors.NotFoundError:
            if not self.auto_create:
                raise ConfigError(
                    f"nats sink: JetStream stream {self.stream} does not exist and auto_create "
                    "is off",
                    fix=f"create it (nats stream add {self.stream} --subjects "
                    f"'{self.subjects[0]}' ...) or set auto_create: true",
                ) from None
            try:
                await js.add_stream(
                    name=self.stream,
                    subjects=self.subjects,
                    storage="file",
                    duplicate_window=self.duplicate_window,
                )
            except errors.APIError as exc:
                raise ConfigError(
                    f"nats sink: cannot create stream {self.stream} for subjects "
                    f"{', '.join(self.subjects)}: {exc}",
                    fix="create the stream yourself, or set stream_subjects so that they do "
                    "not overlap another stream",
                ) from None
            log.info(
                "nats sink: created stream %s for %s (duplicate window %gs)",
                self.stream,
                ", ".join(self.subjects),
                self.duplicate_window,
            )
        except errors.Error as exc:
            raise ConfigError(
                f"nats sink: cannot read stream {self.stream}: {exc}",
                fix="check that JetStream is enabled (nats-server -js) and the account's "
                "permissions",
            ) from None
        for subject, table in self.naming.table_names(self.tables).items():
            try:
                owner = await js.find_stream_name_by_subject(subject)
            except errors.NotFoundError:
                owner = None
            if owner != self.stream:
                holder = f"stream {owner}" if owner else "no stream"
                raise ConfigError(
                    f"nats sink: subject {subject} (table {table}) is captured by {holder}, "
                    f"not by {self.stream}",
                    fix=f"add {subject} to the subjects of stream {self.stream}, or change "
                    "the subject template",
                )

    # -- delivery ------------------------------------------------------------------

    async def deliver(self, events: Sequence[Event]) -> None:
        nc, js, acks = self._nc, self._js, self._acks
        if nc is None or js is None or acks is None:
            raise SinkError("nats sink: deliver() before open() or after close()")
        routed = await self._check_routed(js, events)
        batch = acks.batch()
        try:
            await self._publish(nc, batch, events, routed)
            if not batch.sent:
                return
            try:
                async with asyncio.timeout(self.timeout):
                    await batch.answered
            except TimeoutError:
                raise SinkUnavailable(
                    f"nats sink: {batch.unanswered} of {len(batch.sent)} publishes not "
                    f"acknowledged within {self.timeout:g} s (server unreachable?); the batch "
                    "is retried, JetStream drops what it already stored"
                ) from None
        finally:
            batch.forget()  # a failed or cancelled batch leaves no reply subject waiting
        failpoints.hit(failpoints.NATS_AFTER_ACK)
        self._settle(batch)

    async def _publish(
        self,
        nc: Client,
        batch: _Batch,
        events: Sequence[Event],
        routed: dict[str, dict[str, str]],
    ) -> None:
        """Publish every event of the batch, each with its own reply subject."""
        nats = self._nats
        names = self.naming.names
        stream = self.stream
        reply = batch.reply
        publish = nc.publish
        event: Event | None = None
        try:
            for event in events:
                route = event.route
                if route is not None:  # set by the outbox router: as routed
                    headers = routed[event.id]
                    headers[_EXPECTED_STREAM] = stream
                    await publish(
                        route.topic,
                        b"" if route.value is None else route.value,
                        reply=reply(event.id, route.topic),
                        headers=headers,
                    )
                    continue
                targets = names(event)
                for subject, table in targets:
                    msg_id = event.id if len(targets) == 1 else f"{event.id}@{table}"
                    headers = {
                        "Nats-Msg-Id": msg_id,
                        "Walrelay-Op": event.op,
                        "Walrelay-Table": table,
                        _EXPECTED_STREAM: stream,
                    }
                    # nc.publish only buffers: nats-py's flusher writes what a
                    # batch buffered in one go.
                    await publish(
                        subject, event.body, reply=reply(msg_id, subject), headers=headers
                    )
        except nats.errors.MaxPayloadError as exc:
            raise PoisonEvent(
                f"nats sink: event {event.id if event else '?'} is larger than the "
                f"server's max_payload ({exc}); raise max_payload or filter the column out"
            ) from None
        except (nats.errors.Error, OSError) as exc:
            raise SinkUnavailable(
                f"nats sink: publish failed: {type(exc).__name__}: {exc}"
            ) from None

    def _settle(self, batch: _Batch) -> None:
        """Count the duplicates among the acknowledged publishes; raise for the failed ones."""
        failures: list[SinkError] = []
        duplicates = 0
        for (msg_id, subject), outcome in zip(batch.sent, batch.outcomes, strict=True):
            if outcome is True:
                duplicates += 1
            elif isinstance(outcome, BaseException):
                failures.append(self._classify(outcome, msg_id, subject))
        if duplicates:
            self.duplicates += duplicates
            log.debug("nats sink: %d publish(es) were duplicates JetStream dropped", duplicates)
        if failures:
            raise batch_error(failures, len(batch.sent), "publishes")

    async def _check_routed(
        self, js: JetStreamContext, events: Sequence[Event]
    ) -> dict[str, dict[str, str]]:
        """The headers of each routed event (by id), after checking that NATS can carry
        them and that the stream captures every routed subject (module docstring):
        a publish to a subject no stream captures would go unanswered."""
        out: dict[str, dict[str, str]] = {}
        known = self._routed_ok
        subjects: dict[str, Event] = {}
        for event in events:
            route = event.route
            if route is None:
                continue
            headers = _routed_headers(event)
            for name, value in headers.items():
                if (
                    not name
                    or any(c in _BAD_HEADER for c in name)
                    or "\r" in value
                    or ("\n" in value)
                ):
                    raise PoisonEvent(
                        f"nats sink: event {event.id}: header {name!r} cannot be carried by "
                        "NATS (a line break, or ':' or a space in the name); fix the outbox "
                        "row or the router's headers"
                    )
            out[event.id] = headers
            if route.topic not in known:
                subjects.setdefault(route.topic, event)
        errors = self._nats.js.errors
        for subject, event in subjects.items():
            if any(not t or any(c in _BAD_SUBJECT for c in t) for t in subject.split(".")):
                raise PoisonEvent(
                    f"nats sink: event {event.id} is routed to {subject!r}, which is not a "
                    "valid NATS subject (an empty token, a space, '*' or '>'); fix the "
                    "router's topic or the routing column's value"
                )
            try:
                owner: str | None = await js.find_stream_name_by_subject(subject)
            except errors.NotFoundError:
                owner = None
            except (self._nats.errors.Error, OSError) as exc:
                raise SinkUnavailable(
                    f"nats sink: cannot look up the stream of routed subject {subject}: "
                    f"{type(exc).__name__}: {exc}"
                ) from None
            if owner != self.stream:
                holder = f"stream {owner}" if owner else "no stream"
                raise SinkError(
                    f"nats sink: routed subject {subject} (event {event.id}) is captured by "
                    f"{holder}, not by {self.stream} -- fix: add {subject} (or a wildcard "
                    f"covering it) to stream_subjects / the subjects of stream {self.stream} "
                    "(nats stream edit), or change the router's topic to fall under them "
                    f"({', '.join(self.subjects)})",
                    permanent=True,
                )
            if len(known) >= _ROUTED_CACHE:
                known.clear()
            known.add(subject)
        return out

    def _classify(self, exc: BaseException, msg_id: str, subject: str) -> SinkError:
        errors = self._nats.js.errors
        what = f"nats sink: publish of {msg_id} to {subject}"
        if isinstance(exc, errors.NoStreamResponseError):
            return SinkError(
                f"{what}: no stream captures the subject -- fix: add it to stream "
                f"{self.stream}'s subjects or change the subject template",
                permanent=True,
            )
        if isinstance(exc, errors.ServiceUnavailableError):
            return SinkUnavailable(f"{what}: JetStream unavailable")
        if isinstance(exc, errors.APIError):
            if exc.err_code == _EXPECTED_STREAM_MISMATCH:
                return SinkError(
                    f"{what}: the subject belongs to another stream than {self.stream} -- fix: "
                    "change the subject template or the streams' subjects",
                    permanent=True,
                )
            return SinkError(f"{what}: {exc}", permanent=False)
        if isinstance(exc, asyncio.CancelledError):
            return SinkUnavailable(f"{what}: cancelled (connection lost)")
        return SinkUnavailable(f"{what}: {type(exc).__name__}: {exc}")


def _routed_headers(event: Event) -> dict[str, str]:
    """The headers of a routed event (module docstring); the sink's own win."""
    route = event.route
    assert route is not None
    headers = dict(route.headers)
    headers["Nats-Msg-Id"] = event.id
    headers["Walrelay-Op"] = event.op
    headers["Walrelay-Table"] = event.table
    if route.key is not None:
        headers["walrelay-key"] = route.key
    else:
        headers.pop("walrelay-key", None)
    if route.value is None:
        headers["walrelay-tombstone"] = "true"
    else:
        headers.pop("walrelay-tombstone", None)
    return headers


class _Acks:
    """The JetStream acknowledgements of the sink's publishes, all answered to
    one inbox subscription (``<inbox>.<n>``, a number per publish), as nats-py's
    ``publish_async`` does, without its future, semaphore and ``PubAck`` per
    message (a third of the sink's CPU)."""

    def __init__(self, inbox: str, errors: ModuleType) -> None:
        self.prefix = inbox + "."
        self._errors = errors
        self._waiting: dict[str, tuple[_Batch, int]] = {}
        self._next = 0

    def batch(self) -> _Batch:
        return _Batch(self)

    def expect(self, batch: _Batch, index: int) -> str:
        """A new token (the reply subject is ``prefix + token``) for publish
        ``index`` of ``batch``."""
        self._next += 1
        token = str(self._next)
        self._waiting[token] = (batch, index)
        return token

    def forget(self, tokens: list[str]) -> None:
        for token in tokens:
            self._waiting.pop(token, None)

    async def on_ack(self, msg: Msg) -> None:
        entry = self._waiting.pop(msg.subject[len(self.prefix) :], None)
        if entry is not None:  # else: its batch timed out and is retried
            batch, index = entry
            batch.answer(index, self._outcome(msg))

    def _outcome(self, msg: Msg) -> bool | BaseException:
        """True: stored before (a duplicate), False: stored, or the error."""
        headers = msg.headers
        error: BaseException
        if headers and headers.get("Status") == _NO_RESPONDERS:
            error = self._errors.NoStreamResponseError()
            return error
        try:
            answer = orjson.loads(msg.data)
        except orjson.JSONDecodeError as exc:
            return exc
        if not isinstance(answer, dict):
            return ValueError(f"unexpected acknowledgement {msg.data[:200]!r}")
        if "error" in answer:
            try:  # nats-py raises the error it makes from the answer
                made = self._errors.APIError.from_error(answer["error"])
            except Exception as exc:
                return exc
            return made if isinstance(made, BaseException) else ValueError(str(answer))
        return answer.get("duplicate") is True


class _Batch:
    """The publishes of one ``deliver``: what was sent, and their outcomes as
    they are acknowledged (None: not yet); ``answered`` completes with the last."""

    def __init__(self, acks: _Acks) -> None:
        self._acks = acks
        self.sent: list[tuple[str, str]] = []  # (Nats-Msg-Id, subject)
        self.outcomes: list[bool | BaseException | None] = []
        self._tokens: list[str] = []
        self._left = 0
        self.answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def reply(self, msg_id: str, subject: str) -> str:
        """The reply subject for the next publish (``msg_id`` to ``subject``)."""
        token = self._acks.expect(self, len(self.sent))
        self._tokens.append(token)
        self.sent.append((msg_id, subject))
        self.outcomes.append(None)
        self._left += 1
        return self._acks.prefix + token

    def answer(self, index: int, outcome: bool | BaseException) -> None:
        if self.outcomes[index] is None:
            self._left -= 1
        self.outcomes[index] = outcome
        if not self._left and not self.answered.done():
            self.answered.set_result(None)

    @property
    def unanswered(self) -> int:
        return self._left

    def forget(self) -> None:
        """Stop waiting for the answers still due (the batch is over)."""
        if self._left:
            self._acks.forget(self._tokens)
