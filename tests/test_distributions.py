"""Per-unit densities, neuron orders, the divergence score and twin placement, on hand-made data."""

from __future__ import annotations

import numpy as np
import pytest

from neuromapper import distributions, twins


def test_densities_equal_a_histogram_per_unit_computed_independently():
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(500, 7)) * np.arange(1, 8)
    acts[3, 2] = np.nan
    axis = distributions.ValueAxis(-4.0, 6.0, 20)
    counts = distributions.densities(acts, axis)
    assert counts.shape == (7, 20)
    for unit in range(7):
        values = acts[:, unit][np.isfinite(acts[:, unit])]
        expected, _ = np.histogram(np.clip(values, -4.0, 6.0), bins=20, range=(-4.0, 6.0))
        np.testing.assert_array_equal(counts[unit], expected)
    assert counts[2].sum() == 499  # the NaN is not counted


def test_value_axis_ignores_one_outlying_value_and_covers_a_constant_layer():
    values = np.concatenate([np.linspace(0, 1, 10_000), [1e6]])[:, None]
    axis = distributions.value_axis(values)
    assert axis.lo == pytest.approx(0.0, abs=2e-3) and axis.hi < 2
    constant = distributions.value_axis(np.zeros((10, 3)))
    assert constant.lo < 0 < constant.hi


def test_neuron_order_sorts_largest_first_puts_nan_last_and_leaves_hidden_units_out():
    key = np.array([0.5, np.nan, 2.0, 0.5, -1.0])
    np.testing.assert_array_equal(distributions.neuron_order(key), [2, 0, 3, 4, 1])
    np.testing.assert_array_equal(distributions.neuron_order(key, hidden=[2, 4]), [0, 3, 1])


@pytest.mark.parametrize("rows", [0, 7, 600, 1001])
def test_medians_equal_numpys_nanmedian_with_and_without_missing_values(rows):
    acts = np.random.default_rng(rows).normal(size=(rows, 33)).astype(np.float32)
    if rows:
        np.testing.assert_array_equal(distributions.medians(acts), np.nanmedian(acts.astype(np.float64), axis=0))
        acts[::3, 4] = np.nan
        acts[:, 5] = np.nan
        with pytest.warns(RuntimeWarning):  # the all-NaN unit, as numpy says
            expected = np.nanmedian(acts.astype(np.float64), axis=0)
        with pytest.warns(RuntimeWarning):
            np.testing.assert_array_equal(distributions.medians(acts), expected)
    else:
        assert np.isnan(distributions.medians(acts)).all() and distributions.medians(acts).shape == (33,)


def test_a_large_class_is_referenced_by_a_fixed_subset_that_scores_like_the_whole_class():
    rng = np.random.default_rng(4)
    labels = np.repeat([0, 1], [3 * distributions.REFERENCE_SAMPLES, 40])
    acts = rng.normal(size=(len(labels), 24)) + 3 * labels[:, None]
    profiles = distributions.class_profiles(acts, labels, 2)
    again = distributions.class_profiles(acts.copy(), labels, 2)
    np.testing.assert_array_equal(profiles.center, again.center)  # the same subset every time
    small = acts[labels == 1]
    np.testing.assert_array_equal(profiles.center[1], np.median(small, axis=0))  # a small class: every member
    big = acts[labels == 0]
    full_center = np.median(big, axis=0)
    assert not np.array_equal(profiles.center[0], full_center)  # a subset of the big class...
    assert np.all(np.abs(profiles.center[0] - full_center) < 0.15)  # ...whose medians are close (σ = 1)
    scores = distributions.divergence(acts, labels, profiles)
    full = distributions.ClassProfiles(np.stack([full_center, profiles.center[1]]), profiles.spread)
    np.testing.assert_allclose(scores, distributions.divergence(acts, labels, full), rtol=0.1)


def test_divergence_on_a_hand_made_case():
    # class 0: two units with medians 0 and 10 and robust spreads 1.4826 * MAD
    class0 = np.array([[-1.0, 8.0], [0.0, 10.0], [1.0, 12.0]])  # MAD 1 and 2
    class1 = np.array([[5.0, 5.0], [6.0, 6.0], [7.0, 7.0]])  # MAD 1 and 1
    acts = np.vstack([class0, class1])
    profiles = distributions.class_profiles(acts, np.array([0, 0, 0, 1, 1, 1]), n_classes=3)
    np.testing.assert_allclose(profiles.center[0], [0.0, 10.0])
    np.testing.assert_allclose(profiles.spread[0], [1.4826, 2 * 1.4826])
    assert np.isnan(profiles.center[2]).all()  # a class without probe members has no reference
    x = np.array([[2.9652, 10.0], [0.0, 16.0], [6.0, 6.0], [0.0, 0.0]])
    scores = distributions.divergence(x, np.array([0, 0, 1, 2]), profiles)
    # |2.9652 - 0| / 1.4826 = 2 and 0 -> mean 1; |16 - 10| / 2.9652 = 2.0235 -> mean 1.0117
    np.testing.assert_allclose(scores[:3], [1.0, (6 / (2 * 1.4826)) / 2, 0.0], rtol=1e-6)
    assert np.isnan(scores[3])


def test_divergence_floors_the_spread_of_a_unit_constant_within_a_class():
    acts = np.array([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0], [0.0, 4.0]])  # unit 0 is dead
    profiles = distributions.class_profiles(acts, np.zeros(4, int), n_classes=1)
    overall = 1.4826 * np.median(np.abs(acts[:, 1] - np.median(acts[:, 1])))
    assert profiles.spread[0, 0] == pytest.approx(0.1 * np.median([0.0, overall]))
    assert np.isfinite(distributions.divergence(np.array([[0.01, 2.5]]), np.array([0]), profiles)).all()


def test_a_twin_lands_next_to_its_nearest_neighbours_in_activation_space():
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(300, 16))
    xy = rng.uniform(-10, 10, size=(300, 2))
    query = reference[[7, 42]] + 1e-3 * rng.normal(size=(2, 16))
    placed = twins.place(query, reference, xy, k=5)
    for i, source in enumerate([7, 42]):
        dist = np.linalg.norm(reference - query[i], axis=1)
        nearest = np.argsort(dist)[:5]
        weights = 1 / dist[nearest]
        np.testing.assert_allclose(placed[i], (weights[:, None] * xy[nearest]).sum(0) / weights.sum())
        # almost on top of the sample it was made from, whose weight dominates
        assert np.linalg.norm(placed[i] - xy[source]) < np.linalg.norm(xy[nearest[1:]] - xy[source], axis=1).min()
    exact = twins.place(reference[[3]], reference, xy)
    np.testing.assert_array_equal(exact[0], xy[3])


def test_twin_placement_skips_unusable_rows_and_says_so():
    reference = np.array([[0.0], [np.nan], [2.0]])
    xy = np.array([[0.0, 0.0], [5.0, 5.0], [2.0, 2.0]])
    placed = twins.place(np.array([[1.0], [np.nan]]), reference, xy, k=3)
    np.testing.assert_allclose(placed[0], [1.0, 1.0])
    assert np.isnan(placed[1]).all()
    with pytest.raises(ValueError, match="layout xy has 2"):
        twins.place(np.zeros((1, 1)), reference, xy[:2])
