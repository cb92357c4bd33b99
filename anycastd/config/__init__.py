"""Configuration: TOML files -> one validated, immutable model.

Theory of operation
-------------------
1. Parse the main file and every ``conf.d/*.toml`` beside it (lexical order) with tomllib.
   A syntax error is reported with file, line and column; if any file fails to parse we
   stop there (validating half a configuration produces misleading errors).
2. Merge: drop-ins may only contain ``[services.NAME]`` tables. A service defined twice is
   an error naming both files (files.py).
3. Validate each section and each service separately with frozen pydantic models
   (``extra="forbid"``), so one broken service does not hide the errors of another.
   Per-check timing (interval, timeout, ...) is inherited from the service while validating,
   so every check model carries its *effective* values (schema.py; field types in scalars.py).
4. Cross-field and cross-section rules run over the validated pieces (checks.py).
5. Every problem becomes a ``ConfigIssue(file, key, message)``; if there is any, one
   ``ConfigError`` carries them all (errors.py). Pydantic's messages never reach the user
   unmapped (messages.py).

Models are frozen and hashable: two loads of an unchanged service compare equal, which is
how a reload finds the services it must leave alone. ``dump`` and ``summarize`` are in
render.py.
"""

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from anycastd.config.errors import ConfigError, ConfigIssue, ConfigNotFound

if TYPE_CHECKING:
    from anycastd.config.files import load_config, loads
    from anycastd.config.ospf import OspfGlobal
    from anycastd.config.render import dump, summarize
    from anycastd.config.schema import (
        CHECK_TYPES,
        ApiConfig,
        BgpConfig,
        BgpNeighbor,
        BgpStateAttrs,
        Check,
        Config,
        Damping,
        DnsCheck,
        ExecCheck,
        FileCheck,
        GlobalConfig,
        HttpCheck,
        HttpsCheck,
        IpvsConfig,
        LinkCheck,
        ListenCheck,
        MetricsConfig,
        OspfConfig,
        OspfMetric,
        ProcessCheck,
        RealServer,
        ServiceBgp,
        ServiceConfig,
        TcpCheck,
        TlsCheck,
    )

# Where the CLI looks without -c. Defined here, not in files.py, so that reading it (and
# catching ConfigError) does not load the schema.
DEFAULT_CONFIG_PATH = Path("/etc/anycastd/anycastd.toml")

__all__ = [
    "CHECK_TYPES",
    "DEFAULT_CONFIG_PATH",
    "ApiConfig",
    "BgpConfig",
    "BgpNeighbor",
    "BgpStateAttrs",
    "Check",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "ConfigNotFound",
    "Damping",
    "DnsCheck",
    "ExecCheck",
    "FileCheck",
    "GlobalConfig",
    "HttpCheck",
    "HttpsCheck",
    "IpvsConfig",
    "LinkCheck",
    "ListenCheck",
    "MetricsConfig",
    "OspfConfig",
    "OspfGlobal",
    "OspfMetric",
    "ProcessCheck",
    "RealServer",
    "ServiceBgp",
    "ServiceConfig",
    "TcpCheck",
    "TlsCheck",
    "dump",
    "load_config",
    "loads",
    "summarize",
]

if not TYPE_CHECKING:  # mypy reads the imports above; a typo stays a type error

    def __getattr__(name: str) -> object:
        # The schema costs ~0.1 s to import (pydantic, dnspython): the names that need it load
        # on first use, so `anycastd --version` and the CLI's error handling never pay for it
        # (measured: `import anycastd.cli` 169 -> 59 ms, `anycastd --version` 0.23 -> 0.09 s).
        if name in __all__:
            for module in ("schema", "files", "render"):
                namespace = vars(importlib.import_module(f"{__name__}.{module}"))
                if name in namespace:
                    globals()[name] = namespace[name]
                    return namespace[name]
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
