"""`qlib-crypto predict` prints both ends of the latest bar's ranking, so SELL rows show next to BUY rows."""

from __future__ import annotations

import pandas as pd

from qlib_crypto.commands.predict import latest_bar_table


def _signals(n: int) -> pd.DataFrame:
    # scores chosen so the ranking is known without the code: instrument I{k:02d} has score (n - k) / n, and an
    # older bar with the opposite order that must not be printed
    latest = pd.Timestamp("2024-06-30 23:00", tz="UTC")
    rows = []
    for k in range(n):
        score = (n - k) / n
        signal = "BUY" if k < 0.2 * n else "SELL" if k >= n - 0.2 * n else "HOLD"
        size = {"BUY": 0.05, "SELL": -0.05, "HOLD": 0.0}[signal]
        rows.append((latest, f"I{k:02d}", score, signal, size))
        rows.append((latest - pd.Timedelta(hours=1), f"I{k:02d}", -score, "HOLD", 0.0))
    frame = pd.DataFrame(rows, columns=["datetime", "instrument", "score", "signal", "position_size"])
    return frame.sample(frac=1.0, random_state=3).reset_index(drop=True)  # input order must not matter


def _instruments(text: str) -> list[str]:
    return [line.split()[0] for line in text.splitlines()[2:] if line.split()[0].startswith("I")]


def test_twenty_five_instruments_show_the_ten_best_and_the_ten_worst():
    text = latest_bar_table(_signals(25))
    lines = text.splitlines()
    assert lines[0] == "latest bar 2024-06-30 23:00:00+00:00 (25 instruments, best score first):"
    assert lines[1].split() == ["instrument", "score", "signal", "position_size"]
    assert _instruments(text) == [f"I{k:02d}" for k in list(range(10)) + list(range(15, 25))]
    assert "... 5 more instruments ..." in lines
    assert lines.index("... 5 more instruments ...") == 2 + 10
    # the worst rows are SELL with negative sizes; the best BUY with positive ones
    assert lines[-1].split() == ["I24", f"{1 / 25:.4f}", "SELL", "-0.0500"]
    assert lines[2].split() == ["I00", "1.0000", "BUY", "0.0500"]
    assert sum(" SELL " in f" {line} " for line in lines) == 5


def test_twenty_instruments_or_fewer_are_all_shown():
    for n in (1, 6, 20):
        text = latest_bar_table(_signals(n))
        assert _instruments(text) == [f"I{k:02d}" for k in range(n)]
        assert "more instruments" not in text


def test_ends_can_be_changed():
    text = latest_bar_table(_signals(8), ends=2)
    assert _instruments(text) == ["I00", "I01", "I06", "I07"]
    assert "... 4 more instruments ..." in text
