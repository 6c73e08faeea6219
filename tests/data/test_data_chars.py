import pytest
import torch

from esper.data import (
    CHAR_VOCAB,
    UNK,
    VOCAB_SIZE,
    DatasetError,
    decode,
    encode,
    load_chars,
    load_task,
)
from esper.data.chars import corpus_files, read_corpus


@pytest.fixture
def source(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "site-packages").mkdir()
    (tmp_path / "b.py").write_text("def b():\n\treturn 'b'\n" * 20)
    (tmp_path / "a.py").write_text("import os\nprint(os.sep)\n" * 20)
    (tmp_path / "pkg" / "c.py").write_text("x = 'caf\u00e9'  # no newline at end")
    (tmp_path / "tests" / "t.py").write_text("SKIPPED\n")
    (tmp_path / "site-packages" / "s.py").write_text("SKIPPED\n")
    (tmp_path / "latin.py").write_bytes(b"x = '\xe9'\n")  # not UTF-8: skipped
    (tmp_path / "notes.txt").write_text("SKIPPED\n")
    return tmp_path


def test_vocab_is_fixed_and_roundtrips():
    assert VOCAB_SIZE == len(CHAR_VOCAB) == len(set(CHAR_VOCAB)) == 98
    assert CHAR_VOCAB[0] == UNK
    text = "def f(x):\n\treturn {'a': x ~ 1} # ok!\n"
    ids = encode(text)
    assert ids.dtype == torch.int64 and ids.shape == (len(text),)
    assert decode(ids) == text
    assert encode("é€\r").tolist() == [0, 0, 0]
    assert decode(encode("caf\u00e9")) == "caf" + UNK
    with pytest.raises(DatasetError, match="token ids"):
        decode(torch.tensor([VOCAB_SIZE]))


def test_corpus_order_and_skips(source):
    names = [p.relative_to(source).as_posix() for p in corpus_files(source)]
    assert names == ["a.py", "b.py", "latin.py", "pkg/c.py"]
    text = read_corpus(source, 10**6)
    assert text.startswith("import os\n") and "SKIPPED" not in text
    assert text.endswith("# no newline at end\n")
    assert read_corpus(source, 15) == text[:15]


def test_targets_are_inputs_shifted_by_one(source):
    task = load_task("chars", data_dir=source, block_size=8)
    text = decode(encode(read_corpus(source, 10**6)))  # the é reads as UNK
    assert UNK in text and task.topology == "transformer" and task.vocab == CHAR_VOCAB
    assert task.vocab_size == task.num_classes == VOCAB_SIZE and task.block_size == 8
    assert task.in_channels is None
    for x, y in (task.train, task.val):
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape and x.shape[1] == 8
        assert torch.equal(y[:, :-1], x[:, 1:])
        assert torch.equal(y[:-1, -1], x[1:, 0])  # windows are consecutive
    train_text = decode(task.train[0])
    assert text.startswith(train_text)
    # The validation split comes from the end of the corpus, after the training split.
    cut = int(len(text) * 0.9)
    assert text[cut:].startswith(decode(task.val[0]))
    assert len(train_text) <= cut


def test_stdlib_corpus_is_deterministic():
    first = load_chars(block_size=32, limit=16, max_chars=50_000)
    second = load_chars(block_size=32, limit=16, max_chars=50_000)
    assert first.train[0].shape == first.val[0].shape == (16, 32)
    for ours, theirs in ((first.train, second.train), (first.val, second.val)):
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    assert (first.train[0] == 0).float().mean() < 0.01  # Python source is nearly all ASCII


def test_missing_or_unusable_source(tmp_path):
    with pytest.raises(DatasetError, match="Python source not found"):
        load_chars(source_dir=tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=r"no readable \.py source"):
        load_chars(source_dir=tmp_path)
    (tmp_path / "tiny.py").write_text("x = 1\n")
    with pytest.raises(DatasetError, match="too short"):
        load_chars(source_dir=tmp_path, block_size=8)


@pytest.mark.parametrize("kwargs, problem", [
    ({"block_size": 0}, "block_size"), ({"max_chars": -1}, "max_chars"),
    ({"limit": 0}, "limit"), ({"val_fraction": 0.0}, "val_fraction"),
])
def test_bad_arguments(source, kwargs, problem):
    with pytest.raises(DatasetError, match=problem):
        load_chars(source_dir=source, **kwargs)
