"""shed_jax.cluster: k-means vs scikit-learn (same initial centroids), k-means++, re-seeding, proxies."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shed_jax import cluster

# Most tests share one data shape (1200, 16), K = 12 and this chunk size, so the jitted loop compiles once.
CHUNK = 100

# scikit-learn is a test dependency (the dev extra): the reference implementation, imported plainly so that a
# broken install fails these tests instead of skipping the ones that never use it.
from sklearn import cluster as sklearn_cluster  # noqa: E402
from sklearn.datasets import make_blobs  # noqa: E402
from sklearn.metrics import adjusted_rand_score  # noqa: E402


def _gaussian_mixture(n_rows=1200, n_features=16, n_components=12, seed=0):
    """Overlapping Gaussian mixture, rows L2-normalised (like sentence embeddings)."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((n_components, n_features))
    x = means[rng.integers(0, n_components, n_rows)] + 0.6 * rng.standard_normal((n_rows, n_features))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _sklearn_lloyd(x, init, max_iter, tol):
    return sklearn_cluster.KMeans(
        n_clusters=len(init), init=init, n_init=1, max_iter=max_iter, tol=tol, algorithm="lloyd"
    ).fit(x)


def _assert_matches_sklearn(ours, theirs):
    np.testing.assert_array_equal(ours.labels, theirs.labels_)
    np.testing.assert_allclose(ours.centroids, theirs.cluster_centers_, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ours.inertia, theirs.inertia_, rtol=1e-5)
    assert ours.n_iter == theirs.n_iter_


@pytest.mark.parametrize("max_iter, tol", [(300, 0.0), (5, 0.0), (300, 1e-3)])
def test_matches_sklearn_lloyd_from_same_init(max_iter, tol):
    x = _gaussian_mixture()
    rng = np.random.default_rng(1)
    init = x[rng.choice(len(x), 12, replace=False)]
    ours = cluster.kmeans(x, 12, max_iter=max_iter, tol=tol, init=init, chunk_size=CHUNK)
    theirs = _sklearn_lloyd(x, init, max_iter, tol)
    _assert_matches_sklearn(ours, theirs)
    assert ours.labels.dtype == np.int32 and ours.centroids.dtype == np.float32
    if ours.n_iter < max_iter:
        assert ours.converged


def test_result_is_self_consistent_in_float64():
    x = _gaussian_mixture(seed=3)
    result = cluster.kmeans(x, 12, seed=5, max_iter=3, tol=0.0, chunk_size=CHUNK)
    x64, c64 = x.astype(np.float64), result.centroids.astype(np.float64)
    sq = np.stack([np.sum((x64 - c) ** 2, axis=1) for c in c64], axis=1)
    np.testing.assert_array_equal(result.labels, np.argmin(sq, axis=1))  # labels belong to final centroids
    np.testing.assert_allclose(result.inertia, np.min(sq, axis=1).sum(), rtol=1e-5)
    assert result.n_iter == 3 and not result.converged


def test_chunk_size_does_not_change_the_result():
    x = _gaussian_mixture(seed=4)
    a = cluster.kmeans(x, 12, seed=2, chunk_size=7)
    b = cluster.kmeans(x, 12, seed=2, chunk_size=1200)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.centroids, b.centroids, atol=1e-6)


@pytest.mark.parametrize("n_local_trials", [1, 4])
def test_recovers_well_separated_blobs(n_local_trials):
    x, truth = make_blobs(n_samples=600, centers=8, n_features=5, cluster_std=0.5, center_box=(-60, 60),
                          random_state=0)
    for seed in range(3):
        result = cluster.kmeans(x.astype(np.float32), 8, seed=seed, n_local_trials=n_local_trials)
        assert adjusted_rand_score(truth, result.labels) == 1.0
        assert result.converged


