"""Arena views, the next-fit pool allocator (blocking, deadlines, claims) and counted copies."""

import threading
import time

import numpy
import pytest

from geeps_net.errors import DeadlineError, PsError
from geeps_net.ps.memory import Arena, Device, HostStore, PoolAllocator


def test_next_fit_continues_after_the_last_block_and_wraps():
    pool = PoolAllocator(1000, 400)
    a, b, c = (pool.try_alloc(100) for _ in range(3))
    assert (a, b, c) == (1000, 1100, 1200)
    pool.free(b)
    assert pool.try_alloc(50) == 1300  # next fit: after c, not the hole at 1100
    assert pool.try_alloc(100) == 1100  # wraps around to the hole
    assert pool.try_alloc(60) is None  # 50 B left at the end
    assert pool.free_pieces() == [(1350, 50)]


def test_free_merges_neighbours():
    pool = PoolAllocator(0, 300)
    blocks = [pool.try_alloc(100) for _ in range(3)]
    for offset in (blocks[0], blocks[2], blocks[1]):
        pool.free(offset)
    assert pool.free_pieces() == [(0, 300)] and pool.in_use == 0
    assert pool.high_water == 300


def test_claim_takes_an_exact_block():
    pool = PoolAllocator(0, 1000)
    assert pool.try_claim(100, 50)
    assert not pool.try_claim(120, 10) and not pool.try_claim(50, 60)
    assert pool.try_claim(150, 850)
    assert pool.free_pieces() == [(0, 100)]
    pool.free(100)
    pool.free(150)
    assert pool.free_pieces() == [(0, 1000)]


def free_later(pool, offset, delay):
    timer = threading.Timer(delay, pool.free, args=(offset,))
    timer.start()
    return timer


def test_alloc_blocks_until_a_free_and_counts_the_wait():
    pool = PoolAllocator(0, 256)
    first = pool.alloc(256, 1.0, "first")
    timer = free_later(pool, first, 0.1)
    assert pool.alloc(256, 2.0, "second") == 0
    timer.join()
    assert pool.wait_s >= 0.05


def test_alloc_deadline_names_the_shortfall():
    pool = PoolAllocator(0, 512)
    pool.alloc(256, 1.0, "a")
    pool.try_claim(384, 128)
    with pytest.raises(DeadlineError, match=r"read of W needs 256 B but after 0\.1 s only 128 B"):
        pool.alloc(256, 0.1, "read of W")


def test_claim_waits_for_the_occupant_and_close_wakes_waiters():
    pool = PoolAllocator(0, 512)
    pool.try_claim(0, 256)
    timer = free_later(pool, 0, 0.1)
    assert pool.claim(0, 512, "next") == 0
    timer.join()
    errors = []

    def wait():
        try:
            pool.claim(0, 256, "late")
        except PsError as e:
            errors.append(e)

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.05)
    pool.close()
    thread.join(2)
    assert not thread.is_alive() and "closed" in str(errors[0])


def test_high_water_stays_within_the_pool_under_concurrent_use():
    pool = PoolAllocator(0, 4096)
    rng = numpy.random.default_rng(0)
    sizes = [int(s) * 256 for s in rng.integers(1, 6, size=400)]

    def worker(part):
        for size in part:
            offset = pool.alloc(size, 5.0, "stress")
            pool.free(offset)

    threads = [threading.Thread(target=worker, args=(sizes[k::2],)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert 0 < pool.high_water <= 4096 and pool.in_use == 0
    assert pool.free_pieces() == [(0, 4096)]


def test_arena_views_share_one_buffer():
    device = Device(numpy)
    arena = Arena(device, 1024)
    a = arena.view(0, 10, "float32")
    b = arena.view(256, 8, "float64")
    c = arena.view(512, 3, "uint8")
    a[...] = 1.5
    b[...] = 2.0
    c[...] = 7
    assert a.dtype == numpy.float32 and b.dtype == numpy.float64 and c.size == 3
    assert numpy.shares_memory(a, arena.buffer) and numpy.shares_memory(b, arena.buffer)
    assert arena.buffer[256:320].view(numpy.float64).tolist() == [2.0] * 8


def test_host_arena_starts_on_a_page():
    for nbytes in (256, 1 << 20, 3 * 4096 + 256):
        arena = Arena(Device(numpy), nbytes)
        assert arena.buffer.ctypes.data % 4096 == 0 and arena.buffer.nbytes == nbytes
        assert arena.view(256, 64, "float32").ctypes.data % 64 == 0


def test_copies_are_counted_each_way():
    device = Device(numpy)
    host = HostStore(device)
    home = host.array("x", 100, "float32")
    assert not home.any() and host.nbytes == 400
    buf = numpy.arange(100, dtype="float32")
    device.to_host(home, buf)
    back = numpy.empty(100, "float32")
    device.to_device(back, home)
    device.add_to_host(home, buf, None)
    assert numpy.array_equal(back, buf) and numpy.array_equal(home, 2 * buf)
    assert device.bytes_to_device == 400 and device.bytes_to_host == 800
