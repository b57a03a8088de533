"""The output relay: formatting, sanitising, progress bars.

Everything but the last test runs without Ray, on captured Rich consoles;
progress thinning is driven by a fake clock and a fake timer, never sleeping.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Callable
from typing import Literal

import pytest
from rich.console import Console
from rich.text import Text

import cmlray as cdsw
from cmlray._lines import LineSplitter, is_progress, last_state
from cmlray._record import WorkerRecord
from cmlray._registry import Registry
from cmlray._relay import Relay
from cmlray._sanitize import keep_colours, strip_escapes
from tests.support.console import Captured

SGR = re.compile(r"\x1b\[[0-9;]*m")


class FakeTime:
    """A clock the test advances, and a timer the test fires."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, Callable[[], None]]] = []

    def clock(self) -> float:
        return self.now

    def schedule(self, delay_s: float, callback: Callable[[], None]) -> None:
        self.timers.append((self.now + delay_s, callback))

    def advance(self, seconds: float) -> None:
        """Move time on and fire the timers that are due by then."""
        self.now += seconds
        due = [t for t in self.timers if t[0] <= self.now]
        self.timers = [t for t in self.timers if t[0] > self.now]
        for _, callback in due:
            callback()


def terminal() -> Console:
    """A captured terminal console (colours on even if the environment sets NO_COLOR)."""
    return Console(
        file=io.StringIO(), force_terminal=True, width=120, color_system="truecolor", no_color=False
    )


def plain() -> Console:
    return Console(file=io.StringIO(), force_terminal=False, width=120)


def output(console: Console) -> str:
    file = console.file
    assert isinstance(file, io.StringIO)
    return file.getvalue()


def relay_on(console: Console, fake: FakeTime | None = None) -> Relay:
    fake = fake or FakeTime()
    return Relay(console, clock=fake.clock, schedule=fake.schedule)


def shown(console: Console, lines: list[str], name: str = "w", stream: str = "out") -> str:
    relay_on(console).lines(name, stream, lines)
    return output(console)


# --- plain consoles: exact text -------------------------------------------------------


def test_plain_lines_are_exact() -> None:
    console = plain()
    relay = relay_on(console)
    relay.lines("worker-1", "out", ["hello", "", "  indented\tand tab"])
    relay.lines("worker-1", "err", ["oops"])
    relay.lines("worker-1", "out", [])
    relay.notice("worker-1 ended")
    assert output(console) == (
        "[worker-1] hello\n[worker-1] \n[worker-1]   indented\tand tab\n"
        "[worker-1:err] oops\n[cmlray] worker-1 ended\n"
    )


def test_plain_strips_every_escape_sequence_colours_too() -> None:
    text = shown(
        plain(), ["\x1b[1;31mred\x1b[0m \x1b[2J\x1b[Hclear \x1b]0;title\x07\x1b[?25lx\x07"]
    )
    assert text == "[w] red clear x\n"


def test_markup_is_not_interpreted() -> None:
    line = "[bold red]x[/] [link=http://e]y[/link] :smile: 1 True http://e.org"
    assert shown(plain(), [line]) == f"[w] {line}\n"
    styled = shown(terminal(), [line])
    assert styled.endswith(f"\x1b[0m {line}\n")  # the prefix's style ends; the line is bare
    assert SGR.sub("", styled) == f"[w] {line}\n"


def test_invalid_utf8_arrives_as_replacement_characters() -> None:
    (line,) = LineSplitter().feed(b"caf\xc3\xa9 \xff\xfe end\n")
    assert line == "café \ufffd\ufffd end"
    assert shown(plain(), [line]) == "[w] café \ufffd\ufffd end\n"


# --- sanitising ------------------------------------------------------------------------