def test_deterministic_for_a_seed_and_seed_matters():
    x = _gaussian_mixture(seed=6)
    a = cluster.kmeans(x, 12, seed=11, max_iter=4, chunk_size=CHUNK)
    b = cluster.kmeans(x, 12, seed=11, max_iter=4, chunk_size=CHUNK)
    c = cluster.kmeans(x, 12, seed=12, max_iter=4, chunk_size=CHUNK)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.inertia == b.inertia
    assert not np.array_equal(a.centroids, c.centroids)


def test_kmeans_plusplus_draws_proportional_to_squared_distance():
    # Points 0, 1, 3, 7 on a line, K = 2. P(second = j | first = i) = (x_j - x_i)^2 / sum_l (x_l - x_i)^2.
    points = np.array([0.0, 1.0, 3.0, 7.0])
    x = jnp.asarray(points[:, None], jnp.float32)
    n_draws = 4000
    keys = jax.random.split(jax.random.key(0), n_draws)
    chosen = jax.vmap(lambda key: cluster._kmeans_plusplus_impl(key, x, 2, 1))(keys)
    chosen = np.asarray(chosen)
    sq = (points[:, None] - points[None, :]) ** 2
    expected = 0.25 * sq / sq.sum(axis=1, keepdims=True)  # (first, second)
    observed = np.zeros((4, 4))
    np.add.at(observed, (chosen[:, 0], chosen[:, 1]), 1.0 / n_draws)
    stderr = np.sqrt(expected * (1 - expected) / n_draws)
    assert np.all(np.abs(observed - expected) <= 5 * stderr + 1e-12)  # 5 sigma: fixed key, not retried
    assert np.all(chosen[:, 0] != chosen[:, 1])


def test_empty_cluster_is_reseeded_like_sklearn():
    x = _gaussian_mixture(seed=7)
    rng = np.random.default_rng(2)
    init = x[rng.choice(len(x), 12, replace=False)].copy()
    init[4] = 100.0  # no row is near centroid 4: it is empty after the first assignment
    ours = cluster.kmeans(x, 12, max_iter=100, tol=0.0, init=init, chunk_size=CHUNK)
    theirs = _sklearn_lloyd(x, init, 100, 0.0)
    _assert_matches_sklearn(ours, theirs)
    assert np.abs(ours.centroids[4]).max() <= 1.0  # moved onto the data
    assert np.bincount(ours.labels, minlength=12).min() > 0
    # One iteration: centroid 4 becomes exactly the row farthest from its first-assignment centroid.
    one = cluster.kmeans(x, 12, max_iter=1, tol=0.0, init=init, chunk_size=CHUNK)
    x64, init64 = x.astype(np.float64), init.astype(np.float64)
    first_labels = np.argmin(((x64[:, None, :] - init64[None]) ** 2).sum(-1), axis=1)
    farthest = np.argmax(((x64 - init64[first_labels]) ** 2).sum(-1))
    np.testing.assert_allclose(one.centroids[4], x[farthest], atol=1e-6)


def test_several_empty_clusters_are_all_reseeded():
    x = _gaussian_mixture(seed=8)
    init = x[:12].copy()
    init[[1, 3, 5]] = [[50.0] * 16, [-50.0] * 16, [80.0] * 16]
    one = cluster.kmeans(x, 12, max_iter=1, tol=0.0, init=init, chunk_size=CHUNK)
    x64 = x.astype(np.float64)
    labels0 = np.argmin(((x64[:, None, :] - init.astype(np.float64)[None]) ** 2).sum(-1), axis=1)
    farthest = np.argsort(-((x64 - init[labels0]) ** 2).sum(-1), kind="stable")[:3]
    # The three farthest rows go to empty clusters 1, 3, 5 in order of decreasing distance.
    np.testing.assert_allclose(one.centroids[[1, 3, 5]], x[farthest], atol=1e-6)
    full = cluster.kmeans(x, 12, tol=0.0, init=init, chunk_size=CHUNK)
    assert np.bincount(full.labels, minlength=12).min() > 0


