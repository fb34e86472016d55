"""Injected faults, and how the SDK's retries deal with them (over real sockets)."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest

from photoroom_bg import RetryPolicy
from photoroom_bg.errors import (
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    BadRequestError,
    OutOfCreditsError,
    RateLimitError,
    ServerError,
)
from photoroom_bg.testing import Faults, PhotoroomEmulator, parse_duration

from .conftest import FAST_RETRIES, Twin, product_photo, unique_photo


@pytest.mark.parametrize("fault", ["429", "500", "502", "503", "reset", "truncate", "garble"])
async def test_retries_recover_from_each_fault_and_bill_once(
    twin: Twin, emulator: PhotoroomEmulator, fault: str
) -> None:
    photo = unique_photo()
    before = len(emulator.requests)
    emulator.inject(fault, fault)
    result = await twin.call("remove_background", photo, max_retries=3)
    assert result.content_type == "image/png"
    seen = emulator.requests[before:]
    assert [r.fault for r in seen] == [fault, fault, None]
    assert emulator.ledger.billed_per_image()[hashlib.sha256(photo).hexdigest()] == 1


@pytest.mark.parametrize("fault", ["503", "reset"])
async def test_without_retries_each_fault_is_a_typed_error(
    twin: Twin, emulator: PhotoroomEmulator, fault: str
) -> None:
    emulator.inject(fault)
    expected = APIConnectionError if fault == "reset" else Exception
    with pytest.raises(expected):
        await twin.call("remove_background", product_photo(), max_retries=0)


@pytest.mark.parametrize(
    "fault", ["bill-reset", "bill-truncate", "bill-garble", "bill-500", "bill-502"]
)
async def test_billed_faults_charge_then_fail_and_the_client_says_possibly_billed(
    twin: Twin, emulator: PhotoroomEmulator, fault: str
) -> None:
    photo = unique_photo()
    emulator.inject(fault)
    with pytest.raises(Exception) as caught:  # noqa: PT011 - the class depends on the fault
        await twin.call("remove_background", photo, max_retries=0)
    error = caught.value
    assert isinstance(error, (APIConnectionError, ServerError, APIResponseValidationError))
    assert error.possibly_billed is True
    assert emulator.ledger.billed_per_image()[hashlib.sha256(photo).hexdigest()] == 1


async def test_a_billed_fault_is_answered_normally_when_nothing_was_billed() -> None:
    emulator = PhotoroomEmulator({"poor": 0})
    with emulator.serve():
        emulator.inject("bill-reset")
        async with emulator.async_client(max_retries=0) as client:
            with pytest.raises(OutOfCreditsError):
                await client.remove_background(product_photo())
    assert emulator.ledger.calls() == 0


async def test_a_billed_stall_past_the_timeout_is_a_possibly_billed_timeout() -> None:
    emulator = PhotoroomEmulator(faults=Faults(stall_seconds=3))
    photo = unique_photo()
    with emulator.serve():
        emulator.inject("bill-stall")
        async with emulator.async_client(timeout=0.3, max_retries=0) as client:
            with pytest.raises(APITimeoutError) as caught:
                await client.remove_background(photo)
    assert caught.value.possibly_billed is True
    assert emulator.ledger.billed_per_image() == {hashlib.sha256(photo).hexdigest(): 1}


async def test_a_stall_past_the_timeout_is_a_timeout() -> None:
    emulator = PhotoroomEmulator(faults=Faults(stall_seconds=3))
    with emulator.serve():
        emulator.inject("stall")
        async with emulator.async_client(timeout=0.3, max_retries=0) as client:
            with pytest.raises(APITimeoutError):
                await client.remove_background(product_photo())


async def test_out_of_credits_is_402_and_never_retried() -> None:
    emulator = PhotoroomEmulator({"poor": 1}, plan="basic")
    with emulator.serve():
        async with emulator.async_client(max_retries=5, retry_policy=FAST_RETRIES) as client:
            await client.remove_background(product_photo())
            with pytest.raises(OutOfCreditsError, match="credits exhausted"):
                await client.remove_background(product_photo())
            account = await client.account()
    assert [r.status for r in emulator.requests] == [200, 402, 200]
    assert account.images_available == 0
    assert emulator.ledger.calls() == 1


async def test_bad_requests_are_never_retried(emulator: PhotoroomEmulator) -> None:
    from photoroom_bg import SegmentOptions

    before = len(emulator.requests)
    options = SegmentOptions(extra_params={"channels": "cmyk"})
    with (
        emulator.client(api_key="key-one", max_retries=5) as client,
        pytest.raises(BadRequestError),
    ):
        client.remove_background(product_photo(), options)
    assert [r.status for r in emulator.requests[before:]] == [400]


async def test_the_rate_limit_answers_429_with_retry_after() -> None:
    emulator = PhotoroomEmulator(requests_per_minute=2)
    with emulator.serve():
        async with emulator.async_client(max_retries=0) as client:
            await client.account()
            await client.account()
            with pytest.raises(RateLimitError) as caught:
                await client.account()
    assert caught.value.retry_after is not None
    assert 1 <= caught.value.retry_after <= 60


@pytest.mark.parametrize(
    "setting",
    [
        {"latency": -1},
        {"latency": float("nan")},
        {"latency": float("inf")},  # every request hangs
        {"latency": (0.4, 0.1)},
        {"latency": (-1.0, 1.0)},
        {"retry_after": float("nan")},
        {"retry_after": -1},
        {"stall_seconds": float("nan")},
        {"paths": "/v1/segment"},  # would match by substring: "/" and "/v1" too
        {"paths": ("/v1/segment", 5)},
        {"latency": 10**400},  # no float holds it: each request's sleep raised
        {"retry_after": 10**400},
        {"stall_seconds": 10**400},
    ],
    ids=lambda setting: str(list(setting)),
)
def test_nonsense_fault_settings_are_refused_naming_the_setting(setting: dict[str, Any]) -> None:
    (name,) = setting
    with pytest.raises(ValueError, match=name):
        Faults(**setting)


@pytest.mark.parametrize("rate", ["0.1", None, True, float("nan"), -0.1])
def test_a_fault_probability_must_be_a_number_within_0_and_1(rate: Any) -> None:
    with pytest.raises(ValueError, match=r"fault probability 429=.* is not within 0\.\.1"):
        Faults(rates={"429": rate})


@pytest.mark.parametrize(
    ("setting", "name"),
    [
        ({"credits": -1}, "credits"),
        ({"credits": float("nan")}, "credits"),  # a key that never ran out
        ({"api_keys": {"k": float("nan")}}, "credits"),
        ({"credits": 10**400}, "credits"),  # float() of it raised OverflowError
        ({"api_keys": {"k": "plenty"}}, "credits"),  # a bare ValueError naming nothing
        ({"credits": None}, "credits"),  # TypeError
        ({"requests_per_minute": 0}, "requests_per_minute"),
        ({"requests_per_minute": 1.5}, "requests_per_minute"),
        ({"image_work": "false"}, "image_work must be True or False"),
        ({"fetch_image_urls": "false"}, "fetch_image_urls must be True or False"),
        ({"faults": {"latency": 1}}, "faults must be a Faults"),
    ],
    ids=lambda value: str(value)[:40],
)
def test_nonsense_emulator_accounts_are_refused(setting: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        PhotoroomEmulator(**setting)


def test_random_faults_are_deterministic_for_a_seed() -> None:
    def run(seed: int) -> list[str | None]:
        emulator = PhotoroomEmulator(faults=Faults(rates={"503": 0.3, "429": 0.2}, seed=seed))
        with emulator.serve() as url, httpx.Client(base_url=url) as http:
            for _ in range(30):
                http.get("/v2/account", headers={"x-api-key": emulator.api_key})
        return [r.fault for r in emulator.requests]

    first, again, other = run(7), run(7), run(8)
    assert first == again
    assert first != other
    assert {"503", "429", None} <= set(first)


async def test_latency_is_added(emulator: PhotoroomEmulator) -> None:
    slow = PhotoroomEmulator(faults=Faults(latency=0.2))
    with slow.serve():
        async with slow.async_client(timeout=0.05, max_retries=0) as client:
            with pytest.raises(APITimeoutError):
                await client.account()


def test_durations_and_fault_validation() -> None:
    assert parse_duration("300ms") == pytest.approx(0.3)
    assert parse_duration("1.5s") == 1.5
    assert parse_duration(2) == 2.0
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")
    with pytest.raises(ValueError, match="unknown fault"):
        Faults(rates={"404": 0.5})
    with pytest.raises(ValueError, match="more than 1"):
        Faults(rates={"503": 0.7, "429": 0.7})


@pytest.mark.parametrize("keys", [[""], [" "], {"": 10.0}, ["good", ""]])
def test_an_empty_api_key_is_refused(keys: Any) -> None:
    # an emulator given "" (an unset variable) let in a request with an empty x-api-key
    with pytest.raises(ValueError, match="an API key must not be empty"):
        PhotoroomEmulator(keys)


def test_retry_policy_is_importable_for_users() -> None:
    assert RetryPolicy().max_retry_after == 60
