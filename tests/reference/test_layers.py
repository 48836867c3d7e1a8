"""Hand-written backward passes of reference/layers.py against central finite differences (float64).

Every layer, every input and parameter: the analytic gradient of the scalar sum(out * R), R a fixed
random array, must match central differences element by element within TOL["fd64"] (norm-wise
relative error). Forwards are checked against independent routes (naive loops, direct formulas).
Backward must leave dout and the cache untouched.
"""
import math

import numpy as np
import pytest
from gradcheck import numeric_grad, rel_error, same, snapshot
from tolerances import TOL

from reference import layers as L
from reference.errors import InputError


def fd_check(forward, backward, inputs, rng):
    """forward(*inputs) -> (out, cache); backward(dout, cache) -> gradients in the order of inputs.

    Returns the worst relative error over all inputs (all float64, perturbed in place).
    """
    out, cache = forward(*inputs)
    R = rng.standard_normal(out.shape)
    grads = backward(R, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    f = lambda: float(np.sum(forward(*inputs)[0] * R))
    return max(rel_error(g, numeric_grad(f, x)) for g, x in zip(grads, inputs) if g is not None)


def assert_backward_mutates_nothing(forward, backward, inputs, rng):
    out, cache = forward(*inputs)
    dout = rng.standard_normal(out.shape)
    cache0, dout0 = snapshot(cache), dout.copy()
    backward(dout, cache)
    assert np.array_equal(dout, dout0), "backward wrote into dout"
    assert same(cache, cache0), "backward wrote into the cache"


def naive_conv(x, w, b, stride, padding):
    """Direct loops over output pixels (NHWC x, OIHW w): the definition of F.conv2d."""
    N, H, W, C = x.shape
    O, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    Ho, Wo = (H + 2 * padding - kh) // stride + 1, (W + 2 * padding - kw) // stride + 1
    out = np.zeros((N, Ho, Wo, O))
    for y in range(Ho):
        for z in range(Wo):
            patch = xp[:, y * stride:y * stride + kh, z * stride:z * stride + kw, :]  # (N, kh, kw, C)
            out[:, y, z, :] = np.einsum("nijc,ocij->no", patch, w) + b
    return out


# (k, stride, padding): 3x3 and 1x1, strides 1 and 2, paddings 0/1/2 — every code path of conv2d
CONV_CASES = [(3, 1, 1), (3, 2, 1), (3, 1, 0), (3, 2, 0), (3, 1, 2), (1, 1, 0), (1, 2, 0), (1, 1, 1)]


@pytest.mark.parametrize("k,stride,padding", CONV_CASES)
def test_B1_conv_forward_matches_naive_loops(k, stride, padding, rng):
    x, w, b = rng.standard_normal((2, 7, 5, 3)), rng.standard_normal((4, 3, k, k)), rng.standard_normal(4)
    out, _ = L.conv2d_forward(x, w, b, stride, padding)
    assert rel_error(out, naive_conv(x, w, b, stride, padding)) <= TOL["exact64"]


@pytest.mark.parametrize("k,stride,padding", CONV_CASES)
def test_B2_conv_backward_matches_finite_differences(k, stride, padding, rng):
    x, w, b = rng.standard_normal((2, 7, 5, 3)), rng.standard_normal((4, 3, k, k)), rng.standard_normal(4)
    fwd = lambda x, w, b: L.conv2d_forward(x, w, b, stride, padding)
    assert fd_check(fwd, L.conv2d_backward, [x, w, b], rng) <= TOL["fd64"]
    assert_backward_mutates_nothing(fwd, L.conv2d_backward, [x, w, b], rng)


@pytest.mark.parametrize("k,padding", [(3, 0), (3, 1), (3, 2), (5, 2), (2, 1)])
def test_B10_stride1_conv_gradients_equal_the_im2col_products_of_B2(k, padding, rng):
    """(B10) The stride-1 backward reads only dout's windows; (B2) as written, with loops over the
    kernel offsets (dw = X_col^T dout, dx = col2im(dout W_mat^T)), must give the same dx and dw."""
    x, w, b = rng.standard_normal((2, 6, 5, 3)), rng.standard_normal((4, 3, k, k)), rng.standard_normal(4)
    out, cache = L.conv2d_forward(x, w, b, 1, padding)
    dout = rng.standard_normal(out.shape)
    dx, dw, _ = L.conv2d_backward(dout, cache)
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    Ho, Wo = out.shape[1:3]
    dw_b2, dxp_b2 = np.zeros_like(w), np.zeros_like(xp)
    for i in range(k):
        for j in range(k):
            window = xp[:, i:i + Ho, j:j + Wo, :]  # x_p[n, y + i, x + j, c] for every output pixel
            dw_b2[:, :, i, j] = np.einsum("nyxo,nyxc->oc", dout, window)
            dxp_b2[:, i:i + Ho, j:j + Wo, :] += np.einsum("nyxo,oc->nyxc", dout, w[:, :, i, j])
    dx_b2 = dxp_b2[:, padding:padding + x.shape[1], padding:padding + x.shape[2]]
    assert rel_error(dw, dw_b2) <= TOL["exact64"] and rel_error(dx, dx_b2) <= TOL["exact64"]


@pytest.mark.parametrize("k,stride,padding", CONV_CASES)
def test_B2_conv_without_input_grad_gives_the_same_weight_gradients(k, stride, padding, rng):
    """input_grad=False takes dw from x's windows (B2), not dout's (B10): the same numbers, dx None."""
    x, w, b = rng.standard_normal((2, 7, 5, 3)), rng.standard_normal((4, 3, k, k)), rng.standard_normal(4)
    out, cache = L.conv2d_forward(x, w, b, stride, padding)
    dout = rng.standard_normal(out.shape)
    _, dw, db = L.conv2d_backward(dout, cache)
    none, dw2, db2 = L.conv2d_backward(dout, cache, input_grad=False)
    assert none is None and rel_error(dw2, dw) <= TOL["exact64"] and rel_error(db2, db) <= TOL["exact64"]


def test_B2_conv_without_bias_returns_no_bias_gradient(rng):
    x, w = rng.standard_normal((1, 4, 4, 2)), rng.standard_normal((3, 2, 3, 3))
    out, cache = L.conv2d_forward(x, w, None, 1, 1)
    dx, dw, db = L.conv2d_backward(np.ones_like(out), cache)
    assert db is None and dx.shape == x.shape and dw.shape == w.shape


def test_B1_conv_rejects_channel_mismatch(rng):
    with pytest.raises(InputError, match="C=2"):
        L.conv2d_forward(rng.standard_normal((1, 4, 4, 3)), rng.standard_normal((3, 2, 3, 3)), None)


def naive_group_norm(x, gamma, beta, groups):
    """NCHW-style definition: normalise each (sample, group) block with np.mean / np.var."""
    N, H, W, C = x.shape
    blocks = x.transpose(0, 3, 1, 2).reshape(N, groups, -1)
    xhat = (blocks - blocks.mean(-1, keepdims=True)) / np.sqrt(blocks.var(-1, keepdims=True) + L.GN_EPS)
    return xhat.reshape(N, C, H, W).transpose(0, 2, 3, 1) * gamma + beta


@pytest.mark.parametrize("groups", [1, 3, 6])
def test_B3_group_norm_forward_matches_definition(groups, rng):
    x = rng.standard_normal((2, 3, 5, 6)) * 3 + 2
    gamma, beta = rng.standard_normal(6), rng.standard_normal(6)
    out, _ = L.group_norm_forward(x, gamma, beta, groups)
    assert rel_error(out, naive_group_norm(x, gamma, beta, groups)) <= TOL["exact64"]


@pytest.mark.parametrize("groups", [1, 3, 6])
def test_B3_group_norm_backward_matches_finite_differences(groups, rng):
    x, gamma, beta = rng.standard_normal((2, 3, 5, 6)) + 0.5, rng.standard_normal(6), rng.standard_normal(6)
    fwd = lambda x, g, b: L.group_norm_forward(x, g, b, groups)
    assert fd_check(fwd, L.group_norm_backward, [x, gamma, beta], rng) <= TOL["fd64"]
    assert_backward_mutates_nothing(fwd, L.group_norm_backward, [x, gamma, beta], rng)


@pytest.mark.parametrize("offset", [0.0, 100.0])
def test_B3_group_norm_float32_matches_float64_even_far_from_zero_mean(offset, rng):
    """Two-pass statistics: an offset of 100 standard deviations costs float32 no accuracy beyond TOL["op32"]."""
    x = (rng.standard_normal((4, 8, 8, 16)) + offset).astype(np.float32)
    g, b, d = rng.standard_normal(16), rng.standard_normal(16), rng.standard_normal(x.shape)
    out32, c32 = L.group_norm_forward(x, g.astype(np.float32), b.astype(np.float32), 4)
    out64, c64 = L.group_norm_forward(x.astype(np.float64), g, b, 4)
    assert out32.dtype == np.float32 and rel_error(out32, out64) <= TOL["op32"]
    grads32, grads64 = L.group_norm_backward(d.astype(np.float32), c32), L.group_norm_backward(d, c64)
    assert all(rel_error(a, b) <= TOL["op32"] for a, b in zip(grads32, grads64))


def test_B3_group_norm_rejects_indivisible_channels(rng):
    with pytest.raises(InputError, match="divisible"):
        L.group_norm_forward(rng.standard_normal((1, 2, 2, 6)), np.ones(6), np.zeros(6), 4)


def test_B4_silu_forward_matches_definition_and_never_overflows(rng):
    x = np.concatenate([rng.standard_normal(50) * 5, [-1e4, -800.0, 0.0, 800.0, 1e4]])
    out, _ = L.silu_forward(x)  # the suite turns RuntimeWarnings (overflow) into errors
    with np.errstate(over="ignore"):
        direct = x / (1.0 + np.exp(-x))
    assert rel_error(out, direct) <= TOL["exact64"]
    out32, _ = L.silu_forward(np.array([-1e4, -100.0, 100.0], np.float32))
    assert out32.dtype == np.float32 and np.all(np.isfinite(out32))


def test_B4_silu_backward_matches_finite_differences(rng):
    x = rng.standard_normal((3, 4, 5)) * 3
    assert fd_check(L.silu_forward, L.silu_backward, [x], rng) <= TOL["fd64"]
    assert_backward_mutates_nothing(L.silu_forward, L.silu_backward, [x], rng)


def test_B7_linear_backward_matches_finite_differences(rng):
    x, w, b = rng.standard_normal((4, 5)), rng.standard_normal((3, 5)), rng.standard_normal(3)
    out, _ = L.linear_forward(x, w, b)
    assert rel_error(out, np.einsum("ni,oi->no", x, w) + b) <= TOL["exact64"]
    assert fd_check(L.linear_forward, L.linear_backward, [x, w, b], rng) <= TOL["fd64"]
    assert_backward_mutates_nothing(L.linear_forward, L.linear_backward, [x, w, b], rng)


def test_B9_upsample_forward_matches_repeat_and_backward_matches_finite_differences(rng):
    x = rng.standard_normal((2, 3, 5, 4))
    out, _ = L.upsample_nearest2x_forward(x)
    assert np.array_equal(out, x.repeat(2, axis=1).repeat(2, axis=2))
    assert fd_check(L.upsample_nearest2x_forward, L.upsample_nearest2x_backward, [x], rng) <= TOL["fd64"]
    assert_backward_mutates_nothing(L.upsample_nearest2x_forward, L.upsample_nearest2x_backward, [x], rng)


def naive_attention(q, k, v):
    """Row by row: a_i = sum_j softmax_j(q_i . k_j / sqrt(C)) v_j."""
    out = np.zeros_like(q)
    for n in range(q.shape[0]):
        for i in range(q.shape[1]):
            e = np.exp(k[n] @ q[n, i] / math.sqrt(q.shape[2]))
            out[n, i] = (e / e.sum()) @ v[n]
    return out


def test_B5_attention_forward_matches_naive_softmax_and_backward_matches_finite_differences(rng):
    q, k, v = (rng.standard_normal((2, 6, 4)) for _ in range(3))
    out, _ = L.attention_forward(q, k, v)
    assert rel_error(out, naive_attention(q, k, v)) <= TOL["exact64"]
    assert fd_check(L.attention_forward, L.attention_backward, [q, k, v], rng) <= TOL["fd64"]
    assert_backward_mutates_nothing(L.attention_forward, L.attention_backward, [q, k, v], rng)


def test_B5_attention_accepts_strided_views_of_one_qkv_array(rng):
    qkv = rng.standard_normal((2, 6, 12))
    a, _ = L.attention_forward(qkv[..., :4], qkv[..., 4:8], qkv[..., 8:])
    assert rel_error(a, naive_attention(qkv[..., :4], qkv[..., 4:8], qkv[..., 8:])) <= TOL["exact64"]


def test_B6_time_embedding_frequencies_and_order():
    """Ho et al.'s layout: [sin(t f_0..f_{h-1}), cos(...)], f_0 = 1, f_{h-1} = 1/10000, geometric."""
    t, dim = np.array([0, 1, 7, 999]), 16
    half = dim // 2
    emb = L.timestep_embedding(t, dim)
    assert emb.shape == (4, dim) and emb.dtype == np.float64
    # f_0 = 1: the first column is sin(t), column `half` is cos(t)
    assert rel_error(emb[:, 0], np.sin(t)) <= TOL["exact64"]
    assert rel_error(emb[:, half], np.cos(t)) <= TOL["exact64"]
    # f_{half-1} = 1/10000
    assert rel_error(emb[:, half - 1], np.sin(t / 10000.0)) <= TOL["exact64"]
    # sin^2 + cos^2 = 1 pairs up column i with column half + i
    assert np.allclose(emb[:, :half] ** 2 + emb[:, half:] ** 2, 1.0, rtol=0, atol=TOL["exact64"])
    # frequencies are geometric: recover f_i = arcsin(emb[t=1]) and check the constant ratio 10000^(-1/(half-1))
    f = np.arcsin(emb[1, :half])
    assert np.allclose(f[1:] / f[:-1], 10000.0 ** (-1.0 / (half - 1)), rtol=TOL["exact64"], atol=0)
    # t = 0 embeds to [0, ..., 0, 1, ..., 1]
    assert np.array_equal(emb[0], np.r_[np.zeros(half), np.ones(half)])


def test_B6_time_embedding_rejects_odd_or_tiny_dim():
    with pytest.raises(InputError, match="even"):
        L.timestep_embedding(np.arange(3), 7)
    with pytest.raises(InputError, match=">= 4"):
        L.timestep_embedding(np.arange(3), 2)


def test_B1_B2_float32_stays_float32(rng):
    x = rng.standard_normal((2, 6, 6, 4)).astype(np.float32)
    w, b = rng.standard_normal((8, 4, 3, 3)).astype(np.float32), np.zeros(8, np.float32)
    out, cache = L.conv2d_forward(x, w, b, 2, 1)
    grads = L.conv2d_backward(np.ones_like(out), cache)
    h, c = L.group_norm_forward(out, np.ones(8, np.float32), np.zeros(8, np.float32), 4)
    assert out.dtype == h.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)
    assert all(g.dtype == np.float32 for g in L.group_norm_backward(h, c))


