"""The node's front door: nginx in front of Orthanc and the interactive service.

Why a reverse proxy at all: Orthanc 1.10's plugin callbacks never see a POST's query string or
a multipart body (Orthanc answers those itself), and Orthanc serves each connection with one of
a fixed pool of threads, so a few dozen slow clients hold them all. nginx reads every request
completely, event-driven, before it opens a connection to Orthanc; it sends ``/ai/interactive/``
and ``/ai/monailabel/`` straight to the interactive service with their query strings and bodies
as sent; it terminates TLS and checks the node's login. nginx is what Orthanc's own deployment
documentation puts in front of it, and Debian ships it.

Everything in the configuration comes from :class:`~ainode.settings.Settings` and files the
node made itself; nothing from a request. The files live in ``<data_dir>/run/door/`` (config,
password file, temporary bodies) and ``<data_dir>/door/`` (the generated certificate).
"""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import secrets
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import certifi
import requests
from requests import PreparedRequest, Response
from requests.adapters import HTTPAdapter

from ainode.settings import Settings

_SSHA_SALT_BYTES = 8


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path
    created: bool


def ensure_certificate(settings: Settings) -> Certificate:
    """The door's certificate: the configured one, else a self-signed one made once.

    The self-signed one names ``localhost``, ``127.0.0.1`` and this machine's host name; it is
    its own CA (clients trust it by its file, ``door_cert_path``) and lasts ten years.
    """
    if (settings.door_cert_file is None) != (settings.door_key_file is None):
        raise ValueError("set both door_cert_file and door_key_file, or neither")
    cert, key = settings.door_cert_path, settings.door_key_path
    if settings.door_cert_file is not None:
        for path in (cert, key):
            if not path.is_file():
                raise FileNotFoundError(f"door certificate file {path} does not exist")
        return Certificate(cert, key, created=False)
    if cert.is_file() and key.is_file():
        return Certificate(cert, key, created=False)
    cert.parent.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    names = ["DNS:localhost", "IP:127.0.0.1", "IP:::1"]
    if host and host != "localhost":
        names.append(f"DNS:{host}")
    partial_key = key.with_name(f".{key.name}.partial")
    partial_key.unlink(missing_ok=True)
    partial_key.touch(mode=0o600)
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            f"/CN={host or 'localhost'}/O={settings.node_name} AI node",
            "-addext",
            "subjectAltName=" + ",".join(names),
            "-addext",
            "basicConstraints=critical,CA:TRUE,pathlen:0",
            "-keyout",
            str(partial_key),
            "-out",
            str(cert.with_name(f".{cert.name}.partial")),
        ],
        check=True,
        capture_output=True,
    )
    partial_key.replace(key)
    cert.with_name(f".{cert.name}.partial").replace(cert)
    return Certificate(cert, key, created=True)


def fingerprint(cert: Path) -> str:
    """SHA-256 fingerprint of the (first) certificate, as browsers show it (AB:CD:...)."""
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def htpasswd_line(user: str, password: str, salt: bytes | None = None) -> str:
    """One ``user:{SSHA}...`` line of nginx's ``auth_basic_user_file`` (salted SHA-1)."""
    salt = secrets.token_bytes(_SSHA_SALT_BYTES) if salt is None else salt
    digest = hashlib.sha1(password.encode() + salt, usedforsecurity=False).digest()
    return f"{user}:{{SSHA}}{base64.b64encode(digest + salt).decode()}"


def door_dir(settings: Settings) -> Path:
    return settings.run_dir / "door"


