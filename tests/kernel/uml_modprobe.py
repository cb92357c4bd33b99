"""Minimal modprobe for the UML guest (the host may have no kmod installed).

Usage: python uml_modprobe.py MODDIR MODULE...  Loads each module after its dependencies
(from MODDIR/modules.dep) with finit_module(2). Already loaded modules are fine. Exit 1 if
any named module could not be loaded.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys

SYS_FINIT_MODULE = 313  # x86_64; UML on x86_64 uses the host's numbering


def read_deps(moddir: str) -> dict[str, tuple[str, list[str]]]:
    deps: dict[str, tuple[str, list[str]]] = {}
    with open(os.path.join(moddir, "modules.dep"), encoding="utf-8") as f:
        for line in f:
            path, _, rest = line.partition(":")
            deps[_name(path)] = (path, [_name(p) for p in rest.split()])
    return deps


def _name(path: str) -> str:
    return os.path.basename(path).removesuffix(".ko").replace("-", "_")


def main(argv: list[str]) -> int:
    moddir, names = argv[0], argv[1:]
    deps = read_deps(moddir)
    libc = ctypes.CDLL(None, use_errno=True)
    loaded: set[str] = set()
    failed = 0

    def load(name: str) -> bool:
        if name in loaded:
            return True
        if name not in deps:
            print(f"uml_modprobe: {name}: not found (builtin?)", file=sys.stderr)
            return False
        path, needs = deps[name]
        for dep in needs:
            load(dep)
        fd = os.open(os.path.join(moddir, path), os.O_RDONLY | os.O_CLOEXEC)
        try:
            rc = libc.syscall(SYS_FINIT_MODULE, fd, b"", 0)
        finally:
            os.close(fd)
        err = ctypes.get_errno()
        if rc != 0 and err != errno.EEXIST:
            print(f"uml_modprobe: {name}: {os.strerror(err)}", file=sys.stderr)
            return False
        loaded.add(name)
        return True

    for name in names:
        if not load(name.replace("-", "_")):
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