@pytest.mark.parametrize("pads", [(0, 1, 0, 1), (1, 0, 2, 0), (2, 2, 1, 1)])
def test_B11_zero_padding_is_np_pad_and_its_backward_crops_as_finite_differences_say(pads, rng):
    top, bottom, left, right = pads
    x = rng.standard_normal((2, 5, 4, 3))
    out, _ = L.pad_forward(x, *pads)
    assert np.array_equal(out, np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0))))
    fwd = lambda x: L.pad_forward(x, *pads)
    assert fd_check(fwd, L.pad_backward, [x], rng) <= TOL["fd64"]
    assert_backward_mutates_nothing(fwd, L.pad_backward, [x], rng)
    dout = rng.standard_normal(out.shape)
    dx = L.pad_backward(dout, fwd(x)[1])
    assert dx.flags.c_contiguous and not np.shares_memory(dx, dout)  # fresh: a later step may write into it


def _same_conv(x, w, b):
    """(B11) then (B1): pad one zero row below and one zero column right, then a stride-2 conv with padding 0."""
    xp, pad_cache = L.pad_forward(x, 0, 1, 0, 1)
    out, conv_cache = L.conv2d_forward(xp, w, b, 2, 0)
    return out, (pad_cache, conv_cache)


def _same_conv_backward(dout, cache):
    dxp, dw, db = L.conv2d_backward(dout, cache[1])
    return L.pad_backward(dxp, cache[0]), dw, db


