"""Bundle what every service needs about the running site."""

from __future__ import annotations

from dataclasses import dataclass

from shared.db import Database
from shared.dispatch import Dispatcher
from shared.settings import Settings


@dataclass
class Site:
    settings: Settings
    db: Database
    dispatcher: Dispatcher
