"""QAFeL's server maths (Ortega & Jafarkhani, arXiv:2410.00242) on top of FedBuff (Nguyen et al.,
arXiv:2106.06639): hidden state, buffered step, checkpoints, and the FLSim event schedule."""

from __future__ import annotations

import io
import itertools
import math

import numpy as np
import pytest
import torch

from fp8fl.federated.buffered import (
    AsyncSchedule,
    BufferedServer,
    HiddenState,
    StateDict,
    identity_quantizer,
    little_rate,
)
from fp8fl.numerics.qsgd import minmax_quantize, qsgd_quantize

SHAPES = {"conv.weight": (4, 3, 3, 3), "conv.bias": (4,), "fc.weight": (10, 36), "fc.bias": (10,)}


def _model(seed: int, scale: float = 1.0) -> StateDict:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=g) * scale for name, shape in SHAPES.items()}


def _qsgd_server_quantizer(seed: int, levels: int = 7):
    """Q_s seeded by (seed, t): a resumed server repeats the same randomness."""

    def quantize(state: StateDict, version: int) -> StateDict:
        g = torch.Generator().manual_seed(seed * 1_000_003 + version)
        return {name: qsgd_quantize(t, levels, g) for name, t in state.items()}

    return quantize


def _minmax_server_quantizer(state: StateDict, version: int) -> StateDict:
    return {name: minmax_quantize(t, 4) for name, t in state.items()}


def _assert_bitwise(a: StateDict, b: StateDict) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype == torch.float32
        assert torch.equal(a[name].view(torch.int32), b[name].view(torch.int32)), name


# ------------------------------------------------------------------------------- hidden state


def test_hidden_states_agree_bitwise_after_random_broadcasts() -> None:
    x0 = _model(0)
    server, client = HiddenState(x0), HiddenState(x0)
    g = torch.Generator().manual_seed(1)
    for step in range(50):
        scale = 10.0 ** float(torch.randint(-8, 3, (1,), generator=g))
        q = {n: qsgd_quantize(t, 7, g) for n, t in _model(100 + step, scale).items()}
        server.apply(q)
        client.apply({n: t.clone() for n, t in q.items()})  # a fresh decoded copy
    _assert_bitwise(server.state, client.state)


def test_clients_following_the_broadcasts_hold_the_servers_hidden_state() -> None:
    x0 = _model(0)
    server = BufferedServer(
        x0, buffer_size=3, server_lr=0.7, server_quantizer=_qsgd_server_quantizer(5)
    )
    clients = [HiddenState(x0) for _ in range(2)]
    g = torch.Generator().manual_seed(2)
    for _ in range(10):
        for _ in range(3):
            server.receive(
                {n: torch.randn(t.shape, generator=g) * 0.1 for n, t in x0.items()}, server.version
            )
        q = server.step()
        for c in clients:
            c.apply(q)
    for c in clients:
        _assert_bitwise(c.state, server.hidden.state)
        _assert_bitwise(c.state, server.start_model())


def test_hidden_state_tracks_x_within_the_quantizer_error() -> None:
    # with a deterministic min–max Q_s, x̂_{t+1} − x_{t+1} = Q(x − x̂) − (x − x̂): within the
    # quantizer's half step, for tensors with ndim ≥ 2; ndim ≤ 1 stay FP32 so x̂ = x up to rounding
    x0 = _model(0)
    server = BufferedServer(
        x0, buffer_size=2, server_lr=1.0, server_quantizer=_minmax_server_quantizer
    )
    for k in range(4):
        d = _model(10 + k, 0.05)
        server.receive(d, server.version)
        server.receive(d, server.version)
        before = {n: server.x[n] - server.hidden.state[n] for n in x0}
        server.step()
        for n in x0:
            gap = (server.x[n] - server.hidden.state[n]).abs().max()
            span = float((before[n] + d[n]).max() - (before[n] + d[n]).min())
            assert gap <= span / (2 * 15) + 1e-5  # + a few float32 ulps of the subtractions


# ------------------------------------------------------------------------------ FedAvg check


