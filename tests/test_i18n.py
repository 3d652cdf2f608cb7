"""The translation catalogs and the language machinery: complete catalogs, matching placeholders, plural forms,
locale formats, compiling at install or in memory, choosing a language, and the users.language column."""

from __future__ import annotations

import logging
import os
import re
import shutil
import sqlite3
import string
from pathlib import Path

import pytest
from babel import Locale
from babel.messages.catalog import Catalog
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.mofile import write_mo
from babel.messages.plurals import get_plural
from babel.messages.pofile import read_po

from bot import texts
from bot.i18n import (
    COMMAND_CONTEXT,
    ENGLISH,
    LOCALES_DIR,
    LanguageError,
    Languages,
    catalog_files,
    load_language,
    load_translations,
)
from engine import Engine, NotFound
from engine.store import MetadataStore

BOT_DIR = Path(texts.__file__).resolve().parent
KEYWORDS = {**DEFAULT_KEYWORDS, "N_": None, "NC_": ((1, "c"), 2)}  # as scripts/catalogs extracts
CATALOGS = sorted(p.name for p in LOCALES_DIR.iterdir() if (p / "LC_MESSAGES" / "sightline.po").is_file())
COMMAND_IN_TEXT = re.compile(r"(?<![\w/])/([a-z0-9_]+)")


def read_catalog(language: str) -> Catalog:
    """The .po of a language, parsed."""
    po, _ = catalog_files(language)
    with po.open("rb") as f:
        return read_po(f, locale=language)


def source_messages() -> dict[tuple[str | None, str], tuple[str, ...]]:
    """Every message the source marks for translation, extracted now: (context, msgid) -> msgid and plural."""
    out: dict[tuple[str | None, str], tuple[str, ...]] = {}
    for _file, _line, message, _comments, context in extract_from_dir(str(BOT_DIR), keywords=KEYWORDS):
        ids = (message,) if isinstance(message, str) else tuple(message)
        out[(context, ids[0])] = ids
    return out


def fields(text: str) -> set[str]:
    """The str.format placeholders of a text ("{n}", "{case}")."""
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


def test_every_configured_language_has_a_catalog() -> None:
    from bot.settings import Settings

    assert {"de", "fr", "nl"} <= set(CATALOGS)
    default = Settings.model_fields["languages"].default
    assert [lang.tag for lang in Languages.load(default.split(","))] == default.split(",")
    assert {tag.split("_")[0] for tag in default.split(",")} == {"en", *CATALOGS}


@pytest.mark.parametrize("language", CATALOGS)
def test_catalog_is_complete_and_up_to_date_with_the_source(language: str) -> None:
    catalog = read_catalog(language)
    source = source_messages()
    assert len(source) > 80
    have = {(m.context, m.id if isinstance(m.id, str) else m.id[0]): m for m in catalog if m.id}
    missing = [key for key in source if key not in have]
    assert not missing, f"{language}: not in the catalog (run scripts/catalogs extract, then translate): {missing}"
    stale = [key for key in have if key not in source]
    assert not stale, f"{language}: no longer in the source (run scripts/catalogs extract): {stale}"
    for key, message in have.items():
        assert not message.fuzzy, f"{language}: fuzzy (check it, then remove the flag): {key}"
        forms = [message.string] if isinstance(message.string, str) else list(message.string)
        assert forms and all(forms), f"{language}: untranslated: {key}"
        words = re.sub(r"\{\w+\}|[^\w]", " ", key[1]).split()
        if len(words) > 1:  # one word may be the same ("possible", "start", "{size} MB"); a sentence may not
            assert forms[-1] != source[key][-1], f"{language}: left in English: {key}"


@pytest.mark.parametrize("language", CATALOGS)
def test_every_translation_has_the_placeholders_of_its_english_original(language: str) -> None:
    for message in read_catalog(language):
        if not message.id:
            continue
        ids = (message.id,) if isinstance(message.id, str) else tuple(message.id)
        forms = (message.string,) if isinstance(message.string, str) else tuple(message.string)
        want = fields(ids[-1])
        assert all(fields(i) == want for i in ids), ids
        for form in forms:
            assert fields(form) == want, f"{language}: {form!r} has {fields(form)}, {ids[-1]!r} has {want}"
            form.format(**{name: "x" for name in want})  # balanced braces, nothing else str.format would trip on