def render_nginx_config(
    settings: Settings,
    *,
    htpasswd: Path | None,
    certificate: Certificate | None,
) -> str:
    """nginx.conf for this node; ``htpasswd`` None: no login, ``certificate`` None: plain HTTP."""
    run = door_dir(settings)
    listen_host = "" if settings.door_bind_all else "127.0.0.1:"
    tls = " ssl" if certificate else ""
    auth = (
        f'auth_basic "{settings.node_name} AI node";\n        auth_basic_user_file {htpasswd};'
        if htpasswd
        else "auth_basic off;"
    )
    tls_lines = (
        f"ssl_certificate {certificate.cert};\n"
        f"        ssl_certificate_key {certificate.key};\n"
        "        ssl_protocols TLSv1.2 TLSv1.3;\n"
        "        ssl_session_cache shared:ainode_tls:1m;"
        if certificate
        else ""
    )
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    proxied = """proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_read_timeout 600s;
            proxy_send_timeout 600s;"""
    interactive_locations = (
        _interactive_locations(settings, proxied) if settings.interactive_enabled else ""
    )
    return f"""# Written by `ainode up` (src/ainode/node/door.py) at every start; edits are lost.
{user}daemon off;
master_process on;
worker_processes 1;
pid {run / "nginx.pid"};
error_log stderr warn;

events {{
    worker_connections 4096;
}}

http {{
    # No query strings: QIDO-RS searches carry patient names, IDs and birth dates.
    log_format ainode '$remote_addr [$time_local] "$request_method $uri" $status '
                      '$body_bytes_sent $request_time';
    access_log {settings.logs_dir / "door-access.log"} ainode;
    types {{
        text/html html;
        application/json json;
    }}
    default_type application/octet-stream;
    server_tokens off;
    client_body_temp_path {run / "client_body"};
    proxy_temp_path {run / "proxy"};
    fastcgi_temp_path {run / "fastcgi"};
    uwsgi_temp_path {run / "uwsgi"};
    scgi_temp_path {run / "scgi"};

    # Slow clients: a request's headers must arrive within 10 s, and a body may pause at most
    # 30 s. Requests are read whole before Orthanc or the service is asked, so a slow client
    # holds only a connection here, never one of Orthanc's HTTP threads.
    client_header_timeout 10s;
    client_body_timeout 30s;
    send_timeout 60s;
    keepalive_timeout 30s;
    reset_timedout_connection on;
    limit_conn_zone $binary_remote_addr zone=ainode_per_client:1m;
    limit_req_zone $binary_remote_addr zone=ainode_logins:1m rate=5r/s;

    server {{
        listen {listen_host}{settings.door_port}{tls};
        server_name _;
        {tls_lines}
        {auth}
        limit_conn ainode_per_client 512;
        client_max_body_size {settings.door_max_body_mib}m;
        error_page 413 /.door/413;

        location = /.door/413 {{
            internal;
            auth_basic off;
            default_type application/json;
            return 413 '{{"error": "the request body is larger than this route accepts"}}\\n';
        }}

        location / {{
            proxy_pass {settings.orthanc_base_url};
            {proxied}
        }}

        {interactive_locations}
    }}
}}
"""


def _interactive_locations(settings: Settings, proxied: str) -> str:
    """The interactive service, straight: query strings, multipart and large bodies intact."""
    interactive = settings.interactive_url
    limit = f"client_max_body_size {settings.door_interactive_max_body_mib}m;"
    return f"""# The interactive service, straight: query strings, multipart, large bodies intact.
        location /ai/interactive/ {{
            {limit}
            proxy_pass {interactive}/;
            {proxied}
        }}

        location /ai/monailabel/ {{
            {limit}
            proxy_pass {interactive}/monailabel/;
            {proxied}
        }}

        # MONAI Label's login routes: open, the service checks the password (auth.py).
        location = /ai/monailabel/auth/ {{
            auth_basic off;
            proxy_pass {interactive}/monailabel/auth/;
            {proxied}
        }}

        location = /ai/monailabel/auth {{
            auth_basic off;
            proxy_pass {interactive}/monailabel/auth/;
            {proxied}
        }}

        location = /ai/monailabel/auth/token {{
            auth_basic off;
            limit_req zone=ainode_logins burst=20;
            {limit}
            proxy_pass {interactive}/monailabel/auth/token;
            {proxied}
        }}

        # OHIF's MONAI Label panel given the URL without its trailing slash resolves its
        # relative paths against /ai/: the same service answers there.
        location = /ai/info/ {{
            proxy_pass {interactive}/monailabel/info/;
            {proxied}
        }}

        location /ai/infer/ {{
            {limit}
            proxy_pass {interactive}/monailabel/infer/;
            {proxied}
        }}

        location = /ai/monailabel {{
            {limit}
            proxy_pass {interactive}/monailabel/;
            {proxied}
        }}"""


