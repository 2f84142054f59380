"""Where the shipped data folders are: `templates/` and `seeds/`, in a wheel or in a checkout."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

PACKAGE_DIR = Path(__file__).resolve().parent

DataFolder = Literal["templates", "seeds"]


def data_dir(name: DataFolder) -> Path:
    """The folder `name`: the installed wheel's copy (digest/_data/, mapped there by the build
    configuration) first, then the top-level folder of the source checkout (an editable
    install, or running from the repository)."""
    for candidate in (PACKAGE_DIR / "_data" / name, PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"the {name}/ folder is missing: looked in {PACKAGE_DIR / '_data'} (installed) and "
        f"{PACKAGE_DIR.parent} (checkout); reinstall the package"
    )