def _fedavg_round(x: StateDict, trained: list[StateDict], lr: float) -> StateDict:
    """Reference FedAvg with server lr η_g, in the server's own order of operations:
    Σ_k (y_k − x) in float64 in client order, /K, rounded to float32, then x + η_g·avg."""
    out = {}
    for n, t in x.items():
        total = torch.zeros_like(t, dtype=torch.float64)
        for y in trained:
            total += (y[n] - t).double()
        out[n] = t + (total / len(trained)).float() * lr
    return out


@pytest.mark.parametrize("lr", [1.0, 0.5, 3.0])
def test_identity_quantizers_full_buffer_no_staleness_is_fedavg(lr: float) -> None:
    n_clients = 5
    x0 = _model(0)
    server = BufferedServer(x0, n_clients, lr, identity_quantizer)
    trained = [{n: t + 0.1 * torch.randn_like(t) for n, t in x0.items()} for _ in range(n_clients)]
    start = server.start_model()
    _assert_bitwise(start, x0)  # version 0: every client starts from x̂₀ = x₀
    for y in trained:
        server.receive({n: y[n] - start[n] for n in x0}, version=0)
    q = server.step()
    # exact: the reference uses the same summation order, so equality is asserted bit for bit
    _assert_bitwise(server.x, _fedavg_round(x0, trained, lr))
    # and against plain float64 FedAvg: float32 rounding (≤ 2⁻²⁴ relative each) of every delta
    # y_k − x, of avg, of η_g·avg and of the final add bounds |Δ| to
    # 2⁻²⁴·(|x| + η_g·(3|avg| + mean_k |y_k − x|)) to first order; 1.01 covers the second
    for n, t in x0.items():
        deltas = torch.stack([y[n].double() - t.double() for y in trained])
        avg = deltas.mean(0)
        exact = t.double() + lr * avg
        tol = 1.01 * 2.0**-24 * (t.double().abs() + lr * (3 * avg.abs() + deltas.abs().mean(0)))
        assert ((server.x[n].double() - exact).abs() <= tol).all()
    # identity Q_s: the broadcast is x − x̂ and x̂ lands on x up to one float32 rounding
    for n in x0:
        assert torch.equal(q[n], server.x[n] - x0[n])
        gap = (server.hidden.state[n] - server.x[n]).abs()
        assert (gap <= 2.0**-23 * (x0[n].abs() + server.x[n].abs())).all()
    assert server.staleness == [0] * n_clients and server.version == 1


def test_momentum_matches_torch_sgd_momentum_rule() -> None:
    # FLSim's server optimiser is torch SGD(momentum=β, dampening=0) on the "gradient" g = −avg:
    # buf₁ = g, buf ← β·buf + g, p ← p − lr·buf (torch.optim.SGD docs), written out in float64
    x0, beta, lr = _model(0), 0.3, 2.0
    server = BufferedServer(x0, buffer_size=2, server_lr=lr, momentum=beta)
    params = {n: t.double() for n, t in x0.items()}
    bufs: dict[str, torch.Tensor] = {}
    for k in range(5):
        d1, d2 = _model(20 + k, 0.1), _model(40 + k, 0.1)
        server.receive(d1, server.version)
        server.receive(d2, server.version)
        server.step()
        for n in params:
            g = -(d1[n].double() + d2[n].double()) / 2
            bufs[n] = g if n not in bufs else beta * bufs[n] + g
            params[n] = params[n] - lr * bufs[n]
    for n, p in params.items():
        assert torch.allclose(server.x[n].double(), p, rtol=1e-6, atol=1e-6)


def test_naive_baseline_starts_from_quantized_x() -> None:
    x0 = _model(0)
    quantizer = _qsgd_server_quantizer(3)
    server = BufferedServer(x0, buffer_size=2, server_quantizer=quantizer, naive=True)
    _assert_bitwise(server.start_model(), x0)
    d = _model(1, 0.1)
    server.receive(d, 0)
    server.receive(d, 0)
    broadcast = server.step()
    _assert_bitwise(broadcast, quantizer(server.x, 0))
    _assert_bitwise(server.start_model(), broadcast)
    _assert_bitwise(server.hidden.state, x0)  # no hidden state in the naive baseline


