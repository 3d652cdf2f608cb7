"""The engine end to end with the real models on real photos, real SQLite and a real usearch index."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import DEV, dev_identities, make_config
from engine import (
    CaseRequired,
    Engine,
    FaceIndexError,
    ImageRejected,
    InvalidArgument,
    NoFaceFound,
    NotFound,
)
from engine.index import read_sidecar


def jpeg(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92, **kw)
    return buf.getvalue()


def side_by_side(a: Path, b: Path) -> bytes:
    """Two people's photos pasted into one picture, a at the left."""
    ia, ib = Image.open(a).convert("RGB"), Image.open(b).convert("RGB")
    h = max(ia.height, ib.height)
    canvas = Image.new("RGB", (ia.width + ib.width, h), (128, 128, 128))
    canvas.paste(ia, (0, 0))
    canvas.paste(ib, (ia.width, 0))
    return jpeg(canvas)


async def test_every_held_out_dev_photo_finds_its_identity_first(gallery_dir: Path) -> None:
    engine = await Engine.open(make_config(gallery_dir))
    try:
        misses, impostor_best = [], []
        for name, photos in dev_identities().items():
            for p in photos[1:]:
                r = await engine.search(p.read_bytes(), actor="test", top=5, threshold=-1.0)
                assert r.hits, p
                if r.hits[0].subject != name:
                    misses.append((p.name, name, r.hits[0].subject))
                # The true mate scores above the "possible" threshold...
                mate = [h for h in r.hits if h.subject == name]
                assert mate and mate[0].similarity >= engine.threshold_possible, (p, mate)
                # ...and no other person reaches the "strong" band.
                others = [h.similarity for h in r.hits if h.subject != name]
                impostor_best.append(max(others) if others else -1.0)
        assert misses == []
        assert max(impostor_best) < engine.threshold_strong
    finally:
        await engine.close()


async def test_search_result_shape_and_open_set_answer(gallery_dir: Path) -> None:
    engine = await Engine.open(make_config(gallery_dir))
    try:
        photo = dev_identities()["Barack_Obama"][1]
        r = await engine.search(photo.read_bytes(), actor="test", top=3)
        assert 1 <= len(r.hits) <= 3
        assert [h.rank for h in r.hits] == list(range(1, len(r.hits) + 1))
        sims = [h.similarity for h in r.hits]
        assert sims == sorted(sims, reverse=True)
        assert len({h.image_id for h in r.hits}) == len(r.hits)  # one hit per gallery image
        top = r.hits[0]
        assert top.subject == "Barack_Obama" and top.source_url == "https://gallery.example/Barack_Obama/1.jpg"
        assert top.band in ("strong", "possible") and len(top.image_sha256) == 64
        assert r.query_thumbnail[:2] == b"\xff\xd8"  # a JPEG, in memory
        # Open set: with an impossible threshold, "no match" is an ordinary empty answer.
        r2 = await engine.search(photo.read_bytes(), actor="test", threshold=0.999)
        assert r2.hits == () and r2.faces
    finally:
        await engine.close()


async def test_two_faces_are_numbered_and_each_can_be_searched(gallery_dir: Path) -> None:
    ids = dev_identities()
    photo = side_by_side(ids["Angelina_Jolie"][1], ids["Barack_Obama"][1])
    engine = await Engine.open(make_config(gallery_dir))
    try:
        faces = await engine.detect(photo)
        assert len(faces) >= 2
        assert faces[0].box[0] < faces[-1].box[0]  # numbered left to right
        assert sum(f.primary for f in faces) == 1
        left = await engine.search(photo, actor="t", face=1)
        right = await engine.search(photo, actor="t", face=len(faces))
        assert left.hits[0].subject == "Angelina_Jolie"
        assert right.hits[0].subject == "Barack_Obama"
        with pytest.raises(FaceIndexError):
            await engine.search(photo, actor="t", face=len(faces) + 1)
    finally:
        await engine.close()


@pytest.mark.parametrize(
    "name,data,reason",
    [
        ("empty", b"", "empty"),
        ("text", b"hello, this is not a photo\n" * 10, "not_image"),
        ("truncated", (DEV / "Barack_Obama" / "1.jpg").read_bytes()[:2500], "corrupt"),
        ("ppm", None, "not_image"),
        ("bomb", None, "too_many_pixels"),
    ],
)
async def test_bad_inputs_are_rejected_with_a_reason(tmp_path: Path, name: str, data: bytes | None, reason: str) -> None:
    if name == "ppm":  # Pillow reads it, but it is no photo format anyone sends
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (10, 200, 10)).save(buf, "PPM")
        data = buf.getvalue()
    if name == "bomb":  # 12000 x 12000 = 144 megapixels that compress to a few hundred kilobytes
        buf = io.BytesIO()
        Image.new("1", (12000, 12000)).save(buf, "PNG")
        data = buf.getvalue()
    assert data is not None
    engine = await Engine.open(make_config(tmp_path))
    try:
        with pytest.raises(ImageRejected) as err:
            await engine.search(data, actor="t")
        assert err.value.reason == reason
        assert str(err.value) and "\n" not in str(err.value)
        with pytest.raises(ImageRejected):
            await engine.enroll(data, source_url="x")
    finally:
        await engine.close()