def test_duplicate_rows_fewer_than_clusters():
    x = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)  # 3 distinct rows, K = 5
    result = cluster.kmeans(x, 5, seed=0)
    assert result.inertia == pytest.approx(0.0, abs=1e-6)
    assert np.all(np.isfinite(result.centroids))


def test_no_recompilation_for_new_data_of_same_shape():
    before = cluster._lloyd._cache_size()
    for seed in range(3):
        cluster.kmeans(_gaussian_mixture(seed=seed), 12, seed=seed, max_iter=3 + seed, tol=1e-4 * seed,
                       chunk_size=CHUNK)
    assert cluster._lloyd._cache_size() - before <= 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_clusters=11), "larger than the number of rows"),
        (dict(n_clusters=0), "n_clusters must be a positive integer, got 0"),
        (dict(n_clusters=2.0), "n_clusters must be a positive integer, got 2.0"),
        (dict(n_clusters=True), "n_clusters must be a positive integer, got True"),
        (dict(n_clusters=2, init=np.zeros((3, 4), np.float32)), "init must have shape"),
        (dict(n_clusters=2, init=np.full((2, 4), np.nan, np.float32)), "init contains NaN"),
        (dict(n_clusters=2, max_iter=0), "max_iter"),
        (dict(n_clusters=2, tol=-1.0), "tol"),
        (dict(n_clusters=2, tol=float("inf")), "tol"),
        (dict(n_clusters=2, chunk_size=0), "chunk_size"),
        (dict(n_clusters=2, n_local_trials=0), "n_local_trials"),
    ],
)
def test_rejects_bad_arguments(kwargs, match):
    x = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=match):
        cluster.kmeans(x, **kwargs)


@pytest.mark.parametrize(
    "x, match",
    [
        (np.zeros(10, np.float32), "2-D"),
        (np.zeros((2, 3, 4), np.float32), "2-D"),
        (np.array([[0.0, np.nan], [1.0, 2.0]], np.float32), "NaN or infinite.*row 0, column 1"),
        (np.array([[0.0, 1.0], [np.inf, 2.0]]), "NaN or infinite.*row 1"),
        (np.array([["a", "b"]]), "numeric"),
        (np.zeros((0, 3), np.float32), "larger than the number of rows"),
    ],
)
def test_rejects_bad_data(x, match):
    with pytest.raises(ValueError, match=match):
        cluster.kmeans(x, 1)


# ------------------------------------------------------------------------------------------------ proxies


def _brute_force_proxies(x, centroids, labels):
    """Per cluster, loop over its members in float64 and keep the nearest (first on ties)."""
    x64 = x.astype(np.float64)
    result = []
    for k, centre in enumerate(centroids.astype(np.float64)):
        best, best_dist = -1, np.inf
        for i in np.flatnonzero(labels == k):
            dist = float(np.sum((x64[i] - centre) ** 2))
            if dist < best_dist:
                best, best_dist = i, dist
        result.append(best)
    return np.array(result)


def test_proxies_match_float64_brute_force():
    x = _gaussian_mixture(seed=9)
    result = cluster.kmeans(x, 12, seed=0, chunk_size=CHUNK)
    proxy_index = cluster.proxies(x, result.centroids, result.labels)
    assert proxy_index.dtype == np.int64 and proxy_index.shape == (12,)
    np.testing.assert_array_equal(proxy_index, _brute_force_proxies(x, result.centroids, result.labels))
    # Proxies are members of their own cluster, hence pairwise distinct (no conflict can arise).
    np.testing.assert_array_equal(result.labels[proxy_index], np.arange(12))
    assert len(set(proxy_index.tolist())) == 12


