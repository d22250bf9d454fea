"""The GPU deployment files (docker-compose.yml, docker/*.Dockerfile) against the repository.

No Docker engine is needed: the files are parsed and checked against the code they deploy
(settings fields, queue names, the model registry, paths that must exist), so a rename on either
side fails here rather than on a hospital's server.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any, get_args, get_origin

import pytest
from packaging.specifiers import SpecifierSet
from pydantic import BaseModel

from ainode.node.orthanc_config import BASE_CONFIG
from ainode.queues import DELIVERY_QUEUE, all_queue_names
from ainode.registry import load_registry
from ainode.settings import REPO_ROOT, Settings

from .deployfiles import (
    DOCKERIGNORE,
    copy_sources,
    dockerfile_instructions,
    dockerignore_patterns,
    env_example,
    environment,
    interpolate,
    is_ignored,
    is_single_reference,
    load_compose,
    references,
    split_outside_references,
    strings,
)

COMPOSE = load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
WORKER_DOCKERFILE = "docker/worker.Dockerfile"
ORTHANC_DOCKERFILE = "docker/orthanc.Dockerfile"
APP_DIR = PurePosixPath("/opt/ainode")  # where both images keep the checkout (WORKDIR)

# Values for the variables docker-compose.yml requires, as an operator's .env would give them.
DOTENV = {
    "ORTHANC_USERNAME": "ainode",
    "ORTHANC_PASSWORD": "orthanc-pw-0123",
    "POSTGRES_PASSWORD": "postgres-pw-4567",
    "REDIS_PASSWORD": "0123456789abcdef",
    "MODELS_DIR": "/srv/ainode/models",
}
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|(^|_)KEY$|(^|_)AUTH$")


def built_from(service: dict[str, Any]) -> str | None:
    build = service.get("build")
    if build is None:
        return None
    return str(PurePosixPath(build["dockerfile"]))


def worker_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in SERVICES.items() if built_from(s) == WORKER_DOCKERFILE}


def worker_queues(service: dict[str, Any]) -> list[str]:
    raw = environment(service).get("AINODE_WORKER_QUEUES")
    assert raw is not None, "each worker service names its queues (AINODE_WORKER_QUEUES)"
    queues = json.loads(raw)
    assert isinstance(queues, list)
    return [str(q) for q in queues]


def gpu_reservations(service: dict[str, Any]) -> list[dict[str, Any]]:
    devices = (
        service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    )
    return [
        d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])
    ]


def volumes(service: dict[str, Any]) -> list[dict[str, Any]]:
    mounts = service.get("volumes", [])
    for mount in mounts:
        assert isinstance(mount, dict), f"use the long volume syntax (type/source/target): {mount}"
    return list(mounts)


def mount_target(service: dict[str, Any], target: PurePosixPath) -> dict[str, Any] | None:
    """The mount whose target holds ``target`` (itself or a folder above it)."""
    for mount in volumes(service):
        mounted = PurePosixPath(mount["target"])
        if target == mounted or mounted in target.parents:
            return mount
    return None


def in_image(host_path: Path) -> PurePosixPath:
    """Where a file of the checkout is inside the images."""
    return APP_DIR / host_path.resolve().relative_to(REPO_ROOT).as_posix()


# ---------------------------------------------------------------------------- every service


def test_the_deployment_has_orthanc_postgres_redis_and_a_gpu_worker() -> None:
    assert {"orthanc", "postgres", "redis"} <= set(SERVICES)
    assert built_from(SERVICES["orthanc"]) == ORTHANC_DOCKERFILE
    assert any(gpu_reservations(s) for s in worker_services().values())


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_health_check_and_restarts(name: str) -> None:
    service = SERVICES[name]
    check = service.get("healthcheck")
    assert check, f"{name} has no healthcheck"
    assert not check.get("disable", False)
    test = check["test"]
    assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) >= 2, test
    assert service.get("restart") == "unless-stopped", f"{name}: restart policy"


def test_health_checks_probe_what_each_part_serves() -> None:
    def command(name: str) -> str:
        return " ".join(SERVICES[name]["healthcheck"]["test"][1:])

    assert "entrypoint.py health" in command("orthanc")  # GET /ai/health, with credentials
    assert "pg_isready" in command("postgres")
    assert "redis-cli ping" in command("redis")
    for name in worker_services():
        assert "inspect ping" in command(name) and "worker@$$HOSTNAME" in command(name)


@pytest.mark.parametrize("name", sorted(n for n, s in SERVICES.items() if "build" in s))
def test_build_context_and_dockerfile_exist(name: str) -> None:
    build = SERVICES[name]["build"]
    context = REPO_ROOT / build["context"]
    assert context.is_dir(), f"{name}: build context {context}"
    assert (context / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']}"
    image = SERVICES[name].get("image", "")
    assert image.startswith("ainode-"), f"{name}: built images are tagged ainode-*: {image}"


def test_bind_mounted_host_paths_exist_or_are_required_variables() -> None:
    seen = 0
    for name, service in SERVICES.items():
        for mount in volumes(service):
            if mount["type"] != "bind":
                continue
            seen += 1
            source = str(mount["source"])
            if "${" in source:
                refs = references(source)
                assert is_single_reference(source) and refs[0].required, (
                    f"{name}: {source} must be ${{NAME:?message}} so a missing value stops "
                    "compose instead of mounting an empty folder"
                )
            else:
                assert (REPO_ROOT / source).exists(), f"{name}: {source} is not in the repository"
            assert mount.get("read_only") is True, f"{name}: bind mounts are read-only: {source}"
    assert seen


def test_named_volumes_are_declared() -> None:
    declared = set(COMPOSE.get("volumes") or {})
    used = {m["source"] for s in SERVICES.values() for m in volumes(s) if m["type"] == "volume"}
    assert used and used <= declared, f"undeclared: {used - declared}"
    assert declared <= used, f"declared but unused: {declared - used}"


def test_state_lives_in_named_volumes() -> None:
    expected = {
        "orthanc": "/var/lib/ainode",
        "postgres": "/var/lib/postgresql/data",
        "redis": "/data",
        **dict.fromkeys(worker_services(), "/var/lib/ainode"),
    }
    for name, target in expected.items():
        mount = mount_target(SERVICES[name], PurePosixPath(target))
        assert mount is not None and mount["type"] == "volume", f"{name}: {target}"
    for name in ("orthanc", *worker_services()):
        assert environment(SERVICES[name])["AINODE_DATA_DIR"] == "/var/lib/ainode"


def test_depends_on_waits_for_healthy_services() -> None:
    def condition(name: str, dependency: str) -> str | None:
        depends = SERVICES[name].get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: use the long depends_on form"
        value = depends.get(dependency, {}).get("condition")
        return None if value is None else str(value)

    assert condition("orthanc", "postgres") == "service_healthy"
    for name in worker_services():
        assert condition(name, "redis") == "service_healthy"


# ---------------------------------------------------------------------------- GPU and queues


def test_workers_serving_gpu_queues_reserve_an_nvidia_gpu() -> None:
    workers = worker_services()
    assert len(workers) >= 2, "a GPU pool worker and a CPU pool worker"
    for name, service in workers.items():
        gpu_queues = [q for q in worker_queues(service) if ".gpu." in q]
        if gpu_queues:
            assert gpu_reservations(service), f"{name} serves {gpu_queues} without a GPU"
        if gpu_reservations(service):
            device = gpu_reservations(service)[0]
            assert device.get("count") or device.get("device_ids"), name
        else:
            assert all(".cpu." in q for q in worker_queues(service)), (
                f"{name} has no GPU: it should serve only the CPU pool"
            )


def test_worker_queues_are_queues_the_routing_rules_send_to() -> None:
    known = (
        set(all_queue_names())
        | set(all_queue_names("gpu"))
        | set(all_queue_names("cpu"))
        | {DELIVERY_QUEUE}
    )
    served: set[str] = set()
    for name, service in worker_services().items():
        queues = worker_queues(service)
        assert queues and set(queues) <= known, f"{name}: unknown queues {set(queues) - known}"
        served |= set(queues)
    assert served == known, f"no worker serves {known - served}"


# ---------------------------------------------------------------------------- settings


def _as_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def field_path_error(key: str) -> str | None:
    """Why ``AINODE_<KEY>`` names no settings field, or None.

    Nested names follow ``__``: into a sub-model's fields, or, for a mapping such as
    ``remote_modalities``, over a free key (``AINODE_REMOTE_MODALITIES__PACS__PORT``).
    """
    parts = key.removeprefix("AINODE_").lower().split("__")
    model: type[BaseModel] | None = Settings
    index = 0
    while index < len(parts):
        if model is None:
            return f"{key}: {'__'.join(parts[:index])} has no sub-fields"
        field = model.model_fields.get(parts[index])
        if field is None:
            return f"{key}: {parts[index]!r} is not a field of {model.__name__}"
        annotation = field.annotation
        if get_origin(annotation) is dict and index + 1 < len(parts):
            index += 1  # the mapping's key, any name
            model = _as_model(get_args(annotation)[1])
        else:
            model = _as_model(annotation)
        index += 1
    return None


def test_field_path_check_rejects_what_settings_would_ignore() -> None:
    assert field_path_error("AINODE_REDIS_URL") is None
    assert field_path_error("AINODE_REMOTE_MODALITIES__PACS__PORT") is None
    assert field_path_error("AINODE_REDIS_ADDRESS") is not None
    assert field_path_error("AINODE_REMOTE_MODALITIES__PACS__PROT") is not None


def test_every_ainode_variable_names_a_settings_field() -> None:
    keys = {k for s in SERVICES.values() for k in environment(s) if k.startswith("AINODE_")}
    assert keys
    problems = [p for p in map(field_path_error, sorted(keys)) if p]
    assert not problems, problems


@pytest.mark.parametrize("name", ["orthanc", *sorted(worker_services())])
def test_each_service_environment_gives_valid_settings(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The values compose hands the container build a Settings object that talks to the rest."""
    for key in [k for k in os.environ if k.startswith("AINODE_")]:
        monkeypatch.delenv(key)
    for key, value in environment(SERVICES[name]).items():
        if key.startswith("AINODE_"):
            monkeypatch.setenv(key, interpolate(value, DOTENV))
    settings = Settings()
    assert settings.broker_url.startswith(f"redis://:{DOTENV['REDIS_PASSWORD']}@redis:6379/")
    assert (settings.orthanc_username, settings.orthanc_password) == (
        DOTENV["ORTHANC_USERNAME"],
        DOTENV["ORTHANC_PASSWORD"],
    )
    assert settings.data_dir == Path("/var/lib/ainode")
    if name == "orthanc":
        assert settings.http_bind_all and settings.auth_enabled
    else:
        assert settings.orthanc_base_url == "http://orthanc:8042"


