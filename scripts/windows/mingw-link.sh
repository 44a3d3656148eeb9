#!/usr/bin/env bash
# Cargo's linker for x86_64-pc-windows-gnu: MinGW-w64's gcc, with the C++ runtime that
# openh264 needs linked statically: the cc crate asks for `-lstdc++` (the import library of
# libstdc++-6.dll, which the exe would then have to ship with); this turns it into
# `-l:libstdc++.a`, so guruconnect-agent.exe only needs system DLLs.
# (A linker wrapper rather than RUSTFLAGS, so the std and dependencies are not rebuilt.)
args=()
for arg in "$@"; do
  case "$arg" in
    -lstdc++) args+=("-l:libstdc++.a") ;;
    *) args+=("$arg") ;;
  esac
done
exec x86_64-w64-mingw32-gcc "${args[@]}"
