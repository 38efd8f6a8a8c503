"""README.md stays true: its settings table is the one config.py describes,
its error table lists exactly the closes the server can send (its own and
the WebSocket library's), and its page table exactly the query parameters
the pages read.

``python -m tests.test_docs`` rewrites the settings table after a change."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import aiohttp.web_ws
from aiohttp import WSCloseCode
from aiohttp._websocket import reader_py

from livecap import errors
from livecap.appkeys import ROOMS
from livecap.auth import Keys
from livecap.config import ServerOptions, settings_table
from livecap.server import LIBRARY_ERRORS, create_app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


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


def documented_closes() -> tuple[set[tuple[str, int]], set[int]]:
    """README's error table: (error code, close code) of every close that an
    error event explains, and the close codes that come without one."""
    rows = re.findall(r"^\| (`\w+`|—) \| (\d+) \|", section(README.read_text(), "errors"), re.M)
    return ({(code.strip("`"), int(close)) for code, close in rows if code != "—"},
            {int(close) for code, close in rows if code == "—"})


def test_error_table_lists_every_code_the_protocol_reports() -> None:
    reported = {(cls.code, cls.close_code) for _, cls in inspect.getmembers(errors, inspect.isclass)
                if issubclass(cls, errors.LivecapError) and not issubclass(cls, errors.Refused)
                and cls is not errors.LivecapError}
    assert documented_closes()[0] == reported


def test_refusal_table_lists_every_refusal_with_its_status() -> None:
    """Refusals close nothing: their own table, with the HTTP status a correction gets."""
    rows = set(re.findall(r"^\| `(\w+)` \| (\d+) \|", section(README.read_text(), "refusals"), re.M))
    refused = {(cls.code, str(cls.http_status)) for _, cls in inspect.getmembers(errors, inspect.isclass)
               if issubclass(cls, errors.Refused) and cls is not errors.Refused}
    assert rows == refused


def test_error_table_lists_every_close_the_websocket_library_sends() -> None:
    """Every close code aiohttp's server side uses (its frame reader's errors, its
    own closes) is either explained by a livecap error with the same close code
    or listed without one; a new aiohttp that closes otherwise fails here."""
    library = {WSCloseCode[name] for module in (aiohttp.web_ws, reader_py)
               for name in re.findall(r"WSCloseCode\.([A-Z_]+)", inspect.getsource(module))}
    assert {WSCloseCode.PROTOCOL_ERROR, WSCloseCode.MESSAGE_TOO_BIG, WSCloseCode.ABNORMAL_CLOSURE} <= library
    explained, silent = documented_closes()
    for code, error in LIBRARY_ERRORS.items():
        assert error.close_code == code and (error.code, code) in explained
    assert silent == library - set(LIBRARY_ERRORS)


PAGE_SCRIPTS = {"/overlay/{room}": "overlay.js", "/view/{room}": "view.js", "/speak/{room}": "speak.js",
                "/edit/{room}": "edit.js", "/dashboard": "dashboard.js"}


def page_parameters(script: str) -> set[str]:
    """The query parameters a page script reads, itself or through the modules it imports."""
    source = (ROOT / "client" / script).read_text()
    read = set(re.findall(r'(?:params\.(?:get|has)|numberParam)\("(\w+)"', source))
    for module in re.findall(r'from "/static/([\w-]+\.js)"', source):
        read |= page_parameters(module)
    return read


def test_page_table_lists_every_parameter_the_pages_read() -> None:
    documented = set(re.findall(r"^\| `([^`]+)` \| `(\w+)` \|", section(README.read_text(), "page-parameters"), re.M))
    read = {(page, name) for page, script in PAGE_SCRIPTS.items() for name in page_parameters(script)}
    assert {page for page, _ in documented} == set(PAGE_SCRIPTS)
    assert documented == read


def test_readme_says_where_things_are_kept(tmp_path: Path) -> None:
    """README once said DATA_DIR/rooms/; the stores are elsewhere."""
    said = re.findall(r"`DATA_DIR/(\w+)/", README.read_text())
    rooms = create_app(ServerOptions(data_dir=tmp_path, secret="s"), Keys("s"))[ROOMS]
    assert rooms.store and rooms.labels and rooms.settings and rooms.recordings
    assert {tmp_path / name for name in said} == {rooms.store.directory, rooms.labels.path.parent,
                                                  rooms.settings.directory, rooms.recordings.directory}


def main() -> None:
    text = README.read_text()
    README.write_text(text.replace(section(text, "settings"), settings_rows(), 1)
                      if section(text, "settings") else
                      text.replace("<!-- settings:begin -->\n", "<!-- settings:begin -->\n" + settings_rows(), 1))


if __name__ == "__main__":
    main()
