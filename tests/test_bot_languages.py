"""Officers in their own language, over real HTTP with the real engine: the whole officer flow in French, Dutch
and German without one English word; /language remembered per account; menus and command names per language;
the audit records the language of each answer."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import pytest
from babel.messages.pofile import read_po
from test_bot_search import first_match, side_by_side

from bot import texts
from bot.i18n import ENGLISH, catalog_files, load_language
from conftest import BOT_ADMIN, CALIB, DEV, BotHarness, dev_identities, new_user_id
from engine import Engine

StartBot = Callable[..., Awaitable[BotHarness]]
GREETING = {"fr": "bonjour", "nl": "goeiedag", "de": "guten Tag", "en": "hello"}
PLACEHOLDER_OR_LINE = re.compile(r"\{\w+\}|\n")
WORD = re.compile(r"[^\W\d_]{2,}")


def messages(language: str) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """(English msgid and plural, translated forms) of every message of a catalog."""
    po, _ = catalog_files("fr" if language == "en" else language)
    with po.open("rb") as f:
        catalog = read_po(f)
    out = []
    for m in catalog:
        if not m.id:
            continue
        ids = (m.id,) if isinstance(m.id, str) else tuple(m.id)
        forms = (m.string,) if isinstance(m.string, str) else tuple(m.string)
        out.append((ids, ids if language == "en" else forms))
    return out


def pieces(texts_: list[str]) -> list[str]:
    """The literal pieces of message texts (what lies between placeholders and line breaks), longest first."""
    found = {p.strip() for text in texts_ for p in PLACEHOLDER_OR_LINE.split(text)}
    return sorted((p for p in found if WORD.search(p)), key=len, reverse=True)


class Vocabulary:
    """What a language's answers may contain: the pieces of its catalog, and English pieces that must not appear."""

    def __init__(self, language: str) -> None:
        catalog = messages(language)
        t = load_language(language)
        cldr = [re.sub(r"[\d\s]+", " ", t.duration(s)) for s in (1, 2, 90, 120, 3600, 7200)]  # Babel's unit words
        cldr += [re.sub(r"[\d\s]+", " ", t.minutes(n)) for n in (1, 2)]
        self.own = pieces([form for _, forms in catalog for form in forms] + cldr)
        english_only = []
        for ids, forms in catalog:  # an English piece is foreign unless this very message says it too ("JPEG, PNG")
            english_only += [p for p in pieces(list(ids)) if len(p.split()) >= 2 and not any(p in f for f in forms)]
        self.english = sorted(set(english_only), key=len, reverse=True)
        assert language == "en" or len(self.english) > 80

    def leftover(self, text: str, data: list[str]) -> list[str]:
        """Words of `text` that no piece of this language's catalog explains (data and links aside)."""
        text = re.sub(r"https?://\S+", " ", text)
        for value in sorted(data, key=len, reverse=True):
            text = text.replace(value, " ")
        for piece in self.own:
            text = text.replace(piece, " ")
        return WORD.findall(text)

    def english_in(self, text: str) -> list[str]:
        """English phrases (from the English msgids) found in `text`."""
        return [p for p in self.english if p in text]


def shown_to(bot: BotHarness, user_id: int, since: int) -> list[str]:
    """Every text the user was shown since `since`: messages, captions, edits, buttons, toasts and alerts."""
    out: list[str] = []
    for call in bot.fake.calls[since:]:
        if call.method == "answerCallbackQuery":  # one officer at a time in these tests: every toast is theirs
            out += [call.params["text"]] if call.params.get("text") else []
            continue
        if call.params.get("chat_id") not in (user_id, str(user_id)):
            continue
        if call.method in ("sendMessage", "sendPhoto", "editMessageText", "editMessageCaption"):
            out += [call.text] + [b["text"] for b in call.buttons if not str(b.get("callback_data", "")).startswith("lang:")]
    return out


