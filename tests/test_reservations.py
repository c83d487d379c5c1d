"""Device reservations: what training holds is busy for every other placement."""

import threading

import pytest

from synthd.gpus.catalog import lookup
from synthd.gpus.inventory import Device
from synthd.gpus.reservations import ReservationConflict, Reservations
from synthd.gpus.selection import select_placement
from synthd.gpus.spec import parse_gpu_preference

H100S = [Device(lookup("H100"), index) for index in range(2)]


def test_reserved_devices_are_busy_for_the_next_placement() -> None:
    reservations = Reservations()
    first = select_placement(parse_gpu_preference("H100"), 10, H100S, reservations.busy())
    reservations.reserve("ftjob-a", [d.key for d in first.devices])
    second = select_placement(parse_gpu_preference("H100"), 10, H100S, reservations.busy())
    assert first.devices != second.devices
    reservations.reserve("ftjob-b", [d.key for d in second.devices])
    with pytest.raises(Exception) as busy:
        select_placement(parse_gpu_preference("H100"), 10, H100S, reservations.busy())
    assert busy.value.code == "gpu_busy"
    assert reservations.release("ftjob-a") == {d.key for d in first.devices}
    assert reservations.busy() == {d.key for d in second.devices}
    assert reservations.busy(except_owner="ftjob-b") == set()


def test_a_device_has_one_owner() -> None:
    reservations = Reservations()
    reservations.reserve("ftjob-a", ["local/H100#0"])
    with pytest.raises(ReservationConflict):
        reservations.reserve("ftjob-b", ["local/H100#0", "local/H100#1"])
    assert reservations.held("ftjob-b") == frozenset()
    assert reservations.release("ftjob-missing") == frozenset()


def test_concurrent_reservations_never_share_a_device() -> None:
    reservations = Reservations()
    won: list[str] = []

    def take(owner: str) -> None:
        try:
            reservations.reserve(owner, ["local/H100#0"])
            won.append(owner)
        except ReservationConflict:
            pass

    threads = [threading.Thread(target=take, args=(f"owner-{i}",)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and reservations.busy() == {"local/H100#0"}
