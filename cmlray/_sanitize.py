"""Making a worker's text safe to show: terminal control sequences removed.

A worker's output goes to the session's console, often a terminal. Left
alone, its escape sequences could clear the screen, move the cursor, hide
it, retitle the window, plant hyperlinks (OSC 8) or send device control
strings; its bare control characters could ring the bell, backspace over
the prefix or switch character sets. So everything of that kind is removed.
Only SGR sequences (``ESC [ ... m``: colours, bold, underline) may be kept,
for a terminal, by :func:`keep_colours`.

Rich's own ``Text.from_ansi`` is not enough on its own (measured with rich
15): it keeps OSC 8 hyperlinks, shows the payload of a BEL-terminated OSC
(``ESC ] 0;title BEL`` becomes ``0;title``) and of DCS strings as text, and
passes 8-bit C1 controls such as CSI (U+009B) through. The relay uses
Rich's decoder only to read the SGR parameters left by :func:`keep_colours`
into styles.

Sequences are recognised after ECMA-48: CSI ``ESC [`` parameters,
intermediates, a final byte; control strings (OSC ``ESC ]``, DCS ``ESC P``,
SOS ``ESC X``, PM ``ESC ^``, APC ``ESC _``) up to BEL, ST (``ESC \\`` or
U+009C) or the end of the line; any other escape with its intermediates and
final byte. Tab is the one control character kept; newline is kept too, so a
whole batch of lines can be cleaned in one pass.
"""

from __future__ import annotations

import re

_STRING = r"\x1b[\]PX^_][^\x07\x1b\x9c\n]*(?:\x07|\x9c|\x1b\\)?"
_CSI = r"\x1b\[[0-?]*[ -/]*[@-~]"
_ESCAPE = r"\x1b[ -/]*[0-~]?"
_SGR = r"\[[0-9;:]*m"
_CONTROLS = "\x00-\x08\x0b-\x1a\x1c-\x1f\x7f-\x9f"

_ALL = re.compile(f"{_STRING}|{_CSI}|{_ESCAPE}|[{_CONTROLS}]")
_ALL_BUT_SGR = re.compile(
    f"{_STRING}|\\x1b(?!{_SGR})\\[[0-?]*[ -/]*[@-~]|\\x1b(?!{_SGR})[ -/]*[0-~]?|[{_CONTROLS}]"
)
_SUSPECT = re.compile(f"[\\x1b{_CONTROLS}]")


def is_clean(text: str) -> bool:
    """Whether ``text`` has no escape or control character (tab, newline allowed).

    The common case by far; checking first lets callers skip any further work.
    """
    return _SUSPECT.search(text) is None


def strip_escapes(text: str) -> str:
    """``text`` with every escape sequence and control character removed (tab kept).

    For plain output (files, pipes, CI logs), where even colours are noise.
    """
    if is_clean(text):
        return text
    return _ALL.sub("", text)


def keep_colours(text: str) -> str:
    """``text`` with every escape sequence and control character removed, except SGR.

    SGR (``ESC [ params m``) only changes colours and text attributes, so a
    worker's coloured output keeps its colours on a terminal.
    """
    if is_clean(text):
        return text
    return _ALL_BUT_SGR.sub("", text)