async def officer_flow(bot: BotHarness, bot_engine: Engine, language: str) -> tuple[int, list[str]]:
    """One officer's whole day with the bot, in the language of their Telegram app; returns their id and case."""
    t = load_language(language)
    officer = new_user_id()
    case = f"BE-{language.upper()}-7"
    bot.fake.set_user_language(officer, language)

    refused = await bot.command(officer, GREETING[language])  # not whitelisted yet
    assert refused.text == texts.not_authorised(t, officer, bot.settings.stranger_quiet_seconds) and str(officer) in refused.text
    await bot.command(BOT_ADMIN, f"/allow {officer} officer")
    welcome = await bot.fake.wait_for("sendMessage", chat_id=officer)
    assert welcome.text == texts.welcome(t, "officer")

    assert (await bot.command(officer, "/start")).text == texts.start(t)
    helped = await bot.command(officer, f"/{t.command('help')}")  # /aide, /hulp, /hilfe
    assert helped.text == texts.help_text(t, False, None, bot.settings.rate_limit_per_hour)

    photo = (DEV / "Ariel_Sharon" / "2.jpg").read_bytes()
    bot.fake.send_photo(officer, photo)  # no case yet
    assert (await bot.fake.wait_for("sendMessage", chat_id=officer)).text == texts.need_case(t)
    set_case = await bot.command(officer, f"/{t.command('case')} {case}")
    assert set_case.text == texts.case_set(t, case)

    bot.fake.send_photo(officer, photo)  # several matches: two per page, and a More button
    page1 = await bot.fake.wait_for("sendPhoto", chat_id=officer)
    assert texts.leads_not_ids(t) in page1.text.splitlines()
    more = [b for b in page1.buttons if "callback_data" in b]
    assert len(more) == 1 and more[0]["text"] == texts.more_button(t, 2, 4, 4)
    mark = bot.fake.press(officer, page1.message, more[0]["callback_data"])
    page2 = await bot.fake.wait_for("sendPhoto", chat_id=officer, since=mark)
    assert texts.matches_range(t, 2, 4, 4) in page2.text.splitlines()

    bot.fake.send_photo(officer, side_by_side("Barack_Obama/2.jpg", "Jeff_Bezos/2.jpg"))  # two faces: which one?
    chooser = await bot.fake.wait_for("sendPhoto", chat_id=officer)
    assert [b["text"] for b in chooser.buttons] == [texts.face_button(t, 1), texts.face_button(t, 2)]
    mark = bot.fake.press(officer, chooser.message, chooser.buttons[1]["callback_data"])
    assert (await bot.fake.wait_for("answerCallbackQuery", since=mark)).params["text"] == texts.searching_face(t, 2)
    result = await bot.fake.wait_for("sendPhoto", chat_id=officer, since=mark)
    assert first_match(result.text).startswith("1. Jeff_Bezos - ")

    bot.fake.send_photo(officer, (CALIB / "Aaron_Guiel" / "1.jpg").read_bytes())  # nobody in the gallery
    no_match = await bot.fake.wait_for("sendMessage", chat_id=officer)
    assert no_match.text.splitlines()[1] == texts.no_match(t, case, 1, 0.5, ()).splitlines()[1]

    assert (await bot.command(officer, "/frobnicate")).text == texts.unknown_command(t)
    assert (await bot.command(officer, "/revoke 1")).text == texts.admin_only(t)
    assert (await bot.command(officer, GREETING[language])).text == texts.send_a_photo(t)
    clear = t.pgettext("argument", "clear")
    assert (await bot.command(officer, f"/{t.command('case')} {clear}")).text == texts.case_cleared(t)
    chooser = await bot.command(officer, f"/{t.command('language')}")
    assert chooser.text == texts.choose_language(t)
    names = {"en": "English", "fr": "Français", "nl": "Nederlands", "de": "Deutsch"}  # each in its own language
    assert [b["text"] for b in chooser.buttons] == [("✓ " if code == language else "") + name for code, name in names.items()]
    return officer, [case]


