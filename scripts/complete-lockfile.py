#!/usr/bin/env python3
"""Adds lockfile entries for optional platform packages that the package registry mirror
used to make the lockfile does not serve (other operating systems' prebuilt binaries).

npm leaves an optional dependency out of package-lock.json when it cannot fetch it, and
`npm ci` then refuses the lockfile as out of sync, on every machine. The added entries name
the exact version the parent package pins, the registry tarball, and the os/cpu the package
is built for (from its name), so npm skips them on other platforms as it always does.
Run after `npm install` whenever package-lock.json is regenerated.
"""
import json
import sys

PATH = sys.argv[1] if len(sys.argv) > 1 else "package-lock.json"
OS_BY_PART = {"android": "android", "darwin": "darwin", "mac": "darwin", "freebsd": "freebsd",
              "linux": "linux", "win32": "win32", "win": "win32"}
CPU_BY_PART = {"arm64": "arm64", "arm": "arm", "armv7l": "arm", "x64": "x64", "ia32": "ia32",
               "riscv64": "riscv64", "ppc64": "ppc64", "s390x": "s390x", "wasm32": "wasm32"}


def platform_of(name: str):
    parts = name.split("/")[-1].split("-")
    os_ = next((OS_BY_PART[p] for p in parts if p in OS_BY_PART), None)
    cpu = next((CPU_BY_PART[p] for p in parts if p in CPU_BY_PART), None)
    return os_, cpu


def is_installed_from(packages: dict, parent: str, dep: str) -> bool:
    # Node resolution: look in parent's node_modules, then each enclosing one up to the root.
    base = parent
    while True:
        if f"{base}/node_modules/{dep}".lstrip("/") in packages:
            return True
        if not base:
            return False
        base = base.rsplit("/node_modules/", 1)[0] if "/node_modules/" in base else ""


lock = json.load(open(PATH))
packages = lock["packages"]
added = 0
for parent, meta in list(packages.items()):
    for dep, version in (meta.get("optionalDependencies") or {}).items():
        if is_installed_from(packages, parent, dep):
            continue
        os_, cpu = platform_of(dep)
        entry = {"version": version,
                 "resolved": f"https://registry.npmjs.org/{dep}/-/{dep.split('/')[-1]}-{version}.tgz",
                 "optional": True}
        if meta.get("dev"):
            entry["dev"] = True
        if os_:
            entry["os"] = [os_]
        if cpu:
            entry["cpu"] = [cpu]
        packages[f"node_modules/{dep}"] = entry
        added += 1
lock["packages"] = dict(sorted(packages.items(), key=lambda kv: (kv[0] != "", kv[0])))
json.dump(lock, open(PATH, "w"), indent=2)
open(PATH, "a").write("\n")
print(f"added {added} optional platform entries to {PATH}")