def write_door_files(settings: Settings, credentials: tuple[str, str] | None) -> Path:
    """Write the password file and nginx.conf into the run directory; return the config."""
    run = door_dir(settings)
    run.mkdir(parents=True, exist_ok=True)
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    htpasswd = None
    if credentials is not None:
        htpasswd = run / "htpasswd"
        htpasswd.touch(mode=0o600)
        htpasswd.write_text(htpasswd_line(*credentials) + "\n")
    certificate = ensure_certificate(settings) if settings.door_tls else None
    path = run / "nginx.conf"
    path.write_text(render_nginx_config(settings, htpasswd=htpasswd, certificate=certificate))
    return path


def nginx_argv(settings: Settings, config: Path) -> list[str]:
    """nginx in the foreground, errors on stderr (``door.log``); ``-e`` keeps it off
    /var/log/nginx before it reads the configuration."""
    return [
        str(settings.door_binary),
        "-p",
        str(door_dir(settings)),
        "-e",
        "stderr",
        "-c",
        str(config),
    ]


class _PinnedVerify(HTTPAdapter):
    """Uses one trust setting whatever the environment says.

    ``requests`` lets ``REQUESTS_CA_BUNDLE`` override a session's ``verify``; a session to the
    node's door must trust the node's own certificate regardless.
    """

    def __init__(self, verify: str | bool) -> None:
        super().__init__()
        self._verify = verify

    def send(self, request: PreparedRequest, **kwargs: Any) -> Response:  # type: ignore[override]
        kwargs["verify"] = self._verify
        return super().send(request, **kwargs)


def door_session(settings: Settings, auth: tuple[str, str] | None) -> requests.Session:
    """A session to the node's door that trusts its certificate (CLI, tests, tools)."""
    session = requests.Session()
    session.auth = auth
    session.mount("https://", _PinnedVerify(door_verify(settings)))
    return session


def door_verify(settings: Settings) -> str | bool:
    """What ``requests`` should trust for the door: its certificate file (self-signed or not)."""
    if not settings.door_tls or settings.door_cert_file is not None:
        return True  # plain HTTP, or a site certificate the system's CAs vouch for
    return str(settings.door_cert_path) if settings.door_cert_path.is_file() else True


def trust_node_certificate(settings: Settings) -> Path | None:
    """Make this process and its children trust ``orthanc_ca_file`` besides the usual CAs.

    For a worker or CLI on another machine reaching the node through its door
    (``orthanc_url: https://node:8443``): ``requests`` reads ``REQUESTS_CA_BUNDLE``, so every
    session (job runner, destinations, interactive loader) trusts the node without a code path
    of its own. The bundle is the CAs ``requests`` ships with plus the node's certificate.
    """
    if settings.orthanc_ca_file is None:
        return None
    node_cert = settings.orthanc_ca_file.read_text()
    ssl.PEM_cert_to_DER_cert(node_cert)  # a clear error now if it is no PEM certificate
    bundle = settings.run_dir / "ca-bundle.pem"
    bundle.parent.mkdir(parents=True, exist_ok=True)
    bundle.write_text(Path(certifi.where()).read_text().rstrip() + "\n" + node_cert)
    os.environ["REQUESTS_CA_BUNDLE"] = str(bundle)
    return bundle
