"""The bot under field conditions, over real HTTP against a fake Bot API that refuses what Telegram refuses:
length and button limits, the 20 MB download limit, forwarding protection, fairness, strangers, admin safety,
the case and photo an answer belongs to, and plain words."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from fakebotapi import Call, FakeBotAPI
from PIL import Image, ImageDraw
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, ReplyParameters, Update
from telegram.error import BadRequest
from telegram.ext import CommandHandler
from test_bot_search import side_by_side

from bot import render, texts
from bot.i18n import ENGLISH as EN
from bot.telegram_io import button, caption_and_rest, clip, keyboard, split_message, utf16_len
from conftest import BOT_ADMIN, DEV, BotHarness, make_config, new_user_id
from engine import Engine, LastAdmin, labels

StartBot = Callable[..., Awaitable[BotHarness]]
BLAIR = DEV / "Tony_Blair" / "2.jpg"


@pytest.fixture
async def own_engine(gallery_copy: Path) -> AsyncIterator[Engine]:
    """A real engine on a private copy of the dev gallery (a test may add faces and accounts).

    Near-identical copies are not grouped here: these tests fill pages with copies of one photo (the grouping
    itself is tested in test_inputs.py)."""
    engine = await Engine.open(make_config(gallery_copy, require_case=True, near_duplicate_similarity=1.01))
    yield engine
    await engine.close()


def delivered(fake: FakeBotAPI, since: int = 0) -> list[Call]:
    """The calls since `since` that Telegram would have refused (should be none)."""
    return [c for c in fake.calls[since:] if isinstance(c.result, dict) and c.result.get("ok") is False]


def variants(path: Path, n: int) -> list[bytes]:
    """`n` different files of one photo (JPEG quality and a 1-px crop vary): distinct images, the same face."""
    img = Image.open(path).convert("RGB")
    out = []
    for i in range(n):
        buf = io.BytesIO()
        img.crop((i % 3, i // 3 % 3, img.width, img.height)).save(buf, "JPEG", quality=70 + i)
        out.append(buf.getvalue())
    return out


# -- the fake refuses what Telegram refuses --------------------------------------------------------------
async def test_fake_bot_api_refuses_what_telegram_refuses() -> None:
    fake = await FakeBotAPI().start()
    try:
        async with Bot(fake.token, base_url=fake.base_url, base_file_url=fake.base_file_url) as bot:
            assert (await bot.send_message(7, "x" * 4096)).text == "x" * 4096
            assert await bot.send_message(7, "😀" * 2048)  # 4,096 UTF-16 code units
            refused = [
                (bot.send_message(7, "x" * 4097), "Message is too long"),
                (bot.send_message(7, "😀" * 2049), "Message is too long"),
                (bot.send_message(7, "<b>x" * 5, parse_mode="HTML"), "Can't parse entities"),
                (bot.send_message(7, "<b>" + "x" * 4096 + "</b>", parse_mode="HTML"), None),  # 4,096 after parsing
                (bot.send_message(7, "1.5", parse_mode="MarkdownV2"), "Can't parse entities"),
                (bot.send_photo(7, BLAIR.read_bytes(), caption="c" * 1025), "Message caption is too long"),
                (bot.send_message(7, "k", reply_markup=InlineKeyboardMarkup(
                    [[InlineKeyboardButton("a", callback_data="d" * 65)]])), "Button_data_invalid"),
                (bot.send_message(7, "k", reply_markup=InlineKeyboardMarkup(
                    [[InlineKeyboardButton("a", url="https://localhost/x")]])), "Button_url_invalid"),
                (bot.send_message(7, "k", reply_markup=InlineKeyboardMarkup(
                    [[InlineKeyboardButton("a", url="https://a.example/" + "q" * 2040)]])), "Button_url_invalid"),
                (bot.send_message(7, "k", reply_markup=InlineKeyboardMarkup(
                    [[InlineKeyboardButton(str(i), callback_data=str(i)) for i in range(9)]])), "Too many buttons"),
                (bot.send_message(7, "k", reply_markup=InlineKeyboardMarkup(
                    [[InlineKeyboardButton(str(i), callback_data=str(i))] for i in range(101)])), "Reply markup is too long"),
                (bot.answer_callback_query("1", "t" * 201), "Message_too_long"),
                (bot.send_message(7, "k", reply_parameters=ReplyParameters(99999)), "Message to be replied not found"),
            ]
            for call, message in refused:
                if message is None:
                    assert await call
                    continue
                with pytest.raises(BadRequest, match=message):
                    await call
            big = fake.add_file(b"\xff\xd8", reported_size=21 * 1024 * 1024)
            with pytest.raises(BadRequest, match="File is too big"):
                await bot.get_file(big)
        codes = {c.result.get("error_code") for c in delivered(fake)}
        assert codes == {400}
    finally:
        await fake.stop()


def test_limits_helpers_count_what_telegram_counts() -> None:
    assert utf16_len("a😀") == 3
    assert clip("😀" * 10, 5) == "😀😀…" and utf16_len(clip("x" * 5000, 4096)) == 4096
    chunks = split_message("\n".join(["😀" * 1500] * 5))
    assert all(utf16_len(c) <= 4096 for c in chunks) and len(chunks) == 5  # 3,000 units a line: one a chunk
    caption, rest = caption_and_rest("\n".join(f"line {i} " + "y" * 90 for i in range(30)))
    assert utf16_len(caption) <= 1024 and rest and f"{caption}\n{rest}".count("line ") == 30


def test_buttons_and_keyboards_stay_within_telegram_limits() -> None:
    long = button("Face " + "9" * 500, callback_data="face:abcdefgh:999")
    assert utf16_len(long.text) <= 64 and long.text.endswith("…")
    with pytest.raises(ValueError, match="64"):
        button("x", callback_data="d" * 65)
    rows = keyboard([button(str(i), callback_data=str(i)) for i in range(150)], per_row=12, extra_rows=1)
    assert max(len(r) for r in rows) == 8 and sum(len(r) for r in rows) == 99  # room for the More row


def test_a_5000_character_label_is_fitted_quickly() -> None:
    face = io.BytesIO()
    Image.new("RGB", (112, 112), (200, 150, 120)).save(face, "JPEG")
    started = time.perf_counter()
    render.result_sheet(render.Tile(face.getvalue(), "query"), [render.Tile(face.getvalue(), "#1  70%", "S" * 5000)] * 10)
    assert time.perf_counter() - started < 3  # was 30 s for one such tile (quadratic fitting)
    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    fitted = render._fit_text(draw, "W" * 5000, render.font(14), 156)
    assert fitted.endswith("...") and draw.textlength(fitted, font=render.font(14)) <= 156
    assert draw.textlength(fitted[:-3] + "W...", font=render.font(14)) > 156  # the longest that fits


# -- every reply fits ------------------------------------------------------------------------------------
async def test_a_page_of_long_links_and_subjects_fits_and_is_protected(start_bot: StartBot, own_engine: Engine) -> None:
    long_subject = "Subject with a very long name " + "x" * (labels.MAX_SUBJECT - 30)  # the longest the gallery takes
    urls = [f"https://news.example.com/story/{i}?utm_source=feed&utm_campaign=" + "c" * 1500 for i in range(12)]
    for data, url in zip(variants(BLAIR, 12), urls, strict=True):
        await own_engine.enroll(data, source_url=url, subject=long_subject, actor="test", save=False)
    bot = await start_bot(engine=own_engine, results_per_page=10)
    officer = new_user_id()
    await bot.allow(officer, case="LINKS-1")
    photo = bot.fake.send_photo(officer, BLAIR.read_bytes())
    sheet = await bot.fake.wait_for("sendPhoto", chat_id=officer)
    listing = await bot.fake.wait_for("sendMessage", chat_id=officer, where=lambda c: bool(c.buttons))
    chunks = [c for c in bot.fake.calls_of("sendMessage", chat_id=officer) if c.index > sheet.index]
    assert delivered(bot.fake) == []  # nothing Telegram would refuse
    assert len(chunks) == 2 and all(utf16_len(c.text) <= 4096 for c in chunks)  # the list was split
    assert utf16_len(sheet.text) <= 1024 and "Matches 1-10 of 13: see below." in sheet.text
    text = "\n".join(c.text for c in chunks)
    assert text.count("utm_campaign=") >= 9 and "…" in text  # links and subjects shown cut in the list
    links = [b["url"] for b in listing.buttons if "url" in b]
    assert len(links) == 10 and sum(url in urls for url in links) >= 9  # the buttons carry the whole links
    for call in [sheet, *chunks]:
        assert call.params.get("protect_content") is True
        assert call.params["reply_parameters"]["message_id"] == photo["message_id"]

    more = next(b for b in listing.buttons if "callback_data" in b)
    mark = bot.fake.press(officer, listing.message, more["callback_data"])
    bot.fake.press(officer, listing.message, more["callback_data"])  # a second tap sends nothing more
    page2 = await bot.fake.wait_for("sendPhoto", chat_id=officer, since=mark)
    await bot.fake.quiet()
    assert len(bot.fake.calls_of("sendPhoto", since=mark)) == 1
    assert page2.params.get("protect_content") is True and "Matches 11-13 of 13" in page2.text
    assert page2.params["reply_parameters"]["message_id"] == photo["message_id"]
    assert delivered(bot.fake) == []


async def test_replies_that_would_be_too_long_are_split_or_cut(bot: BotHarness) -> None:
    async def on_long(update: Update, context: object) -> None:
        assert update.effective_message is not None
        await update.effective_message.reply_text("\n".join(f"{i} " + "z" * 98 for i in range(100)))  # 10,000
        await update.effective_message.reply_photo(BLAIR.read_bytes(), caption="\n".join(["w" * 99] * 30))

    bot.app.add_handler(CommandHandler("long", on_long), group=1)
    mark = bot.fake.mark()
    bot.fake.send_text(BOT_ADMIN, "/long")
    await bot.fake.wait_for("sendPhoto", chat_id=BOT_ADMIN)
    await bot.fake.quiet()
    texts_sent = [c.text for c in bot.fake.calls_of("sendMessage", since=mark) if c.text != texts.unknown_command(EN)]
    assert delivered(bot.fake, mark) == []
    assert len(texts_sent) == 4 and all(utf16_len(t) <= 4096 for t in texts_sent)  # 3 parts + the caption's rest
    assert "\n".join(texts_sent[:3]).count("z" * 98) == 100


async def test_allow_with_a_long_note_is_confirmed(bot: BotHarness, bot_engine: Engine) -> None:
    officer = new_user_id()
    note = "Unit 5 " + "n" * (labels.MAX_USER_NOTE - 7)  # the longest note the engine takes
    reply = await bot.command(BOT_ADMIN, f"/allow {officer} officer {note}")
    assert reply.text.startswith(f"User {officer} may now use Sightline as officer (Unit 5 nnn") and "…)" in reply.text
    assert (await bot_engine.user(officer)).note == note  # stored whole, shown cut
    assert delivered(bot.fake) == []


async def test_a_file_over_the_bot_api_download_limit(bot: BotHarness) -> None:
    officer = new_user_id()
    await bot.allow(officer)
    # The message does not say the size; getFile answers 400 "file is too big".
    sent = bot.fake.send_document(officer, b"\xff\xd8 tiny", file_name="scan.jpg", mime_type="image/jpeg",
                                  reported_size=22 * 1024 * 1024, size_in_message=False)
    reply = await bot.fake.wait_for("sendMessage", chat_id=officer)
    assert reply.text.startswith("That file is too big: the limit is 20 MB.")
    assert reply.params["reply_parameters"]["message_id"] == sent["message_id"]  # it quotes the file
    assert bot.fake.downloads == [] and texts.sorry(EN) not in [c.text for c in bot.fake.calls]
    bot.fake.send_photo(officer, BLAIR.read_bytes())  # the refused file did not count, the next photo searches
    assert (await bot.fake.wait_for("sendPhoto", chat_id=officer)).text


# -- forwarding protection ------------------------------------------------------------------------------
async def test_protect_content_can_be_turned_off(start_bot: StartBot) -> None:
    bot = await start_bot(protect_content=False)
    officer = new_user_id()
    await bot.allow(officer)
    bot.fake.send_photo(officer, BLAIR.read_bytes())
    result = await bot.fake.wait_for("sendPhoto", chat_id=officer)
    assert not result.params.get("protect_content")
    bot.fake.send_photo(officer, side_by_side("Barack_Obama/2.jpg", "Jeff_Bezos/2.jpg"))
    chooser = await bot.fake.wait_for("sendPhoto", chat_id=officer)
    assert not chooser.params.get("protect_content")


# -- fairness -------------------------------------------------------------------------------------------
async def test_several_face_photos_count_once_per_search_and_are_audited(start_bot: StartBot, bot_engine: Engine) -> None:
    bot = await start_bot(rate_limit_per_hour=2)
    officer = new_user_id()
    await bot.allow(officer, case="FAIR-1")
    photo = bot.fake.send_photo(officer, side_by_side("Barack_Obama/2.jpg", "Jeff_Bezos/2.jpg"))
    chooser = await bot.fake.wait_for("sendPhoto", chat_id=officer)
    assert chooser.params.get("protect_content") is True
    assert chooser.params["reply_parameters"]["message_id"] == photo["message_id"]
    detect = [e for e in await bot_engine.audit_tail(5) if e.actor == f"tg:{officer}" and e.action == "detect"]
    assert len(detect) == 1 and detect[0].details["faces"] == 2 and detect[0].case_ref == "FAIR-1"

    # Another case now: the face is still searched under the case the photo came with.
    await bot.command(officer, "/case OTHER-2")
    first, second = (b["callback_data"] for b in chooser.buttons)
    mark = bot.fake.press(officer, chooser.message, first)
    bot.fake.press(officer, chooser.message, first)  # a second tap: no second search
    result = await bot.fake.wait_for("sendPhoto", chat_id=officer, since=mark)
    assert result.params["reply_parameters"]["message_id"] == photo["message_id"] and "Case FAIR-1" in result.text
    assert result.params.get("protect_content") is True
    await bot.fake.quiet()
    toasts = [c.params.get("text") for c in bot.fake.calls_of("answerCallbackQuery", since=mark)]
    assert texts.already_searched(EN, 1) in toasts
    assert len(bot.fake.calls_of("sendPhoto", since=mark)) == 1

    mark = bot.fake.press(officer, chooser.message, second)  # the second face is the second search
    await bot.fake.wait_for("sendPhoto", chat_id=officer, since=mark)
    bot.fake.send_photo(officer, BLAIR.read_bytes())  # the limit of 2 is reached
    reply = await bot.fake.wait_for("sendMessage", chat_id=officer)
    assert reply.text.startswith("You have reached the limit of 2 searches per hour")
    searches = [(e.case_ref, e.details["face"]) for e in await bot_engine.audit_tail(20)
                if e.actor == f"tg:{officer}" and e.action == "search"]
    assert searches == [("FAIR-1", 1), ("FAIR-1", 2)]


async def test_pending_photos_are_kept_per_user(bot: BotHarness) -> None:
    patient, busy = new_user_id(), new_user_id()
    await bot.allow(patient)
    await bot.allow(busy)
    bot.fake.send_photo(patient, side_by_side("Colin_Powell/2.jpg", "Tony_Blair/2.jpg"))
    kept = await bot.fake.wait_for("sendPhoto", chat_id=patient)
    pair = side_by_side("Barack_Obama/2.jpg", "Jeff_Bezos/2.jpg")
    choosers = []
    for _ in range(10):  # more than one user may keep (8): only their own oldest go
        bot.fake.send_photo(busy, pair)
        choosers.append(await bot.fake.wait_for("sendPhoto", chat_id=busy))
    mark = bot.fake.press(patient, kept.message, kept.buttons[0]["callback_data"])
    assert "Colin_Powell" in (await bot.fake.wait_for("sendPhoto", chat_id=patient, since=mark)).text
    mark = bot.fake.press(busy, choosers[0].message, choosers[0].buttons[0]["callback_data"])
    assert "no longer in memory" in (await bot.fake.wait_for("answerCallbackQuery", since=mark)).params["text"]
    mark = bot.fake.press(busy, choosers[-1].message, choosers[-1].buttons[1]["callback_data"])
    assert "Jeff_Bezos" in (await bot.fake.wait_for("sendPhoto", chat_id=busy, since=mark)).text


async def test_a_stranger_is_answered_once_then_counted(start_bot: StartBot, bot_engine: Engine) -> None:
    bot = await start_bot(stranger_quiet_seconds=2)
    stranger = new_user_id()
    for i in range(30):
        bot.fake.send_text(stranger, f"hello {i}")
    bot.fake.send_photo(stranger, BLAIR.read_bytes())
    reply = await bot.fake.wait_for("sendMessage", chat_id=stranger)
    assert "not authorised" in reply.text and "no reply" in reply.text
    await bot.fake.quiet(0.5)
    assert len(bot.fake.calls_of("sendMessage", chat_id=stranger)) == 1 and bot.fake.downloads == []
    entries = [e.details for e in await bot_engine.audit_tail(50) if e.actor == f"tg:{stranger}"]
    assert len(entries) == 1 and entries[0]["reason"] == "not_whitelisted"

    async def repeated() -> list[dict[str, object]]:
        return [e.details for e in await bot_engine.audit_tail(50)
                if e.actor == f"tg:{stranger}" and e.details.get("update") == "repeated"]

    for _ in range(50):  # the quiet time ends: one entry counts the silent refusals
        if await repeated():
            break
        await asyncio.sleep(0.1)
    [summary] = await repeated()
    assert summary["count"] == 30 and summary["kinds"] == {"text": 29, "photo": 1}
    bot.fake.send_text(stranger, "/start")  # after the quiet time: answered again
    assert "not authorised" in (await bot.fake.wait_for("sendMessage", chat_id=stranger)).text


# -- admin safety ---------------------------------------------------------------------------------------
async def test_the_last_admin_cannot_be_removed_or_demoted(own_engine: Engine) -> None:
    await own_engine.allow(7001, "admin", actor="test")
    with pytest.raises(LastAdmin):
        await own_engine.revoke(7001, actor="test")
    with pytest.raises(LastAdmin):
        await own_engine.allow(7001, "officer", actor="test")
    await own_engine.allow(7002, "admin", actor="test")
    await own_engine.allow(7001, "officer", actor="test")  # another admin exists now
    with pytest.raises(LastAdmin):
        await own_engine.revoke(7002, actor="test")
    await own_engine.revoke(7001, actor="test")
    assert [u.user_id for u in await own_engine.users() if u.role == "admin"] == [7002]


async def test_an_admin_revoking_or_demoting_themself_confirms_and_is_never_the_last(
    start_bot: StartBot, own_engine: Engine
) -> None:
    only = new_user_id()
    await own_engine.allow(only, "admin", actor="test")
    bot = await start_bot(engine=own_engine, admins="")  # no bootstrap admin: `only` is the only one
    question = await bot.command(only, f"/revoke {only}")
    assert question.text == texts.confirm_revoke_self(only)
    assert [b["text"] for b in question.buttons] == [texts.CONFIRM_REVOKE, texts.CANCEL]
    mark = bot.fake.press(only, question.message, question.buttons[1]["callback_data"])  # cancel
    await bot.fake.wait_for("editMessageText", since=mark)
    assert (await own_engine.user(only)).role == "admin"

    for command in (f"/revoke {only}", f"/allow {only} officer"):
        question = await bot.command(only, command)
        mark = bot.fake.press(only, question.message, question.buttons[0]["callback_data"])
        reply = await bot.fake.wait_for("sendMessage", chat_id=only, since=mark)
        assert reply.text.startswith("That would leave Sightline without an administrator"), command
        again = bot.fake.press(only, question.message, question.buttons[0]["callback_data"])
        assert (await bot.fake.wait_for("answerCallbackQuery", since=again)).params["text"] == texts.CONFIRM_EXPIRED
    assert (await own_engine.user(only)).role == "admin"

    other = new_user_id()  # `only` makes a second admin
    assert (await bot.command(only, f"/allow {other} admin")).text.startswith(f"User {other} may now use")
    question = await bot.command(only, f"/allow {only} officer")
    mark = bot.fake.press(only, question.message, question.buttons[0]["callback_data"])
    reply = await bot.fake.wait_for("sendMessage", chat_id=only, since=mark)
    assert reply.text == f"User {only} may now use Sightline as officer."
    assert (await own_engine.user(only)).role == "officer"
    assert texts.sorry(EN) not in [c.text for c in bot.fake.calls]


async def test_a_bootstrap_admin_stays_admin(bot: BotHarness, bot_engine: Engine) -> None:
    reply = await bot.command(BOT_ADMIN, f"/allow {BOT_ADMIN} officer")
    assert reply.text == texts.cannot_demote_bootstrap(BOT_ADMIN)
    assert (await bot_engine.user(BOT_ADMIN)).role == "admin"


async def test_forget_asks_first_and_cancel_keeps_everything(bot: BotHarness, bot_engine: Engine) -> None:
    before = await bot_engine.stats()
    question = await bot.command(BOT_ADMIN, "/forget subject Tony_Blair")
    assert question.text.startswith("Erase for good every gallery image of subject Tony_Blair")
    mark = bot.fake.press(BOT_ADMIN, question.message, question.buttons[1]["callback_data"])
    edit = await bot.fake.wait_for("editMessageText", since=mark)
    assert edit.text.endswith(texts.CANCELLED) and not edit.params.get("reply_markup")
    again = bot.fake.press(BOT_ADMIN, question.message, question.buttons[0]["callback_data"])
    assert (await bot.fake.wait_for("answerCallbackQuery", since=again)).params["text"] == texts.CONFIRM_EXPIRED
    assert (await bot_engine.stats()).images == before.images


# -- plain words ----------------------------------------------------------------------------------------
async def test_help_explains_buttons_percentages_and_bands(bot: BotHarness) -> None:
    officer = new_user_id()
    await bot.allow(officer)
    reply = await bot.command(officer, "/help")
    for words in ("Tap a face's number", "More shows the next matches", "percentage", "strong:", "possible:",
                  "1 in 40,000"):
        assert words in reply.text, words
    assert "send the photo again" in texts.need_case(EN).lower()
