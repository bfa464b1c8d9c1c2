"""TLS and authentication for real: a PostgreSQL cluster with a certificate from a
CA made by the test and SCRAM passwords; a webhook receiver that asks for a
client certificate; walrelay's own HTTP server on https."""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psycopg
import pytest
import trustme
from aiohttp import web
from psycopg import sql

from tests.integration.support import execute, make_config, read_jsonl, running_engine, wait_for
from walrelay.config import WebhookSinkConfig
from walrelay.errors import SinkError
from walrelay.model import Event
from walrelay.sinks.webhook import WebhookSink
from walrelay.testing.pgcluster import PgCluster, start_cluster

PASSWORD = "Tls-Scram pw'9"  # a space and a quote: quoted in the DSN below
USER = "relay"


@dataclass
class TlsPg:
    cluster: PgCluster
    ca_file: Path

    def dsn(self, host: str = "localhost", password: str = PASSWORD, **extra: str) -> str:
        quoted = password.replace("\\", "\\\\").replace("'", "\\'")
        params = " ".join(f"{k}={v}" for k, v in extra.items())
        return (
            f"host={host} port={self.cluster.port} dbname=tls user={USER} password='{quoted}'"
            f" sslmode=verify-full sslrootcert={self.ca_file} connect_timeout=5 {params}"
        ).strip()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_pg(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsPg]:
    """A cluster that lets ``relay`` in only over TLS, with a SCRAM password."""
    cluster = start_cluster({"password_encryption": "'scram-sha-256'"})
    try:
        cert = ca.issue_cert("localhost")  # the name only: 127.0.0.1 is a wrong host name
        data = cluster.datadir
        cert.cert_chain_pems[0].write_to_path(str(data / "server.crt"))
        cert.private_key_pem.write_to_path(str(data / "server.key"))
        (data / "server.key").chmod(0o600)
        with open(data / "pg_hba.conf", "w") as f:
            f.write(
                f"hostnossl all {USER} 0.0.0.0/0 reject\n"
                f"hostssl all {USER} 127.0.0.1/32 scram-sha-256\n"
                f"hostssl replication {USER} 127.0.0.1/32 scram-sha-256\n"
                "local all all trust\nhost all postgres 127.0.0.1/32 trust\n"
            )
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            for name in ("server.crt", "server.key", "pg_hba.conf"):
                os.chown(data / name, pw.pw_uid, pw.pw_gid)
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("create role {} login superuser replication password {}").format(
                    sql.Identifier(USER), sql.Literal(PASSWORD)
                )
            )
            conn.execute(f"create database tls owner {USER}")
        cluster.restart(
            {"ssl": "on", "ssl_cert_file": "'server.crt'", "ssl_key_file": "'server.key'"}
        )
        ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        yield TlsPg(cluster, ca_file)
    finally:
        cluster.stop()


def run_walrelay(config_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "walrelay",
            "run",
            "--config",
            str(config_path),
            "--log-level",
            "debug",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("PG")},
    )


def write_yaml(path: Path, dsn: str, out: Path) -> Path:
    import yaml

    config = {
        "source": {"dsn": dsn, "tables": ["public.t"]},
        "destinations": [{"name": "f", "sink": {"type": "file", "path": str(out)}}],
        "http": {"enabled": False},
    }
    path.write_text(yaml.safe_dump(config))
    return path