def test_published_ports_are_the_settings_ports() -> None:
    defaults = Settings.model_fields
    known = {
        defaults["http_port"].default,
        defaults["dicom_port"].default,
        defaults["redis_port"].default,
        defaults["door_port"].default,
    }
    assert known == {8042, 4242, 6379, 8443}
    orthanc_env = environment(SERVICES["orthanc"])
    # The container side is pinned, so a port set in configs/settings.yaml cannot move it.
    orthanc_ports = {int(orthanc_env["AINODE_HTTP_PORT"]), int(orthanc_env["AINODE_DICOM_PORT"])}
    assert orthanc_ports == {8042, 4242}
    for name, service in SERVICES.items():
        for mapping in service.get("ports", []):
            parts = split_outside_references(str(mapping))
            assert len(parts) in (2, 3), f"{name}: use host:container or ip:host:container"
            host, container = parts[-2], int(parts[-1])
            assert container in known, f"{name}: container port {container}"
            assert host == str(container) or is_single_reference(host), f"{name}: {mapping}"
            if name == "orthanc":
                assert container in orthanc_ports
    published = {int(split_outside_references(str(m))[-1]) for m in SERVICES["orthanc"]["ports"]}
    assert published == orthanc_ports
    door = {int(split_outside_references(str(m))[-1]) for m in SERVICES["door"]["ports"]}
    assert door == {int(environment(SERVICES["door"])["AINODE_DOOR_PORT"])}


