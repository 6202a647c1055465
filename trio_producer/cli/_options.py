"""Options the commands share: ``-b``, librdkafka properties (``-X``, ``-F``), and
kafka-console-producer's line-reader ``--property``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ._common import fail
from ._logging import set_verbosity

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def pairs(values: Sequence[str], what: str) -> list[tuple[str, str]]:
    out = []
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name:
            fail(f"{what} must look like name=value, not {value!r}", 2)
        out.append((name, rest))
    return out


def properties_file(path: str) -> list[tuple[str, str]]:
    """``-F FILE``: librdkafka properties, one ``name=value`` a line; blank lines and
    lines starting with ``#`` or ``!`` are skipped; spaces around names and values are
    stripped (kcat's format, and the simple case of a Java properties file)."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}", 2)
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            # the line itself is not shown: it may hold a secret
            fail(f"{path}, line {number}: expected name=value", 2)
        out.append((name.strip(), value.strip()))
    return out


_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "0": "\0", "\\": "\\"}


def kcat_escapes(text: str, what: str) -> str:
    """kcat's escapes in a delimiter: ``\\t``, ``\\n``, ``\\r``, ``\\0``, ``\\\\`` and
    ``\\xNN`` (a byte, as a character; encoded as UTF-8 like the rest)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "\\" or i + 1 == len(text):
            out.append(char)
            i += 1
            continue
        code = text[i + 1]
        if code in _ESCAPES:
            out.append(_ESCAPES[code])
            i += 2
        elif code == "x" and len(text) >= i + 4:
            try:
                out.append(chr(int(text[i + 2 : i + 4], 16)))
            except ValueError:
                fail(f"{what}: \\x must be followed by two hex digits, not {text!r}", 2)
            i += 4
        else:
            out.append(char)
            i += 1
    return "".join(out)


def dump_requested(props: Sequence[str]) -> tuple[tuple[str, ...], bool]:
    """kcat's ``-X list`` (refused: what to read instead) and ``-X dump`` (print the
    configuration and exit): ``(the other -X values, whether dump was given)``."""
    if "list" in props:
        fail(
            "-X list is not supported: librdkafka's properties are listed in its CONFIGURATION.md",
            2,
        )
    return tuple(p for p in props if p != "dump"), "dump" in props


def print_properties(properties: dict[str, object]) -> None:
    """``-X dump``: the properties librdkafka gets, one ``name = value`` a line."""
    from .._config import is_secret

    for name, value in sorted(properties.items()):
        if callable(value):
            continue
        click.echo(f"{name} = {'***' if is_secret(name) else value}")


def librdkafka_properties(
    bootstrap_servers: str | None, config_files: Sequence[str], props: Sequence[str]
) -> tuple[str, dict[str, str]]:
    """``-F`` files, then ``-X`` (which wins): ``(bootstrap servers, the other properties)``.

    ``bootstrap.servers`` (or ``metadata.broker.list``) among them is used when ``-b``
    was not given. librdkafka parses its string values itself ("true", "100", "lz4", ...).
    """
    librdkafka: dict[str, str] = {}
    for config_file in config_files:
        librdkafka.update(properties_file(config_file))
    librdkafka.update(pairs(props, "-X"))
    from_props = librdkafka.pop("bootstrap.servers", None)
    from_props = librdkafka.pop("metadata.broker.list", None) or from_props
    bootstrap_servers = bootstrap_servers or from_props
    if not bootstrap_servers:
        fail("-b/--bootstrap-servers is required (or bootstrap.servers in -F FILE)", 2)
    return bootstrap_servers, librdkafka


#: kafka-console-producer's ``--property`` names that have another spelling here.
_READER_PROPERTY_HINTS = {
    "parse.headers": "use --jsonl for headers per line, -H name=value for fixed ones",
    "headers.delimiter": "use --jsonl for headers per line, -H name=value for fixed ones",
    "headers.separator": "use --jsonl for headers per line, -H name=value for fixed ones",
    "headers.key.separator": "use --jsonl for headers per line, -H name=value for fixed ones",
    "null.marker": "use -Z to send empty values (and keys) as null",
}


def _boolean(name: str, value: str) -> bool:
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    fail(f"--property {name} must be true or false, not {value!r}", 2)


def reader_properties(values: Sequence[str]) -> tuple[str | None, bool]:
    """kafka-console-producer's ``--property`` (its line reader's settings) as
    ``(key separator or None, whether a line without it is rejected)``."""
    parse_key = ignore_error = False
    separator: str | None = None
    for name, value in pairs(values, "--property"):
        if name == "parse.key":
            parse_key = _boolean(name, value)
        elif name == "ignore.error":
            ignore_error = _boolean(name, value)
        elif name == "key.separator":
            separator = value
        elif name in _READER_PROPERTY_HINTS:
            fail(f"--property {name} is not supported: {_READER_PROPERTY_HINTS[name]}", 2)
        else:
            fail(
                f"--property {name}: not a kafka-console-producer line-reader property "
                "(parse.key, key.separator, ignore.error); for a producer (librdkafka) "
                f"property use -X {name}=VALUE",
                2,
            )
    if not parse_key:
        if separator is not None:
            fail("--property key.separator needs --property parse.key=true", 2)
        return None, False
    return ("\t" if separator is None else separator), not ignore_error


def _stack(*decorators: Decorator) -> Decorator:
    def apply(function: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


def _verbose(_ctx: click.Context, _param: click.Parameter, value: int) -> None:
    set_verbosity(value)


def verbose_option() -> Decorator:
    """``-v`` after the command name too (``trio-producer produce -v``)."""
    return click.option(
        "-v",
        "--verbose",
        count=True,
        expose_value=False,
        callback=_verbose,
        help="Log librdkafka's warnings (-vv: more).",
    )


#: kcat's flags that have no counterpart here, and what to use instead.
KCAT_UNSUPPORTED = {
    "-q": "the summary line is on stderr: 2>/dev/null hides it",
    "-d": "-v shows librdkafka's warnings, -vv more",
    "-m": "--connect-timeout SECONDS gives up once the cluster has been unreachable that long",
    "-J": "consume -f FORMAT chooses what is printed (produce --jsonl reads JSON lines)",
}


def kcat_options(*, consume: bool = False) -> Decorator:
    """kcat's flags that are refused with a hint (:data:`KCAT_UNSUPPORTED`), and for
    ``produce`` its ``-E`` (accepted: a non-fatal error never ends a run there); hidden."""

    def refuse(ctx: click.Context, param: click.Parameter, value: object) -> None:
        if value:
            flag = param.opts[0]
            fail(f"kcat's {flag} is not supported: {KCAT_UNSUPPORTED[flag]}", 2)

    no_exit = click.option("-E", "kcat_no_exit", is_flag=True, hidden=True, expose_value=False)
    return _stack(
        *([] if consume else [no_exit]),
        click.option("-q", is_flag=True, hidden=True, expose_value=False, callback=refuse),
        click.option("-d", hidden=True, expose_value=False, callback=refuse),
        click.option("-m", hidden=True, expose_value=False, callback=refuse),
        click.option("-J", is_flag=True, hidden=True, expose_value=False, callback=refuse),
    )


def bootstrap_option() -> Decorator:
    """``-b``."""
    return click.option(
        "-b",
        "--bootstrap-servers",
        "--bootstrap-server",
        help="host:port[,host:port...] (or bootstrap.servers in -F FILE).",
    )


def librdkafka_options(role: str) -> Decorator:
    """``-X`` and ``-F`` for a command whose client is a ``role`` ("producer" or
    "consumer")."""
    return _stack(
        click.option(
            "-X",
            f"--{role}-property",
            "props",
            multiple=True,
            metavar="NAME=VALUE",
            help="Any librdkafka property name=value (repeatable).",
        ),
        click.option(
            "-F",
            f"--{role}.config",
            "config_files",
            multiple=True,
            type=click.Path(dir_okay=False),
            help="A file of librdkafka name=value lines (# comments); -X wins over it.",
        ),
    )