def test_proxies_use_members_not_globally_nearest_rows():
    # Row 1 is nearer to centroid 1 (4.8) than any member of cluster 1, but it belongs to cluster 0.
    x = np.array([[0.0], [4.0], [6.0], [9.0]], np.float32)
    centroids = np.array([[2.5], [4.8]], np.float32)
    labels = np.array([0, 0, 1, 1])
    assert cluster.proxies(x, centroids, labels).tolist() == [1, 2]
    # Both clusters would pick row 1 if proxies were "nearest row overall"; members keep them distinct.
    assert cluster.proxies(x, np.array([[4.0], [4.1]], np.float32), labels).tolist() == [1, 2]


def test_proxies_for_empty_cluster_take_nearest_unused_row():
    x = np.array([[0.0], [1.0], [2.0], [10.0]], np.float32)
    centroids = np.array([[0.9], [10.0], [1.2]], np.float32)
    labels = np.array([0, 0, 0, 1])  # cluster 2 has no members
    # Cluster 0 -> row 1 (nearest member); cluster 2's nearest row is 1, already taken, so row 2.
    assert cluster.proxies(x, centroids, labels).tolist() == [1, 3, 2]


def test_proxies_reject_bad_input():
    x = np.zeros((4, 2), np.float32)
    centroids = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match="labels must lie"):
        cluster.proxies(x, centroids, np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="labels must have shape"):
        cluster.proxies(x, centroids, np.array([0, 1]))
    with pytest.raises(ValueError, match="integers"):
        cluster.proxies(x, centroids, np.array([0.0, 1.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="features"):
        cluster.proxies(x, np.zeros((2, 3), np.float32), np.array([0, 1, 1, 0]))
    with pytest.raises(ValueError, match="K <= N"):
        cluster.proxies(x, np.zeros((5, 2), np.float32), np.array([0, 1, 1, 0]))


# ------------------------------------------------------------------------------------------------ representatives
def brute_force_representatives(x, centroids, labels, per_cluster):
    index, owner = [], []
    for k in range(centroids.shape[0]):
        members = np.flatnonzero(labels == k)
        dist = np.sum((x[members].astype(np.float64) - centroids[k]) ** 2, axis=1)
        order = sorted(range(members.size), key=lambda j: (dist[j], members[j]))[:per_cluster]
        index += members[order].tolist()
        owner += [k] * len(order)
    return np.array(index), np.array(owner)


@pytest.mark.parametrize("per_cluster", [1, 3, 50])
def test_representatives_match_brute_force(per_cluster):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(200, 5)).astype(np.float32)
    centroids = rng.normal(size=(12, 5)).astype(np.float32)
    labels = rng.integers(0, 12, 200)
    labels[:20] = -1  # outside every cluster (e.g. dropped duplicates): never chosen
    index, owner = cluster.representatives(x, centroids, labels, per_cluster)
    expected_index, expected_owner = brute_force_representatives(x, centroids, labels, per_cluster)
    np.testing.assert_array_equal(index, expected_index)
    np.testing.assert_array_equal(owner, expected_owner)
    assert len(set(index.tolist())) == index.size and np.all(labels[index] == owner)
    if per_cluster == 1:  # the single representative is SHED's proxy (same tie rule)
        members = labels >= 0
        proxy = cluster.proxies(x[members], centroids, labels[members])
        np.testing.assert_array_equal(index, np.flatnonzero(members)[proxy])


def test_representatives_put_the_given_proxy_first_and_reject_bad_counts():
    x = np.array([[0.0], [1.0], [2.0], [10.0]], np.float32)
    centroids = np.array([[0.9], [10.0], [50.0]], np.float32)
    labels = np.array([0, 0, 0, 1])
    index, owner = cluster.representatives(x, centroids, labels, 2, proxy_index=np.array([2, 3, 0]))
    # cluster 0: proxy 2 first, then the nearest other member; cluster 2 has no member and keeps its proxy
    assert index.tolist() == [2, 1, 3, 0] and owner.tolist() == [0, 0, 1, 2]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="per_cluster"):
            cluster.representatives(x, centroids, labels, bad)