def test_the_door_runs_nginx_from_the_orthanc_image_in_front_of_orthanc(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The door's environment gives settings whose nginx config proxies to the orthanc service."""
    from ainode.node.door import render_nginx_config

    door = SERVICES["door"]
    assert door["image"] == SERVICES["orthanc"]["image"]  # built by the orthanc service
    assert door["command"] == ["door"]
    assert "entrypoint.py door-health" in " ".join(door["healthcheck"]["test"][1:])
    assert door["depends_on"]["orthanc"]["condition"] == "service_healthy"
    mount = mount_target(door, PurePosixPath("/var/lib/ainode"))
    assert mount is not None and mount["type"] == "volume"  # the generated certificate stays
    for key in [k for k in os.environ if k.startswith("AINODE_")]:
        monkeypatch.delenv(key)
    for key, value in environment(door).items():
        monkeypatch.setenv(key, interpolate(value, DOTENV))
    settings = Settings()
    assert settings.door_tls and settings.auth_enabled and settings.door_bind_all
    config = render_nginx_config(settings, htpasswd=Path("/x/htpasswd"), certificate=None)
    assert "proxy_pass http://orthanc:8042;" in config
    assert "/ai/monailabel" not in config  # no interactive service in this deployment
    nginx_install = next(
        i.arguments
        for i in dockerfile_instructions(dockerfile(ORTHANC_DOCKERFILE))
        if i.keyword == "RUN" and "apt-get install" in i.arguments
    )
    assert re.search(r"\bnginx\b", nginx_install) and "openssl" in nginx_install


# ---------------------------------------------------------------------------- secrets


def test_no_literal_secrets_in_the_compose_file() -> None:
    for name, service in SERVICES.items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key):
                refs = references(value)
                assert is_single_reference(value) and refs[0].required, (
                    f"{name}: {key} must be ${{NAME:?message}} from .env, not a literal"
                )
        command = service.get("command") or []
        for flag, value in itertools.pairwise(command):
            if flag in ("--requirepass", "--masterauth", "--password"):
                assert is_single_reference(str(value)), f"{name}: {flag} takes a literal"
    for where, text in strings(COMPOSE):
        for userinfo in re.findall(r"://([^/@\s]*)@", text):
            _user, _, password = userinfo.partition(":")
            assert not password or is_single_reference(password), f"{where}: {text}"


