"""The closed-form linearisation of the strapdown models (EulerModel.linearise) against the autodiff one
(TransitionModel.linearise), which differentiates the very propagation code: F, G, the mean and the
predicted Gaussian, for both schemes, both input models, short and long windows, partial end intervals."""
import numpy as np
import pytest
import torch

from prism_ros.dynamics.imu import imu_window, window_weights
from prism_ros.dynamics.model import DynamicsConfig, InputWindow, ResidualMLP, TransitionModel, make_transition
from prism_ros.frame import ImuSamples
from prism_ros.geometry.lie import se3_exp
from prism_ros.prism.state import GaussianState

F64 = dict(dtype=torch.float64)
RATE = 200.0
TOLERANCE = 1e-9  # relative to the largest entry


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), **F64)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def model(name: str, method: str, seed: int, residual=None):
    """Random biases (and gravity for the IMU) so that every term of the Jacobians is exercised."""
    bias = 0.1 * randn(6, seed=seed + 100)
    config = DynamicsConfig(model=name, imu_method=method, bias_gyro=tuple(bias[:3].tolist()),
                            bias_accel=tuple(bias[3:].tolist()))
    return make_transition(config, residual)


def random_window(samples: int, seed: int, t0_offset: float = 0.3, t1_offset: float = 0.6,
                  start: float = 50.0) -> InputWindow:
    """``samples`` inputs at 200 Hz with fast rotation and large accelerations; ``t0``/``t1`` fall
    ``t0_offset``/``t1_offset`` of an interval after the first / before the last sample's neighbour, so the
    first and last intervals are partial (negative offsets: the window starts before or ends after the
    samples, which are then held or extrapolated)."""
    times = start + np.arange(samples) / RATE
    t0 = times[0] + t0_offset / RATE
    t1 = times[-1] - t1_offset / RATE if samples > 2 else t0 + 1.7 / RATE
    values = randn(samples, 6, seed=seed) * torch.tensor([2.0] * 3 + [4.0] * 3, **F64)
    values[:, 5] += 9.81
    return InputWindow(t0, t1, torch.as_tensor(times), values, torch.ones(samples * 6, **F64))


def random_state(seed: int):
    return se3_exp(2.0 * randn(6, seed=seed)), randn(6, seed=seed + 1)


@pytest.mark.parametrize("name", ["imu", "control"])
@pytest.mark.parametrize("method", ["euler", "midpoint"])
@pytest.mark.parametrize("samples", [1, 2, 37, 400])
def test_closed_form_jacobians_equal_autodiff(name, method, samples):
    transition, window = model(name, method, samples), random_window(samples, seed=samples)
    T, v = random_state(seed=samples + 7)
    T1, v1, F, G = transition.linearise(T, v, window)
    T1_ad, v1_ad, F_ad, G_ad = TransitionModel.linearise(transition, T, v, window)
    assert torch.equal(T1, T1_ad) and torch.equal(v1, v1_ad)
    assert G.shape == (12, samples * 6)
    assert relative(F, F_ad) < TOLERANCE and relative(G, G_ad) < TOLERANCE, (relative(F, F_ad), relative(G, G_ad))


@pytest.mark.parametrize("method", ["euler", "midpoint"])
@pytest.mark.parametrize("t0_offset, t1_offset", [(0.0, 0.0), (-0.7, -0.4), (0.99, 0.01)])
def test_closed_form_jacobians_with_ends_on_and_beyond_the_samples(method, t0_offset, t1_offset):
    """Ends on samples, a window starting before its first sample and ending after its last (held or
    extrapolated), and ends close to the next sample."""
    transition, window = model("imu", method, 3), random_window(20, seed=3, t0_offset=t0_offset,
                                                                t1_offset=t1_offset)
    T, v = random_state(seed=4)
    _, _, F, G = transition.linearise(T, v, window)
    _, _, F_ad, G_ad = TransitionModel.linearise(transition, T, v, window)
    assert relative(F, F_ad) < TOLERANCE and relative(G, G_ad) < TOLERANCE


