"""Which images arrived for a date: a folder per day (<inbox>/YYYY-MM-DD/), or else the files
directly under the inbox whose modification time falls on that day in the site's timezone."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from pipeline.errors import UserError


def arrived_on(inbox: Path, day: date, timezone: str = "UTC") -> tuple[Path, list[Path]]:
    """(the folder to score, the files in it that arrived for day). The folder is the day's own
    folder when there is one, else the inbox (then only files modified on that day count)."""
    inbox = Path(inbox)
    if not inbox.is_dir():
        raise UserError(f"{inbox}: inbox folder does not exist")
    day_folder = inbox / day.isoformat()
    if day_folder.is_dir():
        return day_folder, sorted(p for p in day_folder.rglob("*") if p.is_file())
    zone = ZoneInfo(timezone)
    start = datetime.combine(day, time.min, zone).timestamp()
    end = datetime.combine(day + timedelta(days=1), time.min, zone).timestamp()
    return inbox, sorted(p for p in inbox.iterdir() if p.is_file() and start <= p.stat().st_mtime < end)


def previous_day(timezone: str = "UTC") -> date:
    """The day that ended most recently at the site: what a 02:00 nightly run scores."""
    return datetime.now(ZoneInfo(timezone)).date() - timedelta(days=1)