@pytest.mark.parametrize("language", CATALOGS)
def test_plural_forms_are_the_languages_own(language: str) -> None:
    catalog = read_catalog(language)
    assert catalog.num_plurals == get_plural(language).num_plurals
    assert catalog.plural_expr == get_plural(language).plural_expr
    for message in catalog:
        if message.id and not isinstance(message.id, str):
            assert len(message.string) == catalog.num_plurals, message.id


@pytest.mark.parametrize("language", CATALOGS)
def test_commands_named_in_a_translation_work_in_that_language(language: str) -> None:
    t = load_language(language)
    for name in texts.LOCALISED_COMMANDS:
        alias = t.pgettext(COMMAND_CONTEXT, name)
        assert re.fullmatch(r"[a-z0-9_]{1,32}", alias), f"{language}: /{alias} is not a Telegram command name"
    own = {t.command(name) for name in texts.LOCALISED_COMMANDS}  # /aide, not /help, in French
    admin = {name for name, _ in texts.ADMIN_COMMANDS}
    assert own & {"aide", "hulp", "hilfe"}
    for message in read_catalog(language):
        forms = [message.string] if isinstance(message.string, str) else list(message.string)
        for form in forms:
            for command in COMMAND_IN_TEXT.findall(form):
                assert command in own or command in admin, f"{language}: {form!r} names /{command}"


def test_plural_forms_choose_the_right_words() -> None:
    fr, nl, de = (load_language(tag) for tag in ("fr_BE", "nl_BE", "de_BE"))
    assert [texts.matches_count(ENGLISH, n) for n in (0, 1, 2)] == ["0 matches.", "1 match.", "2 matches."]
    assert [texts.matches_count(fr, n) for n in (0, 1, 2)] == ["0 résultat.", "1 résultat.", "2 résultats."]
    assert texts.matches_count(fr, 1_000_000) == "1\u202f000\u202f000 de résultats."
    assert [texts.matches_count(nl, n) for n in (1, 2)] == ["1 resultaat.", "2 resultaten."]
    assert [texts.matches_count(de, n) for n in (1, 2)] == ["1 Treffer.", "2 Treffer."]
    assert texts.help_text(de, False, None, 1).splitlines()[2].startswith("Sie können bis zu 1 Foto pro Stunde senden")
    assert texts.help_text(de, False, None, 30).splitlines()[2].startswith("Sie können bis zu 30 Fotos pro Stunde senden")
    assert texts.rate_limited(nl, 1, 30) == "U hebt de limiet van 1 opzoeking per uur bereikt. Probeer het opnieuw over 1 minuut."


def test_numbers_percentages_and_durations_follow_the_locale() -> None:
    en, fr, nl, de = (load_language(tag) for tag in ("en", "fr_BE", "nl_BE", "de_BE"))
    assert [t.number(1_234_567) for t in (en, fr, nl, de)] == ["1,234,567", "1\u202f234\u202f567", "1.234.567", "1.234.567"]
    assert [t.number(3.46, 1) for t in (en, fr, nl, de)] == ["3.5", "3,5", "3,5", "3,5"]
    assert [t.percent(0.873) for t in (en, fr, nl, de)] == ["87%", "87\u00a0%", "87%", "87\u00a0%"]
    assert [t.duration(120) for t in (en, fr, nl, de)] == ["2 minutes", "2 minutes", "2 minuten", "2 Minuten"]
    assert [t.duration(1) for t in (en, fr, nl, de)] == ["1 second", "1\u00a0seconde", "1 seconde", "1 Sekunde"]
    assert fr.date(__import__("datetime").date(2025, 1, 31)) == "31 janv. 2025"
    assert texts.strangers(nl, 3.46, 80_000) == "zwak: ~3,5 onbekenden in deze beeldbank van 80.000 gezichten kunnen zo hoog scoren"
    assert [t.minutes(1) for t in (en, nl, de)] == ["1 minute", "1 minuut", "1 Minute"]
    assert "up to 20 MB)" in texts.help_text(en, False, None, 30) and "jusqu'à 20\u00a0Mo)" in texts.help_text(fr, False, None, 30)
    assert texts.too_big(fr, 30_500_000, 25 * 1024 * 1024).startswith(
        "Ce fichier est trop volumineux (30,5\u00a0Mo)\u00a0: la limite est de 26\u00a0Mo."
    )


