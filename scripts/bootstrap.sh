#!/usr/bin/env bash
# Installs what the node needs and is missing; running it again installs nothing new.
#   Debian packages: Orthanc with its Python and DICOMweb plugins, DCMTK, Redis, dicom3tools.
#   A Python 3.11 virtual environment made with Debian's interpreter (the one Orthanc embeds,
#   so packages built for it import inside the plugin), filled from requirements.lock.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${AINODE_VENV:-.venv}"
DEB_PACKAGES=(orthanc orthanc-python orthanc-dicomweb dcmtk redis-server dicom3tools python3.11-venv nginx openssl)
if [ "${AINODE_WITH_TEST_TOOLS:-0}" = 1 ]; then
  DEB_PACKAGES+=(orthanc-postgresql postgresql chromium)  # postgresql: tests/integration/test_postgres.py
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

# The OHIF viewer, prebuilt (npm package @ohif/app; nothing is built), served by Orthanc under
# /ohif/. The package is built for the web root, so its public path ("/") is rebased onto /ohif/
# in index.html, in the bundles that load chunks, workers, WebAssembly and the microscopy viewer,
# and in the style sheets' font URLs. build/ohif/current names the pinned version
# (src/ainode/node/orthanc_config.py serves it from there).
OHIF_VERSION=3.13.2
OHIF_SHA512=5997719a9986eeba85816f5924b71b82bdd70ad2e2d4a0cd3e831a798e4f3deea3e06e1f8c48e393271933a0ba664d85f3b04ac457e9abe8dde715d907d13c10
OHIF_MOUNT=/ohif/
ohif_dir="build/ohif/$OHIF_VERSION"
if [ ! -f "$ohif_dir/.ainode-installed" ]; then
  echo "bootstrap: installing the OHIF viewer $OHIF_VERSION into $ohif_dir"
  ohif_tmp=$(mktemp -d)
  trap 'rm -rf "$ohif_tmp"' EXIT
  tarball="$ohif_tmp/ohif-app-$OHIF_VERSION.tgz"
  if command -v npm > /dev/null; then
    (cd "$ohif_tmp" && npm pack --silent "@ohif/app@$OHIF_VERSION" > /dev/null)
  else
    curl -fsSL -o "$tarball" "https://registry.npmjs.org/@ohif/app/-/app-$OHIF_VERSION.tgz"
  fi
  echo "$OHIF_SHA512  $tarball" | sha512sum --check --status \
    || { echo "bootstrap: $tarball does not match the pinned checksum" >&2; exit 1; }
  tar -xzf "$tarball" -C "$ohif_tmp"
  dist="$ohif_tmp/package/dist"
  sed -i -e "s#window.PUBLIC_URL=\"/\"#window.PUBLIC_URL=\"$OHIF_MOUNT\"#g" \
    -e "s#\\(src\\|href\\)=\"/\\([^/]\\)#\\1=\"$OHIF_MOUNT\\2#g" "$dist/index.html"
  grep -l -e '__webpack_require__.p = "/";' -e "browserImportFunction('/" "$dist"/*.js \
    | xargs -r sed -i -e "s#__webpack_require__.p = \"/\";#__webpack_require__.p = \"$OHIF_MOUNT\";#" \
      -e "s#browserImportFunction('/#browserImportFunction('$OHIF_MOUNT#g"
  sed -i "s#url(/\([^/]\)#url($OHIF_MOUNT\1#g" "$dist"/*.css
  rm -rf "$ohif_dir"
  mkdir -p "$(dirname "$ohif_dir")"
  mv "$dist" "$ohif_dir"
  echo "$OHIF_VERSION" > "$ohif_dir/.ainode-installed"
  rm -rf "$ohif_tmp"
  trap - EXIT
fi
ln -sfn "$OHIF_VERSION" build/ohif/current

# Tests only: MONAI Label's own Python client (tests/integration/test_door_monailabel.py), from
# its pinned wheel taken whole with --no-deps into build/monailabel/; the tests import
# monailabel.client from the zip (it needs only requests), nothing of the server is installed.
MONAILABEL_CLIENT_PIN="monailabel==0.8.5 --hash=sha256:0c2c9bd72c8f9862c0c182d14e7f2637c53ccd616f9ffa584f619b1040f1fc6b"
fetch_test_wheels() {
  [ "${AINODE_WITH_TEST_TOOLS:-0}" = 1 ] || return 0
  compgen -G "build/monailabel/monailabel-0.8.5-*.whl" > /dev/null && return 0
  echo "bootstrap: downloading the MONAI Label client wheel into build/monailabel"
  mkdir -p build/monailabel
  "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps --require-hashes \
    -d build/monailabel -r /dev/stdin <<< "$MONAILABEL_CLIENT_PIN"
}

stamp="$VENV/.ainode-installed"
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  fetch_test_wheels
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
# TotalSegmentator: only its task and label tables are used, which import nothing (pyproject.toml).
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps "TotalSegmentator==2.18.0"
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -e .
echo "$want" > "$stamp"
fetch_test_wheels