DANGEROUS = {
    "clear screen": ("a\x1b[2Jb", "ab"),
    "cursor home": ("a\x1b[Hb", "ab"),
    "cursor up and erase line": ("a\x1b[3A\x1b[2Kb", "ab"),
    "hide cursor": ("\x1b[?25lhidden", "hidden"),
    "window title, BEL": ("x\x1b]0;title\x07y", "xy"),
    "window title, ST": ("x\x1b]2;title\x1b\\y", "xy"),
    "OSC 8 hyperlink": ("\x1b]8;;http://evil.example\x1b\\click\x1b]8;;\x1b\\ me", "click me"),
    "OSC unterminated": ("x\x1b]0;title to the end", "x"),
    "DCS string": ("a\x1bPq#0;2;0;0;0#0~~\x1b\\b", "ab"),
    "APC string": ("a\x1b_payload\x1b\\b", "ab"),
    "charset switch": ("a\x1b(0b\x0ec\x0fd", "abcd"),
    "keypad mode": ("a\x1b=b\x1b>c", "abc"),
    "reset terminal": ("a\x1bcb", "ab"),
    "bell and backspace": ("a\x07b\x08c", "abc"),
    "NUL, DEL, vertical tab, form feed": ("a\x00b\x7fc\x0bd\x0ce", "abcde"),
    "8-bit CSI": ("a\x9b2Jb", "a2Jb"),
    "lone ESC at the end": ("abc\x1b", "abc"),
    "broken CSI": ("a\x1b[12", "a12"),
    "SGR with a private marker (not SGR)": ("a\x1b[>4;2mb", "ab"),
}


@pytest.mark.parametrize("case", DANGEROUS.values(), ids=DANGEROUS.keys())
def test_control_sequences_are_removed(case: tuple[str, str]) -> None:
    line, visible = case
    assert strip_escapes(line) == visible
    assert keep_colours(line) == visible
    assert shown(plain(), [line]) == f"[w] {visible}\n"
    styled = shown(terminal(), [line])
    assert SGR.sub("", styled) == f"[w] {visible}\n"
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", SGR.sub("", styled))


COLOURED = {
    "basic": "\x1b[31mred\x1b[0m plain",
    "bold and bright": "\x1b[1;92mok\x1b[0m",
    "256 colours": "\x1b[38;5;208morange\x1b[0m",
    "truecolor": "\x1b[38;2;10;20;30mrgb\x1b[m",
    "cumulative": "\x1b[1mbold \x1b[32mbold green\x1b[22m green\x1b[39m \x1b[4;44mu\x1b[0m plain",
}


@pytest.mark.parametrize("line", COLOURED.values(), ids=COLOURED.keys())
def test_colours_survive_on_a_terminal(line: str) -> None:
    assert keep_colours(line) == line
    styled = shown(terminal(), [line])
    expected = terminal()
    expected.print(Text.from_ansi(line), end="")
    assert styled.endswith(" " + output(expected) + "\n")
    assert SGR.search(styled.split("\x1b[0m ", 1)[1])  # the line's own styles


def test_colours_mixed_with_control_sequences_keep_only_colours() -> None:
    line = "\x1b[2J\x1b[32mgreen\x1b]0;t\x07\x1b[0m \x1b[Hdone"
    assert keep_colours(line) == "\x1b[32mgreen\x1b[0m done"
    styled = shown(terminal(), [line])
    assert "\x1b[32mgreen\x1b[0m done\n" in styled
    assert SGR.sub("", styled) == "[w] green done\n"


def test_a_workers_colour_does_not_leak_into_the_next_line() -> None:
    styled = shown(terminal(), ["\x1b[31mred, never reset", "next"])
    first, second = styled.splitlines()
    assert first.endswith("\x1b[31mred, never reset\x1b[0m")
    assert second.endswith("\x1b[0m next")


def test_rich_from_ansi_alone_would_let_sequences_through() -> None:
    """Why _sanitize exists: what Rich's AnsiDecoder keeps (measured with rich 15)."""
    console = terminal()
    console.print(Text.from_ansi("\x1b]8;;http://evil\x1b\\a\x1b]8;;\x1b\\ \x1b]0;t\x07 \x9b2J"))
    text = output(console)
    assert "\x1b]8;" in text  # the hyperlink survives (re-emitted by Rich)
    assert "0;t" in text  # a BEL-terminated OSC shows its payload
    assert "\x9b" in text  # 8-bit CSI passes


def test_worker_names_are_shown_literally() -> None:
    assert shown(plain(), ["x"], name="[red]w\x1b[2J") == "[[red]w] x\n"
    assert SGR.sub("", shown(terminal(), ["x"], name="[red]w\x1b[2J")) == "[[red]w] x\n"


# --- stderr and colours ----------------------------------------------------------------


