"""``ainode``: run and drive the node from a shell.

Every subcommand reads the same settings as the node (``configs/settings.yaml``, ``AINODE_*``
variables, or ``--settings FILE``), so ``ainode status`` finds the node ``ainode up`` started.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import requests
from pydantic import ValidationError

from ainode import models_cli
from ainode.credentials import orthanc_auth, read_credentials
from ainode.node.commands import worker_argv
from ainode.node.door import fingerprint, trust_node_certificate
from ainode.node.health import collect_status
from ainode.node.processes import StartError
from ainode.node.supervisor import AlreadyRunningError, Supervisor, read_supervisor_pid
from ainode.queues import all_queue_names
from ainode.settings import Settings, SettingsFileError, describe_settings_error

log = logging.getLogger("ainode")

LOG_PARTS = (
    "ainode",
    "orthanc",
    "redis",
    "worker",
    "delivery",
    "interactive",
    "door",
    "door-access",
)


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    if args.detach:
        return _up_detached(settings, args.timeout)
    supervisor = Supervisor(settings)
    supervisor.stop_on_signals()
    try:
        supervisor.prepare()
        supervisor.start()
    except (AlreadyRunningError, StartError, OSError) as error:
        log.error("%s", error)
        return 1
    if supervisor.stopping:
        supervisor.stop()
        return 0
    # A detached node's output goes to its log, which must never hold the password: the
    # command that detached it shows the credentials on its terminal instead.
    if supervisor.credentials_created and not args.detached_child:
        _show_generated_credentials(settings)
    _show_fingerprint(settings)
    _out(
        f"AI node up: {_public_url(settings)} (Orthanc Explorer at /app/explorer.html), "
        f"DICOM {settings.dicom_aet}@{settings.dicom_port}. Ctrl-C stops it."
    )
    supervisor.run_forever()
    return 0


def _public_url(settings: Settings) -> str:
    return settings.door_url if settings.door_enabled else settings.http_url


def _show_generated_credentials(settings: Settings) -> None:
    user, password = read_credentials(settings.credentials_file)
    _out(
        f"Generated Orthanc credentials (shown once; `ainode creds` prints them): {user}:{password}"
    )


def _show_fingerprint(settings: Settings) -> None:
    """The door's certificate, so a browser's or client's first "trust it?" can be checked."""
    if settings.door_enabled and settings.door_tls and settings.door_cert_path.is_file():
        _out(
            f"HTTPS certificate {settings.door_cert_path}, "
            f"SHA-256 fingerprint {fingerprint(settings.door_cert_path)}"
        )


def _up_detached(settings: Settings, timeout_s: float) -> int:
    if read_supervisor_pid(settings):
        _out(f"the node is already running on {settings.data_dir}")
        return 0
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    had_credentials = settings.credentials_file.exists()
    with (settings.logs_dir / "ainode.log").open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "ainode.cli", "up", "--detached-child"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "AINODE_DATA_DIR": str(settings.data_dir)},
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _out(f"the node failed to start; see {settings.logs_dir / 'ainode.log'}")
            return 1
        status = collect_status(settings)
        if status.healthy:
            if settings.auth_enabled and not had_credentials:
                _show_generated_credentials(settings)
            _show_fingerprint(settings)
            _print_status(status.to_json())
            return 0
        time.sleep(0.5)
    _out(f"the node is not healthy after {timeout_s:.0f} s; `ainode status` tells why")
    return 1


def cmd_down(settings: Settings, args: argparse.Namespace) -> int:
    pid = read_supervisor_pid(settings)
    if pid is None:
        _out("the node is not running")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if read_supervisor_pid(settings) is None:
            _out("the node stopped")
            return 0
        time.sleep(0.2)
    _out(f"the node (pid {pid}) is still stopping after {args.timeout:.0f} s")
    return 1


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    status = collect_status(settings)
    if args.json:
        _out(json.dumps(status.to_json(), indent=2))
    else:
        _print_status(status.to_json())
    return 0 if status.healthy else 1


def _print_status(data: dict[str, object]) -> None:
    url = data.get("url") or data["http_url"]
    _out(f"URL {url}   DICOM {data['dicom_aet']}@{data['dicom_port']}")
    parts = data["parts"]
    assert isinstance(parts, dict)
    for name, part in parts.items():
        mark = "ok  " if part["healthy"] else "DOWN"
        _out(f"  {mark} {name:8} {part['detail']}")


