"""The bot's languages: gettext catalogs (extracted and compiled with Babel) and locale formatting (Babel/CLDR).

English is the source language: the msgids are the English texts, so English needs no catalog. Every other
language is one catalog, `bot/locales/<language>/LC_MESSAGES/sightline.po`, and one entry of the
`SIGHTLINE_LANGUAGES` setting (a locale such as `fr_BE`: the language picks the catalog, the region the
number and date formats).

Catalogs are compiled to `.mo` at install (`scripts/_setup.sh`, the Dockerfile). A `.mo` that is missing or
older than its `.po` (a fresh checkout, a `git pull`, an edited `.po`, `pip install -e .` by hand) is not trusted:
the `.po` is compiled in memory instead (~10 ms a catalog), so the bot never shows stale or missing translations.
That is an ordinary way to run, not a fault: it is logged at INFO, and `sightline doctor` mentions it. Writing the
compiled catalog beside the code or into a cache was not chosen: the install may be read-only (the container), two
processes would race to write it, and a cache can itself go stale; committing the `.mo` files would put build output
in git, one more thing a `.po` edit could leave behind.
"""

from __future__ import annotations

import gettext
import io
import logging
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime, format_timedelta
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal, format_percent
from babel.units import format_unit

logger = logging.getLogger(__name__)

DOMAIN = "sightline"
LOCALES_DIR = Path(__file__).with_name("locales")
SOURCE_LANGUAGE = "en"
COMMAND_CONTEXT = "command"  # msgctxt of the localised command names (aliases)
COMMAND_NAME = re.compile(r"[a-z0-9_]{1,32}")  # what Telegram accepts as a command


class LanguageError(ValueError):
    """A configured language has no catalog, or is not a locale Babel knows."""


def N_(message: str) -> str:
    """Mark a string for extraction; it is translated where it is used (`language._(message)`)."""
    return message


def catalog_files(language: str, locales_dir: Path = LOCALES_DIR) -> tuple[Path, Path]:
    """The .po and .mo files of a language's catalog (they may not exist)."""
    po = locales_dir / language / "LC_MESSAGES" / f"{DOMAIN}.po"
    return po, po.with_suffix(".mo")


# An installer writes a package's files one after the other: from a wheel, a .po lands a fraction of a millisecond
# after its .mo (measured: 0.35 ms, pip install of our wheel). Only a .po clearly newer than its .mo - edited, or
# updated by git, after the compile - makes the .mo stale.
MTIME_SLACK_SECONDS = 2.0


def is_stale(po: Path, mo: Path) -> bool:
    """True when the .mo is missing, or older than its .po (beyond what installing both files takes)."""
    if not mo.is_file():
        return True
    return po.is_file() and po.stat().st_mtime > mo.stat().st_mtime + MTIME_SLACK_SECONDS


def compile_po(po: Path) -> gettext.GNUTranslations:
    """Compile a .po file in memory (fuzzy entries left out, as `pybabel compile` does)."""
    with po.open("rb") as f:
        catalog = read_po(f, locale=po.parent.parent.name, domain=DOMAIN)
    buf = io.BytesIO()
    write_mo(buf, catalog)
    buf.seek(0)
    return gettext.GNUTranslations(buf)


def load_translations(language: str, locales_dir: Path = LOCALES_DIR) -> gettext.GNUTranslations | None:
    """The compiled catalog of `language` ("fr" or "fr_BE"), or None when there is none.

    Uses the .mo when it is at least as new as the .po; otherwise compiles the .po in memory (logged at INFO: the
    translations are right either way; `scripts/catalogs compile` saves the ~10 ms).
    """
    po, mo = catalog_files(language, locales_dir)
    if not is_stale(po, mo):
        with mo.open("rb") as f:
            return gettext.GNUTranslations(f)
    if not po.is_file():
        return None
    started = time.perf_counter()
    translations = compile_po(po)
    logger.info(
        "catalog %s: %s, so %s was compiled in memory (%.0f ms; scripts/catalogs compile writes the .mo)",
        language, "the .mo is older than the .po" if mo.is_file() else "no .mo", po, (time.perf_counter() - started) * 1000,
    )
    return translations