def test_B11_same_downsampling_reads_rows_2y_to_2y_plus_2_and_its_gradients_match_finite_differences(rng):
    """TensorFlow's SAME for a stride-2 3x3 conv on even H: output row y reads input rows 2y, 2y+1, 2y+2 (the
    last one a zero past the edge), where the symmetric padding reads 2y-1, 2y, 2y+1: loops by that definition,
    and the composite backward (B2, then B11's crop) against central differences."""
    x, w, b = rng.standard_normal((2, 6, 8, 3)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    out, _ = _same_conv(x, w, b)
    xz = np.zeros((2, 7, 9, 3))
    xz[:, :6, :8] = x  # x with zeros past its bottom and right edges
    want = np.zeros((2, 3, 4, 4))
    for y in range(3):
        for z in range(4):
            want[:, y, z] = np.einsum("nijc,ocij->no", xz[:, 2 * y:2 * y + 3, 2 * z:2 * z + 3], w) + b
    assert rel_error(out, want) <= TOL["exact64"]
    assert rel_error(out, L.conv2d_forward(x, w, b, 2, 1)[0]) > 0.1  # another function than the symmetric one
    assert fd_check(_same_conv, _same_conv_backward, [x, w, b], rng) <= TOL["fd64"]
    assert_backward_mutates_nothing(_same_conv, _same_conv_backward, [x, w, b], rng)


def test_B12_embedding_gradient_is_a_scatter_add_that_sums_repeated_labels_as_finite_differences_say(rng):
    """A table lookup's backward: row k gets the sum of dout over the examples labelled k. Labels repeat in a
    batch (here 3 of 7 examples share row 2 and row 0 is never read), so dw[y] = dout, which keeps one of
    the repeats, would be wrong; the one-hot product onehot(y)^T dout is the independent route."""
    w, y = rng.standard_normal((5, 4)), np.array([2, 4, 2, 1, 2, 4, 3])
    out, _ = L.embedding_forward(y, w)
    assert np.array_equal(out, w[y]) and not np.shares_memory(out, w)
    dout = rng.standard_normal(out.shape)
    dw = L.embedding_backward(dout, L.embedding_forward(y, w)[1])
    assert rel_error(dw, np.eye(5)[y].T @ dout) <= TOL["exact64"]
    assert np.all(dw[0] == 0) and rel_error(dw[2], dout[[0, 2, 4]].sum(axis=0)) <= TOL["exact64"]
    assert fd_check(lambda w: L.embedding_forward(y, w), L.embedding_backward, [w], rng) <= TOL["fd64"]
    assert_backward_mutates_nothing(lambda w: L.embedding_forward(y, w), L.embedding_backward, [w], rng)
    wrong = np.zeros_like(w)
    wrong[y] = dout  # the assignment a scatter-add is not: the last repeat wins
    assert rel_error(wrong, dw) > 0.1
