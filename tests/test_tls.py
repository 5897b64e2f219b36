"""HTTPS on a Compose host. With `tls: acme`, the proxy gets its certificate from a real ACME
server (pebble) over a real HTTP-01/TLS-ALPN-01 challenge on the ports it publishes, serves
the environment's host with it, redirects plain HTTP, and renews it in the background while
requests keep being answered. With `tls: files`, it serves the
certificate in proxy/certs/, put into its volume by each deploy (a renewed one included)."""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import pytest
import trustme
from cryptography import x509

from tests.conftest import Render, edit_yaml, init_repo, invoke_cli, script_package
from tests.load import Load, Tls
from tests.servers.acme import HOST_NAME, SHORT_VALIDITY, Acme
from tests.servers.docker import Dockerd, MirrorImages
from tests.servers.registry import free_port

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("docker")]

HOST = "staging.cert-api.example.net"


def invoke(root: Path, env: dict[str, str], *args: str) -> str:
    proc = invoke_cli(root, *args, env=env)
    assert proc.returncode == 0, f"invoke {' '.join(args)}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


def render_kit(
    render: Render, root: Path, registry: str, mirror_images: MirrorImages, **tls: str
) -> Path:
    """The sample service, staging on Compose at HOST, with the `tls` answers given."""
    return render(
        {
            "project_name": "Cert API",
            "sample_app": True,
            "database": "none",
            "components": [
                {"name": "cert-api", "kind": "http", "port": free_port(), "health_path": "/health"}
            ],
            **mirror_images.answers(node_version="22"),
            "staging_target": "compose",
            "production_target": "compose",
            "staging_host": HOST,
            "image_registry": f"{registry}/acme",
            "ci_provider": "none",
            "monitoring": "none",
            **tls,
        },
        root,
    )


@contextlib.contextmanager
def torn_down(root: Path, env: dict[str, str]) -> Iterator[tuple[Path, dict[str, str]]]:
    """The kit and its environment, its stack and volumes removed afterwards."""
    try:
        yield root, env
    finally:
        subprocess.run(
            [
                "docker-compose",
                "--file",
                "compose.prod.yaml",
                "down",
                "--volumes",
                "--timeout",
                "5",
            ],
            cwd=root,
            env={**env, "CERT_API_IMAGE": "unused"},
            capture_output=True,
            check=False,
        )


@contextlib.contextmanager
def pebble_kit(
    render: Render,
    root: Path,
    dockerd: Dockerd,
    registry: str,
    mirror_images: MirrorImages,
    acme: Acme,
    renew_interval: str = "",
) -> Iterator[tuple[Path, dict[str, str]]]:
    """The sample service with tls=acme, its proxy pointed at pebble; with `renew_interval`,
    Caddy checks its certificates that often (instead of every 10 minutes)."""
    answers = {"tls": "acme", "acme_email": "ops@example.net"}
    root = render_kit(render, root, registry, mirror_images, **answers)

    trust_pebble(root, acme)
    if renew_interval:
        caddyfile = root / "proxy" / "Caddyfile"
        admin = "\tadmin 127.0.0.1:2019\n"
        assert admin in caddyfile.read_text(), "the Caddyfile's global options moved"
        caddyfile.write_text(
            caddyfile.read_text().replace(admin, f"{admin}\trenew_interval {renew_interval}\n")
        )
    init_repo(root, "kit")
    with torn_down(root, {**dockerd.task_env, "SHIPYARD_ACME_CA": acme.directory}) as kit:
        yield kit


def trust_pebble(root: Path, acme: Acme) -> None:
    """What differs from a real host: the CA's API is on this machine, under a name its own
    certificate carries, and only the proxy trusts that certificate."""

    def change(data: Any) -> None:
        proxy = data["services"]["proxy"]
        proxy["extra_hosts"] = [f"{HOST_NAME}:host-gateway"]
        proxy["volumes"].append(f"{acme.ca_file}:/etc/test-acme-ca.pem:ro")
        proxy["environment"]["SSL_CERT_FILE"] = "/etc/test-acme-ca.pem"

    edit_yaml(root / "compose.prod.yaml", change)


def no_certificate(root: Path, env: dict[str, str], host: str, last: str) -> NoReturn:
    """Fail the test: the proxy got no certificate for `host` in time; its logs say why."""
    pytest.fail(f"no certificate for {host} in 90 s ({last}):\n{proxy_log(root, env)}")