def test_engine_quality_warnings_are_said_again_in_the_language() -> None:
    fr = load_language("fr_BE")
    engine_words = [  # as engine/faces.py FaceModel.quality writes them
        "face is 1200 px wide, 30 px once the photo is scaled down (crop around it)", "face is 38 px wide",
        "detector is unsure it is a face (55%)", "face is blurred", "head is turned (~52°)",
        "face found only by a second, less strict detection (63%)",
    ]
    assert [texts.warning_text(fr, w) for w in engine_words] == [
        "visage de 1\u202f200 px de large, 30 px une fois la photo réduite (recadrez autour du visage)",
        "visage de 38 px de large", "le détecteur doute qu'il s'agisse d'un visage (55\u00a0%)", "visage flou",
        "tête tournée (~52°)", "visage trouvé seulement par une seconde détection, moins stricte (63\u00a0%)",
    ]


def test_the_legal_caution_is_in_every_language() -> None:
    words = {"en": "leads, not identifications", "fr": "une piste, pas une identification",
             "nl": "een spoor, geen identificatie", "de": "ein Ermittlungsansatz, keine Identifizierung"}
    for code, phrase in words.items():
        t = load_language(code)
        assert phrase in texts.leads_not_ids(t) and phrase in texts.start(t)


def test_a_language_is_chosen_from_the_account_then_telegram_then_the_default() -> None:
    languages = Languages.load(["en", "fr_BE", "nl_BE", "de_BE"])
    assert [lang.code for lang in languages] == ["en", "fr", "nl", "de"]
    assert languages.choose(None, None).code == "en"
    assert languages.choose(None, "fr").tag == "fr_BE"
    assert languages.choose(None, "nl-BE").code == "nl"
    assert languages.choose(None, "DE").code == "de"
    assert languages.choose(None, "pt-br").code == "en"  # not offered: the default
    assert languages.choose("nl", "fr").code == "nl"  # the account's choice wins over its app's language
    assert languages.choose("es", "de").code == "de"  # a choice the operator no longer offers is ignored
    assert [lang.name for lang in languages] == ["English", "Français", "Nederlands", "Deutsch"]
    assert Languages.load(["de_BE", "en"]).choose(None, "ja").code == "de"  # the first is the default
    assert languages.aliases() == {"help": ["aide", "hulp", "hilfe"], "case": ["dossier", "akte"],
                                   "language": ["langue", "taal", "sprache"]}


def test_a_language_without_a_catalog_or_an_unknown_locale_is_refused() -> None:
    with pytest.raises(LanguageError, match="no catalog for es_ES"):
        Languages.load(["en", "es_ES"])
    with pytest.raises(LanguageError, match="not a locale"):
        Languages.load(["xx_YY"])


