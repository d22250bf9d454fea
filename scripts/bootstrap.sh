#!/usr/bin/env bash
# Installs what the node needs and is missing; running it again installs nothing new.
#   Debian packages: Orthanc with its Python and DICOMweb plugins, DCMTK, Redis, dicom3tools.
#   A Python 3.11 virtual environment made with Debian's interpreter (the one Orthanc embeds,
#   so packages built for it import inside the plugin), filled from requirements.lock.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${AINODE_VENV:-.venv}"
DEB_PACKAGES=(orthanc orthanc-python orthanc-dicomweb dcmtk redis-server dicom3tools python3.11-venv)
if [ "${AINODE_WITH_TEST_TOOLS:-0}" = 1 ]; then
  DEB_PACKAGES+=(orthanc-postgresql chromium)
fi

missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

stamp="$VENV/.ainode-installed"
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV with /usr/bin/python3.11"
  /usr/bin/python3.11 -m venv "$VENV"
fi
echo "bootstrap: installing Python packages into $VENV (first time: several minutes)"
"$VENV/bin/pip" install -q --disable-pip-version-check -U "pip>=24" setuptools wheel
"$VENV/bin/pip" install -q --disable-pip-version-check -r requirements.lock
# sam2 ships as a source archive; building it in isolation would download another torch.
SAM2_BUILD_CUDA=0 "$VENV/bin/pip" install -q --disable-pip-version-check \
  --no-build-isolation --no-deps "sam2==1.1.0"
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -e .
echo "$want" > "$stamp"
