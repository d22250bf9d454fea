"""Orthanc's configuration: the base file in ``orthanc/`` overlaid with the node's settings.

When the OHIF viewer is installed (``scripts/bootstrap.sh`` extracts the prebuilt viewer into
``build/ohif/``), Orthanc also serves it under ``/ohif/`` with its ServeFolders plugin, and the
viewer's configuration (``app-config.js``, pointing at this node's own DICOMweb) is written into
the data directory next to Orthanc's. The node's plugin answers the viewer's few dynamic paths
(its configuration, ``index.html`` for the viewer's client-side routes); for that, the Python
plugin must be loaded before ServeFolders: Orthanc hands a URI to the first plugin route that
matches, in the order the plugins registered them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ainode.settings import REPO_ROOT, Settings

BASE_CONFIG = REPO_ROOT / "orthanc" / "orthanc.json"
PLUGIN_ENTRY = REPO_ROOT / "plugin" / "entry.py"
PLUGIN_LIBRARIES = ("libOrthancPython.so", "libOrthancDicomWeb.so")
SERVE_FOLDERS_LIBRARY = "libServeFolders.so"  # loaded after PLUGIN_LIBRARIES, see above
POSTGRES_INDEX_LIBRARY = "libOrthancPostgreSQLIndex.so"  # Debian package orthanc-postgresql

OHIF_DIR = REPO_ROOT / "build" / "ohif" / "current"  # the pinned version, set by bootstrap.sh
OHIF_MOUNT = "/ohif"  # bootstrap.sh rebases the prebuilt viewer's public path onto this
OHIF_CONFIG_FILENAME = "ohif-app-config.js"
# The node's OHIF extension (AI panel, click-to-segment), served by the plugin's UI routes
# (plugin/ainode_plugin/static); OHIF imports extensions it does not bundle by URL.
OHIF_EXTENSIONS = ("/ai/ui/ohif-ai-extension.js",)


def render_orthanc_config(
    settings: Settings,
    *,
    credentials: tuple[str, str] | None,
    settings_file: Path,
    site_packages: list[str],
) -> dict[str, Any]:
    """The JSON Orthanc reads; ``settings_file`` is the effective settings the plugin loads."""
    config: dict[str, Any] = json.loads(BASE_CONFIG.read_text())
    storage = settings.data_dir / "orthanc" / "storage"
    config.update(
        {
            "Name": settings.node_name,
            "HttpPort": settings.http_port,
            "DicomPort": settings.dicom_port,
            "DicomAet": settings.dicom_aet,
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "RemoteAccessAllowed": settings.http_bind_all,
            "AuthenticationEnabled": credentials is not None,
            "RegisteredUsers": dict([credentials]) if credentials else {},
            "StableAge": settings.stable_age_s,
            "Plugins": [str(settings.orthanc_plugins_dir / lib) for lib in PLUGIN_LIBRARIES],
            "PythonScript": str(PLUGIN_ENTRY),
            "PythonVerbose": settings.orthanc_verbose,
            "DicomModalities": {
                name: [m.aet, m.host, m.port] for name, m in settings.remote_modalities.items()
            },
            "AINode": {"SettingsFile": str(settings_file), "SitePackages": site_packages},
        }
    )
    if settings.orthanc_index == "postgresql":
        config["Plugins"].append(str(settings.orthanc_plugins_dir / POSTGRES_INDEX_LIBRARY))
        config["PostgreSQL"] = postgres_section(settings)
    serve_folders = settings.orthanc_plugins_dir / SERVE_FOLDERS_LIBRARY
    if ohif_installed() and serve_folders.exists():
        config["Plugins"].append(str(serve_folders))
        config["ServeFolders"] = {
            # Bundle names carry a content hash; index.html and app-config.js, which do not,
            # are answered by the node's plugin without caching.
            "AllowCache": True,
            "GenerateETag": True,
            "Extensions": {".mjs": "application/javascript", ".map": "application/json"},
            "Folders": {OHIF_MOUNT: str(OHIF_DIR.resolve())},
        }
    return config


def check_plugins_installed(config: dict[str, Any]) -> None:
    """Raise with what to install when a plugin the configuration loads is not on disk.

    Orthanc itself would only exit with a line in its log; ``ainode up`` says it up front.
    """
    for library in map(Path, config.get("Plugins", [])):
        if not library.exists():
            package = _PLUGIN_PACKAGES.get(library.name, "the Orthanc plugin's package")
            raise FileNotFoundError(
                f"Orthanc plugin {library} does not exist: install {package} "
                "(or set orthanc_plugins_dir)"
            )


_PLUGIN_PACKAGES = {
    "libOrthancPython.so": "the Debian package orthanc-python",
    "libOrthancDicomWeb.so": "the Debian package orthanc-dicomweb",
    POSTGRES_INDEX_LIBRARY: "the Debian package orthanc-postgresql (orthanc_index: postgresql)",
}


def postgres_section(settings: Settings) -> dict[str, Any]:
    """The ``PostgreSQL`` section of the orthanc-postgresql plugin: index only, no storage.

    ``Lock`` keeps a second Orthanc off the same database (two writers would corrupt it).
    """
    index = settings.postgresql
    section: dict[str, Any] = {
        "EnableIndex": True,
        "EnableStorage": False,
        "Host": index.host,
        "Port": index.port,
        "Database": index.database,
        "Username": index.username,
        "Lock": True,
    }
    password = index.resolved_password()
    if password:
        section["Password"] = password
    return section


def write_orthanc_config(settings: Settings, config: dict[str, Any]) -> Path:
    folder = settings.data_dir / "orthanc"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "orthanc.json"
    path.touch(mode=0o600)  # it holds the credentials
    path.write_text(json.dumps(config, indent=2))
    if OHIF_MOUNT in config.get("ServeFolders", {}).get("Folders", {}):
        ohif_config_path(settings).write_text(render_ohif_app_config(config))
    return path


def ohif_installed() -> bool:
    return (OHIF_DIR / "index.html").is_file()


def ohif_config_path(settings: Settings) -> Path:
    """Where ``ainode up`` writes the viewer's ``app-config.js`` (the plugin serves it)."""
    return settings.data_dir / "orthanc" / OHIF_CONFIG_FILENAME