def test_a_missing_or_stale_mo_is_replaced_by_compiling_the_po_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    locales = tmp_path / "locales"
    shutil.copytree(LOCALES_DIR / "fr", locales / "fr", ignore=shutil.ignore_patterns("*.mo"))
    po, mo = catalog_files("fr", locales)
    with caplog.at_level(logging.INFO, logger="bot.i18n"):
        fresh = load_translations("fr", locales)
    assert fresh is not None and fresh.gettext("No case") == "Pas de dossier"
    assert "no .mo, so" in caplog.text and not mo.exists()  # compiled in memory: nothing written beside the code
    # A fresh checkout run as the README says is not a fault: no warning (every command printed one per language).
    assert [r.levelname for r in caplog.records] == ["INFO"], caplog.records

    with po.open("rb") as f:  # an old .mo: compiled before the .po changed
        catalog = read_po(f, locale="fr")
    catalog.get("No case").string = "Ancienne traduction"
    with mo.open("wb") as f:
        write_mo(f, catalog)
    os.utime(mo, (po.stat().st_mtime - 60, po.stat().st_mtime - 60))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bot.i18n"):
        assert load_translations("fr", locales).gettext("No case") == "Pas de dossier"  # type: ignore[union-attr]
    assert "the .mo is older than the .po" in caplog.text and [r.levelname for r in caplog.records] == ["INFO"]

    mtime = po.stat().st_mtime  # as pip installs a wheel: the .po written 0.35 ms after its .mo; the .mo is current
    os.utime(mo, (mtime - 0.00035, mtime - 0.00035))
    caplog.clear()
    assert load_translations("fr", locales).gettext("No case") == "Ancienne traduction"  # type: ignore[union-attr]
    assert not caplog.text
    os.utime(mo, None)  # now the .mo is the newer file: it is what install compiled, and it is used as is
    caplog.clear()
    assert load_translations("fr", locales).gettext("No case") == "Ancienne traduction"  # type: ignore[union-attr]
    assert not caplog.text
    assert load_translations("es", locales) is None


def test_install_compiles_the_catalogs_and_doctor_says_so(tmp_path: Path) -> None:
    """What scripts/_setup.sh and the Dockerfile run (pybabel compile) gives .mo files the bot uses as they are."""
    import subprocess
    import sys

    from bot.doctor import check_languages
    from bot.settings import Settings

    locales = tmp_path / "locales"
    shutil.copytree(LOCALES_DIR, locales, ignore=shutil.ignore_patterns("*.mo"))
    settings = Settings(languages="en,fr_BE,nl_BE,de_BE")
    warned = check_languages(settings, locales)
    assert warned.status == "ok" and "; fr, nl, de not compiled" in warned.detail  # fr_BE falls back to fr
    pybabel = Path(sys.executable).with_name("pybabel")
    subprocess.run([str(pybabel), "-q", "compile", "-d", str(locales), "-D", "sightline"], check=True)
    for language in CATALOGS:
        assert catalog_files(language, locales)[1].is_file()
    ok = check_languages(settings, locales)
    assert (ok.status, ok.detail) == ("ok", "en (default), fr_BE, nl_BE, de_BE")
    assert check_languages(Settings(languages="en,es_ES"), locales).status == "fail"


def test_locale_names_are_valid_babel_locales() -> None:
    for code in CATALOGS:
        assert Locale.parse(f"{code}_BE").territory == "BE"


