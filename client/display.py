"""How the renter commands show things: amounts, sizes, tables, progress bars, offers."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import IO

from dgpu.client.api_client import CliError
from dgpu.node.services.api.schema import OfferOut, format_amount

__all__ = ["ProgressBar", "fmt_amount", "fmt_bytes", "fmt_time", "offer_table", "parse_amount", "table"]


def fmt_amount(base_units: int, decimals: int | None) -> str:
    """``8334`` with 6 decimals -> ``"0.008334"``; unknown decimals (the ledger does not answer,
    which ``Api.decimals`` says once) -> ``"8334 base units"``."""
    if decimals is None:
        return f"{base_units} base units"
    return format_amount(base_units, decimals)


def fmt_time(epoch_s: float | None) -> str:
    """Seconds since the epoch as ISO-8601 UTC (``2026-12-01T10:57:37Z``); ``-`` for none."""
    if epoch_s is None:
        return "-"
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_amount(text: str, decimals: int) -> int:
    """``"1.5"`` dGPU -> base units; refuses more precision than the mint has."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise CliError(f"not an amount: {text!r}", 2) from None
    units = value.scaleb(decimals)
    if not value.is_finite() or units != units.to_integral_value() or units <= 0:
        raise CliError(f"{text} is not a positive amount with at most {decimals} decimals", 2)
    return int(units)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class ProgressBar:
    """A one-line text progress bar: ``label [#####-----]  45%  1.2 MiB/2.7 MiB  3.4 MiB/s``.

    ``update(done, total)`` redraws (at most every ``min_interval_s``, and always at the end);
    ``close()`` ends the line. Usable as a ``progress(bytes_done, total)`` callback."""

    def __init__(self, out: IO[str], label: str = "", *, width: int = 30, min_interval_s: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.out, self.label, self.width, self.min_interval_s, self.clock = out, label, width, min_interval_s, clock
        self.started = clock()
        self._drawn_at: float | None = None
        self._last = ""

    def render(self, done: int, total: int | None) -> str:
        elapsed = max(self.clock() - self.started, 1e-6)
        rate = f"{fmt_bytes(done / elapsed)}/s"
        if not total:
            return f"{self.label} {fmt_bytes(done)}  {rate}".strip()
        frac = min(max(done / total, 0.0), 1.0)
        filled = int(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        return (f"{self.label} [{bar}] {frac * 100:3.0f}%  {fmt_bytes(done)}/{fmt_bytes(total)}  "
                f"{rate}").strip()

    def update(self, done: int, total: int | None) -> None:
        now = self.clock()
        final = total is not None and done >= total
        if not final and self._drawn_at is not None and now - self._drawn_at < self.min_interval_s:
            return
        self._drawn_at = now
        line = self.render(done, total)
        self.out.write("\r" + line + " " * max(len(self._last) - len(line), 0))
        self.out.flush()
        self._last = line

    __call__ = update

    def close(self) -> None:
        if self._last:
            self.out.write("\n")
            self.out.flush()


def table(rows: list[list[str]], headers: list[str], out: IO[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    for row in [headers, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip(), file=out)



def offer_table(offers: Sequence[OfferOut], decimals: int | None, out: IO[str]) -> None:
    """The offers as the CLI's table: one row per offer, prices per GPU-minute and GPU-hour."""
    rows = []
    for o in offers:
        g = o.gpus[0]
        price = o.price_per_gpu_minute
        rows.append([o.provider, g.model, f"{g.vram_mib} MiB", str(o.gpu_count),
                     fmt_amount(price, decimals), fmt_amount(price * 60, decimals), o.region,
                     "yes" if o.simulated else "no"])
    table(rows, ["PROVIDER", "GPU", "VRAM", "COUNT", "dGPU/GPU-MIN", "dGPU/GPU-HOUR", "REGION", "SIMULATED"], out)
