"""Configuration: TOML files -> one validated, immutable model.

Theory of operation
-------------------
1. Parse the main file and every ``conf.d/*.toml`` beside it (lexical order) with tomllib.
   A syntax error is reported with file, line and column; if any file fails to parse we
   stop there (validating half a configuration produces misleading errors).
2. Merge: drop-ins may only contain ``[services.NAME]`` tables. A service defined twice is
   an error naming both files.
3. Validate each section and each service separately with frozen pydantic models
   (``extra="forbid"``), so one broken service does not hide the errors of another.
   Per-check timing (interval, timeout, ...) is inherited from the service while validating,
   so every check model carries its *effective* values.
4. Cross-field and cross-section rules run over the validated pieces.
5. Every problem becomes a ``ConfigIssue(file, key, message)``; if there is any, one
   ``ConfigError`` carries them all. Pydantic's messages never reach the user unmapped.

Models are frozen and hashable: two loads of an unchanged service compare equal, which is
how a reload finds the services it must leave alone.
"""

from anycastd.config.errors import ConfigError, ConfigIssue, ConfigNotFound
from anycastd.config.files import DEFAULT_CONFIG_PATH, load_config, loads
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
    MetricsConfig,
    OspfConfig,
    OspfMetric,
    RealServer,
    ServiceBgp,
    ServiceConfig,
    TcpCheck,
    TlsCheck,
)

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
    "MetricsConfig",
    "OspfConfig",
    "OspfMetric",
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
