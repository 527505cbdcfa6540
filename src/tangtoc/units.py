"""Numbers with their units, the way every report in tangtoc writes them (STYLE: units in every number)."""

from __future__ import annotations


def fmt_bytes(n: float | None) -> str:
    """A size in binary units: ``"512 B"``, ``"1.5 KiB"``, ``"23.5 GiB"``; ``None`` is ``"unknown"``."""
    if n is None:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def fmt_flops(flops: float | None) -> str:
    """A rate of arithmetic: ``"989.5 TFLOP/s"``; ``None`` is ``"unknown"``."""
    return "unknown" if flops is None else f"{flops / 1e12:.1f} TFLOP/s"


def fmt_seconds(s: float) -> str:
    """A step time with its unit: ``"1.23 ms"``, ``"450 us"``, ``"2.1 s"``."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= 0.9995 * scale:  # what rounds to 1 of a unit is shown in it: "1 ms", not "1e+03 us"
            value = s / scale
            return f"{value:.0f} {unit}" if value >= 100 else f"{value:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"


def fmt_ratio(x: float) -> str:
    """A speed-up to two significant figures (a prediction is no more precise): ``"1.6x"``, ``"42x"``, ``"1,100x"``."""
    return f"{float(f'{x:.2g}'):,.0f}x" if x >= 10 else f"{x:.2g}x"


def fmt_duration(s: float) -> str:
    """A job's wall time, to the precision anyone plans with: ``"3 h 10 min"``, ``"5 min"``, ``"42 s"``."""
    if s < 1:
        return fmt_seconds(s)
    if s < 60:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    minutes = round(s / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours >= 48:
        return f"{s / 86400:.1f} days"
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


class ReadsAsText:
    """A result that prints as the text the CLI shows: ``print(result)``, a rich console and a Jupyter cell all
    render :meth:`text`, instead of a dataclass repr."""

    __slots__ = ()

    def text(self) -> str:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.text()

    def __rich__(self) -> str:
        from rich.markup import escape  # rich is a dependency; imported here to keep this module light

        return escape(self.text())

    def _repr_html_(self) -> str:
        import html

        return f"<pre>{html.escape(self.text())}</pre>"