def test_receive_and_step_guard_their_preconditions() -> None:
    server = BufferedServer(_model(0), buffer_size=2)
    with pytest.raises(RuntimeError):
        server.step()
    with pytest.raises(ValueError):
        server.receive(_model(1), version=1)  # from the future
    assert not server.receive(_model(1), 0)
    assert server.receive(_model(2), 0)
    with pytest.raises(RuntimeError):
        server.receive(_model(3), 0)
    with pytest.raises(KeyError):
        BufferedServer(_model(0), 1).receive({"conv.weight": torch.zeros(4, 3, 3, 3)}, 0)


# ------------------------------------------------------------------------------- checkpoints


def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _assert_state_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict) and key != "config":
            _assert_bitwise_any(a[key], b[key])
        elif isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key])
        else:
            assert a[key] == b[key], key


def _assert_bitwise_any(a: StateDict, b: StateDict) -> None:
    assert list(a) == list(b)
    for n in a:
        assert a[n].dtype == b[n].dtype and torch.equal(a[n], b[n])
        assert a[n].numpy().tobytes() == b[n].numpy().tobytes()


def _drive(server: BufferedServer, updates: list[tuple[StateDict, int]]) -> None:
    for delta, lag in updates:
        server.receive(delta, max(0, server.version - lag))
        if server.ready:
            server.step()


def _updates(count: int) -> list[tuple[StateDict, int]]:
    return [(_model(1000 + i, 0.05), i % 3) for i in range(count)]


@pytest.mark.parametrize("momentum", [0.0, 0.3])
def test_state_dict_round_trip_is_exact(momentum: float) -> None:
    def make() -> BufferedServer:
        return BufferedServer(_model(0), 3, 1.5, _qsgd_server_quantizer(1), momentum=momentum)

    server = make()
    _drive(server, _updates(7))  # mid-buffer: 2 steps taken, 1 update buffered
    assert server.buffered == 1 and server.version == 2
    saved = server.state_dict()
    fresh = make()
    fresh.load_state_dict(_roundtrip(saved))
    _assert_state_equal(fresh.state_dict(), saved)
    with pytest.raises(ValueError):
        BufferedServer(_model(0), 4).load_state_dict(saved)


@pytest.mark.parametrize("naive", [False, True])
def test_killed_and_resumed_run_is_bit_identical(naive: bool) -> None:
    def make() -> BufferedServer:
        return BufferedServer(
            _model(0), 3, 1.5, _qsgd_server_quantizer(9), momentum=0.3, naive=naive
        )

    updates = _updates(31)
    straight = make()
    _drive(straight, updates)
    first = make()
    _drive(first, updates[:14])  # killed mid-buffer (4 steps, 2 buffered)
    checkpoint = _roundtrip(first.state_dict())
    del first
    resumed = make()
    resumed.load_state_dict(checkpoint)
    _drive(resumed, updates[14:])
    _assert_bitwise(resumed.x, straight.x)
    _assert_bitwise(resumed.hidden.state, straight.hidden.state)
    _assert_bitwise(resumed.start_model(), straight.start_model())
    assert resumed.staleness == straight.staleness and resumed.version == straight.version == 10


# ---------------------------------------------------------------------------------- schedule


def test_rate_concurrency_relation_matches_the_papers_numbers() -> None:
    # Little's law with E[HalfNormal(σ)] = σ√(2/π) ≈ 0.798σ: the paper's λ = 125 / 627 / 1253
    for concurrency, paper_rate in ((100, 125), (500, 627), (1000, 1253)):
        assert round(little_rate(concurrency, 0.0, 1.0)) == paper_rate
        assert AsyncSchedule.from_rate(10, paper_rate).concurrency == pytest.approx(
            concurrency, rel=3e-3
        )
    assert little_rate(100, 0.5, 1.0) == pytest.approx(100 / (0.5 + math.sqrt(2 / math.pi)))