async def test_verify_full_with_scram_streams_and_serves_https(
    tls_pg: TlsPg, tmp_path: Path, caplog: pytest.LogCaptureFixture, ca: trustme.CA
) -> None:
    dsn = tls_pg.dsn()
    execute(dsn, "create table if not exists t (id int primary key, v text)")
    out = tmp_path / "events.jsonl"
    server_cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "http.crt", tmp_path / "http.key"
    server_cert.cert_chain_pems[0].write_to_path(str(cert_file))
    server_cert.private_key_pem.write_to_path(str(key_file))
    config = make_config(
        dsn, ["public.t"], [{"name": "f", "sink": {"type": "file", "path": str(out)}}]
    )
    http = config.http.model_copy(
        update={"port": 0, "tls_cert_file": str(cert_file), "tls_key_file": str(key_file)}
    )
    config = config.model_copy(update={"http": http})
    with caplog.at_level(logging.DEBUG):
        async with running_engine(config) as engine:
            execute(dsn, "insert into t values (1, 'over tls')")
            await wait_for(lambda: out.exists() and len(read_jsonl(out)) == 1, what="the insert")
            with psycopg.connect(dsn) as conn:
                row = conn.execute(
                    "select count(*), bool_and(s.ssl) from pg_stat_activity a"
                    " join pg_stat_ssl s using (pid) where a.usename = %s",
                    (USER,),
                ).fetchone()
            assert row is not None and row[0] >= 3 and row[1] is True  # replication too
            server = engine.services.http
            assert server is not None and server.url.startswith("https://")
            client_ctx = ssl.create_default_context(cafile=str(tls_pg.ca_file))
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{server.url}/healthz", ssl=client_ctx) as resp:
                    assert resp.status in (200, 503)
                with pytest.raises(aiohttp.ClientConnectorCertificateError):
                    await session.get(f"{server.url}/healthz")  # the system CAs do not know it
    assert read_jsonl(out)[0]["record"] == {"id": 1, "v": "over tls"}
    assert PASSWORD not in caplog.text


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("wrong-host", 'server certificate for "localhost" does not match host name "127.0.0.1"'),
        ("wrong-password", f'password authentication failed for user "{USER}"'),
    ],
)
def test_a_refused_connection_is_one_line_without_the_password(
    tls_pg: TlsPg, tmp_path: Path, variant: str, expected: str
) -> None:
    dsn = (
        tls_pg.dsn(host="127.0.0.1")
        if variant == "wrong-host"
        else tls_pg.dsn(password=PASSWORD + "x")
    )
    result = run_walrelay(write_yaml(tmp_path / "walrelay.yaml", dsn, tmp_path / "out.jsonl"))
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("walrelay: error: cannot connect to the source")
    assert expected in errors[0]
    assert "Traceback" not in result.stderr
    for fragment in (PASSWORD, "Tls-Scram", "pw'9"):
        assert fragment not in result.stderr + result.stdout


# -- the webhook sink: a CA bundle and a client certificate --------------------------


@pytest.fixture
async def mtls_receiver(ca: trustme.CA, tmp_path: Path) -> AsyncIterator[tuple[str, list[bytes]]]:
    """An https receiver that requires a client certificate issued by ``ca``."""
    got: list[bytes] = []

    async def handle(request: web.Request) -> web.Response:
        got.append(await request.read())
        return web.Response(status=204)

    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    ca.configure_trust(server_ctx)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"https://localhost:{port}/hook", got
    finally:
        await runner.cleanup()


def _event() -> Event:
    from datetime import UTC, datetime

    return Event(
        commit_lsn=1,
        seq=0,
        op="insert",
        table="public.t",
        keys=("1",),
        body=b'{"id":1}',
        xid=1,
        committed_at=datetime(2024, 1, 1, tzinfo=UTC),
    )


async def test_webhook_sink_trusts_a_ca_file_and_presents_a_client_certificate(
    mtls_receiver: tuple[str, list[bytes]], ca: trustme.CA, tmp_path: Path
) -> None:
    url, got = mtls_receiver
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "c.crt", tmp_path / "c.key"
    ca.cert_pem.write_to_path(str(ca_file))
    client = ca.issue_cert("walrelay-client")
    client.cert_chain_pems[0].write_to_path(str(cert_file))
    client.private_key_pem.write_to_path(str(key_file))
    tls = {"ca_file": str(ca_file), "cert_file": str(cert_file), "key_file": str(key_file)}

    async def deliver(settings: dict[str, object]) -> None:
        sink = WebhookSink(WebhookSinkConfig(url=url, timeout=5, **settings), secret=None)
        await sink.open()
        try:
            await sink.deliver([_event()])
        finally:
            await sink.close()

    await deliver({"tls": tls})
    assert got == [b'{"id":1}']
    # Without the client certificate the receiver hangs up; without the CA the
    # sink does not trust the receiver.
    with pytest.raises(SinkError):
        await deliver({"tls": {"ca_file": str(ca_file)}})
    with pytest.raises(SinkError, match="certificate"):
        await deliver({})
    assert len(got) == 1
    await asyncio.sleep(0)  # let aiohttp close its transports before the loop ends