def render_ohif_app_config(config: dict[str, Any]) -> str:
    """OHIF 3's ``window.config`` for this node: its own DICOMweb, on the viewer's origin.

    The roots are made absolute in the browser from ``window.location.origin``, so the viewer
    works under any host name or proxy in front of Orthanc, and the browser reuses its Basic
    auth login for these same-origin requests.
    """
    dicomweb = config.get("DicomWeb", {})
    root = "/" + str(dicomweb.get("Root", "/dicom-web/")).strip("/")
    wado_uri = "/" + str(dicomweb.get("WadoRoot", "/wado")).strip("/")
    app_config = {
        "routerBasename": OHIF_MOUNT,
        "extensions": list(OHIF_EXTENSIONS),
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 3,
        "showLoadingIndicator": True,
        "showCPUFallbackMessage": True,
        "strictZSpacingForVolumeViewport": True,
        "groupEnabledModesFirst": True,
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 25},
        "showErrorDetails": "always",
        "defaultDataSourceName": "ainode",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "ainode",
                "configuration": {
                    "friendlyName": f"{config.get('Name', 'AI node')} (Orthanc DICOMweb)",
                    "name": "ainode",
                    "qidoRoot": root,
                    "wadoRoot": root,
                    "wadoUriRoot": wado_uri,
                    # Orthanc's DICOMweb plugin answers includefield=<tags> (StudyDescription
                    # only when asked; see _DECODE_INCLUDEFIELD); exact matching only.
                    "qidoSupportsIncludeField": True,
                    "supportsReject": False,
                    "supportsFuzzyMatching": False,
                    "supportsWildcard": True,
                    "imageRendering": "wadors",
                    "thumbnailRendering": "wadors",
                    "enableStudyLazyLoad": True,
                    "staticWado": False,
                    "singlepart": "bulkdata,video",
                    "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
                    "omitQuotationForMultipartRequest": True,
                },
            }
        ],
    }
    return (
        "/* OHIF viewer configuration written by `ainode up` (src/ainode/node/orthanc_config.py);\n"
        " * rewritten at every start. */\n"
        f"window.config = {json.dumps(app_config, indent=2)};\n"
        "(function (sources) {\n"
        "  var origin = window.location.origin;\n"
        "  sources.forEach(function (source) {\n"
        "    var c = source.configuration;\n"
        "    ['qidoRoot', 'wadoRoot', 'wadoUriRoot'].forEach(function (key) {\n"
        "      if (c[key].charAt(0) === '/') { c[key] = origin + c[key]; }\n"
        "    });\n"
        "  });\n"
        "})(window.config.dataSources);\n" + _DECODE_INCLUDEFIELD
    )


# OHIF asks for StudyDescription and ModalitiesInStudy with includefield=00081030,00080060,...
# but its DICOMweb client sends the commas URL-encoded (%2C), which Orthanc's DICOMweb plugin 1.7
# does not split (measured: it then returns neither tag, and the study list says "No
# Description"). The viewer's QIDO requests go out with plain commas instead.
_DECODE_INCLUDEFIELD = """\
(function (open) {
  XMLHttpRequest.prototype.open = function (method, url) {
    var args = Array.prototype.slice.call(arguments);
    if (typeof url === 'string' && url.indexOf('includefield=') >= 0) {
      args[1] = url.replace(/includefield=[^&#]*/g, function (p) {
        return p.replace(/%2C/gi, ',');
      });
    }
    return open.apply(this, args);
  };
})(XMLHttpRequest.prototype.open);
"""