def test_every_variable_is_documented_in_env_example() -> None:
    active, commented = env_example()
    used = {ref for _, text in strings(COMPOSE) for ref in references(text)}
    for ref in used:
        if ref.required:
            assert ref.name in active, f"{ref.name} is required: give it a line in env.example"
        else:
            assert ref.name in set(active) | commented, f"{ref.name} is not in docker/env.example"
    for name, value in active.items():
        if SECRET_NAME.search(name):
            assert value == "", f"env.example must not suggest a value for {name}"


def test_missing_required_variables_stop_compose() -> None:
    required = {ref.name for _, t in strings(COMPOSE) for ref in references(t) if ref.required}
    assert set(DOTENV) == required
    for name in required:
        partial = {k: v for k, v in DOTENV.items() if k != name}
        with pytest.raises(KeyError, match=name):
            for _, text in strings(COMPOSE):
                interpolate(text, partial)


# ---------------------------------------------------------------------------- images


def dockerfile(path: str) -> Path:
    return REPO_ROOT / path


@pytest.mark.parametrize("path", [ORTHANC_DOCKERFILE, WORKER_DOCKERFILE])
def test_files_copied_into_images_exist_and_are_not_dockerignored(path: str) -> None:
    patterns = dockerignore_patterns()
    copied = 0
    for instruction in dockerfile_instructions(dockerfile(path)):
        if instruction.keyword not in ("COPY", "ADD"):
            continue
        sources = copy_sources(instruction)
        if sources is None:
            continue
        for source in sources:
            copied += 1
            matches = (
                list(REPO_ROOT.glob(source))
                if any(c in source for c in "*?[")
                else [REPO_ROOT / source]
            )
            assert matches and all(m.exists() for m in matches), f"{path}:{instruction.line}"
            assert not is_ignored(source, patterns), f"{path}: .dockerignore drops {source}"
    assert copied


def test_dockerignore_keeps_secrets_state_and_weights_out_of_images() -> None:
    patterns = dockerignore_patterns()
    for path in (
        ".env",
        ".git/config",
        ".venv/bin/python",
        "var/credentials",
        "sample-data/models/x/fold_0/checkpoint_final.pth",
        "src/ainode/__pycache__/a.pyc",
    ):
        assert is_ignored(path, patterns), f"{DOCKERIGNORE.name} lets {path} into the images"


@pytest.mark.parametrize("path", [ORTHANC_DOCKERFILE, WORKER_DOCKERFILE])
def test_images_keep_the_checkout_where_the_compose_file_mounts_it(path: str) -> None:
    workdirs = [
        i.arguments for i in dockerfile_instructions(dockerfile(path)) if i.keyword == "WORKDIR"
    ]
    assert workdirs and workdirs[-1] == str(APP_DIR)
    part = "orthanc" if path == ORTHANC_DOCKERFILE else "worker"
    commands = [i for i in dockerfile_instructions(dockerfile(path)) if i.keyword == "CMD"]
    assert commands and json.loads(commands[-1].arguments)[-1] == part
    assert "docker/entrypoint.py" in dockerfile(path).read_text()


