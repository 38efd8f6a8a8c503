"""README.md stays true: its settings table is the one config.py describes,
and its error table lists exactly the codes the protocol reports.

``python -m tests.test_docs`` rewrites the settings table after a change."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from livecap import errors
from livecap.config import settings_table

README = Path(__file__).resolve().parents[1] / "README.md"


def section(text: str, name: str) -> str:
    match = re.search(rf"<!-- {name}:begin -->\n(.*?)<!-- {name}:end -->", text, re.S)
    assert match, f"README.md has no {name} section"
    return match.group(1)


def settings_rows() -> str:
    return "".join(f"| `{flag}` | `{env}` | {default} | {help_text} |\n"
                   for flag, env, default, help_text in settings_table())


def test_settings_table_matches_the_configuration() -> None:
    assert section(README.read_text(), "settings") == settings_rows(), \
        "README settings table is stale: run python -m tests.test_docs"


def test_error_table_lists_every_code_the_protocol_reports() -> None:
    documented = set(re.findall(r"^\| `(\w+)` \| (\d+) \|", section(README.read_text(), "errors"), re.M))
    reported = {(cls.code, str(cls.close_code)) for _, cls in inspect.getmembers(errors, inspect.isclass)
                if issubclass(cls, errors.LivecapError) and cls is not errors.LivecapError
                and cls.close_code is not None}
    assert documented == reported


def main() -> None:
    text = README.read_text()
    README.write_text(text.replace(section(text, "settings"), settings_rows(), 1)
                      if section(text, "settings") else
                      text.replace("<!-- settings:begin -->\n", "<!-- settings:begin -->\n" + settings_rows(), 1))


if __name__ == "__main__":
    main()