@pytest.mark.parametrize("method", ["euler", "midpoint"])
def test_closed_form_jacobians_with_epoch_timestamps(method):
    """Sample times in epoch seconds (EuRoC's): a time difference is exact only to ~2e-7 s there, so the
    closed form must use the very steps the integration sums, not differences of other times."""
    transition, window = model("imu", method, 13), random_window(37, seed=13, start=1403715273.262142)
    T, v = random_state(seed=14)
    _, _, F, G = transition.linearise(T, v, window)
    _, _, F_ad, G_ad = TransitionModel.linearise(transition, T, v, window)
    assert relative(F, F_ad) < TOLERANCE and relative(G, G_ad) < TOLERANCE, (relative(F, F_ad), relative(G, G_ad))


@pytest.mark.parametrize("method", ["euler", "midpoint"])
def test_closed_form_jacobians_with_a_residual(method):
    """A trained (here: random) residual MLP: its autodiff Jacobian is added to the velocity rows."""
    mlp = ResidualMLP(hidden=16)
    for head in (mlp.output, mlp.trunk[0]):
        torch.nn.init.normal_(head.weight, std=0.3, generator=torch.Generator().manual_seed(6))
    transition, window = model("imu", method, 5, mlp), random_window(37, seed=5)
    T, v = random_state(seed=6)
    T1, v1, F, G = transition.linearise(T, v, window)
    T1_ad, v1_ad, F_ad, G_ad = TransitionModel.linearise(transition, T, v, window)
    assert torch.equal(T1, T1_ad) and torch.allclose(v1, v1_ad, rtol=0, atol=1e-14)
    assert relative(F, F_ad) < TOLERANCE and relative(G, G_ad) < TOLERANCE
    plain = model("imu", method, 5).linearise(T, v, window)
    assert (F[6:] - plain[2][6:]).abs().max() > 1e-3  # the residual's Jacobian is there


@pytest.mark.parametrize("name", ["imu", "control"])
@pytest.mark.parametrize("method", ["euler", "midpoint"])
def test_predicted_gaussian_equals_the_autodiff_one(name, method):
    """Three frames through predict (the model's own input window, the held sample carried between
    frames, bias variance), once with the closed form and once with autodiff."""
    t = 100.0 + np.arange(400) / RATE
    values = randn(400, 6, seed=8) * 2.0
    samples = ImuSamples(t, values[:, :3].numpy(), values[:, 3:].numpy() + [0.0, 0.0, 9.81])
    closed, autodiff = model(name, method, 9), model(name, method, 9)
    autodiff.linearise = lambda T, v, window: TransitionModel.linearise(autodiff, T, v, window)
    A = randn(12, 12, seed=10)
    T, v = random_state(seed=11)
    a = b = GaussianState(100.013, T, v, A @ A.T * 1e-3 + torch.eye(12, **F64) * 1e-4)
    inputs = "imu" if name == "imu" else "control"
    for t1 in (100.05, 100.31, 101.9):  # windows of 9, 55 and 321 samples
        a = closed.predict(a, t1, **{inputs: samples})
        b = autodiff.predict(b, t1, **{inputs: samples})
        assert torch.equal(a.T, b.T) and torch.equal(a.velocity, b.velocity)
        assert relative(a.covariance, b.covariance) < TOLERANCE


@pytest.mark.parametrize("method", ["euler", "midpoint"])
def test_window_weights_reproduce_imu_window(method):
    t_imu = 3.0 + np.arange(30) / RATE
    x = randn(30, 3, seed=12)
    for t0, t1 in ((3.0013, 3.1), (2.9, 3.2), (3.01, 3.0102), (3.005, 3.01)):
        _, window, _ = imu_window(t_imu, x, x, t0, t1, method)
        index, weight = window_weights(t_imu, t0, t1, method)
        assert torch.allclose((x[index] * weight[..., None]).sum(1), window, rtol=0, atol=1e-15)
