"""The search flow over real HTTP with the real engine: results, several faces, bad files, limits, cases."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable

from PIL import Image

from bot import texts
from bot.i18n import ENGLISH as EN
from bot.metrics import Metrics
from conftest import CALIB, DEV, BotHarness, new_user_id
from engine import Engine

StartBot = Callable[..., Awaitable[BotHarness]]


def jpeg(img: Image.Image) -> bytes:
    """JPEG bytes of a Pillow image."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=92)
    return buf.getvalue()


def side_by_side(left: str, right: str, height: int = 400) -> bytes:
    """Two people's photos pasted next to each other: a photo with two faces (left is face 1)."""
    a, b = (Image.open(DEV / name).convert("RGB") for name in (left, right))
    a = a.resize((a.width * height // a.height, height))
    b = b.resize((b.width * height // b.height, height))
    both = Image.new("RGB", (a.width + b.width, height))
    both.paste(a, (0, 0))
    both.paste(b, (a.width, 0))
    return jpeg(both)


def first_match(text: str) -> str:
    """The line of match 1 in a results caption."""
    return next(line for line in text.splitlines() if line.startswith("1. "))


async def test_two_faces_are_boxed_and_each_button_searches_its_face(bot: BotHarness, bot_engine: Engine) -> None:
    officer = new_user_id()
    await bot.allow(officer, case="TWO-1")
    bot.fake.send_photo(officer, side_by_side("Barack_Obama/2.jpg", "Jeff_Bezos/2.jpg"))
    chooser = await bot.fake.wait_for("sendPhoto", chat_id=officer)
    assert chooser.text.startswith("2 faces found")
    assert [b["text"] for b in chooser.buttons] == ["Face 1", "Face 2"]
    boxed = Image.open(io.BytesIO(chooser.files["photo"]))
    assert boxed.size == (Image.open(io.BytesIO(bot.fake.files[bot.fake.downloads[0]]))).size  # the photo itself
    assert not [e for e in await bot_engine.audit_tail(5) if e.actor == f"tg:{officer}" and e.action == "search"]

    mark = bot.fake.press(officer, chooser.message, chooser.buttons[1]["callback_data"])
    toast = await bot.fake.wait_for("answerCallbackQuery", since=mark)
    assert toast.params["text"] == "Searching face 2..."
    result = await bot.fake.wait_for("sendPhoto", chat_id=officer, since=mark)
    assert first_match(result.text).startswith("1. Jeff_Bezos - ")
    assert "face 2 of 2" in result.text

    mark = bot.fake.press(officer, chooser.message, chooser.buttons[0]["callback_data"])
    result = await bot.fake.wait_for("sendPhoto", chat_id=officer, since=mark)
    assert first_match(result.text).startswith("1. Barack_Obama - ")
    assert len(bot.fake.downloads) == 1  # the photo was kept in memory, not fetched again
    searches = [e for e in await bot_engine.audit_tail(10) if e.actor == f"tg:{officer}" and e.action == "search"]
    assert [(e.case_ref, e.details["face"]) for e in searches] == [("TWO-1", 2), ("TWO-1", 1)]


async def test_face_button_after_the_photo_was_dropped(start_bot: StartBot) -> None:
    bot = await start_bot(photo_ttl_seconds=1)
    officer = new_user_id()
    await bot.allow(officer)
    bot.fake.send_photo(officer, side_by_side("Colin_Powell/2.jpg", "Tony_Blair/2.jpg"))
    chooser = await bot.fake.wait_for("sendPhoto", chat_id=officer)
    assert "The photo stays in memory for 1 second, then it is dropped." in chooser.text
    await asyncio.sleep(1.3)
    assert len(bot.app.bot_data["services"].photos) == 0  # dropped from memory, not just refused
    mark = bot.fake.press(officer, chooser.message, chooser.buttons[0]["callback_data"])
    answer = await bot.fake.wait_for("answerCallbackQuery", since=mark)
    assert "no longer in memory" in answer.params["text"] and answer.params.get("show_alert") is True
    await bot.fake.quiet()
    assert not bot.fake.calls_of("sendPhoto", since=mark)


async def test_grey_photo_has_no_face_and_the_attempt_is_audited(bot: BotHarness, bot_engine: Engine) -> None:
    officer = new_user_id()
    await bot.allow(officer)
    bot.fake.send_photo(officer, jpeg(Image.new("RGB", (480, 360), (128, 128, 128))))
    reply = await bot.fake.wait_for("sendMessage", chat_id=officer)
    assert reply.text.startswith("No face found in the photo")
    entry = next(e for e in reversed(await bot_engine.audit_tail(5)) if e.actor == f"tg:{officer}")
    assert (entry.action, entry.case_ref, entry.details["faces"]) == ("search", "CASE-1", 0)


async def test_a_face_not_in_the_gallery_gets_no_match(bot: BotHarness) -> None:
    officer = new_user_id()
    await bot.allow(officer, case="NM-3")
    bot.fake.send_photo(officer, (CALIB / "Aaron_Guiel" / "1.jpg").read_bytes())  # nobody in the dev gallery
    reply = await bot.fake.wait_for("sendMessage", chat_id=officer)
    assert reply.text.startswith("No match: no gallery face scored above ") and "Case NM-3." in reply.text
    assert not bot.fake.calls_of("sendPhoto")
    counted = Metrics.of(bot.app).registry.get_sample_value("sightline_searches_total", {"outcome": "no_match"})
    assert counted == 1


async def test_files_that_are_not_images_too_big_or_damaged(bot: BotHarness) -> None:
    officer = new_user_id()
    await bot.allow(officer)
    bot.fake.send_document(officer, b"meeting notes\n", file_name="notes.txt", mime_type="text/plain")
    assert (await bot.fake.wait_for("sendMessage", chat_id=officer)).text == texts.not_an_image(EN)

    # Our own limit is 25 MB, but the Bot API serves at most 20 MB: a 22 MB document hears about 20.
    bot.fake.send_document(officer, b"\xff\xd8 tiny", file_name="huge.jpg", mime_type="image/jpeg",
                           reported_size=22_000_000)
    reply = await bot.fake.wait_for("sendMessage", chat_id=officer)
    assert reply.text.startswith("That file is too big (22.0 MB): the limit is 20 MB."), reply.text
    bot.fake.send_photo(officer, (DEV / "Jeff_Bezos" / "2.jpg").read_bytes(), reported_size=26_000_000)
    assert (await bot.fake.wait_for("sendMessage", chat_id=officer)).text.startswith("That file is too big")
    assert bot.fake.downloads == [] and not bot.fake.calls_of("getFile")  # all refused before downloading

    bot.fake.send_document(officer, b"%PDF-1.4 not a picture", file_name="scan.png", mime_type="image/png")
    assert (await bot.fake.wait_for("sendMessage", chat_id=officer)).text == texts.IMAGE_REJECTED["not_image"]
    bot.fake.send_document(officer, jpeg(Image.new("RGB", (64, 64)))[:300], file_name="cut.jpg", mime_type=None)
    assert (await bot.fake.wait_for("sendMessage", chat_id=officer)).text == texts.IMAGE_REJECTED["corrupt"]


async def test_image_sent_as_a_file_is_searched(bot: BotHarness) -> None:
    officer = new_user_id()
    await bot.allow(officer)
    png = io.BytesIO()
    Image.open(DEV / "Elon_Musk" / "2.jpg").save(png, "PNG")
    bot.fake.send_document(officer, png.getvalue(), file_name="IMG_0042.png", mime_type="image/png")
    result = await bot.fake.wait_for("sendPhoto", chat_id=officer)
    assert first_match(result.text).startswith("1. Elon_Musk - ")


async def test_small_face_warns_that_results_are_unreliable(bot: BotHarness) -> None:
    officer = new_user_id()
    await bot.allow(officer)
    face = Image.open(DEV / "George_W_Bush" / "2.jpg").convert("RGB").resize((100, 100))
    canvas = Image.new("RGB", (640, 480), (128, 128, 128))
    canvas.paste(face, (200, 150))
    bot.fake.send_photo(officer, jpeg(canvas))
    reply = await bot.fake.wait_for("sendPhoto", chat_id=officer)
    warning = next(line for line in reply.text.splitlines() if line.startswith("This photo is poor"))
    # With a strong hit shown (its mate), the line says the odds allow for the photo (tests/test_tiny_probe.py).
    strong = any(line[:1].isdigit() and line.endswith("(strong)") for line in reply.text.splitlines())
    assert "px wide" in warning
    assert warning.endswith("treat a possible match as a weak lead." if strong else "treat any match as a weak lead.")


async def test_more_button_pages_through_the_results(start_bot: StartBot, bot_engine: Engine) -> None:
    for n in (3, 4, 5):  # more photos of one person, so one search has several matches
        await bot_engine.enroll((DEV / "Ariel_Sharon" / f"{n}.jpg").read_bytes(), subject="Ariel_Sharon",
                                source_url=f"https://gallery.example/Ariel_Sharon/{n}.jpg", actor="test")
    bot = await start_bot(results_per_page=2)
    officer, colleague = new_user_id(), new_user_id()
    await bot.allow(officer)
    await bot.allow(colleague)
    bot.fake.send_photo(officer, (DEV / "Ariel_Sharon" / "2.jpg").read_bytes())
    page1 = await bot.fake.wait_for("sendPhoto", chat_id=officer)
    matches = [line for line in page1.text.splitlines() if line[:2] in ("1.", "2.", "3.")]
    assert len(matches) == 2 and all("Ariel_Sharon" in m for m in matches)
    assert Image.open(io.BytesIO(page1.files["photo"])).width > 3 * 160  # query + two faces
    more = [b for b in page1.buttons if "callback_data" in b]
    assert len(more) == 1 and more[0]["text"].startswith("More (3-")
    assert len([b for b in page1.buttons if "url" in b]) == 2

    mark = bot.fake.press(colleague, page1.message, more[0]["callback_data"])  # not theirs
    assert "someone else" in (await bot.fake.wait_for("answerCallbackQuery", since=mark)).params["text"]

    mark = bot.fake.press(officer, page1.message, more[0]["callback_data"])
    page2 = await bot.fake.wait_for("sendPhoto", chat_id=officer, since=mark)
    assert "Matches 3-4 of 4." in page2.text.splitlines()  # photo 1 (gallery) and the three enrolled above
    assert not [b for b in page2.buttons if "callback_data" in b]  # the last page has no More
    assert any(line.startswith("3. Ariel_Sharon") for line in page2.text.splitlines())
    edit = await bot.fake.wait_for("editMessageReplyMarkup", since=mark)
    assert edit.params["message_id"] == page1.message["message_id"]  # More removed from page 1
    assert all("callback_data" not in b for row in edit.params["reply_markup"]["inline_keyboard"] for b in row)
    assert len(bot.fake.downloads) == 1  # paging never needs the photo


async def test_rate_limit_refuses_before_downloading(start_bot: StartBot, bot_engine: Engine) -> None:
    bot = await start_bot(rate_limit_per_hour=1)
    officer = new_user_id()
    await bot.allow(officer)
    bot.fake.send_photo(officer, (DEV / "Jack_Dorsey" / "2.jpg").read_bytes())
    await bot.fake.wait_for("sendPhoto", chat_id=officer)
    bot.fake.send_photo(officer, (DEV / "Jack_Dorsey" / "2.jpg").read_bytes())
    reply = await bot.fake.wait_for("sendMessage", chat_id=officer)
    assert reply.text.startswith("You have reached the limit of 1 search per hour. Try again in 60 minutes")
    assert len(bot.fake.downloads) == 1
    refused = [e.details for e in await bot_engine.audit_tail(5) if e.actor == f"tg:{officer}" and e.action == "refused"]
    assert refused and refused[-1]["reason"] == "rate_limited"


async def test_search_without_a_case_is_refused_until_one_is_set(bot: BotHarness, bot_engine: Engine) -> None:
    officer = new_user_id()
    await bot.allow(officer, case=None)
    assert (await bot.command(officer, "/case")).text == texts.case_shown(EN, None)
    photo = (DEV / "Joe_Biden" / "2.jpg").read_bytes()
    bot.fake.send_photo(officer, photo)
    assert (await bot.fake.wait_for("sendMessage", chat_id=officer)).text == texts.need_case(EN)
    assert bot.fake.downloads == []

    assert (await bot.command(officer, "/case OP 2024/117")).text.startswith("Active case: OP 2024/117")
    assert "OP 2024/117" in (await bot.command(officer, "/case")).text
    bot.fake.send_photo(officer, photo)
    result = await bot.fake.wait_for("sendPhoto", chat_id=officer)
    assert "Case OP 2024/117" in result.text and first_match(result.text).startswith("1. Joe_Biden")

    assert (await bot.command(officer, "/case clear")).text == texts.case_cleared(EN)
    bot.fake.send_photo(officer, photo)
    assert (await bot.fake.wait_for("sendMessage", chat_id=officer)).text == texts.need_case(EN)
    assert "printable characters" in (await bot.command(officer, "/case " + "x" * 80)).text
    entries = [(e.action, e.case_ref, e.details.get("reason")) for e in await bot_engine.audit_tail(20)
               if e.actor == f"tg:{officer}"]
    assert ("refused", None, "no_case") in entries and ("search", "OP 2024/117", None) in entries