@pytest.fixture(scope="module")
async def more_matches(bot_engine: Engine) -> None:
    """Ariel Sharon's photos 3-5 in the shared gallery, so one search has four matches (as test_bot_search does)."""
    for n in (3, 4, 5):
        await bot_engine.enroll((DEV / "Ariel_Sharon" / f"{n}.jpg").read_bytes(), subject="Ariel_Sharon",
                                source_url=f"https://gallery.example/Ariel_Sharon/{n}.jpg", actor="test")


@pytest.mark.parametrize("language", ["fr", "nl", "de"])
async def test_whole_officer_flow_has_no_english_left(
    start_bot: StartBot, bot_engine: Engine, more_matches: None, language: str
) -> None:
    bot = await start_bot(results_per_page=2)
    mark = bot.fake.mark()
    officer, data = await officer_flow(bot, bot_engine, language)
    shown = shown_to(bot, officer, mark)
    assert len(shown) > 20
    vocabulary = Vocabulary(language)
    subjects = list(dev_identities())
    for text in shown:
        assert not vocabulary.english_in(text), f"English in a {language} answer: {vocabulary.english_in(text)}\n{text}"
        leftover = vocabulary.leftover(text, subjects + data + [str(officer)])
        assert not leftover, f"{language}: {leftover} is in no {language} message of the catalog:\n{text}"

    menu = bot.fake.menu(language_code=language)  # Telegram shows this menu to apps in that language
    assert menu is not None and [c["command"] for c in menu] == ["start", *(load_language(language).command(n) for n in
                                                                            ("help", "case", "language"))]
    for command in menu:
        assert not vocabulary.english_in(command["description"])
        assert not vocabulary.leftover(command["description"], []), command

    searches = [e for e in await bot_engine.audit_tail(60) if e.actor == f"tg:{officer}" and e.action == "search"]
    assert len(searches) == 3 and {e.details["lang"] for e in searches} == {language}
    refused = [e for e in await bot_engine.audit_tail(60) if e.actor == f"tg:{officer}" and e.action == "refused"]
    assert {(e.details["reason"], e.details["lang"]) for e in refused} == {
        ("not_whitelisted", language), ("no_case", language), ("not_admin", language)
    }


async def test_the_check_catches_english(start_bot: StartBot, bot_engine: Engine, more_matches: None) -> None:
    """The same flow in English, checked against the French catalog, fails on every kind of text: the check can fail."""
    bot = await start_bot(results_per_page=2)
    mark = bot.fake.mark()
    officer, data = await officer_flow(bot, bot_engine, "en")
    shown = shown_to(bot, officer, mark)
    english, french = Vocabulary("en"), Vocabulary("fr")
    subjects = list(dev_identities())
    assert all(not english.leftover(text, subjects + data + [str(officer)]) for text in shown)  # all from the catalog
    same_in_french = {texts.source_button(load_language("fr"), n) for n in range(1, 10)}  # "1. source"
    missed = [text for text in shown if not (french.english_in(text) or french.leftover(text, subjects + data))]
    assert missed and set(missed) <= same_in_french


