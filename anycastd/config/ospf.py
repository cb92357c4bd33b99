"""The ``[ospf]`` section: how anycastd's OSPF routes reach the node's routing daemon.

Per-service settings (area, metric per state) are ``[services.NAME.ospf]`` (``schema``);
this section says which daemon, which dialect, and whether anycastd only renders the
configuration to a file or also applies it (see docs/ospf.md).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, Strict, model_validator
from pydantic_core import PydanticCustomError

from anycastd.config.scalars import AbsPath, Duration, PositiveDuration

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,39}")


def _v_object_name(value: object) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise PydanticCustomError(
            "name",
            "expected a route-map/prefix-list name: a letter, then letters, digits, '_' or "
            f"'-', at most 40 characters, got {value!r}",
        )
    return value


def _v_pathspace(value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value):
        raise PydanticCustomError(
            "pathspace", "expected an FRR pathspace name (letters, digits, '_', '.', '-'), "
            f"got {value!r}",
        )
    return value


class OspfGlobal(BaseModel):
    """``[ospf]``. Defaults: FRR, render and apply through ``vtysh``."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    dialect: Literal["frr", "quagga"] = "frr"
    mode: Literal["apply", "render"] = "apply"
    render_file: AbsPath | None = None
    name: Annotated[str, PlainValidator(_v_object_name)] = "ANYCASTD-OSPF"
    metric_type: Literal["type-1", "type-2"] = "type-2"
    vtysh: Annotated[str, Strict(), Field(min_length=1)] = "vtysh"
    pathspace: Annotated[str, PlainValidator(_v_pathspace)] | None = None
    instance: Annotated[int, Strict(), Field(ge=1, le=65535)] | None = None
    timeout: PositiveDuration = 10.0
    withdraw_wait: Duration = 0.2
    vty_dir: AbsPath = Path("/var/run/frr")

    @model_validator(mode="after")
    def _mode_rules(self) -> OspfGlobal:
        if self.mode == "render" and self.render_file is None:
            raise PydanticCustomError(
                "render_file", 'mode = "render" needs render_file (where to write the '
                "rendered configuration)", {},
            )
        if self.dialect == "quagga" and self.mode == "apply":
            raise PydanticCustomError(
                "dialect", 'dialect = "quagga" supports mode = "render" only (anycastd '
                "applies through FRR's vtysh; Quagga is not tested against a live daemon)", {},
            )
        return self


def defaults() -> OspfGlobal:
    """The section as used when a service has [ospf] and the file has no [ospf]."""
    return OspfGlobal()


__all__ = ["OspfGlobal", "defaults"]

