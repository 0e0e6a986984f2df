"""Progress bars draw on a terminal (or when forced), stay silent otherwise, and follow a shortened run."""

import io

import pytest

from jinterp import progress
from jinterp.train import actions


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_bars_draw_only_on_a_terminal_unless_forced(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    quiet, tty = io.StringIO(), _Terminal()
    for stream in (quiet, tty):
        for _ in progress.bar(range(5), desc="work", file=stream):
            pass
    assert quiet.getvalue() == "" and "work" in tty.getvalue() and "0/5" in tty.getvalue()
    monkeypatch.setenv(progress.ENV, "1")
    forced = io.StringIO()
    list(progress.bar(range(3), desc="forced", file=forced))
    assert "forced" in forced.getvalue()
    monkeypatch.setenv(progress.ENV, "0")
    off = _Terminal()
    list(progress.bar(range(3), file=off))
    assert off.getvalue() == ""


def test_lines_print_plainly_off_a_terminal_and_a_bad_setting_is_named(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    out = io.StringIO()
    progress.write("step 3/6 loss 0.1", out)
    assert out.getvalue() == "step 3/6 loss 0.1\n"
    monkeypatch.setenv(progress.ENV, "yes")
    with pytest.raises(ValueError, match="JINTERP_PROGRESS.*0 or 1.*'yes'"):
        progress.enabled(out)


def test_the_training_bar_follows_a_budget_that_shortens_the_run(monkeypatch):
    monkeypatch.setenv(progress.ENV, "1")
    log = io.StringIO()
    run = actions.Run(10, 2, True, 0.0)
    step_bar = actions.StepBar(run, log)
    assert step_bar.bar.n == 2 and step_bar.bar.total == 10  # a resumed run starts at its step
    step_bar(3, None, {})
    run.total = 6  # actions.Budget shortened the schedule
    for step in range(4, 7):
        step_bar(step, None, {})
    assert step_bar.bar.total == 6 and step_bar.bar.n == 6 and step_bar.bar.disable  # closed at the end
