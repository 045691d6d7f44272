"""Token buckets (the pacer of every connection's requests) and per-address limits, on a fake clock."""

from __future__ import annotations

import pytest

from chat.server.limits import AddressBook, AddressPolicy, TokenBucket, parse_networks, request_cost
from chat.wire.protocol import HistoryRequest, SendMessage


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_a_burst_passes_then_requests_wait_for_the_rate(clock):
    bucket = TokenBucket(rate=5, burst=10, clock=clock)
    assert [bucket.charge() for _ in range(10)] == [0.0] * 10
    assert bucket.charge() == pytest.approx(0.2)
    assert bucket.charge() == pytest.approx(0.4)
    clock.now += 0.4
    assert bucket.charge() == pytest.approx(0.2)


def test_an_idle_bucket_refills_to_its_burst_and_no_further(clock):
    bucket = TokenBucket(rate=5, burst=10, clock=clock)
    for _ in range(30):
        bucket.charge()
    clock.now += 3600
    assert [bucket.charge() for _ in range(10)] == [0.0] * 10
    assert bucket.charge() > 0


def test_past_the_burst_each_line_waits_one_interval_longer_than_the_last(clock):
    bucket = TokenBucket(rate=4, burst=3, clock=clock)
    assert [bucket.charge() for _ in range(3)] == [0.0] * 3
    assert [bucket.charge() for _ in range(8)] == pytest.approx([n / 4 for n in range(1, 9)])


def test_tokens_come_back_one_per_interval(clock):
    bucket = TokenBucket(rate=4, burst=3, clock=clock)
    for _ in range(3):
        bucket.charge()
    clock.now += 0.5  # two intervals: two lines go at once again, the third waits one interval
    assert [bucket.charge() for _ in range(3)] == pytest.approx([0.0, 0.0, 0.25])


def test_time_pays_a_debt_back_at_the_rate(clock):
    bucket = TokenBucket(rate=4, burst=3, clock=clock)
    for _ in range(7):  # four lines past the burst: a second of debt
        bucket.charge()
    assert bucket.debt() == pytest.approx(1.0)
    clock.now += 0.5
    assert bucket.debt() == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.debt() == 0.0
    assert bucket.charge() == pytest.approx(0.25)  # paid off, but the burst is not back yet


def test_a_request_costing_three_tokens_paces_like_three_lines(clock):
    heavy, light = TokenBucket(rate=4, burst=3, clock=clock), TokenBucket(rate=4, burst=3, clock=clock)
    assert heavy.charge(3) == 0.0
    assert [light.charge() for _ in range(3)] == [0.0] * 3
    assert (heavy.charge(), light.charge()) == pytest.approx((0.25, 0.25))


def test_debt_is_how_far_ahead_the_client_is(clock):
    bucket = TokenBucket(rate=5, burst=10, clock=clock)
    for _ in range(60):
        bucket.charge()
    assert bucket.debt() == pytest.approx(10.0)


def test_rate_zero_is_no_limit(clock):
    bucket = TokenBucket(rate=0, burst=10, clock=clock)
    assert all(bucket.charge(100) == 0 for _ in range(1000))


def test_try_take_takes_only_what_the_burst_has(clock):
    bucket = TokenBucket(rate=1, burst=3, clock=clock)
    assert [bucket.try_take() for _ in range(5)] == [True, True, True, False, False]
    clock.now += 1
    assert bucket.try_take() and not bucket.try_take()


def test_heavy_requests_and_long_lines_cost_more():
    assert request_cost(SendMessage(msg="hi"), 30) == 1
    assert request_cost(HistoryRequest(), 30) > 1
    assert request_cost(SendMessage(msg="x" * 8000), 8100) > request_cost(SendMessage(msg="x"), 30)
    assert request_cost(None, 30) == 1


def test_an_address_may_hold_so_many_connections(clock):
    book = AddressBook(AddressPolicy(max_connections=2, exempt=()), clock)
    assert book.admit("10.0.0.1") is None and book.admit("10.0.0.1") is None
    assert book.admit("10.0.0.1") == "too_many_connections"
    assert book.admit("10.0.0.2") is None
    book.release("10.0.0.1")
    assert book.admit("10.0.0.1") is None


def test_ipv6_addresses_count_per_64(clock):
    book = AddressBook(AddressPolicy(max_connections=1, exempt=()), clock)
    assert book.admit("2001:db8::1") is None
    assert book.admit("2001:db8::2:3") == "too_many_connections"
    assert book.admit("2001:db8:0:1::1") is None


def test_connects_are_paced_after_a_burst(clock):
    book = AddressBook(AddressPolicy(max_connections=0, connect_burst=3, connect_interval=10, exempt=()), clock)
    assert [book.admit("10.0.0.1") for _ in range(4)] == [None, None, None, "too_many_connections"]
    clock.now += 10
    assert book.admit("10.0.0.1") is None


def test_exempt_networks_have_no_limit(clock):
    book = AddressBook(AddressPolicy(max_connections=1, connect_burst=1), clock)
    assert all(book.admit("127.0.0.1") is None for _ in range(100))
    assert all(book.admit("::1") is None for _ in range(100))
    assert all(book.admit("::ffff:127.0.0.1") is None for _ in range(100))


def test_log_lines_per_address_are_paced_across_connections(clock):
    book = AddressBook(AddressPolicy(logged_errors=3), clock)
    assert [book.may_log("10.0.0.1") for _ in range(5)] == [True, True, True, False, False]
    assert book.may_log("10.0.0.2")
    clock.now += 60
    assert book.may_log("10.0.0.1")


def test_networks_parse_from_a_comma_list():
    assert parse_networks("127.0.0.1/8, ::1") == ("127.0.0.0/8", "::1/128")
    assert parse_networks("") == ()
    with pytest.raises(ValueError):
        parse_networks("nonsense")