def cmd_push(settings: Settings, args: argparse.Namespace) -> int:
    from ainode.push import PushError, push_paths

    try:
        report = push_paths(
            [Path(p) for p in args.paths],
            host=args.host,
            port=args.port or settings.dicom_port,
            called_aet=args.aet or settings.dicom_aet,
            progress=None if args.quiet else _progress,
        )
    except PushError as error:
        log.error("%s", error)
        return 1
    if not args.quiet:
        sys.stderr.write("\n")
    _out(
        f"sent {report.sent}, failed {report.failed}, skipped {report.skipped} (not DICOM) "
        f"in {report.seconds:.1f} s ({report.rate:.0f} instances/s)"
    )
    for line in report.failures[:10]:
        _out(f"  failed: {line}")
    return 0 if report.failed == 0 else 1


def _progress(done: int, total: int) -> None:
    sys.stderr.write(f"\rpushing {done}/{total}")
    sys.stderr.flush()


def cmd_jobs(settings: Settings, args: argparse.Namespace) -> int:
    params: dict[str, str | int] = {"limit": args.limit}
    if args.state:
        params["state"] = args.state
    try:
        response = requests.get(
            f"{settings.orthanc_base_url}/ai/jobs",
            params=params,
            auth=orthanc_auth(settings),
            timeout=10,
        )
    except requests.RequestException as error:
        log.error("the node does not answer at %s: %s", settings.orthanc_base_url, error)
        return 1
    if response.status_code != 200:
        log.error("GET /ai/jobs answered HTTP %d: %s", response.status_code, response.text[:300])
        return 1
    jobs = response.json().get("jobs", [])
    if args.json:
        _out(json.dumps(jobs, indent=2))
        return 0
    # A decision without a rule was made by a guard ("guard:result-modality") or because no
    # rule matched ("no-rule-matched"): show that, and for ignored series the reason.
    _out(f"{'id':36}  {'state':9}  {'rule / decided by':24}  {'pipeline':18}  error / reason")
    for job in jobs:
        decided = job.get("rule") or job.get("decided_by") or "-"
        note = job.get("error") or (job.get("reason") if job["state"] == "ignored" else "")
        _out(
            f"{job['id']:36}  {job['state']:9}  {decided!s:24}  "
            f"{job.get('pipeline') or '-'!s:18}  {note or ''}"
        )
    return 0


def cmd_logs(settings: Settings, args: argparse.Namespace) -> int:
    unknown = set(args.part) - set(LOG_PARTS)
    if unknown:
        _out(
            f"unknown log part(s) {', '.join(sorted(unknown))}; choose from {', '.join(LOG_PARTS)}"
        )
        return 2
    files = [settings.logs_dir / f"{part}.log" for part in (args.part or LOG_PARTS)]
    files = [f for f in files if f.exists()]
    if not files:
        _out(f"no logs yet in {settings.logs_dir}")
        return 1
    tail = ["tail", "-n", str(args.lines), *(["-F"] if args.follow else []), *map(str, files)]
    return subprocess.call(tail)


def cmd_creds(settings: Settings, args: argparse.Namespace) -> int:
    if not settings.auth_enabled:
        _out("authentication is off in the settings")
        return 1
    if not settings.credentials_file.exists():
        _out(f"no credentials yet in {settings.credentials_file}; `ainode up` generates them")
        return 1
    user, password = read_credentials(settings.credentials_file)
    _out(f"{user}:{password}")
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    """Only a Celery worker, in the foreground: more workers for a node, on any machine.

    It reaches the node's Redis (``redis_url``) and Orthanc (``orthanc_url``, with
    ``orthanc_username``/``orthanc_password``) from the settings, and serves the queues of
    ``--pool`` or else ``worker_queues``. It replaces this process, so signals reach it.
    """
    queues = all_queue_names(None if args.pool == "any" else args.pool) if args.pool else None
    if queues is not None:
        settings = settings.model_copy(update={"worker_queues": queues})
    if args.delivery:  # this machine's workers' deliveries (they share its data_dir)
        settings = settings.model_copy(
            update={
                "worker_queues": [settings.delivery_queue],
                "worker_concurrency": settings.delivery_concurrency,
            }
        )
    if settings.redis_url is None:
        log.warning(
            "redis_url is not set: using the local broker at %s", settings.broker_url_redacted
        )
    if settings.auth_enabled and orthanc_auth(settings) is None:
        log.error(
            "authentication is on but no Orthanc credentials are set: set orthanc_username "
            "and orthanc_password (AINODE_ORTHANC_USERNAME, AINODE_ORTHANC_PASSWORD)"
        )
        return 2
    command = worker_argv(settings, args.name or socket.gethostname())
    log.info(
        "worker %s: queues %s, broker %s, Orthanc %s",
        command[command.index("--hostname") + 1],
        ",".join(settings.worker_queues),
        settings.broker_url_redacted,
        settings.orthanc_base_url,
    )
    os.environ.setdefault("TCP_NODELAY", "1")
    os.execv(command[0], command)  # noqa: S606 - the worker replaces this process


