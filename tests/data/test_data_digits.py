import pytest
import torch

from esper.data import DatasetError, load_digits, load_task
from esper.data.digits import stratified_split

DIGITS_TOTAL = 1797


@pytest.fixture(scope="module")
def digits():
    return load_digits(seed=0)


def test_shapes_and_dtypes(digits):
    (train_x, train_y), (val_x, val_y) = digits.train, digits.val
    assert digits.topology == "cnn" and digits.in_channels == 1 and digits.num_classes == 10
    assert digits.input_shape == (1, 16, 16)
    assert train_x.dtype == val_x.dtype == torch.float32
    assert train_y.dtype == val_y.dtype == torch.int64
    assert train_x.shape[1:] == val_x.shape[1:] == (1, 16, 16)
    assert len(train_x) + len(val_x) == DIGITS_TOTAL
    assert len(train_x) == len(train_y) and len(val_x) == len(val_y)
    assert set(train_y.tolist()) == set(val_y.tolist()) == set(range(10))
    assert digits.vocab_size is None and digits.block_size is None


def test_split_is_stratified(digits):
    train_counts = torch.bincount(digits.train[1], minlength=10)
    val_counts = torch.bincount(digits.val[1], minlength=10)
    share = val_counts / (train_counts + val_counts)
    assert torch.all((share - 0.2).abs() < 0.01)


def test_normalised_with_train_statistics(digits):
    train_x, val_x = digits.train[0], digits.val[0]
    assert train_x.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert train_x.std(correction=0).item() == pytest.approx(1.0, abs=1e-4)
    # The validation split uses the training statistics, not its own.
    assert val_x.mean().item() != pytest.approx(0.0, abs=1e-5)
    assert abs(val_x.mean().item()) < 0.1


def test_same_seed_same_data_other_seed_other_split(digits):
    again = load_task("digits", seed=0)
    for ours, theirs in ((digits.train, again.train), (digits.val, again.val)):
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    other = load_digits(seed=1)
    assert not torch.equal(other.train[1], digits.train[1])


def test_stratified_split_is_disjoint_and_complete():
    labels = torch.arange(103) % 7
    train, val = stratified_split(labels, 0.2, torch.Generator().manual_seed(3))
    assert not set(train.tolist()) & set(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(103))
    again = stratified_split(labels, 0.2, torch.Generator().manual_seed(3))
    assert torch.equal(train, again[0]) and torch.equal(val, again[1])


def test_limit_and_native_size():
    task = load_digits(seed=0, limit=32, image_size=8)
    assert task.train[0].shape == (32, 1, 8, 8) and task.val[0].shape == (32, 1, 8, 8)
    assert task.train[0].mean().item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("kwargs, problem", [
    ({"limit": 0}, "limit"), ({"limit": 2.5}, "limit"), ({"image_size": 0}, "image_size"),
    ({"val_fraction": 1.0}, "val_fraction"),
])
def test_bad_arguments(kwargs, problem):
    with pytest.raises(DatasetError, match=problem):
        load_digits(**kwargs)