@pytest.mark.parametrize("d_min", [0.0, 0.5])
def test_measured_concurrency_matches(d_min: float) -> None:
    sched = AsyncSchedule(
        num_clients=5000, concurrency=100, duration_min=d_min, duration_sigma=1.0, seed=3
    )
    count = 150_000
    _, start, end = sched.first_jobs(count)
    # time average of the number of running jobs over [t0, t1], clipping each job to the window;
    # every job that starts before t1 is among the first `count`; t0 skips the ramp-up from 0
    t0, t1 = 10.0, float(start[-1])
    measured = float((np.minimum(end, t1) - np.maximum(start, t0)).clip(min=0).sum() / (t1 - t0))
    # N(t) averages λ·d over ≈ λ(t1 − t0) iid durations: relative sd = √(Var d / (λ T)) / E[d]
    # ≈ 2e-3 here, so 1 % is 5σ; the looser 10 % versus 0.8·λ·σ(+ d_min·λ) also holds
    assert measured == pytest.approx(sched.concurrency, rel=0.01)
    assert measured == pytest.approx(sched.rate * (0.8 * 1.0 + d_min), rel=0.10)
    if d_min == 0.0:
        assert measured == pytest.approx(0.8 * sched.rate * 1.0, rel=0.10)


def test_schedule_is_determined_by_the_seed() -> None:
    def first(seed: int, n: int = 400) -> list:
        return list(itertools.islice(AsyncSchedule(100, 50, 0.0, 1.0, seed).server_steps(10), n))

    assert first(7) == first(7)
    assert first(7) != first(8)
    clients, start, end = AsyncSchedule(100, 50, 0.0, 1.0, 7).first_jobs(12_000)
    jobs = [j for s in first(7, 900) for j in s.jobs]
    assert max(j.index for j in jobs) > AsyncSchedule.BLOCK  # the lazy path crosses a block
    for j in jobs:
        assert (j.client, j.start, j.end) == (clients[j.index], start[j.index], end[j.index])


def test_steps_group_ends_and_record_start_versions_and_live_versions() -> None:
    k, n_steps = 10, 400
    steps = list(
        itertools.islice(AsyncSchedule(1000, 100, 0.0, 1.0, seed=11).server_steps(k), n_steps)
    )
    completions = [s.time for s in steps]
    ends = [j.end for s in steps for j in s.jobs]
    assert ends == sorted(ends)  # jobs come in order of end time
    for t, step in enumerate(steps):
        assert step.version == t and len(step.jobs) == k and step.time == step.jobs[-1].end
        for j in step.jobs:
            # τ = server steps completed at or before the job's start
            assert j.start_version == int(np.searchsorted(completions, j.start, side="right"))
            assert 0 <= j.start_version <= t and j.start < j.end
    stale = [s for step in steps for s in step.staleness]
    assert max(stale) > 0  # concurrency ≫ K: updates are stale
    assert np.mean(stale) == pytest.approx(100 / k, rel=0.3)  # ≈ jobs ending while one runs / K
    # live versions: exactly the start versions a later step still needs, plus the new version
    for t in range(n_steps - 100):  # 100 steps ≈ 8 time units = 8σ: no job runs that long
        needed = {j.start_version for s in steps[t + 1 :] for j in s.jobs if j.start_version <= t}
        assert set(steps[t].live_versions) == needed | {t + 1}


def test_schedule_drives_a_server_and_its_staleness_is_recorded() -> None:
    k = 4
    x0 = {"w": torch.zeros(3, 2)}
    server = BufferedServer(x0, buffer_size=k, server_lr=1.0)
    expected: list[int] = []
    for step in itertools.islice(AsyncSchedule(50, 20, 0.0, 1.0, seed=5).server_steps(k), 60):
        assert server.version == step.version
        for job in step.jobs:
            server.receive({"w": torch.full((3, 2), float(job.client))}, job.start_version)
        expected.extend(step.staleness)
        server.step()
    assert server.staleness == expected and max(expected) > 0