def test_stderr_is_marked() -> None:
    console = terminal()
    relay = relay_on(console)
    relay.lines("w", "out", ["to stdout"])
    relay.lines("w", "err", ["to stderr"])
    out_line, err_line = output(console).splitlines()
    assert ":err" not in out_line
    assert "\x1b[1;31m:err\x1b[0m" in err_line  # bold red
    assert SGR.sub("", err_line) == "[w:err] to stderr"
    assert shown(plain(), ["to stderr"], stream="err") == "[w:err] to stderr\n"


def _prefix_styles(console: Console, names: list[str]) -> list[str]:
    relay = relay_on(console)
    for name in names:
        relay.lines(name, "out", ["x"])
    styles = []
    for line in output(console).splitlines():
        match = re.match(r"(\x1b\[[0-9;]*m)\[", line)
        assert match, line
        styles.append(match.group(1))
    return styles


@pytest.mark.parametrize("color_system", ["truecolor", "256", "standard"])
def test_eight_workers_get_eight_distinct_colours(
    color_system: Literal["truecolor", "256", "standard"],
) -> None:
    console = Console(
        file=io.StringIO(), force_terminal=True, color_system=color_system, no_color=False
    )
    styles = _prefix_styles(console, [f"worker-{i}" for i in range(1, 9)])
    assert len(set(styles)) == 8
    assert not any(re.search(r"[;\[](31|91)m", style) for style in styles)  # red is stderr's


def test_a_workers_colour_is_stable() -> None:
    console = terminal()
    relay = relay_on(console)
    for name in ["a", "b", "a", "c", "b", "a"]:
        relay.lines(name, "out", ["x"])
    styles: dict[str, str] = {}
    for line in output(console).splitlines():
        match = re.match(r"(\x1b\[[0-9;]*m)\[(\w)", line)
        assert match, line
        style, name = match.groups()
        assert styles.setdefault(name, style) == style
    assert len(set(styles.values())) == 3
    assert relay.colour("a") == relay.colour("a") != relay.colour("b")


def test_jupyter_gets_the_styled_output(monkeypatch: pytest.MonkeyPatch) -> None:
    displayed: list[str] = []
    monkeypatch.setattr("rich.jupyter.display", lambda segments, text: displayed.append(text))
    console = Console(
        file=io.StringIO(), force_jupyter=True, color_system="truecolor", no_color=False
    )
    relay_on(console).lines("w", "err", ["[b]x[/b] \x1b[2J\x1b[32mgreen\x1b[0m"])
    (text,) = displayed  # the text form of what Jupyter shows as HTML
    assert SGR.sub("", text) == "[w:err] [b]x[/b] green\n"
    assert "\x1b[32mgreen" in text
    assert output(console) == ""


def test_default_console_is_richs_global_one_looked_up_lazily(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    relay = Relay()
    console = plain()
    monkeypatch.setattr("rich.get_console", lambda: console)
    relay.lines("w", "out", ["late"])
    assert output(console) == "[w] late\n"


def test_concurrent_batches_never_mix_within_a_line() -> None:
    console = plain()
    relay = relay_on(console)

    def worker(name: str) -> None:
        for batch in range(200):
            relay.lines(name, "out", [f"{name} {batch} {i}" for i in range(20)])

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = output(console).splitlines()
    assert len(lines) == 4 * 200 * 20
    assert all(re.fullmatch(r"\[(w\d)\] \1 \d+ \d+", line) for line in lines)


# --- carriage returns in the line splitter ---------------------------------------------


def test_last_state_of_a_carriage_return_line() -> None:
    assert last_state("plain") == "plain"
    assert last_state("\r10%\r20%\r30%") == "30%"
    assert last_state("done\r") == "done"
    assert last_state("a\rb\r\r") == "b"
    assert last_state("\r\r") == ""


def test_splitter_sends_progress_states_then_the_final_line() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"\r  0%|") == ["  0%|\r"]
    assert splitter.feed(b"\r 50%|#####") == [" 50%|#####\r"]
    assert splitter.feed(b"\r100%|##########") == ["100%|##########\r"]
    assert splitter.feed(b"\n") == ["100%|##########"]
    assert splitter.feed(b"next\n") == ["next"]


