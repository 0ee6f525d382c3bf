"""`RunSpec`: one run, resolved once at the edge (CLI, web page, batch, API) and passed down.

It holds the base model (resolved: `models.base.BaseModel`), the final config (every layer and
the method's own settings applied: `run.settings`), the method, and where each non-default
setting came from. Below the edge nothing reads the base model's name or re-applies a setting.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import RunConfig
from ..names import Method
from ..models.base import BaseModel


@dataclass(frozen=True)
class RunSpec:
    base: BaseModel
    config: RunConfig
    method: Method = Method.UNZIPLORA
    sources: dict[str, str] = field(default_factory=dict)  # dotted key -> the layer that set it

    def profile(self):
        """The block roles this run trains with (models/profiles): the config's choice, `auto` being
        the base model's own profile file, else its family's."""
        from ..models.profiles import resolve_profile

        return resolve_profile(self.config.model.profile, self.base)
