"""The failing-case inputs of ../shared/cases (never copied into the repo).

``make_cases.sh`` builds them from the shared evaluation set with sox and
espeak-ng; they are built once per test run into a temporary directory, or
taken from ``LIVECAP_CASES_DIR`` when it holds them already.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from functools import cache
from pathlib import Path

CASES_SCRIPT = Path(__file__).resolve().parents[2] / "shared" / "cases" / "make_cases.sh"


@cache
def _cases_dir() -> Path:
    given = os.environ.get("LIVECAP_CASES_DIR")
    if given and (Path(given) / "runon.wav").exists():
        return Path(given)
    directory = Path(tempfile.mkdtemp(prefix="livecap-cases-"))
    # sox dithers by default when it writes 16 bits after resampling: random noise at the last bit,
    # different at every build, which made numbers.wav's "555 0199" read differently from run to run.
    # The tests build the cases without it, so that each run checks the same inputs.
    subprocess.run(["bash", str(CASES_SCRIPT), str(directory)], check=True, capture_output=True,
                   env={**os.environ, "SOX_OPTS": "--no-dither"})
    return directory


def case(name: str) -> Path:
    """Path of the case file ``name`` (e.g. ``"runon.wav"``)."""
    path = _cases_dir() / name
    if not path.exists():
        raise FileNotFoundError(f"{CASES_SCRIPT} made no {name}")
    return path