async def test_file_over_the_size_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    engine = await Engine.open(make_config(tmp_path, max_image_bytes=50_000))
    try:
        big = (DEV / "Barack_Obama" / "1.jpg").read_bytes()
        assert len(big) > 50_000
        with pytest.raises(ImageRejected) as err:
            await engine.search(big, actor="t")
        assert err.value.reason == "too_large"
    finally:
        await engine.close()


async def test_no_face_is_a_clear_error(tmp_path: Path) -> None:
    engine = await Engine.open(make_config(tmp_path))
    try:
        grey = jpeg(Image.new("RGB", (640, 480), (120, 120, 120)))
        with pytest.raises(NoFaceFound):
            await engine.search(grey, actor="t")
        with pytest.raises(NoFaceFound):
            await engine.enroll(grey, source_url="x")
    finally:
        await engine.close()


async def test_exif_orientation_and_heic_are_honoured(gallery_dir: Path) -> None:
    import pillow_heif

    photo = dev_identities()["George_Clooney"][1]
    upright = Image.open(photo).convert("RGB")
    # Stored rotated, with EXIF saying "rotate 90° clockwise to display" (orientation 6), as phones do.
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = jpeg(upright.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes())
    heif = pillow_heif.from_pillow(upright)
    buf = io.BytesIO()
    heif.save(buf, format="HEIF", quality=90)
    engine = await Engine.open(make_config(gallery_dir))
    try:
        r0 = await engine.search(photo.read_bytes(), actor="t")
        r1 = await engine.search(rotated, actor="t")
        r2 = await engine.search(buf.getvalue(), actor="t")
        assert r1.hits[0].subject == r2.hits[0].subject == "George_Clooney"
        assert np.allclose(r0.faces[0].box, r1.faces[0].box, atol=6)  # same box in display orientation
    finally:
        await engine.close()


async def test_tight_face_crop_needs_the_padding_retry(tmp_path: Path) -> None:
    photo = DEV / "Barack_Obama" / "1.jpg"
    img = Image.open(photo).convert("RGB")
    engine = await Engine.open(make_config(tmp_path))
    try:
        face = (await engine.detect(photo.read_bytes()))[0]
    finally:
        await engine.close()
    x1, y1, x2, y2 = face.box
    # 600 px: detected at 640 like any large photo (small photos get a smaller detector input, which
    # copes with a face filling the frame by itself).
    crop = jpeg(img.crop((x1 + 5, y1 + 5, x2 - 5, y2 - 5)).resize((600, 600)))
    # The detector's second look (a 64-px input) would find it too: this test is about the padding alone.
    without = await Engine.open(make_config(tmp_path / "a", pad_retry=False, det_retry_threshold=0.0))
    with_retry = await Engine.open(make_config(tmp_path / "b", pad_retry=True))
    try:
        with pytest.raises(NoFaceFound):
            await without.detect(crop)
        assert len(await with_retry.detect(crop)) == 1
    finally:
        await without.close()
        await with_retry.close()


async def test_enroll_is_idempotent_and_labels_only_the_primary_face(tmp_path: Path) -> None:
    ids = dev_identities()
    group = side_by_side(ids["Angelina_Jolie"][1], ids["Barack_Obama"][1])
    engine = await Engine.open(make_config(tmp_path))
    try:
        e1 = await engine.enroll(group, source_url="case-file://A-1/photo-3", subject="Someone")
        assert e1.faces >= 2 and not e1.duplicate
        e2 = await engine.enroll(group, source_url="case-file://A-1/photo-3", subject="Someone")
        assert e2.duplicate and e2.image_id == e1.image_id
        stats = await engine.stats()
        assert stats.images == 1 and stats.faces == e1.faces and stats.labelled_faces == 1
        with pytest.raises(InvalidArgument):
            await engine.enroll(ids["Angelina_Jolie"][2].read_bytes(), source_url="  ")
        with pytest.raises(InvalidArgument):
            await engine.enroll(ids["Angelina_Jolie"][2].read_bytes(), source_url="x", expires_at="next tuesday")
    finally:
        await engine.close()