def test_splitter_finished_lines_lose_their_carriage_returns() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"dos line\r\nblank\r\n\r\n\r1\r2\r3\nend\r") == [
        "dos line",
        "blank",
        "",
        "3",
        "end\r",  # the open line "end\r" shows "end" so far
    ]
    assert splitter.feed(b"\n") == ["end"]


def test_splitter_progress_written_with_trailing_carriage_returns() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"step 1\r") == ["step 1\r"]
    assert splitter.feed(b"step 2\r") == ["step 2\r"]
    assert splitter.feed(b"\n") == ["step 2"]


def test_splitter_sends_no_progress_for_an_open_line_without_carriage_return() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"a\r\nprompt: ") == ["a"]
    assert splitter.feed(b"typed\n") == ["prompt: typed"]


def test_splitter_sends_a_state_once_and_no_blank_state() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"\rsame") == ["same\r"]
    assert splitter.feed(b"\rsame") == []
    assert splitter.feed(b"\r     \r") == []
    assert splitter.feed(b"\rnew") == ["new\r"]


def test_splitter_keeps_only_the_current_state_of_a_long_progress_line() -> None:
    splitter = LineSplitter(max_line_bytes=64)
    states = [splitter.feed(f"\rstate {i:05d}".encode()) for i in range(10_000)]
    assert states[-1] == ["state 09999\r"]
    assert all(len(s) == 1 and is_progress(s[0]) for s in states)  # no overflow pieces
    assert splitter.feed(b"\n") == ["state 09999"]


def test_splitter_flush_shows_an_open_progress_line_as_a_line() -> None:
    splitter = LineSplitter()
    splitter.feed(b"\r1/3\r2/3")
    assert splitter.flush() == ["2/3"]
    splitter.feed(b"\r")
    assert splitter.flush() == []


def test_registry_tail_keeps_lines_not_progress_states() -> None:
    registry = Registry()
    registry.add([WorkerRecord(id="w", name="w", cpu=1, memory=1, nvidia_gpu=0, command="")])
    registry.apply("w", [("err", ["10%\r"]), ("out", ["a"]), ("err", ["50%\r"]), ("err", ["done"])])
    assert registry.describe(["w"])[0]["tail"] == ["a", "done"]


# --- progress thinning -----------------------------------------------------------------


@pytest.mark.parametrize("make_console", [plain, terminal], ids=["plain", "terminal"])
def test_progress_is_thinned_to_one_state_per_second(make_console: Callable[[], Console]) -> None:
    console, fake = make_console(), FakeTime()
    relay = relay_on(console, fake)
    for i in range(1, 1001):  # 1000 states in under 1 s, then the final line
        relay.lines("w", "err", [f"{i / 10:.1f}%\r"])
        fake.advance(1 / 1024)
    relay.lines("w", "err", ["100.0% done"])
    lines = SGR.sub("", output(console)).splitlines()
    assert lines == ["[w:err] 0.1%", "[w:err] 100.0% done"]


def test_a_held_back_state_is_shown_when_its_interval_is_over() -> None:
    console, fake = plain(), FakeTime()
    relay = relay_on(console, fake)
    relay.lines("w", "out", ["1/4\r"])
    fake.advance(0.25)
    relay.lines("w", "out", ["2/4\r"])
    fake.advance(0.25)
    relay.lines("w", "out", ["3/4\r"])
    assert output(console) == "[w] 1/4\n"
    assert [when for when, _ in fake.timers] == [1.0]
    fake.advance(0.25)
    assert output(console) == "[w] 1/4\n"
    fake.advance(0.25)  # one second after 1/4 was shown: the newest held state
    assert output(console) == "[w] 1/4\n[w] 3/4\n"
    assert fake.timers == []


def test_a_timer_that_fires_early_shows_nothing_and_waits_again() -> None:
    console, fake = plain(), FakeTime()
    relay = relay_on(console, fake)
    relay.lines("w", "out", ["a\r"])
    relay.lines("w", "out", ["b\r"])
    (_, callback), *_ = fake.timers
    fake.timers.clear()
    callback()  # too early: the clock has not moved
    assert output(console) == "[w] a\n"
    assert [when for when, _ in fake.timers] == [1.0]
    fake.advance(1.0)
    assert output(console) == "[w] a\n[w] b\n"