@pytest.fixture
def kit(
    render: Render,
    tmp_path: Path,
    dockerd: Dockerd,
    registry: str,
    mirror_images: MirrorImages,
    acme: Acme,
) -> Iterator[tuple[Path, dict[str, str]]]:
    with pebble_kit(render, tmp_path / "cert-api", dockerd, registry, mirror_images, acme) as kit:
        yield kit


@pytest.fixture
def renewing_kit(
    render: Render,
    tmp_path: Path,
    dockerd: Dockerd,
    registry: str,
    mirror_images: MirrorImages,
    acme_short_lived: Acme,
) -> Iterator[tuple[Path, dict[str, str]]]:
    """As `kit`, with certificates valid for SHORT_VALIDITY seconds and Caddy looking for
    ones to renew every few seconds (its default, 10 minutes, outlasts such a certificate)."""
    with pebble_kit(
        render,
        tmp_path / "cert-api",
        dockerd,
        registry,
        mirror_images,
        acme_short_lived,
        renew_interval="5s",
    ) as kit:
        yield kit


def deploy(root: Path, env: dict[str, str]) -> None:
    """Build, push and deploy the kit to staging."""
    invoke(root, env, "build", "--env", "staging")
    invoke(root, env, "push", "--env", "staging")
    invoke(root, env, "deploy", "--env", "staging", "--yes")


def proxy_log(root: Path, env: dict[str, str]) -> str:
    """The end of the proxy's log, for a failure message."""
    logs = subprocess.run(
        ["docker-compose", "--file", "compose.prod.yaml", "logs", "proxy"],
        cwd=root,
        env={**env, "CERT_API_IMAGE": "unused"},
        capture_output=True,
        text=True,
        check=False,
    )
    return logs.stdout[-3000:]


def get(port: int, path: str, context: ssl.SSLContext | None) -> tuple[int, dict[str, str]]:
    """GET http(s)://HOST:port/path, with HOST resolving to this machine (as DNS would): the
    status and headers."""
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
        # SNI and the hostname check use HOST, the connection goes to the published port.
        conn.sock = context.wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname=HOST
        )
    with contextlib.closing(conn):
        conn.request("GET", path, headers={"Host": HOST})
        answer = conn.getresponse()
        answer.read()
        return answer.status, dict(answer.getheaders())


def first_https_answer(
    root: Path, env: dict[str, str], context: ssl.SSLContext
) -> tuple[int, dict[str, str]]:
    """GET https://HOST/health once the proxy has a certificate `context` trusts (90 s at
    most): its status and headers."""
    deadline, last = time.monotonic() + 90, ""
    while True:
        try:
            return get(443, "/health", context)
        except (OSError, ssl.SSLError) as exc:
            # Until issuance finishes Caddy has no certificate for HOST yet.
            last = str(exc)
        if time.monotonic() > deadline:
            no_certificate(root, env, HOST, last)
        time.sleep(2)