async def test_a_chosen_language_is_remembered_and_beats_the_app_language(
    start_bot: StartBot, bot_engine: Engine
) -> None:
    bot = await start_bot()
    officer = new_user_id()
    bot.fake.set_user_language(officer, "de")
    await bot.command(BOT_ADMIN, f"/allow {officer} officer")
    assert (await bot.fake.wait_for("sendMessage", chat_id=officer)).text == texts.welcome(ENGLISH, "officer")
    de, nl = load_language("de_BE"), load_language("nl_BE")
    assert (await bot.command(officer, "/hilfe")).text.startswith(texts.help_text(de, False, None, 30).split("\n")[0])

    chooser = await bot.command(officer, "/sprache")
    nl_button = next(b for b in chooser.buttons if b["callback_data"] == "lang:nl")
    assert [b["text"] for b in chooser.buttons] == ["English", "Français", "Nederlands", "✓ Deutsch"]
    mark = bot.fake.press(officer, chooser.message, nl_button["callback_data"])
    edited = await bot.fake.wait_for("editMessageText", since=mark)
    assert edited.params["text"] == texts.language_set(nl) == "Vanaf nu antwoord ik in het Nederlands."
    await bot.fake.wait_for("setMyCommands", since=mark, scope={"type": "chat", "chat_id": officer})
    assert [c["command"] for c in bot.fake.menu(chat_id=officer) or []] == ["start", "hulp", "dossier", "taal"]
    assert await bot_engine.language(officer) == "nl"
    entry = next(e for e in reversed(await bot_engine.audit_tail(10)) if e.action == "language")
    assert (entry.actor, entry.details) == (f"tg:{officer}", {"user_id": officer, "language": "nl"})

    # The app still says German; the account said Dutch: Dutch it is, also for English command names.
    assert (await bot.command(officer, "/case")).text == texts.case_shown(nl, None)
    assert (await bot.command(officer, "/hilfe")).text == texts.help_text(nl, False, None, 30)

    bot2 = await start_bot()  # a restart: the choice is in the database, not in memory
    bot2.fake.set_user_language(officer, "fr")
    assert (await bot2.command(officer, "/aide")).text == texts.help_text(nl, False, None, 30)
    # An admin's refused-then-allowed officer is welcomed in the language the stranger wrote in.
    stranger = new_user_id()
    bot2.fake.set_user_language(stranger, "fr")
    await bot2.command(stranger, "bonjour")
    await bot2.command(BOT_ADMIN, f"/allow {stranger} officer")
    welcome = await bot2.fake.wait_for("sendMessage", chat_id=stranger)
    assert welcome.text == texts.welcome(load_language("fr"), "officer")
    assert "/aide" in welcome.text and "enquêteur" in welcome.text


async def test_menus_are_published_per_language_and_admin_words_stay_english(start_bot: StartBot) -> None:
    bot = await start_bot()
    default = bot.fake.menu()
    assert default is not None and [c["command"] for c in default] == ["start", "help", "case", "language"]
    assert [c["command"] for c in bot.fake.menu(language_code="fr") or []] == ["start", "aide", "dossier", "langue"]
    assert [c["command"] for c in bot.fake.menu(language_code="nl") or []] == ["start", "hulp", "dossier", "taal"]
    assert [c["command"] for c in bot.fake.menu(language_code="de") or []] == ["start", "hilfe", "akte", "sprache"]
    assert bot.fake.menu(language_code="en") is None  # English is the default menu
    assert (bot.fake.menu(language_code="de") or [])[1]["description"] == "Wie Sie suchen, und die Befehle"
    admin_menu = bot.fake.menu(chat_id=BOT_ADMIN) or []
    assert "allow" in [c["command"] for c in admin_menu]

    bot.fake.set_user_language(BOT_ADMIN, "fr")  # an admin in French: officer words in French, admin words English
    help_text = (await bot.command(BOT_ADMIN, "/aide")).text
    assert "/dossier - " in help_text and "Admin commands:" in help_text and "/allow - Whitelist an account" in help_text
    users = await bot.command(BOT_ADMIN, "/users")
    assert "whitelisted account(s)" in users.text
    bot.fake.set_user_language(BOT_ADMIN, None)


async def test_an_unusable_language_setting_stops_start_up_clearly(bot_engine: Engine, tmp_path: object) -> None:
    from pydantic import ValidationError

    from bot.app import BadLanguages, build_application
    from bot.settings import Settings

    base = {"telegram_token": "1:x", "admins": str(BOT_ADMIN), "http_port": 0}
    with pytest.raises(BadLanguages, match="no catalog for es_ES"):
        build_application(Settings(**base, languages="en,es_ES"), engine=bot_engine)
    with pytest.raises(ValidationError, match="not a locale"):
        Settings(**base, languages="en,klingon")


def test_vocabulary_knows_the_language_of_each_catalog() -> None:
    fr = Vocabulary("fr")
    assert fr.english_in("Matches are leads, not identifications: confirm them independently before acting.")
    assert not fr.leftover(texts.leads_not_ids(load_language("fr")), [])
    assert {"no", "gallery", "face"} <= set(fr.leftover("Aucun résultat : no gallery face", []))

