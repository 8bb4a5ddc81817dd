#!/usr/bin/env bash
# Installs the system libraries the instrument needs, only where they are missing.
#   runtime: PortAudio, libsndfile, python venv, a C compiler and Python's headers (the audio core,
#            instrument/rt, is compiled at install)
#   test: + jackd2 (JACK dummy server for audio and MIDI tests), puredata-core (a real OSC peer)
set -euo pipefail
what=${1:-runtime}

if [[ "$(uname -s)" == "Darwin" ]]; then
  command -v brew >/dev/null && { brew list portaudio >/dev/null 2>&1 || brew install portaudio libsndfile; }
  # the audio core needs a C compiler: the Command Line Tools have one
  command -v cc >/dev/null || { echo "system-deps: no C compiler: run \`xcode-select --install\`, then again" >&2; exit 1; }
  exit 0
fi
if ! command -v dpkg >/dev/null; then
  echo "system-deps: not a Debian/Ubuntu system: install PortAudio and libsndfile (and jackd2 for tests) yourself" >&2
  exit 0
fi

pkgs=(libportaudio2 libsndfile1)
python3 -c "import ensurepip, venv" 2>/dev/null || pkgs+=(python3-venv)
command -v cc >/dev/null || pkgs+=(gcc libc6-dev)
python3 -c "import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
  || pkgs+=(python3-dev)
[[ "$what" == test ]] && pkgs+=(jackd2 puredata-core)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

sudo=""
[[ $(id -u) -ne 0 ]] && sudo="sudo"
echo "system-deps: installing ${missing[*]}" >&2
# jackd2 asks whether to enable realtime scheduling; the tests run jackd without it.
echo "jackd2 jackd/tweak_rt_limits boolean false" | $sudo debconf-set-selections
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