async def test_case_reference_is_required_when_configured(gallery_dir: Path, tmp_path: Path) -> None:
    engine = await Engine.open(make_config(gallery_dir, require_case=True))
    try:
        photo = dev_identities()["Barack_Obama"][1].read_bytes()
        with pytest.raises(CaseRequired):
            await engine.search(photo, actor="t")
        with pytest.raises(CaseRequired):
            await engine.search(photo, actor="t", case="   ")
        r = await engine.search(photo, actor="t", case="OP-2026-17")
        last = (await engine.audit_tail(1))[0]
        assert last.action == "search" and last.case_ref == "OP-2026-17" and last.seq == r.audit_id
        assert last.details["query_sha256"] == r.query_sha256
        assert last.details["hits"][0] == [r.hits[0].face_id, r.hits[0].similarity]
    finally:
        await engine.close()


async def test_forget_by_subject_source_and_image(gallery_copy: Path) -> None:
    ids = dev_identities()
    engine = await Engine.open(make_config(gallery_copy))
    try:
        before = await engine.stats()
        probe = ids["Ariel_Sharon"][1].read_bytes()
        assert (await engine.search(probe, actor="t")).hits[0].subject == "Ariel_Sharon"
        erased = await engine.forget(subject="Ariel_Sharon", actor="t")
        assert erased.images == 1 and erased.faces >= 1
        r = await engine.search(probe, actor="t", threshold=-1.0, top=50)
        assert all(h.subject != "Ariel_Sharon" for h in r.hits)
        erased = await engine.forget(source_url="https://gallery.example/Colin_Powell/1.jpg", actor="t")
        assert erased.images == 1
        sha = (await engine.search(ids["Elon_Musk"][1].read_bytes(), actor="t")).hits[0].image_sha256
        assert (await engine.forget(sha256=sha, actor="t")).images == 1
        after = await engine.stats()
        assert after.images == before.images - 3
        assert len(engine.index) == after.faces
        with pytest.raises(NotFound):
            await engine.forget(subject="Ariel_Sharon", actor="t")
        with pytest.raises(InvalidArgument):
            await engine.forget(subject="a", source_url="b", actor="t")
        forgets = [e for e in await engine.audit_tail(10) if e.action == "forget"]
        assert len(forgets) == 3 and forgets[0].details["images"] == 1 and "embedding" not in str(forgets[0].details)
    finally:
        await engine.close()
    # Reopening: the rewritten index agrees with the database.
    engine = await Engine.open(make_config(gallery_copy))
    try:
        assert len(engine.index) == (await engine.stats()).faces
    finally:
        await engine.close()


async def test_small_faces_in_a_big_photo_get_a_second_detection_pass(tmp_path: Path) -> None:
    """A 60 px face in a 12 MP photo (a bystander behind a close-up) is missed at 640 and found at 1280."""
    face_photo = DEV / "Barack_Obama" / "2.jpg"
    probe = await Engine.open(make_config(tmp_path))
    try:
        box = (await probe.detect(face_photo.read_bytes()))[0].box
    finally:
        await probe.close()
    src = Image.open(face_photo).convert("RGB")
    k = 55 / (box[2] - box[0])
    canvas = Image.open(DEV / "Colin_Powell" / "1.jpg").convert("RGB").resize((4000, 3000))
    canvas.paste(src.resize((int(src.width * k), int(src.height * k))), (2500, 900))
    photo = jpeg(canvas)
    counts = {}
    for flag in (False, True):
        engine = await Engine.open(make_config(tmp_path / str(flag), small_face_pass=flag))
        try:
            faces = await engine.detect(photo)
        finally:
            await engine.close()
        counts[flag] = len(faces)
        if flag:
            small = [f for f in faces if f.box[0] > 2400]
            assert small and small[0].quality.warnings  # found, and flagged as small
    assert counts == {False: 1, True: 2}


async def test_index_projection_is_a_setting_and_answers_stay_exact(gallery_copy: Path) -> None:
    probe = dev_identities()["Ariel_Sharon"][1].read_bytes()
    engine = await Engine.open(make_config(gallery_copy))
    try:  # the default: the model's shipped basis, 192 dims
        assert engine.index.ndim == 192 and engine.index.projection is not None
        assert read_sidecar(engine.config.index_path)["projection"] == engine.index.projection.key
        projected = await engine.search(probe, actor="t", threshold=-1.0, top=10)
    finally:
        await engine.close()
    engine = await Engine.open(make_config(gallery_copy, index_dims=0))
    try:  # full vectors: the saved 192-d index is not used but rebuilt
        assert engine.index.ndim == 512 and len(engine.index) == (await engine.stats()).faces
        assert read_sidecar(engine.config.index_path)["projection"] is None
        full = await engine.search(probe, actor="t", threshold=-1.0, top=10)
    finally:
        await engine.close()
    # Candidates are re-scored on the stored float32 embeddings: the same hits, the same similarities.
    assert [(h.face_id, round(h.similarity, 5)) for h in projected.hits] == [
        (h.face_id, round(h.similarity, 5)) for h in full.hits]
    assert projected.hits[0].subject == "Ariel_Sharon"
