"""The sandbox's boot model: a machine keeps its boot character across rentals (fixed by the
seed, so a client can learn it), and now and then drifts (seeded, so forgetting can be tested)."""

from __future__ import annotations

from vastai_async.sandbox.lifecycle import BootModel


def draws(model: BootModel, machine_id: int, n: int) -> list[float]:
    return [model.draw(offer_id=machine_id * 10, machine_id=machine_id) for _ in range(n)]


def test_a_machine_boots_alike_across_rentals_and_sandboxes() -> None:
    """Without drift every rental is within the jitter of the machine's typical latency, and
    the same seed gives the same sequence in another sandbox."""
    a, b = BootModel(seed=5, drift_rate=0), BootModel(seed=5, drift_rate=0)
    for machine in range(1, 30):
        seq = draws(a, machine, 12)
        assert seq == draws(b, machine, 12)
        typical = a.typical(machine)
        assert all(abs(x / typical - 1) <= 0.1 + 1e-9 for x in seq)
    assert a.drifts == []
    # Machines differ from one another (the character is the machine's, not the market's).
    spread = sorted(a.typical(m) for m in range(1, 30))
    assert spread[-1] / spread[0] > 2


def test_another_seed_gives_machines_another_character() -> None:
    a, b = BootModel(seed=5, drift_rate=0), BootModel(seed=6, drift_rate=0)
    assert [a.typical(m) for m in range(20)] != [b.typical(m) for m in range(20)]


def test_drift_is_occasional_seeded_and_lasting() -> None:
    a, b = BootModel(seed=8, drift_rate=0.05), BootModel(seed=8, drift_rate=0.05)
    for machine in range(1, 40):
        assert draws(a, machine, 20) == draws(b, machine, 20)
    assert a.drifts == b.drifts
    # Occasional: some machines drifted, most rentals did not.
    assert 0 < len(a.drifts) < 0.2 * 39 * 19
    machine, rental, factor = a.drifts[0]
    assert rental >= 1  # never before a machine's first rental
    assert factor >= 1.5 - 1e-9 or factor <= 1 / 1.5 + 1e-9
    # Lasting: after the drift, rentals center on the new typical latency.
    fresh = BootModel(seed=8, drift_rate=0.05)
    seq = draws(fresh, machine, 20)
    before, after = seq[rental - 1], seq[rental]
    ratio = after / before
    assert ratio > 1.5 * 0.9 / 1.1 or ratio < (1 / 1.5) * 1.1 / 0.9
    later = [x / fresh.typical(machine) for x in seq[rental:]]
    if not any(m == machine and r > rental for m, r, _ in fresh.drifts):
        assert all(abs(x - 1) <= 0.1 + 1e-9 for x in later)


def test_drift_stays_within_a_factor_of_eight() -> None:
    model = BootModel(seed=3, drift_rate=0.9, drift_sigma=3.0)
    for machine in range(1, 10):
        born = BootModel(seed=3, drift_rate=0).typical(machine)
        draws(model, machine, 30)
        assert born / 8 - 1e-9 <= model.typical(machine) <= born * 8 + 1e-9


def test_exact_latencies_ignore_drift() -> None:
    model = BootModel(seed=1, drift_rate=1.0)
    model.exact[10] = 42.0
    assert draws(model, 1, 5) == [42.0] * 5


def test_a_forced_drift_applies_from_the_next_rental() -> None:
    model = BootModel(seed=2, drift_rate=0)
    before = model.typical(4)
    draws(model, 4, 2)
    model.drift(4, 3.0)
    assert model.typical(4) == before * 3.0
    assert all(abs(x / (before * 3.0) - 1) <= 0.1 + 1e-9 for x in draws(model, 4, 5))
    assert model.drifts == [(4, 2, 3.0)]