def test_acme_certificate_is_issued_and_served(
    kit: tuple[Path, dict[str, str]], acme: Acme
) -> None:
    root, env = kit
    deploy(root, env)
    context = ssl.create_default_context(cadata=acme.issuing_root())
    status, headers = first_https_answer(root, env, context)
    assert status == 200
    assert "max-age=63072000" in headers.get("Strict-Transport-Security", "")
    with (
        contextlib.closing(socket.create_connection(("127.0.0.1", 443))) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        cert = tls.getpeercert()
    assert cert is not None
    assert ("DNS", HOST) in cert["subjectAltName"]
    # Plain HTTP is redirected to HTTPS (the ACME challenges stay on port 80).
    status, headers = get(80, "/health?x=1", None)
    assert status in (301, 308)
    assert headers["Location"] == f"https://{HOST}/health?x=1"


def test_a_certificate_that_cannot_be_issued_is_reported_by_status(
    kit: tuple[Path, dict[str, str]],
) -> None:
    """The CA cannot be reached: the release still goes out (issuance is Caddy's, in the
    background), and `invoke status` says what the proxy's last attempts ran into."""
    root, env = kit
    env = {**env, "SHIPYARD_ACME_CA": f"https://{HOST_NAME}:{free_port()}/dir"}
    deploy(root, env)
    deadline, status = time.monotonic() + 60, ""
    while "certificate errors" not in status and time.monotonic() < deadline:
        time.sleep(2)
        status = invoke(root, env, "status", "--env", "staging")
    assert "staging: the proxy's last certificate errors (newest last):" in status, status
    assert HOST in status.split("certificate errors", 1)[1]
    assert "connection refused" in status, status


def install_certificate(root: Path, ca: trustme.CA) -> int:
    """A certificate for HOST from `ca` in proxy/certs/, the key readable by its owner only;
    its serial number."""
    issued = ca.issue_cert(HOST)
    certs = root / "proxy" / "certs"
    certs.mkdir(exist_ok=True)
    (certs / "fullchain.pem").write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
    key = certs / "privkey.pem"
    key.write_bytes(issued.private_key_pem.bytes())
    key.chmod(0o600)
    return x509.load_pem_x509_certificate(issued.cert_chain_pems[0].bytes()).serial_number


def served_certificate(context: ssl.SSLContext) -> x509.Certificate:
    """The certificate the proxy serves for HOST, over a new connection (verified)."""
    with (
        contextlib.closing(socket.create_connection(("127.0.0.1", 443), timeout=10)) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def served_serial(context: ssl.SSLContext) -> int:
    """The serial number of the certificate the proxy serves for HOST (verified)."""
    return served_certificate(context).serial_number


def test_acme_certificate_is_renewed_with_no_failed_request(
    renewing_kit: tuple[Path, dict[str, str]], acme_short_lived: Acme, tmp_path: Path
) -> None:
    """Caddy renews a certificate a third of its lifetime before it expires, in the
    background: with requests running through the proxy on a kept-alive connection, and a new
    TLS handshake every second, the served certificate changes and no request fails."""
    root, env = renewing_kit
    deploy(root, env)
    root_pem = acme_short_lived.issuing_root()
    context = ssl.create_default_context(cadata=root_pem)
    assert first_https_answer(root, env, context)[0] == 200
    first = served_certificate(context)
    ca_file = tmp_path / "pebble-root.pem"
    ca_file.write_text(root_pem)
    # The renewal is due at 2/3 of the lifetime, found by a check every 5 s: well within 3.
    limit = 3 * SHORT_VALIDITY
    handshakes, failed_handshakes = 0, []
    started = time.monotonic()
    with Load("https://127.0.0.1:443/health", tls=Tls(HOST, ca_file)) as load:
        renewed = first
        while renewed.serial_number == first.serial_number:
            if time.monotonic() - started > limit:
                pytest.fail(
                    f"the certificate for {HOST} (valid {SHORT_VALIDITY} s) was not renewed in"
                    f" {limit} s; load: {load.report}:\n{proxy_log(root, env)}"
                )
            time.sleep(1)
            handshakes += 1
            try:
                renewed = served_certificate(context)
            except (OSError, ssl.SSLError) as exc:
                failed_handshakes.append(f"{time.monotonic() - started:.1f}s {exc}")
        renewal = time.monotonic() - started
        # Requests keep being answered once the new certificate is in use too.
        time.sleep(5)
    report = load.report
    print(
        f"renewed {renewed.not_valid_before_utc - first.not_valid_before_utc} after issuance,"
        f" {renewal:.1f} s into the load; {handshakes} handshakes,"
        f" {len(failed_handshakes)} failed; load: {report}"
    )
    assert not failed_handshakes, f"new connections failed: {failed_handshakes[:5]}"
    assert report.failed == 0, f"{report}: {report.errors}\n{proxy_log(root, env)}"
    assert report.requests >= 20 * renewal / 2, f"the load loop barely ran: {report}"
    # The new certificate is for the host, verified against pebble's root, and current.
    names = renewed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert HOST in names.get_values_for_type(x509.DNSName)
    assert renewed.not_valid_after_utc > first.not_valid_after_utc
    assert renewed.not_valid_before_utc <= datetime.now(UTC) < renewed.not_valid_after_utc


def test_certificate_files_are_served_and_a_renewed_one_too(
    render: Render, tmp_path: Path, dockerd: Dockerd, registry: str, mirror_images: MirrorImages
) -> None:
    """tls=files: the certificate in proxy/certs/ (never committed) reaches the proxy through
    the deploy, not a bind mount; replacing the files and deploying again serves the new one."""
    root = render_kit(render, tmp_path / "cert-api", registry, mirror_images, tls="files")
    init_repo(root, "kit")
    ca = trustme.CA()
    context = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
    with torn_down(root, dockerd.task_env) as (root, env):
        invoke(root, env, "build", "--env", "staging")
        invoke(root, env, "push", "--env", "staging")
        missing = invoke_cli(root, "deploy", "--env", "staging", "--yes", env=env)
        assert missing.returncode == 1
        assert "proxy/certs/fullchain.pem, proxy/certs/privkey.pem missing" in missing.stderr
        first = install_certificate(root, ca)
        # Staging refuses a dirty tree: this one is clean, .gitignore keeps the files out.
        invoke(root, env, "deploy", "--env", "staging", "--yes")
        assert get(443, "/health", context)[0] == 200
        assert served_serial(context) == first
        renewed = install_certificate(root, ca)
        assert renewed != first
        invoke(root, env, "deploy", "--env", "staging", "--yes")
        assert served_serial(context) == renewed
        assert get(443, "/health", context)[0] == 200


# Two http components on their own hosts: `web` on the environment's host, `api` on api.<host>.
# One dependency-free server (the build copies it to dist/) answers with the component's name.
SERVER_JS = """\
const http = require('http');
const name = process.argv[2];
process.on('SIGTERM', () => process.exit(0));
http.createServer((req, res) => res.writeHead(200).end(name)).listen(process.env.PORT);
"""
API_HOST = f"api.{HOST}"


def test_each_component_is_served_on_its_own_host_with_its_own_certificate(
    render: Render,
    tmp_path: Path,
    dockerd: Dockerd,
    registry: str,
    mirror_images: MirrorImages,
    acme: Acme,
) -> None:
    """subdomain: api puts a component on api.<host>: the proxy has a site per host, gets a
    certificate for each from pebble (the challenges for both names reach it), and a request
    reaches the component of the host it names, both on the route /. `invoke status` lists
    each component's health URL on its own host."""
    start = "node dist/server.js"
    root = render(
        {
            "project_name": "Two Hosts",
            "database": "none",
            "components": [
                {
                    "name": "web",
                    "kind": "http",
                    "port": free_port(),
                    "health_path": "/health",
                    "start": f"{start} web",
                },
                {
                    "name": "api",
                    "kind": "http",
                    "port": free_port(),
                    "health_path": "/health",
                    "start": f"{start} api",
                    "subdomain": "api",
                },
            ],
            **mirror_images.answers(node_version="22"),
            "staging_target": "compose",
            "production_target": "compose",
            "staging_host": HOST,
            "image_registry": f"{registry}/acme",
            "ci_provider": "none",
            "monitoring": "none",
            "tls": "acme",
            "acme_email": "ops@example.net",
        },
        tmp_path / "two-hosts",
    )
    script_package(root, "server.js", SERVER_JS)
    trust_pebble(root, acme)
    init_repo(root, "kit")
    env = {**dockerd.task_env, "SHIPYARD_ACME_CA": acme.directory}
    images = {"WEB_IMAGE": "unused", "API_IMAGE": "unused"}
    with torn_down(root, {**env, **images}):
        invoke(root, env, "build", "--env", "staging")
        invoke(root, env, "push", "--env", "staging")
        invoke(root, env, "deploy", "--env", "staging", "--yes")
        context = ssl.create_default_context(cadata=acme.issuing_root())
        for host, component in ((HOST, "web"), (API_HOST, "api")):
            code, body, names = _fetch_on(host, "/", context, root, {**env, **images})
            assert (code, body) == (200, component), host
            # A certificate per host: each names its own host only.
            assert names == [host], names
        status = invoke(root, env, "status", "--env", "staging")
        assert f"web: https://{HOST}/health" in status, status
        assert f"api: https://{API_HOST}/health" in status, status


def _fetch_on(
    host: str, path: str, context: ssl.SSLContext, root: Path, env: dict[str, str]
) -> tuple[int, str, list[str]]:
    """GET https://host/path through the proxy on port 443 once its certificate for `host` is
    issued: the status, the body and the DNS names of the certificate served."""
    deadline, last = time.monotonic() + 90, ""
    while True:
        try:
            with (
                contextlib.closing(socket.create_connection(("127.0.0.1", 443), timeout=10)) as raw,
                context.wrap_socket(raw, server_hostname=host) as tls,
            ):
                cert = tls.getpeercert()
                assert cert is not None
                request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                tls.sendall(request.encode())
                answer = http.client.HTTPResponse(tls)
                answer.begin()
                body = answer.read().decode()
                names = [str(entry[1]) for entry in cert["subjectAltName"] if entry[0] == "DNS"]
                return answer.status, body, names
        except (OSError, ssl.SSLError) as exc:
            last = str(exc)  # until issuance finishes Caddy has no certificate for the host
        if time.monotonic() > deadline:
            no_certificate(root, env, host, last)
        time.sleep(2)