def test_the_final_line_is_always_shown_and_never_twice() -> None:
    console, fake = plain(), FakeTime()
    relay = relay_on(console, fake)
    relay.lines("w", "out", ["100%\r"])  # shown: the first state
    relay.lines("w", "out", ["100%"])  # the same line, finished: already on screen
    relay.lines("w", "out", ["50%\r"])  # next bar, held back (< 1 s)
    relay.lines("w", "out", ["60%"])  # its final line: shown at once
    fake.advance(5)
    relay.lines("w", "out", ["same text"])  # a finished line after a finished line
    relay.lines("w", "out", ["same text"])  # is a line of its own: shown
    assert output(console) == "[w] 100%\n[w] 60%\n[w] same text\n[w] same text\n"
    assert fake.timers == []


def test_stale_states_within_a_batch_are_dropped() -> None:
    console = plain()
    relay = relay_on(console)
    relay.lines("w", "out", ["1\r", "2\r", "line", "a\r", "b\r"])
    assert output(console) == "[w] line\n[w] b\n"


def test_workers_are_thinned_independently() -> None:
    console, fake = plain(), FakeTime()
    relay = relay_on(console, fake)
    for step in range(3):  # at 0, 0.25 and 0.5 s
        for name in ("a", "b"):
            relay.lines(name, "err", [f"{name} {step}\r"])
        fake.advance(0.25)
    assert output(console) == "[a:err] a 0\n[b:err] b 0\n"
    fake.advance(0.25)
    assert output(console) == "[a:err] a 0\n[b:err] b 0\n[a:err] a 2\n[b:err] b 2\n"


def test_tqdm_like_bytes_through_splitter_and_relay() -> None:
    console, fake = plain(), FakeTime()
    relay, splitter = relay_on(console, fake), LineSplitter()
    relay.lines("w", "out", splitter.feed(b"epoch 1\n"))
    for i in range(101):  # 16 updates a second: each timer shows the newest held state
        relay.lines("w", "err", splitter.feed(f"\r\x1b[2K{i:3d}%|{'#' * (i // 10):10s}|".encode()))
        fake.advance(1 / 16)
    relay.lines("w", "err", splitter.feed(b"\n"))
    relay.lines("w", "out", splitter.feed(b"epoch 2\n"))
    assert output(console).splitlines() == [
        "[w] epoch 1",
        "[w:err]   0%|          |",
        "[w:err]  15%|#         |",
        "[w:err]  31%|###       |",
        "[w:err]  47%|####      |",
        "[w:err]  63%|######    |",
        "[w:err]  79%|#######   |",
        "[w:err]  95%|######### |",
        "[w:err] 100%|##########|",
        "[w] epoch 2",
    ]


# --- end to end, through Ray -----------------------------------------------------------

WORKER_CODE = r"""
import sys
print("[bold red]x[/] literal")
print("\x1b[31mred\x1b[0m \x1b[2Jcleared\x1b[H \x1b]0;title\x07titled \x1b[?25lhidden\x07")
for i in range(1, 501):
    sys.stderr.write(f"\rprogress {i}/500")
    sys.stderr.flush()
sys.stderr.write("\n")
print("after")
"""


@pytest.mark.usefixtures("session")
def test_end_to_end_markup_escapes_and_progress(captured: Captured) -> None:
    workers = cdsw.launch_workers(1, cpu=0.25, memory=0.1, code=WORKER_CODE, name="relay-e2e")
    (worker,) = cdsw.await_workers(workers, timeout_seconds=60)["workers"]
    mine = [line for line in captured.text().splitlines() if line.startswith("[relay-e2e")]
    out = [line for line in mine if line.startswith("[relay-e2e] ")]
    err = [line for line in mine if line.startswith("[relay-e2e:err] ")]
    assert out == [
        "[relay-e2e] [bold red]x[/] literal",
        "[relay-e2e] red cleared titled hidden",
        "[relay-e2e] after",
    ]
    steps = [int(line.removeprefix("[relay-e2e:err] progress ").split("/")[0]) for line in err]
    assert err == [f"[relay-e2e:err] progress {step}/500" for step in steps]
    assert steps == sorted(set(steps)) and steps[-1] == 500
    assert len(steps) < 500  # all 500 would take 499 s at one per second
    assert not any(c in "".join(mine) for c in "\x1b\r\x07")
    assert [line for line in worker["tail"] if "progress" in line] == ["progress 500/500"]