class Language:
    """One language of the bot: its translations and how it writes numbers, percentages, durations, dates."""

    def __init__(self, locale: Locale, translations: gettext.NullTranslations) -> None:
        self.locale = locale
        self.translations = translations

    @property
    def code(self) -> str:
        """The language code ("fr"), as Telegram's language_code and the users table spell it."""
        return str(self.locale.language)

    @property
    def tag(self) -> str:
        """The full locale ("fr_BE")."""
        return str(self.locale)

    @property
    def name(self) -> str:
        """The language's own name, capitalised: "Français", "Nederlands", "Deutsch", "English"."""
        name = self.locale.get_language_name(self.locale) or self.code
        return name[:1].upper() + name[1:]

    def __repr__(self) -> str:
        return f"Language({self.tag!r})"

    # -- messages (Babel extracts these calls: keywords _, ngettext, pgettext) ----------------
    def _(self, message: str) -> str:
        """The translation of `message`."""
        return self.translations.gettext(message)

    def ngettext(self, singular: str, plural: str, n: int) -> str:
        """The plural form of this language for a count of n."""
        return self.translations.ngettext(singular, plural, n)

    def pgettext(self, context: str, message: str) -> str:
        """The translation of `message` in a context (e.g. a command name, a band)."""
        return self.translations.pgettext(context, message)

    def command(self, name: str) -> str:
        """This language's name of a command ("help" -> "aide"); the English name when none is valid."""
        alias = self.pgettext(COMMAND_CONTEXT, name)
        return alias if COMMAND_NAME.fullmatch(alias) else name

    # -- formats ----------------------------------------------------------------------------
    def number(self, value: float, digits: int = 0) -> str:
        """A number with this locale's separators ("12,345" / "12.345" / "12 345"), `digits` decimals."""
        pattern = "#,##0" + ("." + "0" * digits if digits > 0 else "")
        return format_decimal(value, format=pattern, locale=self.locale)

    def percent(self, fraction: float) -> str:
        """A fraction as a whole percentage, this locale's way ("87%", "87 %")."""
        return format_percent(fraction, locale=self.locale)  # the locale's own pattern: whole percentages

    def duration(self, seconds: float) -> str:
        """A duration in words: "90 seconds", "2 minutes", "1 hour" (seconds up to two minutes)."""
        return format_timedelta(timedelta(seconds=seconds), threshold=2, locale=self.locale)

    def minutes(self, n: int) -> str:
        """A whole number of minutes in words: "1 minute", "60 minutes", "1 minuut" (CLDR unit names)."""
        return format_unit(n, "duration-minute", length="long", locale=self.locale)

    def date(self, value: date | datetime) -> str:
        """A date, medium length ("31 janv. 2025", "31 jan. 2025")."""
        return format_date(value, format="medium", locale=self.locale)

    def date_time(self, value: datetime) -> str:
        """A date and time, medium length."""
        return format_datetime(value, format="medium", locale=self.locale)


ENGLISH = Language(Locale(SOURCE_LANGUAGE), gettext.NullTranslations())


def parse_locale(tag: str) -> Locale:
    """A Babel Locale from "fr_BE", "fr-BE" or "fr"; raises LanguageError."""
    try:
        return Locale.parse(tag.strip().replace("-", "_"))
    except (UnknownLocaleError, ValueError) as exc:
        raise LanguageError(f"{tag!r} is not a locale (examples: en, fr_BE, nl_BE, de_BE)") from exc


def load_language(tag: str, locales_dir: Path = LOCALES_DIR) -> Language:
    """A configured language with its catalog (the locale's own catalog, else its language's); raises LanguageError."""
    locale = parse_locale(tag)
    if locale.language == SOURCE_LANGUAGE:
        return Language(locale, gettext.NullTranslations())
    for name in dict.fromkeys((str(locale), locale.language)):
        translations = load_translations(name, locales_dir)
        if translations is not None:
            return Language(locale, translations)
    po, _ = catalog_files(locale.language, locales_dir)
    raise LanguageError(f"no catalog for {tag}: expected {po} (see README, 'Adding a language')")


class Languages:
    """The bot's configured languages; the first is the default."""

    def __init__(self, languages: Sequence[Language]) -> None:
        if not languages:
            raise LanguageError("no language configured")
        self.by_code: dict[str, Language] = {}
        for language in languages:
            self.by_code.setdefault(language.code, language)
        self.default = languages[0]

    @classmethod
    def load(cls, tags: Iterable[str], locales_dir: Path = LOCALES_DIR) -> Languages:
        """Load each configured locale's catalog; raises LanguageError for an unknown locale or a missing catalog."""
        return cls([load_language(tag, locales_dir) for tag in tags if tag.strip()])

    def __iter__(self) -> Iterator[Language]:
        return iter(self.by_code.values())

    def __len__(self) -> int:
        return len(self.by_code)

    def get(self, code: str | None) -> Language | None:
        """The language with this code ("fr", "fr-BE", "FR"), or None."""
        if not code:
            return None
        tag = code.strip().replace("-", "_")
        return self.by_code.get(tag.split("_", 1)[0].lower())

    def choose(self, stored: str | None, telegram_code: str | None) -> Language:
        """The language of an account: the one it chose (/language), else its Telegram app's, else the default."""
        return self.get(stored) or self.get(telegram_code) or self.default

    def aliases(self) -> dict[str, list[str]]:
        """Command name -> its names in the other languages (from the catalogs' "command" context)."""
        out: dict[str, list[str]] = {}
        for language in self:
            for name, alias in language_command_names(language).items():
                if alias != name and alias not in out.setdefault(name, []):
                    out[name].append(alias)
        return out


def language_command_names(language: Language) -> dict[str, str]:
    """Command name -> this language's name, for every command the catalog names."""
    from bot.texts import LOCALISED_COMMANDS

    return {name: language.command(name) for name in LOCALISED_COMMANDS}


def parse_tags(setting: str) -> list[str]:
    """The locales of the SIGHTLINE_LANGUAGES setting, in order."""
    return [tag.strip() for tag in setting.split(",") if tag.strip()]


def describe(languages: Languages) -> str:
    """One line for the start-up log: "en (default), fr_BE, nl_BE, de_BE"."""
    return ", ".join(f"{lang.tag} (default)" if lang is languages.default else lang.tag for lang in languages)


__all__ = [
    "DOMAIN", "ENGLISH", "LOCALES_DIR", "Language", "LanguageError", "Languages", "N_", "describe", "load_language",
    "load_translations", "parse_tags",
]
