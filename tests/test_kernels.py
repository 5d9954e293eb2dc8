"""kernels/kmeans.py: chunked assignment vs the un-chunked jnp reference and a float64 numpy brute force."""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shed_jax.kernels import kmeans as kernel


def _data(n_rows, n_clusters, n_features=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_rows, n_features)).astype(np.float32)
    centroids = rng.standard_normal((n_clusters, n_features)).astype(np.float32)
    return x, centroids


def _brute_force_float64(x, centroids):
    """(N,) labels, (N,) squared distances, (N,) gap between the two nearest centroids; float64 loops."""
    x64, c64 = x.astype(np.float64), centroids.astype(np.float64)
    sq = np.stack([np.sum((x64 - c) ** 2, axis=1) for c in c64], axis=1)  # (N, K), one centroid at a time
    order = np.sort(sq, axis=1)
    gap = order[:, 1] - order[:, 0] if sq.shape[1] > 1 else np.full(len(x), np.inf)
    return np.argmin(sq, axis=1), np.min(sq, axis=1), gap


@pytest.mark.parametrize(
    "n_rows, n_clusters, chunk_size",
    [
        (1000, 37, 100),  # N multiple of chunk
        (1000, 37, 128),  # N not a multiple: clamped, overlapping last chunk
        (1001, 5, 1000),  # last chunk overlaps all but one row
        (257, 64, 1),  # one row per chunk
        (50, 8, 4096),  # chunk larger than N -> a single block
        (1, 3, 16),  # single row
        (19, 1, 4),  # single centroid
    ],
)
def test_assign_matches_reference(n_rows, n_clusters, chunk_size):
    x, centroids = _data(n_rows, n_clusters)
    labels, sq_dist = kernel.assign(jnp.asarray(x), jnp.asarray(centroids), chunk_size=chunk_size)
    ref_labels, ref_sq_dist = kernel.assign_reference(jnp.asarray(x), jnp.asarray(centroids))
    assert labels.shape == (n_rows,) and labels.dtype == jnp.int32
    assert sq_dist.shape == (n_rows,) and sq_dist.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(labels), np.asarray(ref_labels))
    np.testing.assert_allclose(np.asarray(sq_dist), np.asarray(ref_sq_dist), rtol=1e-6, atol=1e-6)
    only_labels = kernel.assign_labels(jnp.asarray(x), jnp.asarray(centroids), chunk_size=chunk_size)
    np.testing.assert_array_equal(np.asarray(only_labels), np.asarray(ref_labels))


def test_assign_matches_float64_brute_force():
    x, centroids = _data(3000, 50, n_features=64, seed=1)
    labels, sq_dist = kernel.assign(jnp.asarray(x), jnp.asarray(centroids), chunk_size=256)
    ref_labels, ref_sq_dist, gap = _brute_force_float64(x, centroids)
    # float32 matmul-form comparisons can only disagree with float64 when the two nearest are within rounding.
    clear = gap > 1e-3 * ref_sq_dist.max()
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(np.asarray(labels)[clear], ref_labels[clear])
    np.testing.assert_allclose(np.asarray(sq_dist)[clear], ref_sq_dist[clear], rtol=1e-5)


def test_ties_go_to_lowest_centroid_index():
    x = jnp.asarray([[0.0, 0.0], [2.0, 0.0], [1.0, 0.0]], jnp.float32)
    centroids = jnp.asarray([[5.0, 5.0], [1.0, 0.0], [1.0, 0.0], [0.0, 0.0]], jnp.float32)
    labels, sq_dist = kernel.assign(x, centroids, chunk_size=2)
    # row 0 is at distance 0 from centroid 3 only; rows 1 and 2 tie between centroids 1 and 2.
    assert np.asarray(labels).tolist() == [3, 1, 1]
    np.testing.assert_allclose(np.asarray(sq_dist), [0.0, 1.0, 0.0])


def test_assign_jits_without_retracing_and_keeps_memory_chunked():
    n_rows, n_clusters, n_features = 4000, 300, 32
    traces = []

    def traced(x, centroids):
        traces.append(None)
        return kernel.assign(x, centroids, chunk_size=64)

    jitted = jax.jit(traced)
    for seed in range(3):
        x, centroids = _data(n_rows, n_clusters, n_features, seed=seed)
        labels, _ = jitted(jnp.asarray(x), jnp.asarray(centroids))
        np.testing.assert_array_equal(
            np.asarray(labels), np.asarray(kernel.assign_reference(jnp.asarray(x), jnp.asarray(centroids))[0])
        )
    assert len(traces) == 1

    shapes = (jax.ShapeDtypeStruct((n_rows, n_features), jnp.float32),
              jax.ShapeDtypeStruct((n_clusters, n_features), jnp.float32))
    full_matrix_bytes = n_rows * n_clusters * 4
    chunked = jax.jit(partial(kernel.assign, chunk_size=64)).lower(*shapes).compile().memory_analysis()
    reference = jax.jit(kernel.assign_reference).lower(*shapes).compile().memory_analysis()
    if chunked is None or reference is None:
        pytest.skip("backend reports no memory analysis")
    assert reference.temp_size_in_bytes >= full_matrix_bytes  # the reference does build (N, K)
    assert chunked.temp_size_in_bytes < full_matrix_bytes / 10  # the kernel never does


def test_assign_rejects_bad_input():
    x, centroids = _data(10, 3)
    with pytest.raises(ValueError, match="chunk_size"):
        kernel.assign(jnp.asarray(x), jnp.asarray(centroids), chunk_size=0)
    with pytest.raises(ValueError, match="chunk_size"):
        kernel.assign_labels(jnp.asarray(x), jnp.asarray(centroids), chunk_size=2.5)
    with pytest.raises(ValueError, match="features"):
        kernel.assign(jnp.asarray(x), jnp.asarray(centroids[:, :5]), chunk_size=4)
    with pytest.raises(ValueError, match="2-D"):
        kernel.assign(jnp.asarray(x[0]), jnp.asarray(centroids), chunk_size=4)
    with pytest.raises(ValueError, match="unknown assign implementation"):
        kernel.assign(jnp.asarray(x), jnp.asarray(centroids), chunk_size=4, impl="pallas")