def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    from ainode.bench import BENCHMARKS, run_benchmarks

    known = {b.name for b in BENCHMARKS}
    unknown = set(args.only) - known
    if unknown:
        _out(f"unknown benchmark(s) {', '.join(sorted(unknown))}; choose from {', '.join(known)}")
        return 2
    report, passed = run_benchmarks(args.only, full=args.full, timeout_s=args.timeout)
    sys.stdout.write(report)
    if args.output:
        Path(args.output).write_text(report)
    return 0 if passed else 1


def cmd_sample(settings: Settings, args: argparse.Namespace) -> int:
    from ainode.phantoms import Geometry, SeriesIds, make_phantom, write_series

    slices, rows, columns = args.shape
    phantom = make_phantom(Geometry(shape=(slices, rows, columns)), seed=args.seed)
    paths = write_series(phantom, Path(args.folder), SeriesIds())
    _out(f"wrote a {slices}x{rows}x{columns} CT phantom ({len(paths)} files) to {args.folder}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ainode", description=__doc__)
    parser.add_argument("--settings", help="settings file (default configs/settings.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start Orthanc, Redis and a worker (foreground)")
    up.add_argument("--detach", action="store_true", help="start in the background and return")
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for health")
    up.add_argument("--detached-child", action="store_true", help=argparse.SUPPRESS)
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="stop a node started with --detach")
    down.add_argument("--timeout", type=float, default=60.0)
    down.set_defaults(func=cmd_down)

    status = sub.add_parser("status", help="health of each part")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    push = sub.add_parser("push", help="C-STORE DICOM files or folders to the node")
    push.add_argument("paths", nargs="+")
    push.add_argument("--host", default="127.0.0.1")
    push.add_argument("--port", type=int, help="default: the node's DICOM port")
    push.add_argument("--aet", help="called AE title (default: the node's)")
    push.add_argument("--quiet", action="store_true")
    push.set_defaults(func=cmd_push)

    jobs = sub.add_parser("jobs", help="list AI jobs")
    jobs.add_argument("--state")
    jobs.add_argument("--limit", type=int, default=50)
    jobs.add_argument("--json", action="store_true")
    jobs.set_defaults(func=cmd_jobs)

    logs = sub.add_parser("logs", help="show the node's logs")
    logs.add_argument("part", nargs="*", help=f"any of {', '.join(LOG_PARTS)} (default: all)")
    logs.add_argument("-n", "--lines", type=int, default=50)
    logs.add_argument("-f", "--follow", action="store_true")
    logs.set_defaults(func=cmd_logs)

    sample = sub.add_parser("sample", help="write a CT phantom of known spheres and boxes")
    sample.add_argument("folder")
    sample.add_argument(
        "--shape", type=int, nargs=3, default=(48, 64, 64), metavar=("SLICES", "ROWS", "COLUMNS")
    )
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(func=cmd_sample)

    worker = sub.add_parser(
        "worker", help="run only a worker (more workers for a node, on this or another machine)"
    )
    worker.add_argument(
        "--pool",
        choices=["gpu", "cpu", "any"],
        help="serve this pool's queues (any: the pool-less ones); default: worker_queues",
    )
    worker.add_argument(
        "--delivery",
        action="store_true",
        help="serve only delivery_queue: send the results this machine's workers wrote",
    )
    worker.add_argument(
        "--name", help="worker name, unique per broker (default: this machine's host name)"
    )
    worker.set_defaults(func=cmd_worker)

    bench = sub.add_parser(
        "bench", help="run the benchmarks and write a Markdown table of their figures"
    )
    bench.add_argument("--only", nargs="+", default=[], metavar="NAME", help="these only")
    size = bench.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes (the default)")
    size.add_argument("--full", action="store_true", help="the benchmarks' real sizes")
    bench.add_argument("--output", help="also write the table to this file")
    bench.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds allowed per benchmark"
    )
    bench.set_defaults(func=cmd_bench)

    models_cli.add_parser(sub)

    creds = sub.add_parser("creds", help="print the generated user:password")
    creds.set_defaults(func=cmd_creds)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.settings:
        os.environ["AINODE_SETTINGS"] = args.settings
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # one line per instance otherwise
    try:
        settings = Settings()
    except (ValidationError, SettingsFileError) as error:
        sys.stderr.write(f"ainode: {describe_settings_error(error)}\n")
        return 2
    try:
        trust_node_certificate(settings)
    except (OSError, ValueError) as error:
        sys.stderr.write(f"ainode: orthanc_ca_file {settings.orthanc_ca_file}: {error}\n")
        return 2
    func: Callable[[Settings, argparse.Namespace], int] = args.func
    try:
        return func(settings, args)
    except BrokenPipeError:
        # The reader went away (`ainode jobs | head -1`): end quietly; stdout goes nowhere so
        # the interpreter's last flush cannot raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
