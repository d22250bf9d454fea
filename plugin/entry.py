"""The script Orthanc's Python plugin runs (``PythonScript``): it finds the node's packages.

Orthanc embeds Debian's Python 3.11; the node's packages live in a virtual environment made from
that same interpreter. ``ainode up`` writes that environment's site-packages into the ``AINode``
section of Orthanc's configuration. This is the only place that edits ``sys.path``.
"""

import json
import site
import sys

import orthanc

_section = json.loads(orthanc.GetConfiguration()).get("AINode", {})
for _site_dir in _section.get("SitePackages", []):
    _before = list(sys.path)
    site.addsitedir(_site_dir)
    # Venv packages (and editable installs' finders) must win over Debian's dist-packages, but
    # not over the standard library (PyPI holds stale copies of stdlib modules, e.g. argparse).
    _added = [p for p in sys.path if p not in _before]
    _first_dist = next((i for i, p in enumerate(_before) if "-packages" in p), len(_before))
    sys.path[:] = _before[:_first_dist] + _added + _before[_first_dist:]

from ainode_plugin.main import start_plugin  # noqa: E402

start_plugin(orthanc, _section.get("SettingsFile"))
