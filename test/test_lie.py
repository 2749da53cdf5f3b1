"""prism_ros.geometry.lie vs scipy, matrix_exp, autodiff and finite differences (float32, float64, torch, numpy)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from torch.func import jacfwd

from prism_ros.geometry.lie import (
    se3_ad,
    se3_adjoint,
    se3_compose,
    se3_exp,
    se3_exp_np,
    se3_hat,
    se3_inverse,
    se3_inverse_np,
    se3_left_jacobian,
    se3_left_jacobian_inverse,
    se3_left_jacobian_inverse_np,
    se3_log,
    se3_log_np,
    se3_right_jacobian,
    se3_right_jacobian_inverse,
    skew,
    skew_np,
    so3_exp,
    so3_exp_np,
    so3_left_jacobian,
    so3_left_jacobian_inverse,
    so3_left_jacobian_inverse_np,
    so3_left_jacobian_np,
    so3_log,
    so3_log_np,
    so3_right_jacobian,
    so3_right_jacobian_inverse,
    transform_points,
    vee,
)

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 2e-6, torch.float64: 1e-13}
KINDS = ["random", "tiny", "near_pi", "switch", "switch_se3"]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
F64 = dict(dtype=torch.float64)


def rotation_vectors(kind: str, n: int = 500, seed: int = 0) -> torch.Tensor:
    """float64 rotation vectors: random angles in [0, pi), tiny (1e-9..1e-2) or near pi (pi - 1e-7..pi - 1e-2)."""
    g = torch.Generator().manual_seed(seed)
    axis = torch.randn(n, 3, generator=g, dtype=torch.float64)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    angle = {
        "random": torch.rand(n, generator=g, dtype=torch.float64) * math.pi,
        "tiny": torch.logspace(-9, -2, n, dtype=torch.float64),
        "near_pi": math.pi - torch.logspace(-7, -2, n, dtype=torch.float64),
        "switch": 0.3 + torch.linspace(-1e-6, 1e-6, n, dtype=torch.float64),  # series / closed form boundary
        "switch_se3": 1.0 + torch.linspace(-1e-6, 1e-6, n, dtype=torch.float64),  # the same for Q's d and e
    }[kind]
    return axis * angle[:, None]


def hat6(xi: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(*xi.shape[:-1], 4, 4, dtype=xi.dtype)
    out[..., :3, :3] = skew(xi[..., 3:])
    out[..., :3, 3] = xi[..., :3]
    return out



def twists(kind: str, n: int = 500, seed: int = 0) -> torch.Tensor:
    """float64 twists [rho, phi]: standard normal rho, phi from :func:`rotation_vectors`."""
    phi = rotation_vectors(kind, n, seed)
    rho = torch.randn(phi.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    return torch.cat((rho, phi), -1)


def se3_vee(X: torch.Tensor) -> torch.Tensor:
    """(..., 4, 4) element of se(3) -> (..., 6) [rho, phi] (test-side inverse of se3_hat)."""
    return torch.cat((X[..., :3, 3], vee(X[..., :3, :3])), -1)


# ---------------------------------------------------------------- Lie groups
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["random", "tiny", "near_pi", "switch"])
def test_so3_exp_log_match_scipy(kind, dtype):
    phi = rotation_vectors(kind)
    R_ref = torch.from_numpy(Rotation.from_rotvec(phi.numpy()).as_matrix())
    R = so3_exp(phi.to(dtype))
    assert R.dtype == dtype
    assert (R.double() - R_ref).abs().max() < TOL[dtype]
    phi_back = so3_log(R_ref.to(dtype)).double()
    assert ((phi_back - phi).norm(dim=-1) / phi.norm(dim=-1).clamp_max(1.0)).max() < 5 * TOL[dtype]
    if dtype == torch.float64:
        phi_scipy = torch.from_numpy(Rotation.from_matrix(R_ref.numpy()).as_rotvec())
        assert (phi_back - phi_scipy).abs().max() < 1e-12


@pytest.mark.parametrize("dtype", DTYPES)
def test_so3_log_at_pi_gives_a_valid_rotation_vector(dtype):
    phi = rotation_vectors("random")
    phi = math.pi * phi / phi.norm(dim=-1, keepdim=True)
    R = so3_exp(phi.to(dtype))
    back = so3_log(R)
    assert (back.norm(dim=-1).double() - math.pi).abs().max() < 10 * TOL[dtype]
    assert (so3_exp(back) - R).abs().max() < 10 * TOL[dtype]  # +phi and -phi are the same rotation at pi


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["random", "tiny", "near_pi", "switch"])
def test_se3_exp_matches_matrix_exponential_and_log_inverts_it(kind, dtype):
    phi = rotation_vectors(kind)
    rho = torch.randn(phi.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    xi = torch.cat((rho, phi), -1)
    T_ref = torch.linalg.matrix_exp(hat6(xi))
    T = se3_exp(xi.to(dtype))
    assert T.dtype == dtype and T.shape == (len(xi), 4, 4)
    assert (T.double() - T_ref).abs().max() < 5 * TOL[dtype]
    xi_back = se3_log(T_ref.to(dtype)).double()
    scale = xi.norm(dim=-1, keepdim=True).clamp_max(1.0)
    assert ((xi_back - xi).abs() / scale).max() < 20 * TOL[dtype]


def test_lie_functions_batch_over_leading_dims():
    xi = torch.randn(2, 3, 6, dtype=torch.float64)
    T = se3_exp(xi)
    assert T.shape == (2, 3, 4, 4) and se3_log(T).shape == (2, 3, 6)
    assert se3_adjoint(T).shape == (2, 3, 6, 6)
    assert so3_right_jacobian(xi[..., 3:]).shape == (2, 3, 3, 3)
    assert se3_exp(torch.zeros(6)).shape == (4, 4)
    A, B = se3_exp(torch.randn(5, 6, dtype=torch.float64)), se3_exp(torch.randn(6, dtype=torch.float64))
    assert torch.allclose(se3_compose(A, B), A @ B[None])
    p = torch.randn(5, 7, 3, dtype=torch.float64)
    expected = torch.einsum("bij,bnj->bni", A[:, :3, :3], p) + A[:, None, :3, 3]
    assert torch.allclose(transform_points(A, p), expected)
    assert torch.allclose(transform_points(B, p), p @ B[:3, :3].T + B[:3, 3])


def test_inverse_and_skew():
    T = se3_exp(torch.randn(10, 6, dtype=torch.float64))
    assert torch.allclose(se3_inverse(T), torch.linalg.inv(T), atol=1e-12)
    assert torch.allclose(se3_compose(T, se3_inverse(T)), torch.eye(4, dtype=torch.float64).expand(10, 4, 4),
                          atol=1e-12)
    a, b = torch.randn(2, 4, 3, dtype=torch.float64)
    assert torch.allclose((skew(a) @ b[..., None])[..., 0], torch.linalg.cross(a, b))


def test_adjoint_maps_twists_through_conjugation():
    g = torch.Generator().manual_seed(3)
    T = se3_exp(torch.randn(20, 6, generator=g, dtype=torch.float64))
    xi = torch.randn(20, 6, generator=g, dtype=torch.float64) * 0.5
    lhs = T @ se3_exp(xi) @ se3_inverse(T)
    assert torch.allclose(lhs, se3_exp((se3_adjoint(T) @ xi[..., None])[..., 0]), atol=1e-12)
    assert torch.allclose(se3_adjoint(se3_inverse(T)), torch.linalg.inv(se3_adjoint(T)), atol=1e-10)


@pytest.mark.parametrize("kind", ["random", "tiny", "switch"])
def test_so3_jacobians_match_finite_differences(kind):
    phi = rotation_vectors(kind, n=20)
    eps = 1e-6
    I3 = torch.eye(3, dtype=torch.float64)
    R = so3_exp(phi)
    # columns: d/dd log(exp(phi + d) exp(phi)^T) = J_l, log(exp(phi)^T exp(phi + d)) = J_r
    fd_l = torch.stack([(so3_log(so3_exp(phi + eps * e) @ R.mT) - so3_log(so3_exp(phi - eps * e) @ R.mT)) / (2 * eps)
                        for e in I3], -1)
    fd_r = torch.stack([(so3_log(R.mT @ so3_exp(phi + eps * e)) - so3_log(R.mT @ so3_exp(phi - eps * e))) / (2 * eps)
                        for e in I3], -1)
    assert (so3_left_jacobian(phi) - fd_l).abs().max() < 1e-8
    assert (so3_right_jacobian(phi) - fd_r).abs().max() < 1e-8
    assert torch.allclose(so3_left_jacobian(phi) @ so3_left_jacobian_inverse(phi), I3.expand(20, 3, 3), atol=1e-12)
    assert torch.allclose(so3_right_jacobian(phi) @ so3_right_jacobian_inverse(phi), I3.expand(20, 3, 3), atol=1e-12)
    assert torch.allclose(so3_right_jacobian(phi), R.mT @ so3_left_jacobian(phi), atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradients_are_finite_at_the_identity(dtype):
    xi = torch.zeros(6, dtype=dtype, requires_grad=True)
    fns = [lambda x: se3_exp(x), lambda x: se3_log(se3_exp(x)), lambda x: so3_left_jacobian(x[3:]),
           lambda x: so3_right_jacobian_inverse(x[3:]), lambda x: so3_log(so3_exp(x[3:]))]
    for fn in fns:
        (grad,) = torch.autograd.grad(fn(xi).sum(), xi)
        assert torch.isfinite(grad).all()
    (grad,) = torch.autograd.grad(se3_log(se3_exp(xi))[1], xi)  # d log(exp(xi)) / d xi = I at 0
    assert torch.allclose(grad, torch.eye(6, dtype=dtype)[1])


def test_outputs_do_not_require_grad_by_themselves():
    assert not se3_exp(torch.randn(6)).requires_grad and not se3_log(torch.eye(4)).requires_grad


def test_se3_left_jacobian_inverse_matches_autodiff():
    for seed, size in ((0, 0.05), (1, 0.3), (2, 0.5)):
        g = torch.Generator().manual_seed(seed)
        xi = torch.randn(6, generator=g, **F64)
        xi = size * xi / xi.norm()
        exact = jacfwd(lambda e, xi=xi: se3_log(se3_exp(e) @ se3_exp(xi)))(torch.zeros(6, **F64))
        assert torch.allclose(se3_left_jacobian_inverse(xi), exact, atol=1e-8)


@pytest.mark.parametrize("angle", [1e-7, 1e-3, 0.3, 2.0, np.pi - 5e-4])
def test_host_rotation_closed_forms_equal_scipy(angle):
    rng = np.random.default_rng(7)
    for _ in range(20):
        axis = rng.normal(size=3)
        phi = axis / np.linalg.norm(axis) * angle
        R = Rotation.from_rotvec(phi).as_matrix()
        np.testing.assert_allclose(so3_exp_np(phi), R, atol=1e-13)
        np.testing.assert_allclose(so3_exp_np(so3_log_np(R)), R, atol=1e-12)
        if angle < 3.0:
            np.testing.assert_allclose(so3_log_np(R), phi, atol=1e-12)


def test_hat_vee_and_ad():
    g = torch.Generator().manual_seed(4)
    v, a, b = torch.randn(3, 10, 6, generator=g, **F64)
    assert torch.equal(vee(skew(v[:, :3])), v[:, :3])
    S = torch.randn(10, 3, 3, generator=g, **F64)
    assert torch.allclose(vee(S), vee(0.5 * (S - S.mT)), atol=1e-15)  # only the skew part counts
    assert torch.equal(se3_hat(v), hat6(v))
    # ad is the matrix of the Lie bracket: [a^, b^] = (ad(a) b)^
    bracket = se3_hat(a) @ se3_hat(b) - se3_hat(b) @ se3_hat(a)
    assert torch.allclose(se3_vee(bracket), (se3_ad(a) @ b[..., None])[..., 0], atol=1e-12)
    # numpy skew: batched, same matrices, float32 kept
    assert np.array_equal(skew_np(v[:, :3].numpy()), skew(v[:, :3]).numpy())
    assert skew_np(np.ones(3, np.float32)).dtype == np.float32 and skew_np([1, 2, 3]).dtype == np.float64


@pytest.mark.parametrize("kind", KINDS)
def test_jacobians_match_autodiff_of_exp(kind):
    """Columns of J_l: (d exp(x + d e_i) / dd) exp(x)^-1; of J_r: exp(x)^-1 d exp(x + d e_i) / dd (SO(3) and SE(3))."""
    xi = twists(kind, n=40)
    for x in xi:
        T, dT = se3_exp(x), jacfwd(se3_exp)(x).movedim(-1, 0)  # (6, 4, 4)
        assert torch.allclose(se3_left_jacobian(x), se3_vee(dT @ se3_inverse(T)).T, atol=1e-12)
        assert torch.allclose(se3_right_jacobian(x), se3_vee(se3_inverse(T) @ dT).T, atol=1e-12)
        R, dR = T[:3, :3], jacfwd(so3_exp)(x[3:]).movedim(-1, 0)
        assert torch.allclose(so3_left_jacobian(x[3:]), vee(dR @ R.T).T, atol=1e-12)
        assert torch.allclose(so3_right_jacobian(x[3:]), vee(R.T @ dR).T, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_se3_jacobian_inverses_match_autodiff_of_log(kind):
    """J_l^-1 = d log(exp(d) exp(xi)) / dd and J_r^-1 = d log(exp(xi) exp(d)) / dd at d = 0."""
    zero = torch.zeros(6, **F64)
    for x in twists(kind, n=40):
        T = se3_exp(x)
        left = jacfwd(lambda d, T=T: se3_log(se3_exp(d) @ T))(zero)
        right = jacfwd(lambda d, T=T: se3_log(T @ se3_exp(d)))(zero)
        assert torch.allclose(se3_left_jacobian_inverse(x), left, atol=1e-12)
        assert torch.allclose(se3_right_jacobian_inverse(x), right, atol=1e-12)


@pytest.mark.parametrize("kind", ["tiny", "switch", "switch_se3"])
def test_se3_jacobians_equal_their_series_in_ad(kind):
    """J_l = sum ad^n / (n+1)!, J_l^-1 = sum B_n ad^n / n! (Bernoulli numbers), J_r = J_l(-xi)."""
    xi = twists(kind, n=20)
    ad = se3_ad(xi)
    term, series = torch.eye(6, **F64).expand(20, 6, 6), torch.zeros(20, 6, 6, **F64)  # term = ad^n / (n+1)!
    for n in range(40):
        series = series + term
        term = term @ ad / (n + 2)
    assert torch.allclose(se3_left_jacobian(xi), series, atol=1e-14)
    bernoulli = {0: 1.0, 1: -0.5, 2: 1 / 6, 4: -1 / 30, 6: 1 / 42, 8: -1 / 30, 10: 5 / 66, 12: -691 / 2730,
                 14: 7 / 6, 16: -3617 / 510, 18: 43867 / 798, 20: -174611 / 330}
    if kind == "tiny":  # the Bernoulli series converges for |xi| < 2 pi but slowly near 1: check it where it is short
        ad_power = [torch.eye(6, **F64).expand(20, 6, 6)]
        for _ in range(20):
            ad_power.append(ad_power[-1] @ ad)
        inverse = sum(b * ad_power[n] / math.factorial(n) for n, b in bernoulli.items())
        assert torch.allclose(se3_left_jacobian_inverse(xi), inverse, atol=1e-14)
    assert torch.allclose(se3_right_jacobian(xi), se3_left_jacobian(-xi), atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_jacobian_times_its_inverse_is_the_identity(kind, dtype):
    xi = twists(kind).to(dtype)
    tol = {torch.float32: 2e-6, torch.float64: 1e-13}[dtype]
    for J, J_inv, x in ((so3_left_jacobian, so3_left_jacobian_inverse, xi[:, 3:]),
                        (so3_right_jacobian, so3_right_jacobian_inverse, xi[:, 3:]),
                        (se3_left_jacobian, se3_left_jacobian_inverse, xi),
                        (se3_right_jacobian, se3_right_jacobian_inverse, xi)):
        product = J(x) @ J_inv(x)
        assert product.dtype == dtype
        assert (product - torch.eye(x.shape[-1], dtype=dtype)).abs().max() < tol


@pytest.mark.parametrize("kind", KINDS)
def test_float32_jacobians_match_float64(kind):
    """float32 stays within ~20 ulp of the float64 value at the same (rounded) input, across both switches."""
    xi = twists(kind).float()
    for fn, x in ((so3_left_jacobian, xi[:, 3:]), (so3_right_jacobian_inverse, xi[:, 3:]), (se3_left_jacobian, xi),
                  (se3_left_jacobian_inverse, xi), (se3_right_jacobian, xi), (se3_right_jacobian_inverse, xi)):
        assert (fn(x).double() - fn(x.double())).abs().max() < 2e-6


def test_se3_adjoint_relates_left_and_right_jacobians():
    xi = twists("random", n=50)
    assert torch.allclose(se3_left_jacobian(xi), se3_adjoint(se3_exp(xi)) @ se3_right_jacobian(xi), atol=1e-12)


@pytest.mark.parametrize("kind", ["random", "tiny", "near_pi", "switch", "switch_se3"])
def test_numpy_flavour_equals_torch(kind):
    xi = twists(kind, n=100)
    for x in xi:
        x_np, phi, phi_np = x.numpy(), x[3:], x[3:].numpy()
        T = se3_exp(x)
        np.testing.assert_allclose(so3_exp_np(phi_np), so3_exp(phi).numpy(), atol=1e-14)
        np.testing.assert_allclose(so3_log_np(T[:3, :3].numpy()), so3_log(T[:3, :3]).numpy(), atol=1e-12)
        np.testing.assert_allclose(so3_left_jacobian_np(phi_np), so3_left_jacobian(phi).numpy(), atol=1e-15)
        np.testing.assert_allclose(so3_left_jacobian_inverse_np(phi_np), so3_left_jacobian_inverse(phi).numpy(),
                                   atol=1e-15)
        np.testing.assert_allclose(se3_exp_np(x_np), T.numpy(), atol=1e-14)
        np.testing.assert_allclose(se3_log_np(T.numpy()), se3_log(T).numpy(), atol=1e-11)
        np.testing.assert_allclose(se3_inverse_np(T.numpy()), se3_inverse(T).numpy(), atol=0)
        np.testing.assert_allclose(se3_left_jacobian_inverse_np(x_np), se3_left_jacobian_inverse(x).numpy(),
                                   atol=1e-14)


@pytest.mark.parametrize("kind", ["random", "tiny", "switch", "switch_se3"])
def test_numpy_exp_log_round_trip(kind):
    for x in twists(kind, n=100).numpy():
        np.testing.assert_allclose(se3_log_np(se3_exp_np(x)), x, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_jacobian_gradients_are_finite_at_the_identity(dtype):
    xi = torch.zeros(6, dtype=dtype, requires_grad=True)
    for fn in (se3_left_jacobian, se3_left_jacobian_inverse, se3_right_jacobian, se3_right_jacobian_inverse,
               lambda x: so3_right_jacobian(x[3:]), lambda x: so3_left_jacobian_inverse(x[3:])):
        (grad,) = torch.autograd.grad(fn(xi).sum(), xi)
        assert torch.isfinite(grad).all()


# ---------------------------------------------------------------- CUDA
@CUDA
def test_lie_on_cuda_matches_cpu():
    xi = torch.randn(100, 6, dtype=torch.float64)
    T = se3_exp(xi.cuda())
    assert T.device.type == "cuda"
    assert torch.allclose(T.cpu(), se3_exp(xi), atol=1e-12)
    assert torch.allclose(se3_log(T).cpu(), se3_log(se3_exp(xi)), atol=1e-10)




@CUDA
@pytest.mark.parametrize("dtype", DTYPES)
def test_jacobians_on_cuda_match_cpu(dtype):
    xi = torch.cat([twists(kind, n=100) for kind in KINDS]).to(dtype)
    tol = {torch.float32: 1e-5, torch.float64: 1e-12}[dtype]
    for fn, x in ((so3_left_jacobian, xi[:, 3:]), (so3_right_jacobian_inverse, xi[:, 3:]), (se3_left_jacobian, xi),
                  (se3_left_jacobian_inverse, xi), (se3_right_jacobian, xi), (se3_right_jacobian_inverse, xi)):
        got = fn(x.cuda())
        assert got.device.type == "cuda" and got.dtype == dtype
        assert (got.cpu() - fn(x)).abs().max() < tol
