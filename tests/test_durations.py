"""Durations as pages show them: Slurm's format or words, never raw seconds (clusterra/durations.py)."""

import pytest

from accounts.console.forms import parse_duration as parse_form_duration
from clusterra.durations import duration_words, slurm_duration
from jobs.slurm import parse_duration as parse_slurm_duration


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0:00"), (5, "0:05"), (59, "0:59"), (60, "1:00"), (1800, "30:00"), (3599, "59:59"), (3600, "1:00:00"),
    (7200, "2:00:00"), (86399, "23:59:59"), (86400, "1-00:00:00"), (2 * 86400, "2-00:00:00"),
    (86400 + 3661, "1-01:01:01"), (365 * 86400, "365-00:00:00"), (None, "UNLIMITED"), ("", "UNLIMITED"), (-3, "0:00"),
])
def test_slurm_format(seconds, text):
    assert slurm_duration(seconds) == text


@pytest.mark.parametrize("seconds", [0, 5, 61, 3600, 3661, 86399, 86400, 90061, 30 * 86400 + 7])
def test_slurm_format_reads_back_as_slurm_reads_it(seconds):
    assert parse_slurm_duration(slurm_duration(seconds)) == seconds
    assert parse_form_duration(slurm_duration(seconds)) == seconds  # the console's duration fields take it too


@pytest.mark.parametrize(("seconds", "words"), [
    (0, "0 seconds"), (1, "1 second"), (45, "45 seconds"), (60, "1 minute"), (61, "1 minute 1 second"),
    (20 * 60, "20 minutes"), (3600, "1 hour"), (5400, "1 hour 30 minutes"), (12 * 3600, "12 hours"),
    (86400, "1 day"), (86400 + 7200, "1 day 2 hours"), (86400 + 7200 + 59, "1 day 2 hours"), (86400 + 5, "1 day"),
    (None, "no limit"),
])
def test_words(seconds, words):
    assert duration_words(seconds) == words


def test_words_with_one_unit():
    assert duration_words(5400, units=1) == "1 hour"


@pytest.mark.parametrize(("seconds", "words"), [(0.5, "0.5 seconds"), (1.234, "1.23 seconds"), (30.0, "30 seconds"), (90.5, "1 minute 30 seconds")])
def test_words_for_fractions_of_a_minute(seconds, words):
    assert duration_words(seconds) == words