async def test_users_table_gains_the_language_column_and_keeps_its_rows(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite3"
    with sqlite3.connect(db) as conn:  # the users table as the first release made it
        conn.execute("CREATE TABLE users (user_id INTEGER PRIMARY KEY, role TEXT NOT NULL CHECK (role IN "
                     "('admin', 'officer')), note TEXT NOT NULL DEFAULT '', added_by TEXT NOT NULL, "
                     "added_at TEXT NOT NULL, active_case TEXT)")
        conn.execute("INSERT INTO users VALUES (7, 'officer', 'unit 5', 'tg:1', '2025-01-01T00:00:00+00:00', 'OP-1')")
    store = await MetadataStore.open(db)
    try:
        assert await store.get_language(7) is None
        await store.set_language(7, "nl", actor="tg:7")  # audited in the same transaction
        assert await store.get_language(7) == "nl"
        with pytest.raises(NotFound):  # not whitelisted: nothing stored
            await store.set_language(8, "nl", actor="tg:8")
        user = await store.get_user(7)
        assert user is not None and (user.active_case, user.note) == ("OP-1", "unit 5")
    finally:
        await store.close()
    store = await MetadataStore.open(db)  # opening again: the migration is not repeated
    try:
        assert await store.get_language(7) == "nl"
    finally:
        await store.close()


async def test_a_language_choice_is_audited(gallery_copy: Path) -> None:
    from conftest import make_config

    engine = await Engine.open(make_config(gallery_copy))
    try:
        await engine.allow(77, "officer", actor="tg:1")
        await engine.set_language(77, "de", actor="tg:77")
        entry = (await engine.audit_tail(1))[0]
        assert (entry.actor, entry.action, entry.details) == ("tg:77", "language", {"user_id": 77, "language": "de"})
        assert await engine.language(77) == "de"
        with pytest.raises(Exception, match="not on the whitelist"):
            await engine.set_language(78, "de", actor="tg:78")
        assert (await engine.audit_verify()).ok
    finally:
        await engine.close()


async def test_report_in_french_keeps_audit_values_and_counts_answers_per_language(
    gallery_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    from bot.cli import main as cli_main
    from conftest import dev_identities, make_config

    ids = dev_identities()
    engine = await Engine.open(make_config(gallery_copy))
    try:
        await engine.search(ids["Barack_Obama"][1].read_bytes(), actor="tg:1", case="OP-1", language="fr")
        await engine.search(ids["Jeff_Bezos"][1].read_bytes(), actor="tg:2", case="OP-2", language="nl")
        await engine.record("tg:3", "refused", None, reason="no_case", lang="fr")
        await engine.forget(subject="Elon_Musk", actor="tg:9")
    finally:
        await engine.close()
    assert await asyncio.to_thread(cli_main, ["--data-dir", str(gallery_copy), "report", "--lang", "fr"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Rapport de contrôle Sightline\n")
    assert "Chaîne d'audit\u00a0: **vérifiée**" in out and "Réponses par langue\u00a0: fr 2, nl 1." in out
    assert "| utilisateur | recherches | avec résultats | taux de résultats | aucun visage |" in out
    assert "| tg:1 | 1 | 1 | 100\u00a0% | 0 |" in out  # audit values as recorded, numbers the French way
    assert "tg:9 forget: 1 image, 1 visage" in out and "## Modifications des accès" in out
    assert "janv." in out or "févr." in out or re.search(r"\d{1,2} [a-zéû]+\.? \d{4}", out)  # a French date

    assert await asyncio.to_thread(cli_main, ["--data-dir", str(gallery_copy), "report", "--lang", "xx"]) == 2
    err = capsys.readouterr().err
    assert "sightline: no report language 'xx'; available: en, fr, nl, de\n" in err, err


def test_picture_font_draws_every_letter_of_the_catalogs() -> None:
    from PIL import Image, ImageDraw

    from bot import render

    font = render.font(18)

    def glyph(ch: str) -> bytes:
        img = Image.new("L", (40, 40))
        ImageDraw.Draw(img).text((5, 5), ch, fill=255, font=font)
        return img.tobytes()

    missing = glyph("\U0010fffd")  # a code point no font has: its "missing glyph" box
    letters = {ch for language in CATALOGS for m in read_catalog(language) if m.id
               for form in ([m.string] if isinstance(m.string, str) else m.string) for ch in form if ord(ch) > 127}
    letters |= set("Müller Ødegård Çelik Łukasz")
    assert {ch for ch in letters if ch.isalpha() and glyph(ch) == missing} == set()


def test_a_command_name_another_command_owns_is_not_registered(caplog: pytest.LogCaptureFixture) -> None:
    import gettext
    import io
    from types import SimpleNamespace

    from bot.app import command_aliases
    from bot.i18n import Language

    catalog = Catalog(locale="es")  # a careless catalog: "help" named like the English "case", "case" like /allow
    catalog.add("help", "case", context=COMMAND_CONTEXT)
    catalog.add("case", "allow", context=COMMAND_CONTEXT)
    catalog.add("language", "idioma", context=COMMAND_CONTEXT)
    buf = io.BytesIO()
    write_mo(buf, catalog)
    buf.seek(0)
    spanish = Language(Locale.parse("es_ES"), gettext.GNUTranslations(buf))
    services = SimpleNamespace(languages=Languages([ENGLISH, load_language("fr_BE"), spanish]))
    with caplog.at_level(logging.WARNING, logger="bot.app"):
        aliases = command_aliases(services)  # type: ignore[arg-type]
    assert aliases == {"help": ["aide"], "case": ["dossier"], "language": ["langue", "idioma"]}
    assert "/case (for /help) is already taken" in caplog.text and "/allow (for /case) is already taken" in caplog.text
