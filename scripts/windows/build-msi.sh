#!/usr/bin/env bash
# Builds the agent's MSI (guruconnect.msi) on Linux with wixl from installer/windows/guruconnect.wxs,
# around the exe that build-agent.sh built. Signs the exe and the MSI with sign.sh when a
# certificate is configured (GURUCONNECT_SIGN_PKCS12; see sign.sh); with
# GURUCONNECT_REQUIRE_SIGNING=1 it fails rather than produce an unsigned artifact.
# Prints the MSI's path.
#
#   scripts/windows/build-msi.sh [--release] [--out FILE]
#
# The MSI is written next to the exe (target dir) unless --out is given. Installs msitools,
# wixl and osslsigncode when they are missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

out=""
while (($#)); do
  case "$1" in
    --release) export GURUCONNECT_WINDOWS_PROFILE=release ;;
    --out)
      out="${2:?--out needs a file}"
      shift
      ;;
    -h | --help)
      sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "unknown argument: $1 (try --help)" >&2
      exit 2
      ;;
  esac
  shift
done

missing=()
for pkg in wixl msitools osslsigncode; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# shellcheck source=env.sh
. scripts/windows/env.sh
exe="$GURUCONNECT_WINDOWS_AGENT_EXE"
[ -f "$exe" ] || {
  echo "no Windows agent at $exe: run scripts/windows/build-agent.sh first" >&2
  exit 1
}
[ -n "$out" ] || out="$(dirname "$exe")/guruconnect.msi"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
cp "$exe" "$stage/guruconnect-agent.exe"
bash scripts/windows/sign.sh "$stage/guruconnect-agent.exe"

# wixl resolves File/@Source against the working directory.
(cd "$stage" && wixl -a x64 -D Version="$version" -o "$stage/guruconnect.msi" \
  "$GURUCONNECT_REPO_ROOT/installer/windows/guruconnect.wxs")

# What wixl has no element for: launch conditions (a missing property installs nothing) and
# an Upgrade row that also matches the same version (a rebuilt MSI upgrades in place).
cat >"$stage/LaunchCondition.idt" <<'EOF'
Condition	Description
s255	l255
LaunchCondition	Condition
Installed OR WIX_UPGRADE_DETECTED OR SERVER_URL	GuruConnect: SERVER_URL is required: msiexec /i guruconnect.msi SERVER_URL=https://support.example.com SITE_CODE=<site code> ENROLLMENT_KEY=<site enrollment key>
Installed OR WIX_UPGRADE_DETECTED OR SITE_CODE	GuruConnect: SITE_CODE is required: msiexec /i guruconnect.msi SITE_CODE=<site code> ENROLLMENT_KEY=<site enrollment key>
Installed OR WIX_UPGRADE_DETECTED OR ENROLLMENT_KEY	GuruConnect: ENROLLMENT_KEY is required (the site's enrollment key, from the console's Sites page): msiexec /i guruconnect.msi ENROLLMENT_KEY=<site enrollment key>
EOF
msibuild "$stage/guruconnect.msi" -i "$stage/LaunchCondition.idt"
# libmsi has no UPDATE: export the Upgrade table, set VersionMaxInclusive (512) on the
# upgrade row, import it back.
msiinfo export "$stage/guruconnect.msi" Upgrade |
  awk -F '\t' -v OFS='\t' '{ sub(/\r$/, "") } NR > 3 && $7 == "WIX_UPGRADE_DETECTED" { $5 = 513 } { printf "%s\r\n", $0 }' \
    >"$stage/Upgrade.idt"
msibuild "$stage/guruconnect.msi" -i "$stage/Upgrade.idt"

bash scripts/windows/sign.sh "$stage/guruconnect.msi"
mkdir -p "$(dirname "$out")"
cp "$stage/guruconnect.msi" "$out.tmp"
mv "$out.tmp" "$out"
echo "$out"
