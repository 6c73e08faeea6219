import pytest
import torch

from esper.data import TASKS, DatasetError, TaskData, batches, load_task, shard


def pair(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.arange(count, dtype=torch.float32).view(count, 1).repeat(1, 3)
    return x, torch.arange(count)


def test_batches_in_order():
    x, y = pair(10)
    got = list(batches(x, y, 4, shuffle=False))
    assert [len(yb) for _, yb in got] == [4, 4, 2]
    assert torch.equal(torch.cat([xb for xb, _ in got]), x)
    assert [len(yb) for _, yb in batches(x, y, 4, shuffle=False, drop_last=True)] == [4, 4]


def test_shuffled_batches_are_reproducible_and_cover_everything():
    x, y = pair(23)

    def order(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        got = list(batches(x, y, 5, shuffle=True, generator=gen))
        for xb, yb in got:
            assert torch.equal(xb[:, 0].long(), yb)  # inputs stay paired with targets
        return torch.cat([yb for _, yb in got]).tolist()

    assert order(0) == order(0)
    assert order(0) != order(1)
    assert sorted(order(0)) == list(range(23))
    assert order(0) != list(range(23))


def test_batches_rejects_bad_arguments():
    x, y = pair(4)
    with pytest.raises(DatasetError, match="Generator"):
        batches(x, y, 2, shuffle=True)
    with pytest.raises(DatasetError, match="batch_size"):
        batches(x, y, 0, shuffle=False)
    with pytest.raises(DatasetError, match="same number"):
        batches(x, y[:3], 2, shuffle=False)


@pytest.mark.parametrize("count, world_size", [(10, 1), (10, 3), (12, 4), (7, 7)])
def test_shards_are_disjoint_and_equal(count, world_size):
    x, y = pair(count)
    shards = [shard(x, y, rank, world_size) for rank in range(world_size)]
    sizes = {len(ys) for _, ys in shards}
    assert sizes == {count // world_size}
    seen = [i for _, ys in shards for i in ys.tolist()]
    assert len(seen) == len(set(seen)) == count - count % world_size
    for xs, ys in shards:
        assert torch.equal(xs[:, 0].long(), ys)


def test_shard_rejects_bad_arguments():
    x, y = pair(3)
    with pytest.raises(DatasetError, match="rank"):
        shard(x, y, 2, 2)
    with pytest.raises(DatasetError, match="world_size"):
        shard(x, y, 0, 0)
    with pytest.raises(DatasetError, match="cannot shard 3"):
        shard(x, y, 0, 4)


def test_unknown_task_lists_the_known_ones():
    assert TASKS == ("digits", "cifar10", "chars")
    with pytest.raises(DatasetError, match="unknown task 'mnist'; known tasks: digits, cifar10"):
        load_task("mnist")
    assert issubclass(DatasetError, ValueError)


def test_task_data_checks_its_tensors():
    x, y = torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.int64)
    fields = {"name": "t", "topology": "cnn", "num_classes": 2, "input_shape": (1, 2, 2),
              "in_channels": 1}
    TaskData(train=(x, y), val=(x, y), **fields)
    with pytest.raises(DatasetError, match="as many targets"):
        TaskData(train=(x, y[:3]), val=(x, y), **fields)
    with pytest.raises(DatasetError, match="input_shape"):
        TaskData(train=(x.view(4, 1, 4, 1), y), val=(x, y), **fields)
    with pytest.raises(DatasetError, match=r"torch\.int64"):
        TaskData(train=(x, y.float()), val=(x, y), **fields)
    with pytest.raises(DatasetError, match="topology"):
        TaskData(train=(x, y), val=(x, y), **{**fields, "topology": "mlp"})
    with pytest.raises(DatasetError, match="vocab"):
        TaskData(train=(x.long().view(4, 4), y.view(4, 1).repeat(1, 4)),
                 val=(x.long().view(4, 4), y.view(4, 1).repeat(1, 4)),
                 **{**fields, "topology": "transformer", "input_shape": (4,)})
