"""The README's usage, type-checked under ``mypy --strict`` (``tox -e type``); never run.

Every line without a ``# type: ignore`` must type-check, and its ``assert_type`` must hold.
Every line with one must fail with exactly that error code: ``--strict`` includes
``warn_unused_ignores``, so an ignore that no longer hides an error (a typo the types stopped
catching) fails the type env.
"""

from __future__ import annotations

import httpx
from typing_extensions import assert_type

from photoroom_bg import (
    Account,
    AsyncPhotoroomClient,
    BatchHandle,
    BatchRemover,
    BatchReport,
    Credits,
    CustomImage,
    EditOptions,
    ImageLayer,
    ImageResult,
    JobResult,
    PhotoroomClient,
    SegmentOptions,
    TextLayer,
)
from photoroom_bg.errors import APIStatusError, PhotoroomError, ValidationError


def quick_start() -> None:
    batch = BatchRemover(
        sink="s3://shop-cutouts/2026", options=SegmentOptions(crop=True), progress=True
    )
    handle = batch.submit("./photos")
    assert_type(handle, BatchHandle)
    for job in handle.as_completed():
        assert_type(job, JobResult)
        if not job.ok:
            print(job.source, job.error)
    report = handle.wait()
    assert_type(report, BatchReport)
    print(f"{report.stored_count}/{report.total_count} stored, {report.credits_spent} credits")
    batch.submit(["a.jpg", b"\x89PNG...", ["nested/b.jpg"]])


def one_image_at_a_time() -> None:
    with PhotoroomClient() as client:
        cut = client.remove_background("shoe.jpg", SegmentOptions(size="hd", crop=True))
        assert_type(cut, ImageResult)
        cut.save("shoe.png")
        packshot = client.edit(
            "https://example.com/shoe.jpg",
            EditOptions(background_color="FFFFFF", output_size="1000x1000", padding=0.1),
        )
        assert_type(packshot.content, bytes)
        assert_type(client.account(), Account)
        assert_type(client.credits(), Credits)
        assert_type(client.render("shoe.jpg", "592dd982-4a1b-4cd9-ab11-21481d5a0064"), ImageResult)
        quick = client.with_options(timeout=None, max_retries=0, base_url="http://127.0.0.1:8800")
        assert_type(quick, PhotoroomClient)
        client.with_options(http_client=httpx.Client())


async def the_async_twin() -> None:
    async with AsyncPhotoroomClient(timeout=httpx.Timeout(30.0)) as client:
        result = await client.edit(
            b"\x89PNG...",
            EditOptions(
                padding="10%",
                shadow_mode="ai.preset-soft",
                ai_shadows_model_version="2026-04-15",
                virtual_model_model="sophia",
                virtual_model_scene=CustomImage(image_url="https://example.com/scene.jpg"),
                virtual_model_additional_product_images=["https://example.com/back.jpg"],
                layers={
                    "title": TextLayer(content="SALE"),
                    "logo": ImageLayer(image_url="https://example.com/logo.png", padding="5%"),
                },
            ),
        )
        assert_type(result, ImageResult)
        assert_type(client.with_options(max_retries=5), AsyncPhotoroomClient)


def errors_are_typed() -> None:
    try:
        EditOptions(background_blur_radius=0)
    except ValidationError as error:
        assert_type(error.parameter, "str | None")
        assert_type(error.rule, "str | None")
    try:
        PhotoroomClient().account()
    except APIStatusError as error:
        assert_type(error.status_code, int)
    except PhotoroomError as error:
        assert_type(error.possibly_billed, bool)


def typos_are_caught() -> None:
    SegmentOptions(size="hdd")  # type: ignore[arg-type]
    SegmentOptions(sise="hd")  # type: ignore[call-arg]
    EditOptions(backgound_color="FFFFFF")  # type: ignore[call-arg]
    EditOptions(shadow_mode="ai.presetsoft")  # type: ignore[arg-type]
    EditOptions(flat_lay_size="SQUARE")  # type: ignore[arg-type]
    EditOptions(virtual_model_pose="sitting")  # type: ignore[arg-type]
    EditOptions(virtual_model_model="bob")  # type: ignore[arg-type]
    EditOptions(virtual_model_scene="moon")  # type: ignore[arg-type]
    EditOptions(ai_shadows_model_version="2026-04-16")  # type: ignore[arg-type]
    EditOptions(export_format="gif")  # type: ignore[arg-type]
    EditOptions(layers={"logo": "https://example.com/logo.png"})  # type: ignore[dict-item]
    ImageLayer(remove_background="yes")  # type: ignore[arg-type]
    with PhotoroomClient() as client:
        client.with_options(timout=5)  # type: ignore[call-arg]
        client.with_options(http_client=httpx.AsyncClient())  # type: ignore[arg-type]
        client.edit("shoe.jpg", SegmentOptions())  # type: ignore[arg-type]
        client.account(max_retries="2")  # type: ignore[arg-type]
    BatchRemover(sink="./cutouts").submit(42)  # type: ignore[arg-type]