def test_orthanc_image_embeds_python_311() -> None:
    """The plugin's venv is 3.11; orthancteam/orthanc 24.3.3-25.4.0 are the 3.11 images."""
    requires = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert "3.11" in SpecifierSet(requires["requires-python"])
    froms = [
        i.arguments
        for i in dockerfile_instructions(dockerfile(ORTHANC_DOCKERFILE))
        if i.keyword == "FROM"
    ]
    assert len(froms) == 1
    image, _, tag = froms[0].partition(":")
    assert image == "orthancteam/orthanc"
    version = tuple(int(p) for p in tag.split("."))
    assert (24, 3, 3) <= version <= (25, 4, 0), (
        f"orthancteam/orthanc:{tag} does not embed Python 3.11 (see docker/orthanc.Dockerfile)"
    )


def test_worker_image_runs_python_311_on_cuda() -> None:
    instructions = dockerfile_instructions(dockerfile(WORKER_DOCKERFILE))
    assert instructions[0].keyword == "FROM" and instructions[0].arguments.startswith(
        "nvidia/cuda:"
    )
    assert "runtime" in instructions[0].arguments
    text = dockerfile(WORKER_DOCKERFILE).read_text()
    assert "python3.11 -m venv" in text
    # The pinned lock, less its CPU-only ONNX Runtime, then the GPU one: never both installed.
    assert "grep -v -E '^onnxruntime==' requirements.lock" in text
    assert "-r requirements-gpu.lock" in text and "! venv/bin/pip show -q onnxruntime" in text
    gpu_lock = (REPO_ROOT / "requirements-gpu.lock").read_text()
    assert re.search(r"^onnxruntime-gpu==", gpu_lock, re.M)


# ---------------------------------------------------------------------------- mounts vs code


def test_mounts_are_where_the_code_looks_for_its_files() -> None:
    settings_defaults = Settings.model_fields
    registry_file = settings_defaults["models_registry"].default
    rules_file = settings_defaults["routing_rules"].default
    models_root = load_registry(registry_file).models_root
    for name, service in SERVICES.items():
        if name not in ("orthanc", *worker_services()):
            continue
        models = mount_target(service, in_image(models_root))
        assert models is not None and models["target"] == str(in_image(models_root)), (
            f"{name}: the models folder must be mounted at {in_image(models_root)}, where "
            "configs/models.yaml's models_root points in the image"
        )
        configs = mount_target(service, in_image(registry_file))
        assert configs is not None and configs["type"] == "bind", name
        assert (REPO_ROOT / configs["source"]).resolve() == registry_file.parent
    orthanc = SERVICES["orthanc"]
    for needed in (rules_file, BASE_CONFIG):
        mount = mount_target(orthanc, in_image(needed))
        assert mount is not None and mount["type"] == "bind", needed


# ---------------------------------------------------------------------------- the guide


def test_the_guide_names_the_images_volumes_and_variables_that_exist() -> None:
    guide = (REPO_ROOT / "docs" / "deploying.md").read_text()
    images = [str(SERVICES[n]["image"]) for n in ("postgres", "redis")]
    for path in (ORTHANC_DOCKERFILE, WORKER_DOCKERFILE):
        first = dockerfile_instructions(dockerfile(path))[0]
        images.append(first.arguments.split()[0])
    for image in images:
        assert f"`{image}`" in guide, f"docs/deploying.md does not name {image}"
    # Volume names as docker sees them: <project name>_<volume>.
    assert COMPOSE["name"] == "ainode"
    # Docker's names, not paths or module names such as worker/ainode_worker/...
    for volume in re.findall(r"(?<![\w/.])ainode_([a-z0-9-]+)", guide):
        assert volume in COMPOSE["volumes"], f"the guide names volume ainode_{volume}"
    active, commented = env_example()
    for variable in re.findall(r"^\s*([A-Z][A-Z0-9_]+)=", guide, flags=re.MULTILINE):
        assert variable in set(active) | commented, f"the guide sets {variable}"


def test_the_delivery_worker_shares_the_data_volume_of_every_worker_it_delivers_for() -> None:
    """Delivery reads the results where the inference worker wrote them (its data dir)."""
    workers = worker_services()
    delivering = [n for n, s in workers.items() if DELIVERY_QUEUE in worker_queues(s)]
    assert delivering, "no worker serves the delivery queue"
    data = PurePosixPath("/var/lib/ainode")
    for name in delivering:
        assert not gpu_reservations(workers[name]), f"{name}: delivery needs no GPU"
        assert worker_queues(workers[name]) == [DELIVERY_QUEUE], f"{name}: delivery only"
    sources = {n: mount_target(s, data)["source"] for n, s in workers.items()}  # type: ignore[index]
    delivered = {sources[n] for n in delivering}
    for name in workers:
        assert sources[name] in delivered, f"{name}'s results are on a volume no delivery reads"
